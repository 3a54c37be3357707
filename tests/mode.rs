//! `ams-agent mode`, end to end: the real binary on host trees built from the
//! real AMS files, with a fake `systemctl` on PATH and a loopback HTTP server
//! standing in for AMS's port 5080.

mod fixture;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use fixture::{
    AMS, Tree, dead_url, error_line, fake_ams_http, needs_root, private_mount_namespace,
    skip_unless_ci, stderr, stdout,
};

/// No restart, and no MongoDB to check: these tests are about the files.
const NO_RESTART: &[&str] = &["--ip", "10.0.1.20", "--no-restart", "--skip-db-check"];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

fn red5(t: &Tree) -> String {
    t.read(&format!("{AMS}/conf/red5.properties"))
}

fn app_props(t: &Tree, app: &str) -> String {
    t.read(&format!("{AMS}/webapps/{app}/WEB-INF/red5-web.properties"))
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line"))
}

/// The files a cluster switch of the example host must produce, byte for byte.
const GOLDEN: &[&str] = &[
    "usr/local/antmedia/conf/red5.properties",
    "usr/local/antmedia/conf/jee-container.xml",
    "usr/local/antmedia/webapps/LiveApp/WEB-INF/red5-web.properties",
    "usr/local/antmedia/webapps/WebRTCAppEE/WEB-INF/red5-web.properties",
    "usr/local/antmedia/webapps/root/WEB-INF/red5-web.properties",
    "etc/hosts",
];

#[test]
fn cluster_switch_matches_the_golden_tree() {
    let t = Tree::new();
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cluster");
    for rel in GOLDEN {
        let got = t.read(rel);
        let want_path = golden.join(rel);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            fs::create_dir_all(want_path.parent().unwrap()).unwrap();
            fs::write(&want_path, &got).unwrap();
        }
        let want = fs::read_to_string(&want_path).unwrap();
        assert_eq!(got, want, "{rel} differs from tests/golden/cluster/{rel}");
    }
}

