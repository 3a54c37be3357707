//! AWS calls with the instance role against moto in server mode (IAM
//! enforced), the credentials handed out by the IMDS peer: SSM
//! SecureString reads (decrypted), a bad signature, a refused session token
//! and a missing permission refused for real, and the Auto Scaling
//! lifecycle calls as our shim answers them the way AWS documents them.

mod common;

use std::sync::Arc;

use ams_agent::cloud::aws::{Aws, ErrorKind};
use ams_agent::node::imds::{Budget, Imds};
use common::Imds as ImdsServer;
use common::aws::{AwsPeer, give_role};
use serde_json::json;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(imds: &ImdsServer, peer: &AwsPeer) -> Aws {
    let imds = Arc::new(Imds::new(&imds.url, Budget::default()).unwrap());
    rt().block_on(Aws::new(imds, Some(peer.url()))).unwrap()
}

#[test]
fn ssm_secure_strings_are_read_decrypted_with_the_instance_role_and_refusals_are_real() {
    let Some(peer) = AwsPeer::start() else { return };
    let setup = peer.setup(json!({
        "roles": {
            "ams-node": ["ssm:GetParameter"],
            "no-ssm": ["autoscaling:DescribeAutoScalingInstances"],
        },
        "parameters": { "/ams/mongo-password": "p@ss:w/rd?#%\\ \"x\"" },
    }));
    peer.enforce_iam();
    let imds = ImdsServer::start("i-0aws000000000001", "10.0.1.30");
    give_role(&imds, &setup, "ams-node", "i-0aws000000000001");
    let aws = client(&imds, &peer);
    assert_eq!(aws.region(), "eu-west-1");
    let rt = rt();
    let v = rt
        .block_on(aws.ssm_parameter("/ams/mongo-password"))
        .unwrap();
    // Decrypted (without WithDecryption moto answers kms:alias/aws/ssm:<value>).
    assert_eq!(v.expose(), "p@ss:w/rd?#%\\ \"x\"");
    let e = rt.block_on(aws.ssm_parameter("/ams/nope")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");

    // A missing permission: refused by moto's IAM, named.
    give_role(&imds, &setup, "no-ssm", "i-0aws000000000001");
    let aws = client(&imds, &peer);
    let e = rt
        .block_on(aws.ssm_parameter("/ams/mongo-password"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Denied, "{e}");
    assert!(e.message.contains("AccessDenied"), "{e}");

    // A wrong secret: the signature does not match.
    let c = &setup["credentials"]["ams-node"];
    imds.set_role(
        "ams-node",
        c["AccessKeyId"].as_str().unwrap(),
        "not-the-secret",
        c["SessionToken"].as_str().unwrap(),
        3600,
    );
    let aws = client(&imds, &peer);
    let e = rt
        .block_on(aws.ssm_parameter("/ams/mongo-password"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");
    assert!(e.message.contains("SignatureDoesNotMatch"), "{e}");

    // Another session's token with these keys: refused.
    let other = &setup["credentials"]["no-ssm"];
    imds.set_role(
        "ams-node",
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
        other["SessionToken"].as_str().unwrap(),
        3600,
    );
    let aws = client(&imds, &peer);
    let e = rt
        .block_on(aws.ssm_parameter("/ams/mongo-password"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Credentials, "{e}");

    // No secret ever in a message.
    let m = &e.message;
    assert!(!m.contains(c["SecretAccessKey"].as_str().unwrap()), "{m}");
    assert!(!m.contains("p@ss"), "{m}");
}

#[test]
fn credentials_close_to_expiry_are_fetched_again() {
    let Some(peer) = AwsPeer::start() else { return };
    let setup = peer.setup(json!({
        "roles": { "ams-node": ["ssm:GetParameter"] },
        "parameters": { "/p": "v" },
    }));
    peer.enforce_iam();
    let imds = ImdsServer::start("i-0aws000000000002", "10.0.1.31");
    give_role(&imds, &setup, "ams-node", "i-0aws000000000002");
    // Valid for 5 more minutes only: within the 10-minute refresh margin.
    let c = &setup["credentials"]["ams-node"];
    imds.set_role(
        "ams-node",
        c["AccessKeyId"].as_str().unwrap(),
        c["SecretAccessKey"].as_str().unwrap(),
        c["SessionToken"].as_str().unwrap(),
        300,
    );
    let aws = client(&imds, &peer);
    let rt = rt();
    for _ in 0..3 {
        rt.block_on(aws.ssm_parameter("/p")).unwrap();
    }
    assert_eq!(imds.reads_of("iam/security-credentials/ams-node"), 3);
    // Valid for an hour: read once, then cached.
    give_role(&imds, &setup, "ams-node", "i-0aws000000000002");
    let aws = client(&imds, &peer);
    for _ in 0..3 {
        rt.block_on(aws.ssm_parameter("/p")).unwrap();
    }
    assert_eq!(imds.reads_of("iam/security-credentials/ams-node"), 4);
}

#[test]
fn lifecycle_calls_are_answered_as_aws_documents_them() {
    let Some(peer) = AwsPeer::start() else { return };
    let setup = peer.setup(json!({
        "roles": {
            "ams-node": ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLifecycleHooks",
                         "autoscaling:RecordLifecycleActionHeartbeat", "autoscaling:CompleteLifecycleAction"],
            "describe-only": ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeLifecycleHooks"],
        },
        "group": { "name": "ams-edge", "hook": "ams-drain", "heartbeatTimeout": 30, "defaultResult": "ABANDON" },
    }));
    let instance = setup["instance"].as_str().unwrap().to_string();
    peer.enforce_iam();
    let imds = ImdsServer::start(&instance, "10.0.1.32");
    give_role(&imds, &setup, "ams-node", &instance);
    let aws = client(&imds, &peer);
    let rt = rt();
    assert_eq!(
        rt.block_on(aws.autoscaling_group_of(&instance))
            .unwrap()
            .as_deref(),
        Some("ams-edge")
    );
    let hooks = rt.block_on(aws.lifecycle_hooks("ams-edge")).unwrap();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0].name, "ams-drain");
    assert_eq!(hooks[0].transition, "autoscaling:EC2_INSTANCE_TERMINATING");
    assert_eq!(
        hooks[0].heartbeat_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    // Not waiting yet: no active action.
    let e = rt
        .block_on(aws.lifecycle_heartbeat("ams-edge", "ams-drain", &instance))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    peer.terminate(&instance);
    rt.block_on(aws.lifecycle_heartbeat("ams-edge", "ams-drain", &instance))
        .unwrap();
    // Without the permission: refused by moto's IAM code, in the shim too.
    give_role(&imds, &setup, "describe-only", &instance);
    let denied = client(&imds, &peer);
    let e = rt
        .block_on(denied.complete_lifecycle_action("ams-edge", "ams-drain", &instance, "CONTINUE"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Denied, "{e}");
    rt.block_on(aws.complete_lifecycle_action("ams-edge", "ams-drain", &instance, "CONTINUE"))
        .unwrap();
    let a = &peer.actions()["actions"][0];
    assert_eq!(a["state"], "Terminating:Proceed");
    assert_eq!(a["result"], "CONTINUE");
    assert_eq!(a["heartbeats"], 1);
    assert_eq!(a["timedOut"], false);
    // Done: nothing active any more.
    let e = rt
        .block_on(aws.complete_lifecycle_action("ams-edge", "ams-drain", &instance, "CONTINUE"))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}
