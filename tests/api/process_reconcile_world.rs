//! The reconciler against the world Singapay documents, through the real binary (`reconcile
//! --key`) and a real Postgres, with the `sandbox` behaving as Singapay does: partial-match
//! lists with a decoy newer than our record, a failed transfer answered `SP001` with `06`
//! at HTTP 400, a direct-debit binding, an account owned by another credential (`SP403`),
//! and every token answer the SDKs accept.

use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};

use crate::helpers::{
    credential, disbursement, fresh_database, now, SandboxApi, TestApp, DEFAULT_PATH, SANDBOX_ACCOUNT,
};
use crate::process::{self, env};

fn api_env(api: &SandboxApi, database_url: &str) -> Vec<(String, String)> {
    let mut vars = crate::process_reconcile::api_settings(api);
    vars.extend(env(&[
        ("DATABASE_URL", database_url),
        ("RECONCILE_BACKOFF_SECS", "1"),
        ("RECONCILE_BACKOFF_MAX_SECS", "2"),
    ]));
    vars
}

/// Every transaction: key → (status, version).
async fn snapshot(db: &sqlx::PgPool) -> Vec<(String, String, i32)> {
    sqlx::query_as("SELECT transaction_key, status, version FROM singapay.transactions ORDER BY transaction_key")
        .fetch_all(db)
        .await
        .unwrap()
}

async fn status_of(db: &sqlx::PgPool, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM singapay.transactions WHERE transaction_key = $1")
        .bind(key)
        .fetch_optional(db)
        .await
        .unwrap()
}

/// `reconcile --key KEY`; its output.
async fn reconcile(vars: &[(String, String)], key: &str) -> String {
    let (ok, out, err) = process::run(&["reconcile", "--key", key], vars).await;
    assert!(ok, "reconcile --key {key} failed: {err}\n{out}");
    out
}

/// The last inquiry recorded about `key`: (answer, status, http_status, response_code,
/// identified_by, credential, account_id).
type Recorded = (String, Option<String>, Option<i32>, Option<String>, Option<String>, Option<String>, Option<String>);

