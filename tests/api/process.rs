//! The real binary as a child process: what a container runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_singapay-webhooks");

pub struct Server {
    pub child: Child,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

/// `program` (the binary, or a wrapper such as `prlimit`) with exactly `env` plus PATH,
/// in a working directory without a `.env` (a developer's `.env` in the checkout must not
/// configure the processes under test), and without the shutdown drain unless `env` asks
/// for one (tests stop servers with SIGTERM and expect them gone at once).
pub fn command(program: &str, env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SHUTDOWN_DRAIN_SECS", "0")
        // Nor the admin listener's fixed default port (tests run side by side): /metrics on
        // LISTEN_ADDR, behind the allowlist, unless `env` gives ADMIN_LISTEN_ADDR.
        .env("ADMIN_LISTEN_ADDR", "off")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(std::env::temp_dir());
    cmd
}

/// Runs the binary with exactly `env` (see [`command`]).
pub fn spawn(args: &[&str], env: &[(String, String)]) -> Child {
    command(BIN, env).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run the binary")
}

pub fn serve(args: &[&str], env: &[(String, String)], port: u16) -> Server {
    let mut child = spawn(args, env);
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = child.stderr.take().unwrap();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Server { child, logs, port }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub async fn wait_ready(&mut self) {
        if let Err(logs) = self.try_wait_ready().await {
            panic!("server exited early: {logs}");
        }
    }

    /// Waits until `/readyz` answers 200; `Err(logs)` when the process exits first.
    pub async fn try_wait_ready(&mut self) -> Result<(), String> {
        self.try_wait_for("/readyz").await
    }

    /// Waits until `path` answers 200; `Err(logs)` when the process exits first.
    pub async fn try_wait_for(&mut self, path: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("({status}) {}", self.log_text()));
            }
            if let Ok(r) = reqwest::get(self.url(path)).await {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            assert!(Instant::now() < deadline, "not ready: {:#?}", self.logs.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "did not exit within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// Runs the binary on a free port and waits until it is ready. A port is chosen before the
/// process starts, so another process may take it first: then the binary refuses to start
/// ("cannot bind") and this tries again with other ports. `vars` builds the environment for
/// a port (and may pick more ports itself, e.g. for ADMIN_LISTEN_ADDR).
pub async fn serve_ready(
    args: &[&str],
    vars: impl Fn(u16) -> Vec<(String, String)>,
) -> (Server, Vec<(String, String)>) {
    serve_until(args, vars, "/readyz").await
}

/// As [`serve_ready`], but waits only for `/healthz` (the process answers): for a server
/// that is not meant to be ready.
pub async fn serve_live(args: &[&str], vars: impl Fn(u16) -> Vec<(String, String)>) -> (Server, Vec<(String, String)>) {
    serve_until(args, vars, "/healthz").await
}

async fn serve_until(
    args: &[&str],
    vars: impl Fn(u16) -> Vec<(String, String)>,
    path: &str,
) -> (Server, Vec<(String, String)>) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = singapay_webhooks::embedded_pg::free_port().unwrap();
        let env = vars(port);
        let mut server = serve(args, &env, port);
        match server.try_wait_for(path).await {
            Ok(()) => return (server, env),
            Err(logs) if logs.contains("cannot bind") => last = logs,
            Err(logs) => panic!("server exited early: {logs}"),
        }
    }
    panic!("no free port in 5 tries: {last}");
}

/// `serve` on a new migrated database with a random secret and `extra` settings, ready.
/// Returns the server, its secret and the database.
pub async fn serve_fresh(extra: &[(&str, &str)]) -> (Server, String, sqlx::PgPool) {
    let (db_url, db) = crate::helpers::fresh_database().await;
    let secret = format!("cs_{}", crate::helpers::random_hex(8));
    let (server, _) = serve_ready(&["serve"], |port| {
        let listen = format!("127.0.0.1:{port}");
        let mut vars =
            env(&[("DATABASE_URL", &db_url), ("SINGAPAY_WEBHOOK_SECRETS", &secret), ("LISTEN_ADDR", &listen)]);
        vars.extend(env(extra));
        vars
    })
    .await;
    (server, secret, db)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs the binary to completion: (success, stdout, stderr).
pub async fn run(args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let mut cmd = command(BIN, env);
    cmd.args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().expect("run the binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// POSTs `body` to the receiver on `port`, signed with `secret` as Singapay signs; the status.
pub async fn post_signed(port: u16, secret: &str, body: &str) -> u16 {
    let ts = crate::helpers::now().to_string();
    let sig = crate::helpers::sign_php(secret, "/webhooks/singapay", "dev-token", body, &ts);
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks/singapay"))
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", "Bearer dev-token")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
