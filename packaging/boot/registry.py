#!/usr/bin/python3
"""The boot test's view of the node registry (packaging/ci-boot.sh runs it
inside the container): reads ams_agent.nodes from the MongoDB peer with
pymongo, logged in as its own user, never as the agent's.

    registry.py show                      every node document, JSON, one a line
    registry.py wait SECONDS WHAT EXPR    poll (every 0.5 s) until the Python
                                          expression EXPR is true of `d` (the
                                          one node document, or None); print
                                          the document and exit 0, or say what
                                          was waited for, print the last
                                          document seen and exit 1
    registry.py login USER PASSWORD_FILE  exit 0 when the peer accepts this
                                          password for USER, 1 when it refuses
                                          it (authentication failed), 2 on
                                          any other error

Its own credentials: user `boot-check`, password in the file named by
$BOOT_CHECK_PASSWORD_FILE. Every call has deadlines (2 s to reach the peer,
3 s per operation).
"""

import json
import os
import sys
import time

from bson import json_util
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

URI = "mongodb://127.0.0.1:27017/"
DB, COLL = "ams_agent", "nodes"


def read_password(path):
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n")


def client(user, password):
    return MongoClient(
        URI,
        username=user,
        password=password,
        authSource="admin",
        authMechanism="SCRAM-SHA-256",
        serverSelectionTimeoutMS=2000,
        connectTimeoutMS=2000,
        socketTimeoutMS=3000,
    )


def checker():
    return client("boot-check", read_password(os.environ["BOOT_CHECK_PASSWORD_FILE"]))


def dump(doc):
    return json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS)


def docs(c):
    return list(c[DB][COLL].find({}))


def one(c):
    found = docs(c)
    if len(found) > 1:
        raise SystemExit("registry.py: %d node documents, expected one: %s" % (len(found), [d.get("_id") for d in found]))
    return found[0] if found else None


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd = sys.argv[1]
    if cmd == "show":
        with checker() as c:
            for d in docs(c):
                print(dump(d))
        return 0
    if cmd == "wait" and len(sys.argv) == 5:
        seconds, what, expr = float(sys.argv[2]), sys.argv[3], sys.argv[4]
        deadline = time.monotonic() + seconds
        last, error = None, None
        with checker() as c:
            while True:
                try:
                    last, error = one(c), None
                    if eval(expr, {}, {"d": last}):
                        print(dump(last))
                        return 0
                except PyMongoError as e:
                    error = e
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
        print("timed out after %gs waiting for %s; last document: %s%s"
              % (seconds, what, dump(last), "; last error: %s" % error if error else ""), file=sys.stderr)
        return 1
    if cmd == "login" and len(sys.argv) == 4:
        try:
            with client(sys.argv[2], read_password(sys.argv[3])) as c:
                c.admin.command("ping")
        except OperationFailure as e:
            if e.code == 18:
                return 1
            print("registry.py: login: %s" % e, file=sys.stderr)
            return 2
        except PyMongoError as e:
            print("registry.py: login: %s" % e, file=sys.stderr)
            return 2
        return 0
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
