//! The MockupDB peer's users, SCRAM-SHA-256 and authorization
//! (`tests/peers/mongo_peer.py --auth`), checked with the real `mongodb`
//! driver: the peer must let the right password in and keep everything else
//! out, like a mongod with `security.authorization: enabled`.

mod common;

use std::time::Duration;

use common::{MongoPeer, PYTHON, PeerOptions};
use mongodb::bson::{Document, doc};
use mongodb::error::ErrorKind;
use mongodb::options::{AuthMechanism, ClientOptions, Credential};
use mongodb::{Client, error::Error};

/// Every character a password file or a prompt may hand over, taken
/// literally: `@ : / ? # %`, a backslash, a space, quotes, non-ASCII and a
/// backslash followed by `n`.
const HOSTILE: &str = r#"p@ss:/?#%\\ "x" ünï\ncode"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn auth_peer() -> MongoPeer {
    MongoPeer::start(PeerOptions {
        auth: true,
        ..Default::default()
    })
}

/// A driver client for the peer, logging in as `user` (SCRAM-SHA-256 on
/// admin, or the mechanism the server offers when `mechanism` is None).
async fn client(
    peer: &MongoPeer,
    login: Option<(&str, &str)>,
    mechanism: Option<AuthMechanism>,
) -> Client {
    let mut opts = ClientOptions::parse(peer.uri()).await.unwrap();
    opts.server_selection_timeout = Some(Duration::from_secs(5));
    opts.connect_timeout = Some(Duration::from_secs(5));
    opts.direct_connection = Some(true);
    if let Some((user, pwd)) = login {
        opts.credential = Some(
            Credential::builder()
                .username(user.to_string())
                .password(pwd.to_string())
                .source("admin".to_string())
                .mechanism(mechanism)
                .build(),
        );
    }
    Client::with_options(opts).unwrap()
}

async fn admin(client: &Client, command: Document) -> Result<Document, Error> {
    client.database("admin").run_command(command).await
}

/// The server's code and codeName behind a driver error (a failed login
/// wraps the server's answer as its source).
fn server_code(e: &Error) -> Option<(i32, String, String)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let me = err
            .downcast_ref::<Error>()
            .or_else(|| err.downcast_ref::<Box<Error>>().map(|b| &**b));
        if let Some(me) = me {
            if let ErrorKind::Command(c) = me.kind.as_ref() {
                return Some((c.code, c.code_name.clone(), c.message.clone()));
            }
        }
        cur = err.source();
    }
    None
}

fn assert_auth_failed(e: &Error) {
    assert!(
        matches!(e.kind.as_ref(), ErrorKind::Authentication { .. }),
        "not an authentication error: {e}"
    );
    let (code, name, msg) = server_code(e).unwrap_or_else(|| panic!("no server code in {e}"));
    assert_eq!(
        (code, name.as_str(), msg.as_str()),
        (18, "AuthenticationFailed", "Authentication failed."),
        "{e}"
    );
}

fn assert_unauthorized(e: &Error, command: &str) {
    let (code, name, msg) = server_code(e).unwrap_or_else(|| panic!("no server code in {e}"));
    assert_eq!(code, 13, "{e}");
    assert_eq!(name, "Unauthorized", "{e}");
    assert_eq!(msg, format!("Command {command} requires authentication"));
}

