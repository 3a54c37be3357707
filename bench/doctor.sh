#!/usr/bin/env bash
# `ams-agent doctor` on a healthy AMS node with every peer local, and with
# MongoDB unreachable; see bench/doctor.py. As root it runs in a mount
# namespace of its own with the AMS volume on a tmpfs (so disk.ams does not
# depend on this machine's free space).
#
#   bench/doctor.sh [RUNS]     (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
if [ "$(id -u)" = 0 ]; then
  exec env DOCTOR_BENCH_TMPFS=1 unshare --mount --propagation private /usr/bin/python3 bench/doctor.py "$@"
fi
exec /usr/bin/python3 bench/doctor.py "$@"
