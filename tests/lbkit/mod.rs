//! The load-balancer tests' peers: HTTP/WebSocket backends and clients
//! (`tests/peers/ws_peer.py`, python3-websockets), a real `haproxy` and a
//! real `nginx` on loopback, a `systemctl` that reloads them the way
//! Debian's units do, and node documents fed to the MockupDB peer.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{MongoPeer, PYTHON, free_port};
use crate::fixture::Tree;

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}

/// Runs `ams-agent lb KIND` against the peer with the listeners of
/// `ports` (SRT with Nginx), `base` and `extra` flags.
pub fn run_lb(
    t: &Tree,
    kind: &str,
    peer: &MongoPeer,
    ports: &Ports,
    base: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = vec!["lb".into(), kind.into(), "--mongo".into(), peer.uri()];
    args.extend(base.iter().map(|s| s.to_string()));
    args.extend(ports.flags(kind == "nginx"));
    // Last: a later --listen for the same listener wins.
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    t.run(&refs)
}

/// Starts `ams-agent lb KIND --watch` (stdout and stderr piped).
pub fn spawn_watch(
    t: &Tree,
    kind: &str,
    peer: &MongoPeer,
    ports: &Ports,
    extra: &[&str],
) -> std::process::Child {
    let mut args: Vec<String> = vec![
        "lb".into(),
        kind.into(),
        "--watch".into(),
        "--mongo".into(),
        peer.uri(),
    ];
    args.extend(ports.flags(kind == "nginx"));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    t.command(&refs)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a follower the way systemd does (SIGTERM); its output.
pub fn stop(child: std::process::Child) -> std::process::Output {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait_with_output().unwrap()
}

/// The output of a run that must succeed.
pub fn ok(out: &std::process::Output) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Puts (or replaces) a node document in the peer's registry; `ago` is
/// how many seconds before now its last heartbeat was.
pub fn put_node(peer: &mut MongoPeer, id: &str, role: &str, ip: &str, state: &str, ago: u64) {
    let doc = serde_json::json!({
        "_id": id, "role": role, "privateIp": ip, "state": state,
        "intervalSeconds": 5.0, "lastSeenAgo": ago, "hostname": format!("host-{id}"),
    });
    peer.control(&format!("put {doc}"));
}

pub fn remove_node(peer: &mut MongoPeer, id: &str) {
    peer.control(&format!("remove {id}"));
}

/// Backends standing in for AMS nodes: `name` on `ip:port` answers GET /
/// with its name and WebSockets with its name first.
pub struct Backends {
    child: Child,
    pub port: u16,
}

impl Backends {
    pub fn start(port: u16, nodes: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(script("ws_peer.py")).arg("server");
        for (ip, name) in nodes {
            cmd.arg(format!("{ip}:{port}")).arg(name);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting tests/peers/ws_peer.py (apt install python3-websockets)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "the backends did not start");
        Backends { child, port }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WebSockets held open through the balancer.
pub struct WsClients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The node each connection landed on.
    pub nodes: Vec<String>,
}

impl WsClients {
    pub fn open(url: &str, count: usize) -> Self {
        let mut child = Command::new(PYTHON)
            .arg(script("ws_peer.py"))
            .args(["clients", url, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut nodes = Vec::new();
        for _ in 0..count {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                words.first(),
                Some(&"OPEN"),
                "a WebSocket did not open: {line}"
            );
            nodes.push(words[2].to_string());
        }
        WsClients {
            child,
            stdin,
            stdout,
            nodes,
        }
    }

    /// Every connection pings; returns (alive, dropped).
    pub fn check(&mut self) -> (usize, usize) {
        writeln!(self.stdin, "check").unwrap();
        self.stdin.flush().unwrap();
        let mut a = String::new();
        let mut d = String::new();
        self.stdout.read_line(&mut a).unwrap();
        self.stdout.read_line(&mut d).unwrap();
        let n = |l: &str| l.split_whitespace().nth(1).unwrap().parse().unwrap();
        (n(&a), n(&d))
    }
}

impl Drop for WsClients {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP GET through the balancer: (status, body, headers).
pub fn get(port: u16, path: &str, cookie: Option<&str>) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lb.test\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut all);
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.trim().to_string(), head.to_string())
}

/// The nodes `n` requests land on (bodies), in order.
pub fn spread(port: u16, path: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| get(port, path, None).1).collect()
}

