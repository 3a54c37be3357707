"""Loopback peers for bench/drain.sh: an IMDSv2 endpoint (token flow; items
set on stdin) and an AMS REST API with nothing on it (every application
answers 0 viewers, 0 live streams).

    /usr/bin/python3 bench/drain_peers.py <instance-id> <local-ipv4>

prints "IMDS <port>" and "AMS <port>", then reads lines on stdin:

    set <item> <value>      a meta-data item (e.g. autoscaling/target-lifecycle-state Terminated)
    dynamic <item> <value>  an item under /latest/dynamic/
    unset <item>
and answers each with "OK <t>" (the time it took effect, epoch seconds).
"""

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ITEMS = {}
TOKENS = set()


class Imds(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, status, body=""):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            t = uuid.uuid4().hex
            TOKENS.add(t)
            return self.reply(200, t)
        self.reply(400)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") not in TOKENS:
            return self.reply(401)
        for prefix, key in (("/latest/meta-data/", ""), ("/latest/dynamic/", "dynamic:")):
            if self.path.startswith(prefix):
                v = ITEMS.get(key + self.path[len(prefix):])
                return self.reply(200, v) if v is not None else self.reply(404)
        self.reply(404)


class Ams(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        p = self.path.split("/")
        if len(p) > 5 and p[2:5] == ["rest", "v2", "broadcasts"]:
            if p[5] == "total-broadcast-statistics":
                body = {"totalRTMPWatchersCount": -1, "totalHLSWatchersCount": 0,
                        "totalWebRTCWatchersCount": 0, "totalDASHWatchersCount": 0, "activeLiveStreamCount": 0}
            elif p[5] == "active-live-stream-count":
                body = {"number": 0}
            else:
                body = []
            data = json.dumps(body).encode()
        else:
            data = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(handler):
    s = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s.server_address[1]


def main():
    ITEMS["instance-id"] = sys.argv[1]
    ITEMS["local-ipv4"] = sys.argv[2]
    ITEMS["instance-type"] = "c5.xlarge"
    ITEMS["placement/availability-zone"] = "eu-west-1a"
    print("IMDS %d" % serve(Imds), flush=True)
    print("AMS %d" % serve(Ams), flush=True)
    for line in sys.stdin:
        words = line.rstrip("\n").split(" ", 2)
        if words[0] == "set" and len(words) == 3:
            ITEMS[words[1]] = words[2]
        elif words[0] == "dynamic" and len(words) == 3:
            ITEMS["dynamic:" + words[1]] = words[2]
        elif words[0] == "unset" and len(words) >= 2:
            ITEMS.pop(words[1], None)
        print("OK %.6f" % time.time(), flush=True)


if __name__ == "__main__":
    main()
