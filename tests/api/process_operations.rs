//! Running it in production: the container's command, metrics, logs, shutdown.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use futures::future::join_all;
use yaml_rust2::{Yaml, YamlLoader};

use singapay_webhooks::embedded_pg::free_port;

use crate::helpers::{fresh_database, lock_waiters, metric, now, payload, random_hex, sign_php};
use crate::process::{self, env, Server};

fn repo_file(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

/// A JSON-array instruction (`CMD ["a", "b"]`) of the Dockerfile's last stage.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .rev()
        .find(|l| l.starts_with(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("Dockerfile has no {instruction}"));
    serde_json::from_str(line[instruction.len()..].trim()).expect("exec form (JSON array)")
}

/// `${VAR:-default}` → default; `${VAR:?message}` → what .env would supply.
fn resolve(value: &str, supplied: &HashMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        let expr = &rest[start + 2..end];
        let (name, fallback) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr.split(":?").next().unwrap(), None),
        };
        match (supplied.get(name), fallback) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => panic!("{name} must be supplied"),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The HEALTHCHECK's command (`CMD ["…", "healthcheck", …]`), its arguments after the binary.
fn healthcheck_args(dockerfile: &str) -> Vec<String> {
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let healthcheck = last_stage.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    let json = &healthcheck[healthcheck.find("CMD").expect("HEALTHCHECK … CMD [...]") + 3..];
    let command: Vec<String> = serde_json::from_str(json.trim()).expect("exec form (JSON array)");
    assert_eq!(command[0], "/usr/local/bin/singapay-webhooks");
    command[1..].to_vec()
}