/// Waits until `f` holds, or panics naming `what`.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP echo server (a node's SRT port): answers every datagram with
/// `name:` and the datagram.
pub fn udp_echo(ip: &str, port: u16, name: &str) {
    let s = UdpSocket::bind((ip, port)).unwrap();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let mut reply = format!("{name}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from);
        }
    });
}

/// The listener ports of one balancer under test, all on 127.0.0.1.
pub struct Ports {
    pub publish: u16,
    pub play: u16,
    pub dashboard: u16,
    pub rtmp: u16,
    pub srt: u16,
    /// The nodes' port (HTTP, RTMP and SRT alike).
    pub node: u16,
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            publish: free_port(),
            play: free_port(),
            dashboard: free_port(),
            rtmp: free_port(),
            srt: free_port(),
            node: free_port(),
        }
    }

    /// The flags that put the listeners there and the nodes on `node`.
    pub fn flags(&self, srt: bool) -> Vec<String> {
        let mut v = vec![
            format!("--listen=publish=127.0.0.1:{}", self.publish),
            format!("--listen=play=127.0.0.1:{}", self.play),
            format!("--listen=dashboard=127.0.0.1:{}", self.dashboard),
            format!("--listen=rtmp=127.0.0.1:{}", self.rtmp),
            format!("--http-port={}", self.node),
            format!("--rtmp-port={}", self.node),
            format!("--srt-port={}", self.node),
        ];
        if srt {
            v.push(format!("--listen=srt=127.0.0.1:{}", self.srt));
        }
        v
    }
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A real HAProxy (master-worker, as Debian's unit runs it) on the tree's
/// `etc/haproxy/haproxy.cfg`, its admin socket at `run/haproxy/admin.sock`
/// under the tree; `systemctl reload haproxy` in the tree's PATH sends it
/// SIGUSR2 (Debian's ExecReload), and every systemctl call is logged.
pub struct Haproxy {
    child: Child,
    pub pid_file: PathBuf,
}

pub const HAPROXY_CFG: &str = "etc/haproxy/haproxy.cfg";

/// The operator's part of haproxy.cfg in the tests: Debian's layout, with
/// the admin socket and the state under the tree.
pub fn haproxy_base(t: &Tree) -> String {
    format!(
        "global\n\tlog /dev/log local0\n\tstats socket {} mode 600 level admin\n\tstats timeout 30s\n\n\
         defaults\n\tlog\tglobal\n\tmode\thttp\n\toption\thttplog\n\toption\tdontlognull\n\
         \ttimeout connect 5000\n\ttimeout client  50000\n\ttimeout server  50000\n",
        t.path("run/haproxy/admin.sock").display()
    )
}

impl Haproxy {
    pub fn start(t: &Tree) -> Self {
        for d in ["etc/haproxy", "run/haproxy", "var/lib/haproxy"] {
            std::fs::create_dir_all(t.path(d)).unwrap();
        }
        let cfg = t.path(HAPROXY_CFG);
        if !cfg.exists() {
            std::fs::write(&cfg, haproxy_base(t)).unwrap();
        }
        let pid_file = t.dir.path().join("haproxy.pid");
        let child = Command::new("haproxy")
            .arg("-W")
            .arg("-f")
            .arg(&cfg)
            .arg("-p")
            .arg(&pid_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting haproxy (apt install haproxy)");
        let h = Haproxy { child, pid_file };
        h.systemctl(t);
        let sock = t.path("run/haproxy/admin.sock");
        eventually("haproxy's admin socket", Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        h
    }

    fn systemctl(&self, t: &Tree) {
        let log = t.dir.path().join("systemctl.log");
        write_exec(
            &t.bin.join("systemctl"),
            &format!(
                "#!/bin/sh\necho \"$*\" >> '{log}'\ncase \"$1 $2\" in\n\
                 'reload haproxy') kill -USR2 \"$(cat '{pid}')\" ;;\n\
                 'is-active --quiet') kill -0 \"$(cat '{pid}')\" 2>/dev/null || exit 3 ;;\nesac\n",
                log = log.display(),
                pid = self.pid_file.display()
            ),
        );
    }

    /// The worker serving the admin socket (`show info`'s Pid).
    pub fn worker(t: &Tree) -> u32 {
        let out = admin(t, "show info");
        out.lines()
            .find_map(|l| l.strip_prefix("Pid: "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Pid in show info: {out}"))
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// One command on HAProxy's admin socket.
pub fn admin(t: &Tree, cmd: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(t.path("run/haproxy/admin.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{cmd}").unwrap();
    let mut out = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut out);
    out
}

/// How many times `systemctl reload <unit>` was run.
pub fn reloads(t: &Tree, unit: &str) -> usize {
    t.systemctl_calls()
        .iter()
        .filter(|l| *l == &format!("reload {unit}"))
        .count()
}

/// A real Nginx (master and two workers, in the foreground) on the tree's
/// `etc/nginx/nginx.conf`, prefix, pid file and error log under the test
/// folder. The tree's PATH has an `nginx` that adds the same `-p`/`-g` to
/// what the agent runs (`nginx -t -c …`), and a `systemctl` whose
/// `reload nginx` is Debian's ExecReload (`nginx -s reload`).
pub struct Nginx {
    child: Child,
    pub pid_file: PathBuf,
}

pub const NGINX_CONF: &str = "etc/nginx/nginx.conf";

pub fn nginx_base() -> String {
    "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes 2;\n\
     events {\n\tworker_connections 256;\n}\n\nhttp {\n\taccess_log off;\n\t# the operator's own settings stay\n\tkeepalive_timeout 65;\n}\n"
        .to_string()
}

impl Nginx {
    pub fn start(t: &Tree) -> Self {
        std::fs::create_dir_all(t.path("etc/nginx")).unwrap();
        let prefix = t.dir.path().join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let conf = t.path(NGINX_CONF);
        if !conf.exists() {
            std::fs::write(&conf, nginx_base()).unwrap();
        }
        let pid_file = t.path("run/nginx.pid");
        std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
        let globals = format!(
            "pid {}; error_log {};",
            pid_file.display(),
            prefix.join("logs/error.log").display()
        );
        write_exec(
            &t.bin.join("nginx"),
            &format!(
                "#!/bin/sh\nexec /usr/sbin/nginx -p '{}' -g '{globals}' \"$@\"\n",
                prefix.display()
            ),
        );
        let log = t.dir.path().join("systemctl.log");
        write_exec(
            &t.bin.join("systemctl"),
            &format!(
                "#!/bin/sh\necho \"$*\" >> '{log}'\ncase \"$1 $2\" in\n\
                 'reload nginx') '{bin}/nginx' -c '{conf}' -s reload ;;\n\
                 'is-active --quiet') kill -0 \"$(cat '{pid}')\" 2>/dev/null || exit 3 ;;\nesac\n",
                log = log.display(),
                bin = t.bin.display(),
                conf = conf.display(),
                pid = pid_file.display()
            ),
        );
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("{globals} daemon off;"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx (apt install nginx libnginx-mod-stream)");
        eventually("nginx's pid file", Duration::from_secs(10), || {
            std::fs::read_to_string(&pid_file).is_ok_and(|p| !p.trim().is_empty())
        });
        Nginx { child, pid_file }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
