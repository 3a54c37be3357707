//! The checks of the load balancer: the section `ams-agent lb` owns in
//! HAProxy's `haproxy.cfg` or Nginx's `nginx.conf`, between its marker
//! lines, with one server per node named by node id. The markers and the
//! servers are read with the `lb` module's own readers, so the doctor
//! reads exactly the format the follower writes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::Outcome;
use super::env::Env;
use crate::human::escape;
use crate::lb::blocks::{self, Markers};
use crate::lb::haproxy::{self, Backend};
use crate::lb::model::{MemberState, Membership};
use crate::lb::nginx;
use crate::mongo::alive;
use crate::node::Role;

/// How long `haproxy -c` / `nginx -t` may take (a file with many
/// certificates takes a while to load).
pub const CHECKER_BUDGET: std::time::Duration = std::time::Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Haproxy,
    Nginx,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// A balancer's file with the agent's section(s) in it.
pub struct Balancer {
    pub kind: Kind,
    /// The host path.
    pub file: PathBuf,
    /// The text between the markers (each section).
    pub sections: Vec<String>,
    /// The servers the sections route to, as the `lb` module reads them
    /// back; None when the sections are not in its format (edited by hand).
    pub servers: Option<Vec<Server>>,
}

/// The text between one pair of markers (None when the file has neither;
/// why, when the markers are broken).
fn section(text: &[u8], m: Markers) -> Result<Option<String>, String> {
    match blocks::find(text, m)? {
        None => Ok(None),
        Some(r) => blocks::inner(text, r)
            .map(Some)
            .ok_or_else(|| format!("the section after `{}` is not UTF-8", m.begin)),
    }
}

/// The node servers of a membership, as the checks compare them.
fn servers_of(m: &Membership, draining_kept: bool) -> Vec<Server> {
    let mut out = Vec::new();
    for (role, backend) in [(Role::Origin, Backend::Origin), (Role::Edge, Backend::Edge)] {
        for member in m.group(role) {
            out.push(Server {
                group: backend.name().to_string(),
                id: member.id.as_str().to_string(),
                addr: member.addr,
                draining: draining_kept && member.state == MemberState::Draining,
            });
        }
    }
    out
}

fn read(env: &Env, file: &Path) -> Option<Result<Vec<u8>, String>> {
    match env.host.read_optional(file) {
        Ok(Some(b)) => Some(Ok(b)),
        Ok(None) => None,
        Err(e) => Some(Err(format!("{e:#}"))),
    }
}

/// Every balancer on this host whose file holds the agent's section (a
/// file that cannot be read or has broken markers is returned as an error
/// for lb.config to report).
pub fn balancers(env: &Env) -> Vec<Result<Balancer, (Kind, PathBuf, String)>> {
    let mut out = Vec::new();
    let h = &env.settings.haproxy_config;
    match read(env, h) {
        Some(Ok(text)) => match section(&text, haproxy::MARKERS) {
            Ok(Some(s)) => {
                let servers =
                    haproxy::parse(&s).map(|l| servers_of(&haproxy::membership(&l), true));
                out.push(Ok(Balancer {
                    kind: Kind::Haproxy,
                    file: h.clone(),
                    sections: vec![s],
                    servers,
                }))
            }
            Ok(None) => {}
            Err(e) => out.push(Err((Kind::Haproxy, h.clone(), e))),
        },
        Some(Err(e)) => out.push(Err((Kind::Haproxy, h.clone(), e))),
        None => {}
    }
    let n = &env.settings.nginx_config;
    match read(env, n) {
        Some(Ok(text)) => match (section(&text, nginx::MAIN), section(&text, nginx::HTTP)) {
            (Ok(None), Ok(None)) => {}
            (Ok(main), Ok(http)) => out.push(Ok(Balancer {
                kind: Kind::Nginx,
                file: n.clone(),
                sections: main.into_iter().chain(http).collect(),
                // Nginx has no draining state: a draining node is out.
                servers: nginx::members(&text).map(|m| servers_of(&m, false)),
            })),
            (Err(e), _) | (_, Err(e)) => out.push(Err((Kind::Nginx, n.clone(), e))),
        },
        Some(Err(e)) => out.push(Err((Kind::Nginx, n.clone(), e))),
        None => {}
    }
    out
}

/// For role detection: the first balancer with the agent's section.
pub fn section_of(env: &Env) -> Option<(&'static str, PathBuf)> {
    balancers(env).into_iter().next().map(|b| match b {
        Ok(b) => (b.kind.name(), b.file),
        Err((k, f, _)) => (k.name(), f),
    })
}