/// The final stage's `ENV` instruction as (name, value) pairs (`ENV A=1 \\ B=2`).
fn image_env(dockerfile: &str) -> Vec<(String, String)> {
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let mut text = String::new();
    for line in last_stage.lines().skip_while(|l| !l.starts_with("ENV ")) {
        text.push_str(line.trim_end().trim_end_matches('\\'));
        text.push(' ');
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    let text = text.strip_prefix("ENV ").expect("the final stage sets ENV");
    text.split_whitespace()
        .map(|kv| kv.split_once('=').expect("ENV NAME=value"))
        .map(|(k, v)| (k.into(), v.into()))
        .collect()
}

/// The image as deployed: its command against an empty database (it migrates, then accepts
/// a callback), with the environment docker-compose.yml gives it (every secret from a
/// file), and its HEALTHCHECK, which asks the admin listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_runs_serve_with_the_compose_environment() {
    let dockerfile = repo_file("Dockerfile");
    // hadolint-style checks: pinned base images, a non-root user, a HEALTHCHECK without curl.
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_else(|| panic!("{image} has no tag"));
        assert_ne!(tag, "latest", "{from}");
    }
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = last_stage.lines().find(|l| l.starts_with("USER ")).expect("the final stage sets USER");
    let user_name = user["USER ".len()..].split(':').next().unwrap().trim();
    assert!(user_name != "root" && user_name != "0", "{user}");
    // Callbacks on 8080; /metrics, /healthz, /readyz on the admin listener, which the
    // image opens to the container network for the orchestrator's probes and scraper.
    assert!(last_stage.lines().any(|l| l == "EXPOSE 8080 9090"), "{last_stage}");
    let image_env = image_env(&dockerfile);
    let image_var = |name: &str| image_env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(image_var("LISTEN_ADDR"), Some("0.0.0.0:8080"));
    assert_eq!(image_var("ADMIN_LISTEN_ADDR"), Some("0.0.0.0:9090"));
    let healthcheck = last_stage.lines().skip_while(|l| !l.starts_with("HEALTHCHECK")).take(2).collect::<String>();
    assert!(healthcheck.contains("\"healthcheck\"") && !healthcheck.contains("curl"), "{healthcheck}");
    // Liveness: a Postgres outage or a drain must not get the container restarted.
    assert_eq!(healthcheck_args(&dockerfile), ["healthcheck", "--live"]);
    build_stage_loads_its_manifest(&dockerfile);
    let entrypoint = exec_form(&dockerfile, "ENTRYPOINT");
    assert_eq!(entrypoint, ["/usr/local/bin/singapay-webhooks"]);
    let command = exec_form(&dockerfile, "CMD");
    assert_eq!(command, ["serve", "--migrate"], "the image migrates by default");

    let compose = &YamlLoader::load_from_str(&repo_file("docker-compose.yml")).expect("compose parses")[0];
    let services = &compose["services"];
    let pg_check = services["postgres"]["healthcheck"]["test"][1].as_str().unwrap();
    assert!(pg_check.contains("pg_isready"));
    let app = &services["singapay-webhooks"];
    assert_eq!(app["depends_on"]["postgres"]["condition"].as_str(), Some("service_healthy"));
    assert!(app["command"].is_badvalue(), "compose runs the image's command");
    assert!(app["healthcheck"].is_badvalue(), "compose keeps the image's HEALTHCHECK");
    assert!(services["postgres"]["image"].as_str().unwrap().contains(':'));
    // The admin port is published on the host's loopback only; callbacks' port publicly.
    let ports: Vec<&str> = app["ports"].as_vec().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(ports, ["8080:8080", "127.0.0.1:9090:9090"]);
    // Every secret is a file under ./secrets, mounted where the service's *_FILE says.
    let secret_names = |service: &Yaml| -> Vec<String> {
        service["secrets"].as_vec().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(secret_names(&services["postgres"]), ["postgres_password"]);
    assert_eq!(secret_names(app), ["database_url", "singapay_webhook_secrets", "singapay_client_secret"]);
    for name in ["postgres_password", "database_url", "singapay_webhook_secrets", "singapay_client_secret"] {
        assert_eq!(compose["secrets"][name]["file"].as_str(), Some(format!("./secrets/{name}").as_str()));
    }
    assert_eq!(
        services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].as_str(),
        Some("/run/secrets/postgres_password")
    );
    assert!(services["postgres"]["environment"]["POSTGRES_PASSWORD"].is_badvalue());

    // The compose environment as the service would see it, with .env supplying nothing
    // secret. Only what cannot exist on this machine is replaced: where the secrets are
    // mounted (the database URL's file names an empty test database instead of the
    // `postgres` host), and the fixed ports.
    let (db_url, db) = crate::helpers::empty_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let secrets_dir = tempfile::tempdir().unwrap();
    let mounted = |name: &str, content: &str| {
        let path = secrets_dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let database_url_file = mounted("database_url", &format!("{db_url}\n"));
    let webhook_secrets_file = mounted("singapay_webhook_secrets", &format!("compose={secret}\n"));
    // Empty: reconciliation stays off.
    let client_secret_file = mounted("singapay_client_secret", "");
    // A drain of one second from .env, passed through like every other setting.
    let supplied = HashMap::from([("SHUTDOWN_DRAIN_SECS", "1")]);
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let (mut server, vars) = process::serve_ready(&args, |port| {
        let admin_port = free_port().unwrap();
        // The image's own ENV lines come first; compose's environment overrides them.
        let mut vars: Vec<(String, String)> = image_env.clone();
        let Yaml::Hash(environment) = &app["environment"] else { panic!("environment is a map") };
        for (k, v) in environment {
            let (k, v) = (k.as_str().unwrap(), resolve(v.as_str().unwrap(), &supplied));
            assert!(
                !["DATABASE_URL", "SINGAPAY_WEBHOOK_SECRETS", "SINGAPAY_CLIENT_SECRET"].contains(&k),
                "{k} is a plain variable: secrets come from files"
            );
            let v = match k {
                "DATABASE_URL_FILE" => {
                    assert_eq!(v, "/run/secrets/database_url");
                    database_url_file.clone()
                }
                "SINGAPAY_WEBHOOK_SECRETS_FILE" => {
                    assert_eq!(v, "/run/secrets/singapay_webhook_secrets");
                    webhook_secrets_file.clone()
                }
                "SINGAPAY_CLIENT_SECRET_FILE" => {
                    assert_eq!(v, "/run/secrets/singapay_client_secret");
                    client_secret_file.clone()
                }
                "LISTEN_ADDR" => v.replace(":8080", &format!(":{port}")),
                "ADMIN_LISTEN_ADDR" => {
                    assert_eq!(v, "0.0.0.0:9090");
                    v.replace(":9090", &format!(":{admin_port}"))
                }
                _ => v,
            };
            vars.retain(|(name, _)| name != k);
            vars.push((k.to_owned(), v));
        }
        vars
    })
    .await;
    let admin_port: u16 = vars
        .iter()
        .find(|(k, _)| k == "ADMIN_LISTEN_ADDR")
        .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .expect("compose sets ADMIN_LISTEN_ADDR");

    // The HEALTHCHECK command, with the same environment: it asks the admin listener.
    let health_args = healthcheck_args(&dockerfile);
    let health_args: Vec<&str> = health_args.iter().map(String::as_str).collect();
    let health = process::spawn(&health_args, &vars);
    let status = tokio::task::spawn_blocking(move || health.wait_with_output()).await.unwrap().unwrap();
    assert!(status.status.success(), "healthcheck: {}", String::from_utf8_lossy(&status.stderr));
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert_eq!(reqwest::get(server.url("/metrics")).await.unwrap().status(), 404, "metrics only on the admin port");
    let body = payload("va-transaction");
    let r = post(&server, &secret, &body, now()).await;
    assert_eq!(r, 200);
    let credential: String =
        sqlx::query_scalar("SELECT credential FROM singapay.deliveries").fetch_one(&db).await.unwrap();
    assert_eq!(credential, "compose", "the secret came from the mounted file");

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());
    // Once stopped, the healthcheck fails.
    let health = process::spawn(&health_args, &vars);
    let status = tokio::task::spawn_blocking(move || health.wait_with_output()).await.unwrap().unwrap();
    assert!(!status.status.success());
}

