//! Retention by whole days: `prune` retires the days older than `RETENTION_DAYS`, keeping
//! exactly the rows docs/operations.md says outlive their day, without disturbing intake or
//! a consumer; the history from before partitioning is pruned row by row as before.

use std::io::Read as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use singapay_webhooks::store::history;
use singapay_webhooks::{queue, store};

use crate::helpers::{now, payload, TestApp};

fn disbursement(id: &str, code: &str, n: u32) -> String {
    format!(
        r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"{id}","transaction_status":{{"code":"{code}"}},"notes":"{n}"}}}}"#
    )
}

/// Moves every row stored so far (and every transaction's times) `days` days into the
/// past, into that day's partition, as if it had all happened then.
async fn age_everything(db: &sqlx::PgPool, days: i32) {
    sqlx::query(
        "SELECT singapay.ensure_partitions((now() AT TIME ZONE 'UTC')::date - $1 - 1,
                                           (now() AT TIME ZONE 'UTC')::date - $1 + 1)",
    )
    .bind(days)
    .execute(db)
    .await
    .unwrap();
    for sql in [
        "UPDATE singapay.deliveries SET stored_at = stored_at - $1 * interval '1 day',
                received_at = received_at - $1 * interval '1 day', last_received_at = last_received_at - $1 * interval '1 day'",
        "UPDATE singapay.event_log SET stored_at = stored_at - $1 * interval '1 day',
                created_at = created_at - $1 * interval '1 day', finished_at = finished_at - $1 * interval '1 day'",
        "UPDATE singapay.event_queue SET stored_at = stored_at - $1 * interval '1 day'",
        "UPDATE singapay.rejected_deliveries SET stored_at = stored_at - $1 * interval '1 day',
                received_at = received_at - $1 * interval '1 day', last_received_at = last_received_at - $1 * interval '1 day'",
        "UPDATE singapay.inquiries SET stored_at = stored_at - $1 * interval '1 day', asked_at = asked_at - $1 * interval '1 day'",
        "UPDATE singapay.transactions SET created_at = created_at - $1 * interval '1 day',
                updated_at = updated_at - $1 * interval '1 day', history_from = history_from - $1 * interval '1 day'",
    ] {
        sqlx::query(sql).bind(days).execute(db).await.unwrap();
    }
}

async fn ack_all(app: &TestApp) {
    loop {
        let claimed = queue::claim(&app.db, "c", 100, Duration::from_secs(60)).await.unwrap();
        if claimed.is_empty() {
            return;
        }
        for ev in claimed {
            assert!(queue::ack(&app.db, ev.id, "c").await.unwrap());
        }
    }
}

async fn ids(db: &sqlx::PgPool, sql: &str) -> Vec<i64> {
    sqlx::query_scalar(sql).fetch_all(db).await.unwrap()
}

fn cutoff() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(90)
}

