//! Nginx: the two sections of `nginx.conf` the agent owns, rendered from
//! the model. OSS Nginx has no runtime API, so every membership change is
//! a reload (debounced by the follower).
//!
//! Measured on Nginx 1.22 (Debian 12), which this follows:
//! - `stream {}` (RTMP, SRT) and `worker_shutdown_timeout` belong to the
//!   main context, not to `conf.d/` (inside `http {}`): one section sits at
//!   the top level of the file, the other inside `http {}`; `stream` needs
//!   `libnginx-mod-stream`;
//! - `least_conn` without a `zone` balances per worker: every upstream has
//!   a zone;
//! - there is no sticky cookie in OSS Nginx: persistence by node id is a
//!   `map` from the cookie to the node's address, and the cookie is set
//!   from `$upstream_addr`;
//! - an empty group renders a placeholder server marked `down`, so the
//!   file stays valid and the answer is a plain 502.

use std::fmt::Write as _;
use std::net::SocketAddr;

use super::blocks::{self, Markers};
use super::model::{Listener, Member, Membership, NodeId, Settings, secs, socket};
use crate::node::Role;

pub const MAIN: Markers = Markers {
    begin: "# BEGIN ams-agent lb (main)",
    end: "# END ams-agent lb (main)",
};
pub const HTTP: Markers = Markers {
    begin: "# BEGIN ams-agent lb (http)",
    end: "# END ams-agent lb (http)",
};

const NOTE: &str =
    ": rendered by `ams-agent lb nginx` from the node registry; edits inside are overwritten";

fn zone(n: usize) -> String {
    format!("{}k", (64 + n * 2).div_ceil(16) * 16)
}

fn upstream(o: &mut String, indent: &str, name: &str, members: &[Member], port: u16, what: &str) {
    let _ = writeln!(o, "{indent}upstream {name} {{");
    let _ = writeln!(o, "{indent}    zone {name} {};", zone(members.len()));
    let _ = writeln!(o, "{indent}    least_conn;");
    if members.is_empty() {
        let _ = writeln!(
            o,
            "{indent}    server 127.0.0.1:1 down; # empty: no {what} in rotation (answers 502)"
        );
    }
    for m in members {
        let _ = writeln!(
            o,
            "{indent}    server {} max_fails=1 fail_timeout=5s; # node {}",
            socket(m.addr, port),
            m.id
        );
    }
    let _ = writeln!(o, "{indent}}}");
}

fn listen_line(o: &mut String, indent: &str, b: super::model::Bind, extra: &str) {
    let at = match b.addr {
        None => b.port.to_string(),
        Some(a) => socket(a, b.port),
    };
    let _ = writeln!(o, "{indent}listen {at}{extra};");
}

/// Only members taking new clients: Nginx has no drain state.
fn ready(m: &Membership) -> Membership {
    let keep = |v: &[Member]| -> Vec<Member> {
        v.iter()
            .filter(|x| x.state == super::model::MemberState::Ready)
            .cloned()
            .collect()
    };
    Membership {
        origin: keep(&m.origin),
        edge: keep(&m.edge),
    }
}

/// The top-level section: the old workers' deadline, RTMP and SRT.
pub fn render_main(s: &Settings, m: &Membership) -> String {
    let m = &ready(m);
    let mut o = String::new();
    let _ = writeln!(o, "{}{NOTE}", MAIN.begin);
    if let Some(tls) = &s.tls {
        // A renewed certificate changes this line, so Nginx reloads it.
        let _ = writeln!(
            o,
            "# certificate {} ({})",
            tls.pem.display(),
            crate::human::escape(&tls.digest)
        );
    }
    let _ = writeln!(o, "worker_shutdown_timeout {};", secs(s.hard_stop_after));
    let (rtmp, srt) = (s.bind(Listener::Rtmp), s.bind(Listener::Srt));
    if rtmp.is_some() || srt.is_some() {
        o.push_str("stream {\n");
        if let Some(b) = rtmp {
            upstream(
                &mut o,
                "    ",
                "ams_rtmp",
                &m.origin,
                s.ports.rtmp,
                "origin",
            );
            o.push_str("    server {\n");
            listen_line(&mut o, "        ", b, "");
            let _ = write!(
                o,
                "        proxy_pass ams_rtmp;\n        proxy_connect_timeout 5s;\n        proxy_timeout {};\n    }}\n",
                secs(s.tunnel_timeout)
            );
        }
        if let Some(b) = srt {
            upstream(&mut o, "    ", "ams_srt", &m.origin, s.ports.srt, "origin");
            o.push_str("    server {\n");
            listen_line(&mut o, "        ", b, " udp");
            o.push_str("        proxy_pass ams_srt;\n        proxy_timeout 60s;\n    }\n");
        }
        o.push_str("}\n");
    }
    let _ = writeln!(o, "{}", MAIN.end);
    o
}

