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

/// docker-compose.yml as Debian's Compose reads it, with `.env.example` as `.env`: it
/// validates, and every secret (the Postgres password, DATABASE_URL, the Client Secrets,
/// the API's client secret) reaches its container as a mounted file named by a `*_FILE`
/// variable, never as a variable, and none is filled in from `.env`, even when `.env` holds
/// one. The admin port is published on the host's loopback only.
#[test]
fn the_compose_file_validates_with_every_secret_from_a_file() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo.join("docker-compose.yml"), dir.path().join("docker-compose.yml")).unwrap();
    let example = std::fs::read_to_string(repo.join(".env.example")).unwrap();
    // An operator who also put secrets into .env: compose must not pass them on.
    let leaked = "Leaked0Password";
    let dotenv = format!(
        "{example}\nPOSTGRES_PASSWORD={leaked}\nSINGAPAY_CLIENT_SECRET={leaked}\nSINGAPAY_WEBHOOK_SECRETS=default={leaked}\nDATABASE_URL=postgres://u:{leaked}@h/d\n"
    );
    std::fs::write(dir.path().join(".env"), dotenv).unwrap();
    let config = || {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("config").current_dir(dir.path());
        // Only .env speaks: nothing from the environment running the tests.
        for name in example.lines().filter_map(|l| l.trim_start_matches(['#', ' ']).split_once('=')).map(|(n, _)| n) {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                cmd.env_remove(name);
            }
        }
        for name in ["POSTGRES_PASSWORD", "SINGAPAY_CLIENT_SECRET", "SINGAPAY_WEBHOOK_SECRETS", "DATABASE_URL"] {
            cmd.env_remove(name);
        }
        let out = cmd.output().expect("docker-compose runs (scripts/test installs Debian's docker-compose)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = config();
    assert!(ok, "{err}");
    assert!(!out.contains(leaked), "a secret from .env reached the configuration:\n{out}");
    let parsed = &yaml_rust2::YamlLoader::load_from_str(&out).unwrap()[0];
    let services = &parsed["services"];
    for (service, name, variable) in [
        ("postgres", "postgres_password", "POSTGRES_PASSWORD_FILE"),
        ("singapay-webhooks", "database_url", "DATABASE_URL_FILE"),
        ("singapay-webhooks", "singapay_webhook_secrets", "SINGAPAY_WEBHOOK_SECRETS_FILE"),
        ("singapay-webhooks", "singapay_client_secret", "SINGAPAY_CLIENT_SECRET_FILE"),
    ] {
        let file = dir.path().join("secrets").join(name);
        assert_eq!(parsed["secrets"][name]["file"].as_str(), Some(file.to_str().unwrap()), "{name}");
        let mounted = services[service]["secrets"].as_vec().unwrap().iter().any(|s| s["source"].as_str() == Some(name));
        assert!(mounted, "{service} mounts {name}:\n{out}");
        let path = format!("/run/secrets/{name}");
        assert_eq!(services[service]["environment"][variable].as_str(), Some(path.as_str()), "{service} {variable}");
    }
    for (service, environment) in services.as_hash().unwrap() {
        for (name, _) in environment["environment"].as_hash().into_iter().flatten() {
            let name = name.as_str().unwrap();
            assert!(
                !["POSTGRES_PASSWORD", "DATABASE_URL", "SINGAPAY_WEBHOOK_SECRETS", "SINGAPAY_CLIENT_SECRET"]
                    .contains(&name),
                "{service:?} gets {name} as a variable"
            );
        }
    }
    let app = &services["singapay-webhooks"];
    assert_eq!(app["environment"]["ADMIN_LISTEN_ADDR"].as_str(), Some("0.0.0.0:9090"));
    let published: Vec<String> = app["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| match p.as_str() {
            // "127.0.0.1:9090:9090/tcp", as Compose 1.29 writes one bound to an address.
            Some(s) => {
                let parts: Vec<&str> = s.trim_end_matches("/tcp").split(':').collect();
                let host = if parts.len() == 3 { parts[0] } else { "*" };
                format!("{host}:{}", parts[parts.len() - 1])
            }
            None => format!("{}:{}", p["host_ip"].as_str().unwrap_or("*"), p["target"].as_i64().unwrap()),
        })
        .collect();
    assert!(published.contains(&"127.0.0.1:9090".to_owned()), "{published:?}");
    assert!(!published.contains(&"*:9090".to_owned()), "the admin port is not published publicly: {published:?}");
}

/// Behind an allowlist that leaves this host out, the public port refuses `/healthz` and
/// `/readyz` (and serves no `/metrics`); the admin listener answers all three, so the
/// image's HEALTHCHECK (`healthcheck --live`) and `healthcheck`, which ask it, pass. With
/// the admin listener off they would ask the public port, and be refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_allowlist_probes_use_the_admin_listener_and_the_healthcheck_passes() {
    let (db_url, _db) = crate::helpers::fresh_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let mut tries = 0;
    let (server, vars, admin) = loop {
        tries += 1;
        let (port, admin) = (
            singapay_webhooks::embedded_pg::free_port().unwrap(),
            singapay_webhooks::embedded_pg::free_port().unwrap(),
        );
        let vars = env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &secret),
            ("LISTEN_ADDR", &format!("0.0.0.0:{port}")),
            ("ADMIN_LISTEN_ADDR", &format!("127.0.0.1:{admin}")),
            ("ALLOWED_SOURCE_CIDRS", "192.0.2.0/24"),
            ("LOG_FORMAT", "json"),
        ]);
        let mut server = process::serve(&["serve"], &vars, port);
        let admin = format!("http://127.0.0.1:{admin}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                break Err(format!("({status}) {}", server.log_text()));
            }
            if reqwest::get(format!("{admin}/readyz")).await.is_ok_and(|r| r.status() == 200) {
                break Ok(());
            }
            assert!(Instant::now() < deadline, "not ready: {}", server.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match started {
            Ok(()) => break (server, vars, admin),
            Err(logs) if logs.contains("cannot bind") && tries < 5 => continue,
            Err(logs) => panic!("serve did not start: {logs}"),
        }
    };
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(r.status(), 403, "{path} on the public port");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "ip_not_allowed");
    }
    assert_eq!(reqwest::get(server.url("/metrics")).await.unwrap().status(), 404);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(reqwest::get(format!("{admin}{path}")).await.unwrap().status(), 200, "{path} on the admin port");
    }
    let (live, _, err) = process::run(&["healthcheck", "--live"], &vars).await;
    assert!(live, "the image's HEALTHCHECK: {err}");
    let (ready, _, err) = process::run(&["healthcheck"], &vars).await;
    assert!(ready, "{err}");
    let mut off = vars.clone();
    off.retain(|(k, _)| k != "ADMIN_LISTEN_ADDR");
    off.push(("ADMIN_LISTEN_ADDR".into(), "off".into()));
    let (refused, _, err) = process::run(&["healthcheck", "--live"], &off).await;
    assert!(!refused && err.contains("403"), "{err}");
    // The refused probes are logged, once for the three (at most one line a minute).
    let refusals = server.logs.lock().unwrap().iter().filter(|l| l.contains("outside ALLOWED_SOURCE_CIDRS")).count();
    assert_eq!(refusals, 1, "{}", server.log_text());
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
