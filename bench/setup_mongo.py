#!/usr/bin/python3
"""Agent overhead of `ams-agent setup mongo`, with numbers.

apt-get, dpkg-query and systemctl are answered at once by fakes on PATH (an
install drops the packaged mongod.conf, as mongodb-org does), the signing
key comes over real HTTPS from tests/peers/apt_peer.py, and mongod is the
wire peer tests/peers/mongo_peer.py speaking SCRAM-SHA-256 with
authorization on. What is left is the agent's own work: planning, the key
download and dearmoring, durable file writes, the readiness ping, the
SCRAM logins (PBKDF2, 15000 iterations), createUser and the verification.

Each fresh-host run gets a new root and a new peer; then the same host is
run again (nothing to do). Prints min / median / max wall time and the
agent's peak RSS. Target: fresh host <= 1 s wall.

    bench/setup_mongo.sh [RUNS]     (default 10)
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target/release/ams-agent")
PY = "/usr/bin/python3"
CONF = open(os.path.join(REPO, "examples/host/etc/mongod.conf")).read()
OS_RELEASE = 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="24.04"\nVERSION_CODENAME=noble\n'


def start(args, ready_prefix):
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    if not line.startswith(ready_prefix):
        sys.exit("peer did not start: %r" % line)
    return p, line.split()


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def fakes(work, root, port):
    state = os.path.join(work, "state")
    os.makedirs(state, exist_ok=True)
    write(os.path.join(work, "package/mongod.conf"), CONF.replace("port: 27017", "port: %d" % port))
    b = os.path.join(work, "bin")
    write(b + "/apt-get", "#!/bin/sh\ncase \" $* \" in *\" install \"*) touch %s/installed; cp %s/package/mongod.conf %s/etc/mongod.conf;; esac\nexit 0\n" % (state, work, root), 0o755)
    write(b + "/dpkg-query", "#!/bin/sh\n[ -e %s/installed ] || exit 1\nprintf 'install ok installed\\t8.0.4'\n" % state, 0o755)
    write(b + "/systemctl", "#!/bin/sh\nu=$(echo \"$*\" | awk '{print $NF}')\ncase \"$1\" in\nis-active) [ -e %s/a-$u ]; exit $?;;\nis-enabled) [ -e %s/e-$u ]; exit $?;;\nenable) touch %s/e-$u %s/a-$u;;\nstart|restart) touch %s/a-$u;;\nesac\nexit 0\n" % ((state,) * 5), 0o755)
    return b


def run_agent(env, args):
    """Wall time, peak RSS (MB) and stdout of one agent run."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([BIN] + args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        # wait4: the agent's own rusage, not the peers' or the build's.
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if p.returncode != 0:
            sys.exit("ams-agent failed: %s" % err.read().decode())
        return wall, usage.ru_maxrss / 1024, out.read().decode()


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    scratch = tempfile.mkdtemp()
    apt, words = start([PY, os.path.join(REPO, "tests/peers/apt_peer.py"), "--dir", os.path.join(scratch, "apt"), "--dist", "noble/mongodb-org/8.0", "--component", "multiverse"], "READY")
    fields = dict(w.split("=", 1) for w in words[1:])
    key_url = "https://127.0.0.1:%s/key.asc" % fields["https"]
    fresh, again, rss_fresh, rss_again = [], [], [], []
    try:
        for i in range(runs):
            work = os.path.join(scratch, "run%d" % i)
            root = os.path.join(work, "root")
            write(os.path.join(root, "etc/os-release"), OS_RELEASE)
            peer, words = start([PY, os.path.join(REPO, "tests/peers/mongo_peer.py"), "--record", os.path.join(work, "rec.jsonl"), "--auth"], "PORT")
            try:
                b = fakes(work, root, int(words[1]))
                env = dict(os.environ, PATH=b + ":" + os.environ["PATH"], AMS_AGENT_ROOT=root, SSL_CERT_FILE=fields["ca"])
                args = ["setup", "mongo", "--yes", "--bind-ip", "10.0.1.5", "--key-url", key_url, "--repo-url", "http://127.0.0.1:%s/apt/ubuntu" % fields["http"]]
                wall, rss, _ = run_agent(env, args)
                fresh.append(wall)
                rss_fresh.append(rss)
                wall, rss, out = run_agent(env, args)
                assert "nothing to do" in out, out
                again.append(wall)
                rss_again.append(rss)
            finally:
                peer.kill()
                peer.wait()
    finally:
        apt.stdin.close()
        apt.kill()
        apt.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print("setup mongo, %d runs (apt/systemctl answered at once; key over HTTPS; SCRAM-SHA-256 peer)" % runs)
    for name, xs in (("fresh host (12 steps)", fresh), ("second run (nothing to do)", again)):
        print("  %-28s min %6.0f ms  median %6.0f ms  max %6.0f ms" % (name, min(xs) * 1e3, statistics.median(xs) * 1e3, max(xs) * 1e3))
    print("  agent peak RSS: fresh host %.1f MB, second run %.1f MB" % (max(rss_fresh), max(rss_again)))
    print("  target: fresh host <= 1000 ms wall")


if __name__ == "__main__":
    main()
