//! Health of this node (from `sysinfo` and `statvfs`) and the state of AMS
//! on it (service, HTTP probe on port 5080, mode and `nodeGroup`).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sysinfo::{MemoryRefreshKind, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ams::AmsLayout;
use crate::host::http::HttpUrl;
use crate::host::{CommandRunner, Host, systemd};

/// CPU usage averaged over a sliding window, AMS's own rule: `samples`
/// readings `sample_interval` apart (5 × 1 s by default).
pub struct CpuWindow {
    sys: System,
    samples: VecDeque<f32>,
    capacity: usize,
    primed: bool,
}

impl CpuWindow {
    pub fn new(capacity: u32) -> Self {
        CpuWindow {
            sys: System::new(),
            samples: VecDeque::with_capacity(capacity as usize),
            capacity: capacity.max(1) as usize,
            primed: false,
        }
    }

    /// Takes one reading (CPU use since the previous call). The very first
    /// call only sets the baseline.
    pub fn sample(&mut self) {
        self.sys.refresh_cpu_usage();
        if !self.primed {
            self.primed = true;
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(self.sys.global_cpu_usage());
    }

    /// The average of the readings in the window; `None` before the first.
    pub fn average(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let sum: f64 = self.samples.iter().map(|v| *v as f64).sum();
        Some(round1(sum / self.samples.len() as f64))
    }

    pub fn cpu_count(&self) -> usize {
        self.sys.cpus().len()
    }
}

/// Samples CPU on a background task; the heartbeat reads the average.
#[derive(Clone)]
pub struct CpuSampler(Arc<Mutex<CpuWindow>>);

impl CpuSampler {
    /// Starts sampling on the current tokio runtime.
    pub fn start(samples: u32, every: Duration) -> Self {
        let window = Arc::new(Mutex::new(CpuWindow::new(samples)));
        window.lock().expect("cpu lock").sample();
        let w = window.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                w.lock().expect("cpu lock").sample();
            }
        });
        CpuSampler(window)
    }

    pub fn average(&self) -> Option<f64> {
        self.0.lock().expect("cpu lock").average()
    }

    pub fn cpu_count(&self) -> usize {
        self.0.lock().expect("cpu lock").cpu_count()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Percent of all CPUs, averaged over the window.
    pub cpu: Option<f64>,
    pub cpu_count: usize,
    pub load: [f64; 3],
    pub memory_used: Option<f64>,
    /// Percent used of the file system holding the AMS install.
    pub disk_used: Option<f64>,
    pub uptime_seconds: u64,
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Memory, load, disk and uptime now; CPU from the sampler.
pub fn snapshot(cpu: &CpuSampler, memory: &mut System, disk_path: &Path) -> Health {
    memory.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let total = memory.total_memory();
    let memory_used =
        (total > 0).then(|| round1(memory.used_memory() as f64 * 100.0 / total as f64));
    let l = System::load_average();
    Health {
        cpu: cpu.average(),
        cpu_count: cpu.cpu_count().max(1),
        load: [l.one, l.five, l.fifteen],
        memory_used,
        disk_used: disk_used_percent(disk_path),
        uptime_seconds: System::uptime(),
    }
}

/// Used percent of the file system holding `path` (the nearest existing
/// ancestor), as `df` computes it: used / (used + available to users).
pub fn disk_used_percent(path: &Path) -> Option<f64> {
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let st = nix::sys::statvfs::statvfs(p).ok()?;
    let frag = st.fragment_size() as f64;
    let total = st.blocks() as f64 * frag;
    let free = st.blocks_free() as f64 * frag;
    let avail = st.blocks_available() as f64 * frag;
    let used = total - free;
    let denom = used + avail;
    (denom > 0.0).then(|| round1(used * 100.0 / denom))
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AmsState {
    /// `active`, `inactive` or `unknown`.
    pub service: String,
    /// The HTTP status AMS answered on its port, if it answered.
    pub http_status: Option<u16>,
    pub mode: Option<String>,
    pub node_group: Option<String>,
    /// Set when some of these values are not AMS's files' but what
    /// agent.toml recorded (the files could not be read).
    pub fallback: Option<Fallback>,
}

/// Values reported from agent.toml instead of AMS's files, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// The document's names of the values (`mode`, `nodeGroup`).
    pub values: Vec<&'static str>,
    /// Why the files could not be read (the paths named).
    pub error: String,
    /// Since when (this node's clock).
    pub since: std::time::SystemTime,
}

impl AmsState {
    pub fn answers(&self) -> bool {
        self.http_status.is_some()
    }
}

/// One GET against AMS (any HTTP status is an answer), within `timeout`.
pub async fn probe_http(url: &str, timeout: Duration) -> Option<u16> {
    let u = HttpUrl::parse(url).ok()?;
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((u.host.as_str(), u.port))
            .await
            .ok()?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ams-agent\r\nConnection: close\r\n\r\n",
            u.path, u.host
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut head[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        let line = std::str::from_utf8(&head[..n]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// AMS's mode (`conf/jee-container.xml`) and node group
/// (`conf/red5.properties`) from its own files, each with the error that
/// kept it from being read (the reporter runs without CAP_DAC_OVERRIDE).
pub struct AmsConfig {
    pub mode: Result<String, String>,
    pub node_group: Result<Option<String>, String>,
}

pub fn ams_config(host: &Host, layout: &AmsLayout) -> AmsConfig {
    let shown = |e: anyhow::Error| format!("{e:#}");
    AmsConfig {
        mode: crate::ams::mode::read_mode(host, layout)
            .map(|m| m.name().to_string())
            .map_err(shown),
        node_group: crate::ams::mode::read_node_group(host, layout).map_err(shown),
    }
}

/// What tells a change of AMS's two files without reading them (size,
/// inode, modification and status-change times: an edit, a replacement, a
/// chmod or chown): a change is re-read at once.
pub fn ams_config_stamp(host: &Host, layout: &AmsLayout) -> Vec<Option<[i64; 6]>> {
    use std::os::unix::fs::MetadataExt;
    [layout.jee_container(), layout.red5_properties()]
        .iter()
        .map(|p| {
            std::fs::metadata(host.path(p)).ok().map(|m| {
                [
                    m.len() as i64,
                    m.ino() as i64,
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ]
            })
        })
        .collect()
}

/// `systemctl is-active` for the AMS unit: `active`, `inactive`, `unknown`.
pub fn service_state(runner: &dyn CommandRunner, unit: &str) -> String {
    match systemd::is_active(runner, unit) {
        Ok(true) => "active".into(),
        Ok(false) => "inactive".into(),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_averages_the_last_readings() {
        let mut w = CpuWindow::new(3);
        assert_eq!(w.average(), None);
        w.sample();
        assert_eq!(w.average(), None, "the first call is the baseline");
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(210));
            w.sample();
        }
        assert_eq!(w.samples.len(), 3);
        let avg = w.average().unwrap();
        assert!((0.0..=100.0).contains(&avg), "{avg}");
        assert!(w.cpu_count() >= 1);
    }

    #[test]
    fn disk_usage_of_an_existing_ancestor() {
        let v = disk_used_percent(Path::new("/nonexistent/usr/local/antmedia")).unwrap();
        assert!((0.0..=100.0).contains(&v));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn probe_reads_any_status_and_gives_up_in_time() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 503 Busy\r\n\r\n").await.unwrap();
        });
        let url = format!("http://127.0.0.1:{port}/");
        assert_eq!(probe_http(&url, Duration::from_secs(2)).await, Some(503));
        // Nobody answers now (the listener is gone after one accept).
        let start = std::time::Instant::now();
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_port = dead.local_addr().unwrap().port();
        drop(dead);
        assert_eq!(
            probe_http(
                &format!("http://127.0.0.1:{dead_port}/"),
                Duration::from_millis(500)
            )
            .await,
            None
        );
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
