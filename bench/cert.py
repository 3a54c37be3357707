#!/usr/bin/python3
"""Agent overhead of `ams-agent cert` over certbot alone, with numbers.

Starts Let's Encrypt's test server pebble on loopback (validation off, as in
the tests), then alternates, RUNS times each, with a fresh domain every run:

  certbot alone:  certbot certonly --standalone … -d bN.example.test
  ams-agent:      ams-agent cert --domain aN.example.test --for both --no-restart
                  (certbot, then the deploy hook: lineage checks, the PKCS#12
                  key and trust stores, seven AMS files in one transaction, the
                  HAProxy pem, haproxy -c; systemctl is a fake)

and prints min / median / max wall time of each and the difference of the
medians. Target: overhead <= 500 ms.

    bench/cert.sh [RUNS]     (default 5)
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import ssl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target/release/ams-agent")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sh(*args, **kw):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def tls_pair(d):
    """A tiny CA and a leaf for 127.0.0.1 it signed (pebble's HTTPS)."""
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", d + "/ca.key", "-out", d + "/ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", d + "/leaf.key", "-out", d + "/leaf.csr", "-subj", "/CN=localhost")
    with open(d + "/ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    sh("openssl", "x509", "-req", "-in", d + "/leaf.csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
       "-CAcreateserial", "-out", d + "/leaf.pem", "-days", "2", "-extfile", d + "/ext")


def start_pebble(d):
    tls_pair(d)
    port, mgmt = free_port(), free_port()
    cfg = {"pebble": {"listenAddress": "127.0.0.1:%d" % port, "managementListenAddress": "127.0.0.1:%d" % mgmt,
                      "certificate": d + "/leaf.pem", "privateKey": d + "/leaf.key",
                      "httpPort": free_port(), "tlsPort": free_port(), "ocspResponderURL": "",
                      "externalAccountBindingRequired": False}}
    with open(d + "/pebble.json", "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ, PEBBLE_VA_ALWAYS_VALID="1", PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0",
               PEBBLE_AUTHZREUSE="0")
    p = subprocess.Popen(["/usr/bin/pebble", "-config", d + "/pebble.json", "-strict=false"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "https://127.0.0.1:%d/dir" % port
    ctx = ssl.create_default_context(cafile=d + "/ca.pem")
    deadline = time.time() + 20
    while True:
        try:
            urllib.request.urlopen(url, context=ctx, timeout=1).read()
            return p, url
        except Exception:
            if time.time() > deadline:
                sys.exit("pebble did not answer on %s within 20 s" % url)
            time.sleep(0.1)


def timed(args, env, cwd=None):
    t0 = time.perf_counter()
    r = subprocess.run(args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("%s failed:\n%s%s" % (args[0], r.stdout.decode(), r.stderr.decode()))
    return wall


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    scratch = tempfile.mkdtemp()
    pebble, url = start_pebble(scratch)
    try:
        root = os.path.join(scratch, "root")
        shutil.copytree(os.path.join(REPO, "examples/host"), root)
        os.makedirs(root + "/etc/haproxy/certs", mode=0o700)
        with open(root + "/etc/haproxy/haproxy.cfg", "w") as f:
            f.write("global\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\n"
                    "frontend https\n    bind 127.0.0.1:%d ssl crt %s/etc/haproxy/certs/\n    default_backend none\n"
                    "backend none\n    server s1 127.0.0.1:1\n" % (free_port(), root))
        bindir = os.path.join(scratch, "bin")
        os.makedirs(bindir)
        with open(bindir + "/systemctl", "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        with open(bindir + "/iptables", "w") as f:
            f.write("#!/bin/sh\nexit 1\n")
        os.chmod(bindir + "/systemctl", 0o755)
        os.chmod(bindir + "/iptables", 0o755)
        env = dict(os.environ, REQUESTS_CA_BUNDLE=scratch + "/ca.pem", XDG_CONFIG_HOME=scratch + "/xdg",
                   NO_PROXY="127.0.0.1,localhost", PATH=bindir + ":" + os.environ["PATH"], AMS_AGENT_ROOT=root)
        alone_dir = os.path.join(scratch, "alone")
        alone, agent = [], []
        for i in range(runs):
            alone.append(timed(["certbot", "certonly", "--non-interactive", "--agree-tos",
                                "--register-unsafely-without-email", "--standalone", "--http-01-port", str(free_port()),
                                "--server", url, "--config-dir", alone_dir + "/config", "--work-dir", alone_dir + "/work",
                                "--logs-dir", alone_dir + "/logs", "-d", "b%d.example.test" % i], env))
            agent.append(timed([BIN, "cert", "--domain", "a%d.example.test" % i, "--for", "both", "--no-restart",
                                "--acme-server", url, "--http-01-port", str(free_port())], env))
    finally:
        pebble.kill()
        pebble.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print("ams-agent cert vs certbot alone, %d runs each, against pebble on loopback" % runs)
    for name, xs in (("certbot certonly alone", alone), ("ams-agent cert --for both", agent)):
        print("  %-26s min %6.0f ms  median %6.0f ms  max %6.0f ms" % (name, min(xs) * 1e3, statistics.median(xs) * 1e3, max(xs) * 1e3))
    print("  agent overhead (median difference): %.0f ms; target <= 500 ms" % ((statistics.median(agent) - statistics.median(alone)) * 1e3))


if __name__ == "__main__":
    main()
