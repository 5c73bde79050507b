"""docker-compose stacks for a Triton or TF-Serving repository: a pure render from plain options.

:func:`render_compose` returns ``{relative path: text}`` for one stack folder (by default
``compose/<stack>/`` beside ``model_repository/``; see ``docs/compose.md``)::

    docker-compose.yml   one server service: repository mounted read-only, ports on 127.0.0.1,
                         readiness healthcheck, restart: unless-stopped, memory/CPU/pids limits,
                         non-root user, read-only root filesystem, no capabilities
    Dockerfile           the image the service runs (FROM the official image + what it lacks)
    README.md            the exact commands to build, start, query and stop it

The files are valid for Compose v1.29 (Debian 12's ``docker-compose``) and Compose v2: no top-level
``version`` (both read the Compose Specification then), and limits as ``mem_limit`` / ``cpus`` /
``pids_limit`` service keys, which both apply without ``--compatibility`` (``deploy.resources.limits``
would need that flag in v1). The GPU variant reserves devices with
``deploy.resources.reservations.devices``, which both honour (v1 from 1.28).

Every value that reaches the YAML is emitted as a quoted scalar with ``$`` doubled, so a model name
or path with quotes, newlines or ``${...}`` can neither add keys nor trigger variable substitution.

Example:
    >>> files = render_compose(StackOptions(target="triton", backend="python", model_name="minilm"))
    >>> sorted(files)
    ['Dockerfile', 'README.md', 'docker-compose.yml']
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..encoders.precision import PRECISIONS, serving_environment
from ..errors import TargetError
from ..servers import default_image
from ..settings import thread_split
from ..templating import render_template
from ..writer import write_tree

# Ports inside the container (fixed; only the published host ports are options).
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
TFSERVING_PORTS = {"rest": 8501, "grpc": 8500}
_TARGETS = ("triton", "tfserving")
DEFAULT_REPOSITORY = {"triton": "../../model_repository", "tfserving": "../../tfserving_models"}
_BACKENDS = ("python", "tensorflow")
_SIZE = re.compile(r"^[0-9]+[bkmg]?$")


@dataclass(frozen=True)
class StackOptions:
    """How one stack is laid out (every field has a working default).

    Attributes:
        target: ``"triton"`` or ``"tfserving"``.
        backend: Triton only: ``"python"`` or ``"tensorflow"`` (images up to 25.02).
        model_name: the served model's name (used in the healthcheck of TF-Serving and in the README).
        repository: the host folder mounted read-only in the container: the Triton model repository, or
            TF-Serving's base folder. Relative paths are relative to the stack folder. Default:
            ``../../model_repository`` (Triton) or ``../../tfserving_models`` (TF-Serving), which is
            where ``packager build`` writes when the stack sits in ``compose/<stack>/``.
        repo_mount: where that folder appears in the container.
        image: the image the service runs. Default: the official image for Triton's TF backend and
            TF-Serving; ``packager/triton-python-tf:<tf_version>`` (built from the Dockerfile) for
            Triton's Python backend.
        base_image: the ``FROM`` of the rendered Dockerfile (default: the official image).
        build: Python backend: add a ``build:`` section so ``docker-compose up --build`` makes ``image``.
        gpu: reserve GPUs (``deploy.resources.reservations.devices``); pair with KIND_GPU instances.
        gpu_count: how many GPUs to reserve: a number or ``"all"``.
        gpu_ids: reserve these device ids instead of a count.
        bind_address: host address the ports are published on. ``127.0.0.1`` keeps the server off the
            network; ``0.0.0.0`` opens it deliberately.
        http_port, grpc_port, metrics_port: published host ports (Triton: 8000/8001/8002; TF-Serving: REST
            8501, gRPC 8500; metrics_port None leaves Triton's metrics unpublished).
        mem_limit, cpus, pids_limit, shm_size: container limits (the Python backend talks to its stub
            over /dev/shm, so its size bounds the largest batch in flight).
        threads: the cores TensorFlow uses in all, split into intra-op x inter-op threads by
            :func:`packager.settings.thread_split` (2 -> 1 x 2: the graph's projection parts run at once).
        precision: the served export's precision (its manifest's ``precision``): a ``"bf16"`` export's
            server gets :func:`packager.encoders.precision.serving_environment`'s variables too.
        user: ``uid:gid`` the server runs as (the official Triton images' non-root user is 1000).
        read_only_rootfs: mount the container's root filesystem read-only (a tmpfs serves /tmp).
        restart: the restart policy.
        healthcheck_interval, healthcheck_start_period: readiness polling.
        tf_version, tf_text_version: what the Python-backend Dockerfile installs (must match the export).
        numpy_version: pinned beside them: the numpy the parity tests ran with (a numpy-2 upgrade
            pulled in by pip broke the BYTES decoding of the python backend in Triton 2.51).
        service: the compose service name (default: the target).
        models_config: TF-Serving: the model config file, relative to ``repository``.
        batching_parameters: TF-Serving: the batching parameters file, relative to ``repository``.
    """

    target: str = "triton"
    backend: str = "python"
    model_name: str = "model"
    repository: str = ""
    repo_mount: str = "/models"
    image: str | None = None
    base_image: str | None = None
    build: bool = True
    gpu: bool = False
    gpu_count: int | str = "all"
    gpu_ids: tuple[str, ...] = ()
    bind_address: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int | None = 0
    mem_limit: str = "4g"
    cpus: float = 2.0
    pids_limit: int = 4096
    shm_size: str = "256m"
    threads: int = 2
    precision: str = "fp32"
    user: str = "1000:1000"
    read_only_rootfs: bool = True
    restart: str = "unless-stopped"
    healthcheck_interval: str = "5s"
    healthcheck_start_period: str = "120s"
    tf_version: str = field(default_factory=lambda: _installed("tensorflow", "2.21.0"))
    tf_text_version: str = field(default_factory=lambda: _installed("tensorflow-text", "2.21.1"))
    numpy_version: str = field(default_factory=lambda: _installed("numpy", "1.26.4"))
    service: str = ""
    models_config: str = "models.config"
    batching_parameters: str = "batching_parameters.txt"

    def __post_init__(self):
        problems = []
        if self.target not in _TARGETS:
            problems.append(f"target must be one of {', '.join(_TARGETS)}, not {self.target!r}")
        if self.target == "triton" and self.backend not in _BACKENDS:
            problems.append(f"backend must be one of {', '.join(_BACKENDS)}, not {self.backend!r}")
        defaults = TRITON_PORTS if self.target == "triton" else {"http": 8501, "grpc": 8500, "metrics": None}
        for name in ("http", "grpc", "metrics"):
            value = getattr(self, f"{name}_port")
            if value == 0:
                object.__setattr__(self, f"{name}_port", defaults[name])
            elif value is not None and not 1 <= int(value) <= 65535:
                problems.append(f"{name}_port must be 1..65535, not {value}")
        if self.target == "tfserving":
            object.__setattr__(self, "metrics_port", None)  # TF-Serving exports metrics over its REST port
        ports = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
        if len(set(ports)) != len(ports):
            problems.append(f"published ports must differ: {ports}")
        if not re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", self.bind_address or ""):
            problems.append(f"bind_address must be an IPv4 or IPv6 address, not {self.bind_address!r}")
        if not re.fullmatch(r"[0-9]+(:[0-9]+)?", self.user):
            problems.append(f"user must be uid or uid:gid (numbers), not {self.user!r}")
        for name in ("mem_limit", "shm_size"):
            if not _SIZE.fullmatch(str(getattr(self, name)).lower()):
                problems.append(f"{name} must look like 4g, 512m or 1073741824, not {getattr(self, name)!r}")
        if not self.cpus > 0 or self.threads < 1 or self.pids_limit < 64:
            problems.append("cpus must be > 0, threads >= 1, pids_limit >= 64")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.gpu_count != "all" and not (isinstance(self.gpu_count, int) and self.gpu_count >= 1):
            problems.append(f"gpu_count must be 'all' or a number >= 1, not {self.gpu_count!r}")
        if not (self.repo_mount.startswith("/") and self.repo_mount.isprintable()):
            problems.append(f"repo_mount must be an absolute container path, not {self.repo_mount!r}")
        if self.restart not in ("no", "always", "on-failure", "unless-stopped"):
            problems.append(f"restart must be no, always, on-failure or unless-stopped, not {self.restart!r}")
        if not self.service:
            object.__setattr__(self, "service", self.target)
        if not self.repository:
            object.__setattr__(self, "repository", DEFAULT_REPOSITORY.get(self.target, "."))
        if "\x00" in self.repository or not self.repository.isprintable():
            problems.append(f"repository must be a printable path, not {self.repository!r}")
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", self.service):
            problems.append(f"service must be a plain name, not {self.service!r}")
        if problems:
            raise TargetError("invalid compose options: " + "; ".join(problems))

    @property
    def stack_name(self) -> str:
        """The default stack folder name: ``triton-python``, ``triton-tensorflow``, ``tfserving`` (+ ``-gpu``)."""
        name = f"triton-{self.backend}" if self.target == "triton" else "tfserving"
        return name + ("-gpu" if self.gpu else "")

    @property
    def default_base_image(self) -> str:
        if self.target == "tfserving":
            return default_image("tfserving", gpu=self.gpu)
        return default_image("triton-tensorflow" if self.backend == "tensorflow" else "triton-python")

    @property
    def image_name(self) -> str:
        if self.image:
            return self.image
        if self.target == "triton" and self.backend == "python":
            return f"packager/triton-python-tf:{self.tf_version}"
        return self.default_base_image

    @property
    def builds(self) -> bool:
        """Only the Python backend needs an image of its own (the official one lacks TensorFlow)."""
        return self.build and self.target == "triton" and self.backend == "python"


def _installed(dist: str, default: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return default


def _port(bind: str, host: int, container: int) -> str:
    host_ip = f"[{bind}]" if ":" in bind else bind
    return f"{host_ip}:{host}:{container}"


def server_command(o: StackOptions) -> list[str]:
    """The server's command line inside the container (TF-Serving: the arguments of its entrypoint)."""
    mount = o.repo_mount.rstrip("/") or "/"
    if o.target == "triton":
        cmd = [
            "tritonserver",
            f"--model-repository={mount}",
            # No remote load/unload: the repository is what the image was started with.
            "--model-control-mode=none",
            # Strict model config (the replacement of the deprecated --strict-model-config=true): the
            # rendered config.pbtxt is used as written, never auto-completed.
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            f"--http-port={TRITON_PORTS['http']}",
            f"--grpc-port={TRITON_PORTS['grpc']}",
        ]
        if o.metrics_port:
            cmd += ["--allow-metrics=true", f"--metrics-port={TRITON_PORTS['metrics']}"]
        else:
            cmd += ["--allow-metrics=false"]
        if o.backend == "tensorflow":
            cmd += [
                "--backend-config=tensorflow,version=2",
                # TF-Text string ops have CPU kernels only; soft placement lets them run beside GPU ops.
                "--backend-config=tensorflow,allow-soft-placement=true",
            ]
        else:
            cmd += [
                # The stub exchanges tensors through /dev/shm: start small, grow in 1 MiB steps.
                "--backend-config=python,shm-default-byte-size=4194304",
                "--backend-config=python,shm-growth-byte-size=1048576",
            ]
        return cmd
    intra, inter = thread_split(o.threads)
    return [
        f"--port={TFSERVING_PORTS['grpc']}",
        f"--rest_api_port={TFSERVING_PORTS['rest']}",
        f"--model_config_file={mount}/{o.models_config}",
        # The config file is read once: no polling, the same as Triton's model control "none".
        "--model_config_file_poll_wait_seconds=0",
        "--enable_batching=true",
        f"--batching_parameters_file={mount}/{o.batching_parameters}",
        "--enable_model_warmup=true",
        f"--tensorflow_intra_op_parallelism={intra}",
        f"--tensorflow_inter_op_parallelism={inter}",
    ]


def server_environment(o: StackOptions) -> dict[str, str]:
    """The server's environment (the compose stack's and the Kubernetes pod's)."""
    intra, inter = thread_split(o.threads)
    return {
        # TensorFlow reads these at start-up (both the TF backend and TF inside the Python backend);
        # TF-Serving takes its thread counts as flags instead (server_command).
        **({"TF_NUM_INTRAOP_THREADS": str(intra),
            "TF_NUM_INTEROP_THREADS": str(inter),
            "OMP_NUM_THREADS": str(intra),
            "TF_CPP_MIN_LOG_LEVEL": "1"} if o.target == "triton" else {}),
        # oneDNN fuses MatMul + BiasAdd + GELU (TF leaves it off on CPUs without AVX-512; bench/).
        "TF_ENABLE_ONEDNN_OPTS": "1",
        # bf16 exports only: oneDNN keeps its reordered bfloat16 weights (none for fp32).
        **serving_environment(o.precision),
    }


def healthcheck(o: StackOptions) -> list[str]:
    """A readiness probe that needs only bash (no curl in the images): HTTP/1.0 over /dev/tcp."""
    if o.target == "triton":
        path, port, expect = "/v2/health/ready", TRITON_PORTS["http"], "grep -q ' 200 '"
        reader = "head -n 1 <&3"
    else:
        path, port = f"/v1/models/{o.model_name}", TFSERVING_PORTS["rest"]
        reader, expect = "cat <&3", "grep -q AVAILABLE"
    script = (
        f"exec 3<>/dev/tcp/127.0.0.1/{port} && "
        f"printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && {reader} | {expect}"
    )
    return ["CMD", "bash", "-c", script]


def _model_path_ok(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name))


def render_compose(options: StackOptions = StackOptions(), **overrides: Any) -> dict[str, str]:
    """Render one stack folder: ``docker-compose.yml``, ``Dockerfile`` and ``README.md``.

    Args:
        options: the stack options.
        **overrides: fields of :class:`StackOptions` to change (shorthand for ``replace(options, ...)``).

    Returns:
        ``{relative path: text}``, to be written with :func:`packager.targets.writer.write_tree`.

    Raises:
        TargetError: invalid options (every problem listed at once).
    """
    o = replace(options, **overrides) if overrides else options
    if o.target == "tfserving" and not _model_path_ok(o.model_name):
        # It is part of a URL path in the healthcheck.
        raise TargetError(f"TF-Serving model name must be [A-Za-z0-9_.-], not {o.model_name!r}")
    ports = [("http", o.http_port, TRITON_PORTS["http"] if o.target == "triton" else TFSERVING_PORTS["rest"]),
             ("grpc", o.grpc_port, TRITON_PORTS["grpc"] if o.target == "triton" else TFSERVING_PORTS["grpc"])]
    if o.metrics_port:
        ports.append(("metrics", o.metrics_port, TRITON_PORTS["metrics"]))
    ctx = dict(
        o=o,
        opts={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()},
        image=o.image_name,
        base_image=o.base_image or o.default_base_image,
        stack=o.stack_name,
        command=server_command(o),
        healthcheck=healthcheck(o),
        ports=[(name, _port(o.bind_address, host, inner)) for name, host, inner in ports],
        published=[(name, host) for name, host, _ in ports],
        environment=server_environment(o),
        gpu_count=o.gpu_count,
    )
    return {
        "docker-compose.yml": render_template("compose/docker-compose.yml.j2", **ctx),
        "Dockerfile": render_template(f"compose/Dockerfile.{o.stack_name.removesuffix('-gpu')}.j2", **ctx),
        "README.md": render_template("compose/README.md.j2", **ctx),
    }


DEFAULT_MODEL_NAME = "all-minilm-l6-v2"  # what `packager build` names the embedded default model
EXAMPLES = {
    "triton-python": dict(target="triton", backend="python", model_name=DEFAULT_MODEL_NAME),
    "triton-python-gpu": dict(target="triton", backend="python", gpu=True, model_name=DEFAULT_MODEL_NAME),
    "triton-tensorflow": dict(target="triton", backend="tensorflow", model_name=DEFAULT_MODEL_NAME),
    "triton-tensorflow-gpu": dict(target="triton", backend="tensorflow", gpu=True, model_name=DEFAULT_MODEL_NAME),
    "tfserving": dict(target="tfserving", model_name=DEFAULT_MODEL_NAME),
}
"""The ready example stacks shipped in ``compose/`` (regenerate with ``python -m packager.targets.compose``)."""


def write_stack(stack_dir: str | Path, options: StackOptions, *, repository: str | Path | None = None,
                force: bool = True) -> Path:
    """Render a stack and write it atomically to ``stack_dir``.

    Args:
        stack_dir: the stack folder, e.g. ``compose/triton-python``.
        options: the stack options.
        repository: the repository folder as a path from here (absolute or relative to the current
            directory); it is written into the compose file relative to ``stack_dir``, so the stack
            keeps working when the project folder moves. ``None`` keeps ``options.repository``.
        force: replace the stack's files (they are generated; nothing else lives there).

    Returns:
        ``stack_dir`` as an absolute path.
    """
    import os

    stack_dir = Path(stack_dir).absolute()
    if repository is not None:
        options = replace(options, repository=os.path.relpath(Path(repository).absolute(), stack_dir))
    files = render_compose(options)
    return write_tree(stack_dir, files, force=force, replace=list(files))


def main(argv: list[str] | None = None) -> int:
    """``python -m packager.targets.compose [OUT]``: write the example stacks (default ``compose/``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "compose")
    for name, kw in EXAMPLES.items():
        print(write_stack(out / name, StackOptions(**kw)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
