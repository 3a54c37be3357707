#!/usr/bin/python3
"""A MongoDB wire-protocol peer for ams-agent's tests, built on MockupDB
(MongoDB's own wire-protocol test server, Debian package python3-mockupdb).

It answers the handshake like a standalone mongod (wire version 21), keeps
the documents the agent writes in memory (update with upsert: $set,
$setOnInsert, $currentDate, $inc, $unset, refusing overlapping paths with
code 40 as mongod does; find; createIndexes; collMod), and
records every command it receives as one JSON line (relaxed extended JSON) in
the --record file. Faults are injected through stdin, one command a line; the
peer answers each with "OK <line>" on stdout:

    fault <command> close|stall|ok|error:<code>:<message>   every matching request
    fault-once <command> <action>                            the next one only
    clear                                                    no more faults
    hangup                                                   close every client connection
    stop / start                                             stop listening / listen again (same port)
    quit

Usage: mongo_peer.py --record FILE [--port N] [--auth-fail] [--seed N]
On start it prints "PORT <n>" on stdout.
"""

import argparse
import datetime
import json
import random
import socket
import sys
import threading
import time

from bson import json_util, int64
from bson.son import SON
import mockupdb

HANDSHAKE = ("hello", "ismaster", "isMaster")
now = lambda: datetime.datetime.now(datetime.timezone.utc)


class Store:
    def __init__(self):
        self.colls = {}  # (db, coll) -> {id: doc}
        self.indexes = {}  # (db, coll) -> {name: spec}

    def coll(self, db, name):
        return self.colls.setdefault((db, name), {})


def set_path(doc, path, value):
    parts = path.split(".")
    for p in parts[:-1]:
        if not isinstance(doc.get(p), dict):
            doc[p] = {}
        doc = doc[p]
    doc[parts[-1]] = value


def get_path(doc, path):
    for p in path.split("."):
        if not isinstance(doc, dict) or p not in doc:
            return None
        doc = doc[p]
    return doc


def unset_path(doc, path):
    parts = path.split(".")
    for p in parts[:-1]:
        doc = doc.get(p)
        if not isinstance(doc, dict):
            return
    doc.pop(parts[-1], None)


def matches(doc, flt):
    for k, v in (flt or {}).items():
        if get_path(doc, k) != v:
            return False
    return True


def path_conflict(update):
    """The first pair of paths of one update that overlap (the same path, or
    one inside the other) across or within operators, as mongod refuses them
    with code 40 ConflictingUpdateOperators; None when there is none."""
    paths = []
    for op, fields in update.items():
        if op.startswith("$") and isinstance(fields, dict):
            paths.extend(fields.keys())
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            if a == b or a.startswith(b + ".") or b.startswith(a + "."):
                return a, b
    return None


def apply_update(doc, update, inserting):
    for k, v in update.get("$set", {}).items():
        set_path(doc, k, v)
    if inserting:
        for k, v in update.get("$setOnInsert", {}).items():
            set_path(doc, k, v)
    for k, v in update.get("$currentDate", {}).items():
        set_path(doc, k, now())
    for k, v in update.get("$inc", {}).items():
        set_path(doc, k, (get_path(doc, k) or 0) + v)
    for k in update.get("$unset", {}):
        unset_path(doc, k)


