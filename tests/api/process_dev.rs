//! `dev` on a machine where nothing runs: a working receiver, a printed psql line that
//! shows what arrived, and data that survives a restart.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::payload;
use singapay_webhooks::embedded_pg::free_port;

pub struct Dev {
    pub child: Child,
    /// The port it listens on, chosen by `start_dev`.
    pub port: u16,
    /// Where dev's stderr (its logs) goes, shown when something fails.
    pub log: std::path::PathBuf,
    pub secret: String,
    pub psql_url: String,
    /// The banner's `send` line and `receiver` URL, as printed.
    pub send_line: String,
    pub receiver: String,
    data_dir: std::path::PathBuf,
}

/// A test that fails (panics) with dev running must not leave dev, or the PostgreSQL it
/// started, behind: SIGTERM, then SIGKILL, then the cluster's postmaster itself.
impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let pid_file = self.data_dir.join("postgres").join("data").join("postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|t| t.lines().next().map(str::to_owned)) {
            let _ = Command::new("kill").arg("-QUIT").arg(pid.trim()).status();
        }
    }
}

/// Starts `dev` on a free port. The port is chosen before dev starts, so another process
/// may take it first: dev then refuses to start ("cannot bind") and another port is tried.
pub fn start_dev(data_dir: &std::path::Path) -> Dev {
    for _ in 0..5 {
        if let Some(dev) = try_start_dev(data_dir, free_port().unwrap()) {
            return dev;
        }
    }
    panic!("dev found no free port in 5 tries");
}

fn try_start_dev(data_dir: &std::path::Path, port: u16) -> Option<Dev> {
    let log = data_dir.with_file_name(format!("dev-{port}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_singapay-webhooks"))
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        // Its parent is the test's own directory: a `.env` in the checkout is not dev's.
        .current_dir(data_dir.parent().unwrap())
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        // Not the admin listener's fixed default port: tests run side by side.
        .env("ADMIN_LISTEN_ADDR", "off")
        .env("LOG_FORMAT", "text")
        .env_remove("SINGAPAY_WEBHOOK_SECRETS")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("run dev");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining after the caller has what it needs: dev's stdout stays open.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut secret, mut psql_url, mut send_line, mut receiver) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(120);
    while secret.is_none() || psql_url.is_none() || send_line.is_none() || receiver.is_none() {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(e) => {
                // Its stdout closed (it exited) or it printed nothing in time.
                let _ = child.kill();
                let _ = child.wait();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("cannot bind") {
                    return None;
                }
                panic!("dev did not print its secret and psql line ({e}): {text}");
            }
        };
        if let Some(rest) = line.trim().strip_prefix("secret   : SINGAPAY_WEBHOOK_SECRETS=dev=") {
            secret = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("psql     : psql ") {
            psql_url = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("send     : ") {
            send_line = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("receiver : ") {
            receiver = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    Some(Dev {
        child,
        port,
        log,
        secret: secret.unwrap(),
        psql_url: psql_url.unwrap(),
        send_line: send_line.unwrap(),
        receiver: receiver.unwrap(),
        data_dir: data_dir.to_owned(),
    })
}

pub fn stop_dev(mut dev: Dev) {
    let status = Command::new("kill").arg("-TERM").arg(dev.child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(exit) = dev.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(&dev.log).unwrap_or_default();
            assert!(exit.success(), "dev exits cleanly on SIGTERM: {exit}\n{log}");
            return;
        }
        assert!(Instant::now() < deadline, "dev did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql").arg(url).args(["-At", "-c", sql]).output().expect("psql runs");
    assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_brings_up_a_working_receiver_whose_rows_psql_can_see() {
    let dir = tempfile::Builder::new().prefix("singapay-dev-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join(".data");
    let dev = start_dev(&data_dir);
    let port = dev.port;
    let status = crate::process::post_signed(port, &dev.secret, &payload("va-transaction")).await;
    assert_eq!(status, 200);
    let rows = psql(&dev.psql_url, "SELECT webhook_type, transaction_key, status FROM singapay.deliveries");
    assert_eq!(rows.trim(), "va-transaction|va:3211120260314091205518|succeeded");
    let (secret, url) = (dev.secret.clone(), dev.psql_url.clone());
    stop_dev(dev);

    // Restarted (on a fresh port: another test may have been handed the old one): same
    // secret, same data.
    let dev = start_dev(&data_dir);
    let port = dev.port;
    assert_eq!((dev.secret.as_str(), dev.psql_url.as_str()), (secret.as_str(), url.as_str()));
    assert_eq!(crate::process::post_signed(port, &dev.secret, &payload("disbursement")).await, 200);
    let n = psql(&dev.psql_url, "SELECT count(*) FROM singapay.deliveries");
    assert_eq!(n.trim(), "2");
    stop_dev(dev);
}

/// A `.env` meant for production (copied from `.env.example`: 0.0.0.0, placeholder
/// secrets, another database) in the directory dev runs from changes nothing: dev listens
/// where it was told, signs with its own secret, and the `send` line it prints, pasted into
/// a shell elsewhere (without the binary on PATH), stores a callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_ignores_a_dotenv_and_its_printed_send_line_works_when_pasted() {
    let dir = tempfile::Builder::new().prefix("singapay-dev-env-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example")).unwrap();
    assert!(example.contains("\nLISTEN_ADDR=0.0.0.0:8080"), "the example this test relies on changed");
    std::fs::write(dir.path().join(".env"), example).unwrap();
    let dev = start_dev(&dir.path().join(".data"));
    assert_eq!(dev.receiver, format!("http://127.0.0.1:{}/webhooks/singapay", dev.port));
    assert!(dev.secret.starts_with("dev_"), "{}", dev.secret);
    assert_eq!(crate::process::post_signed(dev.port, &dev.secret, &payload("va-transaction")).await, 200);

    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&dev.send_line)
        .current_dir(elsewhere.path())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {stdout} {}", dev.send_line, String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("-> 200"), "{stdout}");
    let n = psql(&dev.psql_url, "SELECT count(*) FROM singapay.deliveries WHERE webhook_type = 'va-transaction'");
    assert_eq!(n.trim(), "2");
    stop_dev(dev);
}
