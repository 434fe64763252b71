//! Reconciliation end to end: callbacks into the receiver over HTTP, the reconciler asking
//! the `sandbox` over real HTTP, answers applied in Postgres through the store. Nothing
//! about the reconciler is replaced: the tests drive its passes (`Reconciler::pass`, what
//! `serve`'s loop and the `reconcile` command run) so that time is theirs to choose.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use singapay_webhooks::reconcile::{Outcome, ReconcileSettings, Reconciler};
use singapay_webhooks::store::inquiries::Next;

use crate::helpers::{disbursement, SandboxApi, TestApp, SANDBOX_ACCOUNT};

fn settings(api: &SandboxApi) -> ReconcileSettings {
    ReconcileSettings {
        credentials: vec![api.credential("default", &[SANDBOX_ACCOUNT], Duration::from_secs(2))],
        money_out_overdue: Duration::from_secs(15 * 60),
        money_in_overdue: Duration::from_secs(86_400),
        concurrency: 4,
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(2),
        not_found_attempts: 3,
        unreadable_attempts: 3,
        // A pass drains every due check (it stops at `interval`).
        interval: Duration::from_secs(60),
    }
}

fn reconciler(app: &TestApp, settings: ReconcileSettings, now: Option<DateTime<Utc>>) -> Arc<Reconciler> {
    let clock: singapay_webhooks::reconcile::Clock = match now {
        Some(t) => Arc::new(move || t),
        None => Arc::new(Utc::now),
    };
    Reconciler::new(app.db.clone(), settings, clock, "test").unwrap()
}

async fn transaction(app: &TestApp, key: &str) -> Option<(String, i32)> {
    sqlx::query_as("SELECT status, version FROM singapay.transactions WHERE transaction_key = $1")
        .bind(key)
        .fetch_optional(&app.db)
        .await
        .unwrap()
}

/// Every event of a transaction: (version, webhook_type, payload).
async fn events(app: &TestApp, key: &str) -> Vec<(i32, String, Value)> {
    sqlx::query_as::<_, (i32, String, sqlx::types::Json<Value>)>(
        "SELECT version, webhook_type, payload FROM singapay.event_log WHERE transaction_key = $1 ORDER BY version",
    )
    .bind(key)
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(v, w, p)| (v, w, p.0))
    .collect()
}

/// Makes a transaction's last change `minutes` ago.
async fn backdate(app: &TestApp, key: &str, minutes: i32) {
    sqlx::query(
        "UPDATE singapay.transactions SET updated_at = now() - $2 * interval '1 minute' WHERE transaction_key = $1",
    )
    .bind(key)
    .bind(f64::from(minutes))
    .execute(&app.db)
    .await
    .unwrap();
}

fn only<'a>(outcomes: &'a [Outcome], key: &str) -> &'a Outcome {
    let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.transaction_key == key).collect();
    assert_eq!(mine.len(), 1, "{outcomes:?}");
    mine[0]
}

/// 23:30 UTC on 21 November is 06:30 on 22 November in Jakarta.
fn late_evening() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 23, 30, 0).unwrap()
}

