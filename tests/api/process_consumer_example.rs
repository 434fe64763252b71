//! examples/consumer.rs survives being killed mid-batch: unacked events come back after
//! their lease, and nothing is handled twice.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::helpers::{fresh_database, seed_events};

/// target/<profile>/examples/consumer, next to this test binary's deps/ directory.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
    let bin = profile_dir.join("examples").join("consumer");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "consumer"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success());
    }
    bin
}

fn start(url: &str, name: &str, delay_ms: u32) -> (Child, Receiver<String>) {
    let mut child = Command::new(example_binary())
        .env("DATABASE_URL", url)
        .env("CONSUMER_NAME", name)
        .env("BATCH", "10")
        .env("LEASE_SECS", "1")
        .env("POLL_SECS", "1")
        .env("HANDLE_DELAY_MS", delay_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_consumer_survives_a_kill_mid_batch() {
    let (url, db) = fresh_database().await;
    seed_events(&db, 20, 1).await;

    let (mut first, lines) = start(&url, "first", 150);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(lines.recv_timeout(Duration::from_secs(30)).expect("first consumer handles events"));
    }
    first.kill().unwrap(); // SIGKILL: no chance to ack or give anything back
    first.wait().unwrap();
    // Everything it printed, up to the end of its stdout (the reader thread then hangs up).
    seen.extend(lines.iter());
    let done_before: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.transaction_events WHERE state = 'done'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(done_before < 20, "killed mid-batch");

    let (mut second, lines) = start(&url, "second", 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.transaction_events WHERE state = 'done'")
            .fetch_one(&db)
            .await
            .unwrap();
        if done == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of 20 done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill").arg("-TERM").arg(second.id().to_string()).status().unwrap();
    assert!(second.wait().unwrap().success(), "SIGTERM stops the consumer cleanly");
    seen.extend(lines.iter());

    // Exactly once is judged from the database: the handler's record holds each queued
    // event once. (A SIGKILL between a handler's commit and its print loses the line, so
    // the output can only show that nothing was handled twice.)
    let recorded: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM consumer_example.handled ORDER BY event_id")
            .fetch_all(&db)
            .await
            .unwrap();
    let queued: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM singapay.transaction_events ORDER BY event_id")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(recorded.len(), 20);
    assert_eq!(recorded, queued, "each queued event handled exactly once");
    let handled: Vec<&String> = seen.iter().filter(|l| l.starts_with("handled ")).collect();
    let unique: std::collections::HashSet<&&String> = handled.iter().collect();
    assert_eq!(unique.len(), handled.len(), "no event's side effect ran twice: {seen:#?}");
    assert!(handled.len() <= 20);
}
