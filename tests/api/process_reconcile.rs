//! Reconciliation in the real binary: `serve` with Singapay's API configured asks the
//! `sandbox` over HTTP and applies the answer; a refused IP address stops inquiries with one
//! log line and a metric while callbacks keep being taken; without the settings nothing
//! about reconciliation runs; the `reconcile` command, dry and for real.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;

use crate::helpers::{disbursement, fresh_database, metric, SandboxApi, TestApp, SANDBOX_ACCOUNT};
use crate::process::{self, env, Server};

/// The environment that points the binary's reconciliation at this sandbox.
pub fn api_settings(api: &SandboxApi) -> Vec<(String, String)> {
    env(&[
        ("SINGAPAY_API_URL", &api.url),
        ("SINGAPAY_API_ALLOW_INSECURE", "1"),
        ("SINGAPAY_CLIENT_ID", "client-1"),
        ("SINGAPAY_CLIENT_SECRET", "secret-1"),
        ("SINGAPAY_PARTNER_ID", "partner-1"),
        ("SINGAPAY_ACCOUNT_ID", SANDBOX_ACCOUNT),
        ("LOG_FORMAT", "text"),
    ])
}

async fn post_signed(server: &Server, secret: &str, body: &str) -> u16 {
    process::post_signed(server.port, secret, body).await
}

/// Polls `what` until it holds, for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(db: &sqlx::PgPool, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
        .bind(key)
        .fetch_optional(db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reconciles_and_a_refused_ip_stops_inquiries_but_not_callbacks() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let mut extra = api_settings(&api);
    extra.push(("RECONCILE_INTERVAL_SECS".into(), "1".into()));
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (mut server, secret, db) = process::serve_fresh(&extra).await;
    assert!(server.log_text().contains("reconciliation on"), "{}", server.log_text());

    // A callback that needs an inquiry; Singapay's API says it succeeded.
    api.script("PAYOUT-P-1", &["00"]).await;
    let id = "7700000000000000000000000000101";
    assert_eq!(post_signed(&server, &secret, &disbursement(id, "PAYOUT-P-1", "SP001", None)).await, 200);
    let key = format!("disbursement:{id}");
    eventually("the inquiry's answer is applied", || async {
        status_of(&db, &key).await.as_deref() == Some("succeeded")
    })
    .await;
    let source: String =
        sqlx::query_scalar("SELECT payload->>'source' FROM singapay.event_log WHERE transaction_key = $1")
            .bind(&key)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(source, "inquiry");

    // The IP is no longer whitelisted: the token endpoint answers 403.
    api.control("revoke", json!({})).await;
    api.control("token-fault", json!({"answer": "403"})).await;
    api.script("PAYOUT-P-2", &["00"]).await;
    assert_eq!(
        post_signed(&server, &secret, &disbursement("7700000000000000000000000000102", "PAYOUT-P-2", "SP001", None))
            .await,
        200
    );
    eventually("the stop is logged", || async { server.log_text().contains("reconciliation paused for default") })
        .await;
    // Callbacks are taken throughout, and the stop is said once.
    for i in 0..5 {
        let id = format!("77000000000000000000000000002{i:02}");
        assert_eq!(post_signed(&server, &secret, &disbursement(&id, "PAYOUT-Q", "SP000", Some("00"))).await, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let logs = server.log_text();
    let stops: Vec<&str> = logs.lines().filter(|l| l.contains("reconciliation paused")).collect();
    assert_eq!(stops.len(), 1, "{logs}");
    assert!(stops[0].contains("403") && stops[0].contains("whitelist"), "{}", stops[0]);
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert_eq!(metric(&metrics, "singapay_reconcile_halted"), 1.0, "{metrics}");
    assert_eq!(status_of(&db, "disbursement:7700000000000000000000000000102").await, None, "not asked while stopped");

    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_api_settings_nothing_about_reconciliation_runs() {
    let (server, secret, db) = process::serve_fresh(&[("RECONCILE_INTERVAL_SECS", "1"), ("LOG_FORMAT", "text")]).await;
    assert!(server.log_text().contains("reconciliation off"), "{}", server.log_text());
    assert_eq!(
        post_signed(&server, &secret, &disbursement("7700000000000000000000000000301", "PAYOUT-OFF", "SP001", None))
            .await,
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (checks, inquiries): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM singapay.reconcile_checks), (SELECT count(*) FROM singapay.inquiries)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((checks, inquiries), (0, 0));
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("singapay_reconcile") && !metrics.contains("singapay_inquir"), "{metrics}");

    let (url, _) = fresh_database().await;
    let (ok, _, err) = process::run(&["reconcile"], &env(&[("DATABASE_URL", &url)])).await;
    assert!(!ok && err.contains("SINGAPAY_API_URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconcile_command_shows_what_it_would_ask_then_asks() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let id = "7700000000000000000000000000401";
    let key = format!("disbursement:{id}");
    assert_eq!(app.send(&disbursement(id, "PAYOUT-CMD-1", "SP005", None)).await.status, 200);
    api.script("PAYOUT-CMD-1", &["00"]).await;
    let mut vars = api_settings(&api);
    vars.push(("DATABASE_URL".into(), url.clone()));

    let (ok, out, err) = process::run(&["reconcile", "--dry-run"], &vars).await;
    assert!(ok, "{err}");
    let expected = format!(
        "would ask  {key}  (needs_inquiry)  as default on {SANDBOX_ACCOUNT}: POST /api/v2.0/disbursement/{SANDBOX_ACCOUNT}/inquiry-status {{\"reference_number\":\"PAYOUT-CMD-1\"}}"
    );
    assert!(out.lines().any(|l| l == expected), "{out}");
    assert!(out.contains("1 due (nothing asked, nothing changed)"), "{out}");
    assert!(api.inquiries().await.is_empty());
    let checks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_checks").fetch_one(&db).await.unwrap();
    assert_eq!(checks, 0, "a dry run writes nothing");

    let (ok, out, err) = process::run(&["reconcile"], &vars).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with(&key)
            && l.contains("(needs_inquiry)")
            && l.contains("answer=status from=default/")
            && l.contains("record=reference_number=PAYOUT-CMD-1 status=succeeded transition=applied")
            && l.ends_with("next: done")),
        "{out}"
    );
    assert_eq!(status_of(&db, &key).await.as_deref(), Some("succeeded"));

    // Asked again on request: Singapay repeats itself, nothing changes.
    let (ok, out, err) = process::run(&["reconcile", "--key", &key], &vars).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with(&key) && l.contains("(requested)") && l.contains("transition=unchanged")),
        "{out}"
    );
    assert_eq!(api.inquiries().await.len(), 2);
    let (ok, _, err) = process::run(&["reconcile", "--key", "nothing:stored"], &vars).await;
    assert!(!ok && err.contains("neither stored nor the key of a product"), "{err}");

    // A checkout nothing stored names (it never called back), with Singapay's id to ask by.
    let args = ["reconcile", "--dry-run", "--key", "ewallet:INV-CMD-9", "--singapay-id", "777"];
    let (ok, out, err) = process::run(&args, &vars).await;
    assert!(ok, "{err}");
    let expected = format!(
        "would ask  ewallet:INV-CMD-9  (requested)  as default on {SANDBOX_ACCOUNT}: GET /api/v1.0/ewallet-native/{SANDBOX_ACCOUNT}/inquiry-status/777"
    );
    assert!(out.lines().any(|l| l == expected), "{out}");
    api.control("transactions", json!({"id": "777", "reff_no": "INV-CMD-9", "answers": ["expired"]})).await;
    let (ok, out, err) = process::run(&args[..1].iter().chain(&args[2..]).copied().collect::<Vec<_>>(), &vars).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("ewallet:INV-CMD-9") && l.contains("status=expired transition=applied")),
        "{out}"
    );
    assert_eq!(status_of(&db, "ewallet:INV-CMD-9").await.as_deref(), Some("expired"));
}

