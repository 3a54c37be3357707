//! `--mongo-user` without a password: asked for on a terminal (no echo, the
//! echo restored even when Ctrl-C interrupts), refused at once without one.

mod common;
mod fixture;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::pty::OnTerminal;
use fixture::{AMS, Tree, error_line, stderr};

const SWITCH: &[&str] = &[
    "mode",
    "cluster",
    "10.0.1.5",
    "--mongo-user",
    "ams",
    "--ip",
    "10.0.1.20",
    "--no-restart",
    "--skip-db-check",
];

#[test]
fn without_a_terminal_a_user_without_password_is_refused_at_once() {
    let t = Tree::new();
    let before = t.snapshot();
    for args in [
        SWITCH.to_vec(),
        vec!["join", "--mongo", "10.0.1.5", "--mongo-user", "ams"],
        vec!["status", "--mongo", "mongo.internal", "--mongo-user", "ams"],
        vec!["leave", "--mongo", "mongo.internal", "--mongo-user", "ams"],
    ] {
        let start = Instant::now();
        let out = t.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(start.elapsed() < Duration::from_secs(5), "{args:?}");
        let line = error_line(&out);
        assert_eq!(
            line,
            "error: --mongo-user ams has no password: pass --mongo-password-file <FILE> or set AMS_AGENT_MONGO_PASSWORD (no terminal to ask on)",
            "{args:?}"
        );
        assert_eq!(t.snapshot(), before, "{args:?} changed the host");
    }
}

#[test]
fn bad_input_is_reported_before_the_password_is_asked_for() {
    let t = Tree::new();
    let mut term = OnTerminal::start(t.command(&[
        "mode",
        "cluster",
        "10.0.1.5",
        "--mongo-user",
        "ams",
        "--ams-home",
        "/nowhere",
    ]));
    let status = term.wait();
    assert_eq!(status.code(), Some(2), "{}", term.screen());
    assert!(term.screen().contains("--ams-home"), "{}", term.screen());
    assert!(!term.screen().contains("password for"), "{}", term.screen());
}

#[test]
fn a_mechanism_without_password_needs_none() {
    let t = Tree::new();
    let out = t.run(&[
        "mode",
        "cluster",
        "mongodb://10.0.1.5:27017/?tls=true&authMechanism=MONGODB-X509",
        "--mongo-user",
        "CN=node7,OU=ams",
        "--ip",
        "10.0.1.20",
        "--no-restart",
        "--skip-db-check",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let props = t.read(&format!("{AMS}/conf/red5.properties"));
    assert!(
        props.contains(
            "\nclusterdb.host=mongodb://CN%3Dnode7%2COU%3Dams@10.0.1.5:27017/?tls=true&authMechanism=MONGODB-X509\n"
        ),
        "{props}"
    );
}

#[test]
fn on_a_terminal_the_password_is_asked_for_without_echo() {
    let t = Tree::new();
    let mut term = OnTerminal::start(t.command(SWITCH));
    term.wait_for_text("MongoDB password for ams: ");
    assert!(!term.echo_is_on(), "echo is on while asking");
    term.type_text("p@ss:w/rd\\ü\n");
    let status = term.wait();
    assert!(status.success(), "{}", term.screen());
    assert!(term.echo_is_on(), "echo not restored");
    let screen = term.screen();
    assert!(!screen.contains("p@ss"), "password echoed: {screen}");
    let props = t.read(&format!("{AMS}/conf/red5.properties"));
    let line = props
        .lines()
        .find(|l| l.starts_with("clusterdb.host="))
        .unwrap();
    assert!(
        line.contains("ams:p%40ss%3Aw%2Frd%5C%C3%BC@10.0.1.5"),
        "{line}"
    );
}

#[test]
fn ctrl_c_at_the_prompt_restores_the_echo_and_changes_nothing() {
    let t = Tree::new();
    let before = t.snapshot();
    let mut term = OnTerminal::start(t.command(SWITCH));
    term.wait_for_text("MongoDB password for ams: ");
    assert!(!term.echo_is_on());
    term.type_text("\u{3}");
    let status = term.wait();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{}", term.screen());
    assert!(term.echo_is_on(), "Ctrl-C left the terminal without echo");
    assert_eq!(t.snapshot(), before);
}
