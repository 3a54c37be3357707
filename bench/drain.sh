#!/usr/bin/env bash
# Graceful scale-in, with numbers.
#
#   bench/drain.sh [SECONDS]        (default 60: the RSS/CPU window)
#
# 1. termination notice visible in the instance metadata -> `draining` in the
#    registry (the reporter at its default 5 s interval; target <= 6 s);
# 2. notice -> CompleteLifecycleAction sent, the node already empty (moto
#    behind tests/peers/aws_peer.py, IAM enforced; needs
#    AMS_AGENT_TEST_MOTO_PYTHON, the venv .ci/run creates; target <= 10 s);
# 3. the reporter's peak RSS and CPU over SECONDS at 5 s with the metadata
#    polling on (an EC2 node), next to one without it (targets: <= 10 MB,
#    <= 0.2 % of one core).
# Every peer is on loopback: MockupDB, bench/drain_peers.py (IMDSv2 and an
# empty AMS REST API), moto.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-60}"
BIN="${AMS_AGENT_BIN:-target/static/x86_64-unknown-linux-gnu/release/ams-agent}"
[ -x "$BIN" ] || { BIN=target/release/ams-agent; [ -x "$BIN" ] || cargo build --release --quiet; }
PY=/usr/bin/python3
MOTO_PY="${AMS_AGENT_TEST_MOTO_PYTHON:-}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
IP=10.0.1.20

cpu_seconds() { awk -v clk="$CLK" '{printf "%.2f", ($14+$15)/clk}' "/proc/$1/stat"; }
peak_rss_mb() { awk '/VmHWM/{printf "%.1f", $2/1024}' "/proc/$1/status"; }

start_mongo() { # $1 = record; sets MONGO_PORT
  mkfifo "$1.in"
  $PY tests/peers/mongo_peer.py --record "$1" < "$1.in" > "$1.out" 2>/dev/null &
  PIDS+=($!)
  exec {mfd}>"$1.in"
  for _ in $(seq 300); do grep -q PORT "$1.out" 2>/dev/null && break; sleep 0.01; done
  MONGO_PORT=$(awk '/PORT/{print $2}' "$1.out")
}

start_meta() { # $1 = dir, $2 = instance; sets IMDS_PORT AMS_PORT META_FD
  mkfifo "$1/meta.in"
  $PY bench/drain_peers.py "$2" "$IP" < "$1/meta.in" > "$1/meta.out" 2>/dev/null &
  PIDS+=($!)
  exec {META_FD}>"$1/meta.in"
  for _ in $(seq 300); do grep -q AMS "$1/meta.out" 2>/dev/null && break; sleep 0.01; done
  IMDS_PORT=$(awk '/IMDS/{print $2}' "$1/meta.out")
  AMS_PORT=$(awk '/^AMS/{print $2}' "$1/meta.out")
}

meta() { # $1 = dir, rest = a control line; prints the time it took effect
  local n; n=$(grep -c '^OK' "$1/meta.out" || true)
  echo "${*:2}" >&"$META_FD"
  for _ in $(seq 500); do [ "$(grep -c '^OK' "$1/meta.out" || true)" -gt "$n" ] && break; sleep 0.005; done
  grep '^OK' "$1/meta.out" | tail -1 | awk '{print $2}'
}

node_tree() { # $1 = dir, $2 = node id, $3 = mongo port
  mkdir -p "$1/root" "$1/bin"
  cp -r examples/host/. "$1/root/"
  mkdir -p "$1/root/etc/ams-agent"
  printf '[mongo]\nuri = "mongodb://127.0.0.1:%s"\n[node]\nid = "%s"\nrole = "edge"\nprivate_ip = "%s"\nams_home = "/usr/local/antmedia"\n' "$3" "$2" "$IP" > "$1/root/etc/ams-agent/agent.toml"
  printf '#!/bin/sh\n[ "$1" = is-system-running ] && echo running\nexit 0\n' > "$1/bin/systemctl"; chmod +x "$1/bin/systemctl"
}