/// Replays the build stage's COPY steps into an empty directory (the first RUN's stub
/// sources included) and has Cargo load the manifest after each: a target Cargo.toml
/// declares but the image lacks fails here, not in `docker build`.
fn build_stage_loads_its_manifest(dockerfile: &str) {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = tempfile::tempdir().unwrap();
    // The first stage: from the first FROM up to the next.
    let build_stage: Vec<&str> = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("FROM "))
        .skip(1)
        .take_while(|l| !l.starts_with("FROM "))
        .collect();
    let mut runs = 0;
    for line in build_stage {
        if let Some(args) = line.strip_prefix("COPY ") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            let (dest, sources) = parts.split_last().unwrap();
            for src in sources {
                let to = if dest.ends_with('/') && sources.len() > 1 || *dest == "./" {
                    ctx.path().join(src)
                } else {
                    ctx.path().join(dest)
                };
                let status = Command::new("cp").arg("-r").arg(repo.join(src)).arg(&to).status().unwrap();
                assert!(status.success(), "COPY {src}");
            }
        } else if line.starts_with("RUN ") {
            runs += 1;
            if runs == 1 {
                // The dependency-caching step builds stub sources.
                std::fs::create_dir_all(ctx.path().join("src")).unwrap();
                std::fs::write(ctx.path().join("src/main.rs"), "fn main() {}").unwrap();
                std::fs::write(ctx.path().join("src/lib.rs"), "").unwrap();
            }
            // Asking for a binary that does not exist makes Cargo load and check every target
            // the manifest declares, then stop before compiling anything.
            let out = Command::new(env!("CARGO"))
                .args(["check", "--offline", "--bin", "manifest-check-only"])
                .current_dir(ctx.path())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("no bin target named `manifest-check-only`"),
                "before RUN #{runs}, cargo cannot load the manifest: {stderr}"
            );
        }
    }
    assert!(runs >= 2, "a dependency step and a build step");
}

async fn post(server: &Server, secret: &str, body: &str, ts: i64) -> u16 {
    post_as(server, secret, body, ts, &random_hex(6)).await.0
}

