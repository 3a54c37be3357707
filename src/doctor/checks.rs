//! Every check doctor knows, in the order it reports them. An id is
//! stable (scripts filter on it with `--only`/`--skip`, and `docs/doctor.md`
//! lists each one); a new check gets a new id.

use std::time::Duration;

use super::env::{COMMAND_BUDGET, Env, MONGO_BUDGET, QUERY_BUDGET};
use super::{Outcome, Role, db, group, lb, node};

/// One check.
pub struct Check {
    pub id: &'static str,
    pub role: Role,
    pub category: &'static str,
    /// What it reads (for the docs, and for the message when it hangs).
    pub reads: &'static str,
    /// It is given up (and fails) when it has not finished this long after
    /// the run started.
    pub deadline: Duration,
    /// What to do when it hung.
    pub fix_hung: &'static str,
    pub run: fn(&Env) -> Outcome,
}

const MARGIN: Duration = Duration::from_secs(1);
/// Checks that only read files.
const FILES: Duration = Duration::from_secs(5);
/// Checks that run a program (the runner's own deadline, then a second
/// of grace for the output of a program it stopped).
const COMMAND: Duration = COMMAND_BUDGET.saturating_add(Duration::from_secs(2));
/// `mongo.reach`: the session itself.
const MONGO: Duration = MONGO_BUDGET.saturating_add(MARGIN);
/// Checks that query MongoDB once the session is open.
const MONGO_QUERY: Duration = MONGO_BUDGET
    .saturating_add(QUERY_BUDGET)
    .saturating_add(MARGIN);

const HUNG_SYSTEMD: &str = "systemd did not answer in time: `systemctl status` on this host";
const HUNG_MONGO: &str =
    "check MongoDB's host (`systemctl status mongod`) and the network path to it";

