//! Deploying behind a load balancer: a schema that is not there yet, probes during a
//! Postgres outage, the SIGTERM drain, and the compose file as Compose reads it.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{empty_database, now, payload, random_hex, sign_php};
use crate::process::{self, env, Server};

/// POSTs `body` signed with `secret`: (status, Retry-After, Connection, body).
async fn post(client: &reqwest::Client, base: &str, secret: &str, body: &str) -> reqwest::Result<Reply> {
    let ts = now().to_string();
    let token = random_hex(6);
    let r = client
        .post(format!("{base}/webhooks/singapay"))
        .header("x-signature", sign_php(secret, "/webhooks/singapay", &token, body, &ts))
        .header("x-timestamp", &ts)
        .header("authorization", format!("Bearer {token}"))
        .body(body.to_owned())
        .send()
        .await?;
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (retry_after, connection) = (header("retry-after"), header("connection"));
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await?;
    Ok(Reply { status, retry_after, connection, body })
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    connection: Option<String>,
    body: serde_json::Value,
}

fn va(id: &str) -> String {
    payload("va-transaction").replace("3211120260314091205518", id)
}

fn lines_with(server: &Server, needle: &str) -> usize {
    server.logs.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
}

/// `serve` without `--migrate` on an empty database: not ready, and every callback is
/// answered 503 `storage_unavailable` with Retry-After — never 500, nothing half-written —
/// with one line at start and one (not one per callback) while they arrive. Once `migrate`
/// has run, the same process stores callbacks without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrations_callbacks_get_503_and_are_stored_once_migrate_runs() {
    let (db_url, db) = empty_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let (server, _) = process::serve_live(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &secret),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ])
    })
    .await;
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["error"]["code"], "migrations_pending", "{ready}");

    let client = reqwest::Client::new();
    for i in 0..3 {
        let r = post(&client, &server.url(""), &secret, &va(&format!("NOSCHEMA-{i}"))).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "storage_unavailable", "{}", r.body);
        assert!(r.retry_after.is_some_and(|s| s.parse::<u64>().is_ok()), "Retry-After is a number of seconds");
    }
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'singapay'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(schemas, 0, "nothing was created behind the operator's back");
    let logs = server.log_text();
    assert_eq!(lines_with(&server, "database migrations are pending"), 1, "{logs}");
    assert_eq!(lines_with(&server, "schema is missing or behind"), 1, "once, not per callback: {logs}");
    // Each callback still has its own line, as a 503, never a 500.
    assert_eq!(lines_with(&server, "\"code\":\"storage_unavailable\""), 3, "{logs}");
    assert_eq!(lines_with(&server, "\"code\":\"internal\""), 0, "{logs}");

    let (ok, _, err) = process::run(&["migrate"], &env(&[("DATABASE_URL", &db_url)])).await;
    assert!(ok, "{err}");
    let r = post(&client, &server.url(""), &secret, &va("NOSCHEMA-0")).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(reqwest::get(server.url("/readyz")).await.unwrap().status(), 200);
}

/// While Postgres is away the image's HEALTHCHECK (`healthcheck --live`) passes, so the
/// container is not restarted, while readiness fails; repeated probes log one WARN line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_passes_and_probes_warn_once_while_postgres_is_away() {
    let closed = singapay_webhooks::embedded_pg::free_port().unwrap();
    let (server, vars) = process::serve_live(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &format!("postgres://nobody@127.0.0.1:{closed}/none")),
            ("SINGAPAY_WEBHOOK_SECRETS", "abcdefghijklmnopqrstuvwx"),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ])
    })
    .await;
    for _ in 0..3 {
        let r = reqwest::get(server.url("/readyz")).await.unwrap();
        assert_eq!(r.status(), 503);
    }
    let (live, _, err) = process::run(&["healthcheck", "--live"], &vars).await;
    assert!(live, "liveness during an outage: {err}");
    let (ready, _, _) = process::run(&["healthcheck"], &vars).await;
    assert!(!ready, "readiness fails during an outage");
    let logs = server.log_text();
    assert_eq!(lines_with(&server, "not ready"), 1, "one line for three failed probes: {logs}");
    let warn = server.logs.lock().unwrap().iter().find(|l| l.contains("not ready")).cloned().unwrap();
    assert!(warn.contains("\"level\":\"WARN\"") && warn.contains("storage_unavailable"), "{warn}");
    assert_eq!(lines_with(&server, "\"level\":\"ERROR\""), 0, "{logs}");
}

