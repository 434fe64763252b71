//! The queue table as a consumer API: claim/ack/nack in SQL, leases, fencing, backoff,
//! dead events, NOTIFY with a polling fallback, the outbox view.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use singapay_webhooks::queue::{self, Waiter};

use crate::helpers::{fresh_database, payload, seed_events, TestApp};

async fn states(db: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT state, events FROM singapay.queue_health")
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_consumers_share_ten_thousand_events_without_overlap_and_in_order() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 2000, 5).await;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(10).connect(&_url).await.unwrap();

    // Who holds which event right now, every claim ever made, and per transaction the
    // order in which versions were finished.
    let held: Arc<Mutex<HashMap<i64, String>>> = Arc::default();
    let claims: Arc<Mutex<Vec<i64>>> = Arc::default();
    let finished: Arc<Mutex<HashMap<String, Vec<i32>>>> = Arc::default();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (pool, held, claims, finished) = (pool.clone(), held.clone(), claims.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("consumer-{c}");
            let mut idle = 0;
            while idle < 20 {
                let batch = queue::claim(&pool, &name, 100, Duration::from_secs(120)).await.unwrap();
                if batch.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                for ev in &batch {
                    let prev = held.lock().unwrap().insert(ev.id, name.clone());
                    assert!(prev.is_none(), "event {} handed to {name} while {prev:?} held it", ev.id);
                    claims.lock().unwrap().push(ev.id);
                }
                let keys: HashSet<&str> = batch.iter().map(|e| e.transaction_key.as_str()).collect();
                assert_eq!(keys.len(), batch.len(), "one version per transaction in a batch");
                for ev in &batch {
                    finished.lock().unwrap().entry(ev.transaction_key.clone()).or_default().push(ev.version);
                    held.lock().unwrap().remove(&ev.id);
                    assert!(queue::ack(&pool, ev.id, &name).await.unwrap(), "ack of a live lease succeeds");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let claims = claims.lock().unwrap().clone();
    assert_eq!(claims.len(), 10_000, "every event handed out exactly once");
    assert_eq!(claims.iter().collect::<HashSet<_>>().len(), 10_000);
    for (key, versions) in finished.lock().unwrap().iter() {
        assert_eq!(versions, &vec![1, 2, 3, 4, 5], "{key} finished out of order");
    }
    let s = states(&db).await;
    assert_eq!((s["done"], s["available"], s["running"], s["dead"]), (10_000, 0, 0, 0));
}

/// Ends every running lease now, as time passing would (no sleeping on a loaded machine).
async fn expire_leases(db: &sqlx::PgPool) {
    sqlx::query(
        "UPDATE singapay.transaction_events SET locked_until = now() - interval '1 second' WHERE state = 'running'",
    )
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_the_late_ack_is_fenced_off() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 10, 1).await;
    let first = queue::claim(&db, "crashed", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(first.len(), 10);
    assert!(
        queue::claim(&db, "other", 10, Duration::from_secs(60)).await.unwrap().is_empty(),
        "leased events are not handed out twice"
    );
    expire_leases(&db).await;

    let second = queue::claim(&db, "survivor", 10, Duration::from_secs(60)).await.unwrap();
    assert_eq!(second.iter().map(|e| e.id).collect::<Vec<_>>(), first.iter().map(|e| e.id).collect::<Vec<_>>());
    assert!(second.iter().all(|e| e.attempts == 2));
    for ev in &first {
        assert!(!queue::ack(&db, ev.id, "crashed").await.unwrap(), "the stale consumer's ack is refused");
        assert!(!queue::nack(&db, ev.id, "crashed", "late", Duration::ZERO).await.unwrap());
    }
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT state, locked_by FROM singapay.transaction_events").fetch_all(&db).await.unwrap();
    assert!(owners.iter().all(|(s, by)| s == "running" && by == "survivor"), "the late ack changed nothing");
    for ev in &second {
        assert!(queue::ack(&db, ev.id, "survivor").await.unwrap());
    }
    assert_eq!(states(&db).await["done"], 10);
}

#[tokio::test]
async fn a_lease_that_expired_unclaimed_cannot_be_acked() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 1, 1).await;
    let ev = queue::claim(&db, "slow", 1, Duration::from_secs(60)).await.unwrap().remove(0);
    expire_leases(&db).await;
    assert!(!queue::ack(&db, ev.id, "slow").await.unwrap());
    assert!(!queue::nack(&db, ev.id, "slow", "late", Duration::ZERO).await.unwrap());
}