pub static CHECKS: &[Check] = &[
    // ------------------------------------------------------------ node
    Check {
        id: "agent.config",
        role: Role::Node,
        category: "agent",
        reads: "/etc/ams-agent/agent.toml",
        deadline: FILES,
        fix_hung: "check the filesystem holding /etc",
        run: node::agent_config,
    },
    Check {
        id: "ams.service",
        role: Role::Node,
        category: "ams",
        reads: "`systemctl show antmedia`",
        deadline: COMMAND,
        fix_hung: HUNG_SYSTEMD,
        run: node::ams_service,
    },
    Check {
        id: "ams.http",
        role: Role::Node,
        category: "ams",
        reads: "an HTTP GET on AMS's port (http://127.0.0.1:5080/)",
        deadline: Duration::from_secs(4),
        fix_hung: "AMS accepts connections but does not answer: see its log (/usr/local/antmedia/log/ant-media-server.log)",
        run: node::ams_http,
    },
    Check {
        id: "ams.ports",
        role: Role::Node,
        category: "ams",
        reads: "/proc/net/tcp, /proc/net/tcp6, red5.properties, jee-container.xml",
        deadline: FILES,
        fix_hung: "check /proc",
        run: node::ams_ports,
    },
    Check {
        id: "ams.mode",
        role: Role::Node,
        category: "ams",
        reads: "conf/red5.properties, conf/jee-container.xml, every webapps/*/WEB-INF/red5-web.properties, agent.toml",
        deadline: FILES,
        fix_hung: "check the filesystem holding the AMS install",
        run: node::ams_mode,
    },
    Check {
        id: "ams.limits",
        role: Role::Node,
        category: "ams",
        reads: "`systemctl show antmedia` (LimitNOFILE)",
        deadline: COMMAND,
        fix_hung: HUNG_SYSTEMD,
        run: node::ams_limits,
    },
    Check {
        id: "disk.ams",
        role: Role::Node,
        category: "system",
        reads: "statvfs of the AMS install folder",
        deadline: FILES,
        fix_hung: "the filesystem of the AMS install does not answer (a hung network mount?)",
        run: node::disk_ams,
    },
    Check {
        id: "mongo.reach",
        role: Role::Node,
        category: "mongo",
        reads: "MongoDB at agent.toml's URI: TCP connect, login, ping",
        deadline: MONGO,
        fix_hung: HUNG_MONGO,
        run: node::mongo_reach,
    },
    Check {
        id: "clock.skew",
        role: Role::Node,
        category: "time",
        reads: "MongoDB's clock (hello.localTime) against this host's",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_MONGO,
        run: node::clock_skew,
    },
    Check {
        id: "registry.node",
        role: Role::Node,
        category: "registry",
        reads: "this node's document in the registry (ams_agent.nodes)",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_MONGO,
        run: node::registry_node,
    },
    Check {
        id: "ams.clusternode",
        role: Role::Node,
        category: "registry",
        reads: "AMS's own row for this node (clusterdb.clusternode)",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_MONGO,
        run: node::ams_clusternode,
    },
    Check {
        id: "ams.nodegroup",
        role: Role::Node,
        category: "ams",
        reads: "nodeGroup of conf/red5.properties, agent.toml's [node] node_group, this node's registry document",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_MONGO,
        run: group::node_group,
    },
    Check {
        id: "agent.service",
        role: Role::Node,
        category: "agent",
        reads: "`systemctl show ams-agent`, this node's registry document",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_SYSTEMD,
        run: node::agent_service,
    },
    Check {
        id: "secrets.files",
        role: Role::Node,
        category: "security",
        reads: "modes of /etc/ams-agent/mongo-password and the AMS files holding a password",
        deadline: FILES,
        fix_hung: "check the filesystem holding /etc",
        run: node::secrets_files,
    },
    Check {
        id: "firewall.webrtc",
        role: Role::Node,
        category: "network",
        reads: "`iptables-save`, `nft -j list ruleset`, the applications' WebRTC port range",
        deadline: COMMAND,
        fix_hung: "iptables or nft did not answer: `iptables-save` by hand",
        run: node::firewall_webrtc,
    },
    Check {
        id: "firewall.cluster",
        role: Role::Node,
        category: "network",
        reads: "`iptables-save`, `nft -j list ruleset`",
        deadline: COMMAND,
        fix_hung: "iptables or nft did not answer: `iptables-save` by hand",
        run: node::firewall_cluster,
    },
    Check {
        id: "cert.expiry",
        role: Role::Node,
        category: "cert",
        reads: "the certificate AMS serves (red5.properties http.ssl_certificate_file)",
        deadline: FILES,
        fix_hung: "check the filesystem holding the AMS install",
        run: node::cert_expiry,
    },
    Check {
        id: "cert.names",
        role: Role::Node,
        category: "cert",
        reads: "the certificate AMS serves, red5.properties server.name",
        deadline: FILES,
        fix_hung: "check the filesystem holding the AMS install",
        run: node::cert_names,
    },
    Check {
        id: "cert.renewal",
        role: Role::Node,
        category: "cert",
        reads: "`systemctl show certbot.timer`, /etc/letsencrypt/renewal/*.conf and live/",
        deadline: COMMAND,
        fix_hung: HUNG_SYSTEMD,
        run: node::cert_renewal,
    },
    // ------------------------------------------------------------ db
    Check {
        id: "mongod.service",
        role: Role::Db,
        category: "mongod",
        reads: "`systemctl show mongod`",
        deadline: COMMAND,
        fix_hung: HUNG_SYSTEMD,
        run: db::mongod_service,
    },
    Check {
        id: "mongod.version",
        role: Role::Db,
        category: "mongod",
        reads: "buildInfo of the local mongod (port from /etc/mongod.conf)",
        deadline: MONGO,
        fix_hung: "mongod accepts connections but does not answer: `journalctl -u mongod`",
        run: db::mongod_version,
    },
    Check {
        id: "mongod.auth",
        role: Role::Db,
        category: "security",
        reads: "/etc/mongod.conf (net.bindIp, security.authorization), an anonymous listDatabases",
        deadline: MONGO,
        fix_hung: "mongod accepts connections but does not answer: `journalctl -u mongod`",
        run: db::mongod_auth,
    },
    Check {
        id: "mongod.thp",
        role: Role::Db,
        category: "system",
        reads: "/sys/kernel/mm/transparent_hugepage/{enabled,defrag,khugepaged/max_ptes_none}",
        deadline: MONGO,
        fix_hung: "mongod accepts connections but does not answer: `journalctl -u mongod`",
        run: db::mongod_thp,
    },
    Check {
        id: "mongod.limits",
        role: Role::Db,
        category: "mongod",
        reads: "`systemctl show mongod` (LimitNOFILE, LimitNPROC)",
        deadline: COMMAND,
        fix_hung: HUNG_SYSTEMD,
        run: db::mongod_limits,
    },
    Check {
        id: "mongod.warnings",
        role: Role::Db,
        category: "mongod",
        reads: "getLog startupWarnings of the local mongod",
        deadline: MONGO_QUERY,
        fix_hung: "mongod accepts connections but does not answer: `journalctl -u mongod`",
        run: db::mongod_warnings,
    },
    Check {
        id: "time.ntp",
        role: Role::Db,
        category: "time",
        reads: "`timedatectl show`, else `chronyc -n tracking`",
        deadline: Duration::from_secs(7),
        fix_hung: "timedatectl and chronyc did not answer: `timedatectl status` by hand",
        run: db::time_ntp,
    },
    Check {
        id: "mongod.fs",
        role: Role::Db,
        category: "system",
        reads: "storage.dbPath of /etc/mongod.conf, /proc/self/mountinfo",
        deadline: FILES,
        fix_hung: "check the filesystem holding dbPath",
        run: db::mongod_fs,
    },
    // ------------------------------------------------------------ lb
    Check {
        id: "lb.config",
        role: Role::Lb,
        category: "lb",
        reads: "the balancer's configuration, checked by `haproxy -c -f` / `nginx -t -c`",
        // Both balancers' checkers, each within its budget and a second of grace.
        deadline: Duration::from_secs(20),
        fix_hung: "haproxy -c or nginx -t did not finish: run it by hand",
        run: lb::lb_config,
    },
    Check {
        id: "lb.members",
        role: Role::Lb,
        category: "lb",
        reads: "the servers of the agent's section against the registry's alive nodes",
        deadline: MONGO_QUERY,
        fix_hung: HUNG_MONGO,
        run: lb::lb_members,
    },
    Check {
        id: "lb.cert",
        role: Role::Lb,
        category: "cert",
        reads: "the certificates the balancer serves (/etc/haproxy/certs/*.pem, Nginx's ssl_certificate)",
        deadline: FILES,
        fix_hung: "check the filesystem holding /etc",
        run: lb::lb_cert,
    },
];

