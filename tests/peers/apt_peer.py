#!/usr/bin/python3
"""A signed apt repository and its key server, for ams-agent's tests of
`ams-agent setup mongo`. Standard library only, plus the `gpg` (Debian
package gnupg) and `openssl` (package openssl) command-line tools.

Usage:
    apt_peer.py --dir DIR --dist jammy/mongodb-org/8.0 --component multiverse
                [--arch amd64,arm64] [--also-dist DIST[:COMPONENT] ...]

It builds, under DIR (which it fills; it should be empty):

    gnupg/            GNUPGHOME of two throwaway keys (no passphrase)
    key.asc           the armored public key that signs the repository
    key.gpg           the same, binary (`gpg --dearmor key.asc`)
    other.asc/.gpg    an unrelated key, for negative tests
    fingerprints      "key <fpr>" and "other <fpr>", one a line
    repo/dists/<dist>/Release, Release.gpg (detached), InRelease (clearsigned)
    repo/dists/<dist>/<component>/binary-<arch>/Packages(.gz)   one tiny entry
    tls/ca.pem        a throwaway CA (the trust anchor to give clients)
    tls/cert.pem      the server certificate, signed by the CA
                      (subjectAltName IP:127.0.0.1, DNS:localhost)
    tls/key.pem       its private key
    http.log, https.log   one line per request: "<METHOD> <path> <status>"

The Release files are laid out like repo.mongodb.org's: for the dist
`jammy/mongodb-org/8.0` they say `Suite: jammy`, `Codename:
jammy/mongodb-org`, `Version: 8.0`. apt accepts a Release file when its
Codename or Suite equals the dist of the sources line, or the dist without
its last `/part` (apt-pkg/metaindex.cc, CheckDist), so no "Conflicting
distribution" warning.

Then it serves, on free loopback ports, threaded:

    http://127.0.0.1:<http>/        DIR/repo; the same tree is also served
                                    under /apt/ubuntu/ and /apt/debian/ (as
                                    on repo.mongodb.org), so both
                                    `<url> jammy/...` and
                                    `<url>/apt/debian bookworm/...` work
    https://127.0.0.1:<https>/key.asc, /key.gpg, /other.asc, /other.gpg
                             /missing.asc    404
                             /notakey.asc    200, an HTML page
                             /empty.asc      200, empty body
                             /truncated.asc  200, the first half of key.asc
                             /redirect.asc   302 to /key.asc
                             /slow.asc       reads the request, never answers
                             /slow-body.asc  sends the headers and half the
                                             body, then stalls

prints one line `READY http=<port> https=<port> ca=<DIR/tls/ca.pem>` on
stdout, and serves until stdin closes or reads `quit`.
"""

import argparse
import datetime
import gzip
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading

STOP = threading.Event()
TIMEOUT = 60  # seconds, for each gpg/openssl command


def run(args, env=None, stdin=None):
    """Runs a tool; on failure prints its output and exits."""
    try:
        p = subprocess.run(
            args,
            env=env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )
    except FileNotFoundError:
        sys.exit(f"apt_peer: {args[0]} not found (apt-get install gnupg openssl)")
    except subprocess.TimeoutExpired:
        sys.exit(f"apt_peer: timed out: {' '.join(args)}")
    if p.returncode != 0:
        sys.stderr.write(p.stdout.decode(errors="replace"))
        sys.stderr.write(p.stderr.decode(errors="replace"))
        sys.exit(f"apt_peer: failed ({p.returncode}): {' '.join(args)}")
    return p.stdout