fn sticky_map(
    o: &mut String,
    cookie: &str,
    var: &str,
    upstream: &str,
    members: &[Member],
    port: u16,
) {
    let _ = writeln!(
        o,
        "    map $cookie_{cookie} ${var} {{\n        default {upstream};"
    );
    for m in members {
        let _ = writeln!(o, "        \"{}\" {};", m.id, socket(m.addr, port));
    }
    o.push_str("    }\n");
}

fn location(o: &mut String, pick: &str, cookie_var: &str, s: &Settings) {
    let t = secs(s.tunnel_timeout);
    let _ = write!(
        o,
        "        location / {{\n            proxy_pass http://${pick};\n            \
         proxy_http_version 1.1;\n            proxy_set_header Host $host;\n            \
         proxy_set_header Upgrade $http_upgrade;\n            \
         proxy_set_header Connection $ams_connection_upgrade;\n            \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n            \
         proxy_set_header X-Forwarded-Proto $scheme;\n            \
         proxy_read_timeout {t};\n            proxy_send_timeout {t};\n            \
         proxy_buffering off;\n            client_max_body_size 0;\n            \
         add_header Set-Cookie ${cookie_var} always;\n        }}\n"
    );
}

/// The section inside `http {}`: upstreams, persistence maps, servers.
pub fn render_http(s: &Settings, m: &Membership) -> String {
    let m = &ready(m);
    let mut o = String::new();
    let _ = writeln!(o, "    {}{NOTE}", HTTP.begin);
    let port = s.ports.http;
    let mut all: Vec<Member> = m.origin.iter().chain(&m.edge).cloned().collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    upstream(&mut o, "    ", "ams_origin", &m.origin, port, "origin");
    upstream(&mut o, "    ", "ams_edge", &m.edge, port, "edge");
    upstream(&mut o, "    ", "ams_dashboard", &all, port, "node");
    o.push_str("    map $http_upgrade $ams_connection_upgrade {\n        default upgrade;\n        \"\" close;\n    }\n");
    sticky_map(
        &mut o,
        "AMS_ORIGIN",
        "ams_origin_pick",
        "ams_origin",
        &m.origin,
        port,
    );
    sticky_map(
        &mut o,
        "AMS_EDGE",
        "ams_edge_pick",
        "ams_edge",
        &m.edge,
        port,
    );
    sticky_map(
        &mut o,
        "AMS_DASHBOARD",
        "ams_dashboard_pick",
        "ams_dashboard",
        &all,
        port,
    );
    // `?target=` only ever picks one of the two groups: never an address
    // from the request.
    o.push_str("    map $arg_target $ams_publish_pick {\n        default $ams_origin_pick;\n        edge $ams_edge_pick;\n    }\n");
    o.push_str("    map $arg_target $ams_play_pick {\n        default $ams_edge_pick;\n        origin $ams_origin_pick;\n    }\n");
    o.push_str("    map $upstream_addr $ams_node_cookie {\n        default \"\";\n");
    for (role, list) in [(Role::Origin, &m.origin), (Role::Edge, &m.edge)] {
        let cookie = if role == Role::Origin {
            "AMS_ORIGIN"
        } else {
            "AMS_EDGE"
        };
        for n in list {
            let _ = writeln!(
                o,
                "        \"{}\" \"{cookie}={}; Path=/; HttpOnly\";",
                socket(n.addr, port),
                n.id
            );
        }
    }
    o.push_str("    }\n    map $upstream_addr $ams_dashboard_cookie {\n        default \"\";\n");
    for n in &all {
        let _ = writeln!(
            o,
            "        \"{}\" \"AMS_DASHBOARD={}; Path=/; HttpOnly\";",
            socket(n.addr, port),
            n.id
        );
    }
    o.push_str("    }\n");
    let tls = s.tls.as_ref().map(|t| {
        format!(
            "        ssl_certificate {0};\n        ssl_certificate_key {0};\n",
            t.pem.display()
        )
    });
    let servers = [
        (
            Listener::Publish,
            "ams_publish_pick",
            "ams_node_cookie",
            false,
        ),
        (
            Listener::PublishTls,
            "ams_publish_pick",
            "ams_node_cookie",
            true,
        ),
        (Listener::Play, "ams_play_pick", "ams_node_cookie", false),
        (Listener::PlayTls, "ams_play_pick", "ams_node_cookie", true),
        (
            Listener::Dashboard,
            "ams_dashboard_pick",
            "ams_dashboard_cookie",
            tls.is_some(),
        ),
    ];
    for (l, pick, cookie, ssl) in servers {
        let Some(b) = s.bind(l) else { continue };
        let _ = writeln!(o, "    server {{ # {}", l.name());
        listen_line(
            &mut o,
            "        ",
            b,
            if ssl {
                " ssl default_server"
            } else {
                " default_server"
            },
        );
        o.push_str("        server_name _;\n");
        if ssl {
            o.push_str(tls.as_deref().unwrap_or_default());
        }
        location(&mut o, pick, cookie, s);
        o.push_str("    }\n");
    }
    let _ = writeln!(o, "    {}", HTTP.end);
    o
}