async fn post_as(server: &Server, secret: &str, body: &str, ts: i64, token: &str) -> (u16, String) {
    let ts = ts.to_string();
    let sig = sign_php(secret, "/webhooks/singapay", token, body, &ts);
    let r = reqwest::Client::new()
        .post(server.url("/webhooks/singapay"))
        .header("x-signature", &sig)
        .header("x-timestamp", &ts)
        .header("authorization", format!("Bearer {token}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), sig)
}

/// (name, sorted labels) → value.
type Series = HashMap<(String, Vec<(String, String)>), f64>;

/// Prometheus text → series.
fn parse_metrics(text: &str) -> Series {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut labels: Vec<(String, String)> = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_owned(), v.trim_matches('"').to_owned())
            })
            .collect();
        labels.sort();
        out.insert((name.to_owned(), labels), value.parse().unwrap());
    }
    out
}

fn get(m: &Series, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.sort();
    *m.get(&(name.to_owned(), l)).unwrap_or_else(|| panic!("no series {name}{labels:?}"))
}

struct MixedRun {
    server: Server,
    secret: String,
    signatures: Vec<String>,
    tokens: Vec<String>,
    admin_port: u16,
}

/// A server process (JSON logs at the most verbose level) and a known mix of callbacks.
async fn mixed_run() -> MixedRun {
    let (db_url, _db) = fresh_database().await;
    let secret = format!("cs_secret_{}", random_hex(12));
    let (server, vars) = process::serve_ready(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={secret}")),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
            ("ADMIN_LISTEN_ADDR", &format!("127.0.0.1:{}", free_port().unwrap())),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "trace"),
        ])
    })
    .await;
    let admin_port: u16 = vars
        .iter()
        .find(|(k, _)| k == "ADMIN_LISTEN_ADDR")
        .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
        .unwrap();
    let mut signatures = Vec::new();
    let mut tokens = Vec::new();
    let mut send = |body: String, ts: i64, with_secret: String| {
        let token = format!("tok_{}", random_hex(10));
        tokens.push(token.clone());
        (body, ts, with_secret, token)
    };
    let plan = vec![
        send(payload("va-transaction"), now(), secret.clone()), // stored
        send(payload("disbursement"), now(), secret.clone()),   // stored
        send(payload("va-transaction"), now() + 1, secret.clone()), // duplicate
        send(payload("qris-issuer"), now(), "wrong-secret".into()), // signature_invalid
        send(payload("ewallet-topup"), now() - 3600, secret.clone()), // stale_timestamp
    ];
    for (body, ts, with_secret, token) in plan {
        let (_, sig) = post_as(&server, &with_secret, &body, ts, &token).await;
        signatures.push(sig);
    }
    let client = reqwest::Client::new();
    // Missing headers, and the dashboard's Test ping.
    client.post(server.url("/webhooks/singapay")).body(payload("settlement")).send().await.unwrap();
    client
        .post(server.url("/webhooks/singapay"))
        .body(r#"{"status":200,"success":true,"data":"VA Payment Notification testing"}"#)
        .send()
        .await
        .unwrap();
    MixedRun { server, secret, signatures, tokens, admin_port }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_mixed_run() {
    let run = mixed_run().await;
    let text =
        reqwest::get(format!("http://127.0.0.1:{}/metrics", run.admin_port)).await.unwrap().text().await.unwrap();
    let m = parse_metrics(&text);
    let delivered = |t: &str| {
        get(&m, "singapay_deliveries_total", &[("webhook_type", t), ("outcome", "applied"), ("signature_form", "php")])
    };
    assert_eq!(delivered("va-transaction"), 1.0);
    assert_eq!(delivered("disbursement"), 1.0);
    assert_eq!(get(&m, "singapay_duplicates_total", &[("webhook_type", "va-transaction")]), 1.0);
    assert_eq!(get(&m, "singapay_rejections_total", &[("code", "signature_invalid")]), 1.0);
    assert_eq!(get(&m, "singapay_rejections_total", &[("code", "stale_timestamp")]), 1.0);
    assert_eq!(get(&m, "singapay_rejections_total", &[("code", "missing_signature_headers")]), 1.0);
    assert_eq!(get(&m, "singapay_test_pings_total", &[]), 1.0);
    assert_eq!(get(&m, "singapay_callback_duration_seconds_count", &[("result", "stored")]), 2.0);
    assert_eq!(get(&m, "singapay_callback_duration_seconds_count", &[("result", "rejected")]), 3.0);
    assert_eq!(get(&m, "singapay_storage_duration_seconds_count", &[]), 3.0);
    assert_eq!(get(&m, "singapay_queue_events", &[("state", "available")]), 2.0);
    assert_eq!(get(&m, "singapay_queue_events", &[("state", "dead")]), 0.0);
    assert_eq!(get(&m, "singapay_queue_due_events", &[]), 2.0);
    // Two due events, stored before the scrape: the oldest has waited a measurable time.
    assert!(get(&m, "singapay_queue_oldest_due_age_seconds", &[]) > 0.0);
    assert_eq!(get(&m, "singapay_db_pool_max_connections", &[]), 16.0);
    // The pool has opened connections (it stored callbacks) and never more than its size.
    let open = get(&m, "singapay_db_pool_connections", &[("state", "idle")])
        + get(&m, "singapay_db_pool_connections", &[("state", "in_use")]);
    assert!((1.0..=16.0).contains(&open), "{open} connections open");
    assert!(text.contains("# HELP singapay_deliveries_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_a_secret_signature_or_token() {
    let mut run = mixed_run().await;
    run.server.signal("TERM");
    assert!(run.server.wait_exit(Duration::from_secs(30)).await.success());
    let logs = run.server.log_text();
    assert!(logs.lines().count() > 20, "trace-level logs were captured");
    assert!(!logs.contains(&run.secret), "the secret leaked into the logs");
    for sig in &run.signatures {
        assert!(!logs.to_ascii_lowercase().contains(sig.as_str()), "a signature leaked into the logs");
    }
    for token in &run.tokens {
        assert!(!logs.contains(token.as_str()), "a bearer token leaked into the logs");
    }
    // Every line is JSON, and a stored callback's line carries the span's fields.
    let stored: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .filter(|l| l["message"] == "delivery stored" && l["span"]["duplicate"] == false)
        .collect();
    assert_eq!(stored.len(), 2);
    let span = &stored[0]["span"];
    assert_eq!(span["webhook_type"], "va-transaction");
    assert_eq!(span["transaction_key"], "va:3211120260314091205518");
    assert_eq!(span["outcome"], "applied");
    assert_eq!(span["signature_form"], "php");
    assert_eq!(span["credential"], "primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_200_callbacks_in_flight_loses_nothing() {
    let (db_url, db) = fresh_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let (mut server, vars) = process::serve_ready(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &secret),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
            ("DB_MAX_CONNECTIONS", "60"),
            ("LOG_FORMAT", "text"),
        ])
    })
    .await;
    let port = server.port;
    let body = |n: usize| {
        format!(
            r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"424242","transaction_status":{{"code":"03"}},"notes":"{n}"}}}}"#
        )
    };
    assert_eq!(post(&server, &secret, &body(0), now()).await, 200);

    // Hold a lock on the transactions table so all 200 callbacks stall inside their DB
    // transaction (a row lock no longer holds up a writer: it leaves that item for later).
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.transactions IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let requests: Vec<_> = (1..=200)
        .map(|n| {
            let (client, url, secret, body) =
                (client.clone(), server.url("/webhooks/singapay"), secret.clone(), body(n));
            tokio::spawn(async move {
                let ts = now().to_string();
                let token = format!("t{n}");
                let sig = sign_php(&secret, "/webhooks/singapay", &token, &body, &ts);
                let r = client
                    .post(url)
                    .header("x-signature", &sig)
                    .header("x-timestamp", &ts)
                    .header("authorization", format!("Bearer {token}"))
                    .body(body.clone())
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => Some((r.status().as_u16(), r.json::<serde_json::Value>().await.ok())),
                    Err(_) => None,
                };
                (body, ts, sig, token, answer)
            })
        })
        .collect();
    // Observed, not guessed: every callback is inside the receiver (taken by the writer
    // that waits on the lock, or queued behind it) before the signal...
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
        let inside = metric(&text, "singapay_intake_batch_size_sum") + metric(&text, "singapay_intake_queued");
        let waiting = lock_waiters(&db).await;
        if inside == 201.0 && waiting >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "callbacks inside: {inside}, lock waiters: {waiting}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal("TERM");
    // ...and the receiver has stopped accepting connections before the lock is released.
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.commit().await.unwrap();

    let results: Vec<_> = join_all(requests).await.into_iter().map(Result::unwrap).collect();
    assert!(server.wait_exit(Duration::from_secs(40)).await.success(), "exit 0 after SIGTERM");
    let mut answered_ok = 0;
    let mut unanswered = Vec::new();
    for (body, ts, sig, token, answer) in &results {
        match answer {
            Some((200, Some(json))) => {
                answered_ok += 1;
                let id = json["delivery_id"].as_i64().unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                assert_eq!(n, 1, "a 2xx answer means the delivery is in the database");
            }
            _ => unanswered.push((body.clone(), ts.clone(), sig.clone(), token.clone())),
        }
    }
    eprintln!("shutdown: {answered_ok} answered 200 during shutdown, {} unanswered", unanswered.len());
    // Singapay retries whatever got no 2xx; against a restarted receiver every retry is
    // either stored now or recognised as already stored.
    let mut server = process::serve(&["serve"], &vars, port);
    server.wait_ready().await;
    for (body, ts, sig, token) in &unanswered {
        let r = reqwest::Client::new()
            .post(server.url("/webhooks/singapay"))
            .header("x-signature", sig)
            .header("x-timestamp", ts)
            .header("authorization", format!("Bearer {token}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let deliveries: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries").fetch_one(&db).await.unwrap();
    assert_eq!(deliveries, 201, "every callback stored exactly once");
    assert!(answered_ok > 0, "in-flight callbacks were finished and answered during shutdown");
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());
}

