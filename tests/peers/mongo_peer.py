#!/usr/bin/python3
"""A MongoDB wire-protocol peer for ams-agent's tests, built on MockupDB
(MongoDB's own wire-protocol test server, Debian package python3-mockupdb).

It answers the handshake like a standalone mongod (wire version 21), keeps
the documents the agent writes in memory (update with upsert: $set,
$setOnInsert, $currentDate, $inc, $unset, refusing overlapping paths with
code 40 as mongod does; find; createIndexes; collMod), and
records every command it receives as one JSON line (relaxed extended JSON) in
the --record file (createUser's pwd included: it is a test's temp file).

Users and SCRAM-SHA-256 (RFC 5802 / RFC 7677), as mongod does them:
  - an in-memory user store: createUser (salt, 15000 iterations, StoredKey
    and ServerKey from SASLprep(pwd); mechanisms default to
    ["SCRAM-SHA-256"]; an existing user is refused with code 51003, a pwd
    SASLprep refuses with code 2 BadValue), usersInfo ("name", {user, db}, 1,
    a list of those, {forAllDBs: true}), dropUser;
  - saslStart / saslContinue speak SCRAM-SHA-256 for real (the ClientProof is
    checked, the server signature sent), ending with
    options.skipEmptyExchange or with the classic extra empty saslContinue.
    An unknown user, a wrong password, another mechanism (SCRAM-SHA-1, PLAIN,
    ...) or a user whose mechanisms lack SCRAM-SHA-256 fail with code 18
    AuthenticationFailed; with no user at all every login fails.
    speculativeAuthenticate in hello is not answered (drivers fall back to
    saslStart). A successful conversation authenticates that connection (the
    state is kept per client socket) as that user; `logout` forgets it;
  - hello with saslSupportedMechs "<db>.<user>" answers that user's
    mechanisms and leaves the field out for an unknown user, as mongod does;
    while no user exists and authorization is off it answers
    ["SCRAM-SHA-256", "SCRAM-SHA-1"] as this peer always did;
  - connectionStatus (authInfo) and listDatabases (admin only) are answered.

With --auth (or the control line "auth on") authorization is enforced like
`security.authorization: enabled`: a connection that has not authenticated
may only run hello/ismaster/isMaster, ping, buildInfo/buildinfo, saslStart,
saslContinue, logout, endSessions, connectionStatus and, through the
localhost exception, createUser on admin while no user exists at all;
anything else fails with code 13 Unauthorized "Command <name> requires
authentication". An authenticated user may run everything (roles are kept,
not enforced). Without it everything is allowed. --auth-fail (older and
independent) refuses every command but endSessions with code 13.

Faults and state are driven through stdin, one command a line (UTF-8); the
peer answers each with "OK <line>" on stdout:

    fault <command> close|stall|ok|error:<code>:<message>   every matching request
    fault-once <command> <action>                            the next one only
    clear                                                    no more faults
    put <json>                                               upsert one node document into ams_agent.nodes
        (relaxed extended JSON, one line; "lastSeenAgo": <seconds> sets
        lastSeen that long before now, by this peer's clock)
    remove <id>                                              remove one node document
    hangup                                                   close every client connection
    stop / start                                             stop listening / listen again (same port)
    auth on / auth off                                       enforce authorization, or not
    skew <seconds>                                           the peer's clock runs this far ahead
        (negative: behind) of the machine's: hello's localTime, $currentDate and
        $ago all follow it, as one mongod with a wrong clock would
    version <x.y.z>                                          what buildInfo answers (default 8.0.4)
    startup-warnings <json>                                  what getLog "startupWarnings" answers:
        a JSON array of log lines (strings), e.g. ["{\"msg\":\"Access control is not enabled\"}"]
    drop <db> <coll>                                         remove every document of a collection
    insert <db> <coll> <json>                                store (or replace, by _id) a document,
        relaxed extended JSON; a value {"$ago": <seconds>} becomes the peer's
        now less that many seconds (a datetime)
    adduser <json>                                           add (or replace) a user, e.g.
        adduser {"user":"ams","pwd":"s3cret","roles":[{"role":"root","db":"admin"}],"mechanisms":["SCRAM-SHA-256"]}
        One line of JSON: the password may hold any character (newlines
        escaped). roles (default root@admin), mechanisms (default
        ["SCRAM-SHA-256"]) and db (default "admin") are optional. A user the
        peer cannot store (bad JSON, a pwd SASLprep refuses, as mongod does:
        code 2 "Unable to normalize input string") is answered
        "ERR adduser refused: <why>" instead.
    quit

Usage: mongo_peer.py --record FILE [--port N] [--auth] [--auth-fail] [--seed N]
On start it prints "PORT <n>" on stdout.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import random
import socket
import sys
import threading
import time
import weakref

from bson import json_util, int64
from bson.binary import Binary
from bson.son import SON
import mockupdb
from pymongo.saslprep import saslprep

HANDSHAKE = ("hello", "ismaster", "isMaster")
# The peer's clock: the machine's plus SKEW seconds (control line `skew`).
SKEW = [0.0]
now = lambda: datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=SKEW[0])


def resolve_ago(value):
    """{"$ago": s} anywhere in a document becomes now() - s seconds."""
    if isinstance(value, dict):
        if set(value.keys()) == {"$ago"}:
            return now() - datetime.timedelta(seconds=float(value["$ago"]))
        return SON((k, resolve_ago(v)) for k, v in value.items())
    if isinstance(value, list):
        return [resolve_ago(v) for v in value]
    return value


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


SCRAM_ITERATIONS = 15000
SCRAM_MECHS = ("SCRAM-SHA-1", "SCRAM-SHA-256")
# What a connection that has not authenticated may run under --auth (the
# localhost exception's createUser is decided apart).
UNAUTHENTICATED_OK = HANDSHAKE + (
    "ping", "buildInfo", "buildinfo", "saslStart", "saslContinue", "logout",
    "endSessions", "connectionStatus",
)


class AuthError(Exception):
    """A command error: code, codeName, errmsg."""

    def __init__(self, code, code_name, errmsg):
        super().__init__(errmsg)
        self.code, self.code_name, self.errmsg = code, code_name, errmsg


def auth_failed():
    return AuthError(18, "AuthenticationFailed", "Authentication failed.")


def b64(data):
    return base64.b64encode(data).decode("ascii")


def hmac256(key, msg):
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_sha256_credentials(pwd):
    """mongod's SCRAM-SHA-256 secrets for `pwd` (RFC 5802 section 3): salt,
    iteration count, StoredKey and ServerKey. Raises AuthError 2 BadValue when
    SASLprep refuses the password (as mongod does)."""
    try:
        prepped = saslprep(pwd)
    except ValueError:
        raise AuthError(2, "BadValue", "Unable to normalize input string")
    salt = os.urandom(28)  # mongod: the hash length less 4
    salted = hashlib.pbkdf2_hmac("sha256", prepped.encode("utf-8"), salt, SCRAM_ITERATIONS)
    client_key = hmac256(salted, b"Client Key")
    return {
        "salt": salt,
        "iterationCount": SCRAM_ITERATIONS,
        "storedKey": hashlib.sha256(client_key).digest(),
        "serverKey": hmac256(salted, b"Server Key"),
    }


def scram_attrs(message):
    """The attributes of one SCRAM message ("a=x,b=y") in order; values keep
    any "=" they hold."""
    attrs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise auth_failed()
        attrs.append((part[0], part[2:]))
    return attrs


def scram_unescape_name(name):
    out, i = [], 0
    while i < len(name):
        if name[i] == "=":
            code = name[i + 1:i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                raise auth_failed()
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def normalize_roles(roles, db):
    out = []
    for r in roles:
        if isinstance(r, str):
            out.append({"role": r, "db": db})
        elif isinstance(r, dict) and isinstance(r.get("role"), str) and isinstance(r.get("db"), str):
            out.append({"role": r["role"], "db": r["db"]})
        else:
            raise AuthError(2, "BadValue", "Role names must be either strings or objects with 'role' and 'db' fields")
    return out


class Users:
    """The user store, the authorization switch and the per-connection state
    (authenticated user, SCRAM conversation in progress). The handler runs
    one request at a time; the control thread only takes the lock too."""

    def __init__(self, enforce):
        self.lock = threading.RLock()
        self.enforce = enforce
        self.users = {}  # (db, name) -> {"user", "db", "roles", "mechanisms", "scram256"}
        self.conns = weakref.WeakKeyDictionary()  # client socket -> {"user": (db, name) | None, "conv": ...}
        self.ports = {}  # client port -> state, when the socket cannot be weakly referenced

    def conn(self, request):
        sock = getattr(request, "_client", None)
        try:
            return self.conns.setdefault(sock, {"user": None, "conv": None})
        except TypeError:
            return self.ports.setdefault(request.client_port, {"user": None, "conv": None})

    def authenticated(self, request):
        """The user this connection authenticated as, while it still exists."""
        with self.lock:
            key = self.conn(request)["user"]
            return self.users.get(key) if key else None

    def add(self, db, name, pwd, roles, mechanisms, replace=False):
        if not isinstance(name, str) or not name:
            raise AuthError(2, "BadValue", "User name must be a non-empty string")
        if mechanisms is None:
            mechanisms = ["SCRAM-SHA-256"]
        if not isinstance(mechanisms, list) or not mechanisms:
            raise AuthError(2, "BadValue", "mechanisms field must not be empty")
        for m in mechanisms:
            if m not in SCRAM_MECHS:
                raise AuthError(2, "BadValue", "Unknown auth mechanism '%s'" % m)
        if not isinstance(pwd, str):
            raise AuthError(2, "BadValue", "Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db")
        if not isinstance(roles, list):
            raise AuthError(2, "BadValue", '"createUser" command requires a "roles" array')
        user = {
            "user": name,
            "db": db,
            "roles": normalize_roles(roles, db),
            "mechanisms": sorted(set(mechanisms), key=mechanisms.index),
            "scram256": scram_sha256_credentials(pwd) if "SCRAM-SHA-256" in mechanisms else None,
        }
        with self.lock:
            if (db, name) in self.users and not replace:
                raise AuthError(51003, "Location51003", 'User "%s@%s" already exists' % (name, db))
            self.users[(db, name)] = user

    def drop(self, db, name):
        with self.lock:
            if self.users.pop((db, name), None) is None:
                raise AuthError(11, "UserNotFound", "User '%s@%s' not found" % (name, db))

    def info(self, db, which):
        """usersInfo: "name", {user, db}, 1, a list of those, {forAllDBs: true}."""
        with self.lock:
            if isinstance(which, dict) and which.get("forAllDBs"):
                keys = sorted(self.users)
            elif which == 1 and not isinstance(which, bool):
                keys = sorted(k for k in self.users if k[0] == db)
            else:
                keys = []
                for w in which if isinstance(which, list) else [which]:
                    if isinstance(w, str):
                        keys.append((db, w))
                    elif isinstance(w, dict) and "user" in w:
                        keys.append((w.get("db", db), w["user"]))
                    else:
                        raise AuthError(2, "BadValue", "User name must be either a string or an object with 'user' and 'db' fields")
            return [{
                "_id": "%s.%s" % (u["db"], u["user"]),
                "user": u["user"],
                "db": u["db"],
                "roles": [dict(r) for r in u["roles"]],
                "mechanisms": list(u["mechanisms"]),
            } for u in (self.users.get(k) for k in keys) if u]

    def mechanisms_for(self, qualified):
        """saslSupportedMechs: the mechanisms of "<db>.<user>", None when unknown."""
        if not isinstance(qualified, str) or "." not in qualified:
            return None
        db, name = qualified.split(".", 1)
        with self.lock:
            u = self.users.get((db, name))
            return list(u["mechanisms"]) if u else None

    def allowed(self, request, name):
        """Whether `name` may run on this connection; the localhost exception
        lets createUser on admin through while no user exists."""
        with self.lock:
            if not self.enforce or name in UNAUTHENTICATED_OK:
                return True
            if self.authenticated(request):
                return True
            return name == "createUser" and request.namespace == "admin" and not self.users

    # SCRAM-SHA-256, server side (RFC 5802 section 5, RFC 7677).

    def sasl_start(self, request, doc):
        with self.lock:
            state = self.conn(request)
            state["conv"] = None
            if doc.get("mechanism") != "SCRAM-SHA-256":
                raise auth_failed()
            try:
                client_first = bytes(doc.get("payload") or b"").decode("utf-8")
                cbind, authzid, bare = client_first.split(",", 2)
            except (UnicodeDecodeError, ValueError, TypeError):
                raise auth_failed()
            if cbind not in ("n", "y") or authzid:
                raise auth_failed()
            attrs = scram_attrs(bare)
            if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
                raise auth_failed()
            name = scram_unescape_name(attrs[0][1])
            user = self.users.get((request.namespace, name))
            if user is None or user["scram256"] is None:
                raise auth_failed()
            creds = user["scram256"]
            nonce = attrs[1][1] + b64(os.urandom(24))
            server_first = "r=%s,s=%s,i=%d" % (nonce, b64(creds["salt"]), creds["iterationCount"])
            options = doc.get("options") or {}
            state["conv"] = {
                "step": "proof",
                "key": (request.namespace, name),
                "gs2": client_first[:len(client_first) - len(bare)],
                "nonce": nonce,
                "auth_message": bare + "," + server_first,
                "skip_empty": bool(isinstance(options, dict) and options.get("skipEmptyExchange")),
            }
            return {"conversationId": 1, "done": False, "payload": Binary(server_first.encode("utf-8"))}

    def sasl_continue(self, request, doc):
        with self.lock:
            state = self.conn(request)
            conv = state["conv"]
            if conv is None or doc.get("conversationId", 1) != 1:
                state["conv"] = None
                raise AuthError(17, "ProtocolError", "No SASL session state found")
            try:
                return self._sasl_step(state, conv, bytes(doc.get("payload") or b""))
            except AuthError:
                state["conv"] = None
                raise

    def _sasl_step(self, state, conv, payload):
        user = self.users.get(conv["key"])
        if user is None or user["scram256"] is None:
            raise auth_failed()
        if conv["step"] == "final":
            # The classic end: an empty client message, the server is done.
            if payload:
                raise auth_failed()
            state["conv"] = None
            state["user"] = conv["key"]
            return {"conversationId": 1, "done": True, "payload": Binary(b"")}
        try:
            client_final = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise auth_failed()
        head, sep, proof = client_final.rpartition(",p=")
        if not sep:
            raise auth_failed()
        attrs = scram_attrs(head)
        if len(attrs) < 2 or attrs[0] != ("c", b64(conv["gs2"].encode("utf-8"))) or attrs[1] != ("r", conv["nonce"]):
            raise auth_failed()
        try:
            proof = base64.b64decode(proof, validate=True)
        except ValueError:
            raise auth_failed()
        creds = user["scram256"]
        auth_message = (conv["auth_message"] + "," + head).encode("utf-8")
        client_signature = hmac256(creds["storedKey"], auth_message)
        if len(proof) != len(client_signature):
            raise auth_failed()
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), creds["storedKey"]):
            raise auth_failed()
        server_final = "v=" + b64(hmac256(creds["serverKey"], auth_message))
        if conv["skip_empty"]:
            state["conv"] = None
            state["user"] = conv["key"]
            done = True
        else:
            conv["step"] = "final"
            done = False
        return {"conversationId": 1, "done": done, "payload": Binary(server_final.encode("utf-8"))}

    def logout(self, request):
        with self.lock:
            state = self.conn(request)
            state["user"] = state["conv"] = None

    def connection_status(self, request):
        u = self.authenticated(request)
        users = [{"user": u["user"], "db": u["db"]}] if u else []
        roles = [dict(r) for r in u["roles"]] if u else []
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": roles}}


class Peer:
    def __init__(self, args):
        self.args = args
        self.record = open(args.record, "a", buffering=1)
        self.store = Store()
        self.users = Users(args.auth)
        self.faults = {}  # command -> (action, once)
        self.lock = threading.Lock()
        self.conn_id = 0
        self.server = None
        self.port = args.port
        self.version = "8.0.4"
        self.startup_warnings = []
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
                with self.users.lock:
                    legacy = not self.users.users and not self.users.enforce
                    mechs = self.users.mechanisms_for(doc["saslSupportedMechs"])
                if legacy:
                    # No user and no authorization: answered as this peer
                    # always did (every login fails anyway).
                    reply["saslSupportedMechs"] = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
                elif mechs is not None:
                    reply["saslSupportedMechs"] = mechs
            return request.replies(reply)
        try:
            return self.handle_auth(request, name, db, doc)
        except AuthError as e:
            return request.command_err(code=e.code, errmsg=e.errmsg, codeName=e.code_name)

    def handle_auth(self, request, name, db, doc):
        """Logins and user management, then authorization, then the rest."""
        if name == "saslStart":
            return request.replies(self.users.sasl_start(request, doc))
        if name == "saslContinue":
            return request.replies(self.users.sasl_continue(request, doc))
        if name == "authenticate":
            # MONGODB-X509 / MONGODB-CR: not implemented, the login fails.
            raise auth_failed()
        if self.args.auth_fail and name not in ("endSessions",):
            return request.command_err(code=13, errmsg="command %s requires authentication" % name, codeName="Unauthorized")
        if not self.users.allowed(request, name):
            raise AuthError(13, "Unauthorized", "Command %s requires authentication" % name)
        if name in ("buildInfo", "buildinfo"):
            parts = [int(p) for p in self.version.split(".") if p.isdigit()]
            return request.replies({"version": self.version, "versionArray": parts + [0] * (4 - len(parts)), "ok": 1})
        if name in ("ping", "endSessions"):
            return request.replies({"ok": 1})
        if name == "getLog":
            if doc.get("getLog") != "startupWarnings":
                return request.command_err(code=2, errmsg="getLog: only startupWarnings is answered by this peer", codeName="BadValue")
            lines = list(self.startup_warnings)
            return request.replies({"totalLinesWritten": len(lines), "log": lines, "ok": 1})
        if name == "logout":
            self.users.logout(request)
            return request.replies({"ok": 1})
        if name == "connectionStatus":
            return request.replies(self.users.connection_status(request))
        if name == "listDatabases":
            return request.replies({"databases": [{"name": "admin", "sizeOnDisk": 0, "empty": False}], "totalSize": 0, "ok": 1})
        if name == "createUser":
            self.users.add(db, doc["createUser"], doc.get("pwd"), doc.get("roles"), doc.get("mechanisms"))
            return request.replies({"ok": 1})
        if name == "usersInfo":
            return request.replies({"users": self.users.info(db, doc["usersInfo"])})
        if name == "dropUser":
            self.users.drop(db, doc["dropUser"])
            return request.replies({"ok": 1})
        return self.handle_data(request, name, db, doc)

    def handle_data(self, request, name, db, doc):
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
        if cmd == "auth" and len(words) == 2 and words[1] in ("on", "off"):
            with self.users.lock:
                self.users.enforce = words[1] == "on"
        elif cmd == "adduser":
            return self.add_user(line[len("adduser"):].strip())
        elif cmd == "skew" and len(words) == 2:
            SKEW[0] = float(words[1])
        elif cmd == "version" and len(words) == 2:
            self.version = words[1]
        elif cmd == "startup-warnings":
            try:
                lines = json.loads(line[len("startup-warnings"):].strip())
            except ValueError as e:
                return "startup-warnings refused: %s" % e
            if not isinstance(lines, list) or not all(isinstance(l, str) for l in lines):
                return "startup-warnings refused: not a JSON array of strings"
            self.startup_warnings = lines
        elif cmd == "drop" and len(words) == 3:
            with self.lock:
                self.store.coll(words[1], words[2]).clear()
        elif cmd == "insert":
            parts = line.split(None, 3)
            if len(parts) != 4:
                return "insert refused: insert <db> <coll> <json>"
            try:
                doc = json_util.loads(parts[3], json_options=json_util.RELAXED_JSON_OPTIONS)
            except ValueError as e:
                return "insert refused: %s" % e
            if not isinstance(doc, dict) or "_id" not in doc:
                return "insert refused: a JSON object with an _id"
            doc = resolve_ago(doc)
            with self.lock:
                self.store.coll(parts[1], parts[2])[doc["_id"]] = doc
        elif cmd in ("fault", "fault-once"):
            with self.lock:
                self.faults[words[1]] = (words[2], cmd == "fault-once")
        elif cmd == "clear":
            with self.lock:
                self.faults.clear()
        elif cmd == "put":
            return self.put(line[len("put"):].strip())
        elif cmd == "remove" and len(words) == 2:
            with self.lock:
                self.store.coll("ams_agent", "nodes").pop(words[1], None)
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
        else:
            print("mongo_peer: unknown control line %r" % line, file=sys.stderr, flush=True)

    def put(self, text):
        """The `put <json>` control line: None, or why it was refused."""
        try:
            d = json_util.loads(text)
            if not isinstance(d, dict) or "_id" not in d:
                raise ValueError("not a JSON object with an _id")
        except ValueError as e:
            return "put refused: %s" % e
        ago = d.pop("lastSeenAgo", None)
        if ago is not None:
            d["lastSeen"] = now() - datetime.timedelta(seconds=float(ago))
        with self.lock:
            self.store.coll("ams_agent", "nodes")[d["_id"]] = SON(d)
        return None

    def add_user(self, text):
        """The `adduser <json>` control line: None, or why it was refused."""
        try:
            spec = json.loads(text)
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
            self.users.add(
                spec.get("db", "admin"),
                spec.get("user"),
                spec.get("pwd"),
                spec.get("roles", [{"role": "root", "db": "admin"}]),
                spec.get("mechanisms"),
                replace=True,
            )
        except AuthError as e:
            return "adduser refused: code %d %s: %s" % (e.code, e.code_name, e.errmsg)
        except ValueError as e:
            return "adduser refused: %s" % e
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--auth-fail", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # Control lines (adduser passwords) are UTF-8 whatever the locale says.
    sys.stdin.reconfigure(encoding="utf-8")
    sys.stdout.reconfigure(encoding="utf-8")
    peer = Peer(args)
    peer.start()
    print("PORT %d" % peer.port, flush=True)
    for line in sys.stdin:
        line = line.strip()
        refused = peer.control(line)
        print("ERR %s" % refused if refused else "OK %s" % line, flush=True)
    peer.stop()


if __name__ == "__main__":
    main()