class Peer:
    def __init__(self, args):
        self.args = args
        self.record = open(args.record, "a", buffering=1)
        self.store = Store()
        self.faults = {}  # command -> (action, once)
        self.lock = threading.Lock()
        self.conn_id = 0
        self.server = None
        self.port = args.port
        if args.seed:
            self.seed(args.seed)

    def seed(self, n):
        c = self.store.coll("ams_agent", "nodes")
        rnd = random.Random(7)
        for i in range(n):
            role = "origin" if i % 4 == 0 else "edge"
            c["i-%017x" % i] = SON([
                ("_id", "i-%017x" % i),
                ("hostname", "ip-10-0-%d-%d" % (i // 250, i % 250)),
                ("privateIp", "10.0.%d.%d" % (i // 250, i % 250)),
                ("role", role),
                ("state", "ready"),
                ("intervalSeconds", 5.0),
                ("health", {"cpu": round(rnd.uniform(0, 100), 1), "memoryUsed": round(rnd.uniform(10, 90), 1)}),
                ("lastSeen", now() - datetime.timedelta(seconds=rnd.choice([1, 2, 3, 60]))),
                ("heartbeats", int64.Int64(rnd.randint(1, 10000))),
            ])

    def start(self):
        self.server = mockupdb.MockupDB(port=self.port, request_timeout=int(1e6))
        self.server.autoresponds(self.handle)
        self.port = self.server.run()

    def stop(self):
        if self.server:
            self.server.stop()
            self.server = None

    def log(self, request, name):
        entry = {
            "t": time.time(),
            "cmd": name,
            "db": request.namespace,
            "port": request.client_port,
            "doc": json.loads(json_util.dumps(request.doc, json_options=json_util.RELAXED_JSON_OPTIONS)),
        }
        self.record.write(json.dumps(entry) + "\n")

    def fault_for(self, name):
        with self.lock:
            f = self.faults.get(name) or self.faults.get("*")
            if f is None:
                return None
            action, once = f
            if once:
                self.faults.pop(name if name in self.faults else "*", None)
            return action

    def handle(self, request):
        name = request.command_name or ""
        self.log(request, name)
        if name not in HANDSHAKE:
            action = self.fault_for(name)
            if action == "close":
                return request.hangup()
            if action == "stall":
                return True  # never answer this request
            if action and action.startswith("error:"):
                _, code, msg = action.split(":", 2)
                return request.command_err(code=int(code), errmsg=msg)
        db = request.namespace
        doc = request.doc
        if name in HANDSHAKE:
            self.conn_id += 1
            reply = {
                "ismaster": True,
                "isWritablePrimary": True,
                "helloOk": True,
                "maxWireVersion": 21,
                "minWireVersion": 0,
                "maxBsonObjectSize": 16777216,
                "maxMessageSizeBytes": 48000000,
                "maxWriteBatchSize": 100000,
                "logicalSessionTimeoutMinutes": 30,
                "connectionId": self.conn_id,
                "localTime": now(),
            }
            if "saslSupportedMechs" in doc:
                reply["saslSupportedMechs"] = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
            return request.replies(reply)
        if name in ("saslStart", "saslContinue", "authenticate"):
            # This peer does not implement SCRAM: every login fails, as a
            # server with other credentials would answer.
            return request.command_err(code=18, errmsg="Authentication failed.", codeName="AuthenticationFailed")
        if self.args.auth_fail and name not in ("endSessions",):
            return request.command_err(code=13, errmsg="command %s requires authentication" % name, codeName="Unauthorized")
        if name in ("ping", "endSessions", "buildInfo", "buildinfo"):
            return request.replies({"ok": 1})
        if name == "update":
            coll = self.store.coll(db, doc["update"])
            n = modified = 0
            upserted = []
            for i, u in enumerate(doc.get("updates", [])):
                conflict = path_conflict(u.get("u", {}))
                if conflict:
                    a, b = conflict
                    return request.replies({"n": n, "nModified": modified, "writeErrors": [{
                        "index": i,
                        "code": 40,
                        "codeName": "ConflictingUpdateOperators",
                        "errmsg": "Updating the path '%s' would create a conflict at '%s'" % (b, a),
                    }]})
                hits = [d for d in coll.values() if matches(d, u.get("q"))]
                if hits:
                    apply_update(hits[0], u.get("u", {}), False)
                    n += 1
                    modified += 1
                elif u.get("upsert"):
                    new = SON()
                    for k, v in (u.get("q") or {}).items():
                        set_path(new, k, v)
                    apply_update(new, u.get("u", {}), True)
                    coll[new["_id"]] = new
                    n += 1
                    upserted.append({"index": i, "_id": new["_id"]})
            reply = {"n": n, "nModified": modified}
            if upserted:
                reply["upserted"] = upserted
            return request.replies(reply)
        if name == "find":
            coll = self.store.coll(db, doc["find"])
            docs = [d for d in coll.values() if matches(d, doc.get("filter"))]
            docs.sort(key=lambda d: (str(d.get("role")), str(d.get("_id"))))
            return request.replies({"cursor": {"id": int64.Int64(0), "ns": "%s.%s" % (db, doc["find"]), "firstBatch": docs}})
        if name == "getMore":
            return request.replies({"cursor": {"id": int64.Int64(0), "ns": db, "nextBatch": []}})
        if name == "killCursors":
            return request.replies({"cursorsKilled": doc.get("cursors", [])})
        if name == "createIndexes":
            idx = self.store.indexes.setdefault((db, doc["createIndexes"]), {})
            before = len(idx) + 1
            for spec in doc.get("indexes", []):
                old = idx.get(spec["name"])
                if old is not None and dict(old) != dict(spec):
                    return request.command_err(
                        code=85,
                        errmsg="An equivalent index already exists with the same name but different options",
                        codeName="IndexOptionsConflict",
                    )
                idx[spec["name"]] = spec
            return request.replies({"numIndexesBefore": before, "numIndexesAfter": len(idx) + 1, "createdCollectionAutomatically": before == 1})
        if name == "collMod":
            idx = self.store.indexes.setdefault((db, doc["collMod"]), {})
            want = doc.get("index", {})
            spec = idx.get(want.get("name"))
            if spec is None:
                return request.command_err(code=27, errmsg="cannot find index", codeName="IndexNotFound")
            old = spec.get("expireAfterSeconds")
            spec["expireAfterSeconds"] = want.get("expireAfterSeconds")
            return request.replies({"expireAfterSeconds_old": old, "expireAfterSeconds_new": spec["expireAfterSeconds"]})
        return request.command_err(code=59, errmsg="no such command: '%s'" % name, codeName="CommandNotFound")

    def control(self, line):
        words = line.split(None, 2)
        if not words:
            return
        cmd = words[0]
        if cmd in ("fault", "fault-once"):
            with self.lock:
                self.faults[words[1]] = (words[2], cmd == "fault-once")
        elif cmd == "clear":
            with self.lock:
                self.faults.clear()
        elif cmd == "hangup":
            if self.server:
                for s in list(self.server._server_socks):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        elif cmd == "stop":
            self.stop()
        elif cmd == "start":
            self.start()
        elif cmd == "quit":
            self.stop()
            sys.exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--auth-fail", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    peer = Peer(args)
    peer.start()
    print("PORT %d" % peer.port, flush=True)
    for line in sys.stdin:
        line = line.strip()
        peer.control(line)
        print("OK %s" % line, flush=True)
    peer.stop()


if __name__ == "__main__":
    main()
