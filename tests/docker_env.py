"""Helpers for tests that need the docker engine or the compose tools.

Without an engine (or a tool) such tests skip with the reason, on a developer machine. Under
``CI=true`` they fail instead: CI installs everything (``.ci/install-docker.sh``), so a missing piece
there is a broken setup, not a reason to pass quietly.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins")


def unavailable(reason: str) -> None:
    """Skip (developer machine) or fail (CI) because ``reason``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: container tests must run, never skip)")
    pytest.skip(reason)


def docker_client():
    """A docker SDK client, or skip/fail when no engine answers."""
    from packager.containers import ContainerError, docker_client as make

    try:
        return make()
    except ContainerError as exc:
        unavailable(str(exc))


def docker_cli() -> str:
    """The docker client matching the engine (Debian's in /usr/bin first: another may shadow it on PATH)."""
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else (shutil.which("docker") or "docker")


def compose_command(version: str) -> list[str] | None:
    """``["docker-compose"]`` for v1, ``[docker, "compose"]`` for v2; None when that tool is missing."""
    if version == "v1":
        exe = shutil.which("docker-compose")
        if not exe:
            return None
        out = subprocess.run([exe, "version", "--short"], capture_output=True, text=True)
        # `docker-compose` may itself be a v2 binary on other machines: only a 1.x counts as v1.
        return [exe] if out.returncode == 0 and out.stdout.strip().startswith("1.") else None
    if not any(os.access(os.path.join(d, "docker-compose"), os.X_OK) for d in PLUGIN_DIRS):
        return None
    cmd = [docker_cli(), "compose"]
    out = subprocess.run(cmd + ["version", "--short"], capture_output=True, text=True)
    return cmd if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2.") else None


def require_compose(version: str) -> list[str]:
    cmd = compose_command(version)
    if cmd is None:
        what = "docker-compose 1.29 (apt-get install docker-compose)" if version == "v1" else \
            "the Compose v2 CLI plugin (installed by .ci/install-docker.sh)"
        unavailable(f"{what} is not installed")
    return cmd


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class ComposeProject:
    """One ``docker-compose`` project (a stack folder + a unique project name), always torn down."""

    def __init__(self, cmd: list[str], stack_dir: Path, project: str):
        self.cmd, self.dir, self.project = cmd, Path(stack_dir), project

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.cmd + ["-p", self.project, "-f", str(self.dir / "docker-compose.yml"), *args],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc

    def container(self, client, service: str):
        found = client.containers.list(all=True, filters={
            "label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        assert len(found) == 1, f"expected one container for {service}, found {len(found)}"
        return found[0]

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "80", check=False, timeout=60).stdout

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False, timeout=120)


def wait_healthy(container, timeout: float = 240, since_restarts: int | None = None) -> float:
    """Wait until the container's healthcheck says healthy; return the seconds it took.

    Args:
        container: a docker SDK container.
        timeout: give up after this many seconds (with the container's last health log).
        since_restarts: also require RestartCount to exceed this (after a crash).
    """
    t0 = time.monotonic()
    state = {}
    while time.monotonic() - t0 < timeout:
        container.reload()
        state = container.attrs["State"]
        restarted = since_restarts is None or container.attrs.get("RestartCount", 0) > since_restarts
        if restarted and state.get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - t0
        time.sleep(0.5)
    health = json.dumps(state.get("Health", {}).get("Log", [])[-2:], indent=1)[-1500:]
    raise AssertionError(f"container not healthy after {timeout:.0f}s: status={state.get('Status')} "
                         f"restarts={container.attrs.get('RestartCount')} health={health}")


@contextlib.contextmanager
def stack_up(cmd: list[str], stack_dir: Path, project: str):
    """``up -d`` a stack and always ``down`` it afterwards (with the logs on a failure)."""
    proj = ComposeProject(cmd, stack_dir, project)
    try:
        proj.run("up", "-d", "--no-build", timeout=300)
        yield proj
    except BaseException:
        print(proj.logs())
        raise
    finally:
        proj.down()
