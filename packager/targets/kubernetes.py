"""Kubernetes and KServe manifests for a Triton model repository: a pure render from plain options.

:func:`render` returns ``{relative path: text}`` for one bundle folder (by default
``kubernetes/<model>/``; see ``docs/kubernetes.md``)::

    base/                    kustomize base: ServiceAccount, Deployment (tritonserver), Service,
                             PodDisruptionBudget, HorizontalPodAutoscaler (+ ServiceMonitor, optional)
    overlays/cpu/            the base as is, with the images to run (``kustomize edit set image``)
    overlays/gpu/            + nvidia.com/gpu limits, node selector, toleration, KIND_GPU instances
    kserve/                  an InferenceService (serving.kserve.io/v1beta1, Triton runtime)
    monitoring/              the queue-time autoscaler variant: its HPA and the Prometheus adapter rule
    model-image/Dockerfile   the recipe of the model image (the repository at /models)
    README.md                the commands for this bundle

The tritonserver command line is :func:`packager.targets.compose.server_command`'s, so a pod serves
exactly like the compose stack. The repository reaches the pod in one of two ways (``repository_source``):

* ``"image"``: a model image holds the repository at ``/models``; an init container copies it into an
  ``emptyDir`` that the server mounts read-only. The same image is a KServe ``oci://`` modelcar.
* ``"url"``: Triton reads ``s3://``, ``gs://`` or ``as://`` itself (credentials from a Secret).

KIND_GPU: the instance kind lives in config.pbtxt inside the repository, which no overlay can patch.
The GPU overlay therefore adds ``--model-config-name=gpu``: Triton then loads
``<model>/configs/gpu.pbtxt`` (written by :func:`write_gpu_configs`: config.pbtxt with KIND_GPU
instances) and falls back to config.pbtxt where a model has none. One model image serves both overlays.

Every value that reaches YAML is a double-quoted JSON string (valid YAML), so a hostile image name or
URL stays data. Model names are sanitized to ``[a-z0-9_-]`` before they get here.

Example:
    >>> files = render(KubernetesOptions(), model_name="minilm")
    >>> sorted(f for f in files if f.startswith("overlays/"))
    ['overlays/cpu/kustomization.yaml', 'overlays/gpu/args-gpu.yaml', 'overlays/gpu/deployment-gpu.yaml', 'overlays/gpu/kustomization.yaml']
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..encoders.precision import PRECISIONS
from ..errors import TargetError
from ..templating import render_template, yaml_plain_str
from .compose import TRITON_PORTS, StackOptions, server_command, server_environment
from .triton import gpu_config  # noqa: F401  (the GPU overlay's config; re-exported for tools)

SOURCES = ("image", "url")
URL_SCHEMES = ("s3://", "gs://", "as://")
AUTOSCALE_METRICS = ("cpu", "queue_time")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PULL_POLICIES = ("IfNotPresent", "Always", "Never")
# Where the model image keeps the repository: KServe's modelcar convention, so the same image works as
# an ``oci://`` storageUri.
MODEL_IMAGE_PATH = "/models"
# Where the init container sees the emptyDir (the server mounts it at repo_mount).
INIT_MOUNT = "/mnt/repository"
# The custom queue-time metric the Prometheus adapter rule publishes (per pod, microseconds per request).
QUEUE_METRIC = "triton_queue_time_us_per_request"
KSERVE_MODEL_STORE = "/mnt/models"
# The official image with Triton's TensorFlow backend (its last release): KServe's runtimeVersion is its tag.
TRITON_TF_TAG = "25.02-tf2-python-py3"
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# An image reference: [registry[:port]/]path[:tag][@digest], printable, no spaces or quotes.
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


@dataclass(frozen=True)
class KubernetesOptions:
    """How the Kubernetes bundle is laid out (every field has a working default).

    Attributes:
        app_name: name of every object and the ``app.kubernetes.io/instance`` label (a DNS label, at most
            63 characters). Default: the model name with ``_`` as ``-``.
        namespace: the namespace the kustomization (and the InferenceService) put everything in.
        backend: Triton backend of the repository: ``"python"`` or ``"tensorflow"`` (as ``--backend``).
        repository_source: ``"image"`` (a model image + an init container copying it into an emptyDir)
            or ``"url"`` (Triton reads ``repository_url`` itself).
        repository_url: ``s3://bucket/path``, ``gs://bucket/path`` or ``as://account/container/path``: the
            repository root (the folder holding the model folders). Needs ``repository_source="url"``.
        storage_secret: name of a Secret whose keys become the server's environment (``envFrom``): e.g.
            ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION`` for s3,
            ``AZURE_STORAGE_ACCOUNT``/``AZURE_STORAGE_KEY`` for as. Empty: none (workload identity).
        model_image: the model image (repository at ``/models``). Default
            ``packager/<model>-repository:<version>``.
        server_image: the tritonserver image of the CPU overlay. Default: the compose stack's image
            (``packager/triton-python-tf:<tf>`` for the python backend, the official 25.02 image for
            the tensorflow backend).
        gpu_server_image: the tritonserver image of the GPU overlay (default: ``server_image``; the
            python backend's Dockerfile installs the GPU-enabled ``tensorflow`` wheel by default).
        image_pull_policy: ``IfNotPresent``, ``Always`` or ``Never``.
        repo_mount: where the server sees the repository (the build's ``repo_mount``; the tensorflow
            backend's op library paths are absolute under it).
        repository_size: ``sizeLimit`` of the repository emptyDir (image source).
        min_replicas, max_replicas: the autoscaler's range (the Deployment leaves ``replicas`` to it).
        autoscale_metric: ``"cpu"`` (resource metric, the default) or ``"queue_time"`` (Triton's queue
            time per request through a Prometheus adapter; see ``monitoring/``).
        target_cpu_utilization: percent of the CPU request the autoscaler aims for.
        target_queue_time_us: average queue time per request (microseconds) the queue-time variant aims for.
        cpu_request, cpu_limit, memory_request, memory_limit: the server's resources (quantities).
        threads: the cores TensorFlow uses in all (as in the compose stack: :func:`packager.settings.thread_split`).
        precision: the served export's precision (``packager build`` sets it from the export): a
            ``"bf16"`` export's pods get the compose stack's bf16 environment too.
        shm_size: ``sizeLimit`` of the memory-backed ``/dev/shm`` (the python backend's tensors cross it).
        tmp_size: ``sizeLimit`` of the ``/tmp`` emptyDir (with ``url``, Triton downloads the repository here).
        run_as_user, run_as_group, fs_group: the non-root ids (1000 is the Triton images' own user).
        startup_timeout_s: how long the startup probe allows for TensorFlow's first load before the
            kubelet restarts the container.
        probe_period_s: readiness and startup probe period.
        gpu_count: ``nvidia.com/gpu`` per pod in the GPU overlay.
        gpu_node_selector: ``key=value`` node labels the GPU pods need (default: GPU feature discovery's).
        gpu_tolerations: taint keys the GPU pods tolerate (``operator: Exists``, ``effect: NoSchedule``).
        gpu_config_name: the ``--model-config-name`` of the GPU overlay (``configs/<name>.pbtxt``).
        service_type: ``ClusterIP``, ``NodePort`` or ``LoadBalancer``.
        service_monitor: add a ServiceMonitor (needs the Prometheus operator's CRDs in the cluster).
        scrape_interval: the ServiceMonitor's interval.
        pdb_max_unavailable: pods a voluntary disruption (drain, upgrade) may take down at once.
        kserve: write ``kserve/inferenceservice.yaml``.
        kustomize_legacy: write kustomizations in the syntax of kustomize v2 (``bases``,
            ``patchesStrategicMerge``, ``patchesJson6902``: kubectl <= 1.20, e.g. Debian 12's) instead of
            kustomize v4+'s (``resources``, ``patches``: kubectl >= 1.21). Same objects either way.
        part_of: the ``app.kubernetes.io/part-of`` label.
    """

    app_name: str = ""
    namespace: str = "default"
    backend: str = "python"
    repository_source: str = "image"
    repository_url: str = ""
    storage_secret: str = ""
    model_image: str = ""
    server_image: str = ""
    gpu_server_image: str = ""
    image_pull_policy: str = "IfNotPresent"
    repo_mount: str = "/models"
    repository_size: str = "2Gi"
    min_replicas: int = 2
    max_replicas: int = 8
    autoscale_metric: str = "cpu"
    target_cpu_utilization: int = 70
    target_queue_time_us: int = 20000
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "2Gi"
    memory_limit: str = "4Gi"
    threads: int = 2
    precision: str = "fp32"
    shm_size: str = "256Mi"
    tmp_size: str = "1Gi"
    run_as_user: int = 1000
    run_as_group: int = 1000
    fs_group: int = 1000
    startup_timeout_s: int = 600
    probe_period_s: int = 5
    gpu_count: int = 1
    gpu_node_selector: tuple[str, ...] = ("nvidia.com/gpu.present=true",)
    gpu_tolerations: tuple[str, ...] = ("nvidia.com/gpu",)
    gpu_config_name: str = "gpu"
    service_type: str = "ClusterIP"
    service_monitor: bool = False
    scrape_interval: str = "15s"
    pdb_max_unavailable: int = 1
    kserve: bool = True
    kustomize_legacy: bool = False
    part_of: str = "packager"

    def __post_init__(self):
        problems = []

        def check(ok: bool, msg: str) -> None:
            if not ok:
                problems.append(msg)

        for name in ("gpu_node_selector", "gpu_tolerations"):
            value = getattr(self, name)
            if isinstance(value, (list, str)):
                object.__setattr__(self, name, tuple([value] if isinstance(value, str) else value))
        check(not self.app_name or _dns_label(self.app_name),
              f"app_name must be a DNS label ([a-z0-9-], at most 63, alphanumeric at both ends), not {self.app_name!r}")
        check(_dns_label(self.namespace), f"namespace must be a DNS label, not {self.namespace!r}")
        check(self.backend in ("python", "tensorflow"), f"backend must be python or tensorflow, not {self.backend!r}")
        check(self.repository_source in SOURCES,
              f"repository_source must be one of {', '.join(SOURCES)}, not {self.repository_source!r}")
        if self.repository_source == "url":
            check(self.repository_url.startswith(URL_SCHEMES) and _printable(self.repository_url)
                  and len(self.repository_url) > 5,
                  f"repository_url must start with {', '.join(URL_SCHEMES)} (Triton reads those itself), "
                  f"not {self.repository_url!r}")
        elif self.repository_url:
            problems.append("repository_url needs repository_source='url'")
        check(not self.storage_secret or _dns_label(self.storage_secret),
              f"storage_secret must be a Secret name (DNS label), not {self.storage_secret!r}")
        for name in ("model_image", "server_image", "gpu_server_image"):
            value = getattr(self, name)
            check(not value or (_IMAGE.fullmatch(value) is not None and len(value) < 512),
                  f"{name} must be an image reference like registry.example.com/team/name:tag, not {value!r}")
        check(self.image_pull_policy in PULL_POLICIES,
              f"image_pull_policy must be one of {', '.join(PULL_POLICIES)}, not {self.image_pull_policy!r}")
        check(self.repo_mount.startswith("/") and _printable(self.repo_mount) and " " not in self.repo_mount
              and self.repo_mount.rstrip("/") not in ("", "/tmp", "/dev/shm", INIT_MOUNT),
              f"repo_mount must be an absolute path other than /, /tmp, /dev/shm, {INIT_MOUNT}; not {self.repo_mount!r}")
        for name in ("repository_size", "cpu_request", "cpu_limit", "memory_request", "memory_limit",
                     "shm_size", "tmp_size"):
            check(_QUANTITY.fullmatch(str(getattr(self, name))) is not None,
                  f"{name} must be a Kubernetes quantity (2, 500m, 4Gi ...), not {getattr(self, name)!r}")
        if not problems:
            check(_cpu(self.cpu_request) <= _cpu(self.cpu_limit), "cpu_request must not exceed cpu_limit")
            check(_bytes(self.memory_request) <= _bytes(self.memory_limit), "memory_request must not exceed memory_limit")
        check(1 <= self.min_replicas <= self.max_replicas,
              f"replicas need 1 <= min_replicas ({self.min_replicas}) <= max_replicas ({self.max_replicas})")
        check(self.autoscale_metric in AUTOSCALE_METRICS,
              f"autoscale_metric must be one of {', '.join(AUTOSCALE_METRICS)}, not {self.autoscale_metric!r}")
        check(1 <= self.target_cpu_utilization <= 100, "target_cpu_utilization must be 1..100 (percent)")
        check(self.target_queue_time_us >= 1, "target_queue_time_us must be >= 1")
        check(self.threads >= 1, "threads must be >= 1")
        check(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        for name in ("run_as_user", "run_as_group", "fs_group"):
            check(isinstance(getattr(self, name), int) and 1 <= getattr(self, name) < 2**31,
                  f"{name} must be a non-root id (1 .. 2^31-1), not {getattr(self, name)!r}")
        check(self.probe_period_s >= 1, "probe_period_s must be >= 1")
        check(self.startup_timeout_s >= self.probe_period_s, "startup_timeout_s must be >= probe_period_s")
        check(self.gpu_count >= 1, "gpu_count must be >= 1")
        for sel in self.gpu_node_selector:
            key, eq, value = str(sel).partition("=")
            check(bool(eq) and _LABEL_KEY.fullmatch(key) is not None and _LABEL_VALUE.fullmatch(value) is not None
                  and len(value) <= 63, f"gpu_node_selector entries must be label=value, not {sel!r}")
        for key in self.gpu_tolerations:
            check(_LABEL_KEY.fullmatch(str(key)) is not None, f"gpu_tolerations must be taint keys, not {key!r}")
        check(re.fullmatch(r"[A-Za-z0-9_.-]+", self.gpu_config_name or "") is not None,
              f"gpu_config_name must be a plain file stem (configs/<name>.pbtxt), not {self.gpu_config_name!r}")
        check(self.service_type in SERVICE_TYPES,
              f"service_type must be one of {', '.join(SERVICE_TYPES)}, not {self.service_type!r}")
        check(_DURATION.fullmatch(self.scrape_interval) is not None,
              f"scrape_interval must look like 15s or 1m, not {self.scrape_interval!r}")
        check(self.pdb_max_unavailable >= 1, "pdb_max_unavailable must be >= 1 (0 would block every node drain)")
        check(_LABEL_VALUE.fullmatch(self.part_of) is not None and len(self.part_of) <= 63,
              f"part_of must be a label value, not {self.part_of!r}")
        if problems:
            raise TargetError("invalid Kubernetes options: " + "; ".join(problems))


def _dns_label(value: str) -> bool:
    return isinstance(value, str) and len(value) <= 63 and _DNS_LABEL.fullmatch(value) is not None


def _printable(value: str) -> bool:
    return isinstance(value, str) and value.isprintable() and '"' not in value and "\\" not in value


def _cpu(q: str) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(re.sub(r"[A-Za-z]+$", "", q))


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 1e-3,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _bytes(q: str) -> float:
    """A Kubernetes quantity as a number (``4Gi`` -> 4294967296)."""
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    if not m or m.group(2) not in _UNITS:
        raise TargetError(f"not a quantity: {q!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


q = yaml_plain_str  # a YAML double-quoted scalar that reads back as exactly str(value)


def ymap(mapping: Mapping[str, Any], indent: int) -> str:
    """A YAML block mapping of quoted scalars at ``indent`` spaces (no trailing newline)."""
    return "\n".join(f"{' ' * indent}{q(k)}: {q(v)}" for k, v in mapping.items())


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """``registry:5000/team/name:tag@sha256:...`` -> (``registry:5000/team/name``, ``tag``, ``sha256:...``).

    The split kustomize's ``images:`` transformer needs (a port is not a tag: only a ``:`` after the
    last ``/`` starts one).
    """
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = None
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest or None


# ------------------------------------------------------------------------------------------ pieces
def app_name(options: KubernetesOptions, model_name: str) -> str:
    """The objects' name: ``options.app_name`` or the model name made a DNS label.

    Raises:
        TargetError: the model name cannot be one (too long): set ``app_name``.
    """
    name = options.app_name or model_name.replace("_", "-").strip("-")
    if not _dns_label(name):
        raise TargetError(f"{name!r} is not a valid Kubernetes name (DNS label, at most 63 characters); "
                          "set app_name")
    return name


def stack_options(options: KubernetesOptions, model_name: str) -> StackOptions:
    """The compose stack options whose server command and environment the pods use."""
    return StackOptions(target="triton", backend=options.backend, model_name=model_name,
                        repo_mount=options.repo_mount, threads=options.threads, precision=options.precision,
                        image=options.server_image or None)


def server_args(options: KubernetesOptions, model_name: str) -> list[str]:
    """The tritonserver arguments (after the ``tritonserver`` command): the compose stack's, with the
    object-store URL as the repository when ``repository_source`` is ``"url"``."""
    cmd = server_command(stack_options(options, model_name))
    assert cmd[0] == "tritonserver", cmd
    args = cmd[1:]
    if options.repository_source == "url":
        args = [f"--model-repository={options.repository_url}" if a.startswith("--model-repository=") else a
                for a in args]
    return args


def server_env(options: KubernetesOptions, model_name: str = "model") -> dict[str, str]:
    """The server's environment: the compose stack's (TensorFlow threads, oneDNN), same values."""
    return server_environment(stack_options(options, model_name))


def kserve_args(options: KubernetesOptions, model_name: str) -> list[str]:
    """Arguments KServe appends to its Triton runtime's (which already set the model store and ports)."""
    owned = ("--model-repository=", "--http-port=", "--grpc-port=")
    return [a for a in server_args(options, model_name) if not a.startswith(owned)]


def images(options: KubernetesOptions, model_name: str, version: int) -> dict[str, str]:
    """The images each role runs: ``server``, ``gpu_server``, ``model``."""
    server = options.server_image or stack_options(options, model_name).image_name
    return {
        "server": server,
        "gpu_server": options.gpu_server_image or server,
        "model": options.model_image or f"packager/{app_name(options, model_name)}-repository:{int(version)}",
    }


def _kustomize_image(logical: str, actual: str) -> dict[str, str]:
    """One kustomize ``images:`` entry mapping the base's image name to ``actual``."""
    name, _, _ = split_image(logical)
    new_name, tag, digest = split_image(actual)
    entry = {"name": name, "newName": new_name}
    if digest:
        entry["digest"] = digest
    elif tag:
        entry["newTag"] = tag
    return entry


def _probe_failures(options: KubernetesOptions) -> int:
    return max(1, math.ceil(options.startup_timeout_s / options.probe_period_s))


# ------------------------------------------------------------------------------------------ render
def render(options: KubernetesOptions = KubernetesOptions(), *, model_name: str, version: int = 1,
           **overrides: Any) -> dict[str, str]:
    """Render the bundle: kustomize base + cpu/gpu overlays, KServe, monitoring, model image recipe.

    Args:
        options: the bundle options.
        model_name: the served model name (sanitized, ``[a-z0-9_-]``): the Triton model folder.
        version: the model version the images are tagged with by default (``...-repository:<version>``).
        **overrides: fields of :class:`KubernetesOptions` to change.

    Returns:
        ``{relative path: text}``, to be written with the shared atomic writer.

    Raises:
        TargetError: invalid options or model name (every option problem listed at once).
    """
    o = replace(options, **overrides) if overrides else options
    if not re.fullmatch(r"[a-z0-9_-]+", model_name or ""):
        raise TargetError(f"model name {model_name!r} is not sanitized ([a-z0-9_-])")
    if int(version) < 1:
        raise TargetError(f"version must be >= 1, not {version}")
    name = app_name(o, model_name)
    imgs = images(o, model_name, version)
    labels = {
        "app.kubernetes.io/name": "tritonserver",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "embeddings",
        "app.kubernetes.io/part-of": o.part_of,
        "app.kubernetes.io/managed-by": "packager",
    }
    selector = {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
    node_selector = dict(s.partition("=")[::2] for s in o.gpu_node_selector)
    defaults = images(replace(o, model_image="", server_image="", gpu_server_image=""), model_name, version)
    roles = ("server", "model") if o.repository_source == "image" else ("server",)
    ctx = dict(
        o=o, q=q, ymap=ymap, name=name, model=model_name, version=int(version), labels=labels, selector=selector,
        images=imgs, ports=TRITON_PORTS, args=server_args(o, model_name), env=server_env(o, model_name),
        kserve_args=kserve_args(o, model_name), startup_failures=_probe_failures(o),
        init_mount=INIT_MOUNT, model_image_path=MODEL_IMAGE_PATH, queue_metric=QUEUE_METRIC,
        gpu_node_selector=node_selector, kserve_store=KSERVE_MODEL_STORE, tf_tag=TRITON_TF_TAG,
        storage_uri=o.repository_url if o.repository_source == "url" else f"oci://{imgs['model']}",
        base_resources=_base_resources(o),
        # The base names the default images; each overlay maps them to the chosen ones, so a registry is
        # retargeted with `kustomize edit set image` in one place.
        base_images=defaults,
        cpu_images=_image_entries(defaults, imgs, roles),
        gpu_images=_image_entries(defaults, dict(imgs, server=imgs["gpu_server"]), roles),
    )
    t = "kubernetes/"
    files = {
        "README.md": render_template(t + "README.md.j2", **ctx),
        "base/kustomization.yaml": render_template(t + "base/kustomization.yaml.j2", **ctx),
        "base/serviceaccount.yaml": render_template(t + "base/serviceaccount.yaml.j2", **ctx),
        "base/deployment.yaml": render_template(t + "base/deployment.yaml.j2", **ctx),
        "base/service.yaml": render_template(t + "base/service.yaml.j2", **ctx),
        "base/pdb.yaml": render_template(t + "base/pdb.yaml.j2", **ctx),
        "base/hpa.yaml": render_template(t + "hpa.yaml.j2", metric=o.autoscale_metric, **ctx),
        "overlays/cpu/kustomization.yaml": render_template(t + "overlays/cpu/kustomization.yaml.j2", **ctx),
        "overlays/gpu/kustomization.yaml": render_template(t + "overlays/gpu/kustomization.yaml.j2", **ctx),
        "overlays/gpu/deployment-gpu.yaml": render_template(t + "overlays/gpu/deployment-gpu.yaml.j2", **ctx),
        "overlays/gpu/args-gpu.yaml": render_template(t + "overlays/gpu/args-gpu.yaml.j2", **ctx),
        "monitoring/hpa-queue-time.yaml": render_template(t + "hpa.yaml.j2", metric="queue_time", **ctx),
        "monitoring/prometheus-adapter-rules.yaml": render_template(t + "monitoring/prometheus-adapter-rules.yaml.j2", **ctx),
        "model-image/Dockerfile": render_template(t + "model-image/Dockerfile.j2", **ctx),
    }
    if o.service_monitor:
        files["base/servicemonitor.yaml"] = render_template(t + "base/servicemonitor.yaml.j2", **ctx)
    if o.kserve:
        files["kserve/inferenceservice.yaml"] = render_template(t + "kserve/inferenceservice.yaml.j2", **ctx)
    return files


def _base_resources(o: KubernetesOptions) -> list[str]:
    res = ["serviceaccount.yaml", "deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml"]
    if o.service_monitor:
        res.append("servicemonitor.yaml")
    return res


def _image_entries(defaults: Mapping[str, str], chosen: Mapping[str, str], roles: Iterable[str]) -> list[dict]:
    """kustomize ``images:`` entries for each role (also when unchanged: the place to retarget a registry)."""
    return [_kustomize_image(defaults[r], chosen[r]) for r in roles]


def model_image_dockerfile(options: KubernetesOptions = KubernetesOptions(), *, model_name: str = "model",
                           version: int = 1) -> str:
    """The model image's Dockerfile (``model-image/Dockerfile`` of :func:`render`): ``BASE_IMAGE`` + the
    repository (the build context) at ``/models``, run as the non-root user."""
    return render(options, model_name=model_name, version=version)["model-image/Dockerfile"]


# ------------------------------------------------------------------------------------- gpu configs
def write_gpu_configs(repository: str | Path, *, config_name: str = "gpu") -> list[Path]:
    """Write ``<model>/configs/<config_name>.pbtxt`` (:func:`gpu_config`) for every model in a repository.

    Args:
        repository: the Triton repository (the folder holding the model folders).
        config_name: the ``--model-config-name`` the GPU overlay passes.

    Returns:
        The files written (one per model folder with a config.pbtxt).
    """
    written = []
    for model_dir in sorted(p for p in Path(repository).iterdir() if (p / "config.pbtxt").is_file()):
        out = model_dir / "configs" / f"{config_name}.pbtxt"
        text = gpu_config((model_dir / "config.pbtxt").read_text(encoding="utf-8"),
                          source=f"{model_dir.name}/config.pbtxt")
        out.parent.mkdir(exist_ok=True)
        out.write_text(text, encoding="utf-8")
        written.append(out)
    return written


def check_repository(repository: str | Path, options: KubernetesOptions = KubernetesOptions()) -> list[str]:
    """Problems a repository has for this bundle (empty: none): e.g. no GPU config for the GPU overlay."""
    problems = []
    root = Path(repository)
    models = [p for p in root.iterdir() if (p / "config.pbtxt").is_file()] if root.is_dir() else []
    if not models:
        return [f"{root} holds no model folder with a config.pbtxt"]
    for m in models:
        if not (m / "configs" / f"{options.gpu_config_name}.pbtxt").is_file():
            problems.append(f"{m.name}: no configs/{options.gpu_config_name}.pbtxt: the gpu overlay would run "
                            "KIND_CPU instances (write it with packager.targets.kubernetes.write_gpu_configs)")
    return problems


# ---------------------------------------------------------------------------------------- validate
def validate(files: Mapping[str, str], *, kubernetes_versions: Iterable[str] = ("1.30", "1.33", "1.37")) -> list[str]:
    """Validate every rendered manifest against the real schemas; return the problems (empty: valid).

    * Kubernetes objects: the OpenAPI schemas bundled by ``kubernetes-validate``, strict (unknown fields
      are errors), for each version in ``kubernetes_versions``.
    * InferenceService: KServe's API types from the ``kserve`` SDK (generated from KServe's OpenAPI
      spec): every field must be known to them, with their types; the Kubernetes types inside
      (resources, securityContext, volumes ...) against the Kubernetes schemas.
    * ServiceMonitor: the prometheus-operator CRD models of ``cloudcoil-models-prometheus-operator``
      (patterns, enums, types), round-tripped so that an unknown field is an error too.

    kustomization.yaml files and non-YAML files are skipped (``kubectl kustomize`` checks those).

    Raises:
        TargetError: a validator package is missing.
    """
    import yaml

    problems: list[str] = []
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")) or path.endswith("kustomization.yaml") \
                or path.startswith("monitoring/prometheus-adapter"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc or isinstance(doc, list):
                continue  # empty, or a JSON 6902 patch (kustomize output is validated instead)
            kind = doc.get("kind")
            where = f"{path}: {kind}/{doc.get('metadata', {}).get('name')}"
            if path.startswith("overlays/") and kind == "Deployment":
                continue  # a strategic-merge patch, not an object (kustomize output is validated instead)
            if kind == "InferenceService":
                problems += [f"{where}: {p}" for p in validate_inference_service(doc, kubernetes_versions)]
            elif kind == "ServiceMonitor":
                problems += [f"{where}: {p}" for p in validate_service_monitor(doc)]
            else:
                problems += [f"{where}: {p}" for p in validate_kubernetes(doc, kubernetes_versions)]
    return problems


def validate_kubernetes(obj: Mapping, versions: Iterable[str]) -> list[str]:
    """Strict schema validation of one Kubernetes object for each version (problems as text)."""
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise TargetError("kubernetes-validate is missing: pip install kubernetes-validate") from exc
    out = []
    for v in versions:
        try:
            kubernetes_validate.validate(dict(obj), v, strict=True)
        except kubernetes_validate.ValidationError as exc:
            out.append(f"Kubernetes {v}: {'/'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            out.append(f"Kubernetes {v}: {exc.message}")
    return out


def _k8s_type_validators(version: str):
    """A function validating a value against one Kubernetes type (``V1ResourceRequirements`` ...)."""
    from importlib import resources

    import jsonschema
    import referencing

    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    dirs = sorted((p.name for p in root.iterdir() if p.name.endswith("-local-strict")),
                  key=lambda n: tuple(int(x) for x in n[1:].split("-")[0].split(".")))
    wanted = tuple(int(x) for x in version.split("."))
    chosen = [d for d in dirs if tuple(int(x) for x in d[1:].split("-")[0].split("."))[:2] <= wanted[:2]][-1]
    defs = json.loads((root / chosen / "_definitions.json").read_text())
    registry = referencing.Resource.from_contents(defs) @ referencing.Registry()
    names = defs["$defs"]

    def check(value: Any, type_name: str) -> list[str]:
        short = type_name.removeprefix("V1")
        keys = [k for k in names if k.endswith(f".v1.{short}")]
        keys.sort(key=lambda k: (not k.startswith("io.k8s.api.core."), k))
        if not keys:
            return [f"no Kubernetes schema for {type_name}"]
        schema = {"$ref": f"{defs['$id']}#/$defs/{keys[0]}"}
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(value)]

    return check


def _kserve_models():
    """The ``kserve.models`` API types, without running ``kserve/__init__.py``.

    The SDK's package init starts its model-server stack and registers KServe's own ``inference.*``
    gRPC protos, which collide with tritonclient.grpc's in the same process ("duplicate symbol
    'inference.ServerLiveRequest'"): a process that validated an InferenceService could no longer talk
    gRPC to Triton. The generated models need only ``kserve.configuration``, so the package is entered
    through a bare module when the real one is not imported already.
    """
    import importlib
    import importlib.util
    import sys
    import types

    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or not spec.submodule_search_locations:
            raise TargetError("the kserve SDK is missing: pip install kserve")
        pkg = types.ModuleType("kserve")
        pkg.__path__, pkg.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["kserve"] = pkg
    return importlib.import_module("kserve.models")


def validate_inference_service(obj: Mapping, versions: Iterable[str] = ("1.33",)) -> list[str]:
    """Check an InferenceService against the ``kserve`` SDK's API types (see :func:`validate`)."""
    models = _kserve_models()
    if obj.get("apiVersion") != "serving.kserve.io/v1beta1" or obj.get("kind") != "InferenceService":
        return [f"not a serving.kserve.io/v1beta1 InferenceService: {obj.get('apiVersion')} {obj.get('kind')}"]
    k8s = {v: _k8s_type_validators(v) for v in versions}
    problems: list[str] = []

    def walk(value: Any, type_name: str, path: str) -> None:
        if value is None:
            return
        m = re.fullmatch(r"list\[(.+)\]", type_name)
        if m:
            if not isinstance(value, list):
                problems.append(f"{path}: expected a list ({type_name})")
                return
            for i, item in enumerate(value):
                walk(item, m.group(1), f"{path}/{i}")
            return
        m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
        if m:
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a map ({type_name})")
                return
            for k, item in value.items():
                walk(item, m.group(1), f"{path}/{k}")
            return
        primitive = {"str": str, "bool": bool, "int": int, "float": (int, float), "object": object}
        if type_name in primitive:
            if type_name == "int" and isinstance(value, bool) or not isinstance(value, primitive[type_name]):
                problems.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
            return
        cls = getattr(models, type_name, None) if not type_name.startswith("V1") or \
            type_name.startswith(("V1alpha", "V1beta")) else None
        if cls is not None:
            if not isinstance(value, dict):
                problems.append(f"{path}: expected an object ({type_name})")
                return
            by_json = {j: a for a, j in cls.attribute_map.items()}
            for key, item in value.items():
                if key not in by_json:
                    problems.append(f"{path}: field {key!r} is not in KServe's {type_name}")
                    continue
                walk(item, cls.openapi_types[by_json[key]], f"{path}/{key}")
            try:
                # The SDK's setters refuse a missing required field (spec.predictor ...) and bad enums.
                cls(**{by_json[k]: v for k, v in value.items() if k in by_json})
            except (ValueError, TypeError) as exc:
                problems.append(f"{path}: {exc}")
            return
        for v, check in k8s.items():
            problems.extend(f"{path} (Kubernetes {v} {type_name}): {p}" for p in check(value, type_name))

    walk(dict(obj), "V1beta1InferenceService", "")
    return problems


def validate_service_monitor(obj: Mapping) -> list[str]:
    """Check a ServiceMonitor against the prometheus-operator CRD's models (see :func:`validate`)."""
    try:
        import pydantic
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    except ImportError as exc:
        raise TargetError("pip install cloudcoil-models-prometheus-operator to validate ServiceMonitors") from exc
    try:
        model = ServiceMonitor.model_validate(dict(obj))
    except pydantic.ValidationError as exc:
        return [f"{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    back = model.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [f"{p}: not a ServiceMonitor field (dropped by the CRD model)" for p in _dropped(dict(obj), back)]


def _dropped(given: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in ``given`` but missing from ``kept`` (what a model ignored)."""
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        out = []
        for k, v in given.items():
            if k not in kept:
                out.append(f"{path}/{k}")
            else:
                out += _dropped(v, kept[k], f"{path}/{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(given, kept)) for p in _dropped(a, b, f"{path}/{i}")]
    return []


# ----------------------------------------------------------------------------------- examples, cli
DEFAULT_MODEL_NAME = "all-minilm-l6-v2"
EXAMPLES = {DEFAULT_MODEL_NAME: dict()}
"""The bundles committed in ``kubernetes/`` (regenerate with ``python -m packager.targets.kubernetes``)."""


def main(argv: list[str] | None = None) -> int:
    """``python -m packager.targets.kubernetes [OUT]``: write the example bundles (default ``kubernetes/``)."""
    import sys

    from ..writer import write_tree

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "kubernetes")
    for model, kw in EXAMPLES.items():
        files = render(KubernetesOptions(**kw), model_name=model)
        print(write_tree((out / model).absolute(), files, force=True, replace=sorted({f.split("/")[0] for f in files})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
