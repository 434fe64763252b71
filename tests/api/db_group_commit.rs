//! Group commit: a batch stores exactly what one-at-a-time storage would, a poisonous item
//! is refused alone, and answers wait for the commit.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use sqlx::PgPool;

use singapay_webhooks::intake;
use singapay_webhooks::singapay::signature::BodyForm;
use singapay_webhooks::singapay::{webhook, Body};
use singapay_webhooks::store::{Delivery, Outcome, Signed, StoreError, Write, Written};

use crate::helpers::{fresh_database, metric, now, payload, sign_php, TestApp, DEFAULT_PATH};

/// A verified delivery of `body`, as the HTTP pipeline would hand it to intake.
fn deliver(body: &str, partner: &str) -> Write {
    let analysed = Body::analyse(body.as_bytes());
    let object = analysed.object().expect("a JSON object");
    Write::Deliver(Box::new(Delivery {
        signed: Signed {
            content_sha256: analysed.content_sha256(body.as_bytes()),
            credential: "primary".into(),
            signature_form: BodyForm::Php,
            signed_at: Some(chrono::Utc::now()),
            x_timestamp: now().to_string(),
            request_path: DEFAULT_PATH.into(),
            request_id: None,
            partner_id: Some(partner.into()),
            x_signature: "00".into(),
            access_token: "token".into(),
            body: body.as_bytes().to_vec(),
        },
        classification: webhook::classify(object),
        payload: Some(object_text(body)),
    }))
}

fn object_text(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap().to_string()
}

fn disbursement(id: &str, code: &str, note: &str) -> String {
    json!({
        "response_code": "SP000",
        "event": "disbursement",
        "data": {
            "transaction_id": id,
            "reference_number": format!("REF-{id}"),
            "transaction_status": { "code": code },
            "net_amount": { "currency": "IDR", "value": "1000.00" },
            "notes": note
        }
    })
    .to_string()
}

/// A mixed stream: several statuses per transaction (forward, backward, repeated, terminal
/// conflicts), exact retries, expiration sweeps naming the same transactions, unknown and
/// status-less deliveries.
fn mixed_stream() -> Vec<String> {
    let mut bodies = Vec::new();
    let codes = ["01", "03", "00", "03", "06", "00", "04", "02"];
    for t in 0..6 {
        for (i, code) in codes.iter().enumerate().take(3 + t) {
            bodies.push(disbursement(&format!("77{t:029}"), code, &format!("n{i}")));
        }
    }
    bodies.push(bodies[0].clone());
    bodies.push(bodies[4].clone());
    for name in ["va-transaction", "transaction-expiration", "product-expiration", "qris-issuer", "settlement"] {
        bodies.push(payload(name));
    }
    bodies.push(payload("va-transaction"));
    bodies.push(json!({ "event": "something.new", "data": { "id": 1 } }).to_string());
    bodies.push(json!({ "response_code": "SP001", "event": "disbursement", "data": { "transaction_id": "7700000000000000000000000000000" } }).to_string());
    bodies.push(disbursement(&format!("77{:029}", 2), "00", "late"));
    bodies
}

/// Everything a stored delivery stream determines, free of ids and clocks.
async fn snapshot(db: &PgPool) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar(
        "SELECT format('D %s %s %s %s %s', encode(content_sha256, 'hex'), outcome, times_received,
                       coalesce(transaction_key, '-'), coalesce(status, '-'))
           FROM singapay.deliveries",
    )
    .fetch_all(db)
    .await
    .unwrap();
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT format('T %s %s %s %s %s %s %s %s %s', t.transaction_key, t.status, t.version, t.amount,
                           t.transaction_status_code, t.last_response_code, t.singapay_id, t.merchant_reference,
                           encode(f.content_sha256, 'hex') || '/' || encode(l.content_sha256, 'hex'))
               FROM singapay.transactions t
               JOIN singapay.deliveries f ON f.id = t.first_delivery_id
               JOIN singapay.deliveries l ON l.id = t.last_delivery_id",
        )
        .fetch_all(db)
        .await
        .unwrap(),
    );
    rows.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT format('E %s %s %s %s %s %s', e.event_id, e.version, e.from_status, e.to_status,
                           encode(d.content_sha256, 'hex'), e.payload - 'delivery_id')
               FROM singapay.transaction_events e JOIN singapay.deliveries d ON d.id = e.delivery_id",
        )
        .fetch_all(db)
        .await
        .unwrap(),
    );
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_stores_exactly_what_one_at_a_time_storage_does() {
    let stream: Vec<Write> = mixed_stream().iter().map(|b| deliver(b, "p")).collect();

    let (_, one_by_one) = fresh_database().await;
    let mut answers_alone = Vec::new();
    for w in &stream {
        answers_alone.extend(intake::write_batch(&one_by_one, std::slice::from_ref(w)).await);
    }
    let (_, batched) = fresh_database().await;
    let answers_batched = intake::write_batch(&batched, &stream).await;

    type Summary = Vec<(bool, Outcome, Vec<(String, String, i32)>)>;
    let summary = |answers: &[Result<Written, StoreError>]| -> Summary {
        answers
            .iter()
            .map(|a| match a {
                Ok(Written::Stored(s)) => (
                    s.duplicate,
                    s.outcome,
                    s.changes
                        .iter()
                        .map(|c| (c.transaction_key.clone(), c.transition.as_str().to_owned(), c.version))
                        .collect(),
                ),
                other => panic!("unexpected answer {other:?}"),
            })
            .collect()
    };
    assert_eq!(summary(&answers_batched), summary(&answers_alone), "the same answers, item by item");
    let (alone, together) = (snapshot(&one_by_one).await, snapshot(&batched).await);
    assert!(alone.len() > 60, "the stream exercises many rows: {}", alone.len());
    assert!(together == alone, "batched and one-at-a-time storage differ");
    // And what DESIGN §5 says for 01 → 03 → 00 → 03 → 06 → 00 → 04: initiated, pending,
    // succeeded, (stale), (conflict), (unchanged), refunded; reported values kept.
    let t4 = format!("T disbursement:77{:029} refunded 4 1000.00 04 SP000 77{:029} REF-77{:029} ", 4, 4, 4);
    assert_eq!(together.iter().filter(|r| r.starts_with(&t4)).count(), 1, "{t4}");

    // The batch was one transaction: one event id per (transaction, version), gap-free.
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_key, max(version) AS m, count(*) AS n
                                 FROM singapay.transaction_events GROUP BY transaction_key) s
          WHERE m <> n",
    )
    .fetch_one(&batched)
    .await
    .unwrap();
    assert_eq!(gaps, 0);
    let ids: Vec<i64> = answers_batched
        .iter()
        .filter_map(|a| match a {
            Ok(Written::Stored(s)) if !s.duplicate => Some(s.delivery_id),
            _ => None,
        })
        .collect();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.deliveries").fetch_one(&batched).await.unwrap();
    assert_eq!(ids.len() as i64, stored, "every new row answered once");
}

