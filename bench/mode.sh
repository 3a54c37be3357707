#!/usr/bin/env bash
# Benchmark of `ams-agent mode cluster`, side by side with the shell's sed
# steps and with a floor of plain durable file writes. Prints numbers; asserts
# nothing. Usage: bench/mode.sh [runs-per-case]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
exec /usr/bin/python3 bench/mode_bench.py target/release/ams-agent "${1:-15}"
