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

/// Every table's rows, as the columns it had before an upgrade: (table, columns, digest,
/// rows).
pub async fn tables_digest(
    db: &sqlx::PgPool,
    columns: Option<&[(String, String)]>,
) -> Vec<(String, String, String, i64)> {
    let columns: Vec<(String, String)> = match columns {
        Some(c) => c.to_vec(),
        None => sqlx::query_as(
            "SELECT c.table_name::text, string_agg(quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position)
               FROM information_schema.columns c JOIN pg_tables t ON t.schemaname = c.table_schema AND t.tablename = c.table_name
              WHERE c.table_schema = 'singapay' GROUP BY c.table_name ORDER BY c.table_name",
        )
        .fetch_all(db)
        .await
        .unwrap(),
    };
    let mut out = Vec::new();
    for (table, cols) in columns {
        let (digest, rows): (String, i64) = sqlx::query_as(&format!(
            "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')), count(*)
               FROM (SELECT {cols} FROM singapay.{table}) x"
        ))
        .fetch_one(db)
        .await
        .unwrap();
        out.push((table, cols, digest, rows));
    }
    out
}

/// The released schema (every migration before this change's), with rows in every table,
/// upgraded by `migrate`: every row of every table is still there with every value it had;
/// the new columns start empty (`unreadable` 0, no bearer hash until `prune` drops the
/// token), and the upgraded database answers as the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_released_schema_with_data_in_every_table_upgrades_keeping_every_row() {
    let (url, db) = crate::helpers::database_before_migration(20261207000001).await;
    crate::helpers::seed_events(&db, 300, 3).await;
    for sql in [
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now(), attempts = 1 WHERE version = 1",
        "UPDATE singapay.transaction_events SET state = 'dead', finished_at = now(), attempts = 25, last_error = 'x'
          WHERE version = 2 AND transaction_key LIKE '%0'",
        "UPDATE singapay.deliveries SET access_token = 'bearer-' || id",
        "INSERT INTO singapay.rejected_deliveries (content_sha256, reason, x_timestamp, credential, signature_form,
                request_path, x_signature, access_token, body)
         SELECT sha256(('r' || g)::bytea), 'stale_timestamp', '1700000000', 'primary', 'php', '/webhooks/singapay',
                'sig', 'tok-' || g, '{}'::bytea FROM generate_series(1, 20) g",
        "INSERT INTO singapay.inquiries (transaction_key, reason, asked_by, method, path, response_body, answer,
                elapsed_ms, status)
         SELECT 'disbursement:seed-' || g, 'overdue', 'old', 'POST', '/api/v2.0/x', '{}'::bytea, 'status', 5, 'pending'
           FROM generate_series(1, 30) g",
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason, state, last_inquiry_id, not_found)
         SELECT transaction_key, 'overdue', CASE WHEN id % 2 = 0 THEN 'gave_up' ELSE 'open' END, id, 1
           FROM singapay.inquiries",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let before = tables_digest(&db, None).await;
    assert!(before.iter().all(|(table, _, _, rows)| *rows > 0 || table == "event_queue"), "{before:?}");

    singapay_webhooks::store::migrate(&secrecy::SecretString::from(url)).await.expect("the upgrade");

    let columns: Vec<(String, String)> = before.iter().map(|(t, c, _, _)| (t.clone(), c.clone())).collect();
    let after = tables_digest(&db, Some(&columns)).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.2, b.3), (&a.0, &a.2, a.3), "{} kept every row and value", b.0);
    }
    let (unreadable, hashed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(unreadable), 0) FROM singapay.reconcile_checks)::int8,
                (SELECT count(*) FROM singapay.deliveries WHERE access_token_sha256 IS NOT NULL)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((unreadable, hashed), (0, 0));
    // The upgraded schema works as a new one: a flagged-state check, the attention view,
    // prune's bearer step, a consumer role's claim.
    let attention: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.reconcile_attention").fetch_one(&db).await.unwrap();
    assert_eq!(attention, 15);
    let dropped =
        singapay_webhooks::store::drop_bearers(&db, chrono::Utc::now() + chrono::Duration::hours(1), 100, false)
            .await
            .unwrap();
    let deliveries = before.iter().find(|t| t.0 == "deliveries").map(|t| t.3).unwrap() as u64;
    assert_eq!(dropped, (deliveries, 20), "every kept token of the old rows is dropped, its hash kept");
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE singapay_consumer").execute(&mut *tx).await.unwrap();
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.claim_events('after-upgrade', 5, '1 minute')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(claimed, 5);
}
