#!/usr/bin/python3
"""`ams-agent lb`, with numbers (bench/lb.sh runs it on the release binary).

1. Render + validate for NODES registry documents (default 500; MockupDB
   seeded: a quarter origins, a quarter stale): `ams-agent -v --dry-run
   lb haproxy|nginx` RUNS times (default 5). The agent logs where the time
   went; printed: the agent's own part (documents, file, decisions,
   render: everything but the registry's wire time, the running balancer
   and the checker), the checker (`haproxy -c` / `nginx -t`), and the wall
   time of the whole command. Target: own part <= 20 ms.

2. Registry change -> traffic shifted, TRIALS times (default 3) per mode:
   a real HAProxy (or Nginx) on loopback in front of two WebSocket/HTTP
   backends e1 and e2, the follower running (`lb … --watch`, default
   --poll 500ms, --settle 0s, --hard-stop-after 3s), 20 WebSockets open on
   e1. Then one registry write: e2 ready, e1 draining. Measured: the time
   from that write to the first of three requests in a row answered by
   e2, and how many of the 20 WebSockets still answer 5 s later (after
   hard-stop-after). Modes: HAProxy through its Runtime API; HAProxy with
   --no-runtime (every change a reload); Nginx (a reload). The reloads run
   with --quiet-period 0s --max-wait 0s: the reload's own time, without the
   debounce (2 s by default) that --watch adds.
   Target: <= 1 s with the Runtime API, no WebSocket dropped.

    bench/lb.sh [NODES] [RUNS] [TRIALS]     (NODES 0 or TRIALS 0 skips a part)
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target/release/ams-agent")
PY = "/usr/bin/python3"
PEER = os.path.join(REPO, "tests/peers/mongo_peer.py")
WS = os.path.join(REPO, "tests/peers/ws_peer.py")
STOCK_HAPROXY = os.path.join(REPO, "tests/golden/lb/debian-haproxy.cfg")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write_exec(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)


class Peer:
    def __init__(self, work, seed=0):
        args = [PY, PEER, "--record", os.path.join(work, "rec.jsonl")]
        if seed:
            args += ["--seed", str(seed)]
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        self.port = int(line.split()[1])
        self.uri = "mongodb://127.0.0.1:%d" % self.port

    def put(self, id_, role, ip, state):
        doc = {"_id": id_, "role": role, "privateIp": ip, "state": state,
               "intervalSeconds": 5.0, "lastSeenAgo": 0}
        self.p.stdin.write("put %s\n" % json.dumps(doc))
        self.p.stdin.flush()
        assert self.p.stdout.readline().startswith("OK")

    def stop(self):
        self.p.kill()
        self.p.wait()


def get(port, path="/"):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        s.sendall(("GET %s HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
        return body.strip()
    except OSError:
        return ""


def median_ms(xs):
    return "%.2f" % statistics.median(xs)


# ---------------------------------------------------------------- part 1

def render_bench(nodes, runs):
    work = tempfile.mkdtemp(prefix="ams-agent-lb-bench-")
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, "etc/haproxy"))
    os.makedirs(os.path.join(root, "etc/nginx"))
    with open(STOCK_HAPROXY) as f:
        stock = f.read()
    with open(os.path.join(root, "etc/haproxy/haproxy.cfg"), "w") as f:
        f.write(stock)
    with open(os.path.join(root, "etc/nginx/nginx.conf"), "w") as f:
        f.write("load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
                "events {\n}\nhttp {\n\taccess_log off;\n}\n")
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir)
    prefix = os.path.join(work, "nginx")
    os.makedirs(os.path.join(prefix, "logs"))
    # No balancer runs: nothing is reloaded; nginx -t gets a private prefix.
    write_exec(os.path.join(bindir, "systemctl"), "#!/bin/sh\nexit 3\n")
    write_exec(os.path.join(bindir, "nginx"),
               "#!/bin/sh\nexec /usr/sbin/nginx -p '%s' -g 'pid %s/nginx.pid; error_log %s/logs/e.log;' \"$@\"\n"
               % (prefix, prefix, prefix))
    env = dict(os.environ, PATH=bindir + ":" + os.environ["PATH"], AMS_AGENT_ROOT=root)
    peer = Peer(work, seed=nodes)
    print("1. render + validate, %d registry documents, %d runs each (dry run, nothing installed)" % (nodes, runs))
    print("   %-8s %-16s %-16s %-16s %s" % ("", "own part (ms)", "checker (ms)", "wall (ms)", "servers rendered"))
    try:
        for kind in ("haproxy", "nginx"):
            own, check, wall = [], [], []
            servers = 0
            for _ in range(runs):
                t = time.monotonic()
                out = subprocess.run(
                    [BIN, "-v", "--dry-run", "lb", kind, "--mongo", peer.uri, "--settle", "0s"],
                    env=env, capture_output=True, text=True)
                wall.append((time.monotonic() - t) * 1000)
                if out.returncode != 0:
                    sys.exit("ams-agent failed: %s" % out.stderr[-2000:])
                m = re.search(r"timing: own ([0-9.]+) ms .* checker ([0-9.]+) ms", out.stderr)
                if not m:
                    sys.exit("no timing line in: %s" % out.stderr[-2000:])
                own.append(float(m.group(1)))
                check.append(float(m.group(2)))
                servers = len(re.findall(r"^\s+\+\s+server ", out.stdout, re.M))
            print("   %-8s %-16s %-16s %-16s %d" % (
                kind,
                "%s (max %.2f)" % (median_ms(own), max(own)),
                median_ms(check),
                median_ms(wall),
                servers))
        print("   target: own part <= 20 ms")
    finally:
        peer.stop()
        subprocess.run(["rm", "-rf", work])


# ---------------------------------------------------------------- part 2

HAPROXY_BASE = """global
\tstats socket {root}/run/haproxy/admin.sock mode 600 level admin
\tstats timeout 30s

