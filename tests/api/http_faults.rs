//! Postgres refusing writes as a whole, and rows locked by other sessions: what callbacks
//! are answered, how many transactions that costs, and what `/readyz` says.

use std::time::{Duration, Instant};

use futures::future::join_all;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::{disbursement, fresh_database, lock_waiters, metric, Reply, TestApp};

/// The `application_name` of the app's own connections.
const APP: &str = "singapay-webhooks";

fn database_name(url: &str) -> String {
    url::Url::parse(url).unwrap().path().trim_start_matches('/').to_owned()
}

/// The same server, another database: a session whose own queries do not count in the
/// test database's statistics.
fn elsewhere(url: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_path("/postgres");
    u.to_string()
}

/// The database's committed and rolled-back transactions, as its backends have reported
/// them (a backend reports when it exits, and when idle about once a second).
async fn transactions(admin: &mut PgConnection, db: &str) -> (i64, i64) {
    sqlx::query_as("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1")
        .bind(db)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Client backends connected to `db` (not autovacuum, which visits every database on its
/// own schedule); only the app's with `app_only`.
async fn backends(admin: &mut PgConnection, db: &str, app_only: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = $1 AND backend_type = 'client backend' AND ($2 = '' OR application_name = $2)",
    )
    .bind(db)
    .bind(if app_only { APP } else { "" })
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Waits until no backend (no app backend with `app_only`) is connected to `db`.
async fn until_gone(admin: &mut PgConnection, db: &str, app_only: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while backends(admin, db, app_only).await > 0 {
        assert!(Instant::now() < deadline, "timed out waiting until the sessions on {db} have gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it holds (observing state, never guessing a delay).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(app: &TestApp) -> (u16, serde_json::Value) {
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn assert_try_again(r: &Reply, what: &str) {
    assert_eq!((r.status, r.error_code()), (503, "storage_unavailable"), "{what}: {:?}", r.json);
    assert_eq!(r.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("60"), "{what}");
}

async fn scrape(app: &TestApp, name: &str) -> f64 {
    metric(&app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap(), name)
}

/// A read-only database (a standby after failover, `default_transaction_read_only`) refuses
/// every write: each callback is answered 503 with Retry-After (Singapay retries a 503 four
/// times, a 500 once), each batch costs one transaction (it is not split in halves to
/// find a culprit there is none of), and `/readyz` says why until writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_database_answers_503_with_one_transaction_per_batch_and_readyz_names_it() {
    let (url, db) = fresh_database().await;
    let name = database_name(&url);
    // Sessions opened before the database turns read-only stay read-write: the test's, to
    // hold a lock and to undo it. The app's connections all open after.
    let mut admin = PgConnection::connect(&url).await.unwrap();
    let mut locker = PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on"))
        .execute(&mut admin)
        .await
        .unwrap();
    let app = TestApp::spawn_on(url.clone(), db, |s| s.intake.writers = 1).await;
    let (_, rollbacks_before) = transactions(&mut admin, &name).await;

    // Hold the only writer (its first statement waits for this lock) so that the next
    // callbacks queue up and are taken as one batch.
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE singapay.transactions IN EXCLUSIVE MODE").execute(&mut locker).await.unwrap();
    let body = |i: usize| disbursement(&format!("58{i:029}"), &format!("RO-{i}"), "SP000", Some("00"));
    let bodies: Vec<String> = (0..11).map(body).collect();
    let first = app.send(&bodies[0]);
    let rest = async {
        until("the writer waits on the lock", || async { lock_waiters(&app.db).await == 1 }).await;
        let release = async {
            until("ten callbacks are queued", || async { scrape(&app, "singapay_intake_queued").await == 10.0 }).await;
            sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
        };
        let (replies, ()) = tokio::join!(join_all(bodies[1..].iter().map(|b| app.send(b))), release);
        replies
    };
    let (first, rest) = tokio::join!(first, rest);
    assert_try_again(&first, "the first callback");
    for (i, r) in rest.iter().enumerate() {
        assert_try_again(r, &format!("callback {}", i + 1));
    }
    assert_eq!(scrape(&app, "singapay_intake_batch_size_count").await, 2.0);
    assert_eq!(scrape(&app, "singapay_intake_batch_size_sum").await, 11.0, "one lone callback, then a batch of ten");
    // A connection that met a read-only session is closed (the next may reach a writable
    // primary); once its backend has gone, its counters are reported.
    until_gone(&mut admin, &name, true).await;
    let (_, rollbacks) = transactions(&mut admin, &name).await;
    assert_eq!(rollbacks - rollbacks_before, 2, "one transaction per batch, none split in halves");
    assert_eq!(app.count("deliveries").await, 0);

    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "database_read_only", "{body}");

    sqlx::query(&format!("ALTER DATABASE {name} RESET default_transaction_read_only"))
        .execute(&mut admin)
        .await
        .unwrap();
    // Singapay's retry.
    let r = app.send(&bodies[0]).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(!r.duplicate());
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
}

/// However often `/readyz` is asked, Postgres is asked about once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_asked_500_times_queries_postgres_about_once_a_second() {
    let (url, db) = fresh_database().await;
    let name = database_name(&url);
    let mut admin = PgConnection::connect(&elsewhere(&url)).await.unwrap();
    db.close().await;
    // A closed pool's sessions may linger idle for a while: end them, so that nothing but
    // the app's readiness checks is counted below.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    until_gone(&mut admin, &name, false).await;
    let unused: PgPool = PgPoolOptions::new().connect_lazy(&url).unwrap();
    let app = TestApp::spawn_on(url, unused, |_| {}).await;
    let before = transactions(&mut admin, &name).await;

    let started = Instant::now();
    for _ in 0..10 {
        let answers = join_all((0..50).map(|_| readyz(&app))).await;
        assert!(answers.iter().all(|(status, _)| *status == 200), "{answers:?}");
    }
    let took = started.elapsed();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    until_gone(&mut admin, &name, false).await;
    let after = transactions(&mut admin, &name).await;
    let queries = (after.0 + after.1) - (before.0 + before.1);
    let about_once_a_second = took.as_secs() as i64 + 3;
    assert!(
        (1..=about_once_a_second).contains(&queries),
        "500 readiness checks in {took:?} cost {queries} transactions"
    );
}

async fn timed(app: &TestApp, body: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let r = app.send(body).await;
    (r, started.elapsed())
}

/// A transaction row locked by another session (a consumer, an open `psql`, a slow
/// `replay`) holds up only the callbacks that change it: the others — in its batch or
/// queued behind it — are stored at once, it is answered 503 after about a second (well
/// under `lock_timeout`), and Singapay's retry once the lock is gone gets the next version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_locked_by_another_session_holds_up_only_its_own_callbacks() {
    assert!(singapay_webhooks::config::default_writers(16) >= 2, "a second writer keeps intake going");
    let app = TestApp::spawn().await;
    let x = "5900000000000000000000000000001";
    let key = format!("disbursement:{x}");
    assert_eq!(app.send(&disbursement(x, "REF-X", "SP000", Some("01"))).await.status, 200);
    let mut holder = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM singapay.transactions WHERE transaction_key = $1 FOR UPDATE")
        .bind(&key)
        .execute(&mut *holder)
        .await
        .unwrap();

    let pending = disbursement(x, "REF-X", "SP000", Some("03"));
    let other = |i: usize| disbursement(&format!("60{i:029}"), &format!("REF-{i}"), "SP000", Some("00"));
    let together: Vec<String> = (1..=8).map(other).collect();
    let behind: Vec<String> = (9..=13).map(other).collect();
    let one_by_one = async {
        let mut answers = Vec::new();
        for b in &behind {
            answers.push(timed(&app, b).await);
        }
        answers
    };
    let (locked, together, behind) =
        tokio::join!(timed(&app, &pending), join_all(together.iter().map(|b| timed(&app, b))), one_by_one);
    for (i, (r, took)) in together.iter().chain(&behind).enumerate() {
        assert_eq!(r.status, 200, "unrelated callback {i}: {:?}", r.json);
        assert!(*took < Duration::from_secs(2), "unrelated callback {i} took {took:?}");
    }
    let (r, took) = locked;
    assert_try_again(&r, "the locked transaction's callback");
    assert!(took < Duration::from_secs(5), "answered after {took:?}, well under lock_timeout");
    holder.rollback().await.unwrap();

    let r = app.send(&pending).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(!r.duplicate(), "nothing was stored while the row was locked");
    let versions: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, to_status FROM singapay.transaction_events WHERE transaction_key = $1 ORDER BY version",
    )
    .bind(&key)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(versions, [(1, "initiated".to_owned()), (2, "pending".to_owned())]);
    let (status, version): (String, i32) =
        sqlx::query_as("SELECT status, version FROM singapay.transactions WHERE transaction_key = $1")
            .bind(&key)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), version), ("pending", 2));
    assert_eq!(app.count("transactions").await, 14);
    assert_eq!(app.count("transaction_events").await, 15, "one event per state change");
}