#[tokio::test]
async fn a_lease_that_expires_on_the_last_allowed_attempt_goes_dead() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 1, 1).await;
    sqlx::query("UPDATE singapay.transaction_events SET max_attempts = 2").execute(&db).await.unwrap();
    // The first attempt's lease runs out: the event is handed out again.
    queue::claim(&db, "poisoned", 1, Duration::from_secs(60)).await.unwrap().remove(0);
    expire_leases(&db).await;
    let again = queue::claim(&db, "poisoned", 1, Duration::from_secs(60)).await.unwrap().remove(0);
    assert_eq!(again.attempts, 2);
    // The last allowed attempt's lease runs out too (the consumer crashes on it every
    // time): the next claim reaps it as dead instead of handing it out a third time.
    expire_leases(&db).await;
    assert!(queue::claim(&db, "next", 1, Duration::from_secs(60)).await.unwrap().is_empty());
    let (state, error, finished): (String, String, bool) =
        sqlx::query_as("SELECT state, last_error, finished_at IS NOT NULL FROM singapay.transaction_events")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(state, "dead");
    assert_eq!(error, "lease of poisoned expired on the last allowed attempt");
    assert!(finished);
    assert_eq!(states(&db).await["dead"], 1);
}

#[tokio::test]
async fn nack_backs_off_exponentially_and_the_last_attempt_goes_dead() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 1, 1).await;
    sqlx::query("UPDATE singapay.transaction_events SET max_attempts = 3").execute(&db).await.unwrap();
    let base = Duration::from_millis(1000);
    let clock = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>("SELECT clock_timestamp()").fetch_one(&db).await.unwrap()
    };
    for attempt in 1..=3 {
        let ev = queue::claim(&db, "worker", 1, Duration::from_secs(60)).await.unwrap().remove(0);
        assert_eq!(ev.attempts, attempt);
        let before = clock().await;
        assert!(queue::nack(&db, ev.id, "worker", &format!("boom {attempt}"), base).await.unwrap());
        let after = clock().await;
        if attempt == 3 {
            break;
        }
        // The wait doubles per attempt (1 s, then 2 s), counted from the nack, which ran
        // between `before` and `after` by Postgres's own clock.
        let available_at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT available_at FROM singapay.transaction_events").fetch_one(&db).await.unwrap();
        let wait = chrono::Duration::milliseconds(1000 * 2i64.pow(attempt as u32 - 1));
        assert!(
            before + wait <= available_at && available_at <= after + wait,
            "attempt {attempt}: available at {available_at}, expected {wait} after a nack between {before} and {after}"
        );
        assert!(
            queue::claim(&db, "worker", 1, Duration::from_secs(60)).await.unwrap().is_empty(),
            "not claimable before available_at"
        );
        // Let the backoff pass without waiting for it.
        sqlx::query("UPDATE singapay.transaction_events SET available_at = now()").execute(&db).await.unwrap();
    }
    let (state, error): (String, String) =
        sqlx::query_as("SELECT state, last_error FROM singapay.transaction_events").fetch_one(&db).await.unwrap();
    assert_eq!((state.as_str(), error.as_str()), ("dead", "boom 3"));
    assert_eq!(states(&db).await["dead"], 1, "visible in queue_health");
    assert!(queue::claim(&db, "worker", 1, Duration::from_secs(60)).await.unwrap().is_empty());
}

