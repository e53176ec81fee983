//! The `azotte` binary itself: defaults, configuration errors, database down, shutdown.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

fn azotte() -> Command {
    // A scratch working directory, so a generated ./azotte-data/ never lands in the source tree.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!("azotte-cli-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_azotte"));
    c.current_dir(&scratch);
    // Whatever the developer's shell exports must not leak into these tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("AZOTTE_") {
            c.env_remove(k);
        }
    }
    c.env("AZOTTE_LOG_FORMAT", "json");
    c
}

#[test]
fn help_lists_the_commands() {
    let out = azotte().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["serve", "migrate", "init", "openapi", "--config"] {
        assert!(text.contains(cmd), "{cmd} in --help: {text}");
    }
}

#[test]
fn database_down_at_start_is_a_clear_error() {
    let out = azotte()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("AZOTTE_DATABASE_URL", "postgres://azotte:hunter2@127.0.0.1:1/azotte")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the database at postgres://azotte:***@127.0.0.1:1/azotte"), "{err}");
    assert!(!err.contains("hunter2"), "the password is never printed: {err}");
}

#[test]
fn bad_configuration_names_the_key() {
    let out = azotte().args(["serve"]).env("AZOTTE_BODY_LIMIT_BYTES", "lots").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("body_limit_bytes (from AZOTTE_BODY_LIMIT_BYTES)"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azotte.toml");
    std::fs::write(&file, "listen = 8080\n").unwrap();
    let out = azotte().args(["serve", "--config", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid configuration: listen"));

    let out = azotte().args(["serve", "--listen", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen (from command line)"));
}

#[test]
fn serve_with_no_configuration_uses_sqlite_under_azotte_data_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = azotte()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut logs = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "server exited early: {logs}");
        logs.push_str(&line);
        if line.contains("azotte listening") {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    assert!(dir.path().join("azotte-data/azotte.db").exists(), "database created under ./azotte-data/");

    let resp = reqwest::blocking_get(&format!("http://{addr}/readyz"));
    assert!(resp.contains("\"sqlite\""), "{resp}");

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = wait_with_timeout(&mut child, Duration::from_secs(20));
    assert_eq!(exit, Some(0), "graceful exit on SIGTERM");
    stderr.read_to_string(&mut logs).unwrap();
    assert!(logs.contains("workers stopped") && logs.contains("azotte stopped"), "{logs}");

    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let secret =
        stdout.split_whitespace().find(|w| w.starts_with("azboot_")).expect("bootstrap secret printed");
    assert!(!logs.contains(secret), "the bootstrap secret is never logged");

    // A second start on the same data neither prints a new secret nor fails.
    let out = azotte().args(["init"]).current_dir(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already initialised"));
}

#[test]
fn migrate_and_init_on_a_fresh_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/x/azotte.db", dir.path().display());
    let out = azotte().arg("migrate").env("AZOTTE_DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = azotte().arg("init").env("AZOTTE_DATABASE_URL", &url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("azboot_"));
}

fn wait_with_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

mod reqwest {
    /// A minimal blocking GET over a plain TCP socket (the test client is async).
    pub fn blocking_get(url: &str) -> String {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap();
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}
