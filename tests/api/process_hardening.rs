//! Hostile answers from "Singapay's API", through the real `reconcile` command and a real
//! Postgres: a fake API (on loopback) that redirects, issues tokens that live 0 s or longer
//! than any clock, answers with NUL bytes and megabyte messages, and puts its token in an
//! error body; plus a store that cannot record an inquiry, and a sandbox mistaken for
//! Singapay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use chrono::Utc;
use serde_json::json;

use crate::helpers::{disbursement, fresh_database, SandboxApi, TestApp};
use crate::process::{self, env};

const TOKEN: &str = "tok-SECRET-0123456789";

/// An answer: (status, headers, body).
type Canned = (u16, Vec<(String, String)>, String);

/// What the fake API answers: the token endpoint and the inquiry.
#[derive(Clone, Default)]
struct Script {
    token: Option<Canned>,
    inquiry: Option<Canned>,
}

#[derive(Clone, Default)]
struct Fake {
    script: Arc<Mutex<Script>>,
    /// Requests that reached the "other host" a redirect points to: (path, headers).
    elsewhere: Arc<Mutex<Vec<(String, String)>>>,
}

fn answer((status, headers, body): Canned) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in headers {
        r.headers_mut().insert(axum::http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
    }
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r
}

async fn token(State(f): State<Fake>) -> Response {
    let default = (
        200,
        vec![],
        json!({"status": 200, "success": true, "data": {"access_token": TOKEN, "expires_in": "3600"}}).to_string(),
    );
    answer(f.script.lock().unwrap().token.clone().unwrap_or(default))
}

async fn inquiry(State(f): State<Fake>) -> Response {
    let default = (404, vec![], json!({"response_code": "SP009", "response_message": "Not Found"}).to_string());
    answer(f.script.lock().unwrap().inquiry.clone().unwrap_or(default))
}

async fn elsewhere(State(f): State<Fake>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let names: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
    f.elsewhere.lock().unwrap().push((uri.to_string(), names.join(",")));
    // The other host says the payout succeeded.
    let paid = json!({"response_code": "SP000", "data": {"reference_number": "PAYOUT-H-1", "transaction_status": {"code": "00"}}});
    (StatusCode::OK, paid.to_string()).into_response()
}

/// The fake API and the "other host", both on loopback; (api url, other url, fake).
async fn start() -> (String, String, Fake) {
    let fake = Fake::default();
    let api = Router::new()
        .route("/api/v1.1/access-token/b2b", post(token))
        .route("/api/v2.0/disbursement/{account}/inquiry-status", post(inquiry))
        .with_state(fake.clone());
    let other = Router::new().route("/{*path}", any(elsewhere)).with_state(fake.clone());
    let mut urls = Vec::new();
    for router in [api, other] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    (urls[0].clone(), urls[1].clone(), fake)
}

fn vars(api: &str, database_url: &str) -> Vec<(String, String)> {
    env(&[
        ("DATABASE_URL", database_url),
        ("SINGAPAY_API_URL", api),
        ("SINGAPAY_API_ALLOW_INSECURE", "1"),
        ("SINGAPAY_CLIENT_ID", "client-1"),
        ("SINGAPAY_CLIENT_SECRET", "secret-1"),
        ("SINGAPAY_PARTNER_ID", "partner-1"),
        ("SINGAPAY_ACCOUNT_ID", "ACC-1"),
        ("SINGAPAY_API_TIMEOUT_SECS", "3"),
        ("LOG_FORMAT", "text"),
    ])
}

const KEY: &str = "disbursement:7700000000000000000000000000901";

/// A payout whose callback needs an inquiry.
async fn setup() -> (TestApp, String, sqlx::PgPool) {
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let body = disbursement("7700000000000000000000000000901", "PAYOUT-H-1", "SP005", None);
    assert_eq!(app.send(&body).await.status, 200);
    (app, url, db)
}