#[tokio::test]
async fn claim_refuses_nonsense_arguments() {
    let (_url, db) = fresh_database().await;
    for (consumer, batch, lease) in
        [("", 1, "1 minute"), ("c", 0, "1 minute"), ("c", 1, "0 seconds"), ("c", 20000, "1 minute")]
    {
        let r = sqlx::query("SELECT * FROM singapay.claim_events($1, $2, $3::interval)")
            .bind(consumer)
            .bind(batch)
            .bind(lease)
            .execute(&db)
            .await;
        let code = match &r {
            Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            other => panic!("{consumer:?} {batch} {lease}: {other:?}"),
        };
        assert_eq!(code.as_deref(), Some("22023"), "{consumer:?} {batch} {lease}: invalid_parameter_value");
    }
    // The positive control: the same call with sensible arguments works (and finds nothing).
    let claimed = sqlx::query("SELECT * FROM singapay.claim_events($1, $2, $3::interval)")
        .bind("c")
        .bind(1)
        .bind("1 minute")
        .fetch_all(&db)
        .await
        .expect("a sensible claim succeeds");
    assert!(claimed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_wakes_a_waiting_consumer_as_soon_as_a_callback_commits() {
    let app = TestApp::spawn().await;
    // A 60 s poll: only the notification can explain a quick wake-up.
    let mut waiter = Waiter::new(&app.db, true, Duration::from_secs(60)).await.unwrap();
    let db = app.db.clone();
    let consumer = tokio::spawn(async move {
        let started = Instant::now();
        let woken = waiter.wait().await;
        let events = queue::claim(&db, "listener", 10, Duration::from_secs(30)).await.unwrap();
        (woken, started.elapsed(), events)
    });
    assert_eq!(app.send(&payload("va-transaction")).await.status, 200);
    let (woken, elapsed, events) = tokio::time::timeout(Duration::from_secs(30), consumer).await.unwrap().unwrap();
    assert!(woken, "woken by NOTIFY");
    assert!(elapsed < Duration::from_secs(10), "woke after {elapsed:?}");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].transaction_key, "va:3211120260314091205518");
}