/// Acceptance 1 (and 3 at the reconciler's level: the token is signed with the Jakarta date
/// at 23:30 UTC, and one token serves every question).
#[tokio::test]
async fn an_ambiguous_disbursement_is_asked_about_and_its_answer_applied_once() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start(late_evening()).await;
    let id = "7700000000000000000000000000001";
    let key = format!("disbursement:{id}");
    let r = app.send(&disbursement(id, "PAYOUT-R-1", "SP001", None)).await;
    assert_eq!(r.status, 200);
    let needs: bool =
        sqlx::query_scalar("SELECT needs_inquiry FROM singapay.deliveries").fetch_one(&app.db).await.unwrap();
    assert!(needs);
    assert_eq!(transaction(&app, &key).await, None, "no status, no transaction yet");
    api.script("PAYOUT-R-1", &["00"]).await;

    let rec = reconciler(&app, settings(&api), Some(late_evening()));
    let report = rec.pass(None).await.unwrap();
    assert_eq!(report.discovered, 1);
    let o = only(&report.outcomes, &key);
    assert_eq!(
        (o.answer.as_str(), o.status.as_deref(), o.transition.as_deref()),
        ("status", Some("succeeded"), Some("applied"))
    );
    assert_eq!(o.next, Next::Done);

    assert_eq!(transaction(&app, &key).await, Some(("succeeded".into(), 1)));
    let (first, last, delivery): (i64, i64, i64) = sqlx::query_as(
        "SELECT first_delivery_id, last_delivery_id, (SELECT id FROM singapay.deliveries) FROM singapay.transactions",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((first, last), (delivery, delivery), "created from the delivery that needed the inquiry");
    let evs = events(&app, &key).await;
    assert_eq!(evs.len(), 1);
    let (version, webhook_type, doc) = &evs[0];
    assert_eq!((*version, webhook_type.as_str()), (1, "inquiry"));
    assert_eq!(doc["source"], "inquiry");
    assert_eq!(doc["to_status"], "succeeded");
    assert_eq!(doc["merchant_reference"], "PAYOUT-R-1");
    assert_eq!(doc["transaction_status_code"], "00");
    assert_eq!(doc["delivery_id"], Value::Null);
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM singapay.transaction_events WHERE transaction_key = $1 AND state = 'available'",
    )
    .bind(&key)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(queued, 1, "the event is on the queue for consumers");
    let needs: bool =
        sqlx::query_scalar("SELECT needs_inquiry FROM singapay.deliveries").fetch_one(&app.db).await.unwrap();
    assert!(!needs, "the delivery's need for an inquiry is cleared");

    // The exchange, for audit.
    #[derive(sqlx::FromRow)]
    struct Row {
        id: i64,
        reason: String,
        method: String,
        path: String,
        request_body: sqlx::types::Json<Value>,
        http_status: i32,
        response_body: Vec<u8>,
        answer: String,
        status: String,
        transition: String,
        version: i32,
    }
    let Row {
        id: inquiry_id,
        reason,
        method,
        path,
        request_body: request,
        http_status,
        response_body: response,
        answer,
        status,
        transition,
        version,
    } = sqlx::query_as(
        "SELECT id, reason, method, path, request_body, http_status, response_body, answer, status, transition, version
           FROM singapay.inquiries WHERE transaction_key = $1",
    )
    .bind(&key)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(doc["inquiry_id"], inquiry_id);
    assert_eq!(reason, "needs_inquiry");
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/api/v2.0/disbursement/01JSANDBOXACCOUNT/inquiry-status"));
    assert_eq!(request.0, json!({ "reference_number": "PAYOUT-R-1" }));
    assert_eq!(http_status, 200);
    let response: Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(response["data"]["transaction_status"]["code"], "00");
    assert_eq!((answer.as_str(), status.as_str(), transition.as_str(), version), ("status", "succeeded", "applied", 1));
    let checks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_checks").fetch_one(&app.db).await.unwrap();
    assert_eq!(checks, 0, "a final status ends the check");

    // Nothing more to ask; one token served the question.
    let again = rec.pass(None).await.unwrap();
    assert!(again.outcomes.is_empty() && again.discovered == 0, "{again:?}");
    let requests = api.requests().await;
    assert_eq!(requests.iter().filter(|r| r.kind == "inquiry").count(), 1);
    assert_eq!(requests.iter().filter(|r| r.kind == "token").map(|r| r.answered.as_str()).collect::<Vec<_>>(), ["200"]);
}