async fn last_inquiry(db: &sqlx::PgPool, key: &str) -> Recorded {
    sqlx::query_as(
        "SELECT answer, status, http_status, response_code, identified_by, credential, account_id
           FROM singapay.inquiries WHERE transaction_key = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(key)
    .fetch_one(db)
    .await
    .unwrap()
}

fn qris_callback(id: Option<i64>, reff_no: &str, status: &str) -> String {
    let mut transaction = json!({
        "reff_no": reff_no, "type": "qris", "status": status,
        "amount": {"value": 58500, "currency": "IDR"},
        "post_timestamp": "14 Mar 2026 10:40:20", "processed_timestamp": "",
    });
    if let Some(id) = id {
        transaction["id"] = id.into();
    }
    json!({"status": 200, "success": true, "event": "qris-acquirer-transaction", "data": {"transaction": transaction}})
        .to_string()
}

fn payment_link_callback(reff_no: &str, status: &str) -> String {
    json!({
        "status": 200, "success": true, "event": "payment-link-transaction",
        "data": {
            "transaction": {"reff_no": reff_no, "type": "pl", "status": status,
                            "amount": {"value": "135000.00", "currency": "IDR"}},
            "payment": {"method": "payment_link", "additional_info": {"payment_link": {"id": 3124, "reff_no": "INV-2026-03-0891"}}}
        }
    })
    .to_string()
}

/// Scripts a record; its `record_id`.
async fn record(api: &SandboxApi, script: Value) -> i64 {
    let r = api.http.post(format!("{}/_sandbox/transactions", api.url)).json(&script).send().await.unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    r.json::<Value>().await.unwrap()["record_id"].as_i64().expect("a record_id")
}

/// Our record first, then 25 newer records whose `reff_no` contains ours, every one paid:
/// the list's whole first page is decoys, ours is on page 2.
async fn decoys(api: &SandboxApi, product: &str, ours: &str) {
    for n in 0..25 {
        let reff_no = format!("{ours}{n}");
        record(api, json!({"id": reff_no, "reff_no": reff_no, "product": product, "answers": ["paid"]})).await;
    }
}

/// QRIS and payment links: a newer, paid record whose `reff_no` merely contains ours is on
/// page 1, ours on page 2. Ours stays pending until our own record is paid, then becomes
/// `succeeded`; nothing else moves. QRIS is read by the id its callback gave; without it
/// (a requested check), and for payment links, the list is paged for the exact `reff_no`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_paid_record_containing_our_reference_is_never_applied() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let vars = api_env(&api, &url);

    let qris_id =
        record(&api, json!({"id": "INV-7", "reff_no": "INV-7", "product": "qris", "answers": ["open", "paid"]})).await;
    let qris_search =
        record(&api, json!({"id": "INV-8", "reff_no": "INV-8", "product": "qris", "answers": ["open", "paid"]})).await;
    record(&api, json!({"id": "PL-7", "reff_no": "PL-7", "product": "payment_link", "answers": ["pending", "paid"]}))
        .await;
    decoys(&api, "qris", "INV-7").await;
    decoys(&api, "qris", "INV-8").await;
    decoys(&api, "payment_link", "PL-7").await;
    assert!(qris_search > qris_id);

    // The QRIS payment and the payment-link attempt arrive unpaid; the decoys' own
    // transactions are stored too (pending), to see that none of them moves.
    assert_eq!(app.send(&qris_callback(Some(qris_id), "INV-7", "open")).await.status, 200);
    assert_eq!(app.send(&payment_link_callback("PL-7", "pending")).await.status, 200);
    assert_eq!(app.send(&qris_callback(None, "INV-70", "open")).await.status, 200);
    assert_eq!(app.send(&payment_link_callback("PL-70", "pending")).await.status, 200);
    let before = snapshot(&db).await;

    for key in ["qris:INV-7", "qris:INV-8", "payment_link:PL-7"] {
        let out = reconcile(&vars, key).await;
        assert!(out.contains("status=pending"), "{key}: {out}");
    }
    assert_eq!(status_of(&db, "qris:INV-7").await.as_deref(), Some("pending"));
    assert_eq!(status_of(&db, "qris:INV-8").await.as_deref(), Some("pending"), "created from our own record");
    assert_eq!(status_of(&db, "payment_link:PL-7").await.as_deref(), Some("pending"));
    // The by-id read went straight to our record; the searches read both pages and then
    // our record by its id, never a list row.
    let inquiries: Vec<String> = api.inquiries().await.into_iter().map(|r| r.path).collect();
    assert!(inquiries.iter().any(|p| p.contains(&format!("/show/{qris_id}"))), "{inquiries:?}");
    assert!(inquiries.iter().any(|p| p.contains(&format!("/show/{qris_search}"))), "{inquiries:?}");
    let (answer, _, _, _, identified_by, credential, account) = last_inquiry(&db, "qris:INV-8").await;
    assert_eq!(answer, "status");
    assert_eq!(identified_by.as_deref(), Some(format!("id={qris_search}").as_str()));
    assert_eq!((credential.as_deref(), account.as_deref()), (Some("default"), Some(SANDBOX_ACCOUNT)));
    let steps: Value =
        sqlx::query_scalar("SELECT steps FROM singapay.inquiries WHERE transaction_key = 'payment_link:PL-7'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(steps.as_array().map(Vec::len), Some(2), "two list pages: {steps}");
    assert_eq!(steps[0]["exact"], json!([]), "page 1 holds only decoys: {steps}");

    // Our own records are paid now (their second answer).
    for key in ["qris:INV-7", "qris:INV-8", "payment_link:PL-7"] {
        let out = reconcile(&vars, key).await;
        assert!(out.contains("status=succeeded transition=applied"), "{key}: {out}");
    }
    let after = snapshot(&db).await;
    let moved: Vec<&(String, String, i32)> = after.iter().filter(|row| !before.contains(row)).collect();
    let keys: Vec<&str> = moved.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(keys, ["payment_link:PL-7", "qris:INV-7", "qris:INV-8"], "{moved:?}");
    assert!(moved.iter().all(|r| r.1 == "succeeded"));
}

/// Singapay's failed transfer: `SP001` with `transaction_status.code` `06` at HTTP 400. The
/// status is the payment's whatever the response code; the code is stored beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transfer_answered_sp001_at_http_400_is_failed() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let vars = api_env(&api, &url);
    let id = "7700000000000000000000000000601";
    let key = format!("disbursement:{id}");
    assert_eq!(app.send(&disbursement(id, "PAYOUT-F-1", "SP005", None)).await.status, 200);
    record(&api, json!({"id": "PAYOUT-F-1", "transaction_id": id, "answers": ["06"]})).await;
    let out = reconcile(&vars, &key).await;
    assert!(out.contains("answer=status") && out.contains("status=failed transition=applied"), "{out}");
    assert_eq!(status_of(&db, &key).await.as_deref(), Some("failed"));
    let (answer, status, http, code, identified_by, ..) = last_inquiry(&db, &key).await;
    assert_eq!(
        (answer.as_str(), status.as_deref(), http, code.as_deref(), identified_by.as_deref()),
        ("status", Some("failed"), Some(400), Some("SP001"), Some("reference_number=PAYOUT-F-1"))
    );
    let checks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_checks").fetch_one(&db).await.unwrap();
    assert_eq!(checks, 0, "a final status ends the check");

    // The same reference answered for another transaction id (a reference reused on
    // another account, or a check requested with the wrong one): never applied.
    let other = "7700000000000000000000000000602";
    let other_key = format!("disbursement:{other}");
    assert_eq!(app.send(&disbursement(other, "PAYOUT-F-2", "SP005", None)).await.status, 200);
    record(&api, json!({"id": "PAYOUT-F-2", "transaction_id": "7700000000000000000000000000999", "answers": ["00"]}))
        .await;
    let out = reconcile(&vars, &other_key).await;
    assert!(out.contains("answer=mismatch"), "{out}");
    assert_eq!(status_of(&db, &other_key).await, None, "nothing applied");
}