/// Wake-ups are sent at most every 100 ms, but none is lost: a callback committed right
/// after the one that woke the consumer (inside the same 100 ms) wakes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_right_after_a_wake_up_still_wakes_the_consumer() {
    let app = TestApp::spawn().await;
    let mut waiter = Waiter::new(&app.db, true, Duration::from_secs(60)).await.unwrap();
    let first = payload("va-transaction");
    let second = first.replace("3211120260314091205518", "WAKE-2");
    assert_eq!(app.send(&first).await.status, 200);
    assert!(tokio::time::timeout(Duration::from_secs(10), waiter.wait()).await.unwrap(), "woken by NOTIFY");
    assert_eq!(app.send(&second).await.status, 200);
    let started = Instant::now();
    let woken = tokio::time::timeout(Duration::from_secs(10), waiter.wait()).await.unwrap();
    assert!(woken && started.elapsed() < Duration::from_secs(5), "woken again after {:?}", started.elapsed());
    let events = queue::claim(&app.db, "listener", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(events.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_notify_polling_still_delivers() {
    let app = TestApp::spawn().await;
    // As through a transaction-mode pooler: no LISTEN at all.
    let mut waiter = Waiter::new(&app.db, false, Duration::from_millis(200)).await.unwrap();
    assert_eq!(app.send(&payload("disbursement")).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = queue::claim(&app.db, "poller", 10, Duration::from_secs(30)).await.unwrap();
        if !events.is_empty() || Instant::now() > deadline {
            break events;
        }
        assert!(!waiter.wait().await, "a polling waiter is never woken by a notification");
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].to_status, "succeeded");
    let doc: serde_json::Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(doc["event_id"], events[0].event_id.to_string());
    // The identifier is a cross-language contract, computed here by Python's uuid module:
    // uuid5(uuid5(NAMESPACE_URL, "urn:singapay-webhooks:transaction-events"),
    //       "disbursement:1405981222026031614220917745120:1").
    assert_eq!(events[0].event_id.to_string(), "38321d12-0565-55d9-953f-e5eebcc57078");
    let delivery_id: i64 = sqlx::query_scalar("SELECT id FROM singapay.deliveries").fetch_one(&app.db).await.unwrap();
    // Every field of the event document (docs/consuming.md, "The event document"), from the fixture.
    let expected = serde_json::json!({
        "schema": "singapay.transaction_event.v1",
        "event_id": "38321d12-0565-55d9-953f-e5eebcc57078",
        "transaction_key": "disbursement:1405981222026031614220917745120",
        "product": "disbursement",
        "version": 1,
        "from_status": null,
        "to_status": "succeeded",
        "webhook_type": "disbursement",
        "event": "disbursement",
        "singapay_id": "1405981222026031614220917745120",
        "merchant_reference": "PAYOUT-2026-0316-0007",
        "amount": "250000.00",
        "currency": "IDR",
        "response_code": "SP000",
        "transaction_status_code": "00",
        "occurred_at": "2026-03-16T07:22:11+00:00",
        "delivery_id": delivery_id,
    });
    assert_eq!(doc, expected);
}

#[tokio::test]
async fn the_outbox_view_has_one_row_per_event_keyed_by_transaction() {
    let app = TestApp::spawn().await;
    for p in ["disbursement", "va-transaction", "transaction-expiration"] {
        assert_eq!(app.send(&payload(p)).await.status, 200);
    }
    let rows: Vec<(uuid::Uuid, String, String, String, String, uuid::Uuid)> = sqlx::query_as(
        "SELECT o.id, o.aggregatetype, o.aggregateid, o.type, e.transaction_key, e.event_id
           FROM singapay.outbox o JOIN singapay.transaction_events e ON e.id = o.queue_id ORDER BY o.queue_id",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, app.count("transaction_events").await);
    assert_eq!(rows.len(), 5);
    for (id, aggregatetype, aggregateid, kind, key, event_id) in &rows {
        assert_eq!(aggregateid, key);
        assert_eq!(id, event_id);
        assert!(aggregatetype.starts_with("singapay."));
        assert!(kind.starts_with("transaction."));
    }
    assert_eq!(rows[0].1, "singapay.disbursement");
    assert_eq!(rows[0].3, "transaction.succeeded");
}

#[tokio::test]
async fn history_and_inquiry_views_answer_what_happened() {
    let app = TestApp::spawn().await;
    let body = |code: &str, n: u32| {
        format!(
            r#"{{"response_code":"SP000","event":"disbursement","data":{{"transaction_id":"77","transaction_status":{{"code":"{code}"}},"notes":"{n}"}}}}"#
        )
    };
    let first = app.send(&body("01", 1)).await.delivery_id();
    let second = app.send(&body("00", 2)).await.delivery_id();
    let history: Vec<(i32, Option<String>, String, i64)> = sqlx::query_as(
        "SELECT version, from_status, to_status, delivery_id FROM singapay.transaction_history
          WHERE transaction_key = 'disbursement:77' ORDER BY version",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        history,
        vec![(1, None, "initiated".into(), first), (2, Some("initiated".into()), "succeeded".into(), second)]
    );
    let inquiry = r#"{"response_code":"SP002","event":"disbursement","data":{"transaction_id":"77"}}"#;
    let id = app.send(inquiry).await.delivery_id();
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT delivery_id, response_code, current_status FROM singapay.inquiries_needed")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(rows, vec![(id, "SP002".to_owned(), Some("succeeded".to_owned()))]);
    let stale = app.send_at(&payload("ewallet-topup"), crate::helpers::now() - 3600).await;
    assert_eq!(stale.status, 401);
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM singapay.recent_rejections").fetch_one(&app.db).await.unwrap();
    assert_eq!(n, 1);
}

/// Buffers one `claim_events(consumer, 10, …)` touches, as Postgres counts them (the
/// function's own statements included), on `conn`. The claimed events are acknowledged.
async fn claim_buffers(conn: &mut sqlx::PgConnection, consumer: &str) -> i64 {
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) SELECT * FROM singapay.claim_events('{consumer}', 10, '1 minute')"
    ))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let line = plan.iter().find(|l| l.trim_start().starts_with("Buffers:")).expect("EXPLAIN reports buffers");
    let buffers: i64 = line
        .split_whitespace()
        .filter_map(|w| {
            w.split_once('=').and_then(|(k, v)| ["hit", "read"].contains(&k).then(|| v.parse::<i64>().ok())?)
        })
        .sum();
    let acked: Vec<i64> = sqlx::query_scalar(
        "SELECT * FROM singapay.ack_events(
            ARRAY(SELECT id FROM singapay.transaction_events WHERE state = 'running' AND locked_by = $1), $1)",
    )
    .bind(consumer)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(acked.len(), 10, "each claim hands out 10 events");
    buffers
}

