//! Every hostile input gets a defined answer and writes nothing half-way.

use crate::helpers::{now, payload, random_hex, sign_raw, TestApp, DEFAULT_PATH};

/// Signs the raw bytes (the only form a non-JSON body has) and posts them.
async fn send_raw_signed(app: &TestApp, body: Vec<u8>) -> crate::helpers::Reply {
    let ts = now().to_string();
    let token = random_hex(8);
    let sig = sign_raw(&app.secret, DEFAULT_PATH, &token, &body, &ts);
    app.post_raw(DEFAULT_PATH, body, Some(&sig), Some(&ts), Some(&format!("Bearer {token}"))).await
}

#[tokio::test]
async fn missing_or_malformed_signature_headers_are_refused_without_rows() {
    let app = TestApp::spawn().await;
    let body = payload("va-transaction");
    let ts = now().to_string();
    let sig = crate::helpers::sign_php(&app.secret, DEFAULT_PATH, "tok", &body, &ts);
    for (sig_h, ts_h, auth_h) in [
        (None, Some(ts.as_str()), Some("Bearer tok")),
        (Some(sig.as_str()), None, Some("Bearer tok")),
        (Some(sig.as_str()), Some(ts.as_str()), None),
        (Some(""), Some(ts.as_str()), Some("Bearer tok")),
        (Some(sig.as_str()), Some(ts.as_str()), Some("Bearer ")),
    ] {
        let r = app.post_raw(DEFAULT_PATH, body.clone(), sig_h, ts_h, auth_h).await;
        assert_eq!((r.status, r.error_code()), (401, "missing_signature_headers"), "{sig_h:?} {ts_h:?} {auth_h:?}");
        assert_eq!(r.json["error"]["type"], "authentication_error");
    }
    for bad_ts in ["17743e9", "-1", "1.5", "9999999999999999999999", "now"] {
        let r = app.post_raw(DEFAULT_PATH, body.clone(), Some(&sig), Some(bad_ts), Some("Bearer tok")).await;
        assert_eq!((r.status, r.error_code()), (401, "invalid_timestamp"), "{bad_ts}");
    }
    for bad_sig in ["zz", "00", &"a".repeat(128), &sig[..127]] {
        let r = app.post_raw(DEFAULT_PATH, body.clone(), Some(bad_sig), Some(&ts), Some("Bearer tok")).await;
        assert_eq!((r.status, r.error_code()), (401, "signature_invalid"));
    }
    // Upper-case hex and a lower-case "bearer" are the same signature and token.
    let r = app.post_raw(DEFAULT_PATH, body.clone(), Some(&sig.to_uppercase()), Some(&ts), Some("bearer   tok")).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(app.count("deliveries").await, 1);
}

#[tokio::test]
async fn authentic_bodies_that_are_not_json_objects_are_bad_requests() {
    let app = TestApp::spawn().await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes();
    let deep_object = format!("{}1{}", "{\"a\":".repeat(512), "}".repeat(512)).into_bytes();
    for body in [
        b"[1,2,3]".to_vec(),
        b"\"just a string\"".to_vec(),
        b"42".to_vec(),
        b"not json".to_vec(),
        b"{\"a\":1,}".to_vec(),
        b"{\"a\":\"\xff\xfe\"}".to_vec(),
        b"".to_vec(),
        deep,
        deep_object,
    ] {
        let r = send_raw_signed(&app, body.clone()).await;
        assert_eq!(
            (r.status, r.error_code()),
            (400, "invalid_body"),
            "{:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
    // Nesting of exactly 511, as deep as PHP's json_decode goes, is fine.
    let ok = format!("{}1{}", "{\"a\":".repeat(511), "}".repeat(511)).into_bytes();
    assert_eq!(send_raw_signed(&app, ok).await.status, 200);
    assert_eq!(app.count("deliveries").await, 1);
}

#[tokio::test]
async fn oversized_bodies_are_refused_while_reading() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 4096).await;
    let big = format!("{{\"event\":\"x\",\"pad\":\"{}\"}}", "a".repeat(5000));
    let r = send_raw_signed(&app, big.clone().into_bytes()).await;
    assert_eq!((r.status, r.error_code()), (413, "body_too_large"));
    // Chunked, with no Content-Length to refuse early on.
    let stream = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let r =
        app.post_raw(DEFAULT_PATH, reqwest::Body::wrap_stream(stream), Some("ab"), Some("1"), Some("Bearer x")).await;
    assert_eq!((r.status, r.error_code()), (413, "body_too_large"));
    assert_eq!(app.total_rows().await, 0);
}