/// Acceptance 2: overdue money-out is asked about until Singapay has a final status; one
/// that stays pending is asked again with backoff, never sooner than configured; one not
/// yet overdue is not asked.
#[tokio::test]
async fn overdue_disbursements_are_asked_until_final_and_never_more_often_than_the_backoff() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let cases = [
        ("7700000000000000000000000000011", "PAYOUT-A"),
        ("7700000000000000000000000000012", "PAYOUT-B"),
        ("7700000000000000000000000000013", "PAYOUT-C"),
    ];
    for (id, reference) in cases {
        assert_eq!(app.send(&disbursement(id, reference, "SP000", Some("01"))).await.status, 200);
    }
    // A and B last changed 16 minutes ago (over the 15-minute threshold), C 10 minutes ago.
    for (id, minutes) in [(cases[0].0, 16), (cases[1].0, 16), (cases[2].0, 10)] {
        backdate(&app, &format!("disbursement:{id}"), minutes).await;
    }
    api.script("PAYOUT-A", &["03", "00"]).await;
    api.script("PAYOUT-B", &["03"]).await;
    api.script("PAYOUT-C", &["00"]).await;

    let rec = reconciler(&app, settings(&api), None);
    let until = std::time::Instant::now() + Duration::from_millis(5500);
    while std::time::Instant::now() < until {
        rec.pass(None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = format!("disbursement:{}", cases[0].0);
    let b = format!("disbursement:{}", cases[1].0);
    let c = format!("disbursement:{}", cases[2].0);
    assert_eq!(transaction(&app, &a).await, Some(("succeeded".into(), 3)), "01 → 03 → 00");
    let a_events: Vec<(i32, String)> = events(&app, &a).await.into_iter().map(|(v, w, _)| (v, w)).collect();
    assert_eq!(a_events, [(1, "disbursement".into()), (2, "inquiry".into()), (3, "inquiry".into())]);
    let kept: bool = sqlx::query_scalar(
        "SELECT t.last_delivery_id = d.id FROM singapay.transactions t JOIN singapay.deliveries d ON d.transaction_key = t.transaction_key WHERE t.transaction_key = $1",
    )
    .bind(&a)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(kept, "answers leave a stored transaction's deliveries as they were");
    assert_eq!(transaction(&app, &b).await, Some(("pending".into(), 2)), "01 → 03, then unchanged");
    assert_eq!(events(&app, &b).await.len(), 2, "a repeated answer queues nothing");
    assert_eq!(transaction(&app, &c).await, Some(("initiated".into(), 1)), "not overdue yet");

    let asked = api.inquiries().await;
    let times = |reference: &str| {
        asked.iter().filter(|r| r.id.as_deref() == Some(reference)).map(|r| r.at_ms).collect::<Vec<_>>()
    };
    assert_eq!(times("PAYOUT-A").len(), 2);
    assert!(times("PAYOUT-C").is_empty());
    let b_times = times("PAYOUT-B");
    // Backoff 1 s doubling to 2 s over 5.5 s: asked at 0, 1, 3, 5 s.
    assert!((3..=4).contains(&b_times.len()), "{b_times:?}");
    for gap in b_times.windows(2).map(|w| w[1] - w[0]) {
        assert!(gap >= 950, "asked again after {gap} ms, sooner than the 1 s backoff: {b_times:?}");
    }
    let (asked_b, state): (i32, String) =
        sqlx::query_as("SELECT asked, state FROM singapay.reconcile_checks WHERE transaction_key = $1")
            .bind(&b)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((asked_b as usize, state.as_str()), (b_times.len(), "open"));
}

/// Acceptance 4: SP005 and a hanging API back off and recover; SP009 ends after the
/// configured attempts; a 403 stops inquiries (the receiver takes callbacks throughout).
#[tokio::test]
async fn faults_back_off_recover_give_up_and_stop() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let ids = ["7700000000000000000000000000021", "7700000000000000000000000000022", "7700000000000000000000000000023"];
    api.script("PAYOUT-SP005", &["SP005", "00"]).await;
    api.script("PAYOUT-HANG", &["hang", "00"]).await;
    api.script("PAYOUT-SP009", &["SP009"]).await;
    for (id, reference) in ids.iter().zip(["PAYOUT-SP005", "PAYOUT-HANG", "PAYOUT-SP009"]) {
        assert_eq!(app.send(&disbursement(id, reference, "SP002", None)).await.status, 200);
    }
    let mut s = settings(&api);
    s.credentials[0].api.timeout = Duration::from_millis(800);
    let rec = reconciler(&app, s, None);

    let first = rec.pass(None).await.unwrap();
    assert_eq!(first.outcomes.len(), 3, "{first:?}");
    for o in &first.outcomes {
        assert_eq!(o.next, Next::Again { after_secs: 1 }, "{o:?}");
    }
    let hang = only(&first.outcomes, &format!("disbursement:{}", ids[1]));
    assert_eq!(hang.answer, "retry_later");
    // Asked again only once the backoff has passed.
    assert!(rec.pass(None).await.unwrap().outcomes.is_empty());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        rec.pass(None).await.unwrap();
    }
    for id in &ids[..2] {
        assert_eq!(transaction(&app, &format!("disbursement:{id}")).await, Some(("succeeded".into(), 1)));
    }
    let (state, asked, not_found, error): (String, i32, i32, Option<String>) = sqlx::query_as(
        "SELECT state, asked, not_found, last_error FROM singapay.reconcile_checks WHERE transaction_key = $1",
    )
    .bind(format!("disbursement:{}", ids[2]))
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((state.as_str(), asked, not_found), ("gave_up", 3, 3));
    assert!(error.unwrap().contains("not found 3 times"));
    let sp009 = api.inquiries().await.iter().filter(|r| r.id.as_deref() == Some("PAYOUT-SP009")).count();
    assert_eq!(sp009, 3, "given up after the configured attempts");
    let answers: Vec<String> =
        sqlx::query_scalar("SELECT answer FROM singapay.inquiries WHERE transaction_key = $1 ORDER BY id")
            .bind(format!("disbursement:{}", ids[2]))
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(answers, ["not_found"; 3]);

    // 403 at the token endpoint: inquiries stop, the pass says why, the metric is set.
    api.control("revoke", json!({})).await;
    api.control("token-fault", json!({"answer": "403"})).await;
    assert_eq!(
        app.send(&disbursement("7700000000000000000000000000024", "PAYOUT-403", "SP005", None)).await.status,
        200
    );
    let stopped = rec.pass(None).await.unwrap();
    assert!(stopped.halted.as_deref().is_some_and(|c| c.contains("403")), "{stopped:?}");
    let before = api.requests().await.len();
    for _ in 0..3 {
        let again = rec.pass(None).await.unwrap();
        assert!(again.halted.is_some() && again.outcomes.is_empty());
        // The receiver keeps taking callbacks.
        let id = format!("77000000000000000000000000001{}", rand::random::<u8>() % 90 + 10);
        assert_eq!(app.send(&disbursement(&id, "PAYOUT-X", "SP000", Some("00"))).await.status, 200);
    }
    assert_eq!(api.requests().await.len(), before, "nothing asked while stopped");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(crate::helpers::metric(&metrics, "singapay_reconcile_halted"), 1.0, "{metrics}");
    // The check was not counted as asked.
    let asked: i32 = sqlx::query_scalar("SELECT asked FROM singapay.reconcile_checks WHERE transaction_key = $1")
        .bind("disbursement:7700000000000000000000000000024")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(asked, 0);
}