first_state_t() { # $1 = record, $2 = state: time of the first update writing it
  $PY - "$1" "$2" <<'PYEOF'
import json, sys
for l in open(sys.argv[1]):
    c = json.loads(l)
    if c["cmd"] != "update":
        continue
    for u in c["doc"].get("updates", []):
        if u.get("u", {}).get("$set", {}).get("state") == sys.argv[2]:
            print(c["t"]); sys.exit(0)
PYEOF
}

wait_for() { # $1 = seconds, rest = command that prints something once true
  for _ in $(seq $(( $1 * 20 ))); do out=$("${@:2}" 2>/dev/null || true); [ -n "$out" ] && { echo "$out"; return 0; }; sleep 0.05; done
  return 1
}

run_reporter() { # $1 = dir, $2 = imds port, $3 = ams port, rest = env; sets RPID
  # Every AWS call to loopback unless the caller names its peer.
  env AMS_AGENT_ROOT="$1/root" PATH="$1/bin:$PATH" AMS_AGENT_AMS_URL="http://127.0.0.1:$3/" \
    AMS_AGENT_AWS_ENDPOINT="http://127.0.0.1:1" \
    AMS_AGENT_IMDS_ENDPOINT="http://127.0.0.1:$2" "${@:4}" "$BIN" run >"$1/run.log" 2>&1 &
  RPID=$!; PIDS+=($RPID)
}

echo "binary: $BIN ($(stat -c %s "$BIN") bytes)"
echo
echo "1. notice in the metadata -> draining in the registry (interval 5s)"
for i in 1 2 3 4 5; do
  D="$WORK/n$i"; mkdir -p "$D"
  start_mongo "$D/rec.jsonl"; start_meta "$D" "i-0bench0000000000$i"; node_tree "$D" "i-0bench0000000000$i" "$MONGO_PORT"
  run_reporter "$D" "$IMDS_PORT" "$AMS_PORT"
  wait_for 20 first_state_t "$D/rec.jsonl" ready >/dev/null
  sleep "0.$((RANDOM % 10))$((RANDOM % 10))"; sleep $((i % 5))
  t0=$(meta "$D" set autoscaling/target-lifecycle-state Terminated)
  t1=$(wait_for 20 first_state_t "$D/rec.jsonl" draining)
  echo "  run $i: $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f s", b-a}')"
  kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null || true
done
echo "  target: <= 6 s"

echo
echo "2. notice -> CompleteLifecycleAction sent, the node already empty"
if [ -z "$MOTO_PY" ] || [ ! -x "$MOTO_PY" ]; then
  echo "  skipped: AMS_AGENT_TEST_MOTO_PYTHON names no python with moto[server]==5.2.5 (.ci/run creates the venv)"