/// A direct-debit binding is asked at the binding endpoint and its status goes through the
/// state machine its callbacks use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_is_asked_at_the_binding_endpoint() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let vars = api_env(&api, &url);
    let binding = "6f1d2c3b-8a4e-4f7a-9b21-3c5d7e9f0a12";
    let key = format!("direct_debit:{binding}");
    let callback = json!({"status": 200, "success": true, "event": "direct-debit-binding",
                          "data": {"binding_id": binding, "status": "PENDING_AUTH"}});
    assert_eq!(app.send(&callback.to_string()).await.status, 200);
    assert_eq!(status_of(&db, &key).await.as_deref(), Some("pending_auth"));
    record(&api, json!({"id": binding, "product": "direct_debit", "answers": ["ACTIVE"]})).await;
    let out = reconcile(&vars, &key).await;
    assert!(out.contains("status=active transition=applied"), "{out}");
    assert_eq!(status_of(&db, &key).await.as_deref(), Some("active"));
    let asked: Vec<String> = api.inquiries().await.into_iter().map(|r| r.path).collect();
    assert!(asked.iter().all(|p| p.contains(&format!("/api/v2.0/direct-debit/binding/{binding}"))), "{asked:?}");
    assert_eq!(last_inquiry(&db, &key).await.4.as_deref(), Some(format!("binding_id={binding}").as_str()));
}

/// Two credentials, each owning its account. Configured wrongly (the default credential
/// also lists the other's account), `SP403` pauses only that credential's use of that
/// account: the transaction on the other account is reconciled, the refused one is not
/// counted against, and the pause is in the output. Configured as the owner says, the
/// second account's transaction is asked with its own credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sp403_on_one_account_pauses_only_that_account() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    api.control(
        "credentials",
        json!({"client_id": "client-2", "client_secret": "secret-2", "partner_id": "partner-2", "accounts": ["ACC-B"]}),
    )
    .await;
    let (url, db) = fresh_database().await;
    // ACC-B's callbacks are verified with the webhook secret of its own credential.
    let specific = format!("cs_specific_{}", crate::helpers::random_hex(8));
    let app =
        TestApp::spawn_on(url.clone(), db.clone(), |s| s.credentials.push(credential("specific", &specific))).await;
    record(&api, json!({"id": "PAYOUT-A-1", "account": SANDBOX_ACCOUNT, "answers": ["00"]})).await;
    record(&api, json!({"id": "PAYOUT-A-2", "account": SANDBOX_ACCOUNT, "answers": ["00"]})).await;
    record(&api, json!({"id": "PAYOUT-B-1", "account": "ACC-B", "answers": ["00"]})).await;
    for (id, reference, secret) in [
        ("7700000000000000000000000000701", "PAYOUT-A-1", &app.secret),
        ("7700000000000000000000000000702", "PAYOUT-B-1", &specific),
        ("7700000000000000000000000000703", "PAYOUT-A-2", &app.secret),
    ] {
        let body = disbursement(id, reference, "SP005", None);
        assert_eq!(app.send_signed(DEFAULT_PATH, &body, now(), secret).await.status, 200);
    }
    let (a1, b1, a2) = (
        "disbursement:7700000000000000000000000000701",
        "disbursement:7700000000000000000000000000702",
        "disbursement:7700000000000000000000000000703",
    );
    let mut wrong = api_env(&api, &url);
    wrong.retain(|(k, _)| k != "SINGAPAY_ACCOUNT_ID");
    wrong.push(("SINGAPAY_ACCOUNT_ID".into(), format!("ACC-B,{SANDBOX_ACCOUNT}")));

    // One pass over all three: ACC-B refuses (SP403), the others are answered.
    let (ok, out, err) = process::run(&["reconcile"], &wrong).await;
    assert!(ok, "{err}\n{out}");
    assert!(out.contains(&format!("{a1}  (needs_inquiry)  answer=status from=default/{SANDBOX_ACCOUNT}")), "{out}");
    assert!(out.contains(&format!("{a2}  (needs_inquiry)  answer=status")), "{out}");
    assert!(out.contains("paused  default/ACC-B: SP403"), "{out}");
    assert!(err.contains("reconciliation paused for default/ACC-B"), "{err}");
    assert_eq!(status_of(&db, a1).await.as_deref(), Some("succeeded"));
    assert_eq!(status_of(&db, a2).await.as_deref(), Some("succeeded"));
    assert_eq!(status_of(&db, b1).await, None, "nothing applied for the refused account");
    let (asked, not_found, state): (i32, i32, String) =
        sqlx::query_as("SELECT asked, not_found, state FROM singapay.reconcile_checks WHERE transaction_key = $1")
            .bind(b1)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((asked, not_found, state.as_str()), (0, 0, "open"), "a refusal is not counted against the check");

    // Each account under the credential that owns it; the transaction is asked with it.
    let mut right = api_env(&api, &url);
    right
        .retain(|(k, _)| !k.starts_with("SINGAPAY_CLIENT") && k != "SINGAPAY_ACCOUNT_ID" && k != "SINGAPAY_PARTNER_ID");
    right.extend(env(&[
        ("SINGAPAY_CLIENT_ID", "default=client-1,specific=client-2"),
        ("SINGAPAY_CLIENT_SECRET", "default=secret-1\nspecific=secret-2"),
        ("SINGAPAY_PARTNER_ID", "default=partner-1,specific=partner-2"),
        ("SINGAPAY_ACCOUNT_ID", &format!("default={SANDBOX_ACCOUNT},specific=ACC-B")),
    ]));
    let out = reconcile(&right, b1).await;
    assert!(out.contains("answer=status from=specific/ACC-B") && out.contains("status=succeeded"), "{out}");
    assert_eq!(status_of(&db, b1).await.as_deref(), Some("succeeded"));
    let (.., credential, account) = last_inquiry(&db, b1).await;
    assert_eq!((credential.as_deref(), account.as_deref()), (Some("specific"), Some("ACC-B")));
}