class Gpg:
    def __init__(self, home):
        os.makedirs(home, mode=0o700, exist_ok=True)
        # No passphrase and loopback mode: a pinentry is never needed, and
        # should one be asked for, it fails at once instead of waiting.
        with open(os.path.join(home, "gpg-agent.conf"), "w") as f:
            f.write("pinentry-program /bin/false\nallow-loopback-pinentry\n")
        self.env = dict(os.environ, GNUPGHOME=home, LC_ALL="C")
        self.base = ["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]

    def __call__(self, *args, stdin=None):
        return run(self.base + list(args), env=self.env, stdin=stdin)

    def new_key(self, uid):
        self("--quick-gen-key", uid, "ed25519", "sign", "never")
        for line in self("--with-colons", "--list-keys", "=" + uid).decode().splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        sys.exit(f"apt_peer: no fingerprint for {uid}")

    def stop(self):
        try:
            subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            pass


def make_keys(d):
    gpg = Gpg(os.path.join(d, "gnupg"))
    fpr = gpg.new_key("ams-agent test repository <apt-peer@ams-agent.invalid>")
    other = gpg.new_key("unrelated test key <other@ams-agent.invalid>")
    for name, f in (("key", fpr), ("other", other)):
        armored = gpg("--armor", "--export", f)
        with open(os.path.join(d, name + ".asc"), "wb") as out:
            out.write(armored)
        with open(os.path.join(d, name + ".gpg"), "wb") as out:
            out.write(gpg("--dearmor", stdin=armored))
    with open(os.path.join(d, "fingerprints"), "w") as out:
        out.write(f"key {fpr}\nother {other}\n")
    return gpg, fpr


def packages_entry(dist, arch):
    version = dist.rsplit("/", 1)[-1]
    if not version[:1].isdigit():
        version = "1.0"
    return (
        "Package: mongodb-org\n"
        f"Version: {version}.0~amsagenttest\n"
        f"Architecture: {arch}\n"
        "Maintainer: ams-agent tests <apt-peer@ams-agent.invalid>\n"
        "Installed-Size: 1\n"
        "Priority: optional\n"
        "Section: database\n"
        f"Filename: pool/main/m/mongodb-org/mongodb-org_{version}.0~amsagenttest_{arch}.deb\n"
        "Size: 1\n"
        f"SHA256: {hashlib.sha256(b'x').hexdigest()}\n"
        "Description: test stand-in (the peer has no .deb to download)\n"
        "\n"
    ).encode()


def build_dist(gpg, fpr, repo, dist, components, archs):
    root = os.path.join(repo, "dists", dist)
    files = []  # paths relative to root
    for comp in components:
        for arch in archs:
            rel = f"{comp}/binary-{arch}"
            os.makedirs(os.path.join(root, rel), exist_ok=True)
            data = packages_entry(dist, arch)
            with open(os.path.join(root, rel, "Packages"), "wb") as f:
                f.write(data)
            with open(os.path.join(root, rel, "Packages.gz"), "wb") as f:
                f.write(gzip.compress(data, mtime=0))
            files += [f"{rel}/Packages", f"{rel}/Packages.gz"]
    parts = dist.split("/")
    suite = parts[0]
    codename = "/".join(parts[:-1]) if len(parts) > 1 else dist
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [
        "Origin: mongodb",
        "Label: mongodb",
        f"Suite: {suite}",
        f"Codename: {codename}",
    ]
    if len(parts) > 1:
        lines.append(f"Version: {parts[-1]}")
    lines += [
        f"Date: {now.strftime('%a, %d %b %Y %H:%M:%S UTC')}",
        f"Architectures: {' '.join(archs)}",
        f"Components: {' '.join(components)}",
        "Description: ams-agent test repository (a stand-in for MongoDB's)",
    ]
    for field, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512")):
        lines.append(f"{field}:")
        for rel in sorted(files):
            data = open(os.path.join(root, rel), "rb").read()
            lines.append(f" {hashlib.new(algo, data).hexdigest()} {len(data):>8} {rel}")
    release = os.path.join(root, "Release")
    with open(release, "w") as f:
        f.write("\n".join(lines) + "\n")
    sign = ["--local-user", fpr + "!", "--digest-algo", "SHA512"]
    gpg(*sign, "--armor", "--detach-sign", "--output", os.path.join(root, "Release.gpg"), release)
    gpg(*sign, "--clearsign", "--output", os.path.join(root, "InRelease"), release)


def make_tls(d):
    tls = os.path.join(d, "tls")
    os.makedirs(tls, exist_ok=True)
    p = lambda name: os.path.join(tls, name)
    # A CA and a leaf it signs: rustls (webpki) refuses a certificate marked
    # CA:TRUE as the server's own (CaUsedAsEndEntity), which a plain
    # `openssl req -x509` self-signed certificate is.
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", p("ca-key.pem"), "-out", p("ca.pem"), "-days", "30",
         "-subj", "/CN=ams-agent test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", p("key.pem"), "-out", p("cert.csr"), "-subj", "/CN=localhost"])
    with open(p("ext.cnf"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(["openssl", "x509", "-req", "-in", p("cert.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca-key.pem"),
         "-CAcreateserial", "-days", "30", "-extfile", p("ext.cnf"), "-out", p("cert.pem")])
    return p("ca.pem"), p("cert.pem"), p("key.pem")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # per connection, idle

    def log_message(self, fmt, *args):
        pass

    def log_request(self, code="-", size="-"):
        try:
            with self.server.log_lock, open(self.server.log_path, "a") as f:
                f.write(f"{self.command} {self.path} {int(code) if str(code).isdigit() else code}\n")
        except (OSError, ValueError):
            pass


class RepoHandler(Handler):
    PREFIXES = ("/apt/ubuntu/", "/apt/debian/")

    def translate_path(self, path):
        for pre in self.PREFIXES:
            if path.startswith(pre):
                path = path[len(pre) - 1:]
                break
        return super().translate_path(path)

    def list_directory(self, path):
        self.send_error(404)
        return None


class KeyHandler(Handler):
    FILES = {"/key.asc", "/key.gpg", "/other.asc", "/other.gpg"}

    def send_body(self, status, body, ctype="application/pgp-keys", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        key = open(os.path.join(self.server.root, "key.asc"), "rb").read()
        if path in self.FILES:
            self.send_body(200, open(os.path.join(self.server.root, path[1:]), "rb").read())
        elif path == "/notakey.asc":
            self.send_body(200, b"<!DOCTYPE html>\n<html><head><title>Not here</title></head>"
                                b"<body><h1>Sorry</h1><p>This is a web page, not a key.</p></body></html>\n",
                           ctype="text/html; charset=utf-8")
        elif path == "/empty.asc":
            self.send_body(200, b"")
        elif path == "/truncated.asc":
            self.send_body(200, key[: len(key) // 2])
        elif path == "/redirect.asc":
            self.send_body(302, b"", ctype="text/plain", extra=[("Location", "/key.asc")])
        elif path == "/slow.asc":
            self.log_request("stall")
            STOP.wait()
            self.close_connection = True
        elif path == "/slow-body.asc":
            self.send_response(200)
            self.send_header("Content-Type", "application/pgp-keys")
            self.send_header("Content-Length", str(len(key)))
            self.end_headers()
            self.wfile.write(key[: len(key) // 2])
            self.wfile.flush()
            STOP.wait()
            self.close_connection = True
        else:
            self.send_body(404, b"not found\n", ctype="text/plain")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler, root, log_path, tls=None):
        self.root = root
        self.log_path = log_path
        self.log_lock = threading.Lock()
        self.tls = tls
        super().__init__(("127.0.0.1", 0), handler)

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the connection's own thread, so
        # a client that never finishes it cannot block the accept loop.
        if self.tls is not None:
            request.settimeout(30)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write(f"apt_peer: TLS handshake from {client_address[0]} failed: {e}\n")
                return
        try:
            self.RequestHandlerClass(request, client_address, self, directory=self.root)
        finally:
            if self.tls is not None:
                request.close()

    def handle_error(self, request, client_address):
        pass  # clients that hang up (timeouts) are part of the tests


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dist", required=True)
    ap.add_argument("--component", required=True)
    ap.add_argument("--arch", default="amd64,arm64", help="comma-separated (default amd64,arm64)")
    ap.add_argument("--also-dist", action="append", default=[], metavar="DIST[:COMPONENT]")
    a = ap.parse_args()

    d = os.path.abspath(a.dir)
    os.makedirs(d, exist_ok=True)
    archs = [x for x in a.arch.split(",") if x]
    dists = {a.dist: [a.component]}
    for spec in a.also_dist:
        dist, _, comp = spec.partition(":")
        comps = dists.setdefault(dist, [])
        if (comp or a.component) not in comps:
            comps.append(comp or a.component)

    gpg, fpr = make_keys(d)
    repo = os.path.join(d, "repo")
    try:
        for dist, comps in dists.items():
            build_dist(gpg, fpr, repo, dist, comps, archs)
    finally:
        gpg.stop()  # no agent is left running once everything is signed
    ca, cert, key = make_tls(d)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    http_srv = Server(RepoHandler, repo, os.path.join(d, "http.log"))
    https_srv = Server(KeyHandler, d, os.path.join(d, "https.log"), tls=ctx)
    for s in (http_srv, https_srv):
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()

    print(f"READY http={http_srv.server_address[1]} https={https_srv.server_address[1]} ca={ca}", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
    STOP.set()
    for s in (http_srv, https_srv):
        s.shutdown()
        s.server_close()


if __name__ == "__main__":
    main()
