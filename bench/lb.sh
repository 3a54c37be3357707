#!/usr/bin/env bash
# `ams-agent lb`: render + validate over NODES registry documents, and the
# time from a registry change to shifted traffic (HAProxy's Runtime API
# against a reload, and Nginx), with dropped WebSockets; see
# bench/lb_bench.py. Needs haproxy, nginx + libnginx-mod-stream,
# python3-mockupdb, python3-websockets.
#
#   bench/lb.sh [NODES] [RUNS] [TRIALS]     (default 500 5 3)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec /usr/bin/python3 bench/lb_bench.py "$@"