/// Token answers the SDKs accept: the v1 envelope or the flat form, `expires_in` as a
/// string or a number, `"0"`, missing, negative or beyond any clock: each gives a token
/// that is used, and the inquiry is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_answer_the_sdks_accept_is_used() {
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let (url, db) = fresh_database().await;
    let app = TestApp::spawn_on(url.clone(), db.clone(), |_| {}).await;
    let vars = api_env(&api, &url);
    let shapes = [
        json!({"flat": false, "expires_in": "216000"}),
        json!({"flat": false, "expires_in": 900}),
        json!({"flat": true, "expires_in": "216000"}),
        json!({"flat": true, "expires_in": 3600}),
        json!({"flat": false, "expires_in": "0"}),
        json!({"flat": true, "expires_in": 0}),
        json!({"flat": true}),
        json!({"flat": false, "expires_in": -60}),
        json!({"flat": false, "expires_in": 18_446_744_073_709_551_615u64}),
    ];
    for (n, shape) in shapes.iter().enumerate() {
        api.control("token-answer", shape.clone()).await;
        let id = format!("77000000000000000000000000008{n:02}");
        let reference = format!("PAYOUT-T-{n}");
        api.script(&reference, &["00"]).await;
        assert_eq!(app.send(&disbursement(&id, &reference, "SP005", None)).await.status, 200);
        let key = format!("disbursement:{id}");
        let out = reconcile(&vars, &key).await;
        assert!(out.contains("status=succeeded transition=applied"), "token answer {shape}: {out}");
        assert_eq!(status_of(&db, &key).await.as_deref(), Some("succeeded"), "{shape}");
    }

    // SP017 at the token endpoint, at 401 as at 403, is the IP whitelist, not credentials.
    api.script("PAYOUT-T-IP", &["00"]).await;
    let body = disbursement("7700000000000000000000000000899", "PAYOUT-T-IP", "SP005", None);
    assert_eq!(app.send(&body).await.status, 200);
    for fault in ["SP017-401", "SP017-403"] {
        api.control("token-fault", json!({"answer": fault})).await;
        let (ok, out, err) =
            process::run(&["reconcile", "--key", "disbursement:7700000000000000000000000000899"], &vars).await;
        assert!(!ok, "{out}");
        assert!(err.contains("IP address") && err.contains("whitelist"), "{fault}: {err}");
        assert!(!err.contains("credentials"), "{fault}: {err}");
    }
}