/// The rules of docs/operations.md, one row of each kind, on a day retired whole: a quiet
/// finished payout goes entirely; a dead event and its delivery, a transaction still open,
/// a transaction whose history goes on after the day (kept whole: `transaction_history`
/// still shows every version with its delivery), a rejection received again lately and the
/// last inquiry of a reconciliation check outlive it. A day with an event still unfinished
/// waits for its consumer. A consumer's open transaction is waited for, without holding up
/// intake or other consumers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retiring_a_day_keeps_exactly_the_documented_rows() {
    let app = TestApp::spawn().await;
    // A payout that went 01 → 03 → 00, all consumed: nothing of it outlives the day.
    let mut gone = Vec::new();
    for (code, n) in [("01", 1), ("03", 2), ("00", 3)] {
        gone.push(app.send(&disbursement("DONE", code, n)).await.delivery_id());
    }
    // A payout still open (initiated, nothing since), one whose history goes on later, a
    // payment whose event a consumer will only finish late, a dead event.
    let open = app.send(&disbursement("OPEN", "01", 1)).await.delivery_id();
    let span_old = app.send(&disbursement("SPAN", "01", 1)).await.delivery_id();
    ack_all(&app).await;
    let late = app.send(&payload("va-transaction")).await.delivery_id();
    let dead = app.send(&payload("qris-acquirer-transaction")).await.delivery_id();
    sqlx::query("UPDATE singapay.transaction_events SET state = 'dead', finished_at = now() WHERE delivery_id = $1")
        .bind(dead)
        .execute(&app.db)
        .await
        .unwrap();
    // Two stale refusals; the second will be received again lately.
    assert_eq!(app.send_at(&payload("ewallet-topup"), now() - 3600).await.status, 401);
    assert_eq!(app.send_at(&payload("direct-debit"), now() - 3600).await.status, 401);
    // Reconciliation's record: an old answer about a quiet transaction, and the last
    // answer of a check someone must look at.
    let inquiry = |key: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO singapay.inquiries
                    (transaction_key, reason, asked_by, method, path, response_body, answer, elapsed_ms)
                 VALUES ($1, 'overdue', 'test', 'GET', '/api', '', 'not_found', 5) RETURNING id",
            )
            .bind(key)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let old_inquiry = inquiry("va:QUIET").await;
    let checked = inquiry("va:GAVE-UP").await;
    sqlx::query(
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason, state, last_inquiry_id, last_error)
         VALUES ('va:GAVE-UP', 'overdue', 'flagged', $1, 'unreadable')",
    )
    .bind(checked)
    .execute(&app.db)
    .await
    .unwrap();

    age_everything(&app.db, 100).await;

    // Today: the spanning payout succeeds, the second refusal arrives again, a new payment.
    let span_new = app.send(&disbursement("SPAN", "00", 2)).await.delivery_id();
    assert_eq!(app.send_at(&payload("direct-debit"), now() - 3600).await.status, 401);
    let fresh = app.send(&payload("direct-debit")).await.delivery_id();
    let old_days = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM singapay.history_partitions WHERE to_at <= now() - interval '90 days'",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    assert!(old_days(app.db.clone()).await >= 4, "the aged rows' day has a partition per table");

    // The VA payment's event is still unfinished: its day waits.
    let report = history::retire(&app.db, cutoff(), None, false).await.unwrap();
    assert!(report.retired.iter().all(|r| r.rows == 0), "only the empty days around it went: {report:?}");
    assert_eq!(report.postponed.len(), 1);
    let day = report.postponed[0];
    assert_eq!(app.count("deliveries").await, 9);

    // Its consumer finishes it; meanwhile another consumer is mid-claim on today's event.
    let late_event: i64 = sqlx::query_scalar("SELECT id FROM singapay.transaction_events WHERE delivery_id = $1")
        .bind(late)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let claimed = queue::claim(&app.db, "late", 10, Duration::from_secs(60)).await.unwrap();
    assert!(claimed.iter().any(|e| e.id == late_event));
    for ev in &claimed {
        if ev.id == late_event {
            assert!(queue::ack(&app.db, ev.id, "late").await.unwrap());
        } else {
            assert!(queue::nack(&app.db, ev.id, "late", "later", Duration::ZERO).await.unwrap());
        }
    }
    let mut consumer = app.db.begin().await.unwrap();
    let mid: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.claim_events('mid-claim', 10, '1 minute')")
        .fetch_all(&mut *consumer)
        .await
        .unwrap();
    assert!(!mid.is_empty());

    let dry = history::retire(&app.db, cutoff(), None, true).await.unwrap();
    assert_eq!(app.count("deliveries").await, 9, "a dry run changes nothing");
    // Detaching waits for the transactions that may still read the day (the consumer's):
    // without holding up callbacks or other consumers meanwhile.
    let db = app.db.clone();
    let retiring = tokio::spawn(async move { history::retire(&db, cutoff(), None, false).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = tokio::time::timeout(Duration::from_secs(5), app.send(&disbursement("DURING", "01", 1)))
        .await
        .expect("a callback is stored while retirement waits");
    assert_eq!(during.status, 200);
    let other =
        tokio::time::timeout(Duration::from_secs(5), queue::claim(&app.db, "other", 10, Duration::from_secs(60)))
            .await
            .expect("another consumer claims while retirement waits")
            .unwrap();
    assert_eq!(other.len(), 1, "the new payout's event");
    consumer.commit().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), retiring)
        .await
        .expect("retirement finishes once the consumer's transaction ends")
        .unwrap()
        .unwrap();
    let kept = history::Kept { events: 3, deliveries: 3, rejections: 1, inquiries: 1 };
    assert_eq!(
        (dry.kept, report.kept),
        (kept, kept),
        "dead, open and spanning; the refusal received again; the check's"
    );
    let retired: Vec<_> = report.retired.iter().filter(|r| (r.from_at, r.to_at) == day).collect();
    assert_eq!(retired.len(), 4, "the day's partition of each table: {report:?}");
    assert_eq!(
        report.retired.iter().map(|r| r.rows).sum::<u64>(),
        dry.retired.iter().map(|r| r.rows).sum::<u64>() - 8,
        "the dry run counted every row, kept ones included"
    );
    assert_eq!(old_days(app.db.clone()).await, 0, "no partition older than the cutoff is left");

    let deliveries = ids(&app.db, "SELECT id FROM singapay.deliveries ORDER BY id").await;
    assert_eq!(deliveries, vec![open, span_old, dead, span_new, fresh, during.delivery_id()]);
    assert!(gone.iter().chain([&late]).all(|id| !deliveries.contains(id)));
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transactions").fetch_one(&app.db).await.unwrap();
    assert_eq!(transactions, 7, "no transaction's current state is ever retired");
    let history: Vec<(i32, String, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT version, to_status, received_at FROM singapay.transaction_history
          WHERE transaction_key = 'disbursement:SPAN' ORDER BY version",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(history.len(), 2, "the spanning payout's history stays whole: {history:?}");
    assert_eq!((history[0].1.as_str(), history[1].1.as_str()), ("initiated", "succeeded"));
    assert!(history.iter().all(|h| h.2.is_some()), "with the delivery of every version: {history:?}");
    let states: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM singapay.transaction_events WHERE created_at < now() - interval '90 days' ORDER BY id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(states, ["done", "done", "dead"], "the open and spanning payouts' first events, the dead one");
    let rejections: Vec<i32> =
        sqlx::query_scalar("SELECT times_received FROM singapay.rejected_deliveries").fetch_all(&app.db).await.unwrap();
    assert_eq!(rejections, [2]);
    assert_eq!(ids(&app.db, "SELECT id FROM singapay.inquiries").await, [checked]);
    assert_ne!(old_inquiry, checked);
    // The kept rows now sit in today's partition; a consumer's claim is intact.
    let places: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableoid::regclass::text FROM singapay.deliveries WHERE received_at < now() - interval '90 days'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(places.len(), 1);
    for id in mid {
        assert!(queue::ack(&app.db, id, "mid-claim").await.unwrap(), "the consumer's claim survived");
    }
}

