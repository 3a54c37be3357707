#!/usr/bin/env bash
# Reporter steady state and join latency, with numbers.
#
#   bench/reporter.sh [SECONDS]        (default 60)
#
# Runs the release binary's reporter against the MockupDB wire peer
# (python3-mockupdb) at a 1 s and at the default 5 s interval, side by side
# with prometheus-node-exporter idling on the same machine, for SECONDS, and
# prints peak RSS (VmHWM) and CPU seconds (utime+stime) of each. Then times
# `join` from the moment MongoDB starts listening to the first heartbeat.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
BIN=target/release/ams-agent
PY=/usr/bin/python3
[ -x "$BIN" ] || cargo build --release --quiet
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_peer() { # $1 = record file, rest = extra args; sets PEER_PORT
  local rec="$1"; shift
  mkfifo "$rec.in"
  $PY tests/peers/mongo_peer.py --record "$rec" "$@" < "$rec.in" > "$rec.out" 2>/dev/null &
  PIDS+=($!)
  exec {fd}>"$rec.in"   # keep the peer's stdin open (in this shell)
  for _ in $(seq 200); do grep -q PORT "$rec.out" 2>/dev/null && break; sleep 0.01; done
  PEER_PORT=$(awk '/PORT/{print $2}' "$rec.out")
}

cpu_seconds() { awk -v clk="$CLK" '{printf "%.2f", ($14+$15)/clk}' "/proc/$1/stat"; }
peak_rss_mb() { awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

# A host root with the machine id (no EC2 here) and an AMS answering HTTP.
ROOT="$WORK/root"; mkdir -p "$ROOT/etc"
echo 0123456789abcdef0123456789abcdef > "$ROOT/etc/machine-id"
echo bench-node > "$ROOT/etc/hostname"
AMS_PORT=$(free_port)
$PY -m http.server "$AMS_PORT" --bind 127.0.0.1 --directory "$WORK" >/dev/null 2>&1 &
PIDS+=($!)

start_peer "$WORK/steady.jsonl"; PORT=$PEER_PORT
export AMS_AGENT_ROOT="$ROOT" AMS_AGENT_AMS_URL="http://127.0.0.1:$AMS_PORT/"
export AMS_AGENT_IMDS_ENDPOINT="http://127.0.0.1:$(free_port)"
"$BIN" -q run --mongo "127.0.0.1:$PORT" --role edge --interval 1s &
R1=$!; PIDS+=($R1)
"$BIN" -q run --mongo "127.0.0.1:$PORT" --role edge --interval 5s --database bench5 &
R5=$!; PIDS+=($R5)
NE_PORT=$(free_port)
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >/dev/null 2>&1 &
NE=$!; PIDS+=($NE)
sleep 2
c1=$(cpu_seconds $R1); c5=$(cpu_seconds $R5); cn=$(cpu_seconds $NE)
echo "measuring ${SECS}s of steady state..."
sleep "$SECS"
d1=$(awk -v a="$c1" -v b="$(cpu_seconds $R1)" 'BEGIN{printf "%.2f", b-a}')
d5=$(awk -v a="$c5" -v b="$(cpu_seconds $R5)" 'BEGIN{printf "%.2f", b-a}')
dn=$(awk -v a="$cn" -v b="$(cpu_seconds $NE)" 'BEGIN{printf "%.2f", b-a}')
beats1=$(grep -c '"\$inc"' "$WORK/steady.jsonl" || true)
pct() { awk -v c="$1" -v s="$SECS" 'BEGIN{printf "%.3f", 100*c/s}'; }
printf '\n%-44s %12s %12s %14s\n' "process (${SECS}s)" "peak RSS MB" "CPU seconds" "% of one core"
printf '%-44s %12s %12s %14s\n' "ams-agent run, interval 1s" "$(peak_rss_mb $R1)" "$d1" "$(pct "$d1")"
printf '%-44s %12s %12s %14s\n' "ams-agent run, interval 5s (default)" "$(peak_rss_mb $R5)" "$d5" "$(pct "$d5")"
printf '%-44s %12s %12s %14s\n' "prometheus-node-exporter (idle, no scrapes)" "$(peak_rss_mb $NE)" "$dn" "$(pct "$dn")"
echo "heartbeat upserts recorded by the peer: $beats1 (both reporters)"
echo "targets: RSS <= 10 MB, CPU <= 0.2 % of one core at the default interval"

# Join: MongoDB becomes reachable after the agent started; time to the first heartbeat.
T="$WORK/tree"; mkdir -p "$T"; cp -r examples/host/. "$T/"; cp "$ROOT/etc/machine-id" "$T/etc/machine-id"
BINDIR="$WORK/bin"; mkdir -p "$BINDIR"; printf '#!/bin/sh\nexit 0\n' > "$BINDIR/systemctl"; chmod +x "$BINDIR/systemctl"
for i in 1 2 3; do
  rm -rf "$T/var/lib/ams-agent" "$T/etc/ams-agent"
  LATE=$(free_port)
  IMDS_ID="i-0bench00000000000$i"
  AMS_AGENT_ROOT="$T" PATH="$BINDIR:$PATH" "$BIN" join --mongo "127.0.0.1:$LATE" --wait 60s --ip 10.0.1.20 --no-restart </dev/null >"$WORK/join$i.out" 2>"$WORK/join$i.err" &
  J=$!
  sleep 2
  REC="$WORK/late$i.jsonl"
  t0=$(date +%s.%N)
  start_peer "$REC" --port "$LATE"
  wait $J || { cat "$WORK/join$i.err"; exit 1; }
  first=$($PY -c "import json,sys; print(min(json.loads(l)['t'] for l in open(sys.argv[1]) if json.loads(l)['cmd']=='update'))" "$REC")
  echo "join run $i: MongoDB listening -> first heartbeat: $(awk -v a="$t0" -v b="$first" 'BEGIN{printf "%.0f ms", (b-a)*1000}')  ($(grep -o 'registered as joining [0-9]* ms after MongoDB answered' "$WORK/join$i.err"))"
done
echo "target: <= 1 s"
