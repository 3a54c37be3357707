//! A `systemctl` on PATH that runs `ams-agent.service` the way systemd
//! would for the points these tests make (PID 1 is not systemd here; the
//! real thing is the systemd-nspawn boot test):
//!
//! * `LoadCredential=`: the password file is copied into a private
//!   `$CREDENTIALS_DIRECTORY` when the reporter starts, and only then;
//! * `CapabilityBoundingSet=` (empty): the reporter runs as root with no
//!   capability at all (`setpriv --bounding-set=-all`), so file modes apply
//!   to it (no `CAP_DAC_OVERRIDE`);
//! * drop-ins under `/etc/systemd/system/ams-agent.service.d/`: their
//!   `SupplementaryGroups=` are read at `daemon-reload` (or at the unit's
//!   first start), never by a restart alone, and become the reporter's
//!   groups (names from the host's /etc/group);
//! * `enable --now` starts only a stopped unit, `restart` stops and starts,
//!   `try-restart` only a running one, `stop`/`disable --now` stop it
//!   (SIGTERM, as systemd sends).
//!
//! Every call is logged like the plain fake's (`systemctl.log`). Other units
//! are only logged. Needs root (setpriv changes the bounding set).

use std::path::{Path, PathBuf};

pub struct Systemd {
    state: PathBuf,
}

impl Systemd {
    /// Installs the `systemctl` into `bin`, with the host tree at `root`,
    /// calls logged to `calls_log`, its own state under `state`.
    pub fn install(bin: &Path, root: &Path, calls_log: &Path, state: &Path) -> Systemd {
        std::fs::create_dir_all(state).unwrap();
        let script = format!(
            r#"#!/bin/sh
S='{state}'; ROOT='{root}'; BIN='{bin}'
echo "$*" >> '{calls}'
verb=$1; shift
now=0; unit=
for a in "$@"; do case "$a" in --now) now=1;; -*) ;; *) unit=$a;; esac; done
running() {{
  [ -f "$S/pid" ] || return 1
  st=$(awk '{{print $3}}' "/proc/$(cat "$S/pid")/stat" 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ]
}}
load() {{
  groups=
  for f in "$ROOT"/etc/systemd/system/ams-agent.service.d/*.conf; do
    [ -e "$f" ] || continue
    for g in $(sed -n 's/^SupplementaryGroups=//p' "$f"); do
      case "$g" in
        *[!0-9]*) gid=$(awk -F: -v n="$g" '$1 == n {{print $3}}' "$ROOT/etc/group");;
        *) gid=$g;;
      esac
      if [ -z "$gid" ]; then echo "216/GROUP: no group $g" >> "$S/events"; return 1; fi
      groups="$groups${{groups:+,}}$gid"
    done
  done
  printf '%s' "$groups" > "$S/groups"
  touch "$S/loaded"
}}
start() {{
  running && return 0
  [ -e "$S/loaded" ] || load || return 1
  rm -rf "$S/creds"; mkdir -p "$S/creds"
  cp "$ROOT/etc/ams-agent/mongo-password" "$S/creds/mongo-password" || return 1
  g=$(cat "$S/groups")
  if [ -n "$g" ]; then gopt="--groups=$g"; else gopt=--clear-groups; fi
  CREDENTIALS_DIRECTORY="$S/creds" setpriv --bounding-set=-all --inh-caps=-all $gopt \
    "$BIN" run </dev/null >>"$S/reporter.log" 2>&1 &
  echo $! > "$S/pid"
  echo "start $! groups=$g" >> "$S/events"
}}
stop() {{
  running || return 0
  pid=$(cat "$S/pid"); kill -TERM "$pid"
  i=0
  while running && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
  echo "stop $pid" >> "$S/events"
  rm -f "$S/pid"
}}
case "$verb" in
  daemon-reload) load; exit $?;;
esac
case "$unit" in ams-agent|ams-agent.service) ;; *) exit 0;; esac
case "$verb" in
  enable) touch "$S/enabled"; if [ $now = 1 ]; then start; fi;;
  disable) rm -f "$S/enabled"; if [ $now = 1 ]; then stop; fi;;
  start) start;;
  stop) stop;;
  restart) if [ -e "$S/fail-restart" ]; then echo "Job for $unit failed." >&2; exit 1; fi; stop; start;;
  try-restart) if running; then stop; start; fi;;
  is-active) running;;
  is-enabled) [ -e "$S/enabled" ];;
esac
"#,
            state = state.display(),
            root = root.display(),
            bin = env!("CARGO_BIN_EXE_ams-agent"),
            calls = calls_log.display(),
        );
        let p = bin.join("systemctl");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Systemd {
            state: state.to_path_buf(),
        }
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join(name)).unwrap_or_default()
    }

    /// The running reporter's pid.
    pub fn reporter_pid(&self) -> Option<u32> {
        let pid: u32 = self.read("pid").trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        (stat.split_whitespace().nth(2) != Some("Z")).then_some(pid)
    }

    /// What the reporters started so far logged.
    pub fn reporter_log(&self) -> String {
        self.read("reporter.log")
    }

    /// The starts and stops, one line each (`start <pid> groups=<gids>`).
    pub fn events(&self) -> Vec<String> {
        self.read("events").lines().map(str::to_string).collect()
    }

    /// `restart` fails (exit 1) from now on, or works again.
    pub fn fail_restarts(&self, fail: bool) {
        let flag = self.state.join("fail-restart");
        if fail {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    /// The credential the running reporter was started with.
    pub fn credential(&self) -> String {
        self.read("creds/mongo-password")
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some(pid) = self.reporter_pid() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
