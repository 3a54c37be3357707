#!/usr/bin/env bash
# `ams-agent cert` overhead over certbot alone, against pebble; see
# bench/cert.py. Needs certbot, pebble, haproxy, openssl.
#
#   bench/cert.sh [RUNS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec /usr/bin/python3 bench/cert.py "$@"