/// A rolling deploy: callbacks arrive continuously while the server gets SIGTERM. `/readyz`
/// turns 503 at once; callbacks are still answered 200 through the drain, their responses
/// closing the connection; every callback answered 200 is stored exactly once with its
/// queue row; the process exits within the drain plus the shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_with_readiness_off_and_loses_no_answered_callback() {
    const DRAIN: Duration = Duration::from_secs(3);
    const TIMEOUT: Duration = Duration::from_secs(5);
    let (mut server, secret, db) =
        process::serve_fresh(&[("SHUTDOWN_DRAIN_SECS", "3"), ("SHUTDOWN_TIMEOUT_SECS", "5")]).await;
    let server_url = server.url("");
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::default();
    // (transaction id, status, when answered relative to SIGTERM, Connection header)
    type Answer = (String, u16, Option<Duration>, Option<String>);
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let senders: Vec<_> = (0..4)
        .map(|c| {
            let (secret, answers, signalled) = (secret.clone(), answers.clone(), signalled.clone());
            let base = server_url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for n in 0.. {
                    let id = format!("DRAIN-{c}-{n}");
                    let result = post(&client, &base, &secret, &va(&id)).await;
                    let since = signalled.lock().unwrap().map(|t| t.elapsed());
                    match result {
                        Ok(r) => answers.lock().unwrap().push((id, r.status, since, r.connection)),
                        // The listener has closed: the drain is over.
                        Err(_) if since.is_some() => break,
                        Err(e) => panic!("before SIGTERM: {e}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    *signalled.lock().unwrap() = Some(Instant::now());
    let t0 = Instant::now();
    server.signal("TERM");
    loop {
        let r = reqwest::get(server.url("/readyz")).await.expect("still listening while draining");
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "shutting_down", "{body}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_millis(500), "/readyz still 200 {:?} after SIGTERM", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = server.wait_exit(DRAIN + TIMEOUT + Duration::from_secs(3)).await;
    assert!(status.success(), "{status}: {}", server.log_text());
    let exited = t0.elapsed();
    assert!(exited >= DRAIN, "exited after {exited:?}, before the drain ended");
    for s in senders {
        s.await.unwrap();
    }

    let answers = answers.lock().unwrap().clone();
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.1 == 200).collect();
    assert!(answers.iter().all(|a| a.1 == 200), "every answer was 200: {:?}", answers.iter().find(|a| a.1 != 200));
    let late = ok.iter().filter(|a| a.2.is_some_and(|d| d > DRAIN - Duration::from_millis(500))).count();
    assert!(late > 0, "callbacks were answered 200 until the end of the drain");
    let drained: Vec<&&Answer> = ok.iter().filter(|a| a.2.is_some_and(|d| d > Duration::from_millis(200))).collect();
    assert!(
        !drained.is_empty() && drained.iter().all(|a| a.3.as_deref() == Some("close")),
        "responses during the drain close their connection"
    );
    let before = ok.iter().filter(|a| a.2.is_none()).count();
    assert!(before > 0 && drained.len() > 10, "{before} before SIGTERM, {} during the drain", drained.len());

    for (id, ..) in &ok {
        let key = format!("va:{id}");
        let (deliveries, events): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM singapay.deliveries WHERE transaction_key = $1),
                    (SELECT count(*) FROM singapay.transaction_events WHERE transaction_key = $1)",
        )
        .bind(&key)
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!((deliveries, events), (1, 1), "{key} was answered 200");
    }
}

/// docker-compose.yml as Debian's Compose reads it: refused while `.env` still holds the
/// placeholders of `.env.example`; with the password set and the Client Secrets in a file,
/// it validates, and the secrets reach the receiver as a mounted file, never as a variable.
#[test]
fn the_compose_file_validates_with_secrets_from_files_and_refuses_placeholders() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("docker-compose.yml"), dir.path().join("docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(repo.join(".env.example")).unwrap();
    std::fs::write(dir.path().join(".env"), &example).unwrap();
    let config = || {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("config").current_dir(dir.path());
        // Only .env speaks: nothing from the environment running the tests.
        for name in example.lines().filter_map(|l| l.trim_start_matches(['#', ' ']).split_once('=')).map(|(n, _)| n) {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                cmd.env_remove(name);
            }
        }
        let out = cmd.output().expect("docker-compose runs (scripts/test installs Debian's docker-compose)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = config();
    assert!(!ok, "the placeholders are refused");
    assert!(err.contains("POSTGRES_PASSWORD"), "{err}");

    let filled = example.replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=Compose0Password\n");
    assert_ne!(filled, example, ".env.example leaves POSTGRES_PASSWORD empty");
    std::fs::write(dir.path().join(".env"), filled).unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/singapay_webhook_secrets"), "default=cs_0123456789abcdef\n").unwrap();
    let (ok, out, err) = config();
    assert!(ok, "{err}");
    let secrets_file = dir.path().join("secrets/singapay_webhook_secrets");
    for expected in [
        "SINGAPAY_WEBHOOK_SECRETS_FILE: /run/secrets/singapay_webhook_secrets".to_owned(),
        format!("file: {}", secrets_file.display()),
        "DATABASE_URL: postgres://singapay:Compose0Password@postgres:5432/singapay".to_owned(),
        "POSTGRES_PASSWORD: Compose0Password".to_owned(),
    ] {
        assert!(out.contains(&expected), "{expected} missing from:\n{out}");
    }
    assert!(!out.contains("SINGAPAY_WEBHOOK_SECRETS:"), "the secrets are not a variable:\n{out}");
}

/// A second signal during the drain ends it: an operator who means "now" is not made to
/// wait, and the process still stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_at_once() {
    let (mut server, _secret, _db) = process::serve_fresh(&[("SHUTDOWN_DRAIN_SECS", "60")]).await;
    server.signal("TERM");
    let started = Instant::now();
    loop {
        let r = reqwest::get(server.url("/readyz")).await.expect("listening while draining");
        if r.status() == 503 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "/readyz still 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {}", server.log_text());
    assert!(started.elapsed() < Duration::from_secs(10), "the 60 s drain was cut short");
    assert_eq!(lines_with(&server, "the drain ends now"), 1, "{}", server.log_text());
}
