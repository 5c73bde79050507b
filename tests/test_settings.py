"""One definition of the process settings: the cache folder (and ``PACKAGER_CACHE=off``), the
runtime environment every entry point gets, and quiet native logs on the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from packager.settings import NOISE, RUNTIME_ENV, cache_dir, cache_root, work_dir


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in RUNTIME_ENV}
    env.update(extra)
    return env


def test_cache_dir_is_none_and_nothing_is_written_when_cache_is_off(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKAGER_CACHE", "off")
    assert cache_root() is None and cache_dir("probes") is None
    scratch = work_dir("oplibs")
    assert scratch.is_dir() and "packager-oplibs-" in scratch.name and scratch.parent != Path.cwd()
    # The components that cache on disk, run for real in a fresh process from an empty folder.
    code = (
        "import numpy as np\n"
        "from tokenizers import normalizers\n"
        "from packager.tokenizers.common import cached_probe, probe_normalizer\n"
        "from packager.oplibs import local_core_ops\n"
        "cached_probe('normalizer', normalizers.NFD(), probe_normalizer)\n"
        "assert 'MatMul' in local_core_ops()\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=_env(PACKAGER_CACHE="off", HOME=str(home)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no folder named "off"
    assert not (home / ".cache" / "packager").exists()  # nor the default cache (TF and others write their own)


def test_cache_dir_follows_packager_cache_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("PACKAGER_CACHE", str(tmp_path / "c"))
    assert cache_dir("probes") == tmp_path / "c" / "probes"
    monkeypatch.delenv("PACKAGER_CACHE")
    assert cache_root() == Path.home() / ".cache" / "packager"


@pytest.mark.parametrize("entry", ["import packager.graph", "import packager.cli", "from packager.targets import build"])
def test_every_entry_point_runs_with_the_same_settings_when_imported(entry, tmp_path):
    code = f"{entry}\nimport json, os\nprint(json.dumps({{k: os.environ.get(k) for k in {sorted(RUNTIME_ENV)!r}}}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == RUNTIME_ENV


def test_runtime_settings_keep_a_value_the_user_set_when_imported(tmp_path):
    code = "import packager, os; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=_env(TF_ENABLE_ONEDNN_OPTS="0"))
    assert out.stdout.strip() == "0"


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if NOISE.match(line)]


def test_cli_hides_tensorflow_start_up_noise_unless_verbose_when_embedding(tiny_export, tmp_path):
    cmd = [sys.executable, "-m", "packager", "embed", "--export", str(tiny_export), "hello world"]
    quiet = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "dim " in quiet.stdout
    assert _noise(quiet.stderr) == [], quiet.stderr
    loud = subprocess.run(cmd[:3] + ["-v"] + cmd[3:], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env())
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert any("absl::InitializeLog" in line or "oneDNN" in line for line in _noise(loud.stderr)), loud.stderr


def test_cli_keeps_real_errors_on_stderr_when_noise_is_filtered(tmp_path):
    out = subprocess.run([sys.executable, "-m", "packager", "embed", "--export", str(tmp_path / "none"), "x"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and "not a packager export" in out.stderr


@pytest.mark.parametrize("cores, expected", [(1, (1, 1)), (2, (1, 2)), (3, (1, 2)), (8, (4, 2)), (0, (1, 1))])
def test_thread_split_gives_one_inter_op_thread_per_projection_part_and_shares_the_cores_when_asked(cores, expected):
    from packager.settings import PROJECTION_PARTS, thread_split

    intra, inter = thread_split(cores)
    assert (intra, inter) == expected
    assert inter == min(max(cores, 1), PROJECTION_PARTS) and intra * inter <= max(cores, 1)


def test_thread_split_env_is_set_for_the_cli_and_keeps_the_users_values_when_applied(tmp_path):
    from packager.cli import main
    from packager.settings import apply_thread_split, available_cores, thread_split

    env = {}
    assert apply_thread_split(env, cores=2) == (1, 2)
    assert env == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}
    mine = {"TF_NUM_INTRAOP_THREADS": "3", "TF_NUM_INTEROP_THREADS": "1"}
    assert apply_thread_split(mine, cores=2) == (3, 1) and mine["TF_NUM_INTRAOP_THREADS"] == "3"
    keys = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
    saved = {k: os.environ.pop(k, None) for k in keys}
    try:
        assert main(["embed", "--export", str(tmp_path / "none"), "x"]) == 2  # a missing export: the CLI ran
        expected = thread_split(available_cores())
        assert (int(os.environ[keys[0]]), int(os.environ[keys[1]])) == expected
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