/// `--archive`: a retired day is written out first, as COPY text per partition with a
/// manifest, and restores with `ensure_partitions` and `COPY … FROM STDIN`: the same rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_day_restores_to_the_same_rows() {
    let app = TestApp::spawn().await;
    for n in 0..5 {
        assert_eq!(app.send(&disbursement(&format!("ARCH-{n}"), "00", n)).await.status, 200);
    }
    ack_all(&app).await;
    age_everything(&app.db, 100).await;
    let digest = |db: sqlx::PgPool, table: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!(
            "SELECT md5(string_agg(x::text, '|' ORDER BY x.id)) FROM singapay.{table} x"
        ))
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let before = (digest(app.db.clone(), "deliveries").await, digest(app.db.clone(), "event_log").await);

    let dir = tempfile::tempdir().unwrap();
    let report = history::retire(&app.db, cutoff(), Some(dir.path()), false).await.unwrap();
    assert_eq!(app.count("deliveries").await, 0);
    let deliveries =
        report.retired.iter().find(|r| r.table == "deliveries" && r.rows > 0).expect("the deliveries' day");
    assert_eq!(deliveries.rows, 5);
    let file = deliveries.archive.clone().expect("archived");
    let name = file.file_name().unwrap().to_str().unwrap().trim_end_matches(".copy.gz").to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 5);
    assert_eq!(manifest["table"], "singapay.deliveries");

    let day = deliveries.from_at.date_naive();
    sqlx::query("SELECT singapay.ensure_partitions($1, $1)").bind(day).execute(&app.db).await.unwrap();
    for r in report.retired.iter().filter(|r| r.rows > 0 && (r.table == "deliveries" || r.table == "event_log")) {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(r.archive.as_ref().unwrap()).unwrap())
            .read_to_end(&mut text)
            .unwrap();
        let mut conn = app.db.acquire().await.unwrap();
        let mut copy = conn.copy_in_raw(&format!("COPY singapay.{} FROM STDIN", r.table)).await.unwrap();
        copy.send(text).await.unwrap();
        copy.finish().await.unwrap();
    }
    let after = (digest(app.db.clone(), "deliveries").await, digest(app.db.clone(), "event_log").await);
    assert_eq!(before, after, "the restored rows are the retired ones, value for value");
}

