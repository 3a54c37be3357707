"""moto in server mode on loopback, with a small shim of ours in front.

Run with the python of the virtual environment `.ci/run` creates
(moto[server] 5.2.5):

    $AMS_AGENT_TEST_MOTO_PYTHON tests/peers/aws_peer.py [--port N]

It prints "PORT <n>" once it listens. Everything goes to moto's own WSGI
application (signature checks and IAM policies included, once enforced with
moto's `POST /moto-api/reset-auth`), except two Auto Scaling actions moto
5.2.5 does not implement (HTTP 500) and its scale-in, which never waits in
`Terminating:Wait`. The shim answers those as AWS documents them:

- `RecordLifecycleActionHeartbeat` and `CompleteLifecycleAction`: signed
  and authorized with moto's own IAM code (a bad signature, a refused
  token or a missing permission fail as they do for moto's actions); the
  action is found by instance id or by token among the lifecycle actions in
  `Terminating:Wait`; a heartbeat restarts the hook's timeout; completing
  moves it to `Terminating:Proceed` with the result given; a timeout that
  runs out applies the hook's default result; an action that is not (or no
  longer) waiting is `ValidationError: No active Lifecycle Action found
  with instance ID i-…`.

Control, unsigned, under /__shim/:

    POST /__shim/terminate {"instance": "i-…", "region": "eu-west-1"}
        the instance's group scales it in: every EC2_INSTANCE_TERMINATING
        hook of its group puts it in Terminating:Wait (a token each);
        answers the actions as JSON
    GET  /__shim/actions
        every lifecycle action: instance, group, hook, token, state,
        result, heartbeats, timedOut, and every call (action, when)
"""

import argparse
import io
import json
import sys
import threading
import time
import urllib.parse
import uuid

from werkzeug.serving import make_server

from moto import settings
from moto.autoscaling.models import autoscaling_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.access_control import IAMRequest
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
SHIMMED = ("RecordLifecycleActionHeartbeat", "CompleteLifecycleAction")


def xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def error(start_response, status, code, message):
    body = (
        '<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code>'
        "<Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>"
        % (NS, code, xml_escape(message), uuid.uuid4())
    ).encode()
    start_response("%d Error" % status, [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def ok(start_response, action):
    body = (
        '<%sResponse xmlns="%s"><%sResult/><ResponseMetadata><RequestId>%s</RequestId>'
        "</ResponseMetadata></%sResponse>" % (action, NS, action, uuid.uuid4(), action)
    ).encode()
    start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


def as_json(start_response, value, status="200 OK"):
    body = json.dumps(value).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def headers_of(environ):
    """The request's headers, with the names moto's IAM code looks up."""
    out = {}
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            name = "-".join(w.capitalize() for w in k[5:].split("_"))
            out[name] = v
    if environ.get("CONTENT_TYPE"):
        out["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        out["Content-Length"] = environ["CONTENT_LENGTH"]
    return out


class Shim:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.actions = []
        self.calls = []
        threading.Thread(target=self.expire, daemon=True).start()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/__shim/"):
            return self.control(environ, start_response, path)
        if environ.get("REQUEST_METHOD") == "POST":
            n = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(n)
            environ["wsgi.input"] = io.BytesIO(body)
            if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
                form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
                if form.get("Action") in SHIMMED:
                    return self.lifecycle(environ, start_response, form, body)
        return self.app(environ, start_response)

    # -- the two actions --------------------------------------------------

    def authorize(self, environ, form, body):
        """moto's own checks, as its BaseResponse runs them: None, or the error."""
        if ActionAuthenticatorMixin.request_count < settings.INITIAL_NO_AUTH_ACTION_COUNT:
            ActionAuthenticatorMixin.request_count += 1
            return None
        headers = headers_of(environ)
        if "Authorization" not in headers:
            return (403, "MissingAuthenticationToken", "Request is missing Authentication Token")
        try:
            req = IAMRequest(
                account_id=DEFAULT_ACCOUNT_ID,
                method="POST",
                path=environ.get("PATH_INFO") or "/",
                data=form,
                body=body,
                headers=headers,
                action=form["Action"],
            )
            req.check_signature()
            req.check_action_permitted("*")
        except Exception as e:  # moto's RESTError: code, error_type, message
            return (getattr(e, "code", 403), getattr(e, "error_type", "AccessDenied"),
                    getattr(e, "message", str(e)))
        return None

    def lifecycle(self, environ, start_response, form, body):
        action = form["Action"]
        refused = self.authorize(environ, form, body)
        with self.lock:
            self.calls.append({"action": action, "t": time.time(), "form": form,
                               "refused": refused[1] if refused else None})
        if refused:
            return error(start_response, *refused)
        group = form.get("AutoScalingGroupName")
        hook = form.get("LifecycleHookName")
        instance = form.get("InstanceId")
        token = form.get("LifecycleActionToken")
        if not group or not hook:
            return error(start_response, 400, "ValidationError",
                         "AutoScalingGroupName and LifecycleHookName are required")
        if not instance and not token:
            return error(start_response, 400, "ValidationError",
                         "Either InstanceId or LifecycleActionToken is required")
        result = form.get("LifecycleActionResult")
        if action == "CompleteLifecycleAction" and result not in ("CONTINUE", "ABANDON"):
            return error(start_response, 400, "ValidationError",
                         "LifecycleActionResult must be CONTINUE or ABANDON")
        with self.lock:
            found = [a for a in self.actions
                     if a["state"] == "Terminating:Wait" and a["group"] == group and a["hook"] == hook
                     and (a["instance"] == instance if instance else a["token"] == token)]
            if not found:
                what = "instance ID %s" % instance if instance else "token %s" % token
                return error(start_response, 400, "ValidationError",
                             "No active Lifecycle Action found with %s" % what)
            a = found[0]
            now = time.time()
            if action == "RecordLifecycleActionHeartbeat":
                a["heartbeats"] += 1
                a["lastHeartbeat"] = now
            else:
                a["state"] = "Terminating:Proceed"
                a["result"] = result
                a["completedAt"] = now
        return ok(start_response, action)

    def expire(self):
        while True:
            time.sleep(0.2)
            now = time.time()
            with self.lock:
                for a in self.actions:
                    if a["state"] != "Terminating:Wait":
                        continue
                    if now - a["lastHeartbeat"] >= a["timeout"] or now - a["since"] >= a["globalTimeout"]:
                        a["state"] = "Terminating:Proceed"
                        a["result"] = a["defaultResult"]
                        a["timedOut"] = True
                        a["completedAt"] = now

    # -- control ----------------------------------------------------------

    def control(self, environ, start_response, path):
        if path == "/__shim/actions":
            with self.lock:
                return as_json(start_response, {"actions": self.actions, "calls": self.calls})
        if path == "/__shim/terminate" and environ.get("REQUEST_METHOD") == "POST":
            n = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(n) or b"{}")
            instance = req["instance"]
            backend = autoscaling_backends[DEFAULT_ACCOUNT_ID][req.get("region", "us-east-1")]
            made = []
            for g in backend.autoscaling_groups.values():
                if not any(s.instance.id == instance for s in g.instance_states):
                    continue
                for h in backend.describe_lifecycle_hooks(g.name):
                    if h.lifecycle_transition != "autoscaling:EC2_INSTANCE_TERMINATING":
                        continue
                    now = time.time()
                    made.append({
                        "instance": instance, "group": g.name, "hook": h.name,
                        "token": str(uuid.uuid4()), "state": "Terminating:Wait",
                        "result": None, "heartbeats": 0, "timedOut": False,
                        "timeout": float(h.heartbeat_timeout), "defaultResult": h.default_result,
                        "globalTimeout": float(min(100 * h.heartbeat_timeout, h.global_timeout)),
                        "since": now, "lastHeartbeat": now,
                    })
            with self.lock:
                self.actions.extend(made)
            return as_json(start_response, made)
        return as_json(start_response, {"error": "unknown shim path"}, "404 Not Found")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    app = Shim(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", args.port, app, threaded=True)
    print("PORT %d" % server.server_port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