/// Acceptance 4: `SP017` on an inquiry stops inquiries too.
#[tokio::test]
async fn an_ip_refusal_on_an_inquiry_stops_inquiries() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    api.script("PAYOUT-IP", &["SP017"]).await;
    api.script("PAYOUT-IP2", &["00"]).await;
    assert_eq!(
        app.send(&disbursement("7700000000000000000000000000031", "PAYOUT-IP", "SP001", None)).await.status,
        200
    );
    assert_eq!(
        app.send(&disbursement("7700000000000000000000000000032", "PAYOUT-IP2", "SP001", None)).await.status,
        200
    );
    let mut s = settings(&api);
    s.concurrency = 1;
    let rec = reconciler(&app, s, None);
    let report = rec.pass(None).await.unwrap();
    assert!(report.halted.as_deref().is_some_and(|c| c.contains("SP017")), "{report:?}");
    assert_eq!(report.outcomes.len(), 1, "stopped after the refusal: {report:?}");
    let answer: String = sqlx::query_scalar("SELECT answer FROM singapay.inquiries").fetch_one(&app.db).await.unwrap();
    assert_eq!(answer, "forbidden");
    assert_eq!(api.inquiries().await.len(), 1);
}

/// Acceptance 5: a live callback and an inquiry's answer for the same transactions at the
/// same instant: gap-free versions, exactly one event per real change.
#[tokio::test]
async fn a_callback_racing_an_inquiry_gives_gap_free_versions_and_one_event_per_change() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let n = 24;
    let keys: Vec<(String, String)> =
        (0..n).map(|i| (format!("77000000000000000000000000{i:05}"), format!("PAYOUT-RACE-{i}"))).collect();
    for (i, (id, reference)) in keys.iter().enumerate() {
        assert_eq!(app.send(&disbursement(id, reference, "SP000", Some("01"))).await.status, 200);
        // Half are answered with what the callback says, half with a step before it.
        api.script(reference, &[if i % 2 == 0 { "00" } else { "03" }]).await;
        let requested: bool = sqlx::query_scalar("SELECT singapay.request_check($1)")
            .bind(format!("disbursement:{id}"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(requested);
    }
    let mut s = settings(&api);
    s.concurrency = 8;
    let rec = reconciler(&app, s, None);
    let pass = {
        let rec = Arc::clone(&rec);
        tokio::spawn(async move { rec.pass(None).await.unwrap() })
    };
    let callbacks: Vec<String> =
        keys.iter().map(|(id, reference)| disbursement(id, reference, "SP000", Some("00"))).collect();
    let sends = futures::future::join_all(callbacks.iter().map(|b| app.send(b))).await;
    assert!(sends.iter().all(|r| r.status == 200));
    let report = pass.await.unwrap();
    assert_eq!(report.outcomes.len(), n);
    for (id, _) in &keys {
        let key = format!("disbursement:{id}");
        let (status, version) = transaction(&app, &key).await.unwrap();
        assert_eq!(status, "succeeded", "{key}");
        let evs = events(&app, &key).await;
        let versions: Vec<i32> = evs.iter().map(|e| e.0).collect();
        assert_eq!(versions, (1..=version).collect::<Vec<_>>(), "{key}: gap-free, one event per version");
        assert_eq!(evs.last().unwrap().2["to_status"], "succeeded");
        // Exactly one of the two said `succeeded` first; the other was unchanged or stale.
        let to: Vec<&str> = evs.iter().map(|e| e.2["to_status"].as_str().unwrap()).collect();
        assert_eq!(to.iter().filter(|s| **s == "succeeded").count(), 1, "{key}: {to:?}");
    }
}

/// Acceptance 5: two replicas reconciling one database never ask about the same transaction
/// at the same time, and each check is asked about once.
#[tokio::test]
async fn two_replicas_never_ask_about_the_same_transaction_at_once() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let n = 16;
    for i in 0..n {
        let reference = format!("PAYOUT-TWO-{i}");
        api.script(&reference, &["slow:00"]).await;
        let id = format!("77000000000000000000000000{:05}", 500 + i);
        assert_eq!(app.send(&disbursement(&id, &reference, "SP001", None)).await.status, 200);
    }
    let one = reconciler(&app, settings(&api), None);
    let two = reconciler(&app, settings(&api), None);
    let (a, b) = tokio::join!(
        async {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.extend(one.pass(None).await.unwrap().outcomes);
            }
            all
        },
        async {
            let mut all = Vec::new();
            for _ in 0..4 {
                all.extend(two.pass(None).await.unwrap().outcomes);
            }
            all
        }
    );
    assert_eq!(a.len() + b.len(), n, "each check asked about once: {a:?} {b:?}");
    assert!(!a.is_empty() && !b.is_empty(), "both replicas worked: {} and {}", a.len(), b.len());
    let asked = api.inquiries().await;
    assert_eq!(asked.len(), n);
    assert!(asked.iter().all(|r| r.concurrent == 0), "{asked:?}");
    let mut ids: Vec<&str> = asked.iter().filter_map(|r| r.id.as_deref()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n);
    let succeeded: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.transactions WHERE status = 'succeeded'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(succeeded, n as i64);
}