fn authenticated_users(status: &Document) -> Vec<(String, String)> {
    status
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUsers")
        .unwrap()
        .iter()
        .map(|u| {
            let u = u.as_document().unwrap();
            (
                u.get_str("user").unwrap().to_string(),
                u.get_str("db").unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_right_password_logs_in_and_only_that_connection_is_authenticated() {
    let mut peer = auth_peer();
    peer.add_user("ams", "s3cret", &["SCRAM-SHA-256"]);
    rt().block_on(async {
        let c = client(
            &peer,
            Some(("ams", "s3cret")),
            Some(AuthMechanism::ScramSha256),
        )
        .await;
        admin(&c, doc! { "ping": 1 }).await.unwrap();
        let status = admin(&c, doc! { "connectionStatus": 1 }).await.unwrap();
        assert_eq!(
            authenticated_users(&status),
            vec![("ams".to_string(), "admin".to_string())]
        );
        let roles = status
            .get_document("authInfo")
            .unwrap()
            .get_array("authenticatedUserRoles")
            .unwrap();
        assert_eq!(roles.len(), 1);
        assert_eq!(
            roles[0].as_document().unwrap(),
            &doc! { "role": "root", "db": "admin" }
        );
        // Authorized: listDatabases is answered on the logged-in client...
        let dbs = admin(&c, doc! { "listDatabases": 1 }).await.unwrap();
        let first = dbs.get_array("databases").unwrap()[0]
            .as_document()
            .unwrap();
        assert_eq!(first.get_str("name").unwrap(), "admin");
        // ...and refused on a client that never logged in.
        let anon = client(&peer, None, None).await;
        let e = admin(&anon, doc! { "listDatabases": 1 }).await.unwrap_err();
        assert_unauthorized(&e, "listDatabases");
        let status = admin(&anon, doc! { "connectionStatus": 1 }).await.unwrap();
        assert!(authenticated_users(&status).is_empty(), "{status}");
    });
    // The login really went through SCRAM-SHA-256, proof and all.
    let starts = peer.named("saslStart");
    assert!(!starts.is_empty(), "{:?}", peer.commands());
    assert!(
        starts
            .iter()
            .all(|c| c["doc"]["mechanism"] == "SCRAM-SHA-256"),
        "{starts:?}"
    );
    assert!(!peer.named("saslContinue").is_empty());
}

#[test]
fn the_mechanism_is_negotiated_from_the_users_mechanisms() {
    let mut peer = auth_peer();
    peer.add_user("ams", "s3cret", &[]);
    rt().block_on(async {
        let c = client(&peer, Some(("ams", "s3cret")), None).await;
        let status = admin(&c, doc! { "connectionStatus": 1 }).await.unwrap();
        assert_eq!(authenticated_users(&status).len(), 1, "{status}");
    });
    let asked = peer
        .commands()
        .into_iter()
        .filter(|c| c["doc"]["saslSupportedMechs"] == "admin.ams")
        .count();
    assert!(asked > 0, "the driver never asked for the mechanisms");
    assert!(
        peer.named("saslStart")
            .iter()
            .all(|c| c["doc"]["mechanism"] == "SCRAM-SHA-256")
    );
}

#[test]
fn a_wrong_password_is_refused_with_code_18() {
    let mut peer = auth_peer();
    peer.add_user("ams", "s3cret", &["SCRAM-SHA-256"]);
    rt().block_on(async {
        for wrong in ["s3cret ", "S3cret", "", "s3cre"] {
            let c = client(
                &peer,
                Some(("ams", wrong)),
                Some(AuthMechanism::ScramSha256),
            )
            .await;
            let e = admin(&c, doc! { "ping": 1 }).await.unwrap_err();
            assert_auth_failed(&e);
        }
    });
    // The peer refused at the proof: the conversation got that far.
    assert!(!peer.named("saslContinue").is_empty());
}

#[test]
fn an_unknown_user_is_refused_with_code_18() {
    let mut peer = auth_peer();
    peer.add_user("ams", "s3cret", &["SCRAM-SHA-256"]);
    rt().block_on(async {
        for login in [("nobody", "s3cret"), ("AMS", "s3cret"), ("ams ", "s3cret")] {
            let c = client(&peer, Some(login), Some(AuthMechanism::ScramSha256)).await;
            let e = admin(&c, doc! { "ping": 1 }).await.unwrap_err();
            assert_auth_failed(&e);
        }
        // The server offers no mechanism for an unknown user (as mongod):
        // the driver falls back to SCRAM-SHA-1, which fails too.
        let c = client(&peer, Some(("nobody", "s3cret")), None).await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
    });
}

#[test]
fn a_scram_sha_1_only_user_cannot_log_in_with_sha_256() {
    let mut peer = auth_peer();
    peer.add_user("old", "s3cret", &["SCRAM-SHA-1"]);
    rt().block_on(async {
        let c = client(
            &peer,
            Some(("old", "s3cret")),
            Some(AuthMechanism::ScramSha256),
        )
        .await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
        let c = client(
            &peer,
            Some(("old", "s3cret")),
            Some(AuthMechanism::ScramSha1),
        )
        .await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
        let c = client(&peer, Some(("old", "s3cret")), None).await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
    });
}

#[test]
fn without_a_login_only_the_handshake_commands_run_under_auth() {
    let mut peer = auth_peer();
    rt().block_on(async {
        let anon = client(&peer, None, None).await;
        admin(&anon, doc! { "ping": 1 }).await.unwrap();
        admin(&anon, doc! { "buildInfo": 1 }).await.unwrap();
        admin(&anon, doc! { "connectionStatus": 1 }).await.unwrap();
        for command in ["listDatabases", "usersInfo"] {
            let e = admin(&anon, doc! { command: 1 }).await.unwrap_err();
            assert_unauthorized(&e, command);
        }
        let e = anon
            .database("ams_agent")
            .run_command(doc! { "find": "nodes" })
            .await
            .unwrap_err();
        assert_unauthorized(&e, "find");
    });
    // `auth off` opens everything again, `auth on` closes it.
    peer.set_auth(false);
    rt().block_on(async {
        let anon = client(&peer, None, None).await;
        admin(&anon, doc! { "listDatabases": 1 }).await.unwrap();
    });
    peer.set_auth(true);
    rt().block_on(async {
        let anon = client(&peer, None, None).await;
        let e = admin(&anon, doc! { "listDatabases": 1 }).await.unwrap_err();
        assert_unauthorized(&e, "listDatabases");
    });
}

#[test]
fn without_auth_everything_is_allowed_as_before() {
    let peer = MongoPeer::start(PeerOptions::default());
    rt().block_on(async {
        let anon = client(&peer, None, None).await;
        let dbs = admin(&anon, doc! { "listDatabases": 1 }).await.unwrap();
        assert!(dbs.get_array("databases").is_ok(), "{dbs}");
        // No user: every login fails, as it always did.
        let c = client(&peer, Some(("ams", "s3cret")), None).await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
    });
}

#[test]
fn the_localhost_exception_creates_the_first_user_once() {
    let peer = auth_peer();
    rt().block_on(async {
        let anon = client(&peer, None, None).await;
        admin(
            &anon,
            doc! {
                "createUser": "admin",
                "pwd": HOSTILE,
                "roles": [{ "role": "root", "db": "admin" }],
                "mechanisms": ["SCRAM-SHA-256"],
            },
        )
        .await
        .unwrap();
        // The exception is closed now, on this connection and any other.
        let e = admin(
            &anon,
            doc! { "createUser": "second", "pwd": "x", "roles": [{ "role": "root", "db": "admin" }] },
        )
        .await
        .unwrap_err();
        assert_unauthorized(&e, "createUser");
        let other = client(&peer, None, None).await;
        let e = admin(
            &other,
            doc! { "createUser": "third", "pwd": "x", "roles": [] },
        )
        .await
        .unwrap_err();
        assert_unauthorized(&e, "createUser");

        // The user it created logs in and is what mongod would list.
        let root = client(&peer, Some(("admin", HOSTILE)), Some(AuthMechanism::ScramSha256)).await;
        let status = admin(&root, doc! { "connectionStatus": 1 }).await.unwrap();
        assert_eq!(
            authenticated_users(&status),
            vec![("admin".to_string(), "admin".to_string())]
        );
        let info = admin(&root, doc! { "usersInfo": "admin" }).await.unwrap();
        let users = info.get_array("users").unwrap();
        assert_eq!(users.len(), 1, "{info}");
        let u = users[0].as_document().unwrap();
        assert_eq!(u.get_str("_id").unwrap(), "admin.admin");
        assert_eq!(
            u.get_array("mechanisms").unwrap(),
            &vec![mongodb::bson::Bson::from("SCRAM-SHA-256")]
        );
        assert_eq!(
            u.get_array("roles").unwrap()[0].as_document().unwrap(),
            &doc! { "role": "root", "db": "admin" }
        );
        // Creating it again, now authorized, is mongod's 51003.
        let e = admin(
            &root,
            doc! { "createUser": "admin", "pwd": "x", "roles": [] },
        )
        .await
        .unwrap_err();
        let (code, name, msg) = server_code(&e).unwrap();
        assert_eq!(
            (code, name.as_str(), msg.as_str()),
            (51003, "Location51003", "User \"admin@admin\" already exists")
        );
        // The wrong password still fails for the user the exception made.
        let wrong = client(&peer, Some(("admin", "admin")), Some(AuthMechanism::ScramSha256)).await;
        assert_auth_failed(&admin(&wrong, doc! { "ping": 1 }).await.unwrap_err());
    });
    // What went over the wire: createUser with the password, twice refused.
    assert_eq!(peer.named("createUser").len(), 4);
}

#[test]
fn a_hostile_password_round_trips_through_add_user() {
    let mut peer = auth_peer();
    peer.add_user("ams", HOSTILE, &["SCRAM-SHA-256"]);
    rt().block_on(async {
        let c = client(
            &peer,
            Some(("ams", HOSTILE)),
            Some(AuthMechanism::ScramSha256),
        )
        .await;
        let status = admin(&c, doc! { "connectionStatus": 1 }).await.unwrap();
        assert_eq!(authenticated_users(&status).len(), 1, "{status}");
        // The same characters, one different: refused.
        let near = HOSTILE.replace('ï', "i");
        let c = client(
            &peer,
            Some(("ams", &near)),
            Some(AuthMechanism::ScramSha256),
        )
        .await;
        assert_auth_failed(&admin(&c, doc! { "ping": 1 }).await.unwrap_err());
    });
}

#[test]
fn a_password_sasl_prep_refuses_is_refused_by_create_user() {
    // A real newline: SASLprep prohibits control characters, so mongod
    // refuses to make SCRAM-SHA-256 credentials from it (and drivers refuse
    // to log in with it).
    let peer = MongoPeer::start(PeerOptions::default());
    rt().block_on(async {
        let c = client(&peer, None, None).await;
        let e = admin(
            &c,
            doc! { "createUser": "ams", "pwd": "p@ss:/?#%\\ \"x\" ünï\ncode", "roles": [] },
        )
        .await
        .unwrap_err();
        let (code, name, msg) = server_code(&e).unwrap();
        assert_eq!(
            (code, name.as_str(), msg.as_str()),
            (2, "BadValue", "Unable to normalize input string")
        );
    });
}

/// A SCRAM-SHA-256 client of its own (Python, raw OP_MSG), for what the
/// driver never does: the classic end of the conversation, an empty
/// saslContinue after the server signature, without skipEmptyExchange.
const CLASSIC_CLIENT: &str = r#"
import base64, hashlib, hmac, json, os, socket, struct, sys
import bson
from bson.binary import Binary
port, user, pwd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b
def cmd(doc, rid=[0]):
    rid[0] += 1
    body = struct.pack("<I", 0) + b"\0" + bson.encode(doc)
    s.sendall(struct.pack("<iiii", 16 + len(body), rid[0], 0, 2013) + body)
    n = struct.unpack("<i", recvn(16)[:4])[0]
    return bson.decode(recvn(n - 16)[5:])
H = lambda k, m: hmac.new(k, m, hashlib.sha256).digest()
cmd({"hello": 1, "$db": "admin"})
nonce = base64.b64encode(os.urandom(24)).decode()
bare = "n=%s,r=%s" % (user, nonce)
r1 = cmd({"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": Binary(("n,," + bare).encode()), "$db": "admin"})
assert r1["ok"] == 1 and not r1["done"], r1
first = r1["payload"].decode()
a = dict(kv.split("=", 1) for kv in first.split(","))
assert a["r"].startswith(nonce) and int(a["i"]) == 15000, first
salted = hashlib.pbkdf2_hmac("sha256", pwd.encode(), base64.b64decode(a["s"]), int(a["i"]))
ck = H(salted, b"Client Key")
head = "c=biws,r=" + a["r"]
msg = (bare + "," + first + "," + head).encode()
proof = bytes(x ^ y for x, y in zip(ck, H(hashlib.sha256(ck).digest(), msg)))
r2 = cmd({"saslContinue": 1, "conversationId": r1["conversationId"], "payload": Binary((head + ",p=" + base64.b64encode(proof).decode()).encode()), "$db": "admin"})
assert r2["ok"] == 1 and not r2["done"], r2
assert r2["payload"].decode() == "v=" + base64.b64encode(H(H(salted, b"Server Key"), msg)).decode(), r2
early = cmd({"listDatabases": 1, "$db": "admin"})
r3 = cmd({"saslContinue": 1, "conversationId": r1["conversationId"], "payload": Binary(b""), "$db": "admin"})
assert r3["ok"] == 1 and r3["done"], r3
status = cmd({"connectionStatus": 1, "$db": "admin"})
print(json.dumps({"early": early.get("code"), "users": status["authInfo"]["authenticatedUsers"]}))
"#;

#[test]
fn the_classic_empty_exchange_is_honoured() {
    let mut peer = auth_peer();
    peer.add_user("classic", "classic-pw", &["SCRAM-SHA-256"]);
    let out = std::process::Command::new(PYTHON)
        .arg("-c")
        .arg(CLASSIC_CLIENT)
        .arg(peer.port.to_string())
        .arg("classic")
        .arg("classic-pw")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    // Not authenticated before the empty exchange ends the conversation...
    assert_eq!(answer["early"], 13, "{answer}");
    // ...authenticated after it.
    assert_eq!(
        answer["users"],
        serde_json::json!([{"user": "classic", "db": "admin"}])
    );
    assert_eq!(peer.named("saslContinue").len(), 2);
}

#[test]
#[should_panic(expected = "Unable to normalize input string")]
fn add_user_panics_on_a_password_sasl_prep_refuses() {
    let mut peer = auth_peer();
    peer.add_user("ams", "line one\nline two", &[]);
}
