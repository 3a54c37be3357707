#!/usr/bin/env bash
# Provider detection + metadata read (`ams-agent metadata --json`) on each
# simulated cloud: the provider's DMI files planted under a temp root, its
# metadata service on loopback (bench/cloud_peer.py, the documents of
# tests/fixtures/cloud). Prints, per cloud, the agent's own detection+read
# time (elapsedMs of the JSON) and the whole command's wall time, over 10
# runs (min / median / max). Then a host with no cloud: no DMI match and
# (a) nothing listening on the metadata address, (b) a filtered address
# that drops every packet (iptables DROP, in a network namespace of the
# benchmark's own; needs root, else said and skipped).
# Targets: <= 50 ms per cloud; <= 300 ms in total without a cloud.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/target/release/ams-agent"
PY=/usr/bin/python3
RUNS=10
[ -x "$BIN" ] || cargo build --release --quiet
WORK="$(mktemp -d)"
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

start_peer() { # provider -> sets PORT
  "$PY" bench/cloud_peer.py "$1" > "$WORK/$1.port" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q PORT "$WORK/$1.port" 2>/dev/null && break; sleep 0.05; done
  PORT=$(awk '/PORT/{print $2}' "$WORK/$1.port")
}

# min / median / max of the numbers on stdin.
stats() { sort -n | awk '{a[NR]=$1} END {printf "min %d / median %d / max %d ms", a[1], a[int((NR+1)/2)], a[NR]}'; }

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

make_root() { # dmi-name -> prints the root
  local r="$WORK/root-$1"
  mkdir -p "$r/etc" "$r/sys/class/dmi/id"
  echo 0123456789abcdef0123456789abcdef > "$r/etc/machine-id"
  echo bench-node > "$r/etc/hostname"
  cp tests/fixtures/dmi/"$1"/* "$r/sys/class/dmi/id/"
  echo "$r"
}

DEAD="http://127.0.0.1:9"
declare -A VAR=(
  [ec2]=AMS_AGENT_IMDS_ENDPOINT
  [gcp]=AMS_AGENT_GCP_METADATA_ENDPOINT
  [azure]=AMS_AGENT_AZURE_IMDS_ENDPOINT
  [digitalocean]=AMS_AGENT_DIGITALOCEAN_METADATA_ENDPOINT
  [hetzner]=AMS_AGENT_HETZNER_METADATA_ENDPOINT
  [openstack]=AMS_AGENT_OPENSTACK_METADATA_ENDPOINT
  [oracle]=AMS_AGENT_ORACLE_METADATA_ENDPOINT
)
for cloud in ec2 gcp azure digitalocean hetzner openstack oracle; do
  start_peer "$cloud"
  root=$(make_root "$cloud")
  : > "$WORK/agent.ms"; : > "$WORK/wall.ms"
  for _ in $(seq $RUNS); do
    s=$(now_ms)
    env AMS_AGENT_IMDS_ENDPOINT="$DEAD" "${VAR[$cloud]}=http://127.0.0.1:$PORT" \
      "$BIN" --root "$root" metadata --json > "$WORK/out.json" 2>/dev/null
    e=$(now_ms)
    got=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["provider"], d["elapsedMs"])' "$WORK/out.json")
    [ "${got%% *}" = "$cloud" ] || { echo "$cloud: the agent saw ${got%% *}" >&2; exit 1; }
    echo "${got##* }" >> "$WORK/agent.ms"
    echo $((e - s)) >> "$WORK/wall.ms"
  done
  printf '%-13s detection+read %s; whole command %s\n' "$cloud" "$(stats < "$WORK/agent.ms")" "$(stats < "$WORK/wall.ms")"
done
echo "target: <= 50 ms per cloud (detection + metadata read)"

root=$(make_root none)
: > "$WORK/wall.ms"
for _ in $(seq $RUNS); do
  s=$(now_ms)
  env AMS_AGENT_IMDS_ENDPOINT="$DEAD" "$BIN" --root "$root" metadata --json > "$WORK/out.json" 2>/dev/null
  e=$(now_ms)
  echo $((e - s)) >> "$WORK/wall.ms"
done
printf '%-13s whole command %s\n' "no cloud (a)" "$(stats < "$WORK/wall.ms")"
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v iptables >/dev/null; then
  : > "$WORK/wall.ms"
  for _ in $(seq $RUNS); do
    unshare -n sh -c '
      ip link set lo up
      iptables -A INPUT -p tcp --dport 9 -j DROP
      s=$(date +%s%N)
      AMS_AGENT_IMDS_ENDPOINT=http://127.0.0.1:9 "$1" --root "$2" metadata --json > /dev/null 2>&1
      e=$(date +%s%N)
      echo $(( (e - s) / 1000000 ))' _ "$BIN" "$root" >> "$WORK/wall.ms"
  done
  printf '%-13s whole command %s\n' "no cloud (b)" "$(stats < "$WORK/wall.ms")"
else
  echo "no cloud (b)  skipped: a filtered address needs root, unshare and iptables"
fi
echo "target: <= 300 ms in total on a host with no cloud"