/// `migrate`, `serve --migrate` on an empty database, and `prune` with `RETENTION_DAYS`,
/// `--dry-run` and `--batch-size`, as commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_serve_migrate_and_prune_work_as_commands() {
    let tables = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM pg_tables WHERE schemaname = 'singapay'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    // migrate: an empty database gets the schema; a second run changes nothing.
    let (url, db) = crate::helpers::empty_database().await;
    assert_eq!(tables(db.clone()).await, 0);
    for _ in 0..2 {
        let (ok, _, err) = process::run(&["migrate"], &env(&[("DATABASE_URL", &url), ("LOG_FORMAT", "text")])).await;
        assert!(ok, "{err}");
        assert_eq!(tables(db.clone()).await, 8);
    }

    // serve --migrate on an empty database takes a callback.
    let (url, db) = crate::helpers::empty_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let (mut server, _) = process::serve_ready(&["serve", "--migrate"], |port| {
        env(&[
            ("DATABASE_URL", &url),
            ("SINGAPAY_WEBHOOK_SECRETS", &secret),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
            ("LOG_FORMAT", "text"),
        ])
    })
    .await;
    assert_eq!(post(&server, &secret, &payload("disbursement"), now()).await, 200);
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());

    // prune: three finished payouts, two of them quiet for longer than RETENTION_DAYS=30,
    // their events stored on a day 40 days ago.
    crate::helpers::seed_events(&db, 3, 1).await;
    for sql in [
        "SELECT singapay.ensure_partitions(((now() - interval '40 days') AT TIME ZONE 'UTC')::date,
                                           ((now() - interval '40 days') AT TIME ZONE 'UTC')::date)",
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now() - interval '10 days'",
        "UPDATE singapay.transactions SET status = 'succeeded', updated_at = now() - interval '40 days'
          WHERE transaction_key IN ('disbursement:seed-1', 'disbursement:seed-2')",
        "UPDATE singapay.event_log SET stored_at = now() - interval '40 days', created_at = now() - interval '40 days'
          WHERE transaction_key IN ('disbursement:seed-1', 'disbursement:seed-2')",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let prune_env = env(&[("DATABASE_URL", &url), ("RETENTION_DAYS", "30"), ("LOG_FORMAT", "text")]);
    let (ok, out, err) = process::run(&["prune", "--dry-run"], &prune_env).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("RETENTION_DAYS=30") && out.contains("would retire 1 day(s), 4 partition(s), 2 rows"),
        "{out}"
    );
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM singapay.transaction_events").fetch_one(&db).await.unwrap()
    };
    assert_eq!(events().await, 4, "a dry run retires nothing (3 seeded, 1 from the callback)");
    let (ok, out, err) = process::run(&["prune", "--batch-size", "1"], &prune_env).await;
    assert!(ok, "{err}");
    assert!(out.contains("retired 1 day(s), 4 partition(s), 2 rows"), "{out}");
    assert_eq!(events().await, 2, "the recent payout's event and the callback's stay");
    let (ok, _, err) = process::run(&["prune", "--batch-size", "0"], &prune_env).await;
    assert!(!ok && err.contains("batch-size"), "{err}");
}