/// The cost of a claim, after its plan has settled (PL/pgSQL plans generically from the
/// sixth call on), on a queue of 300 available events with `finished` finished events
/// stored before them (lower ids, older).
async fn steady_claim_buffers(finished: i32) -> i64 {
    let (_url, db) = fresh_database().await;
    if finished > 0 {
        seed_events(&db, finished / 10, 10).await;
        sqlx::query("UPDATE singapay.transaction_events SET state = 'done', attempts = 1, finished_at = now()")
            .execute(&db)
            .await
            .unwrap();
    }
    sqlx::query(
        "WITH d AS (
            INSERT INTO singapay.deliveries
                (content_sha256, webhook_type, outcome, credential, signature_form, signed_at,
                 request_path, x_signature, access_token, body)
            VALUES (sha256('claimable'), 'disbursement', 'batch', 'seed', 'raw', now(), '/seed', '', '', '')
            RETURNING id)
         INSERT INTO singapay.transactions (transaction_key, product, status, version, last_delivery_id)
         SELECT 'disbursement:claimable-' || g, 'disbursement', 'pending', 1, d.id FROM generate_series(1, 300) g, d",
    )
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO singapay.transaction_events (event_id, transaction_key, version, webhook_type, to_status, payload)
         SELECT gen_random_uuid(), 'disbursement:claimable-' || g, 1, 'disbursement', 'pending', '{}'
           FROM generate_series(1, 300) g ORDER BY g",
    )
    .execute(&db)
    .await
    .unwrap();
    // As autovacuum would have by then: statistics and a clean table.
    sqlx::query("VACUUM ANALYZE singapay.transaction_events").execute(&db).await.unwrap();
    let mut conn = db.acquire().await.unwrap();
    let mut costs = Vec::new();
    for _ in 0..10 {
        costs.push(claim_buffers(&mut conn, "meter").await);
    }
    costs[6..].iter().copied().max().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_does_not_step_over_finished_events() {
    let empty = steady_claim_buffers(0).await;
    let big = steady_claim_buffers(100_000).await;
    // Stepping over 100,000 finished events reads thousands of pages (3,207 against 216
    // when claim_events ordered by id alone); walking an index that holds only claimable
    // rows reads a few hundred either way. What does grow is a level in each index that the
    // claim's updates insert into.
    assert!(big < 2 * empty, "a claim touched {big} buffers with 100,000 finished events, {empty} without");
}

#[tokio::test]
async fn ack_events_acknowledges_a_batch_and_is_fenced_per_event() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 6, 1).await;
    let mine = queue::claim(&db, "me", 4, Duration::from_secs(60)).await.unwrap();
    let theirs = queue::claim(&db, "them", 2, Duration::from_secs(60)).await.unwrap();
    assert_eq!((mine.len(), theirs.len()), (4, 2));
    // One of mine has lost its lease.
    sqlx::query("UPDATE singapay.transaction_events SET locked_until = now() - interval '1 second' WHERE id = $1")
        .bind(mine[3].id)
        .execute(&db)
        .await
        .unwrap();
    let mut asked: Vec<i64> = mine.iter().chain(&theirs).map(|e| e.id).collect();
    asked.push(i64::MAX); // no such event
    asked.reverse();
    let acked = queue::ack_many(&db, &asked, "me").await.unwrap();
    assert_eq!(acked, vec![mine[0].id, mine[1].id, mine[2].id], "only my live leases, in id order");
    let rows: Vec<(i64, String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT id, state, finished_at FROM singapay.transaction_events ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    for (id, state, finished_at) in rows {
        let done = acked.contains(&id);
        assert_eq!(state, if done { "done" } else { "running" }, "event {id}");
        assert_eq!(finished_at.is_some(), done, "event {id}");
    }
    assert!(queue::ack_many(&db, &acked, "me").await.unwrap().is_empty(), "a second ack changes nothing");
    assert!(queue::ack_many(&db, &[], "me").await.unwrap().is_empty());
}

