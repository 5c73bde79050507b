"""docker-compose stacks: rendering, validation with the real Compose v1.29 and v2, Dockerfile build
steps, and the python-backend Triton stack started in real containers (parity, crash recovery,
read-only repository, loopback-only ports).

Container tests build a CPU Triton image without any registry (debootstrap base + the tritonserver of
the nvidia-pytriton wheel + pinned TF; cached by a content hash) and swap it in through the image
option. Without a docker engine they skip with the reason; under CI=true they fail instead.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import docker_env
import numpy as np
import pytest
import yaml
from raw_triton import assert_parity, triton_embed

from packager.errors import TargetError
from packager.targets.compose import StackOptions, render_compose
from packager.targets.tfserving import TFServingOptions
from packager.targets.triton import TritonOptions

VARIANTS = {
    "triton-python": dict(target="triton", backend="python"),
    "triton-tensorflow": dict(target="triton", backend="tensorflow"),
    "tfserving": dict(target="tfserving", model_name="minilm"),
    "triton-python-gpu": dict(target="triton", backend="python", gpu=True),
    "triton-tensorflow-gpu": dict(target="triton", backend="tensorflow", gpu=True, gpu_ids=("0",)),
    "tfserving-gpu": dict(target="tfserving", model_name="minilm", gpu=True, gpu_count=1),
}


def _service(files: dict[str, str], name: str | None = None) -> dict:
    doc = yaml.safe_load(files["docker-compose.yml"])
    assert "version" not in doc, "no version key: v2 warns on it, v1.29 reads the Compose Specification without it"
    services = doc["services"]
    assert len(services) == 1
    return services[name] if name else next(iter(services.values()))


def _write_stack(root: Path, files: dict[str, str], name: str = "stack") -> Path:
    d = root / "compose" / name
    d.mkdir(parents=True)
    for rel, text in files.items():
        (d / rel).write_text(text)
    return d


# ------------------------------------------------------------------------------- pure rendering
def test_render_compose_secures_triton_stack_when_defaults_used():
    svc = _service(render_compose(StackOptions(target="triton", backend="python")))
    assert svc["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert svc["volumes"] == [{"type": "bind", "source": "../../model_repository", "target": "/models",
                               "read_only": True}]
    assert svc["restart"] == "unless-stopped"
    assert svc["user"] == "1000:1000" and svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert svc["mem_limit"] == "4g" and svc["cpus"] == 2.0 and svc["pids_limit"] == 4096
    assert "deploy" not in svc
    cmd = svc["command"]
    assert cmd[0] == "tritonserver"
    for flag in ("--model-repository=/models", "--model-control-mode=none", "--disable-auto-complete-config",
                 "--backend-config=python,shm-default-byte-size=4194304"):
        assert flag in cmd
    # threads=2: 1 intra-op x 2 inter-op threads (packager.settings.thread_split)
    assert svc["environment"]["TF_NUM_INTRAOP_THREADS"] == "1" and svc["environment"]["TF_NUM_INTEROP_THREADS"] == "2"
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and "/v2/health/ready" in test[3]
    assert svc["build"] == {"context": ".", "dockerfile": "Dockerfile"}


def test_render_compose_uses_tf_backend_flags_when_backend_is_tensorflow():
    files = render_compose(StackOptions(target="triton", backend="tensorflow"))
    svc = _service(files)
    assert svc["image"] == "nvcr.io/nvidia/tritonserver:25.02-tf2-python-py3"
    assert "build" not in svc, "the TF backend runs the official image as is"
    assert "--backend-config=tensorflow,version=2" in svc["command"]
    assert "--backend-config=tensorflow,allow-soft-placement=true" in svc["command"]
    assert "FROM ${BASE_IMAGE}" in files["Dockerfile"] and "25.02-tf2-python-py3" in files["Dockerfile"]


def test_render_compose_sets_tfserving_flags_when_target_is_tfserving():
    files = render_compose(StackOptions(target="tfserving", model_name="minilm", threads=4))
    svc = _service(files)
    assert svc["image"] == "tensorflow/serving:2.20.0"
    assert svc["entrypoint"] == ["tensorflow_model_server"]
    assert svc["ports"] == ["127.0.0.1:8501:8501", "127.0.0.1:8500:8500"]
    assert svc["volumes"][0]["source"] == "../../tfserving_models" and svc["volumes"][0]["read_only"] is True
    for flag in ("--port=8500", "--rest_api_port=8501", "--model_config_file=/models/models.config",
                 "--enable_batching=true", "--batching_parameters_file=/models/batching_parameters.txt",
                 "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2"):
        assert flag in svc["command"]
    assert "/v1/models/minilm" in svc["healthcheck"]["test"][3]


def test_render_compose_opens_ports_wider_only_when_bind_address_given():
    svc = _service(render_compose(StackOptions(bind_address="0.0.0.0", http_port=18000, grpc_port=18001,
                                               metrics_port=None)))
    assert svc["ports"] == ["0.0.0.0:18000:8000", "0.0.0.0:18001:8001"]
    assert "--allow-metrics=false" in svc["command"]
    svc6 = _service(render_compose(StackOptions(bind_address="::1")))
    assert svc6["ports"][0] == "[::1]:8000:8000"


def test_render_compose_reserves_gpus_when_gpu_variant():
    svc = _service(render_compose(StackOptions(gpu=True)))
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert svc["ulimits"] == {"memlock": -1, "stack": 67108864}
    ids = _service(render_compose(StackOptions(gpu=True, gpu_ids=("0", "2"))))
    assert ids["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "2"]
    assert StackOptions(gpu=True).stack_name == "triton-python-gpu"


def test_render_compose_keeps_hostile_strings_as_data_when_values_contain_yaml_and_variables():
    evil = 'x", privileged: true} # ${HOME} $USER \'"'
    files = render_compose(StackOptions(repository=evil, image='img"\n    privileged: true'))
    svc = _service(files)
    assert "privileged" not in svc
    assert svc["volumes"][0]["source"] == evil.replace("$", "$$")  # compose turns $$ back into $
    assert svc["image"] == 'img"\n    privileged: true'
    with pytest.raises(TargetError, match="repository"):
        StackOptions(repository="a\n    privileged: true")


def test_stack_options_list_every_problem_when_invalid():
    with pytest.raises(TargetError) as err:
        StackOptions(target="k8s", user="root; rm", mem_limit="lots", http_port=70000, bind_address="host name")
    msg = str(err.value)
    for part in ("target", "user", "mem_limit", "http_port", "bind_address"):
        assert part in msg
    with pytest.raises(TargetError, match="model name"):
        render_compose(StackOptions(target="tfserving", model_name="a b/../c"))


def test_render_compose_pins_tensorflow_when_python_backend_dockerfile():
    files = render_compose(StackOptions(backend="python", tf_version="2.21.0", tf_text_version="2.21.1"))
    df = files["Dockerfile"]
    assert 'ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.03-py3' in df
    assert '"${TF_PACKAGE}==2.21.0"' in df and '"tensorflow-text==2.21.1"' in df
    assert df.rstrip().endswith("USER 1000")
    assert "docker-compose up -d" in files["README.md"]


# ------------------------------------------------------------------ real compose tools (no engine)
@pytest.mark.parametrize("tool", ["v1", "v2"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_compose_config_accepts_stack_when_checked_by_real_tool(tmp_path, variant, tool):
    cmd = docker_env.require_compose(tool)
    opts = StackOptions(**VARIANTS[variant])
    stack = _write_stack(tmp_path, render_compose(opts))
    (tmp_path / "model_repository").mkdir()
    (tmp_path / "tfserving_models").mkdir()
    out = subprocess.run(cmd + ["-f", str(stack / "docker-compose.yml"), "config"], cwd=stack,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "level=warning" not in out.stderr, out.stderr
    svc = yaml.safe_load(out.stdout)["services"][opts.service]
    vol = svc["volumes"][0]
    assert vol["read_only"] is True and vol["target"] == "/models"
    assert Path(vol["source"]) == (tmp_path / ("tfserving_models" if opts.target == "tfserving" else "model_repository"))
    host_ips = {p["host_ip"] if isinstance(p, dict) else p.split(":")[0] for p in svc["ports"]}
    assert host_ips == {"127.0.0.1"}
    assert svc["restart"] == "unless-stopped"
    if opts.gpu:
        assert svc["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


# ----------------------------------------------------------------------------- container fixtures
@pytest.fixture(scope="module")
def engine():
    return docker_env.docker_client()


@pytest.fixture(scope="module")
def cpu_image(engine):
    """The registry-free CPU Triton image (built once; later runs find it by its content hash)."""
    from packager.containers import triton_cpu_image

    t0 = time.monotonic()
    tag = triton_cpu_image(client=engine)
    print(f"cpu image {tag} ready in {time.monotonic() - t0:.0f} s")
    return tag


@pytest.mark.container
@pytest.mark.slow
def test_triton_cpu_image_is_reused_when_built_twice(engine, cpu_image):
    from packager.containers import triton_cpu_image

    t0 = time.monotonic()
    assert triton_cpu_image(client=engine) == cpu_image
    assert time.monotonic() - t0 < 10
    img = engine.images.get(cpu_image)
    assert img.attrs["Config"]["User"] == "1000:1000"
    out = engine.containers.run(cpu_image, ["python3", "-c", "import tensorflow as tf, tensorflow_text, os; "
                                            "print(tf.__version__, os.getuid())"], remove=True)
    from importlib import metadata

    assert out.decode().split() == [metadata.version("tensorflow"), "1000"]


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["triton-python", "triton-tensorflow", "tfserving"])
def test_stack_dockerfile_builds_when_based_on_local_stand_in(tmp_path, engine, cpu_image, variant):
    """The official bases cannot be pulled here; every step after FROM runs on the local CPU image."""
    files = render_compose(StackOptions(**VARIANTS[variant]))
    (tmp_path / "Dockerfile").write_text(files["Dockerfile"])
    tag = f"packager-test/dockerfile-{variant}:{os.getpid()}"
    try:
        engine.images.build(path=str(tmp_path), tag=tag, rm=True, forcerm=True, network_mode="host",
                            buildargs={"BASE_IMAGE": cpu_image, "TF_PACKAGE": "tensorflow-cpu"})
        assert engine.images.get(tag).attrs["Config"]["User"] == "1000"
    finally:
        import docker.errors

        try:
            engine.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


# ------------------------------------------------------------------ the stack in real containers
@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory, default_model_dir):
    """A python-backend Triton repository of the default model, written by ``packager build``."""
    from packager.targets import build

    root = tmp_path_factory.mktemp("stack")
    build(default_model_dir, target="triton", output=root / "model_repository", name="minilm", backend="python")
    # The container runs as uid 1000: the repository only has to be readable by others.
    for dirpath, dirs, names in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)
    return root


@pytest.fixture(scope="module")
def running_stack(engine, cpu_image, triton_repo):
    cmd = docker_env.require_compose("v1")
    http, grpc, metrics = docker_env.free_ports(3)
    opts = StackOptions(target="triton", backend="python", model_name="minilm", image=cpu_image, build=False,
                        http_port=http, grpc_port=grpc, metrics_port=metrics, healthcheck_interval="2s",
                        mem_limit="3g", cpus=2.0)
    stack = _write_stack(triton_repo, render_compose(opts), opts.stack_name)
    with docker_env.stack_up(cmd, stack, f"packagertest{os.getpid()}") as proj:
        container = proj.container(engine, opts.service)
        took = docker_env.wait_healthy(container)
        print(f"stack healthy {took:.1f} s after up")
        yield {"proj": proj, "container": container, "opts": opts,
               "http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}


@pytest.fixture(scope="module")
def reference(default_model_dir, corpus):
    from packager.verify import reference_embeddings, reference_model

    model = reference_model(default_model_dir)
    return corpus, reference_embeddings(model, corpus)


def _embed_all(url: str, texts: list[str], protocol: str, batch: int = 32) -> np.ndarray:
    return triton_embed(url, "minilm", texts, protocol, batch)


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_stack_serves_raw_strings_with_parity_when_started_by_compose(running_stack, reference, protocol):
    texts, expected = reference
    assert_parity(texts, expected, _embed_all(running_stack[protocol], texts, protocol))


@pytest.mark.container
@pytest.mark.slow
def test_triton_stack_mounts_repository_read_only_and_binds_loopback_when_running(engine, running_stack):
    c = running_stack["container"]
    c.reload()
    mounts = [m for m in c.attrs["Mounts"] if m["Destination"] == "/models"]
    assert len(mounts) == 1 and mounts[0]["RW"] is False
    probe = c.exec_run(["bash", "-c", "touch /models/x 2>&1; echo rc=$?"], user="0")
    assert b"Read-only file system" in probe.output, probe.output
    bindings = c.attrs["HostConfig"]["PortBindings"]
    assert {b["HostIp"] for v in bindings.values() for b in v} == {"127.0.0.1"}
    published = c.attrs["NetworkSettings"]["Ports"]
    assert {b["HostIp"] for v in published.values() if v for b in v} == {"127.0.0.1"}
    hc = c.attrs["HostConfig"]
    assert hc["Memory"] == 3 * 2**30 and hc["NanoCpus"] == 2 * 10**9 and hc["PidsLimit"] == 4096
    assert hc["ReadonlyRootfs"] is True and hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert c.exec_run(["id", "-u"]).output.strip() == b"1000"


@pytest.mark.container
@pytest.mark.slow
def test_triton_stack_recovers_by_itself_when_server_process_is_killed(running_stack, reference):
    """SIGKILL to the container's main process (what the OOM killer or a crash does): the restart
    policy brings it back, and it answers exactly as before."""
    texts, _ = reference
    sample = texts[:48]
    before = _embed_all(running_stack["http"], sample, "http")
    c = running_stack["container"]
    c.reload()
    restarts = c.attrs["RestartCount"]
    top = c.top(ps_args="-eo pid,args")
    server = [int(row[0]) for row in top["Processes"] if row[1].split()[0].endswith("tritonserver")]
    assert len(server) == 1, top
    os.kill(server[0], signal.SIGKILL)  # host pid of the server process (init: true makes it a child of tini)
    took = docker_env.wait_healthy(c, timeout=240, since_restarts=restarts)
    print(f"back and healthy {took:.1f} s after SIGKILL (restart count {restarts} -> {c.attrs['RestartCount']})")
    after = _embed_all(running_stack["http"], sample, "http")
    np.testing.assert_array_equal(after, before)
    assert _embed_all(running_stack["grpc"], sample, "grpc").shape == before.shape


@pytest.mark.container
@pytest.mark.slow
def test_triton_stack_needs_compose_up_when_killed_with_docker_kill(engine, running_stack):
    """``docker kill`` is an operator stop to dockerd (it cancels the restart policy, see moby
    daemon/kill.go); `docker-compose up -d` brings the stack back with the same answers."""
    sample = ["docker kill", "recovery check", "ünïcödé"]
    before = _embed_all(running_stack["http"], sample, "http")
    c = running_stack["container"]
    subprocess.run([docker_env.docker_cli(), "kill", c.id], check=True, capture_output=True, timeout=60)
    time.sleep(3)
    c.reload()
    assert c.attrs["State"]["Running"] is False, "dockerd does not restart a container stopped by docker kill"
    running_stack["proj"].run("up", "-d", "--no-build", timeout=300)
    c2 = running_stack["proj"].container(engine, running_stack["opts"].service)
    docker_env.wait_healthy(c2)
    running_stack["container"] = c2
    np.testing.assert_array_equal(_embed_all(running_stack["http"], sample, "http"), before)


def test_example_stacks_match_render_when_regenerated():
    """compose/ ships rendered stacks; they must be exactly what the renderer makes today."""
    from packager.targets.compose import EXAMPLES

    root = Path(__file__).resolve().parent.parent / "compose"
    for name, kw in EXAMPLES.items():
        files = render_compose(StackOptions(**kw))
        for rel, text in files.items():
            assert (root / name / rel).read_text() == text, f"compose/{name}/{rel} is stale: python -m packager.targets.compose"


@pytest.mark.container
@pytest.mark.slow
def test_triton_stack_starts_with_same_limits_when_run_by_compose_v2(engine, cpu_image, triton_repo):
    """The same file under Compose v2 (`docker compose`): healthy, answers, and the limits apply."""
    cmd = docker_env.require_compose("v2")
    http, grpc = docker_env.free_ports(2)
    opts = StackOptions(target="triton", backend="python", model_name="minilm", image=cpu_image, build=False,
                        http_port=http, grpc_port=grpc, metrics_port=None, healthcheck_interval="2s",
                        mem_limit="3g", cpus=1.5)
    stack = _write_stack(triton_repo, render_compose(opts), "triton-python-v2")
    with docker_env.stack_up(cmd, stack, f"packagertestv2{os.getpid()}") as proj:
        c = proj.container(engine, opts.service)
        docker_env.wait_healthy(c)
        hc = c.attrs["HostConfig"]
        assert hc["Memory"] == 3 * 2**30 and hc["NanoCpus"] == 15 * 10**8 and hc["PidsLimit"] == 4096
        assert {b["HostIp"] for v in hc["PortBindings"].values() for b in v} == {"127.0.0.1"}
        assert _embed_all(f"127.0.0.1:{http}", ["compose v2"], "http").shape == (1, 384)


def test_write_stack_points_at_repository_when_written_beside_a_build(tmp_path):
    from packager.targets import write_stack

    repo = tmp_path / "model_repository"
    repo.mkdir()
    stack = write_stack("triton", repo, "minilm", TritonOptions(backend="python", instance_kind="KIND_GPU",
                                                                 image="nvcr.io/nvidia/tritonserver:25.04-py3"),
                        compose_dir=tmp_path / "compose")
    assert stack == tmp_path / "compose" / "triton-python-gpu"
    svc = _service({"docker-compose.yml": (stack / "docker-compose.yml").read_text()})
    assert svc["volumes"][0]["source"] == "../../model_repository"
    assert "deploy" in svc
    assert "ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:25.04-py3" in (stack / "Dockerfile").read_text()
    tfs = write_stack("tfserving", tmp_path / "tfs", "minilm", TFServingOptions(base_path_prefix="/srv/models"),
                      compose_dir=tmp_path / "compose", bind_address="0.0.0.0")
    svc = _service({"docker-compose.yml": (tfs / "docker-compose.yml").read_text()})
    assert svc["volumes"][0] == {"type": "bind", "source": "../../tfs", "target": "/srv/models", "read_only": True}
    assert svc["ports"][0] == "0.0.0.0:8501:8501"