async fn run(vars: &[(String, String)]) -> (bool, String) {
    let (ok, out, err) = process::run(&["reconcile", "--key", KEY], vars).await;
    (ok, format!("{out}\n{err}"))
}

async fn status_of(db: &sqlx::PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
        .bind(KEY)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// Finding 1: redirects are never followed, from the token endpoint (where they would carry
/// the client id and signature elsewhere) or from an inquiry (whose target's answer would be
/// applied); the redirect is recorded with where it pointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_recorded_and_never_followed() {
    let (_app, url, db) = setup().await;
    let (api, other, fake) = start().await;
    let vars = vars(&api, &url);
    fake.script.lock().unwrap().token =
        Some((307, vec![("location".into(), format!("{other}/steal-token"))], String::new()));
    let (ok, out) = run(&vars).await;
    assert!(ok, "{out}");
    fake.script.lock().unwrap().token = None;
    fake.script.lock().unwrap().inquiry =
        Some((302, vec![("location".into(), format!("{other}/answer"))], String::new()));
    let (ok, out) = run(&vars).await;
    assert!(ok, "{out}");
    assert!(fake.elsewhere.lock().unwrap().is_empty(), "followed: {:?}", fake.elsewhere.lock().unwrap());
    assert_eq!(status_of(&db).await, None, "nothing applied");
    let (answer, http, detail): (String, Option<i32>, Option<String>) = sqlx::query_as(
        "SELECT answer, http_status, detail FROM singapay.inquiries WHERE transaction_key = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(KEY)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((answer.as_str(), http), ("unreadable", Some(302)));
    assert!(
        detail.as_deref().is_some_and(|d| d.contains(&format!("{other}/answer")) && d.contains("not followed")),
        "{detail:?}"
    );
}

/// Findings 6 and 8: a token that lives 0 s is used (briefly) and never printed or stored;
/// one that lives longer than any clock does not panic; a token endpoint's error body (with a
/// token in it) is never quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_leak_and_no_life_breaks_the_clock() {
    let (_app, url, db) = setup().await;
    let (api, _, fake) = start().await;
    let vars = vars(&api, &url);
    let pending = json!({"response_code": "SP000", "data": {"reference_number": "PAYOUT-H-1", "transaction_status": {"code": "03"}}});
    fake.script.lock().unwrap().inquiry = Some((200, vec![], pending.to_string()));
    for life in [json!(0), json!("0"), json!(18_446_744_073_709_551_615u64), json!(1e30), json!(-1)] {
        let body = json!({"access_token": TOKEN, "expires_in": life}).to_string();
        fake.script.lock().unwrap().token = Some((200, vec![], body));
        let (ok, out) = run(&vars).await;
        assert!(ok && out.contains("status=pending"), "expires_in {life}: {out}");
        assert!(!out.contains(TOKEN), "the token was printed: {out}");
    }
    for status in [500, 401, 403] {
        let leaky =
            json!({"status": status, "success": false, "data": {"access_token": TOKEN}, "error": {"message": "no"}});
        fake.script.lock().unwrap().token = Some((status, vec![], leaky.to_string()));
        let (_, out) = run(&vars).await;
        assert!(!out.contains(TOKEN), "HTTP {status}: the token was printed: {out}");
    }
    let stored: i64 = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM singapay.reconcile_checks WHERE last_error LIKE '%' || $1 || '%'
          UNION ALL SELECT count(*) FROM singapay.inquiries WHERE detail LIKE '%' || $1 || '%'",
    )
    .bind(TOKEN)
    .fetch_all(&db)
    .await
    .unwrap()
    .into_iter()
    .sum();
    assert_eq!(stored, 0, "the token was stored");
}