fn no_section(env: &Env) -> Outcome {
    Outcome::fail(
        format!(
            "neither {} nor {} holds an `ams-agent lb` section",
            env.settings.haproxy_config.display(),
            env.settings.nginx_config.display()
        ),
        "sudo ams-agent lb haproxy (or nginx) writes it; pass --haproxy-config/--nginx-config for another file",
    )
}

/// A path as a configuration names it, as a host path: under a test root
/// the files name real paths (the balancer reads them), which already lie
/// under the root.
fn host_path_of(env: &Env, p: &str) -> PathBuf {
    let p = Path::new(p);
    if !env.host.is_real_root() {
        if let Ok(rel) = p.strip_prefix(env.host.root()) {
            return Path::new("/").join(rel);
        }
    }
    p.to_path_buf()
}

// ------------------------------------------------------------ lb.config

pub fn lb_config(env: &Env) -> Outcome {
    let all = balancers(env);
    if all.is_empty() {
        return no_section(env);
    }
    let mut oks = Vec::new();
    for b in all {
        let b = match b {
            Ok(b) => b,
            Err((kind, file, e)) => {
                return Outcome::fail(
                    format!(
                        "{}: the agent's section is broken: {}",
                        file.display(),
                        escape(&e)
                    ),
                    format!(
                        "restore the marker lines (or remove the section) and run `sudo ams-agent lb {}` again",
                        kind.name()
                    ),
                );
            }
        };
        let real = env.host.path(&b.file).display().to_string();
        let (program, args): (&str, Vec<&str>) = match b.kind {
            Kind::Haproxy => ("haproxy", vec!["-c", "-f", &real]),
            Kind::Nginx => ("nginx", vec!["-t", "-q", "-c", &real]),
        };
        let shown = format!(
            "{program} {}",
            if b.kind == Kind::Haproxy { "-c" } else { "-t" }
        );
        match env.command_within(program, &args, CHECKER_BUDGET) {
            Ok(out) if out.success() => oks.push(format!("{shown} accepts {}", b.file.display())),
            Ok(out) => {
                return Outcome::fail(
                    format!(
                        "{shown} refuses {}: {}",
                        b.file.display(),
                        escape(&super::env::nonempty(&out.tail(3), "no message"))
                    ),
                    format!(
                        "fix what {program} names (the agent keeps the last good file when it renders; an edit by hand outside the markers may be the cause), then `sudo {program} {} {}`",
                        if b.kind == Kind::Haproxy { "-c -f" } else { "-t -c" },
                        b.file.display()
                    ),
                )
                .with_details(
                    out.stderr
                        .lines()
                        .chain(out.stdout.lines())
                        .filter(|l| !l.starts_with("[NOTICE]") && !l.trim().is_empty())
                        .take(20)
                        .map(str::to_string),
                );
            }
            Err(e) => {
                return Outcome::fail(
                    format!("cannot check {}: {}", b.file.display(), escape(&e)),
                    format!("install {program} (apt-get install {program})"),
                );
            }
        }
    }
    Outcome::ok(oks.join("; "))
}

// ------------------------------------------------------------ lb.members

/// A server of the agent's section: its group, node id, address, and
/// whether it is drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub group: String,
    pub id: String,
    pub addr: IpAddr,
    pub draining: bool,
}

/// What the registry says a node should be in the balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    In {
        addr: Option<IpAddr>,
        draining: bool,
    },
    Out {
        why: String,
    },
}