else
  $MOTO_PY tests/peers/aws_peer.py > "$WORK/aws.out" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 600); do grep -q PORT "$WORK/aws.out" 2>/dev/null && break; sleep 0.01; done
  AWS="http://127.0.0.1:$(awk '/PORT/{print $2}' "$WORK/aws.out")"
  SETUP=$($MOTO_PY tests/peers/aws_setup.py "$AWS" eu-west-1 '{"roles":{"ams-node":["autoscaling:DescribeAutoScalingInstances","autoscaling:DescribeLifecycleHooks","autoscaling:RecordLifecycleActionHeartbeat","autoscaling:CompleteLifecycleAction"]},"group":{"name":"ams-edge","hook":"ams-drain","heartbeatTimeout":300,"defaultResult":"ABANDON"}}')
  INSTANCE=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["instance"])' "$SETUP")
  curl -fsS -X POST -H "Content-Type: text/plain" --data 0 "$AWS/moto-api/reset-auth" >/dev/null
  for i in 1 2 3; do
    D="$WORK/l$i"; mkdir -p "$D"
    start_mongo "$D/rec.jsonl"; start_meta "$D" "$INSTANCE"; node_tree "$D" "$INSTANCE" "$MONGO_PORT"
    creds=$($PY -c 'import json,sys; c=json.loads(sys.argv[1])["credentials"]["ams-node"]; print(json.dumps({"Code":"Success","AccessKeyId":c["AccessKeyId"],"SecretAccessKey":c["SecretAccessKey"],"Token":c["SessionToken"],"Expiration":"2099-01-01T00:00:00Z"}))' "$SETUP")
    meta "$D" set iam/security-credentials/ ams-node >/dev/null
    meta "$D" set iam/security-credentials/ams-node "$creds" >/dev/null
    meta "$D" dynamic instance-identity/document '{"region": "eu-west-1"}' >/dev/null
    run_reporter "$D" "$IMDS_PORT" "$AMS_PORT" AMS_AGENT_AWS_ENDPOINT="$AWS"
    wait_for 20 first_state_t "$D/rec.jsonl" ready >/dev/null
    curl -fsS -X POST -H 'Content-Type: application/json' --data "{\"instance\": \"$INSTANCE\", \"region\": \"eu-west-1\"}" "$AWS/__shim/terminate" >/dev/null
    sleep "0.$((RANDOM % 10))$((RANDOM % 10))"; sleep $((i % 5))
    t0=$(meta "$D" set autoscaling/target-lifecycle-state Terminated)
    done_t=$(wait_for 30 $PY -c 'import json,sys,urllib.request; a=[x for x in json.load(urllib.request.urlopen(sys.argv[1]+"/__shim/actions"))["actions"] if x.get("result")=="CONTINUE" and x["state"]=="Terminating:Proceed"]; print(a[-1]["completedAt"]) if len(a)>='"$i"' else None' "$AWS" | grep -v None)
    echo "  run $i: $(awk -v a="$t0" -v b="$done_t" 'BEGIN{printf "%.2f s", b-a}')"
    kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null || true
  done
  echo "  target: <= 10 s"
fi

echo
echo "3. reporter RSS/CPU over ${SECS}s at the default 5s interval"
D="$WORK/steady"; mkdir -p "$D"
start_mongo "$D/rec.jsonl"; start_meta "$D" i-0bench0000000steady; node_tree "$D" i-0bench0000000steady "$MONGO_PORT"
run_reporter "$D" "$IMDS_PORT" "$AMS_PORT"; RON=$RPID
D2="$WORK/nometa"; mkdir -p "$D2"; node_tree "$D2" 0123456789abcdef0123456789abcdef "$MONGO_PORT"
echo 0123456789abcdef0123456789abcdef > "$D2/root/etc/machine-id"
run_reporter "$D2" 1 "$AMS_PORT" AMS_AGENT_IMDS_ENDPOINT="http://127.0.0.1:1"; ROFF=$RPID
sleep 3
c1=$(cpu_seconds $RON); c2=$(cpu_seconds $ROFF)
sleep "$SECS"
d1=$(awk -v a="$c1" -v b="$(cpu_seconds $RON)" 'BEGIN{printf "%.2f", b-a}')
d2=$(awk -v a="$c2" -v b="$(cpu_seconds $ROFF)" 'BEGIN{printf "%.2f", b-a}')
pct() { awk -v c="$1" -v s="$SECS" 'BEGIN{printf "%.3f", 100*c/s}'; }
printf '  %-52s %12s %12s %14s\n' "process" "peak RSS MB" "CPU seconds" "% of one core"
printf '  %-52s %12s %12s %14s\n' "ams-agent run, EC2 node, metadata polled every 5s" "$(peak_rss_mb $RON)" "$d1" "$(pct "$d1")"
printf '  %-52s %12s %12s %14s\n' "ams-agent run, no metadata (no polling)" "$(peak_rss_mb $ROFF)" "$d2" "$(pct "$d2")"
echo "  targets: RSS <= 10 MB, CPU <= 0.2 % of one core"