defaults
\tmode http
\ttimeout connect 5000
\ttimeout client 50000
\ttimeout server 50000
"""


class Setup:
    def __init__(self, kind, no_runtime):
        self.kind = kind
        self.work = tempfile.mkdtemp(prefix="ams-agent-lb-shift-")
        self.root = os.path.join(self.work, "root")
        self.bin = os.path.join(self.work, "bin")
        os.makedirs(self.bin)
        self.procs = []
        node = free_port()
        self.play = free_port()
        listen = ["--listen=publish=127.0.0.1:%d" % free_port(),
                  "--listen=play=127.0.0.1:%d" % self.play,
                  "--listen=dashboard=off", "--listen=rtmp=off", "--listen=srt=off",
                  "--http-port=%d" % node]
        ws = subprocess.Popen([PY, WS, "server", "127.0.0.201:%d" % node, "e1",
                               "127.0.0.202:%d" % node, "e2"], stdout=subprocess.PIPE, text=True)
        assert ws.stdout.readline().strip() == "READY"
        self.procs.append(ws)
        self.peer = Peer(self.work)
        self.peer.put("i-e1", "edge", "127.0.0.201", "ready")
        pid = os.path.join(self.work, "lb.pid")
        if kind == "haproxy":
            for d in ("etc/haproxy", "run/haproxy", "var/lib/haproxy"):
                os.makedirs(os.path.join(self.root, d))
            cfg = os.path.join(self.root, "etc/haproxy/haproxy.cfg")
            with open(cfg, "w") as f:
                f.write(HAPROXY_BASE.format(root=self.root))
            lb = subprocess.Popen(["haproxy", "-W", "-f", cfg, "-p", pid],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            write_exec(os.path.join(self.bin, "systemctl"),
                       "#!/bin/sh\ncase \"$1 $2\" in\n'reload haproxy') kill -USR2 \"$(cat '%s')\" ;;\n"
                       "'is-active --quiet') kill -0 \"$(cat '%s')\" 2>/dev/null ;;\nesac\n" % (pid, pid))
            sock = os.path.join(self.root, "run/haproxy/admin.sock")
            self.wait(lambda: os.path.exists(sock), "haproxy")
            # A reload waits for no debounce here (as with Nginx below), so the
            # number is the reload's own.
            args = ["lb", "haproxy", "--state-file", "/var/lib/haproxy/state",
                    "--quiet-period", "0s", "--max-wait", "0s"]
            listen = [a for a in listen if not a.startswith("--listen=srt")]
            if no_runtime:
                args.append("--no-runtime")
        else:
            os.makedirs(os.path.join(self.root, "etc/nginx"))
            os.makedirs(os.path.join(self.root, "run"))
            prefix = os.path.join(self.work, "nginx")
            os.makedirs(os.path.join(prefix, "logs"))
            conf = os.path.join(self.root, "etc/nginx/nginx.conf")
            with open(conf, "w") as f:
                f.write("worker_processes 2;\nevents {\n}\nhttp {\n\taccess_log off;\n}\n")
            npid = os.path.join(self.root, "run/nginx.pid")
            g = "pid %s; error_log %s/logs/e.log;" % (npid, prefix)
            write_exec(os.path.join(self.bin, "nginx"),
                       "#!/bin/sh\nexec /usr/sbin/nginx -p '%s' -g '%s' \"$@\"\n" % (prefix, g))
            write_exec(os.path.join(self.bin, "systemctl"),
                       "#!/bin/sh\ncase \"$1 $2\" in\n'reload nginx') '%s/nginx' -c '%s' -s reload ;;\n"
                       "'is-active --quiet') kill -0 \"$(cat '%s')\" 2>/dev/null ;;\nesac\n"
                       % (self.bin, conf, npid))
            lb = subprocess.Popen(["/usr/sbin/nginx", "-p", prefix, "-c", conf, "-g", g + " daemon off;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.wait(lambda: os.path.exists(npid), "nginx")
            args = ["lb", "nginx", "--quiet-period", "0s", "--max-wait", "0s"]
        self.procs.append(lb)
        env = dict(os.environ, PATH=self.bin + ":" + os.environ["PATH"], AMS_AGENT_ROOT=self.root)
        follower = subprocess.Popen(
            [BIN, "-q"] + args + ["--watch", "--settle", "0s", "--hard-stop-after", "3s",
                                  "--mongo", self.peer.uri] + listen,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.follower = follower
        self.wait(lambda: get(self.play) == "e1", "e1 in rotation")

    def wait(self, f, what, limit=20):
        t = time.monotonic()
        while not f():
            if time.monotonic() - t > limit:
                raise SystemExit("timed out waiting for " + what)
            time.sleep(0.02)

    def close(self):
        self.follower.send_signal(signal.SIGTERM)
        try:
            self.follower.wait(10)
        except subprocess.TimeoutExpired:
            self.follower.kill()
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.peer.stop()
        subprocess.run(["rm", "-rf", self.work])


def shift_trial(kind, no_runtime, conns=20):
    s = Setup(kind, no_runtime)
    try:
        clients = subprocess.Popen([PY, WS, "clients", "ws://127.0.0.1:%d/WebRTCAppEE/websocket" % s.play,
                                    str(conns)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        on = [clients.stdout.readline().split()[2] for _ in range(conns)]
        assert all(n == "e1" for n in on), on
        t0 = time.monotonic()
        s.peer.put("i-e2", "edge", "127.0.0.202", "ready")
        s.peer.put("i-e1", "edge", "127.0.0.201", "draining")
        run = 0
        while run < 3:
            run = run + 1 if get(s.play) == "e2" else 0
            if time.monotonic() - t0 > 30:
                raise SystemExit("traffic never shifted (%s)" % kind)
        shifted = time.monotonic() - t0
        time.sleep(5)
        clients.stdin.write("check\n")
        clients.stdin.flush()
        alive = int(clients.stdout.readline().split()[1])
        dropped = int(clients.stdout.readline().split()[1])
        clients.stdin.write("quit\n")
        clients.stdin.flush()
        clients.wait(10)
        return shifted, alive, dropped
    finally:
        s.close()


def shift_bench(trials):
    print()
    print("2. registry change (e2 joins, e1 drains) -> traffic shifted; 20 WebSockets open on e1;")
    print("   --poll 500ms (default), --settle 0s, --hard-stop-after 3s, reloads not debounced; %d trials each" % trials)
    print("   %-34s %-22s %s" % ("", "shift (s): median (max)", "WebSockets after 5 s"))
    for label, kind, no_runtime in [
        ("haproxy, Runtime API (no reload)", "haproxy", False),
        ("haproxy, --no-runtime (reload)", "haproxy", True),
        ("nginx (reload)", "nginx", False),
    ]:
        times, alive, dropped = [], [], []
        for _ in range(trials):
            t, a, d = shift_trial(kind, no_runtime)
            times.append(t)
            alive.append(a)
            dropped.append(d)
        print("   %-34s %-22s %d/20 alive, %d dropped (worst trial)" % (
            label, "%.3f (%.3f)" % (statistics.median(times), max(times)), min(alive), max(dropped)))
    print("   target: <= 1 s with the Runtime API, no WebSocket dropped")


def main():
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    trials = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    if nodes > 0:
        render_bench(nodes, runs)
    if trials > 0:
        shift_bench(trials)


if __name__ == "__main__":
    main()