pub fn lb_members(env: &Env) -> Outcome {
    let all = balancers(env);
    let Some(Ok(b)) = all.into_iter().next() else {
        return Outcome::skip("no readable `ams-agent lb` section (see lb.config)");
    };
    let session = match env.session() {
        Ok(s) => s.clone(),
        Err(e) if e.stage == "none" => {
            return Outcome::warn(
                "no registry to compare the balancer with: agent.toml does not exist and --mongo is not given",
                "pass --mongo <MongoDB> (and --mongo-user/--mongo-password-file) as the follower gets them, or set AMS_AGENT_MONGO",
            );
        }
        Err(e) => return Outcome::fail(e.message.clone(), e.fix.clone()),
    };
    let listed = match env.block_on(session.registry.list()) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            return Outcome::fail(
                e.message,
                "check that MongoDB answers and the user may read the registry",
            );
        }
        Err(e) => return Outcome::fail(e, "run it again"),
    };
    let (mut docs, now) = listed;
    // A balancer that serves one AMS node group (`lb --group`) is compared
    // with that group's nodes only.
    let kind = match b.kind {
        Kind::Haproxy => crate::lb::Kind::Haproxy,
        Kind::Nginx => crate::lb::Kind::Nginx,
    };
    let node_group = match crate::lb::record::Record::load(&env.host, kind) {
        Ok(r) => r.and_then(|r| r.node_group),
        Err(e) => {
            return Outcome::fail(
                format!(
                    "{e:#}: the AMS node group the balancer serves is unknown, so its servers cannot be compared"
                ),
                format!(
                    "run `sudo ams-agent lb {}` again: it rewrites the record",
                    kind.name()
                ),
            );
        }
    };
    if let Some(g) = &node_group {
        docs.retain(|d| crate::lb::membership::in_node_group(d, g));
    }
    let now = now.unwrap_or_else(|| session.server_now());
    let mut want: BTreeMap<(String, String), Want> = BTreeMap::new();
    for d in &docs {
        let Ok(id) = d.get_str("_id") else { continue };
        let group = match d.get_str("role") {
            Ok("origin") => "ams_origin",
            Ok("edge") => "ams_edge",
            _ => continue,
        };
        let live = alive::liveness(d, now);
        let state = d.get_str("state").unwrap_or("unknown");
        let addr = d.get_str("privateIp").ok().and_then(|s| s.parse().ok());
        let w = match (live.alive, state) {
            (true, "ready") => Want::In {
                addr,
                draining: false,
            },
            (true, "draining") if b.kind == Kind::Haproxy => Want::In {
                addr,
                draining: true,
            },
            (true, other) => Want::Out {
                why: format!("{}", escape(other)),
            },
            (false, other) => Want::Out {
                why: match live.age_seconds {
                    Some(a) => format!("{}, last heartbeat {:.0}s ago", escape(other), a),
                    None => format!("{}, never heartbeated", escape(other)),
                },
            },
        };
        want.insert((group.to_string(), id.to_string()), w);
    }
    let Some(servers) = b.servers.clone() else {
        return Outcome::fail(
            format!(
                "{} {}: the agent's section is not in the form `ams-agent lb {}` writes (edited by hand?), so its servers cannot be compared",
                b.kind.name(),
                b.file.display(),
                b.kind.name()
            ),
            format!(
                "run `sudo ams-agent lb {}` to render it again (edits inside the markers are overwritten)",
                b.kind.name()
            ),
        );
    };
    let mut problems = Vec::new();
    for s in &servers {
        let key = (s.group.clone(), s.id.clone());
        match want.get(&key) {
            None => problems.push(format!(
                "{} serves node {} ({}), which the registry does not have in that role",
                s.group,
                escape(&s.id),
                s.addr
            )),
            Some(Want::Out { why }) => problems.push(format!(
                "{} still routes to node {} ({}), which the registry counts out ({why})",
                s.group,
                escape(&s.id),
                s.addr
            )),
            Some(Want::In { addr, draining }) => {
                if addr.is_some_and(|a| a != s.addr) {
                    problems.push(format!(
                        "{} sends node {} to {}, but its registry address is {}",
                        s.group,
                        escape(&s.id),
                        s.addr,
                        addr.map_or("?".into(), |a| a.to_string())
                    ));
                } else if *draining != s.draining {
                    problems.push(format!(
                        "{} has node {} {}, the registry says {}",
                        s.group,
                        escape(&s.id),
                        if s.draining {
                            "draining"
                        } else {
                            "in rotation"
                        },
                        if *draining { "draining" } else { "ready" }
                    ));
                }
            }
        }
    }
    for ((group, id), w) in &want {
        if matches!(w, Want::In { .. }) && !servers.iter().any(|s| &s.group == group && &s.id == id)
        {
            problems.push(format!(
                "{group} lacks node {}, alive and {} in the registry",
                escape(id),
                if matches!(w, Want::In { draining: true, .. }) {
                    "draining"
                } else {
                    "ready"
                }
            ));
        }
    }
    let count = |g: &str| servers.iter().filter(|s| s.group == g).count();
    if problems.is_empty() {
        return Outcome::ok(format!(
            "{} {} matches the registry's alive nodes{} (ams_origin: {}, ams_edge: {})",
            b.kind.name(),
            b.file.display(),
            node_group
                .as_deref()
                .map(|g| format!(" of node group `{}`", escape(g)))
                .unwrap_or_default(),
            count("ams_origin"),
            count("ams_edge")
        ));
    }
    let n = problems.len();
    Outcome::fail(
        format!(
            "{} {} differs from the registry in {n} {}: {}",
            b.kind.name(),
            b.file.display(),
            if n == 1 { "place" } else { "places" },
            problems[0]
        ),
        format!(
            "the follower applies changes within its settle time (10s by default): if this lasts, check it runs (`systemctl status ams-agent`, `ams-agent lb status`), or run `sudo ams-agent lb {}` once",
            b.kind.name()
        ),
    )
    .with_details(problems)
}

// ------------------------------------------------------------ lb.cert