/// `singapay.ensure_partitions` is idempotent, refuses a reversed or unbounded range, and
/// makes partitions of `partition_days` without overlapping the ones that exist.
#[tokio::test]
async fn ensure_partitions_fills_gaps_only() {
    let app = TestApp::spawn().await;
    let ensure = |from: &'static str, to: &'static str| {
        let db = app.db.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT singapay.ensure_partitions($1::date, $2::date)")
                .bind(from)
                .bind(to)
                .fetch_one(&db)
                .await
        }
    };
    assert_eq!(ensure("2025-01-01", "2025-01-03").await.unwrap(), 12, "three days of four tables");
    assert_eq!(ensure("2025-01-01", "2025-01-03").await.unwrap(), 0, "idempotent");
    for (from, to) in [("2025-01-03", "2025-01-01"), ("2000-01-01", "2030-01-01")] {
        let e = ensure(from, to).await.unwrap_err();
        assert_eq!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("22023"), "{e}");
    }
    sqlx::query("UPDATE singapay.history_settings SET partition_days = 7").execute(&app.db).await.unwrap();
    // 2025-01-01 … 2025-01-09 on the weekly grid (from 2000-01-01, a Saturday): the week
    // 2024-12-28 … 2025-01-03 is clipped around the three daily partitions, the next is whole.
    assert!(ensure("2025-01-01", "2025-01-09").await.unwrap() > 0);
    let ranges: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT from_at, to_at FROM singapay.history_partitions
          WHERE table_name = 'deliveries' AND from_at < '2025-02-01' ORDER BY from_at",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    for pair in ranges.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "contiguous, no overlap: {ranges:?}");
    }
    let day = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    assert_eq!(ranges.first().unwrap().0, day("2024-12-28T00:00:00Z"));
    assert_eq!(ranges.last().unwrap(), &(day("2025-01-04T00:00:00Z"), day("2025-01-11T00:00:00Z")));
}

/// The history stored before the upgrade (the `_legacy` partitions) is pruned row by row
/// with the previous rules until it can be retired whole, skipping a locked row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_from_before_partitioning_is_pruned_as_before() {
    let (url, db) = crate::helpers::database_before_migration(20261208000001).await;
    crate::helpers::seed_events(&db, 3, 3).await;
    sqlx::query("UPDATE singapay.transaction_events SET state = 'done', finished_at = now() - interval '100 days'")
        .execute(&db)
        .await
        .unwrap();
    store::migrate(&secrecy::SecretString::from(url)).await.unwrap();
    assert_eq!(history::legacy_tables(&db).await.unwrap().len(), 2, "deliveries and event_log had rows");
    let mut holder = db.begin().await.unwrap();
    let locked: i64 =
        sqlx::query_scalar("SELECT id FROM singapay.event_log WHERE state = 'done' ORDER BY id LIMIT 1 FOR UPDATE")
            .fetch_one(&mut *holder)
            .await
            .unwrap();
    assert_eq!(store::prune(&db, cutoff(), 1, true).await.unwrap().events, 9);
    let report = tokio::time::timeout(Duration::from_secs(20), store::prune(&db, cutoff(), 1, false))
        .await
        .expect("prune finishes although a candidate is locked")
        .unwrap();
    assert_eq!(report.events, 8, "the locked event is skipped, the others deleted");
    holder.rollback().await.unwrap();
    assert_eq!(store::prune(&db, cutoff(), 1, false).await.unwrap().events, 1, "taken next time");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.event_log").fetch_all(&db).await.unwrap();
    assert!(left.is_empty() && locked > 0);
}

