"""The server images packager targets, and the TensorFlow / TF-Text each one runs.

A graph with a TF-Text tokenizer inside loads only where every op it uses is registered. Each
server below names the TF release of its runtime and the TF-Text release whose ops it links or
loads; :meth:`Server.opset` (via :func:`packager.compat.server_opset`) gives the matching generated op set (``packager/data/opsets``) and
:func:`packager.compat.check_compatible` compares a graph with it.

Sources (checked when the table was written; re-check when adding a row):

* Triton 25.02, TensorFlow backend: the TF backend is built from NVIDIA's TensorFlow container of
  the same release ("the TF version will be the same as the one in TF docker image for the same
  release", https://github.com/triton-inference-server/server/issues/2929), and NGC
  ``tensorflow:25.02-tf2-py3`` ships TensorFlow 2.17.0 (wheel ``tensorflow-2.17.0+nv25.2``,
  Python 3.12.3); see https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html
  and https://docs.nvidia.com/deeplearning/frameworks/tensorflow-release-notes/rel-25-02.html.
  25.02 is the last release with the TF backend (deprecated from 25.03,
  https://docs.nvidia.com/deeplearning/triton-inference-server/release-notes/rel-25-03.html).
  The image has no TF-Text: packager ships the op libraries of ``tensorflow-text==2.17.0``
  (same TF ABI) next to the model (:func:`packager.oplibs.fetch_op_libraries`).
  Its TF is NVIDIA's build of 2.17.0; the op set used here is upstream TF 2.17.0's.
* TF-Serving: TF-Text ops are linked into ``tensorflow_model_server``; releases 2.12 to 2.19
  link TF-Text 2.12.1 and 2.20 links TF-Text 2.20.0 (tensorflow/serving ``WORKSPACE``
  ``org_tensorflow_text``; the symptom of a newer op is tensorflow/serving#2267,
  https://github.com/tensorflow/serving/issues/2267).
* Triton Python backend: the model runs in packager's own pinned environment
  (``requirements.txt``: tensorflow 2.21.0, tensorflow-text 2.21.1), whatever the Triton release.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import TargetError


@dataclass(frozen=True)
class Server:
    """One supported server release.

    Attributes:
        kind: ``"triton-tensorflow"``, ``"tfserving"`` or ``"triton-python"``.
        version: the release as users name it (``"25.02"``, ``"2.17"``).
        image: the container image.
        tensorflow: TF release of its runtime.
        tensorflow_text: TF-Text release whose ops it has (linked in, or shipped by packager).
        python: Python of the image (picks wheels for op libraries); "" when irrelevant.
        op_libraries: ``"linked"`` (in the server binary), ``"shipped"`` (packager copies the
            ``.so`` files next to the model) or ``"python"`` (``import``-ed by the model code).
        sources: where the versions come from.
    """

    kind: str
    version: str
    image: str
    tensorflow: str
    tensorflow_text: str
    python: str = ""
    op_libraries: str = "linked"
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.version}"

    @property
    def label(self) -> str:
        names = {"triton-tensorflow": "Triton {v} (TensorFlow backend)", "tfserving": "TF-Serving {v}",
                 "triton-python": "Triton Python backend (packager env {v})"}
        return names[self.kind].format(v=self.version)


_TRITON_TF_SOURCES = (
    "https://github.com/triton-inference-server/server/issues/2929",
    "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html",
    "https://docs.nvidia.com/deeplearning/frameworks/tensorflow-release-notes/rel-25-02.html",
)
_TFS_SOURCES = ("https://github.com/tensorflow/serving/blob/master/WORKSPACE",
                "https://github.com/tensorflow/serving/issues/2267")
# TF-Serving 2.12 .. 2.19 link TF-Text 2.12.1; the core TF is the serving release's own. One image
# per line: a patch release where one is known (2.12.1: tensorflow/serving#2136 says avoid 2.12.0;
# 2.16.0 never existed), else x.y.0. Every patch release of a line has the same ops.
_TFS_RELEASES = {"2.12": "2.12.1", "2.13": "2.13.0", "2.14": "2.14.0", "2.15": "2.15.0", "2.16": "2.16.1",
                 "2.17": "2.17.0", "2.18": "2.18.0", "2.19": "2.19.0"}

SERVERS: tuple[Server, ...] = (
    Server("triton-tensorflow", "25.02", "nvcr.io/nvidia/tritonserver:25.02-tf2-python-py3", "2.17.0", "2.17.0",
           python="3.12", op_libraries="shipped", sources=_TRITON_TF_SOURCES),
    *(Server("tfserving", v, f"tensorflow/serving:{tf}", tf, "2.12.1", sources=_TFS_SOURCES) for v, tf in _TFS_RELEASES.items()),
    Server("tfserving", "2.20", "tensorflow/serving:2.20.0", "2.20.0", "2.20.0", sources=_TFS_SOURCES),
    Server("triton-python", "2.21", "packager Triton python-backend image (requirements.txt)", "2.21.0", "2.21.1",
           python="3.11", op_libraries="python", sources=("requirements.txt",)),
)

# What `--target` names map to, and the release used when `--server-version` is not given.
DEFAULT_VERSION = {"triton-tensorflow": "25.02", "tfserving": "2.20", "triton-python": "2.21"}
ALIASES = {"triton-tf": "triton-tensorflow", "tensorflow": "triton-tensorflow", "tf-serving": "tfserving",
           "tensorflow-serving": "tfserving", "triton": "triton-python", "python": "triton-python"}


# The images packager's layouts and stacks name, declared once. The TF backend and TF-Serving
# images are the SERVERS rows' (their TF decides what the graph may use); the Python backend runs
# packager's own pinned TensorFlow inside any Triton image, so one current release is the default.
TRITON_PYTHON_IMAGE = "nvcr.io/nvidia/tritonserver:25.03-py3"


def default_image(kind: str, *, gpu: bool = False) -> str:
    """The image a layout or stack of ``kind`` uses by default (TF-Serving: its ``-gpu`` build for GPUs)."""
    kind = ALIASES.get(kind, kind)
    if kind == "triton-python":
        return TRITON_PYTHON_IMAGE
    image = get_server(kind).image
    return image + "-gpu" if gpu and kind == "tfserving" else image


def get_server(kind: str, version: str | None = None) -> Server:
    """Look a server up by kind and release (``--server-version``).

    Args:
        kind: ``"tfserving"``, ``"triton-tensorflow"``, ``"triton-python"`` (aliases accepted), or
            ``"kind:version"`` in one string.
        version: the release, e.g. ``"2.17"`` or ``"2.17.0"`` (patch ignored); ``None`` = default.

    Raises:
        TargetError: unknown kind or release; the message lists the supported ones.
    """
    if version is None and ":" in kind:
        kind, version = kind.split(":", 1)
    kind = ALIASES.get(kind, kind)
    if kind not in DEFAULT_VERSION:
        raise TargetError(f"unknown server {kind!r}. Supported: {', '.join(DEFAULT_VERSION)}")
    version = version or DEFAULT_VERSION[kind]
    wanted = version if kind == "triton-tensorflow" else ".".join(version.split(".")[:2])
    for s in SERVERS:
        if s.kind == kind and s.version == wanted:
            return s
    known = ", ".join(s.version for s in SERVERS if s.kind == kind)
    raise TargetError(f"unsupported {kind} release {version!r}. Supported: {known}")


def servers_of(kind: str) -> list[Server]:
    kind = ALIASES.get(kind, kind)
    return [s for s in SERVERS if s.kind == kind]