#[tokio::test]
async fn nack_events_gives_a_batch_back_with_backoff_and_dead_letters_the_last_attempt() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 3, 1).await;
    sqlx::query(
        "UPDATE singapay.transaction_events SET max_attempts = 1 WHERE transaction_key = 'disbursement:seed-3'",
    )
    .execute(&db)
    .await
    .unwrap();
    let claimed = queue::claim(&db, "worker", 3, Duration::from_secs(60)).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
    assert_eq!(queue::nack_many(&db, &ids, "intruder", "no", Duration::ZERO).await.unwrap(), Vec::<i64>::new());
    let given_back = queue::nack_many(&db, &ids, "worker", "downstream down", Duration::from_secs(30)).await.unwrap();
    assert_eq!(given_back, ids);
    let rows: Vec<(String, String, bool, String)> = sqlx::query_as(
        "SELECT transaction_key, state, available_at > now() + interval '29 seconds', last_error
           FROM singapay.transaction_events ORDER BY transaction_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(rows[0], ("disbursement:seed-1".into(), "available".into(), true, "downstream down".into()));
    assert_eq!(rows[1], ("disbursement:seed-2".into(), "available".into(), true, "downstream down".into()));
    assert_eq!(rows[2].1, "dead", "its only attempt is used up");
    assert!(queue::claim(&db, "worker", 3, Duration::from_secs(60)).await.unwrap().is_empty(), "backing off");
}

/// The queue migration on a table that already holds events in every state, while another
/// session has a claim and an insert open on it: it must not wait for them (no lock that
/// blocks readers or writers), and every event keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_migration_runs_on_a_populated_table_without_blocking_consumers() {
    const MIGRATION: i64 = 20261123000001;
    let (url, db) = crate::helpers::database_before_migration(MIGRATION).await;
    seed_events(&db, 2_000, 5).await;
    for sql in [
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now(), attempts = 1 WHERE version <= 3",
        "UPDATE singapay.transaction_events SET state = 'dead', finished_at = now(), attempts = 25
          WHERE version = 4 AND transaction_key LIKE '%0'",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let running = queue::claim(&db, "before", 50, Duration::from_secs(600)).await.unwrap();
    assert_eq!(running.len(), 50);
    let before = states(&db).await;

    // Another session is in the middle of a claim and an insert.
    let mut busy = db.begin().await.unwrap();
    let held: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.claim_events('busy', 10, '10 minutes')")
        .fetch_all(&mut *busy)
        .await
        .unwrap();
    assert_eq!(held.len(), 10);

    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let impatient = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("lock_timeout", "2s")]))
        .await
        .unwrap();
    singapay_webhooks::store::MIGRATOR.run(&impatient).await.expect("the migration does not wait for the open claim");
    busy.commit().await.unwrap();

    let after = states(&db).await;
    assert_eq!(after["done"], before["done"]);
    assert_eq!(after["dead"], before["dead"]);
    assert_eq!(after["running"], before["running"] + 10);
    let ids: Vec<i64> = running.iter().map(|e| e.id).collect();
    assert_eq!(queue::ack_many(&db, &ids, "before").await.unwrap(), ids, "leases taken before it are still live");
    let next = queue::claim(&db, "after", 100, Duration::from_secs(60)).await.unwrap();
    assert!(!next.is_empty(), "claiming works after it");
    assert!(next.iter().all(|e| e.version == 4 || e.version == 5));
}