/// The publication docs/consuming.md gives for change data capture, decoded as Debezium's
/// pgoutput reads it: each event is published once, as an insert into `singapay.event_log`
/// (the root, not a day's partition); finishing it, and `prune` moving it into today's
/// partition when it outlives its day, publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_publication_streams_each_event_once_through_the_root() {
    let app = TestApp::spawn().await;
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/consuming.md")).unwrap();
    let start = docs.find("CREATE PUBLICATION singapay_events").expect("the documented publication");
    let statement = &docs[start..start + docs[start..].find(';').unwrap()];
    sqlx::query(statement).execute(&app.db).await.unwrap();
    // A temporary slot, on a connection of its own: gone with the connection, whatever
    // happens to the test (a slot left behind would hold WAL and catalog rows cluster-wide).
    let slot = format!("cdc_{}", crate::helpers::random_hex(6));
    let mut decoder = app.db.acquire().await.unwrap().detach();
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)")
        .bind(&slot)
        .execute(&mut decoder)
        .await
        .unwrap();
    let decoder = std::sync::Arc::new(tokio::sync::Mutex::new(decoder));
    let messages = |db: sqlx::PgPool, slot: String| {
        let decoder = decoder.clone();
        async move {
            // Logical decoding reads flushed WAL only, and the test cluster commits
            // asynchronously: a synchronous commit flushes everything before it.
            let mut tx = db.begin().await.unwrap();
            sqlx::query("SET LOCAL synchronous_commit = on").execute(&mut *tx).await.unwrap();
            sqlx::query("SELECT pg_logical_emit_message(true, 'test-flush', '')").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            let data: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                    'proto_version', '1', 'publication_names', 'singapay_events')",
            )
            .bind(slot)
            .fetch_all(&mut *decoder.lock().await)
            .await
            .unwrap();
            // pgoutput v1: 'R' oid namespace\0 name\0 …; 'I' oid 'N' tuple.
            let oid = |m: &[u8]| u32::from_be_bytes(m[1..5].try_into().unwrap());
            let names: std::collections::HashMap<u32, String> = data
                .iter()
                .filter(|m| m.first() == Some(&b'R'))
                .map(|m| (oid(m), String::from_utf8_lossy(&m[5..]).split('\0').take(2).collect::<Vec<_>>().join(".")))
                .collect();
            let kinds: String =
                data.iter().filter_map(|m| m.first().map(|&b| b as char)).filter(|c| "IUD".contains(*c)).collect();
            let inserted_into: Vec<String> = data
                .iter()
                .filter(|m| m.first() == Some(&b'I'))
                .map(|m| names.get(&oid(m)).cloned().unwrap_or_default())
                .collect();
            (kinds, inserted_into)
        }
    };

    for n in 0..3 {
        assert_eq!(app.send(&disbursement(&format!("CDC-{n}"), "01", n)).await.status, 200);
    }
    let (kinds, relations) = messages(app.db.clone(), slot.clone()).await;
    assert_eq!(kinds.matches('I').count(), 3, "one insert per event: {kinds} {relations:?}");
    assert!(!kinds.contains('U') && !kinds.contains('D'), "{kinds}");
    assert!(relations.iter().all(|r| r == "singapay.event_log"), "published as the root's: {relations:?}");

    ack_all(&app).await;
    let (kinds, _) = messages(app.db.clone(), slot.clone()).await;
    assert_eq!(kinds.matches('I').count(), 0, "finishing publishes nothing: {kinds}");
    // The test's own rewrite of history (what it reads is not asserted: it keeps
    // stored_at = created_at), then prune's move of the kept events into today.
    age_everything(&app.db, 100).await;
    let _ = messages(app.db.clone(), slot.clone()).await;
    sqlx::query("UPDATE singapay.transactions SET updated_at = now()").execute(&app.db).await.unwrap();
    let report = history::retire(&app.db, cutoff(), None, false).await.unwrap();
    assert_eq!(report.kept.events, 3, "kept: their transactions changed lately");
    assert_eq!(app.count("event_log").await, 3);
    let (kinds, _) = messages(app.db.clone(), slot.clone()).await;
    assert_eq!(kinds.matches('I').count(), 0, "moved by prune, not published again: {kinds}");
    assert_eq!(app.send(&disbursement("CDC-new", "01", 9)).await.status, 200);
    let (kinds, _) = messages(app.db.clone(), slot.clone()).await;
    assert_eq!(kinds.matches('I').count(), 1, "{kinds}");
    sqlx::query("SELECT pg_drop_replication_slot($1)").bind(&slot).execute(&mut *decoder.lock().await).await.unwrap();
}