/// SIGINT stops the receiver like SIGTERM; when SHUTDOWN_TIMEOUT_SECS runs out, a callback
/// still stuck in the database is left unanswered and uncommitted (Singapay retries it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_a_stuck_callback_gives_up_after_the_shutdown_timeout() {
    let (db_url, db) = fresh_database().await;
    let secret = format!("cs_{}", random_hex(8));
    let (mut server, _) = process::serve_ready(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &secret),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
            ("SHUTDOWN_TIMEOUT_SECS", "1"),
            ("LOG_FORMAT", "text"),
        ])
    })
    .await;
    let body = |code: &str| {
        format!(
            r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"3131","transaction_status":{{"code":"{code}"}}}}}}"#
        )
    };
    assert_eq!(post(&server, &secret, &body("01"), now()).await, 200);
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.transactions IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let stuck = {
        let (url, secret, body) = (server.url("/webhooks/singapay"), secret.clone(), body("00"));
        tokio::spawn(async move {
            let ts = now().to_string();
            let sig = sign_php(&secret, "/webhooks/singapay", "stuck", &body, &ts);
            reqwest::Client::new()
                .post(url)
                .header("x-signature", sig)
                .header("x-timestamp", ts)
                .header("authorization", "Bearer stuck")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if lock_waiters(&db).await >= 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the callback never reached the lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = std::time::Instant::now();
    server.signal("INT");
    assert!(server.wait_exit(Duration::from_secs(20)).await.success(), "SIGINT exits 0");
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(900), "it waited for the stuck callback first ({took:?})");
    // 1 s of SHUTDOWN_TIMEOUT_SECS, not the 10 s lock_timeout of the stuck statement.
    assert!(took < Duration::from_secs(6), "the shutdown timeout was not honoured ({took:?})");
    assert!(server.log_text().contains("did not finish in time"), "{}", server.log_text());
    let answer = stuck.await.unwrap();
    assert!(!matches!(answer, Ok(200)), "the stuck callback was not acknowledged: {answer:?}");
    blocker.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries").fetch_one(&db).await.unwrap();
    assert_eq!(stored, 1, "nothing of the stuck callback was committed");
    let status: String =
        sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = 'disbursement:3131'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(status, "initiated");
}

/// Secrets from files (`DATABASE_URL_FILE`, `SINGAPAY_WEBHOOK_SECRETS_FILE`), and a `.env`
/// in the working directory, whose values real environment variables override.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_and_a_dot_env_configure_serve() {
    let (db_url, db) = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("cs_{}", random_hex(8));
    std::fs::write(dir.path().join("db_url"), format!("{db_url}\n")).unwrap();
    std::fs::write(dir.path().join("secrets"), format!("files={secret}\n")).unwrap();
    let (mut server, _) = process::serve_ready(&["serve"], |port| {
        env(&[
            ("DATABASE_URL_FILE", dir.path().join("db_url").to_str().unwrap()),
            ("SINGAPAY_WEBHOOK_SECRETS_FILE", dir.path().join("secrets").to_str().unwrap()),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
            ("LOG_FORMAT", "json"),
        ])
    })
    .await;
    assert_eq!(post(&server, &secret, &payload("va-transaction"), now()).await, 200);
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());
    let credential: String =
        sqlx::query_scalar("SELECT credential FROM singapay.deliveries").fetch_one(&db).await.unwrap();
    assert_eq!(credential, "files", "the label from the secrets file");

    // A .env in the working directory; LISTEN_ADDR from the real environment wins over it.
    let env_port = free_port().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "DATABASE_URL={db_url}\nSINGAPAY_WEBHOOK_SECRETS=dotenv={secret}\nLISTEN_ADDR=127.0.0.1:{env_port}\nLOG_FORMAT=json\nSHUTDOWN_DRAIN_SECS=0\n"
        ),
    )
    .unwrap();
    let mut tries = 0;
    let mut server = loop {
        // Another process may take the chosen port before serve binds it: choose again.
        tries += 1;
        let real_port = free_port().unwrap();
        let mut child = Command::new(process::BIN)
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{real_port}"))
            .env("ADMIN_LISTEN_ADDR", "off")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let logs: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (stderr, sink) = (child.stderr.take().unwrap(), logs.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server { child, logs, port: real_port };
        match server.try_wait_ready().await {
            Ok(()) => break server,
            Err(logs) if logs.contains("cannot bind") && tries < 5 => continue,
            Err(logs) => panic!("serve with a .env did not start: {logs}"),
        }
    };
    let body = payload("va-transaction").replace("3211120260314091205518", "DOTENV-1");
    assert_eq!(post(&server, &secret, &body, now()).await, 200);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", env_port)).await.is_err(), "the .env's LISTEN_ADDR lost");
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(30)).await.success());
    let credential: String =
        sqlx::query_scalar("SELECT credential FROM singapay.deliveries WHERE transaction_key = 'va:DOTENV-1'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(credential, "dotenv", "the label from the .env");
}

