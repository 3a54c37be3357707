#!/usr/bin/env bash
# `ams-agent setup mongo` overhead with apt/systemctl answered at once; see
# bench/setup_mongo.py.
#
#   bench/setup_mongo.sh [RUNS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec /usr/bin/python3 bench/setup_mongo.py "$@"