/// An install on the schema before partitioning, with rows in every table, upgraded by
/// `migrate`: every row and value is still there, in the `_legacy` partitions; callbacks and
/// consumers work at once; and once the upgrade is older than the retention (simulated by
/// narrowing the legacy range, which only its old rows occupy), the legacy partition is
/// retired whole like a day, keeping the history of the transactions still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_install_keeps_every_row_and_retires_its_old_history_whole() {
    let (url, db) = crate::helpers::database_before_migration(20261208000001).await;
    crate::helpers::seed_events(&db, 40, 2).await;
    for sql in [
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now(), attempts = 1",
        "UPDATE singapay.transactions SET status = 'succeeded', updated_at = now() - interval '10 days'
          WHERE transaction_key ~ '[02468]$'",
        "INSERT INTO singapay.deliveries (content_sha256, webhook_type, transaction_key, outcome, credential,
                signature_form, signed_at, request_path, x_signature, access_token, body)
         SELECT sha256(('d' || g)::bytea), 'disbursement', 'disbursement:seed-' || g, 'applied', 'primary', 'php',
                now(), '/webhooks/singapay', 'sig', 'tok', '{}'::bytea FROM generate_series(1, 40) g",
        "INSERT INTO singapay.rejected_deliveries (content_sha256, reason, x_timestamp, credential, signature_form,
                request_path, x_signature, access_token, body)
         SELECT sha256(('r' || g)::bytea), 'stale_timestamp', '1700000000', 'primary', 'php', '/webhooks/singapay',
                'sig', 'tok-' || g, '{}'::bytea FROM generate_series(1, 5) g",
        "INSERT INTO singapay.inquiries (transaction_key, reason, asked_by, method, path, response_body, answer,
                elapsed_ms, status)
         SELECT 'disbursement:seed-' || g, 'overdue', 'old', 'POST', '/api/v2.0/x', '{}'::bytea, 'status', 5, 'pending'
           FROM generate_series(1, 40) g",
        "INSERT INTO singapay.event_log (event_id, transaction_key, version, webhook_type, to_status, payload)
         VALUES (gen_random_uuid(), 'disbursement:seed-1', 3, 'disbursement', 'pending', '{}')",
        "INSERT INTO singapay.event_queue (id, transaction_key, version)
         SELECT id, transaction_key, version FROM singapay.event_log WHERE version = 3",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let before = crate::db_hardening::tables_digest(&db, None).await;
    store::migrate(&secrecy::SecretString::from(url.clone())).await.expect("the upgrade");
    let columns: Vec<(String, String)> = before.iter().map(|(t, c, _, _)| (t.clone(), c.clone())).collect();
    let after = crate::db_hardening::tables_digest(&db, Some(&columns)).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.2, b.3), (&a.0, &a.2, a.3), "{} kept every row and value", b.0);
    }
    let legacy: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM singapay.history_partitions WHERE partition::text LIKE 'singapay_history.%_legacy'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(legacy, 4, "each table's old rows are its legacy partition");

    // The event queued before the upgrade is claimed and acknowledged through its new path.
    let claimed = queue::claim(&db, "after", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(queue::ack(&db, claimed[0].id, "after").await.unwrap());

    // The upgrade long ago: the legacy range ends five days back, days since are partitions.
    let five_days_ago = (Utc::now() - chrono::Duration::days(5)).date_naive();
    for t in ["deliveries", "event_log", "rejected_deliveries", "inquiries"] {
        for sql in [
            format!("ALTER TABLE singapay.{t} DETACH PARTITION singapay_history.{t}_legacy"),
            format!("ALTER TABLE singapay_history.{t}_legacy DROP CONSTRAINT history_legacy_range"),
            format!(
                "ALTER TABLE singapay.{t} ATTACH PARTITION singapay_history.{t}_legacy
                   FOR VALUES FROM (MINVALUE) TO ('{five_days_ago}')"
            ),
        ] {
            sqlx::query(&sql).execute(&db).await.unwrap();
        }
    }
    sqlx::query("SELECT singapay.ensure_partitions(current_date - 6, current_date + 8)").execute(&db).await.unwrap();
    let app = TestApp::spawn_on(url, db.clone(), |_| {}).await;
    let new = app.send(&disbursement("AFTER", "01", 1)).await.delivery_id();

    let report = history::retire(&db, Utc::now() - chrono::Duration::days(2), None, false).await.unwrap();
    assert!(report.retired.iter().any(|r| r.partition == "singapay_history.deliveries_legacy"), "{report:?}");
    assert_eq!(legacy_left(&db).await, 0);
    // Kept: the 20 open transactions' deliveries (their own, and the shared one that is
    // their current state), events and inquiries; the rest went with the partition.
    assert_eq!(report.kept, history::Kept { events: 41, deliveries: 21, rejections: 0, inquiries: 20 });
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transactions").fetch_one(&db).await.unwrap();
    assert_eq!(transactions, 41);
    let open_history: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM singapay.transaction_history h JOIN singapay.transactions t USING (transaction_key)
          WHERE t.status = 'pending'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(open_history, 41, "every version of every open transaction");
    assert!(ids(&db, "SELECT id FROM singapay.deliveries").await.contains(&new));
}