/// What the scanner knows at a byte of the file.
struct Scan {
    /// (byte, depth before it) of every `{` / `}` outside comments and quotes.
    braces: Vec<(usize, usize, u8)>,
    /// Top-level words followed by `{`: (word, index of the `{`).
    blocks: Vec<(String, usize)>,
}

/// A small tokenizer of Nginx's syntax (comments start a token with `#`,
/// quotes with `\` escapes): enough to find blocks and their depth.
fn scan(text: &[u8]) -> Result<Scan, String> {
    let mut braces = Vec::new();
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let mut words: Vec<String> = Vec::new();
    let mut word = Vec::new();
    let flush = |word: &mut Vec<u8>, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(String::from_utf8_lossy(word).into_owned());
            word.clear();
        }
    };
    while i < text.len() {
        let c = text[i];
        match c {
            b'#' if word.is_empty() => {
                while i < text.len() && text[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' | b'\'' if word.is_empty() => {
                let q = c;
                i += 1;
                while i < text.len() && text[i] != q {
                    if text[i] == b'\\' {
                        i += 1;
                    }
                    word.push(*text.get(i).unwrap_or(&b' '));
                    i += 1;
                }
                if i >= text.len() {
                    return Err("a quoted string is not closed".into());
                }
                word.push(b'"');
                flush(&mut word, &mut words);
            }
            b'{' => {
                flush(&mut word, &mut words);
                if depth == 0 {
                    if let Some(w) = words.first() {
                        blocks.push((w.clone(), i));
                    }
                }
                braces.push((i, depth, c));
                depth += 1;
                words.clear();
            }
            b'}' => {
                flush(&mut word, &mut words);
                if depth == 0 {
                    return Err(format!("an unmatched `}}` at byte {i}"));
                }
                depth -= 1;
                braces.push((i, depth, c));
                words.clear();
            }
            b';' => {
                flush(&mut word, &mut words);
                words.clear();
            }
            c if c.is_ascii_whitespace() => flush(&mut word, &mut words),
            _ => word.push(c),
        }
        i += 1;
    }
    if depth != 0 {
        return Err("a `{` is not closed".into());
    }
    Ok(Scan { braces, blocks })
}

/// The brace depth at byte `pos`.
fn depth_at(s: &Scan, pos: usize) -> usize {
    s.braces
        .iter()
        .take_while(|(i, _, _)| *i < pos)
        .last()
        .map_or(0, |(_, d, c)| if *c == b'{' { d + 1 } else { *d })
}

/// `text` with both sections in place: replaced between their markers, or
/// (first time) the main one appended at the end and the http one put
/// before the closing brace of `http {`.
pub fn install(text: &[u8], main: &str, http: &str) -> Result<Vec<u8>, String> {
    let sc = scan(text)?;
    let http_open = sc
        .blocks
        .iter()
        .filter(|(w, _)| w == "http")
        .collect::<Vec<_>>();
    let [(_, open)] = http_open.as_slice() else {
        return Err(if http_open.is_empty() {
            "it has no `http {` block (the agent's servers go inside it)".into()
        } else {
            "it has more than one top-level `http {` block".into()
        });
    };
    let close = sc
        .braces
        .iter()
        .find(|(i, d, c)| *i > *open && *d == 0 && *c == b'}')
        .map(|(i, _, _)| *i)
        .ok_or("the `http {` block is not closed")?;
    let main_at = blocks::find(text, MAIN)?;
    let http_at = blocks::find(text, HTTP)?;
    if let Some(r) = &main_at {
        if depth_at(&sc, r.start) != 0 {
            return Err(format!(
                "`{}` is inside a block: it belongs at the top level",
                MAIN.begin
            ));
        }
    }
    if let Some(r) = &http_at {
        if !(r.start > *open && r.end <= close) || depth_at(&sc, r.start) != 1 {
            return Err(format!("`{}` is not directly inside `http {{`", HTTP.begin));
        }
    }
    // Edit from the end of the file backwards, so earlier offsets hold.
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    match http_at {
        Some(r) => edits.push((r, http.to_string())),
        None => {
            let line_start = text[..close]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if text[line_start..close].iter().all(u8::is_ascii_whitespace) {
                edits.push((line_start..line_start, http.to_string()));
            } else {
                edits.push((close..close, format!("\n{http}")));
            }
        }
    }
    match main_at {
        Some(r) => edits.push((r, main.to_string())),
        None => {
            let mut block = String::new();
            if !text.is_empty() && !text.ends_with(b"\n") {
                block.push('\n');
            }
            block.push_str(main);
            edits.push((text.len()..text.len(), block));
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = text.to_vec();
    for (r, with) in edits {
        out.splice(r, with.into_bytes());
    }
    Ok(out)
}

/// The members the sections in `text` put in rotation (this module's own
/// format only); None when there are no sections yet or they cannot be
/// read.
pub fn members(text: &[u8]) -> Option<Membership> {
    let r = blocks::find(text, HTTP).ok()??;
    let block = blocks::inner(text, r)?;
    let mut m = Membership::default();
    let mut role = None;
    for line in block.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("upstream ") {
            role = match rest.trim_end_matches(['{', ' ']) {
                "ams_origin" => Some(Role::Origin),
                "ams_edge" => Some(Role::Edge),
                _ => None,
            };
            continue;
        }
        if t == "}" {
            role = None;
            continue;
        }
        let (Some(role), Some(rest)) = (role, t.strip_prefix("server ")) else {
            continue;
        };
        let (decl, note) = rest.split_once('#')?;
        let note: Vec<&str> = note.split_whitespace().collect();
        match note.as_slice() {
            ["empty:", ..] => continue,
            ["node", id] => {
                let addr: SocketAddr = decl.split_whitespace().next()?.parse().ok()?;
                m.group_mut(role).push(Member {
                    id: NodeId::parse(id)?,
                    addr: addr.ip(),
                    state: super::model::MemberState::Ready,
                });
            }
            _ => return None,
        }
    }
    m.sort();
    Some(m)
}

/// A hint for Nginx's most common refusals of the rendered file.
pub fn hint(message: &str) -> Option<&'static str> {
    if message.contains("unknown directive \"stream\"") {
        Some(
            "RTMP and SRT need Nginx's stream module: apt install libnginx-mod-stream (or --listen rtmp=off --listen srt=off)",
        )
    } else if message.contains("duplicate default server") {
        Some(
            "another server is the default on that port; Debian's default site listens on 80 default_server: remove /etc/nginx/sites-enabled/default (or move the listener with --listen)",
        )
    } else if message.contains("\"stream\" directive is duplicate") {
        Some(
            "the file has a stream {} block of its own: Nginx allows one; move its servers into it by hand or turn RTMP and SRT off (--listen rtmp=off --listen srt=off)",
        )
    } else if message.contains("\"worker_shutdown_timeout\" directive is duplicate") {
        Some(
            "the file sets worker_shutdown_timeout itself: remove that line (the agent sets it from --hard-stop-after)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::model::MemberState;

    use crate::lb::model::test_settings as settings;

    fn m() -> Membership {
        Membership {
            origin: vec![Member {
                id: NodeId::parse("i-o1").unwrap(),
                addr: "10.0.1.5".parse().unwrap(),
                state: MemberState::Ready,
            }],
            edge: vec![],
        }
    }

    #[test]
    fn sections_go_in_and_come_back_out() {
        let conf = b"user www-data;\n# a \xe9 comment with { and }\nevents {\n}\nhttp {\n    include mime.types; # {\n    log_format x '{';\n}\n";
        let s = settings();
        let (main, http) = (render_main(&s, &m()), render_http(&s, &m()));
        let out = install(conf, &main, &http).unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("user www-data;\n# a \u{fffd} comment"),
            "{text}"
        );
        assert!(
            text.contains("    log_format x '{';\n    # BEGIN ams-agent lb (http)"),
            "{text}"
        );
        assert!(text.ends_with("}\n\n# BEGIN ams-agent lb (main): rendered by `ams-agent lb nginx` from the node registry; edits inside are overwritten\nworker_shutdown_timeout 3600s;\nstream {\n") || text.contains("# END ams-agent lb (main)\n"), "{text}");
        assert!(
            text.contains("    # END ams-agent lb (http)\n}\n"),
            "{text}"
        );
        assert_eq!(members(&out).unwrap(), m());
        // Again, with another membership: replaced in place, the rest kept.
        let again = install(
            &out,
            &render_main(&s, &Membership::default()),
            &render_http(&s, &Membership::default()),
        )
        .unwrap();
        assert!(again.starts_with(&conf[..40]));
        assert_eq!(members(&again).unwrap(), Membership::default());
        assert!(
            String::from_utf8_lossy(&again)
                .contains("server 127.0.0.1:1 down; # empty: no origin in rotation")
        );
        assert_eq!(install(&again, &main, &http).unwrap(), out);
        // Refused: no http block, markers in the wrong place.
        assert!(install(b"events {}\n", &main, &http).is_err());
        let misplaced = format!("events {{\n{main}}}\nhttp {{\n}}\n");
        assert!(install(misplaced.as_bytes(), &main, &http).is_err());
    }

    #[test]
    fn target_and_cookies_are_allowlists() {
        let text = render_http(&settings(), &m());
        assert!(
            text.contains("proxy_pass http://$ams_publish_pick;"),
            "{text}"
        );
        assert!(!text.contains("$arg_target;"), "{text}");
        assert!(text.contains("        \"i-o1\" 10.0.1.5:5080;\n"), "{text}");
        assert!(
            text.contains("\"10.0.1.5:5080\" \"AMS_ORIGIN=i-o1; Path=/; HttpOnly\";"),
            "{text}"
        );
        assert!(
            text.contains("server 127.0.0.1:1 down; # empty: no edge in rotation (answers 502)")
        );
    }
}
