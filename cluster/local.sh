#!/usr/bin/env bash
# A two-node Ray cluster on this machine, bound to 127.0.0.1: a head node and one worker node.
# For trying multi-node behaviour (placement, worker loss, `ray job submit`) without a cloud.
# Plain `ftray run` needs none of this: it starts an embedded local Ray by itself.
#
#   cluster/local.sh start                  # HEAD_CPUS=2 WORKER_CPUS=2 by default
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- ftray run jobs/quickstart.yaml
#   cluster/local.sh status
#   cluster/local.sh stop
set -euo pipefail

HEAD_CPUS="${HEAD_CPUS:-2}"
WORKER_CPUS="${WORKER_CPUS:-2}"
PORT="${RAY_PORT:-6379}"

# macOS and Windows refuse a second node unless this is 1 (on Linux it is the default).
# Setting it to 0 would make the worker's `ray start --address` abort on every platform.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1
export RAY_USAGE_STATS_ENABLED=0

start() {
  # Disjoint worker-port ranges and a second dashboard-agent port: both nodes share one host.
  ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port="$PORT" \
    --num-cpus="$HEAD_CPUS" --num-gpus=0 --min-worker-port=10002 --max-worker-port=14999
  ray start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 \
    --num-cpus="$WORKER_CPUS" --num-gpus=0 --min-worker-port=15000 --max-worker-port=19999 \
    --dashboard-agent-listen-port=52366
  echo
  echo "Ray cluster up: 2 nodes, $((HEAD_CPUS + WORKER_CPUS)) CPUs. Dashboard and job API:"
  echo "  export RAY_ADDRESS=http://127.0.0.1:8265"
}

case "${1:-}" in
  start) start ;;
  stop) ray stop ;;  # stops every Ray process on this machine: both nodes
  status) ray status --address="127.0.0.1:$PORT" ;;
  *)
    echo "usage: $0 start|stop|status   (env: HEAD_CPUS, WORKER_CPUS, RAY_PORT)" >&2
    exit 2
    ;;
esac
