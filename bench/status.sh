#!/usr/bin/env bash
# `ams-agent status` over N node documents (default 1000), served by the
# MockupDB wire peer; prints the wall time of 5 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000}"
BIN=target/release/ams-agent
PY=/usr/bin/python3
[ -x "$BIN" ] || cargo build --release --quiet
WORK="$(mktemp -d)"
mkfifo "$WORK/in"
$PY tests/peers/mongo_peer.py --record "$WORK/rec.jsonl" --seed "$N" < "$WORK/in" > "$WORK/out" 2>/dev/null &
PEER=$!
exec 3>"$WORK/in"
trap 'kill $PEER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q PORT "$WORK/out" 2>/dev/null && break; sleep 0.05; done
PORT=$(awk '/PORT/{print $2}' "$WORK/out")
for fmt in "" "--json"; do
  for i in 1 2 3 4 5; do
    s=$(date +%s%N)
    "$BIN" status --mongo "127.0.0.1:$PORT" $fmt > "$WORK/status.txt"
    e=$(date +%s%N)
    echo "status $fmt over $(grep -c '"id"\|^i-' "$WORK/status.txt") nodes: $(( (e - s) / 1000000 )) ms"
  done
done
echo "target: <= 500 ms"
