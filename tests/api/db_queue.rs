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
/// sixth call on; the cheapest of 14), on a queue of 300 available events with `finished` finished events
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
    // As autovacuum would have by then: statistics and a clean table. (A vacuum cannot remove
    // what an older snapshot, such as a concurrent test's, may still see: vacuum until the
    // queue has no dead row left.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        sqlx::query("VACUUM ANALYZE singapay.event_log, singapay.event_queue").execute(&db).await.unwrap();
        let dead: i64 = sqlx::query_scalar(
            "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'singapay.event_queue'::regclass",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        if dead == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{dead} dead rows in the queue after a minute of vacuums");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let mut conn = db.acquire().await.unwrap();
    let mut costs = Vec::new();
    for _ in 0..20 {
        costs.push(claim_buffers(&mut conn, "meter").await);
    }
    // The cheapest claim with a settled plan. Buffers count the planning of the function's
    // statements too, and a claim replans whenever its session's catalog caches are reset:
    // that happens when other databases' schema changes (the concurrent tests' migrations,
    // dozens of partitions each) overflow the shared invalidation queue, and costs the same
    // few hundred catalog buffers whatever the queue holds. That is not the claim's cost.
    costs[6..].iter().copied().min().unwrap()
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

/// A database with the schema as it was before `migration`: 2,000 transactions of five
/// versions each, 1–3 done, 4 dead for every tenth transaction, the rest available.
async fn finished_events_before_migration(migration: i64) -> (String, PgPool) {
    let (url, db) = crate::helpers::database_before_migration(migration).await;
    seed_events(&db, 2_000, 5).await;
    for sql in [
        "UPDATE singapay.transaction_events SET state = 'done', finished_at = now(), attempts = 1 WHERE version <= 3",
        "UPDATE singapay.transaction_events SET state = 'dead', finished_at = now(), attempts = 25, last_error = 'gave up'
          WHERE version = 4 AND transaction_key LIKE '%0'",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    (url, db)
}

/// A transaction that has claimed 10 events (as `busy`) and not committed yet.
async fn open_claim(db: &PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, Vec<i64>) {
    let mut busy = db.begin().await.unwrap();
    let held: Vec<i64> = sqlx::query_scalar("SELECT id FROM singapay.claim_events('busy', 10, '10 minutes')")
        .fetch_all(&mut *busy)
        .await
        .unwrap();
    assert_eq!(held.len(), 10);
    (busy, held)
}

/// The queue migration on a table that already holds events in every state, while another
/// session has a claim and an insert open on it: it must not wait for them (no lock that
/// blocks readers or writers), and every event keeps its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_migration_runs_on_a_populated_table_without_blocking_consumers() {
    let (url, db) = finished_events_before_migration(20261123000001).await;
    let running = queue::claim(&db, "before", 50, Duration::from_secs(600)).await.unwrap();
    assert_eq!(running.len(), 50);
    let before = states(&db).await;

    // Another session is in the middle of a claim and an insert.
    let (busy, _held) = open_claim(&db).await;

    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let impatient = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("lock_timeout", "2s")]))
        .await
        .unwrap();
    // This migration alone (the next one, the event queue's, is tested below).
    let (_dir, through) = crate::helpers::migrator_before(20261124000001).await;
    through.run(&impatient).await.expect("the migration does not wait for the open claim");
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

