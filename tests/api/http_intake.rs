//! Callbacks in, rows out: classification of every sample, retries, ordering, staleness.

use serde_json::json;

use crate::helpers::{now, payload, TestApp, DEFAULT_PATH};

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    webhook_type: String,
    event: Option<String>,
    transaction_key: Option<String>,
    status: Option<String>,
    response_code: Option<String>,
    transaction_status_code: Option<String>,
    outcome: String,
    signature_form: String,
    credential: String,
    times_received: i32,
    needs_inquiry: bool,
}

async fn delivery(app: &TestApp, id: i64) -> DeliveryRow {
    sqlx::query_as(
        "SELECT webhook_type, event, transaction_key, status, response_code, transaction_status_code,
                outcome, signature_form, credential, times_received, needs_inquiry
           FROM singapay.deliveries WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

async fn events_for(app: &TestApp, key: &str) -> Vec<(i32, Option<String>, String)> {
    sqlx::query_as(
        "SELECT version, from_status, to_status FROM singapay.transaction_events
          WHERE transaction_key = $1 ORDER BY version",
    )
    .bind(key)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Expected values read off the sample bodies in tests/fixtures/payloads (Singapay's
/// documented shapes), not from this code.
/// (file, webhook_type, transaction_key, status, response_code, transaction_status_code)
type Sample = (&'static str, &'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>);

const SINGLE_SAMPLES: &[Sample] = &[
    ("va-transaction", "va-transaction", "va:3211120260314091205518", "succeeded", None, None),
    (
        "qris-acquirer-transaction",
        "qris-acquirer-transaction",
        "qris:6601K9Q2ZC7RM3B8T1XW4HF0NE",
        "succeeded",
        None,
        None,
    ),
    (
        "payment-link-transaction",
        "payment-link-transaction",
        "payment_link:31245417720260315190255812QwErTy",
        "succeeded",
        None,
        None,
    ),
    (
        "payment-link-inquiry",
        "payment-link-inquiry",
        "payment_link:31245417720260315190255812QwErTy",
        "pending",
        None,
        None,
    ),
    (
        "ewallet-native-transaction",
        "ewallet-native-transaction",
        "ewallet:EW2026031608245533XK",
        "succeeded",
        None,
        None,
    ),
    (
        "disbursement",
        "disbursement",
        "disbursement:1405981222026031614220917745120",
        "succeeded",
        Some("SP000"),
        Some("00"),
    ),
    (
        "ewallet-topup",
        "ewallet-topup",
        "ewallet_topup:1412871222026031710054011209356",
        "succeeded",
        Some("SP000"),
        Some("00"),
    ),
    ("qris-issuer", "qris-issuer", "qris_issuer:1420331222026031809100035581744", "failed", Some("SP001"), Some("06")),
    ("settlement", "settlement", "settlement:SETTLEMENT-57-K4Q9ZT", "completed", None, None),
    ("subscription-cycle", "subscription-cycle", "subscription_bill:BILL-20260401-00418-02", "failed", None, None),
    ("direct-debit", "direct-debit", "direct_debit:6f1d2c3b-8a4e-4f7a-9b21-3c5d7e9f0a12", "active", None, None),
];

#[tokio::test]
async fn every_sample_is_accepted_and_classified() {
    let app = TestApp::spawn().await;
    for (file, wtype, key, status, rc, tsc) in SINGLE_SAMPLES {
        let r = app.send(&payload(file)).await;
        assert_eq!(r.status, 200, "{file}: {:?}", r.json);
        assert!(!r.duplicate());
        let d = delivery(&app, r.delivery_id()).await;
        assert_eq!(d.webhook_type, *wtype, "{file}");
        assert_eq!(d.transaction_key.as_deref(), Some(*key), "{file}");
        assert_eq!(d.status.as_deref(), Some(*status), "{file}");
        assert_eq!(d.response_code.as_deref(), *rc, "{file}");
        assert_eq!(d.transaction_status_code.as_deref(), *tsc, "{file}");
        assert_eq!(d.signature_form, "php");
        assert_eq!(d.credential, "primary");
        let current: String = sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
            .bind(key)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if *file == "payment-link-inquiry" {
            // Sent after the paid callback for the same attempt: a late "pending" is stale.
            assert_eq!(d.outcome, "stale");
            assert_eq!(current, "succeeded");
        } else {
            assert_eq!(d.outcome, "applied", "{file}");
            assert_eq!(&current, status, "{file}");
        }
    }
    // Request-level codes and payment state live in their own columns.
    let (rc, tsc, st, amount): (String, String, String, String) = sqlx::query_as(
        "SELECT t.last_response_code, t.transaction_status_code, t.status, t.amount::text
           FROM singapay.transactions t WHERE transaction_key = 'qris_issuer:1420331222026031809100035581744'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((rc.as_str(), tsc.as_str(), st.as_str(), amount.as_str()), ("SP001", "06", "failed", "30000.00"));
    let (amount, merchant_ref): (String, String) = sqlx::query_as(
        "SELECT amount::text, merchant_reference FROM singapay.transactions WHERE transaction_key = 'va:3211120260314091205518'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((amount.as_str(), merchant_ref.as_str()), ("245000", "ORD-77310-A"));
}

#[tokio::test]
async fn expiration_batches_produce_one_state_change_per_item() {
    let app = TestApp::spawn().await;
    for (file, keys) in [
        ("product-expiration", vec!["payment_link:INV-2026-03-0902", "qris:6601KA1B2C3D4E5F6G7H8J9K0M"]),
        (
            "transaction-expiration",
            vec![
                "payment_link:31305417720260321043102990AbCdEf",
                "qris:6601KA9X8W7V6T5S4R3Q2P1N0M",
                "qris:6601KA9X8W7V6T5S4R3Q2P1N0P",
            ],
        ),
    ] {
        let r = app.send(&payload(file)).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        let d = delivery(&app, r.delivery_id()).await;
        assert_eq!(d.webhook_type, file);
        assert_eq!(d.outcome, "batch");
        let changed: Vec<String> = sqlx::query_scalar(
            "SELECT transaction_key FROM singapay.transaction_events WHERE delivery_id = $1 AND to_status = 'expired' ORDER BY 1",
        )
        .bind(r.delivery_id())
        .fetch_all(&app.db)
        .await
        .unwrap();
        assert_eq!(changed, keys, "{file}");
    }
}

#[tokio::test]
async fn unknown_events_and_unusable_fields_are_stored_as_unrecognised() {
    let app = TestApp::spawn().await;
    let r = app.send(r#"{"status":200,"success":true,"event":"kyb-result","data":{"id":1}}"#).await;
    assert_eq!(r.status, 200);
    let d = delivery(&app, r.delivery_id()).await;
    assert_eq!((d.webhook_type.as_str(), d.outcome.as_str()), ("unknown", "unrecognised"));
    assert_eq!(d.event.as_deref(), Some("kyb-result"));
    // A known type whose id has the wrong type: authentic, acknowledged, never applied.
    let r = app.send(r#"{"event":"disbursement","response_code":"SP000","data":{"transaction_id":[1],"transaction_status":{"code":"00"}}}"#).await;
    assert_eq!(r.status, 200);
    let d = delivery(&app, r.delivery_id()).await;
    assert_eq!((d.webhook_type.as_str(), d.outcome.as_str()), ("disbursement", "unrecognised"));
    assert_eq!(app.count("transactions").await, 0);
    assert_eq!(app.count("transaction_events").await, 0);
}

#[tokio::test]
async fn a_retry_is_a_duplicate_not_a_second_row() {
    let app = TestApp::spawn().await;
    let body = payload("va-transaction");
    let first = app.send(&body).await;
    assert_eq!((first.status, first.duplicate()), (200, false));
    // Same body, new timestamp, token and signature.
    let again = app.send_at(&body, now() + 1).await;
    assert_eq!(again.status, 200);
    assert!(again.duplicate());
    assert_eq!(again.delivery_id(), first.delivery_id());
    assert_eq!(app.count("deliveries").await, 1);
    assert_eq!(delivery(&app, first.delivery_id()).await.times_received, 2);
    assert_eq!(app.count("transaction_events").await, 1);
    // A re-serialised retry (other whitespace and key order) is the same content.
    let reordered = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&body).unwrap()).unwrap();
    let third = app.send(&reordered).await;
    assert!(third.duplicate(), "{:?}", third.json);
    assert_eq!(app.count("deliveries").await, 1);
}

fn disbursement(id: &str, response_code: &str, status_code: &str, note: &str) -> String {
    json!({
        "response_code": response_code,
        "response_message": if response_code == "SP000" { "Successfully" } else { "Transaction Failure" },
        "event": "disbursement",
        "data": {
            "transaction_id": id,
            "reference_number": "PAYOUT-T-1",
            "transaction_status": { "code": status_code, "desc": "x" },
            "post_timestamp": "1773645729000",
            "processed_timestamp": "",
            "net_amount": { "currency": "IDR", "value": "10000.00" },
            "notes": note
        }
    })
    .to_string()
}

#[tokio::test]
async fn disbursement_sequence_versions_and_a_late_pending_is_stale() {
    let app = TestApp::spawn().await;
    let id = "1405981222026031614220917740001";
    let key = format!("disbursement:{id}");
    let mut outcomes = Vec::new();
    for (i, code) in ["01", "03", "00", "03"].iter().enumerate() {
        let r = app.send(&disbursement(id, "SP000", code, &format!("step {i}"))).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        outcomes.push(delivery(&app, r.delivery_id()).await.outcome);
    }
    assert_eq!(outcomes, ["applied", "applied", "applied", "stale"]);
    assert_eq!(
        events_for(&app, &key).await,
        vec![
            (1, None, "initiated".to_owned()),
            (2, Some("initiated".to_owned()), "pending".to_owned()),
            (3, Some("pending".to_owned()), "succeeded".to_owned()),
        ]
    );
    let (status, version): (String, i32) =
        sqlx::query_as("SELECT status, version FROM singapay.transactions WHERE transaction_key = $1")
            .bind(&key)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), version), ("succeeded", 3));
}

#[tokio::test]
async fn request_codes_never_decide_the_payment_state() {
    let app = TestApp::spawn().await;
    let r = app.send(&disbursement("900000000000000000000000000001", "SP000", "01", "a")).await;
    let d = delivery(&app, r.delivery_id()).await;
    assert_eq!(d.status.as_deref(), Some("initiated"), "SP000 + 01 is initiated, never succeeded");
    let r = app.send(&disbursement("900000000000000000000000000002", "SP001", "06", "b")).await;
    let d = delivery(&app, r.delivery_id()).await;
    assert_eq!(d.status.as_deref(), Some("failed"));
    assert_eq!(d.response_code.as_deref(), Some("SP001"));
    // SP005 without any status: state untouched, inquiry flagged.
    let body = r#"{"response_code":"SP005","response_message":"Timeout","event":"disbursement","data":{"transaction_id":"900000000000000000000000000001"}}"#;
    let r = app.send(body).await;
    assert_eq!(r.status, 200);
    let d = delivery(&app, r.delivery_id()).await;
    assert!(d.needs_inquiry);
    assert_eq!(d.status, None);
    assert_eq!(d.outcome, "unchanged");
    let st: String = sqlx::query_scalar(
        "SELECT status FROM singapay.transactions WHERE transaction_key = 'disbursement:900000000000000000000000000001'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(st, "initiated");
}

#[tokio::test]
async fn terminal_to_terminal_is_a_conflict_and_success_to_refund_is_applied() {
    let app = TestApp::spawn().await;
    let id = "900000000000000000000000000003";
    app.send(&disbursement(id, "SP000", "00", "1")).await;
    let r = app.send(&disbursement(id, "SP001", "06", "2")).await;
    assert_eq!(delivery(&app, r.delivery_id()).await.outcome, "conflict");
    let r = app.send(&disbursement(id, "SP000", "04", "3")).await;
    assert_eq!(delivery(&app, r.delivery_id()).await.outcome, "applied");
    let key = format!("disbursement:{id}");
    let to: Vec<String> = events_for(&app, &key).await.into_iter().map(|e| e.2).collect();
    assert_eq!(to, ["succeeded", "refunded"]);
}

#[tokio::test]
async fn stale_timestamps_duplicate_known_content_and_refuse_new_content() {
    let app = TestApp::spawn().await;
    let body = payload("disbursement");
    let first = app.send(&body).await;
    assert_eq!(first.status, 200);
    // Known content, timestamp 10 minutes old: a harmless late retry of the stored delivery,
    // counted on it, and not kept as a rejection.
    let late = app.send_at(&body, now() - 600).await;
    assert_eq!(late.status, 200, "{:?}", late.json);
    assert!(late.duplicate());
    assert_eq!(late.delivery_id(), first.delivery_id());
    let times: i32 = sqlx::query_scalar("SELECT times_received FROM singapay.deliveries WHERE id = $1")
        .bind(first.delivery_id())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(times, 2);
    assert_eq!(app.count("rejected_deliveries").await, 0);
    // New content with a stale (or future) timestamp: refused, kept for replay.
    let fresh_content = payload("ewallet-topup");
    let r = app.send_at(&fresh_content, now() - 600).await;
    assert_eq!((r.status, r.error_code()), (401, "stale_timestamp"));
    let r = app.send_at(&fresh_content, now() + 900).await;
    assert_eq!((r.status, r.error_code()), (401, "stale_timestamp"));
    assert_eq!(app.count("rejected_deliveries").await, 1);
    let times: i32 =
        sqlx::query_scalar("SELECT times_received FROM singapay.rejected_deliveries").fetch_one(&app.db).await.unwrap();
    assert_eq!(times, 2);
    assert_eq!(app.count("deliveries").await, 1);
}

#[tokio::test]
async fn the_dashboard_test_ping_is_acknowledged_and_not_stored() {
    let app = TestApp::spawn().await;
    let body = r#"{"status":200,"success":true,"data":"VA Payment Notification testing"}"#;
    let r = app.post_raw(DEFAULT_PATH, body, None, None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["test"], true);
    assert_eq!(app.total_rows().await, 0);
    // Anything else without signature headers is refused.
    let r = app.post_raw(DEFAULT_PATH, payload("va-transaction"), None, None, None).await;
    assert_eq!((r.status, r.error_code()), (401, "missing_signature_headers"));
}

#[tokio::test]
async fn sub_paths_and_several_credentials_are_accepted() {
    let app = TestApp::spawn_with(|s| {
        s.credentials.push(crate::helpers::credential("default-credential", "the-default-secret"));
    })
    .await;
    let r = app
        .send_signed("/webhooks/singapay/money-out?src=sp", &payload("disbursement"), now(), "the-default-secret")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let (cred, path): (String, String) =
        sqlx::query_as("SELECT credential, request_path FROM singapay.deliveries WHERE id = $1")
            .bind(r.delivery_id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((cred.as_str(), path.as_str()), ("default-credential", "/webhooks/singapay/money-out?src=sp"));
}

#[tokio::test]
async fn a_rewritten_path_verifies_against_the_signed_prefix() {
    let app = TestApp::spawn_with(|s| s.signed_path_prefix = Some("/payments/hooks/sp".into())).await;
    let body = payload("va-transaction");
    let token = "tok123";
    let ts = now().to_string();
    // Singapay signed the public path; the proxy delivered it to WEBHOOK_PATH.
    let sig = crate::helpers::sign_php(&app.secret, "/payments/hooks/sp/va?x=1", token, &body, &ts);
    let r = app.post_raw("/webhooks/singapay/va?x=1", body.clone(), Some(&sig), Some(&ts), Some("Bearer tok123")).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let sig = crate::helpers::sign_php(&app.secret, "/webhooks/singapay/va?x=1", token, &body, &ts);
    let r = app.post_raw("/webhooks/singapay/va?x=1", body, Some(&sig), Some(&ts), Some("Bearer tok123")).await;
    assert_eq!((r.status, r.error_code()), (401, "signature_invalid"));
}

#[tokio::test]
async fn routes_never_redirect() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("/webhooks/singapay/")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let r = app.client.post(app.url("/webhooks/singapayx")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = app.client.post(app.url("/webhooks/singapay/")).body("{}").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("x-request-id").is_some());
}

#[tokio::test]
async fn a_callers_request_id_is_returned_and_stored() {
    let app = TestApp::spawn().await;
    let body = payload("settlement");
    let ts = now().to_string();
    let sig = crate::helpers::sign_php(&app.secret, DEFAULT_PATH, "tok", &body, &ts);
    let r = app
        .client
        .post(app.url(DEFAULT_PATH))
        .header("x-request-id", "lb-trace-1234")
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", "Bearer tok")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "lb-trace-1234");
    let id = r.json::<serde_json::Value>().await.unwrap()["delivery_id"].as_i64().unwrap();
    let stored: String = sqlx::query_scalar("SELECT request_id FROM singapay.deliveries WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, "lb-trace-1234");
}

/// docs/design.md, "What decides the payment state": money-out codes and money-in strings, each
/// on a transaction of its own; `SP001` without a status asks for an inquiry.
#[tokio::test]
async fn every_documented_status_code_and_string_sets_the_documented_state() {
    let app = TestApp::spawn().await;
    let codes = [
        ("00", "succeeded"),
        ("01", "initiated"),
        ("02", "paying"),
        ("03", "pending"),
        ("04", "refunded"),
        ("05", "canceled"),
        ("06", "failed"),
        ("07", "not_found"),
    ];
    for (code, expected) in codes {
        let id = format!("55{code:0>29}");
        let body = serde_json::json!({
            "response_code": "SP000", "event": "disbursement",
            "data": { "transaction_id": id, "transaction_status": { "code": code } }
        })
        .to_string();
        assert_eq!(app.send(&body).await.status, 200);
        let status: String = sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
            .bind(format!("disbursement:{id}"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(status, expected, "money-out code {code}");
    }
    for (i, (string, expected)) in
        [("paid", "succeeded"), ("unpaid", "pending"), ("expired", "expired")].iter().enumerate()
    {
        let id = format!("VA-STATUS-{i}");
        let body = payload("va-transaction")
            .replace("3211120260314091205518", &id)
            .replace(r#""status": "paid""#, &format!(r#""status": "{string}""#));
        assert_eq!(app.send(&body).await.status, 200);
        let status: String = sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
            .bind(format!("va:{id}"))
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert_eq!(&status, expected, "money-in status {string}");
    }
    // SP001 with no status: stored, the state left alone, an inquiry asked for.
    let body = serde_json::json!({
        "response_code": "SP001", "response_message": "Failed", "event": "disbursement",
        "data": { "transaction_id": "5599" }
    })
    .to_string();
    let r = app.send(&body).await;
    assert_eq!(r.status, 200);
    let (inquiry, outcome): (bool, String) =
        sqlx::query_as("SELECT needs_inquiry, outcome FROM singapay.deliveries WHERE id = $1")
            .bind(r.delivery_id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((inquiry, outcome.as_str()), (true, "unchanged"));
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transactions WHERE transaction_key = 'disbursement:5599'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(rows, 0, "no state is invented");
}

/// docs/design.md, "State machine": a failed subscription charge is retried by Singapay, so a later
/// success applies; statuses with no known order replace each other in arrival order.
#[tokio::test]
async fn a_failed_charge_can_still_succeed_and_unranked_statuses_follow_arrival_order() {
    let app = TestApp::spawn().await;
    let bill = |event: &str, at: &str| {
        payload("subscription-cycle")
            .replace("subscription.cycle.payment_failed", event)
            .replace("01 Apr 2026 00:05:12", at)
    };
    let state = |key: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_as::<_, (String, i32)>(
                "SELECT status, version FROM singapay.transactions WHERE transaction_key = $1",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let outcome = |id: i64| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT outcome FROM singapay.deliveries WHERE id = $1")
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    let key = "subscription_bill:BILL-20260401-00418-02";
    let r = app.send(&bill("subscription.cycle.payment_failed", "01 Apr 2026 00:05:12")).await;
    assert_eq!(outcome(r.delivery_id()).await, "applied");
    assert_eq!(state(key).await, ("failed".to_owned(), 1));
    let r = app.send(&bill("subscription.cycle.payment_success", "02 Apr 2026 00:05:12")).await;
    assert_eq!(outcome(r.delivery_id()).await, "applied", "a retried charge that succeeds applies");
    assert_eq!(state(key).await, ("succeeded".to_owned(), 2));
    let r = app.send(&bill("subscription.cycle.payment_failed", "03 Apr 2026 00:05:12")).await;
    assert_eq!(outcome(r.delivery_id()).await, "stale", "a late failure cannot undo the success");
    assert_eq!(state(key).await, ("succeeded".to_owned(), 2));

    let refund = |event: &str, note: u32| {
        serde_json::json!({
            "status": 200, "success": true, "event": event,
            "data": { "refund": { "settlement_detail_id": "SD-77", "transaction_id": "T-77", "note": note } }
        })
        .to_string()
    };
    let key = "settlement_refund:SD-77";
    app.send(&refund("settlement.refund_requested", 1)).await;
    assert_eq!(state(key).await, ("refund_requested".to_owned(), 1));
    app.send(&refund("settlement.refund_completed", 2)).await;
    assert_eq!(state(key).await, ("refund_completed".to_owned(), 2));
    let r = app.send(&refund("settlement.refund_requested", 3)).await;
    assert_eq!(outcome(r.delivery_id()).await, "applied", "no known order: the latest arrival wins");
    assert_eq!(state(key).await, ("refund_requested".to_owned(), 3));
}

/// `partner_id` (X-Partner-ID), `event_at` (the processed time, epoch milliseconds) and
/// `response_class` (SP000 is a successful request) reach their columns.
#[tokio::test]
async fn partner_event_time_and_response_class_are_stored() {
    let app = TestApp::spawn().await;
    let r = app.send(&payload("disbursement")).await;
    assert_eq!(r.status, 200);
    let (partner, event_at, class): (Option<String>, Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
        sqlx::query_as("SELECT partner_id, event_at, response_class FROM singapay.deliveries WHERE id = $1")
            .bind(r.delivery_id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(partner.as_deref(), Some("partner-test"), "the header the test client sends");
    // processed_timestamp "1773645731000" ms = 2026-03-16T07:22:11Z.
    assert_eq!(event_at.map(|t| t.to_rfc3339()).as_deref(), Some("2026-03-16T07:22:11+00:00"));
    assert_eq!(class.as_deref(), Some("success"));
}

/// An expiration sweep expires a transaction still pending, and leaves alone one that was
/// paid meanwhile (both terminal: a conflict, stored and logged, not applied; the payment
/// happened, the sweep is a late view of it).
#[tokio::test]
async fn a_sweep_expires_what_is_pending_and_never_a_payment_that_succeeded() {
    let app = TestApp::spawn().await;
    let qris = |reff: &str, status: &str| {
        payload("qris-acquirer-transaction")
            .replace("6601K9Q2ZC7RM3B8T1XW4HF0NE", reff)
            .replace(r#""status": "paid""#, &format!(r#""status": "{status}""#))
    };
    assert_eq!(app.send(&qris("QR-PENDING", "pending")).await.status, 200);
    assert_eq!(app.send(&qris("QR-PAID", "paid")).await.status, 200);
    let sweep = serde_json::json!({
        "status": 200, "success": true, "event": "transaction-expiration",
        "timestamp": "22 Mar 2026 04:35:02",
        "data": {
            "payment_link_histories": [],
            "virtual_account_transactions": [{ "id": 77, "reff_no": "VA-SWEPT", "status": "expired" }],
            "qris_histories": [
                { "id": 1, "reff_no": "QR-PENDING", "status": "expired" },
                { "id": 2, "reff_no": "QR-PAID", "status": "expired" }
            ],
            "summary": { "payment_link_histories": 0, "virtual_account_transactions": 1, "qris_histories": 2 }
        }
    })
    .to_string();
    let r = app.send(&sweep).await;
    assert_eq!(r.status, 200);
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT transaction_key, status, version FROM singapay.transactions ORDER BY transaction_key")
            .fetch_all(&app.db)
            .await
            .unwrap();
    let expect = |k: &str, s: &str, v: i32| (k.to_owned(), s.to_owned(), v);
    assert_eq!(
        rows,
        vec![
            expect("qris:QR-PAID", "succeeded", 1),
            expect("qris:QR-PENDING", "expired", 2),
            expect("va:VA-SWEPT", "expired", 1),
        ]
    );
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM singapay.deliveries WHERE id = $1")
        .bind(r.delivery_id())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(outcome, "batch");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.transaction_events WHERE delivery_id = $1")
        .bind(r.delivery_id())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(queued, 2, "one queue row per applied change; none for the conflict");
}

/// The sub-variants end to end (DESIGN §4): payment-link inquiries and their `.expired`
/// event on the paid link's key, subscription plan status changes, direct-debit binding
/// and unbinding, each keeping its own lower-cased status.
#[tokio::test]
async fn sub_variants_reach_their_transactions() {
    let app = TestApp::spawn().await;
    let state = |key: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_as::<_, (String, i32, String)>(
                "SELECT t.status, t.version, d.webhook_type FROM singapay.transactions t
                   JOIN singapay.deliveries d ON d.id = t.last_delivery_id WHERE t.transaction_key = $1",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let inquiry = payload("payment-link-inquiry");
    assert_eq!(app.send(&inquiry).await.status, 200);
    let key = "payment_link:31245417720260315190255812QwErTy";
    assert_eq!(state(key).await, ("pending".into(), 1, "payment-link-inquiry".into()));
    let expired = inquiry.replace(r#""event": "payment_link.inquiry""#, r#""event": "payment_link.inquiry.expired""#);
    assert_eq!(app.send(&expired).await.status, 200);
    assert_eq!(state(key).await, ("expired".into(), 2, "payment-link-inquiry".into()));

    let plan = |status: &str, at: &str| {
        payload("subscription-cycle")
            .replace("subscription.cycle.payment_failed", "subscription.plan.status_changed")
            .replace(r#""status": "active""#, &format!(r#""status": "{status}""#))
            .replace("01 Apr 2026 00:05:12", at)
    };
    let key = "subscription_plan:01KC8W3N5R7T9V1X3Z5B7D9F1H";
    assert_eq!(app.send(&plan("SUSPENDED", "01 Apr 2026 00:00:00")).await.status, 200);
    assert_eq!(state(key).await, ("suspended".into(), 1, "subscription-cycle".into()));
    assert_eq!(app.send(&plan("ACTIVE", "02 Apr 2026 00:00:00")).await.status, 200);
    assert_eq!(state(key).await, ("active".into(), 2, "subscription-cycle".into()));
    assert_eq!(app.send(&plan("CANCELLED", "03 Apr 2026 00:00:00")).await.status, 200);
    assert_eq!(state(key).await, ("cancelled".into(), 3, "subscription-cycle".into()));

    let binding = |event: &str, status: &str| {
        payload("direct-debit")
            .replace(r#""event": "direct-debit-binding""#, &format!(r#""event": "{event}""#))
            .replace(r#""status": "ACTIVE""#, &format!(r#""status": "{status}""#))
    };
    let key = "direct_debit:6f1d2c3b-8a4e-4f7a-9b21-3c5d7e9f0a12";
    assert_eq!(app.send(&binding("direct-debit-binding", "PENDING_AUTH")).await.status, 200);
    assert_eq!(app.send(&binding("direct-debit-binding", "ACTIVE")).await.status, 200);
    assert_eq!(state(key).await, ("active".into(), 2, "direct-debit".into()));
    assert_eq!(app.send(&binding("direct_debit_unbinding", "UNBOUND")).await.status, 200);
    assert_eq!(state(key).await, ("unbound".into(), 3, "direct-debit".into()));
}

/// Pinned: a VA payment is keyed by `transaction_id` (DESIGN §4), a VA item of an
/// expiration sweep by its `reff_no` (FACTS: the items' fields beyond `id` are unpinned), so
/// the two meet on one key only when Singapay uses the same value for both. A sweep naming
/// a paid VA's `reff_no` therefore does not touch the payment (docs/design.md, "Classification").
#[tokio::test]
async fn a_va_payment_and_a_va_sweep_item_meet_only_on_the_same_identifier() {
    let app = TestApp::spawn().await;
    assert_eq!(app.send(&payload("va-transaction")).await.status, 200);
    let sweep = |reff: &str| {
        serde_json::json!({
            "status": 200, "success": true, "event": "transaction-expiration",
            "data": {
                "payment_link_histories": [], "qris_histories": [],
                "virtual_account_transactions": [{ "id": 5, "reff_no": reff, "status": "expired" }]
            }
        })
        .to_string()
    };
    // By the payment's merchant reference: a transaction of its own.
    assert_eq!(app.send(&sweep("ORD-77310-A")).await.status, 200);
    // By the payment's transaction_id: the same transaction, and a paid VA stays paid.
    assert_eq!(app.send(&sweep("3211120260314091205518")).await.status, 200);
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT transaction_key, status, version FROM singapay.transactions ORDER BY transaction_key")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("va:3211120260314091205518".to_owned(), "succeeded".to_owned(), 1),
            ("va:ORD-77310-A".to_owned(), "expired".to_owned(), 1),
        ]
    );
}