/// A lease keeps a second replica away while the first one's question is out, even once the
/// check is due again.
#[tokio::test]
async fn a_check_in_flight_is_not_taken_by_another_replica() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    api.script("PAYOUT-LEASE", &["hang"]).await;
    assert_eq!(
        app.send(&disbursement("7700000000000000000000000000041", "PAYOUT-LEASE", "SP001", None)).await.status,
        200
    );
    let mut s = settings(&api);
    s.credentials[0].api.timeout = Duration::from_secs(3);
    let one = reconciler(&app, s.clone(), None);
    let two = reconciler(&app, s, None);
    let first = {
        let one = Arc::clone(&one);
        tokio::spawn(async move { one.pass(None).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Due now, but leased: the second replica leaves it alone.
    sqlx::query("UPDATE singapay.reconcile_checks SET due_at = now() - interval '1 minute'")
        .execute(&app.db)
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(two.pass(None).await.unwrap().outcomes.is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let report = first.await.unwrap();
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(api.inquiries().await.len(), 1);
}

/// Products without an inquiry endpoint are never asked: a requested check of a settlement
/// is given up with the reason, and the API sees nothing.
#[tokio::test]
async fn products_without_an_inquiry_are_never_asked() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let r = app.send(&crate::helpers::payload("settlement")).await;
    assert_eq!(r.status, 200);
    let key: String =
        sqlx::query_scalar("SELECT transaction_key FROM singapay.transactions WHERE product = 'settlement'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let requested: bool =
        sqlx::query_scalar("SELECT singapay.request_check($1)").bind(&key).fetch_one(&app.db).await.unwrap();
    assert!(requested);
    let report = reconciler(&app, settings(&api), None).pass(None).await.unwrap();
    let o = only(&report.outcomes, &key);
    assert!(matches!(&o.next, Next::GiveUp(why) if why.contains("no inquiry for settlement")), "{o:?}");
    assert!(api.requests().await.is_empty(), "no token, no question");
    let state: String = sqlx::query_scalar("SELECT state FROM singapay.reconcile_checks WHERE transaction_key = $1")
        .bind(&key)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "gave_up");
}

/// Acceptance 3 at the reconciler's level: a refused token on a question is renewed and
/// the question asked once more; a second refusal is recorded and left for later, not
/// looped.
#[tokio::test]
async fn a_token_refused_twice_is_recorded_not_looped() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    api.script("PAYOUT-SP013", &["SP013"]).await;
    assert_eq!(
        app.send(&disbursement("7700000000000000000000000000051", "PAYOUT-SP013", "SP001", None)).await.status,
        200
    );
    let report = reconciler(&app, settings(&api), None).pass(None).await.unwrap();
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(report.outcomes[0].answer, "token_rejected");
    assert_eq!(report.outcomes[0].next, Next::Again { after_secs: 1 });
    let kinds: Vec<String> = api.requests().await.into_iter().map(|r| r.kind).collect();
    assert_eq!(kinds, ["token", "inquiry", "token", "inquiry"]);
    let (answer, renewed): (String, bool) =
        sqlx::query_as("SELECT answer, retried_with_new_token FROM singapay.inquiries")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((answer.as_str(), renewed), ("token_rejected", true));
}

/// Money-in is asked by its own endpoint (a VA by its transaction id, with GET) once
/// overdue by the money-in threshold (found by a later pass's incremental discovery), and
/// Singapay's `paid` is applied as `succeeded`.
#[tokio::test]
async fn an_overdue_va_is_asked_by_its_own_endpoint() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let mut s = settings(&api);
    s.money_in_overdue = Duration::from_secs(2);
    let rec = reconciler(&app, s, None);
    assert!(rec.pass(None).await.unwrap().outcomes.is_empty(), "the first, full discovery finds nothing");
    let body = crate::helpers::payload("va-transaction").replace(r#""status": "paid""#, r#""status": "unpaid""#);
    assert_eq!(app.send(&body).await.status, 200);
    let key: String =
        sqlx::query_scalar("SELECT transaction_key FROM singapay.transactions").fetch_one(&app.db).await.unwrap();
    assert_eq!(transaction(&app, &key).await.unwrap().0, "pending");
    let id = key.strip_prefix("va:").unwrap().to_owned();
    api.script(&id, &["paid"]).await;
    assert!(rec.pass(None).await.unwrap().outcomes.is_empty(), "not overdue yet");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = rec.pass(None).await.unwrap();
    let o = only(&report.outcomes, &key);
    assert_eq!(
        (o.reason.as_str(), o.status.as_deref(), o.transition.as_deref()),
        ("overdue", Some("succeeded"), Some("applied"))
    );
    let path: String =
        sqlx::query_scalar("SELECT method || ' ' || path FROM singapay.inquiries").fetch_one(&app.db).await.unwrap();
    assert_eq!(path, format!("GET /api/v1.0/va-transactions/{SANDBOX_ACCOUNT}/{id}"));
    assert_eq!(transaction(&app, &key).await, Some(("succeeded".into(), 2)));
}

/// A long backlog does not keep one pass going: it stops at `interval` and says more is
/// due, so that the loop finds new checks at least that often.
#[tokio::test]
async fn a_pass_stops_at_its_interval_and_says_more_is_due() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    for i in 0..8 {
        let reference = format!("PAYOUT-LONG-{i}");
        api.script(&reference, &["slow:00"]).await;
        let id = format!("77000000000000000000000000{:05}", 700 + i);
        assert_eq!(app.send(&disbursement(&id, &reference, "SP001", None)).await.status, 200);
    }
    let mut s = settings(&api);
    s.concurrency = 1;
    s.interval = Duration::from_secs(1);
    let rec = reconciler(&app, s, None);
    let first = rec.pass(None).await.unwrap();
    assert!(first.more && (2..8).contains(&first.outcomes.len()), "{first:?}");
    let mut done = first.outcomes.len();
    while done < 8 {
        let next = rec.pass(None).await.unwrap();
        assert!(!next.outcomes.is_empty());
        done += next.outcomes.len();
    }
    assert_eq!(done, 8);
    assert!(!rec.pass(None).await.unwrap().more);
}