/// The developer's loop: `send` posts a disbursement stuck at `01` and scripts the sandbox
/// for it; `serve` finds it overdue, asks, and follows Singapay's answers to `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_scripts_the_sandbox_and_serve_follows_an_overdue_disbursement_to_its_end() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let mut extra = api_settings(&api);
    for (k, v) in
        [("RECONCILE_INTERVAL_SECS", "1"), ("RECONCILE_MONEY_OUT_OVERDUE_SECS", "1"), ("RECONCILE_BACKOFF_SECS", "1")]
    {
        extra.push((k.into(), v.into()));
    }
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (server, secret, db) = process::serve_fresh(&extra).await;
    let url = server.url("/webhooks/singapay");
    let args = [
        "send",
        "disbursement",
        "--url",
        &url,
        "--secret",
        &secret,
        "--status",
        "01",
        "--reference",
        "PAYOUT-SEND-1",
        "--transaction-id",
        "7700000000000000000000000000501",
        "--sandbox",
        &api.url,
        "--sandbox-token",
        &api.token,
        "--sandbox-answers",
        "03,00",
    ];
    let (ok, out, err) = process::run(&args, &[]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(
            "sandbox: asked about PAYOUT-SEND-1 (disbursement:7700000000000000000000000000501), answers 03, 00"
        ),
        "{out}"
    );
    let key = "disbursement:7700000000000000000000000000501";
    eventually("Singapay's final answer is applied", || async {
        status_of(&db, key).await.as_deref() == Some("succeeded")
    })
    .await;
    let steps: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT version, webhook_type, to_status FROM singapay.event_log WHERE transaction_key = $1 ORDER BY version",
    )
    .bind(key)
    .fetch_all(&db)
    .await
    .unwrap();
    let expected: Vec<(i32, String, String)> = vec![
        (1, "disbursement".into(), "initiated".into()),
        (2, "inquiry".into(), "pending".into()),
        (3, "inquiry".into(), "succeeded".into()),
    ];
    assert_eq!(steps, expected);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(api.inquiries().await.len(), 2, "asked until final, then no more");
}