/// The certificate files a section serves: HAProxy's `crt` files or
/// folders, Nginx's `ssl_certificate`.
fn cert_files(env: &Env, b: &Balancer) -> Result<Vec<PathBuf>, String> {
    let mut named = Vec::new();
    for s in &b.sections {
        for line in s.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match b.kind {
                Kind::Haproxy => {
                    for pair in w.windows(2) {
                        if pair[0] == "crt" {
                            named.push(pair[1].to_string());
                        }
                    }
                }
                Kind::Nginx => {
                    if w.first() == Some(&"ssl_certificate") {
                        if let Some(p) = w.get(1) {
                            named.push(p.trim_end_matches(';').to_string());
                        }
                    }
                }
            }
        }
    }
    named.sort();
    named.dedup();
    let mut files = Vec::new();
    for n in named {
        let p = host_path_of(env, &n);
        if env.host.is_dir(&p) {
            // A folder that cannot be listed (HAProxy's is 0700) hides
            // every certificate in it: never "serves no TLS".
            let cannot = |e: std::io::Error| format!("cannot list {}: {e}", p.display());
            let mut pems = Vec::new();
            for e in std::fs::read_dir(env.host.path(&p)).map_err(cannot)? {
                let name = e.map_err(cannot)?.file_name();
                let f = p.join(name);
                if f.extension().is_some_and(|x| x == "pem") {
                    pems.push(f);
                }
            }
            pems.sort();
            files.extend(pems);
        } else {
            files.push(p);
        }
    }
    Ok(files)
}

pub fn lb_cert(env: &Env) -> Outcome {
    let all = balancers(env);
    let Some(Ok(b)) = all.into_iter().next() else {
        return Outcome::skip("no readable `ams-agent lb` section (see lb.config)");
    };
    let files = match cert_files(env, &b) {
        Ok(f) => f,
        Err(e) => {
            return Outcome::fail(
                format!(
                    "{e}: the certificates {} serves cannot be checked",
                    b.kind.name()
                ),
                "run doctor as root (sudo ams-agent doctor)",
            );
        }
    };
    if files.is_empty() {
        return Outcome::skip(format!(
            "{} serves no TLS from the agent's section (no certificate named)",
            b.kind.name()
        ));
    }
    let fix = match b.kind {
        Kind::Haproxy => {
            "sudo certbot renew (its deploy hook `ams-agent cert deploy --for haproxy` installs it), then `ams-agent cert status`"
        }
        Kind::Nginx => {
            "sudo certbot renew, then check that the renewed PEM is the file nginx names (ssl_certificate)"
        }
    };
    let mut worst: Option<Outcome> = None;
    let mut lines = Vec::new();
    for f in &files {
        let o = match env.host.read_optional(f) {
            Ok(Some(bytes)) => {
                let leaf = crate::cert::inspect::parse_pem(&bytes).and_then(|blocks| {
                    let c = blocks
                        .iter()
                        .find(|b| b.tag() == "CERTIFICATE")
                        .ok_or_else(|| anyhow::anyhow!("no certificate in it"))?;
                    crate::cert::inspect::CertInfo::from_der(c.contents())
                });
                match leaf {
                    Ok(info) => super::node::expiry_outcome(
                        &format!("the certificate in {}", f.display()),
                        &info,
                        fix,
                    ),
                    Err(e) => Outcome::fail(
                        format!("{}: {e:#}", f.display()),
                        "reinstall it: sudo ams-agent cert deploy --for haproxy --lineage /etc/letsencrypt/live/<name>",
                    ),
                }
            }
            Ok(None) => Outcome::fail(
                format!(
                    "{} names {}, which does not exist",
                    b.kind.name(),
                    f.display()
                ),
                "sudo ams-agent cert --domain <name> --for haproxy",
            ),
            Err(e) => Outcome::fail(
                format!("{e:#}"),
                "run doctor as root (the certificates are root-only)",
            ),
        };
        lines.push(format!("{}: {}", o.status.name(), o.result));
        if worst
            .as_ref()
            .is_none_or(|w| o.status > w.status && o.status != super::Status::Skip)
        {
            worst = Some(o);
        }
    }
    let worst = worst.expect("at least one file");
    if files.len() == 1 {
        return worst;
    }
    let mut o = worst;
    o.details = lines;
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_read_with_the_lb_markers_and_broken_ones_named() {
        let text =
            b"global\n    daemon\n# BEGIN ams-agent lb: rendered\nbackend x\n# END ams-agent lb\n";
        assert_eq!(
            section(text, haproxy::MARKERS).unwrap().unwrap(),
            "backend x\n"
        );
        // Nginx's markers are not HAProxy's.
        assert_eq!(section(text, nginx::MAIN).unwrap(), None);
        assert!(section(b"# END ams-agent lb\n", haproxy::MARKERS).is_err());
        // A section that is not the agent's own format has no servers.
        assert!(haproxy::parse("backend x\n").is_none());
    }
}