/// Finding 9: an answer's text with a NUL byte, or a megabyte long, is recorded (bounded and
/// NUL-free) and the check settled: not "storing a delivery failed" and asked again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_and_megabyte_messages_are_recorded_bounded() {
    let (_app, url, db) = setup().await;
    let (api, _, fake) = start().await;
    let vars = vars(&api, &url);
    for message in ["busy\u{0}now".to_owned(), "x".repeat(1_000_000)] {
        let body = json!({"response_code": "SP005", "response_message": message, "data": null}).to_string();
        fake.script.lock().unwrap().inquiry = Some((400, vec![], body));
        let (ok, out) = run(&vars).await;
        assert!(ok && out.contains("answer=retry_later"), "{}", &out[..out.len().min(2000)]);
        assert!(out.len() < 20_000, "the message was not bounded in the output: {} bytes", out.len());
    }
    let details: Vec<String> =
        sqlx::query_scalar("SELECT detail FROM singapay.inquiries WHERE transaction_key = $1 ORDER BY id")
            .bind(KEY)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(details.len(), 2, "both answers recorded");
    assert!(details.iter().all(|d| d.chars().count() < 300 && !d.contains('\u{0}')), "{details:?}");
}

/// Finding 8 (second half): a check that cannot be recorded makes `reconcile` exit non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_cannot_be_recorded_fails_the_command() {
    let (_app, url, db) = setup().await;
    let (api, _, _) = start().await;
    sqlx::raw_sql(
        "CREATE FUNCTION public.refuse_inquiries() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no room'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON singapay.inquiries FOR EACH ROW EXECUTE FUNCTION public.refuse_inquiries();",
    )
    .execute(&db)
    .await
    .unwrap();
    let (ok, out) = run(&vars(&api, &url)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("could not be recorded"), "{out}");
}

/// Finding 2: a plain-http or non-Singapay API URL is refused at start-up unless insecure
/// use is allowed; the sandbox's answers are refused by a client that does not allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_api_is_refused() {
    let (_app, url, _db) = setup().await;
    let sandbox = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let mut v = vars(&sandbox.url, &url);
    v.retain(|(k, _)| k != "SINGAPAY_API_ALLOW_INSECURE");
    let (ok, out) = run(&v).await;
    assert!(!ok && out.contains("SINGAPAY_API_URL") && out.contains("SINGAPAY_API_ALLOW_INSECURE=1"), "{out}");
    let mut settings = sandbox.settings(Duration::from_secs(3));
    settings.allow_insecure = false;
    let client = singapay_webhooks::reconcile::ApiClient::new(settings, Arc::new(Utc::now)).unwrap();
    let e = client.token().await.map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("X-Singapay-Sandbox"), "{e}");
}

/// Finding 11: a callback's bearer token is kept only `BEARER_RETENTION_HOURS` (for
/// `verify`); then `prune` keeps its SHA-256 alone, and `verify --token` checks a token an
/// operator supplies against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_dropped_after_their_retention_and_verify_checks_a_given_one() {
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let token = "bearer-for-verify-123";
    let body = disbursement("7700000000000000000000000000911", "PAYOUT-B-9", "SP000", Some("00"));
    let ts = crate::helpers::now().to_string();
    let sig = crate::helpers::sign_php(&app.secret, crate::helpers::DEFAULT_PATH, token, &body, &ts);
    let reply =
        app.post_raw(crate::helpers::DEFAULT_PATH, body, Some(&sig), Some(&ts), Some(&format!("Bearer {token}"))).await;
    assert_eq!(reply.status, 200);
    let id: i64 = sqlx::query_scalar("SELECT id FROM singapay.deliveries").fetch_one(&db).await.unwrap();
    let vars = env(&[
        ("DATABASE_URL", &url),
        ("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={}", app.secret)),
        ("BEARER_RETENTION_HOURS", "1"),
    ]);
    let (ok, out, err) = process::run(&["verify", "--delivery", &id.to_string()], &vars).await;
    assert!(ok && out.contains("result: match"), "{out}{err}");

    // Two hours later, prune drops it and keeps its hash.
    sqlx::query("UPDATE singapay.deliveries SET received_at = now() - interval '2 hours'").execute(&db).await.unwrap();
    let (ok, out, err) = process::run(&["prune"], &vars).await;
    assert!(ok && out.contains("1 of deliveries"), "{out}{err}");
    let (kept, hash): (String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT access_token, access_token_sha256 FROM singapay.deliveries")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(kept, "");
    use sha2::Digest;
    assert_eq!(hash.as_deref(), Some(sha2::Sha256::digest(token.as_bytes()).as_slice()));

    let (ok, _, err) = process::run(&["verify", "--delivery", &id.to_string()], &vars).await;
    assert!(!ok && err.contains("was dropped") && err.contains("--token"), "{err}");
    let (ok, _, err) = process::run(&["verify", "--delivery", &id.to_string(), "--token", "not-it"], &vars).await;
    assert!(!ok && err.contains("SHA-256 differs"), "{err}");
    let (ok, out, err) = process::run(&["verify", "--delivery", &id.to_string(), "--token", token], &vars).await;
    assert!(ok && out.contains("result: match"), "{out}{err}");
}