/// `/metrics` on a public port: however many scrape at once, Postgres is asked for the
/// queue's depth by one of them at a time (and at most every few seconds). Shown with the
/// queue table locked: one scrape's query waits for the lock, every other scrape answers
/// at once with the gauges as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_scrapes_ask_postgres_for_the_queue_depth_once() {
    let (server, _secret, db) = process::serve_fresh(&[]).await;
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.transaction_events IN ACCESS EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    let url = server.url("/metrics");
    let scrapes: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut most_waiting = 0;
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        most_waiting = most_waiting.max(lock_waiters(&db).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answered = scrapes.iter().filter(|s| s.is_finished()).count();
    lock.commit().await.unwrap();
    let statuses: Vec<u16> = join_all(scrapes).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(most_waiting >= 1, "the first scrape reads the queue (and waits for the lock)");
    assert_eq!(most_waiting, 1, "scrapes queued up on Postgres instead of sharing one read");
    assert!(answered >= 31, "only {answered} of 32 scrapes answered while one read waited");
}

/// Strangers flooding the public port with large bodies — unsigned, or with made-up
/// signature headers, which cost a parse before they can be refused — do not inflate the
/// receiver's memory, and real callbacks sent meanwhile are stored. (How long those waited
/// is a figure for a benchmark, not for a test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_large_unauthenticated_bodies_keeps_memory_bounded() {
    let (server, secret, _db) = process::serve_fresh(&[]).await;
    // Just under MAX_BODY_BYTES (1 MiB) of `[0,0,…]`: the cheapest body to send and among
    // the dearest to parse.
    let array = format!("[{}0]", "0,".repeat(520_000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = server.url("/webhooks/singapay");
    let senders: Vec<_> = (0..32)
        .map(|i| {
            let (stop, url, body) = (stop.clone(), url.clone(), array.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut refused = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut req = client.post(&url).body(body.clone());
                    if i % 2 == 0 {
                        req = req
                            .header("x-signature", "0".repeat(128))
                            .header("x-timestamp", now().to_string())
                            .header("authorization", "Bearer stranger");
                    }
                    if let Ok(r) = req.send().await {
                        assert_eq!(r.status(), 401);
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut stored = 0;
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = format!(
            r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"{n:031}","transaction_status":{{"code":"00"}}}}}}"#
        );
        assert_eq!(post(&server, &secret, &body, now()).await, 200);
        stored += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused: usize = join_all(senders).await.into_iter().map(Result::unwrap).sum();
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(stored, 20);
    assert!(refused >= 32, "the flood was sent ({refused} refused)");
    assert!(peak_kib < 256 * 1024, "peak RSS {} MiB under the flood", peak_kib / 1024);
}