#[tokio::test]
async fn bytes_postgres_refuses_are_still_stored() {
    let app = TestApp::spawn().await;
    // NUL in text and keys (jsonb and text columns refuse U+0000), huge numbers, a huge
    // identifier (btree entries are limited), and unknown fields everywhere.
    let body = format!(
        r#"{{"event":"va-transaction\u0000","x\u0000":1e999999,"n":{digits},"data":{{"transaction":{{"transaction_id":"{long}","reff_no":"R\u0000","status":"paid","amount":{{"value":"12.5"}},"extra":{{"deep":[{{}}]}}}}}}}}"#,
        digits = "9".repeat(5000),
        long = "7".repeat(5000),
    );
    let r = crate::helpers::TestApp::send(&app, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let (outcome, event): (String, String) =
        sqlx::query_as("SELECT outcome, event FROM singapay.deliveries WHERE id = $1")
            .bind(r.delivery_id())
            .fetch_one(&app.db)
            .await
            .unwrap();
    // The 5000-digit id is not a usable key: stored, acknowledged, not applied.
    assert_eq!(outcome, "unrecognised");
    assert_eq!(event, "va-transaction\u{FFFD}");
    let stored_body: Vec<u8> =
        sqlx::query_scalar("SELECT body FROM singapay.deliveries").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored_body, body.as_bytes(), "the exact bytes are kept");
}

#[tokio::test]
async fn a_bad_signature_never_writes() {
    let app = TestApp::spawn().await;
    let r = app.send_signed(DEFAULT_PATH, &payload("disbursement"), now(), "some-other-secret").await;
    assert_eq!((r.status, r.error_code()), (401, "signature_invalid"));
    // Stale and wrongly signed: still only signature_invalid, and nothing recorded.
    let r = app.send_signed(DEFAULT_PATH, &payload("disbursement"), now() - 3600, "some-other-secret").await;
    assert_eq!((r.status, r.error_code()), (401, "signature_invalid"));
    assert_eq!(app.total_rows().await, 0);
}

/// A client uploading more than MAX_BODY_BYTES reads the 413 instead of a reset: the rest
/// of its upload is drained before the connection closes. Twenty uploads of 2 MiB, each
/// written whole before the answer is read (what a simple HTTP client does), signed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_reads_a_413_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let body = vec![b'7'; 2 << 20];
    for attempt in 0..20 {
        let signed = attempt % 2 == 0;
        let mut head = format!("POST {DEFAULT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
        if signed {
            head.push_str(&format!(
                "X-Signature: {}\r\nX-Timestamp: {}\r\nAuthorization: Bearer t\r\n",
                "0".repeat(128),
                now()
            ));
        }
        head.push_str("\r\n");
        let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap_or_else(|e| panic!("attempt {attempt}: upload cut off: {e}"));
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap_or_else(|e| panic!("attempt {attempt}: answer lost: {e}"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "attempt {attempt}: {answer}");
    }
    assert_eq!(app.total_rows().await, 0);
}

/// Everything done with a body — parse, PHP form, sorted form, classification, the stored
/// JSON, dropping it — at the deepest nesting PHP accepts and far beyond, on a thread with
/// the smallest stack the service's threads have (2 MiB: Tokio's workers and blocking pool),
/// in an unoptimised build (bigger frames than release).
#[test]
fn deep_bodies_are_handled_on_a_two_mebibyte_stack() {
    use singapay_webhooks::singapay::{webhook, Body};
    let work = || {
        for (depth, usable) in [(511, true), (512, false), (1_000_000, false)] {
            for (open, close) in [("{\"a\":", "}"), ("[", "]")] {
                let inner = format!("{}1{}", open.repeat(depth - 1), close.repeat(depth - 1));
                let text = format!("{{\"event\":\"x\",\"data\":{inner}}}");
                let body = Body::analyse(text.as_bytes());
                assert_eq!(body.php.is_some(), usable, "depth {depth}");
                assert_eq!(body.sorted().is_some(), usable, "depth {depth}");
                if let Some(object) = body.object() {
                    let _ = webhook::classify(object);
                    assert!(singapay_webhooks::store::to_jsonb_text(object).len() >= 2 * depth);
                }
                drop(body);
            }
        }
    };
    std::thread::Builder::new().stack_size(2 << 20).spawn(work).unwrap().join().expect("no stack overflow");
}

/// A body nested deeper than PHP accepts is refused as such, whatever its signature was
/// made over (no PHP signer can have produced it): 400, not 401.
#[tokio::test]
async fn a_body_deeper_than_php_accepts_is_invalid_whatever_was_signed() {
    let app = TestApp::spawn().await;
    let deep = format!("{{\"event\":\"x\",\"data\":{}1{}}}", "[".repeat(600), "]".repeat(600));
    let raw_signed = send_raw_signed(&app, deep.clone().into_bytes()).await;
    assert_eq!((raw_signed.status, raw_signed.error_code()), (400, "invalid_body"));
    let ts = now().to_string();
    let forged = app.post_raw(DEFAULT_PATH, deep, Some(&"0".repeat(128)), Some(&ts), Some("Bearer t")).await;
    assert_eq!((forged.status, forged.error_code()), (400, "invalid_body"));
    assert_eq!(app.total_rows().await, 0);
}