async fn legacy_left(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM singapay.history_partitions WHERE partition::text LIKE '%legacy'")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Retirement finds the transactions whose rows it must keep through where their history
/// begins (`transactions.history_from`): a payout whose history spans two retired days and
/// goes on today is kept whole by the retirement of both days, the second finding it
/// because the first moved its beginning on; so is one from before `history_from` existed
/// ('-infinity'), through its last change. A quiet payout of the same days goes entirely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_spanning_consecutive_retired_days_is_kept_whole() {
    let app = TestApp::spawn().await;
    for key in ["LONG", "PRE", "QUIET"] {
        assert_eq!(app.send(&disbursement(key, "01", 1)).await.status, 200);
    }
    ack_all(&app).await;
    age_everything(&app.db, 1).await;
    for key in ["LONG", "PRE", "QUIET"] {
        assert_eq!(app.send(&disbursement(key, if key == "QUIET" { "00" } else { "03" }, 2)).await.status, 200);
    }
    ack_all(&app).await;
    age_everything(&app.db, 99).await;
    sqlx::query(
        "UPDATE singapay.transactions SET history_from = '-infinity' WHERE transaction_key = 'disbursement:PRE'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    for key in ["LONG", "PRE"] {
        assert_eq!(app.send(&disbursement(key, "00", 3)).await.status, 200);
    }
    ack_all(&app).await;
    let days: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT date_trunc('day', stored_at, 'UTC') FROM singapay.deliveries
          WHERE stored_at < now() - interval '90 days' ORDER BY 1",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(days.len(), 2, "the first two versions are on two consecutive old days: {days:?}");

    let report = history::retire(&app.db, cutoff(), None, false).await.unwrap();
    assert!(report.postponed.is_empty(), "{report:?}");
    assert_eq!(report.kept, history::Kept { events: 4, deliveries: 4, rejections: 0, inquiries: 0 });
    for key in ["disbursement:LONG", "disbursement:PRE"] {
        let history: Vec<(i32, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT version, to_status, received_at FROM singapay.transaction_history
              WHERE transaction_key = $1 ORDER BY version",
        )
        .bind(key)
        .fetch_all(&app.db)
        .await
        .unwrap();
        let statuses: Vec<&str> = history.iter().map(|h| h.1.as_str()).collect();
        assert_eq!(statuses, ["initiated", "pending", "succeeded"], "{key}'s history stays whole: {history:?}");
        assert!(history.iter().all(|h| h.2.is_some()), "with the delivery of every version: {history:?}");
    }
    let quiet: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM singapay.transaction_history WHERE transaction_key = 'disbursement:QUIET'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(quiet, 0, "the quiet payout's history went with its days");
    assert_eq!(app.count("deliveries").await, 6);
}

