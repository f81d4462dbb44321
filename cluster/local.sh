#!/usr/bin/env bash
# A two-node Ray cluster on this machine, bound to 127.0.0.1: a head node and one worker node.
# For trying multi-node behaviour (placement, worker loss, `ray job submit`) without a cloud.
# Plain `ftray run` needs none of this: it starts an embedded local Ray by itself.
#
#   cluster/local.sh start                  # HEAD_CPUS=2 WORKER_CPUS=2 by default
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- ftray run jobs/quickstart.yaml
#   cluster/local.sh status
#   cluster/local.sh stop                   # stops these two nodes only
#
# Both nodes keep their files in their own temp dir (RAY_LOCAL_DIR, default
# /tmp/ftray-ray-<uid>-<port>: short, since Ray's socket paths inside it must stay under the
# 107-byte limit of Unix sockets); `stop` ends only the processes that name it (and their
# children), never other Ray clusters on the machine, as `ray stop` would.
set -euo pipefail

HEAD_CPUS="${HEAD_CPUS:-2}"
WORKER_CPUS="${WORKER_CPUS:-2}"
PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
LOCAL_DIR="${RAY_LOCAL_DIR:-/tmp/ftray-ray-$(id -u)-$PORT}"
TEMP_DIR="$(mkdir -p "$LOCAL_DIR" && cd "$LOCAL_DIR" && pwd)"

# macOS and Windows refuse a second node unless this is 1 (on Linux it is the default).
# Setting it to 0 would make the worker's `ray start --address` abort on every platform.
# With it Ray binds its GCS and raylets to every interface, so token auth is on by default.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

start() {
  if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    # `ray start` needs a token; this makes ~/.ray/auth_token unless one exists.
    ray get-auth-token --generate >/dev/null
  fi
  # Disjoint worker-port ranges and a second dashboard-agent port: both nodes share one host.
  ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port="$PORT" \
    --dashboard-port="$DASHBOARD_PORT" --temp-dir="$TEMP_DIR" \
    --num-cpus="$HEAD_CPUS" --num-gpus=0 --min-worker-port=10002 --max-worker-port=14999
  ray start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --temp-dir="$TEMP_DIR" \
    --num-cpus="$WORKER_CPUS" --num-gpus=0 --min-worker-port=15000 --max-worker-port=19999 \
    --dashboard-agent-listen-port=52366
  echo
  echo "Ray cluster up: 2 nodes, $((HEAD_CPUS + WORKER_CPUS)) CPUs. Dashboard and job API:"
  echo "  export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=$RAY_AUTH_MODE"
}

descendants() {
  local child
  for child in $(pgrep -P "$1" || true); do
    echo "$child"
    descendants "$child"
  done
}

# The two nodes' processes: Ray's daemons name the temp dir on their command line (a fixed
# string, matched literally); task workers are their children.
own_pids() {
  local pid
  for pid in $(pgrep -f -- "$(printf '%s' "$TEMP_DIR" | sed 's/[][\.*^$+?(){}|]/\\&/g')" || true); do
    [ "$pid" = "$$" ] && continue
    echo "$pid"
    descendants "$pid"
  done | sort -u
}

# Running, and not a zombie waiting for its parent to collect it.
alive() {
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
  [ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

stop() {
  local pids pass
  if [ -z "$(own_pids)" ]; then
    echo "no Ray nodes of $TEMP_DIR are running"
    return 0
  fi
  # A second pass catches workers a dying raylet started meanwhile.
  for pass in 1 2 3; do
    pids="$(own_pids)"
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086  # one PID per word
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do
      pids="$(for pid in $pids; do if alive "$pid"; then echo "$pid"; fi; done)"
      [ -z "$pids" ] && break
      sleep 0.5
    done
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
  done
  echo "stopped the Ray nodes of $TEMP_DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) ray status --address="127.0.0.1:$PORT" ;;
  *)
    echo "usage: $0 start|stop|status   (env: HEAD_CPUS, WORKER_CPUS, RAY_PORT," \
      "RAY_DASHBOARD_PORT, RAY_LOCAL_DIR)" >&2
    exit 2
    ;;
esac
