"""Build the container images the stacks and their tests run, without any registry.

No registry can be reached from the machines this project is built on, so nothing is pulled:

1. :func:`base_image` makes a Debian base with ``debootstrap --variant=minbase`` and imports it with
   ``docker import`` (about 40 s and 200 MB, once).
2. :func:`triton_cpu_image` builds on it a CPU Triton Inference Server image: the ``tritonserver``
   binary with its Python backend from the ``nvidia-pytriton`` wheel, Debian's Python 3.11 (the wheel's
   backend stub is built for it), and the pinned TensorFlow + TF-Text from PyPI
   (``docker build --network host``).

Both images are tagged with a content hash of everything that goes into them (suite, mirror,
packages; the rendered Dockerfile and the base's tag), so a second call finds the image and returns at
once, and a change of any input builds a new one.

Example:
    >>> tag = triton_cpu_image()          # doctest: +SKIP
    >>> tag
    'packager/tritonserver-cpu:3f2a...'
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from .errors import PackagerError
from .settings import work_dir

# Bump when the recipe changes in a way the hashed inputs do not show.
RECIPE_VERSION = 1
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# What the Triton image needs from Debian: the interpreter (+ venv for pip), and libpython for the
# Python backend stub, which embeds the interpreter.
BASE_PACKAGES = ("python3", "python3-venv", "libpython3.11")
Log = Callable[[str], None]


class ContainerError(PackagerError):
    """The docker engine is missing, or an image could not be built."""


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def docker_client(timeout: int = 600):
    """A docker SDK client for the local engine.

    Raises:
        ContainerError: when the ``docker`` package is missing or no engine answers.
    """
    try:
        import docker
    except ImportError as exc:  # pragma: no cover - pinned in requirements.txt
        raise ContainerError("the docker SDK is missing: pip install docker") from exc
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        raise ContainerError(
            f"no docker engine answers ({exc.__class__.__name__}: {exc}); "
            "start one, e.g. `bash .ci/install-docker.sh`"
        ) from exc
    return client


def content_hash(obj) -> str:
    """A short, stable hash of a JSON-able object (the image tag)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


# ------------------------------------------------------------------------------------------ base
@dataclass(frozen=True)
class BaseSpec:
    """What goes into the debootstrap base image (all of it is hashed into the tag)."""

    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = DEFAULT_MIRROR
    include: tuple[str, ...] = BASE_PACKAGES
    repository: str = "packager/debian"
    recipe: int = RECIPE_VERSION

    @property
    def tag(self) -> str:
        spec = asdict(self)
        spec.pop("repository")
        return f"{self.repository}:{self.suite}-{self.variant}-{content_hash(spec)}"