/// A failed or abandoned e-wallet checkout sends no callback: asked for by key and
/// Singapay's id, its outcome becomes a transaction with one event. A key of no product with
/// an inquiry is refused; one whose inquiry lacks its identifier is given up, saying so.
#[tokio::test]
async fn a_checkout_that_never_called_back_is_asked_about_on_request() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    // Singapay's record names the checkout by its id and the merchant's reff_no.
    api.control(
        "transactions",
        json!({"id": "4455", "reff_no": "INV-9", "product": "ewallet", "answers": ["expired"]}),
    )
    .await;
    let request = |key: &'static str, singapay_id: Option<&'static str>| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT singapay.request_check($1, p_singapay_id => $2)")
                .bind(key)
                .bind(singapay_id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert!(request("ewallet:INV-9", Some("4455")).await);
    assert!(request("ewallet:INV-10", None).await);
    assert!(!request("settlement:NOTHING", None).await, "settlements have no inquiry");
    assert!(!request("nonsense:1", None).await);
    assert!(!request("ewallet:", None).await);

    let report = reconciler(&app, settings(&api), None).pass(None).await.unwrap();
    assert_eq!(report.outcomes.len(), 2, "{report:?}");
    let o = only(&report.outcomes, "ewallet:INV-9");
    assert_eq!(
        (o.status.as_deref(), o.transition.as_deref(), &o.next),
        (Some("expired"), Some("applied"), &Next::Done)
    );
    let (status, version, singapay_id, last_delivery): (String, i32, Option<String>, Option<i64>) = sqlx::query_as(
        "SELECT status, version, singapay_id, last_delivery_id FROM singapay.transactions WHERE transaction_key = 'ewallet:INV-9'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), version, singapay_id.as_deref(), last_delivery), ("expired", 1, Some("4455"), None));
    let evs = events(&app, "ewallet:INV-9").await;
    assert_eq!(evs.len(), 1);
    assert_eq!((evs[0].1.as_str(), evs[0].2["source"].as_str()), ("inquiry", Some("inquiry")));
    let gave_up = only(&report.outcomes, "ewallet:INV-10");
    assert!(matches!(&gave_up.next, Next::GiveUp(why) if why.contains("identifier")), "{gave_up:?}");
    assert_eq!(api.inquiries().await.len(), 1, "only the checkout with an id was asked about");
}

/// Incremental discovery looks only at transactions that became overdue after `since`;
/// the full one at every open transaction.
#[tokio::test]
async fn incremental_discovery_finds_what_became_overdue_since_the_last_one() {
    use singapay_webhooks::store::inquiries;
    let app = TestApp::spawn().await;
    for (id, minutes) in [("7700000000000000000000000000601", 120), ("7700000000000000000000000000602", 20)] {
        assert_eq!(app.send(&disbursement(id, &format!("PAYOUT-{id}"), "SP000", Some("03"))).await.status, 200);
        backdate(&app, &format!("disbursement:{id}"), minutes).await;
    }
    let overdue = [("disbursement", 15 * 60)];
    let keys = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT transaction_key FROM singapay.reconcile_checks ORDER BY 1")
            .fetch_all(&db)
            .await
            .unwrap()
    };
    let mut conn = app.db.acquire().await.unwrap();
    // The previous discovery ran 10 minutes ago: since then, what changed 15 to 25 minutes
    // ago became overdue; what changed two hours ago was overdue then already.
    let since = Utc::now() - chrono::Duration::minutes(10);
    let found = inquiries::discover(&mut conn, &overdue, Some(since)).await.unwrap();
    assert_eq!((found.added, found.complete), (1, true));
    assert_eq!(keys(app.db.clone()).await, ["disbursement:7700000000000000000000000000602"]);
    let found = inquiries::discover(&mut conn, &overdue, None).await.unwrap();
    assert_eq!(found.added, 1);
    assert_eq!(keys(app.db.clone()).await.len(), 2);
    assert!(found.started_at <= Utc::now());
}