fn round_trip(t: &Tree) {
    let before = t.snapshot();
    let out = t.run(&args(&["mode", "cluster", "mongo.internal"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    for app in t.apps() {
        let p = app_props(t, &app);
        assert_eq!(line(&p, "db.type"), "db.type=mongodb", "{app}");
        assert_eq!(
            line(&p, "db.host"),
            "db.host=mongodb://mongo.internal:27017",
            "{app}"
        );
    }
    assert_eq!(
        line(&red5(t), "clusterdb.host"),
        "clusterdb.host=mongodb://mongo.internal:27017"
    );
    let xml = t.read(&format!("{AMS}/conf/jee-container.xml"));
    assert_eq!(xml.matches("<!-- cluster start -->").count(), 3);
    assert_eq!(xml.matches("<!-- cluster end -->").count(), 3);
    assert!(xml.contains("<!-- https start\n"), "https block untouched");

    let out = t.run(&args(&["mode", "standalone"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    let after = t.snapshot();
    // Everything is exactly as shipped, except /etc/hosts, which now pins the
    // host name to the private address.
    for (rel, content) in &before {
        if rel != "etc/hosts" {
            assert_eq!(
                after.get(rel),
                Some(content),
                "{rel} changed in the round trip"
            );
        }
    }
    assert_eq!(before.len(), after.len(), "files appeared or vanished");
}

#[test]
fn round_trip_with_one_webapp() {
    let t = Tree::with_apps(1);
    assert_eq!(t.apps(), ["root"]);
    round_trip(&t);
}

#[test]
fn round_trip_with_many_webapps() {
    let t = Tree::with_apps(40);
    assert_eq!(t.apps().len(), 40);
    round_trip(&t);
}

#[test]
fn every_db_form_lands_in_every_file() {
    let yaml = "/etc/ams-redis.yaml";
    for (input, db_type, url) in [
        ("10.0.1.5", "mongodb", "mongodb://10.0.1.5:27017"),
        ("10.0.1.5:27018", "mongodb", "mongodb://10.0.1.5:27018"),
        ("[::1]:27017", "mongodb", "mongodb://[::1]:27017"),
        ("mongo", "mongodb", "mongodb://mongo:27017"),
        (
            "mongo.internal",
            "mongodb",
            "mongodb://mongo.internal:27017",
        ),
        (
            "db1:27017,db2:27018,db3",
            "mongodb",
            "mongodb://db1:27017,db2:27018,db3:27017",
        ),
        (
            "mongodb://u:p%40ss@h1,h2:27018/admin?replicaSet=rs0&readPreference=secondary",
            "mongodb",
            "mongodb://u:p%40ss@h1,h2:27018/admin?replicaSet=rs0&readPreference=secondary",
        ),
        (
            "mongodb+srv://u:pw@cluster0.example.net/?retryWrites=true&w=majority",
            "mongodb",
            "mongodb+srv://u:pw@cluster0.example.net/?retryWrites=true&w=majority",
        ),
        (
            "redis://redis.internal:6379",
            "redisdb",
            "redis://redis.internal:6379",
        ),
        (
            "rediss://:pw@redis.internal:6380",
            "redisdb",
            "rediss://:pw@redis.internal:6380",
        ),
        (yaml, "redisdb", yaml),
    ] {
        let t = Tree::new();
        fs::write(
            t.path(yaml.trim_start_matches('/')),
            "singleServerConfig:\n  address: redis://r:6379\n",
        )
        .unwrap();
        let out = t.run(&args(&["mode", "cluster", input], NO_RESTART));
        assert!(out.status.success(), "{input}: {}", stderr(&out));
        assert_eq!(
            line(&red5(&t), "clusterdb.host"),
            format!("clusterdb.host={url}"),
            "{input}"
        );
        for app in t.apps() {
            let p = app_props(&t, &app);
            assert_eq!(
                line(&p, "db.type"),
                format!("db.type={db_type}"),
                "{input} {app}"
            );
            assert_eq!(
                line(&p, "db.host"),
                format!("db.host={url}"),
                "{input} {app}"
            );
            assert_eq!(line(&p, "db.user"), "db.user=");
            assert_eq!(line(&p, "db.password"), "db.password=");
        }
    }
}

#[test]
fn standalone_with_a_database_keeps_the_cluster_blocks_off() {
    let t = Tree::new();
    let out = t.run(&args(&["mode", "standalone", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        line(&app_props(&t, "LiveApp"), "db.type"),
        "db.type=mongodb"
    );
    let xml = t.read(&format!("{AMS}/conf/jee-container.xml"));
    assert_eq!(xml.matches("<!-- cluster start -->").count(), 0);
}

/// `mode cluster 10.0.1.5` (no restart, no DB check) as user `ams`, with
/// `password` in a file.
fn cluster_as_ams(t: &Tree, password: &str) -> std::process::Command {
    let pw = t.dir.path().join("pw");
    fs::write(&pw, password).unwrap();
    let pw = pw.to_str().unwrap();
    t.command(&args(
        &[
            "mode",
            "cluster",
            "10.0.1.5",
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw,
        ],
        NO_RESTART,
    ))
}

const HOSTILE_PASSWORD: &str = "p@ss:w/rd?#%\\ \"ünï\"\nline2";

#[test]
fn hostile_password_from_a_file_is_encoded_and_protected() {
    let t = Tree::new();
    let out = cluster_as_ams(&t, &format!("{HOSTILE_PASSWORD}\n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let expected =
        "mongodb://ams:p%40ss%3Aw%2Frd%3F%23%25%5C%20%22%C3%BCn%C3%AF%22%0Aline2@10.0.1.5:27017";
    assert_eq!(
        line(&red5(&t), "clusterdb.host"),
        format!("clusterdb.host={expected}")
    );
    // The files now hold a password: nobody but owner and group reads them,
    // and AMS (the `antmedia` account of etc/passwd, uid/gid 1001) still can.
    for rel in [
        format!("{AMS}/conf/red5.properties"),
        format!("{AMS}/webapps/LiveApp/WEB-INF/red5-web.properties"),
    ] {
        let meta = fs::metadata(t.path(&rel)).unwrap();
        let mode = meta.mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "{rel} is world-readable: {mode:o}");
        if meta.uid() != 1001 {
            assert_eq!(meta.gid(), 1001, "{rel}: AMS's group cannot read it");
            assert_ne!(
                mode & 0o040,
                0,
                "{rel}: AMS's group cannot read it: {mode:o}"
            );
        }
    }
    let logs = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !logs.contains("p%40ss") && !logs.contains("p@ss"),
        "password in output: {logs}"
    );
}

#[test]
fn password_from_the_environment_and_dry_run_masks_it() {
    let t = Tree::new();
    let out = t
        .command(&args(
            &[
                "--dry-run",
                "mode",
                "cluster",
                "mongo.internal",
                "--mongo-user",
                "ams",
            ],
            NO_RESTART,
        ))
        .env("AMS_AGENT_MONGO_PASSWORD", "s3cr3t/\\")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("+clusterdb.host=mongodb://ams:****@mongo.internal:27017"),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");
}

#[test]
fn hostile_inputs_exit_2_with_one_line_and_change_nothing() {
    let t = Tree::new();
    let before = t.snapshot();
    let empty_pw = t.dir.path().join("empty");
    fs::write(&empty_pw, "").unwrap();
    let empty_pw = empty_pw.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["mode", "cluster", "10.0.1"], "expected an IPv4"),
        (vec!["mode", "cluster", "bad host"], "white space"),
        (vec!["mode", "cluster", "a\nb"], "newline"),
        (vec!["mode", "cluster", ""], "empty"),
        (vec!["mode", "cluster", "10.0.1.5:70000"], "port"),
        (vec!["mode", "cluster", "[::1"], "IPv6"),
        (vec!["mode", "cluster", "mongodb://u:p@ss@h"], "%40"),
        (vec!["mode", "cluster", "mongodb://u:p/ss@h"], "%2F"),
        (vec!["mode", "cluster", "mongodb://u:100%@h"], "%25"),
        (vec!["mode", "cluster", "mongodb+srv://h:27017"], "port"),
        (vec!["mode", "cluster", "/etc/none.yaml"], "no such file"),
        (vec!["mode", "cluster", "ftp://x"], "scheme"),
        (
            vec!["mode", "cluster", "mongodb://u:p@h", "--mongo-user", "x"],
            "already holds credentials",
        ),
        (
            vec![
                "mode",
                "cluster",
                "h",
                "--mongo-password-file",
                "/nonexistent/pw",
            ],
            "--mongo-password-file",
        ),
        (
            vec![
                "mode",
                "cluster",
                "h",
                "--mongo-user",
                "u",
                "--mongo-password-file",
                empty_pw,
            ],
            "empty",
        ),
        (
            vec!["mode", "cluster", "h", "--ams-home", "/opt/none"],
            "--ams-home",
        ),
        (vec!["mode", "cluster", "h", "--ip", "10.0.1.300"], "--ip"),
        (vec!["mode", "cluster", "h", "--ip", "fd00::1"], "--ip"),
        (vec!["mode", "cluster", "h", "--wait", "soon"], "--ams-wait"),
        (
            vec!["mode", "standalone", "--mongo-user", "u"],
            "DB argument",
        ),
        (
            vec!["mode", "cluster", "10.0.1.5", "admin", "p@ssword"],
            "--mongo-password-file",
        ),
    ];
    for (case, needle) in cases {
        let full = args(&case, &["--ip", "10.0.1.20", "--no-restart"]);
        // `--ip` given twice is itself a clap error; keep the case's own.
        let full: Vec<&str> = if case.contains(&"--ip") {
            args(&case, &["--no-restart"])
        } else {
            full
        };
        let out = t.run(&full);
        assert_eq!(out.status.code(), Some(2), "{case:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{case:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{case:?}: {err}"
        );
        assert!(
            !err.contains("p@ss") && !err.contains("100%@"),
            "secret echoed: {err}"
        );
        assert_eq!(t.snapshot(), before, "{case:?} changed files");
    }
    assert!(!t.path("var/lib/ams-agent").exists());
}

/// `mode cluster 10.0.1.5` must fail with `code`, an error line naming
/// `needle`, and every file as it was.
fn assert_switch_refused(t: &Tree, code: i32, needle: &str) {
    let before = t.snapshot();
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    assert!(error_line(&out).contains(needle), "{}", stderr(&out));
    assert_eq!(t.snapshot(), before);
    assert!(!t.path("var/lib/ams-agent/journal.json").exists());
}

#[test]
fn missing_webapps_is_bad_input_and_changes_nothing() {
    let t = Tree::new();
    fs::remove_dir_all(t.path(&format!("{AMS}/webapps"))).unwrap();
    assert_switch_refused(&t, 2, "webapps/ is missing");
}

#[test]
fn community_edition_without_cluster_blocks_is_refused() {
    let t = Tree::new();
    let p = t.path(&format!("{AMS}/conf/jee-container.xml"));
    let xml = fs::read_to_string(&p)
        .unwrap()
        .replace("cluster start", "x")
        .replace("cluster end", "y");
    fs::write(&p, xml).unwrap();
    assert_switch_refused(&t, 1, "no cluster blocks");
}

/// Runs the binary as an unprivileged user when we are root (root ignores
/// permission bits), so a read-only folder really is read-only.
fn unprivileged(t: &Tree, args: &[&str]) -> std::process::Output {
    let mut cmd = t.command(args);
    if nix::unistd::geteuid().is_root() {
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(t.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        fs::set_permissions(t.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        // A copy of the binary the unprivileged user can surely execute,
        // wherever the checkout lives.
        let bin = t.dir.path().join("ams-agent");
        fs::copy(env!("CARGO_BIN_EXE_ams-agent"), &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let mut wrapped = std::process::Command::new("setpriv");
        wrapped
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(args)
            .env("AMS_AGENT_ROOT", t.root())
            .env(
                "PATH",
                format!("{}:{}", t.bin.display(), std::env::var("PATH").unwrap()),
            )
            .stdin(std::process::Stdio::null());
        cmd = wrapped;
    }
    cmd.output().unwrap()
}

#[test]
fn read_only_application_folder_fails_cleanly_and_changes_nothing() {
    let t = Tree::new();
    let ro = t.path(&format!("{AMS}/webapps/WebRTCAppEE/WEB-INF"));
    let before = t.snapshot();
    // chown first (inside `unprivileged`), then drop the write bit.
    let out = {
        if nix::unistd::geteuid().is_root() {
            std::process::Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(t.dir.path())
                .status()
                .unwrap();
        }
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        unprivileged(&t, &args(&["mode", "cluster", "10.0.1.5"], NO_RESTART))
    };
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("WebRTCAppEE/WEB-INF") && err.contains("not writable"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    let after = t.snapshot();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "stray files"
    );
    for (rel, (content, _)) in &before {
        assert_eq!(&after[rel].0, content, "{rel} changed");
    }
}

#[test]
fn dry_run_prints_diffs_and_changes_nothing() {
    let t = Tree::new();
    let before = t.snapshot();
    let out = t.run(&[
        "--dry-run",
        "mode",
        "cluster",
        "10.0.1.5",
        "--ip",
        "10.0.1.20",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("-db.type=mapdb\n") && text.contains("+db.type=mongodb\n"),
        "{text}"
    );
    assert!(text.contains("+\t<!-- cluster start -->"), "{text}");
    assert!(text.contains("restart antmedia"), "{text}");
    assert!(text.contains("wait up to 3m"), "{text}");
    assert_eq!(t.snapshot(), before);
    assert!(!t.path("var/lib/ams-agent").exists());
    assert!(t.systemctl_calls().is_empty());
}

/// `mode cluster 10.0.1.5` with the restart, AMS's probe pointed at `url`.
fn switch_with_restart(t: &Tree, url: &str) -> std::process::Output {
    t.command(&[
        "mode",
        "cluster",
        "10.0.1.5",
        "--ip",
        "10.0.1.20",
        "--skip-db-check",
    ])
    .env("AMS_AGENT_AMS_URL", url)
    .output()
    .unwrap()
}

#[test]
fn second_run_changes_nothing_and_does_not_restart() {
    let t = Tree::new();
    let url = fake_ams_http();
    let out = switch_with_restart(&t, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(t.systemctl_calls(), ["restart antmedia"]);
    let inodes: Vec<u64> = fixture_inodes(&t);
    let before = t.snapshot();
    let out = switch_with_restart(&t, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert_eq!(t.snapshot(), before);
    assert_eq!(fixture_inodes(&t), inodes, "files were rewritten");
    assert_eq!(t.systemctl_calls(), ["restart antmedia"], "restarted again");
}

fn fixture_inodes(t: &Tree) -> Vec<u64> {
    GOLDEN
        .iter()
        .map(|rel| fs::metadata(t.path(rel)).unwrap().ino())
        .collect()
}

#[test]
fn missing_service_is_a_clear_message_and_the_restart_is_retried_next_time() {
    let t = Tree::new();
    let url = fake_ams_http();
    t.fake_systemctl(
        5,
        "Failed to restart antmedia.service: Unit antmedia.service not found.",
    );
    let out = switch_with_restart(&t, &url);
    assert_eq!(out.status.code(), Some(1));
    let err = error_line(&out);
    assert!(err.contains("service antmedia is not installed"), "{err}");
    assert!(err.contains("step 2/4"), "{err}");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    // Files were switched; once AMS is installed, the next run restarts it
    // even though no file changes any more.
    assert!(
        t.read(&format!("{AMS}/conf/red5.properties"))
            .contains("clusterdb.host=mongodb://10.0.1.5:27017")
    );
    t.fake_systemctl(0, "");
    let out = switch_with_restart(&t, &url);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        t.systemctl_calls().last().map(String::as_str),
        Some("restart antmedia")
    );
    let out = switch_with_restart(&t, &url);
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

#[test]
fn waiting_for_ams_has_a_deadline_and_names_what_it_waited_for() {
    let t = Tree::new();
    let url = dead_url();
    let start = Instant::now();
    let out = t
        .command(&[
            "mode",
            "cluster",
            "10.0.1.5",
            "--ip",
            "10.0.1.20",
            "--wait",
            "2s",
            "--skip-db-check",
        ])
        .env("AMS_AGENT_AMS_URL", &url)
        .output()
        .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    let err = error_line(&out);
    assert!(
        err.contains(&format!(
            "Ant Media Server did not answer on {url} within 2s"
        )),
        "{err}"
    );
}

/// Java reads the files back (`java.util.Properties`, as AMS does) and gets
/// exactly the URL the agent meant, backslashes and all.
#[test]
fn java_reads_back_what_the_agent_wrote() {
    let t = Tree::new();
    let url = "mongodb://u:a%5Cb@h1:27017/?appName=x\\y&authSource=admin";
    let out = t.run(&args(&["mode", "cluster", url], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        red5(&t)
            .contains("clusterdb.host=mongodb://u:a%5Cb@h1:27017/?appName=x\\\\y&authSource=admin")
    );
    let java_src = t.dir.path().join("Read.java");
    fs::write(
        &java_src,
        "import java.io.*; import java.util.*;\n\
         public class Read { public static void main(String[] a) throws Exception {\n\
           Properties p = new Properties(); try (InputStream in = new FileInputStream(a[0])) { p.load(in); }\n\
           System.out.print(p.getProperty(a[1])); } }\n",
    )
    .unwrap();
    for (file, key) in [
        (format!("{AMS}/conf/red5.properties"), "clusterdb.host"),
        (
            format!("{AMS}/webapps/LiveApp/WEB-INF/red5-web.properties"),
            "db.host",
        ),
    ] {
        let java = std::process::Command::new("java")
            .arg(&java_src)
            .arg(t.path(&file))
            .arg(key)
            .output()
            .expect("java is needed for this test (.ci/run installs default-jdk-headless)");
        assert!(java.status.success(), "{}", stderr(&java));
        assert_eq!(stdout(&java), url, "{file}");
    }
}

/// The shell asks `(y/n)` for a bare IP and hangs under user-data. With stdin
/// closed (as under cloud-init) the switch just runs.
#[test]
fn never_prompts_without_a_terminal() {
    let t = Tree::new();
    let start = Instant::now();
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(start.elapsed() < Duration::from_secs(5));
    // A missing value is an error, not a question.
    let out = t.run(&["mode", "cluster"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("<DB>"), "{}", stderr(&out));
}

#[test]
fn srv_uri_with_separate_credentials_works() {
    let t = Tree::new();
    let pw = t.dir.path().join("pw");
    fs::write(&pw, "s/cr@t\n").unwrap();
    let out = t.run(&args(
        &[
            "mode",
            "cluster",
            "mongodb+srv://cluster0.example.net/?retryWrites=true&w=majority",
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw.to_str().unwrap(),
        ],
        NO_RESTART,
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        line(&app_props(&t, "root"), "db.host"),
        "db.host=mongodb+srv://ams:s%2Fcr%40t@cluster0.example.net/?retryWrites=true&w=majority"
    );
}

/// Unmounts on drop (the test's private mount namespace would drop it too).
struct Mount(std::path::PathBuf);

/// `mount --bind from onto`, undone when the guard drops.
fn bind_mount(from: &Path, onto: &Path) -> Mount {
    let status = std::process::Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(onto)
        .status()
        .unwrap();
    assert!(status.success(), "mount --bind failed");
    Mount(onto.to_path_buf())
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A disk that fills up halfway through the switch: exit 1, a message naming
/// the file and the cause, and every AMS file exactly as it was.
#[test]
fn full_disk_fails_cleanly_and_changes_nothing() {
    if !needs_root("mounting a small tmpfs") {
        return;
    }
    private_mount_namespace();
    let t = Tree::new();
    let root = t.root();
    fs::remove_dir_all(&root).unwrap();
    fs::create_dir_all(&root).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(status.success(), "mount failed");
    let _mount = Mount(root.clone());
    fixture::copy_tree(&fixture::example_host(), &root);
    // Leave room for a few new files but not for all of them.
    let stat = nix::sys::statvfs::statvfs(&root).unwrap();
    let free = stat.blocks_available() as usize * stat.fragment_size() as usize;
    fs::write(root.join("filler"), vec![0u8; free - 24 * 1024]).unwrap();
    let before = t.snapshot();

    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("no file was changed"), "{err}");
    let after = t.snapshot();
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "stray files"
    );
    assert_eq!(after, before);
}

mod common;

/// Before switching, the MongoDB server must answer (a real wire peer here):
/// the shell switched blindly and AMS then stopped at start-up.
#[test]
fn switch_checks_that_mongodb_answers_first() {
    let peer = common::MongoPeer::start(common::PeerOptions::default());
    let t = Tree::new();
    let db = format!("127.0.0.1:{}", peer.port);
    let out = t.run(&["mode", "cluster", &db, "--ip", "10.0.1.20", "--no-restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !peer.named("ping").is_empty(),
        "no ping reached MongoDB: {:?}",
        peer.commands()
    );
    assert_eq!(
        line(&red5(&t), "clusterdb.host"),
        format!("clusterdb.host=mongodb://{db}")
    );
}

#[test]
fn unreachable_mongodb_changes_nothing_within_the_deadline() {
    let t = Tree::new();
    let before = t.snapshot();
    let port = common::free_port();
    let start = Instant::now();
    let out = t.run(&[
        "mode",
        "cluster",
        &format!("127.0.0.1:{port}"),
        "--ip",
        "10.0.1.20",
        "--no-restart",
        "--db-timeout",
        "2s",
    ]);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("checking MongoDB before switching"), "{err}");
    assert!(err.contains("--skip-db-check"), "{err}");
    assert_eq!(t.snapshot(), before);
}

#[test]
fn rejected_credentials_change_nothing_and_stay_secret() {
    let peer = common::MongoPeer::start(common::PeerOptions {
        auth_fail: true,
        ..Default::default()
    });
    let t = Tree::new();
    let before = t.snapshot();
    let out = switch_as_ams(&t, &format!("127.0.0.1:{}", peer.port), "Wr0ng-s3cret");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.to_lowercase().contains("auth"), "{err}");
    assert!(!stderr(&out).contains("Wr0ng-s3cret"), "{}", stderr(&out));
    assert_eq!(t.snapshot(), before);
}

/// No password, the current one or the new one, in any output: the diff's
/// `-` lines show what the files hold now.
#[test]
fn dry_run_never_shows_the_configured_password() {
    let t = Tree::new();
    let pw1 = t.dir.path().join("pw1");
    let pw2 = t.dir.path().join("pw2");
    fs::write(&pw1, "old/p@ss:word\n").unwrap();
    fs::write(&pw2, "new-secret\n").unwrap();
    let with = |pw: &Path| {
        args(
            &["mode", "cluster", "10.0.1.5", "--mongo-user", "ams"],
            &["--mongo-password-file", pw.to_str().unwrap()],
        )
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let a1 = with(&pw1);
    let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
    let out = t.run(&args(&a1, NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    for next in [
        vec!["--dry-run", "mode", "standalone"],
        vec![
            "--dry-run",
            "mode",
            "cluster",
            "10.0.1.5",
            "--mongo-user",
            "ams",
            "--mongo-password-file",
            pw2.to_str().unwrap(),
        ],
        vec!["--dry-run", "mode", "cluster", "mongodb://u:a%5Cb@h"],
    ] {
        let out = t.run(&args(&next, NO_RESTART));
        assert!(out.status.success(), "{next:?}: {}", stderr(&out));
        let all = format!("{}{}", stdout(&out), stderr(&out));
        for leak in [
            "old%2Fp%40ss%3Aword",
            "old/p@ss:word",
            "new-secret",
            "a%5Cb",
        ] {
            assert!(!all.contains(leak), "{next:?} printed {leak}: {all}");
        }
        assert!(
            all.contains("-clusterdb.host=mongodb://ams:****@10.0.1.5:27017"),
            "{all}"
        );
    }
}

#[test]
fn malformed_credentials_and_options_are_refused_without_echoing_them() {
    let t = Tree::new();
    let before = t.snapshot();
    for (db, needle) in [
        ("mongodb://u:se/cret@h", "unescaped '/' or '?'"),
        ("mongodb://u:se?cret@h", "unescaped '/' or '?'"),
        ("mongodb://u:se\\cret@h", "unescaped '\\'"),
        (
            "redis://default:se/cret@redis.internal:6379",
            "unescaped '/' or '?'",
        ),
        ("rediss://default:se@cr@et@redis.internal:6379", "'@'"),
        (
            "mongodb://127.0.0.1:1/?tls=maybe",
            "not a valid MongoDB URI",
        ),
        (
            "mongodb://127.0.0.1:1/?authMechanism=BOGUS",
            "not a valid MongoDB URI",
        ),
    ] {
        let start = Instant::now();
        let out = t.run(&["mode", "cluster", db, "--ip", "10.0.1.20", "--no-restart"]);
        assert!(start.elapsed() < Duration::from_secs(5), "{db}");
        assert_eq!(out.status.code(), Some(2), "{db}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{db}: {err}");
        assert!(!err.contains("cret"), "{db} echoed: {err}");
    }
    assert_eq!(t.snapshot(), before);
}

#[test]
fn messages_name_the_password_variable_when_it_is_the_source() {
    let t = Tree::new();
    for a in [
        vec!["mode", "standalone", "--no-restart"],
        vec!["mode", "cluster", "mongodb://u:p@h", "--no-restart"],
        vec!["mode", "cluster", "redis://h:6379", "--no-restart"],
    ] {
        let out = t
            .command(&a)
            .env("AMS_AGENT_MONGO_PASSWORD", "x")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{a:?}");
        assert!(
            stderr(&out).contains("AMS_AGENT_MONGO_PASSWORD"),
            "{a:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn bad_waits_and_probe_urls_are_bad_input_before_anything_happens() {
    let t = Tree::new();
    let before = t.snapshot();
    for (extra, env_url, needle) in [
        (vec!["--wait", "0s"], None, "--ams-wait"),
        (vec!["--db-timeout", "0s"], None, "--mongo-wait"),
        (vec![], Some("https://localhost:5443/"), "AMS_AGENT_AMS_URL"),
    ] {
        let mut cmd = t.command(&args(
            &[
                "mode",
                "cluster",
                "10.0.1.5",
                "--ip",
                "10.0.1.20",
                "--skip-db-check",
            ],
            &extra,
        ));
        if let Some(u) = env_url {
            cmd.env("AMS_AGENT_AMS_URL", u);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
        assert!(error_line(&out).contains(needle), "{}", stderr(&out));
    }
    assert_eq!(t.snapshot(), before);
    assert!(t.systemctl_calls().is_empty());
}

/// Already switched: nothing to do, so MongoDB being down right now is no
/// reason to fail.
#[test]
fn no_database_check_when_there_is_nothing_to_do() {
    let t = Tree::new();
    let db = format!("127.0.0.1:{}", common::free_port());
    let out = t.run(&args(&["mode", "cluster", &db], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    let start = Instant::now();
    let out = t.run(&["mode", "cluster", &db, "--ip", "10.0.1.20", "--no-restart"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A crash before the commit point leaves temp files (which may hold a
/// password) beside the targets; the next switch removes them, even one to
/// another mode.
#[test]
fn temp_files_of_a_crashed_run_are_removed_by_the_next_one() {
    let t = Tree::new();
    let out = cluster_as_ams(&t, "secret\n")
        // Past the backups and the temp files, before the commit point.
        .env("AMS_AGENT_CRASH_AT", "19")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let temps = |t: &Tree| -> Vec<String> {
        t.snapshot()
            .into_keys()
            .filter(|k| k.ends_with(".ams-agent-tmp"))
            .collect()
    };
    assert!(temps(&t).len() >= 5, "{:?}", temps(&t));
    assert!(!t.path("var/lib/ams-agent/journal.json").exists());
    let out = t.run(&args(&["mode", "standalone"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(temps(&t), Vec::<String>::new());
}

/// In a container /etc/hosts is a bind mount that no rename can replace:
/// the switch leaves it to the runtime (with a warning) instead of failing
/// after its commit point; a bind-mounted config file is refused up front.
#[test]
fn bind_mounted_files_are_never_renamed_over() {
    if !needs_root("a bind mount") {
        return;
    }
    private_mount_namespace();
    let t = Tree::new();
    let outside = t.dir.path().join("hosts-from-runtime");
    fs::write(&outside, "127.0.0.1 localhost\n").unwrap();
    let hosts = t.path("etc/hosts");
    let _hosts_mount = bind_mount(&outside, &hosts);
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/etc/hosts is a mount"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read_to_string(&outside).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert!(line(&red5(&t), "clusterdb.host").contains("10.0.1.5"));

    let red5_path = t.path(&format!("{AMS}/conf/red5.properties"));
    let red5_outside = t.dir.path().join("red5-from-volume");
    fs::copy(&red5_path, &red5_outside).unwrap();
    let _red5_mount = bind_mount(&red5_outside, &red5_path);
    let before = t.snapshot();
    let out = t.run(&args(&["mode", "standalone"], NO_RESTART));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(error_line(&out).contains("mount point"), "{}", stderr(&out));
    assert_eq!(t.snapshot(), before);
}

/// Without an `antmedia` account, tightening the modes could lock AMS out of
/// its own configuration: the modes stay, with a warning.
#[test]
fn without_the_ams_account_modes_are_kept_and_the_operator_warned() {
    let t = Tree::new();
    fs::remove_file(t.path("etc/passwd")).unwrap();
    let rel = format!("{AMS}/conf/red5.properties");
    let before = fs::metadata(t.path(&rel)).unwrap().mode() & 0o7777;
    let out = cluster_as_ams(&t, "secret\n").output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no `antmedia` account"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::metadata(t.path(&rel)).unwrap().mode() & 0o7777, before);
}

/// An immutable or append-only file cannot be renamed over: found before
/// the commit point, so the node is never left half switched.
#[test]
fn immutable_files_are_found_before_anything_changes() {
    if !needs_root("chattr +i") {
        return;
    }
    let t = Tree::new();
    let locked = t.path(&format!(
        "{AMS}/webapps/WebRTCAppEE/WEB-INF/red5-web.properties"
    ));
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(&locked)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        skip_unless_ci("this filesystem has no inode flags (chattr +i failed)");
        return;
    }
    let before = t.snapshot();
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    chattr("-i");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("immutable") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(t.snapshot(), before);
    assert!(!t.path("var/lib/ams-agent/journal.json").exists());
}

#[test]
fn a_bind_mounted_application_file_is_refused_up_front() {
    if !needs_root("a bind mount") {
        return;
    }
    private_mount_namespace();
    let t = Tree::new();
    let app = t.path(&format!(
        "{AMS}/webapps/LiveApp/WEB-INF/red5-web.properties"
    ));
    let outside = t.dir.path().join("liveapp-from-volume");
    fs::copy(&app, &outside).unwrap();
    let _mount = bind_mount(&outside, &app);
    assert_switch_refused(&t, 1, "mount point");
}

/// The old shell wrote `clusterdb.password=<plain text>`: switching away
/// from it with --dry-run must not print it either.
#[test]
fn dry_run_never_shows_plaintext_passwords_left_by_the_shell() {
    let t = Tree::new();
    let red5 = t.path(&format!("{AMS}/conf/red5.properties"));
    let text = fs::read_to_string(&red5)
        .unwrap()
        .replace("clusterdb.password=", "clusterdb.password=hunter2");
    fs::write(&red5, text).unwrap();
    let app = t.path(&format!(
        "{AMS}/webapps/LiveApp/WEB-INF/red5-web.properties"
    ));
    let text = fs::read_to_string(&app)
        .unwrap()
        .replace("db.password=", "db.password=hunter2");
    fs::write(&app, text).unwrap();
    let out = t.run(&args(
        &["--dry-run", "mode", "cluster", "10.0.1.5"],
        NO_RESTART,
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("-clusterdb.password=****"), "{text}");
}

/// A symlinked /etc/hosts or configuration file is changed where it lives;
/// the link stays a link.
#[test]
fn symlinked_files_are_changed_where_they_live() {
    let t = Tree::new();
    fs::create_dir_all(t.path("srv")).unwrap();
    for (link, target, rel_target) in [
        ("etc/hosts", "srv/hosts", "../srv/hosts"),
        (
            "usr/local/antmedia/conf/red5.properties",
            "srv/red5.properties",
            "../../../../srv/red5.properties",
        ),
    ] {
        fs::rename(t.path(link), t.path(target)).unwrap();
        std::os::unix::fs::symlink(rel_target, t.path(link)).unwrap();
    }
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(out.status.success(), "{}", stderr(&out));
    for (link, target) in [
        ("etc/hosts", "srv/hosts"),
        (
            "usr/local/antmedia/conf/red5.properties",
            "srv/red5.properties",
        ),
    ] {
        assert!(
            fs::symlink_metadata(t.path(link))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{link} is no longer a link"
        );
        let _ = target;
    }
    assert!(t.read("srv/hosts").contains("10.0.1.20\tip-10-0-1-20"));
    assert!(
        t.read("srv/red5.properties")
            .contains("clusterdb.host=mongodb://10.0.1.5:27017")
    );
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));
}

/// Two runs never interleave: the second waits for the first's lock.
#[test]
fn a_second_run_waits_for_the_first() {
    let t = Tree::new();
    fs::create_dir_all(t.path("var/lib/ams-agent")).unwrap();
    let lock = t.path("var/lib/ams-agent/lock");
    let mut holder = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    let waited = start.elapsed();
    holder.wait().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        waited >= Duration::from_millis(900),
        "did not wait: {waited:?}"
    );
    assert!(
        stderr(&out).contains("waiting for another ams-agent run"),
        "{}",
        stderr(&out)
    );
}

/// LDAP logins (`authMechanism=PLAIN`) need the password when the URI is
/// parsed: the login must reach the server, not fail locally with
/// "no password provided".
#[test]
fn a_plain_login_reaches_the_server_with_its_password() {
    let peer = common::MongoPeer::start(common::PeerOptions::default());
    let t = Tree::new();
    let uri = format!(
        "mongodb://127.0.0.1:{}/?authMechanism=PLAIN&authSource=$external",
        peer.port
    );
    let out = switch_as_ams(&t, &uri, "ldap-pw");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("No password"), "{err}");
    assert!(!stderr(&out).contains("ldap-pw"), "{}", stderr(&out));
    let logins = peer.named("saslStart");
    assert!(
        logins.iter().any(|c| c.to_string().contains("PLAIN")),
        "no PLAIN login reached the server: {:?}",
        peer.commands()
    );
}

/// `mode cluster <db>` as user `ams` with `password` from the environment,
/// with the MongoDB check on.
fn switch_as_ams(t: &Tree, db: &str, password: &str) -> std::process::Output {
    t.command(&[
        "mode",
        "cluster",
        db,
        "--mongo-user",
        "ams",
        "--ip",
        "10.0.1.20",
        "--no-restart",
        "--db-timeout",
        "5s",
    ])
    .env("AMS_AGENT_MONGO_PASSWORD", password)
    .output()
    .unwrap()
}

/// An application whose `WEB-INF/red5-web.properties` cannot be examined
/// (a dangling symlink, a symlink loop, a folder the agent cannot enter) is
/// not "no application": the switch fails before anything changes, naming
/// the path, instead of leaving that application in its old mode.
#[test]
fn an_application_that_cannot_be_examined_fails_the_switch_naming_it() {
    use std::os::unix::fs::symlink;
    let props = |app: &str| format!("{AMS}/webapps/{app}/WEB-INF/red5-web.properties");
    type Breaker = fn(&Tree, &str);
    let cases: [(&str, Breaker); 3] = [
        ("dangling", |t, p| {
            fs::remove_file(t.path(p)).unwrap();
            symlink("/nonexistent/red5-web.properties", t.path(p)).unwrap();
        }),
        ("loop", |t, p| {
            fs::remove_file(t.path(p)).unwrap();
            symlink("red5-web.properties", t.path(p)).unwrap();
        }),
        ("dangling WEB-INF", |t, p| {
            let web_inf = t.path(p);
            let web_inf = web_inf.parent().unwrap();
            fs::remove_dir_all(web_inf).unwrap();
            symlink("/nonexistent/WEB-INF", web_inf).unwrap();
        }),
    ];
    for (what, break_it) in cases {
        let t = Tree::new();
        let p = props("LiveApp");
        break_it(&t, &p);
        let before = t.snapshot();
        let out = t.run(&args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        let err = error_line(&out);
        assert!(err.contains("webapps/LiveApp/WEB-INF"), "{what}: {err}");
        assert!(!stdout(&out).contains("cluster mode"), "{what}");
        assert_eq!(t.snapshot(), before, "{what}: files changed");
        assert!(!t.path("var/lib/ams-agent/journal.json").exists());
    }

    // A folder the agent cannot enter (as an unprivileged user: root
    // ignores permission bits).
    let t = Tree::new();
    let locked = t.path(&format!("{AMS}/webapps/WebRTCAppEE/WEB-INF"));
    if nix::unistd::geteuid().is_root() {
        std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(t.dir.path())
            .status()
            .unwrap();
    }
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    let before = t.snapshot();
    let out = unprivileged(&t, &args(&["mode", "cluster", "10.0.1.5"], NO_RESTART));
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = error_line(&out);
    assert!(
        err.contains("webapps/WebRTCAppEE/WEB-INF/red5-web.properties")
            && err.contains("ermission denied"),
        "{err}"
    );
    assert_eq!(t.snapshot(), before, "files changed");
}