/// The event-queue migration on a table that holds events in every state, leases and a
/// backed-off event included: every event keeps its state, leases taken before it are still
/// live and fenced, the per-transaction order holds after it. It needs an exclusive lock,
/// so it waits for a transaction that is using the table, and gives up after 5 s rather
/// than hold every callback up behind it; run again, it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_queue_migration_moves_the_backlog_and_keeps_every_lease() {
    let (url, db) = finished_events_before_migration(20261124000001).await;
    let running = queue::claim(&db, "before", 50, Duration::from_secs(600)).await.unwrap();
    assert_eq!(running.len(), 50);
    let backed_off = queue::claim(&db, "before", 1, Duration::from_secs(600)).await.unwrap();
    assert!(queue::nack(&db, backed_off[0].id, "before", "not yet", Duration::from_secs(3600)).await.unwrap());
    let before = states(&db).await;
    let events = |db: PgPool| async move {
        sqlx::query_as::<_, (i64, String, i32, Option<String>, Option<String>, Option<chrono::DateTime<chrono::Utc>>)>(
            "SELECT id, state, attempts, locked_by, last_error, available_at FROM singapay.transaction_events ORDER BY id",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let rows_before = events(db.clone()).await;

    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let migrate = || async {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await.unwrap();
        let started = std::time::Instant::now();
        let result = singapay_webhooks::store::MIGRATOR.run(&pool).await;
        (result, started.elapsed())
    };
    // A transaction in the middle of a claim: the migration waits for it, then gives up.
    let (busy, held) = open_claim(&db).await;
    let (result, waited) = migrate().await;
    let err = result.expect_err("the migration does not take the table from under an open transaction");
    assert!(format!("{err:?}").contains("55P03"), "it gives up on the lock: {err:?}");
    assert!(waited >= Duration::from_secs(4) && waited < Duration::from_secs(30), "{waited:?}");
    busy.commit().await.unwrap();
    let (result, _) = migrate().await;
    result.expect("with the table free, it runs");

    let after = states(&db).await;
    assert_eq!(after["done"], before["done"]);
    assert_eq!(after["dead"], before["dead"]);
    assert_eq!(after["running"], before["running"] + 10);
    assert_eq!(after["available"], before["available"] - 10);
    let rows_after = events(db.clone()).await;
    assert_eq!(rows_after.len(), rows_before.len());
    let held: HashSet<i64> = held.into_iter().collect();
    for (b, a) in rows_before.iter().zip(&rows_after) {
        if !held.contains(&b.0) {
            assert_eq!(a, b, "event {} is as it was", b.0);
        }
    }
    let unfinished: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.event_queue").fetch_one(&db).await.unwrap();
    assert_eq!(unfinished, after["available"] + after["running"], "the queue holds the unfinished events only");

    let ids: Vec<i64> = running.iter().map(|e| e.id).collect();
    assert!(queue::ack_many(&db, &ids, "someone else").await.unwrap().is_empty(), "leases are still fenced");
    assert_eq!(queue::ack_many(&db, &ids, "before").await.unwrap(), ids, "leases taken before it are still live");
    let mut claimed = Vec::new();
    loop {
        let next = queue::claim(&db, "after", 500, Duration::from_secs(60)).await.unwrap();
        if next.is_empty() {
            break;
        }
        let ids: Vec<i64> = next.iter().map(|e| e.id).collect();
        assert_eq!(queue::ack_many(&db, &ids, "after").await.unwrap(), ids);
        claimed.extend(next);
    }
    // Everything but the backed-off event, the busy session's 10 and what waits behind them.
    assert!(claimed.len() > 3_000, "{}", claimed.len());
    // Version 5 only once 4 is finished: dead, acknowledged above, or claimed and acknowledged
    // in an earlier batch of this loop.
    let mut four_finished: HashSet<String> = running.iter().map(|e| e.transaction_key.clone()).collect();
    four_finished.extend((1..=2_000).filter(|g| g % 10 == 0).map(|g| format!("disbursement:seed-{g}")));
    for e in &claimed {
        assert!(e.version == 4 || e.version == 5, "only versions 4 and 5 were unfinished");
        if e.version == 5 {
            assert!(four_finished.contains(&e.transaction_key), "{}: 5 before 4", e.transaction_key);
        } else {
            four_finished.insert(e.transaction_key.clone());
        }
    }
}

/// `transaction_events` is a view over `event_log` and `event_queue`; SQL written against it
/// as a table still works, and the queue holds an event exactly while it is unfinished:
/// the re-drive of dead events that docs/consuming.md gives (run as written there), a
/// delete, and an insert of an already finished event.
#[tokio::test]
async fn the_documented_redrive_and_plain_sql_on_transaction_events_keep_the_queue_right() {
    let (_url, db) = fresh_database().await;
    seed_events(&db, 3, 1).await;
    let queued = |db: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT id FROM singapay.event_queue ORDER BY id").fetch_all(&db).await.unwrap()
    };
    let ids = queued(db.clone()).await;
    assert_eq!(ids.len(), 3);

    // One event dies on its only attempt.
    sqlx::query("UPDATE singapay.transaction_events SET max_attempts = 1 WHERE id = $1")
        .bind(ids[0])
        .execute(&db)
        .await
        .unwrap();
    let claimed = queue::claim(&db, "w", 3, Duration::from_secs(60)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    assert!(queue::nack(&db, ids[0], "w", "poison", Duration::from_secs(1)).await.unwrap());
    assert_eq!(queue::ack_many(&db, &ids[1..], "w").await.unwrap(), ids[1..].to_vec());
    assert!(queued(db.clone()).await.is_empty(), "finished events leave the queue");
    let (state, error, finished): (String, String, bool) = sqlx::query_as(
        "SELECT state, last_error, finished_at IS NOT NULL FROM singapay.transaction_events WHERE id = $1",
    )
    .bind(ids[0])
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((state.as_str(), error.as_str(), finished), ("dead", "poison", true));

    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/consuming.md")).unwrap();
    let redrive = doc
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix('`')?
                .strip_suffix('`')
                .filter(|s| s.starts_with("UPDATE singapay.transaction_events"))
        })
        .expect("docs/consuming.md shows how to re-drive dead events");
    let n = sqlx::query(redrive).execute(&db).await.unwrap().rows_affected();
    assert_eq!(n, 1, "{redrive}");
    assert_eq!(queued(db.clone()).await, vec![ids[0]], "the re-driven event is queued again");
    let again = queue::claim(&db, "w", 3, Duration::from_secs(60)).await.unwrap();
    assert_eq!(again.iter().map(|e| (e.id, e.attempts)).collect::<Vec<_>>(), vec![(ids[0], 1)]);
    assert_eq!(queue::ack_many(&db, &[ids[0]], "w").await.unwrap(), vec![ids[0]]);
    assert_eq!(states(&db).await["done"], 3);

    // A delete through the view removes the event from both tables.
    let n = sqlx::query("DELETE FROM singapay.transaction_events WHERE id = $1")
        .bind(ids[1])
        .execute(&db)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(n, 1);
    assert_eq!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM singapay.event_log WHERE id = $1")
            .bind(ids[1])
            .fetch_one(&db)
            .await
            .unwrap(),
        0
    );
    // An event inserted as finished is never queued; one inserted as available is.
    sqlx::query(
        "INSERT INTO singapay.transaction_events (event_id, transaction_key, version, webhook_type, to_status, payload, state, finished_at)
         VALUES (gen_random_uuid(), 'disbursement:seed-2', 2, 'disbursement', 'succeeded', '{}', 'done', now()),
                (gen_random_uuid(), 'disbursement:seed-3', 2, 'disbursement', 'succeeded', '{}', DEFAULT, NULL)",
    )
    .execute(&db)
    .await
    .unwrap();
    let versions: Vec<(String, i32, String)> = sqlx::query_as(
        "SELECT e.transaction_key, e.version, e.state FROM singapay.event_queue q
           JOIN singapay.transaction_events e USING (id) ORDER BY e.transaction_key",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(versions, vec![("disbursement:seed-3".into(), 2, "available".into())]);
}