/// Answers that cannot be applied (unreadable, about another record) are asked again with
/// the backoff, at most `unreadable_attempts` times: then the check is flagged for a person,
/// in `singapay.reconcile_attention` and the checks gauge, and asked no more.
#[tokio::test]
async fn answers_that_cannot_be_applied_end_in_a_flag_for_a_person() {
    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    // First an HTML page, then twice a record that is not ours (another reference, paid).
    let other = json!({"response_code": "SP000", "response_message": "Success",
                       "data": {"reference_number": "PAYOUT-OTHER", "transaction_status": {"code": "00", "desc": "Success"}}});
    api.control(
        "transactions",
        json!({"id": "PAYOUT-ODD", "answers": [{"http_status": 200, "body_text": "<html>maintenance</html>"},
                                               {"http_status": 200, "body": other}]}),
    )
    .await;
    let id = "7700000000000000000000000000031";
    let key = format!("disbursement:{id}");
    assert_eq!(app.send(&disbursement(id, "PAYOUT-ODD", "SP002", None)).await.status, 200);
    let rec = reconciler(&app, settings(&api), None);
    let mut answers = Vec::new();
    for _ in 0..5 {
        sqlx::query("UPDATE singapay.reconcile_checks SET due_at = now()").execute(&app.db).await.unwrap();
        let report = rec.pass(None).await.unwrap();
        answers.extend(report.outcomes.iter().map(|o| (o.answer.clone(), o.next.clone())));
    }
    assert_eq!(answers.len(), 3, "asked three times, then no more: {answers:?}");
    assert_eq!(answers[0], ("unreadable".to_owned(), Next::Again { after_secs: 1 }));
    assert_eq!(answers[1], ("mismatch".to_owned(), Next::Again { after_secs: 2 }));
    assert!(matches!(&answers[2], (a, Next::Flag(why)) if a == "mismatch" && why.contains("3 answers")), "{answers:?}");
    assert_eq!(transaction(&app, &key).await, None, "nothing was applied");
    let (state, unreadable, last_answer): (String, i32, String) = sqlx::query_as(
        "SELECT state, unreadable, last_answer FROM singapay.reconcile_attention WHERE transaction_key = $1",
    )
    .bind(&key)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((state.as_str(), unreadable, last_answer.as_str()), ("flagged", 3, "mismatch"));
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM singapay.inquiries WHERE transaction_key = $1 AND answer = 'mismatch' LIMIT 1",
    )
    .bind(&key)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(detail.contains("reference_number=PAYOUT-OTHER"), "{detail}");
    rec.count_checks().await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let flagged = metrics
        .lines()
        .find(|l| l.starts_with("singapay_reconcile_checks{") && l.contains("needs_inquiry") && l.contains("flagged"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(flagged.ends_with(" 1"), "{flagged}");
    // Asked for by someone, it is asked again from the start.
    assert!(inquiries_request_check(&app, &key).await);
    let state: String = sqlx::query_scalar("SELECT state FROM singapay.reconcile_checks WHERE transaction_key = $1")
        .bind(&key)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(state, "open");
}

async fn inquiries_request_check(app: &TestApp, key: &str) -> bool {
    sqlx::query_scalar("SELECT singapay.request_check($1)").bind(key).fetch_one(&app.db).await.unwrap()
}
