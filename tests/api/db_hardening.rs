//! The SQL surface's hardening: a consumer role that can only call the queue functions and
//! read the views; `request_check` refusing an identifier that belongs to another
//! transaction; `prune` retiring given-up checks.

use singapay_webhooks::store;

use crate::helpers::{payload, TestApp};

/// SQLSTATE of a failed statement.
fn sqlstate(e: sqlx::Error) -> String {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned()).unwrap_or_else(|| format!("{e}"))
}

#[tokio::test]
async fn the_consumer_role_can_claim_and_ack_and_nothing_else() {
    let app = TestApp::spawn().await;
    assert_eq!(app.send(&payload("va-transaction")).await.status, 200);
    let mut tx = app.db.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE singapay_consumer").execute(&mut *tx).await.unwrap();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.claim_events('orders', 10, '1 minute')")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let acked: bool =
        sqlx::query_scalar("SELECT singapay.ack_event($1, 'orders')").bind(ids[0]).fetch_one(&mut *tx).await.unwrap();
    assert!(acked);
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transaction_history").fetch_one(&mut *tx).await.unwrap();
    assert!(history >= 1);
    sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
    for forbidden in [
        "UPDATE singapay.transactions SET status = 'succeeded'",
        "SELECT access_token, body FROM singapay.deliveries",
        "DELETE FROM singapay.event_queue",
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason) VALUES ('va:X', 'requested')",
    ] {
        let e = sqlx::query(forbidden).execute(&mut *tx).await.unwrap_err();
        assert_eq!(sqlstate(e), "42501", "{forbidden}");
        sqlx::query("ROLLBACK TO SAVEPOINT s").execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_check_requested_with_another_transactions_identifier_is_refused() {
    let app = TestApp::spawn().await;
    let body = r#"{"response_code":"SP000","event":"disbursement","data":{"transaction_id":"8181","reference_number":"REF-OURS","transaction_status":{"code":"03"}}}"#;
    assert_eq!(app.send(body).await.status, 200);
    let request = |reference: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT singapay.request_check('disbursement:8181', p_merchant_reference => $1)",
            )
            .bind(reference)
            .fetch_one(&db)
            .await
        }
    };
    let e = request("REF-SOMEONE-ELSES").await.unwrap_err();
    assert_eq!(sqlstate(e), "22023");
    let checks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_checks").fetch_one(&app.db).await.unwrap();
    assert_eq!(checks, 0, "nothing is asked about");
    assert!(request("REF-OURS").await.unwrap());
}

#[tokio::test]
async fn prune_retires_old_given_up_checks_and_keeps_flagged_ones() {
    let app = TestApp::spawn().await;
    for (key, state, age) in [
        ("disbursement:OLD-GAVE-UP", "gave_up", "100 days"),
        ("disbursement:NEW-GAVE-UP", "gave_up", "1 day"),
        ("disbursement:OLD-FLAGGED", "flagged", "100 days"),
        ("disbursement:OLD-OPEN", "open", "100 days"),
    ] {
        sqlx::query(
            "INSERT INTO singapay.reconcile_checks (transaction_key, reason, state, created_at)
             VALUES ($1, 'requested', $2, now() - $3::interval)",
        )
        .bind(key)
        .bind(state)
        .bind(age)
        .execute(&app.db)
        .await
        .unwrap();
    }
    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    assert_eq!(store::prune_checks(&app.db, cutoff, 1, true).await.unwrap(), 1);
    assert_eq!(store::prune_checks(&app.db, cutoff, 1, false).await.unwrap(), 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT transaction_key FROM singapay.reconcile_checks ORDER BY transaction_key")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(left, ["disbursement:NEW-GAVE-UP", "disbursement:OLD-FLAGGED", "disbursement:OLD-OPEN"]);
}