/// Findings 3 and 4 through the real binary: a database turned read-only (as after a
/// failover) gets every callback answered 503 (Singapay retries it four times), and
/// `/readyz` says why until writes work again; a transaction row locked by another session
/// holds up neither unrelated callbacks nor readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_answers_503_and_a_locked_row_stalls_nothing_else() {
    let (server, secret, db) = process::serve_fresh(&[]).await;
    let post = |id: &str, code: &str| {
        let (secret, body) = (secret.clone(), disbursement(id, &format!("REF-{id}"), "SP000", Some(code)));
        let port = server.port;
        async move { process::post_signed(port, &secret, &body).await }
    };
    let readyz = || async {
        let r = reqwest::get(server.url("/readyz")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(post("7700000000000000000000000000951", "03").await, 200);

    // Another session holds the row of 951; unrelated callbacks are stored at once.
    let mut holder = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM singapay.transactions WHERE transaction_key LIKE '%951' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    for n in 952..956 {
        let started = std::time::Instant::now();
        assert_eq!(post(&format!("7700000000000000000000000000{n}"), "00").await, 200);
        assert!(started.elapsed() < Duration::from_secs(5), "held up by another transaction's lock");
    }
    assert_eq!(readyz().await.0, 200);
    holder.rollback().await.unwrap();

    // Read-only: new sessions may not write; the app's are made to reconnect.
    let name: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&db).await.unwrap();
    let set_read_only = |on: bool| {
        let (db, name) = (db.clone(), name.clone());
        async move {
            let verb =
                if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
            sqlx::query(&format!("ALTER DATABASE \"{name}\" {verb}")).execute(&db).await.unwrap();
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'singapay-webhooks'",
            )
            .execute(&db)
            .await
            .unwrap();
        }
    };
    set_read_only(true).await;
    for n in 960..963 {
        assert_eq!(post(&format!("7700000000000000000000000000{n}"), "00").await, 503, "read-only");
    }
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("database_read_only"), "{body}");
    set_read_only(false).await;
    assert_eq!(post("7700000000000000000000000000964", "00").await, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while readyz().await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "readiness did not come back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finding 5 through the real binary: a base64 secret with one `=` of padding is refused at
/// start-up by its position and length; no part of it reaches the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_never_reaches_the_output() {
    let secret = "c2VjcmV0c2VjcmV0c2VjcmV0MTIzNA=";
    let vars = env(&[
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none"),
        ("SINGAPAY_WEBHOOK_SECRETS", &format!("main=abcdefghijklmnopqr,{secret}")),
    ]);
    let (ok, out, err) = process::run(&["serve"], &vars).await;
    assert!(!ok);
    assert!(err.contains("SINGAPAY_WEBHOOK_SECRETS") && err.contains("entry 2 (31 characters)"), "{err}");
    assert!(!format!("{out}{err}").contains(&secret[..20]), "{err}");
}