/// The released schema (partitioned history, before `history_from`), with rows in every
/// table, upgraded by `migrate`: every row and value is still there; the transactions
/// already stored read `history_from = '-infinity'`, a new one `now()`; and retiring their
/// day later still keeps the history of one of them that changed since the cutoff (found by
/// its last change), while the quiet ones' rows go with the day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_released_partitioned_schema_upgrades_to_history_from_keeping_every_row() {
    let (url, db) = crate::helpers::database_before_migration(20261209000001).await;
    crate::helpers::seed_events(&db, 30, 2).await;
    for sql in [
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now(), attempts = 1",
        "UPDATE singapay.transactions SET status = 'succeeded'",
        "INSERT INTO singapay.rejected_deliveries (content_sha256, reason, x_timestamp, credential, signature_form,
                request_path, x_signature, access_token, body)
         SELECT sha256(('r' || g)::bytea), 'stale_timestamp', '1700000000', 'primary', 'php', '/webhooks/singapay',
                'sig', 'tok-' || g, '{}'::bytea FROM generate_series(1, 5) g",
        "INSERT INTO singapay.inquiries (transaction_key, reason, asked_by, method, path, response_body, answer,
                elapsed_ms, status)
         SELECT 'disbursement:seed-' || g, 'overdue', 'old', 'POST', '/api/v2.0/x', '{}'::bytea, 'status', 5, 'pending'
           FROM generate_series(1, 30) g",
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason, state, last_inquiry_id, not_found)
         SELECT transaction_key, 'overdue', 'open', id, 1 FROM singapay.inquiries WHERE id = 1",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let before = crate::db_hardening::tables_digest(&db, None).await;
    assert!(before.iter().all(|(table, _, _, rows)| *rows > 0 || table == "event_queue"), "{before:?}");
    store::migrate(&secrecy::SecretString::from(url.clone())).await.expect("the upgrade");
    let columns: Vec<(String, String)> = before.iter().map(|(t, c, _, _)| (t.clone(), c.clone())).collect();
    let after = crate::db_hardening::tables_digest(&db, Some(&columns)).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((&b.0, &b.2, b.3), (&a.0, &a.2, a.3), "{} kept every row and value", b.0);
    }
    let unknown: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.transactions WHERE history_from = '-infinity'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(unknown, 30, "the transactions stored before the column: their history may begin anywhere");

    let app = TestApp::spawn_on(url, db.clone(), |_| {}).await;
    age_everything(&db, 100).await;
    // One old payout changed lately; the one being reconciled (seed-1) is kept for its check.
    sqlx::query("UPDATE singapay.transactions SET updated_at = now() WHERE transaction_key = 'disbursement:seed-7'")
        .execute(&db)
        .await
        .unwrap();
    let fresh = app.send(&disbursement("FRESH", "01", 1)).await.delivery_id();
    let recent: bool = sqlx::query_scalar(
        "SELECT history_from > now() - interval '1 minute' FROM singapay.transactions
          WHERE transaction_key = 'disbursement:FRESH'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(recent, "a new transaction's history begins when it is stored");

    let report = history::retire(&db, cutoff(), None, false).await.unwrap();
    assert!(report.postponed.is_empty(), "{report:?}");
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT transaction_key FROM singapay.transaction_events WHERE transaction_key LIKE '%seed%' ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(kept, ["disbursement:seed-1", "disbursement:seed-7"], "the checked and the changed payouts' events");
    let inquiries: Vec<String> =
        sqlx::query_scalar("SELECT transaction_key FROM singapay.inquiries ORDER BY 1").fetch_all(&db).await.unwrap();
    assert_eq!(inquiries, ["disbursement:seed-1", "disbursement:seed-7"]);
    assert!(ids(&db, "SELECT id FROM singapay.deliveries").await.contains(&fresh));
}