/// A constraint only the marked item violates: Postgres refuses it, not our code.
async fn refuse_partner(db: &PgPool, partner: &str) {
    sqlx::query(&format!(
        "ALTER TABLE singapay.deliveries ADD CONSTRAINT test_poison CHECK (partner_id IS DISTINCT FROM '{partner}')"
    ))
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisonous_item_is_refused_alone_and_every_other_item_in_its_batch_is_stored() {
    let (_, db) = fresh_database().await;
    refuse_partner(&db, "poison").await;
    let writes: Vec<Write> = (0..20)
        .map(|i| {
            let body = disbursement(&format!("88{i:029}"), "00", "batch");
            deliver(&body, if i == 13 { "poison" } else { "partner" })
        })
        .collect();
    let answers = intake::write_batch(&db, &writes).await;
    for (i, a) in answers.iter().enumerate() {
        match (i, a) {
            (13, Err(StoreError::Internal(why))) => assert!(why.contains("test_poison"), "{why}"),
            (13, other) => panic!("the poisonous item was answered {other:?}"),
            (_, Ok(Written::Stored(s))) => assert!(!s.duplicate && s.outcome == Outcome::Applied),
            (_, other) => panic!("item {i} was answered {other:?}"),
        }
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT d.transaction_key FROM singapay.deliveries d
           JOIN singapay.transactions t USING (transaction_key)
           JOIN singapay.transaction_events e ON e.delivery_id = d.id
          ORDER BY 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let expected: Vec<String> = (0..20).filter(|&i| i != 13).map(|i| format!("disbursement:88{i:029}")).collect();
    assert_eq!(keys, expected, "each other item has its delivery, transaction and queue row");
}

/// POSTs a signed disbursement callback for transaction `99…i` as `partner`.
async fn post_callback(client: reqwest::Client, url: String, secret: String, i: usize, partner: &str) -> (u16, String) {
    let body = disbursement(&format!("99{i:029}"), "00", "http");
    let ts = now().to_string();
    let token = format!("tok{i}");
    let sig = sign_php(&secret, DEFAULT_PATH, &token, &body, &ts);
    let r = client
        .post(url)
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", format!("Bearer {token}"))
        .header("x-partner-id", partner)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Polls `check` until it holds (observing state, never guessing a delay).
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_http_a_poisonous_callback_gets_500_and_the_rest_of_its_batch_200() {
    let app = TestApp::spawn_with(|s| s.intake.writers = 1).await;
    refuse_partner(&app.db, "poison").await;
    // Hold the only writer inside a transaction (its insert waits for this lock) so that
    // the next callbacks queue up and are taken as one batch.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE singapay.deliveries IN EXCLUSIVE MODE").execute(&mut *blocker).await.unwrap();
    let send = |i: usize| {
        let partner = if i == 7 { "poison" } else { "partner" };
        tokio::spawn(post_callback(app.client.clone(), app.url(DEFAULT_PATH), app.secret.clone(), i, partner))
    };
    let first = send(0);
    until("the writer waits on the lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%INSERT INTO singapay.deliveries%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    let rest: Vec<_> = (1..=20).map(send).collect();
    until("all twenty callbacks are queued", || async {
        let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        metric(&text, "singapay_intake_queued") == 20.0
    })
    .await;
    blocker.rollback().await.unwrap();

    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    for (i, answer) in (1..=20).zip(join_all(rest).await) {
        let (status, body) = answer.unwrap();
        if i == 7 {
            assert_eq!(status, 500, "{body}");
            assert!(body.contains("\"internal\""), "{body}");
        } else {
            assert_eq!(status, 200, "callback {i}: {body}");
        }
    }
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text, "singapay_intake_batch_size_count"), 2.0, "{text}");
    assert_eq!(metric(&text, "singapay_intake_batch_size_sum"), 21.0, "the twenty were one batch");
    assert_eq!(app.count("deliveries").await, 20);
    assert_eq!(app.count("transaction_events").await, 20);
    let poisoned: i64 = sqlx::query_scalar("SELECT count(*) FROM singapay.transactions WHERE transaction_key = $1")
        .bind(format!("disbursement:99{:029}", 7))
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(poisoned, 0);
}