/// The check with this id.
pub fn by_id(id: &str) -> Option<&'static Check> {
    CHECKS.iter().find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_lowercase_and_grouped_by_role() {
        let mut seen = std::collections::HashSet::new();
        let mut last_role = Role::Node;
        for c in CHECKS {
            assert!(seen.insert(c.id), "{} twice", c.id);
            assert!(
                c.id.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch == '.' || ch.is_ascii_digit()),
                "{}",
                c.id
            );
            assert!(c.role >= last_role, "{} out of role order", c.id);
            last_role = c.role;
            assert!(c.deadline >= Duration::from_secs(1));
        }
    }

    /// docs/doctor.md names every check, its category and its deadline.
    #[test]
    fn the_docs_list_every_check() {
        let docs = include_str!("../../docs/doctor.md");
        for c in CHECKS {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", c.id)))
                .unwrap_or_else(|| panic!("docs/doctor.md has no table row for `{}`", c.id));
            assert!(
                row.contains(&format!("| {} |", c.category)),
                "{}: category {} missing in {row}",
                c.id,
                c.category
            );
            let deadline = crate::human::show_duration(c.deadline);
            assert!(
                row.contains(&format!("| {deadline} |")),
                "{}: deadline {deadline} missing in {row}",
                c.id
            );
        }
    }
}