def base_image(spec: BaseSpec = BaseSpec(), *, client=None, log: Log = _log_stderr) -> str:
    """Return the tag of the Debian base image, making it with debootstrap + ``docker import`` if missing.

    Needs root (debootstrap) and the ``debootstrap`` program (Debian package ``debootstrap``).

    Args:
        spec: suite, variant, mirror and extra packages.
        client: a docker SDK client (default: :func:`docker_client`).
        log: where progress lines go.

    Returns:
        The image tag, e.g. ``packager/debian:bookworm-minbase-<hash>``.
    """
    client = client or docker_client()
    tag = spec.tag
    if _image_exists(client, tag):
        log(f"base image {tag}: cached")
        return tag
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ContainerError("debootstrap is missing: apt-get install debootstrap (or run .ci/install-docker.sh)")
    if os.geteuid() != 0:
        raise ContainerError("debootstrap needs root to make the base image")
    work = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=work_dir()))
    t0 = time.monotonic()
    try:
        root = work / "rootfs"
        cmd = [debootstrap, f"--variant={spec.variant}"]
        if spec.include:
            cmd.append("--include=" + ",".join(spec.include))
        cmd += [spec.suite, str(root), spec.mirror]
        log(f"base image {tag}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise ContainerError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
        # The downloaded .debs and apt lists are a third of the tree and nothing at run time needs them.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (root / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tarball), "."], check=True)
        repo, _, version = tag.rpartition(":")
        client.api.import_image_from_file(
            str(tarball), repository=repo, tag=version,
            changes=['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"],
        )
        if not _image_exists(client, tag):
            raise ContainerError(f"docker import did not produce {tag}")
        log(f"base image {tag}: made in {time.monotonic() - t0:.0f} s")
        return tag
    finally:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def _unmount_under(path: Path) -> None:
    """Unmount what debootstrap left mounted under ``path`` (/proc, /sys when it failed half-way),
    so that removing the tree can never reach into the host's pseudo filesystems."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for mnt in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], check=False, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------ triton cpu
def _installed(dist: str, default: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return default


def _host_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts: the build needs it when traffic goes through a proxy."""
    for env in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(env) and Path(os.environ[env]).is_file():
            return Path(os.environ[env])
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


@dataclass(frozen=True)
class TritonCpuSpec:
    """What goes into the CPU Triton image. Versions default to those installed here, so the image
    runs the SavedModels this machine exports (the TF-Text op libraries must match TF exactly)."""

    tf_package: str = "tensorflow-cpu"
    tf_version: str = field(default_factory=lambda: _installed("tensorflow", "2.21.0"))
    tf_text_version: str = field(default_factory=lambda: _installed("tensorflow-text", "2.21.1"))
    pytriton_version: str = field(default_factory=lambda: _installed("nvidia-pytriton", "0.7.0"))
    # The wheel's Python backend is built for numpy 1.x (nvidia-pytriton pins it): with numpy 2 its
    # BYTES decoding reads garbage lengths and the server aborts (seen at model warmup).
    numpy_version: str = field(default_factory=lambda: _installed("numpy", "1.26.4"))
    python_version: str = "3.11"
    repository: str = "packager/tritonserver-cpu"


def render_triton_cpu_dockerfile(spec: TritonCpuSpec, base: str, *, ca_bundle: str | None) -> str:
    """Render the CPU Triton Dockerfile (pure: no docker needed)."""
    from .templating import render_template

    return render_template(
        "compose/Dockerfile.triton-cpu.j2",
        base_image=base, ca_bundle=ca_bundle, **{k: v for k, v in asdict(spec).items() if k != "repository"}
    )


def _stream_build(client, context: Path, tag: str, buildargs: dict, log: Log) -> None:
    """Run a classic-builder build and raise with the tail of the log when it fails."""
    tail: list[str] = []
    for chunk in client.api.build(
        path=str(context), tag=tag, rm=True, forcerm=True, network_mode="host", decode=True,
        buildargs=buildargs,
    ):
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                if line.strip():
                    tail = (tail + [line])[-40:]
                    if line.startswith("Step ") or "tf " in line:
                        log(f"  {line}")
        if "error" in chunk:
            raise ContainerError(f"docker build {tag} failed: {chunk['error']}\n" + "\n".join(tail))


def triton_cpu_image(
    spec: TritonCpuSpec | None = None, *, base: BaseSpec = BaseSpec(), client=None, log: Log = _log_stderr,
) -> str:
    """Return the tag of the CPU Triton image, building it (and its base) if missing.

    Args:
        spec: package versions (default: those installed in this environment).
        base: the Debian base to build on.
        client: a docker SDK client (default: :func:`docker_client`).
        log: where progress lines go.

    Returns:
        The image tag, ``packager/tritonserver-cpu:<hash>``.

    Raises:
        ContainerError: no engine, debootstrap failed, or the build failed (with the build log's tail).
    """
    spec = spec or TritonCpuSpec()
    client = client or docker_client()
    base_tag = base_image(base, client=client, log=log)
    ca = _host_ca_bundle()
    # The hash covers the Dockerfile as rendered without the CA line: the CA changes nothing in the image.
    tag = f"{spec.repository}:{content_hash([render_triton_cpu_dockerfile(spec, base_tag, ca_bundle=None), RECIPE_VERSION])}"
    if _image_exists(client, tag):
        log(f"triton image {tag}: cached")
        return tag
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="triton-cpu-", dir=_mkcache()) as ctx:
        ctx_path = Path(ctx)
        if ca:
            shutil.copyfile(ca, ctx_path / "build-ca.pem")
        (ctx_path / "Dockerfile").write_text(
            render_triton_cpu_dockerfile(spec, base_tag, ca_bundle="build-ca.pem" if ca else None)
        )
        buildargs = {k: os.environ[k] for k in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST") if os.environ.get(k)}
        log(f"triton image {tag}: building on {base_tag} (downloads TensorFlow; a few minutes)")
        _stream_build(client, ctx_path, tag, buildargs, log)
    size = client.images.get(tag).attrs.get("Size", 0) / 2**20
    log(f"triton image {tag}: built in {time.monotonic() - t0:.0f} s, {size:.0f} MiB")
    return tag


def _mkcache() -> str:
    return str(work_dir())


def main(argv: list[str] | None = None) -> int:
    """``python -m packager.containers [base|triton-cpu]``: build (or find) an image, print its tag."""
    what = (argv if argv is not None else sys.argv[1:]) or ["triton-cpu"]
    try:
        tag = base_image() if what[0] == "base" else triton_cpu_image()
    except ContainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------------- model image
MODEL_IMAGE_REPOSITORY = "packager/model-repository"
_CONTEXT_DOCKERFILE = ".packager-model-image.Dockerfile"


def _repository_members(repository_dir: Path) -> list[tuple[str, Path]]:
    """Every file and folder under a repository as (relative posix path, path), sorted; no symlinks
    (one could point anywhere on the build machine)."""
    out = []
    for path in sorted(repository_dir.rglob("*")):
        rel = path.relative_to(repository_dir).as_posix()
        if path.is_symlink():
            raise ContainerError(f"{path} is a symlink: a model image holds only plain files")
        if rel.split("/")[0] in (_CONTEXT_DOCKERFILE, ".dockerignore"):
            continue
        out.append((rel, path))
    return out


def model_image(
    repository_dir: str | os.PathLike, *, dockerfile: str | None = None, base: BaseSpec = BaseSpec(), client=None,
    log: Log = _log_stderr, repository: str = MODEL_IMAGE_REPOSITORY,
) -> str:
    """Return the tag of an image holding a Triton repository at ``/models``, building it if missing.

    It is the Kubernetes bundle's model image (``kubernetes/<model>/model-image/Dockerfile``, built
    here ``FROM`` the debootstrap base instead of busybox: nothing is pulled). The build context is a
    tar made here with normalised ownership (0:0), modes (0644 files, 0755 folders and executables) and
    times, so the image does not depend on the umask or clock of the machine that wrote the repository,
    and its tag is a hash of the Dockerfile, the base and every file's path, mode and sha256.

    Args:
        repository_dir: the Triton repository (the folder holding the model folders).
        dockerfile: the Dockerfile text (default: :func:`packager.targets.kubernetes.model_image_dockerfile`).
        base: the Debian base it is built on (passed as the ``BASE_IMAGE`` build argument).
        client: a docker SDK client (default: :func:`docker_client`).
        log: where progress lines go.
        repository: the image repository part of the tag.

    Returns:
        The image tag, ``packager/model-repository:<hash>``.

    Raises:
        ContainerError: no engine, an empty repository or a symlink in it, or the build failed.
    """
    import io
    import tarfile

    root = Path(repository_dir)
    if not root.is_dir():
        raise ContainerError(f"{root} is not a folder")
    members = _repository_members(root)
    if not any(p.is_file() for _, p in members):
        raise ContainerError(f"{root} holds no files: build the repository first (packager build --target triton)")
    if dockerfile is None:
        from .targets.kubernetes import model_image_dockerfile

        dockerfile = model_image_dockerfile()
    client = client or docker_client()
    base_tag = base_image(base, client=client, log=log)

    def mode(p: Path) -> int:
        return 0o755 if p.is_dir() or p.stat().st_mode & 0o111 else 0o644

    digest = []
    for rel, p in members:
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            digest.append([rel, mode(p), h.hexdigest()])
        else:
            digest.append([rel, mode(p), None])
    tag = f"{repository}:{content_hash([dockerfile, base_tag, digest, RECIPE_VERSION])}"
    if _image_exists(client, tag):
        log(f"model image {tag}: cached")
        return tag
    t0 = time.monotonic()
    with tempfile.TemporaryFile(dir=_mkcache()) as ctx:
        with tarfile.open(fileobj=ctx, mode="w") as tar:
            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))

            add_bytes(_CONTEXT_DOCKERFILE, dockerfile.encode())
            # The Dockerfile copies the whole context: keep the build's own files out of /models.
            add_bytes(".dockerignore", f"{_CONTEXT_DOCKERFILE}\n.dockerignore\n".encode())
            for rel, p in members:
                info = tar.gettarinfo(str(p), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode, info.mtime = mode(p), 0
                if p.is_file():
                    with open(p, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
        ctx.seek(0)
        log(f"model image {tag}: building on {base_tag} from {root}")
        tail: list[str] = []
        for chunk in client.api.build(fileobj=ctx, custom_context=True, dockerfile=_CONTEXT_DOCKERFILE, tag=tag,
                                      rm=True, forcerm=True, decode=True, buildargs={"BASE_IMAGE": base_tag},
                                      network_mode="none"):
            if "stream" in chunk:
                tail = (tail + [line for line in chunk["stream"].splitlines() if line.strip()])[-40:]
            if "error" in chunk:
                raise ContainerError(f"docker build {tag} failed: {chunk['error']}\n" + "\n".join(tail))
    log(f"model image {tag}: built in {time.monotonic() - t0:.0f} s")
    return tag
