//! The Singapay API client against the local `sandbox`, over real HTTP: tokens signed with
//! the Asia/Jakarta date and reused until near expiry, one retry with a new token after a
//! refusal and no more, faults and hangs reported as what they are.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;

use singapay_webhooks::reconcile::client::AskError;
use singapay_webhooks::singapay::inquiry::{self, Answer, Subject};
use singapay_webhooks::singapay::status::Product;

use crate::helpers::{SandboxApi as Api, SANDBOX_ACCOUNT as ACCOUNT};

fn disbursement(reference: &str) -> inquiry::InquiryRequest {
    let s = Subject {
        product: Product::Disbursement,
        key_id: "T1",
        singapay_id: Some("T1"),
        merchant_reference: Some(reference),
    };
    inquiry::request(&s, ACCOUNT).unwrap()
}

fn status(a: &Answer) -> &str {
    match a {
        Answer::Status { status, .. } => status,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// 23:30 UTC on 21 November is 06:30 on 22 November in Jakarta.
fn late_evening() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 23, 30, 0).unwrap()
}

#[tokio::test]
async fn the_token_is_signed_with_the_jakarta_date_and_reused() {
    let now = late_evening();
    let api = Api::start(now).await;
    // The sandbox refuses the UTC date at this hour, as Singapay does.
    let utc_date = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha512>::new_from_slice(b"secret-1").unwrap();
        mac.update(b"client-1_secret-1_20261121");
        hex::encode(mac.finalize().into_bytes())
    };
    let refused = api
        .http
        .post(format!("{}{}", api.url, inquiry::TOKEN_PATH))
        .header("X-PARTNER-ID", "partner-1")
        .header("X-CLIENT-ID", "client-1")
        .header("X-Signature", utc_date)
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let client = api.client(now, Duration::from_secs(5));
    api.script("REF-1", &["03", "00"]).await;
    let first = client.ask(Product::Disbursement, &disbursement("REF-1")).await.unwrap();
    assert_eq!(status(&first.answer), "pending");
    let second = client.ask(Product::Disbursement, &disbursement("REF-1")).await.unwrap();
    assert_eq!(status(&second.answer), "succeeded");
    assert_eq!(second.http_status, Some(200));
    let third = client.ask(Product::Disbursement, &disbursement("REF-1")).await.unwrap();
    assert_eq!(status(&third.answer), "succeeded", "the last answer repeats");
    let tokens = api.requests().await.iter().filter(|r| r.kind == "token").count();
    assert_eq!(tokens, 2, "one refused by hand above, then one token for three questions");
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_a_second_refusal_is_reported() {
    let now = Utc::now();
    let api = Api::start(now).await;
    let client = api.client(now, Duration::from_secs(5));
    api.script("REF-2", &["00"]).await;
    client.ask(Product::Disbursement, &disbursement("REF-2")).await.unwrap();
    // Singapay forgets the token: 401, a new token, the question again.
    api.control("revoke", json!({})).await;
    let again = client.ask(Product::Disbursement, &disbursement("REF-2")).await.unwrap();
    assert!(again.retried_with_new_token);
    assert_eq!(status(&again.answer), "succeeded");
    let log: Vec<(String, String)> = api.requests().await.into_iter().map(|r| (r.kind, r.answered)).collect();
    let expected = [("token", "200"), ("inquiry", "00"), ("inquiry", "401"), ("token", "200"), ("inquiry", "00")];
    assert_eq!(log, expected.map(|(k, a)| (k.to_owned(), a.to_owned())));

    // SP013 with a fresh token as well: reported after one retry, not looped.
    api.script("REF-3", &["SP013"]).await;
    let refused = client.ask(Product::Disbursement, &disbursement("REF-3")).await.unwrap();
    assert_eq!(refused.answer, Answer::TokenRejected);
    assert!(refused.retried_with_new_token);
    let asked = api.requests().await.iter().filter(|r| r.id.as_deref() == Some("REF-3")).count();
    assert_eq!(asked, 2);
}

#[tokio::test]
async fn faults_are_reported_as_what_they_are() {
    let now = Utc::now();
    let api = Api::start(now).await;
    let client = api.client(now, Duration::from_millis(700));
    api.script("REF-4", &["SP005"]).await;
    api.script("REF-5", &["SP009"]).await;
    api.script("REF-6", &["SP017"]).await;
    api.script("REF-7", &["hang"]).await;
    let ask = |r: &'static str| {
        let client = &client;
        async move { client.ask(Product::Disbursement, &disbursement(r)).await.unwrap() }
    };
    assert!(matches!(ask("REF-4").await.answer, Answer::RetryLater { reason } if reason.starts_with("SP005")));
    assert!(matches!(ask("REF-5").await.answer, Answer::NotFound { .. }));
    assert!(matches!(ask("REF-6").await.answer, Answer::Forbidden { cause, .. } if cause.starts_with("SP017")));
    let hung = ask("REF-7").await;
    assert!(matches!(&hung.answer, Answer::RetryLater { reason } if reason.contains("in time")), "{:?}", hung.answer);
    assert_eq!(hung.http_status, None);
    assert!(hung.elapsed < Duration::from_secs(5));

    // The token endpoint refusing: credentials (401) and this machine's IP (403).
    let fresh = api.client(now, Duration::from_secs(5));
    api.control("token-fault", json!({"answer": "403"})).await;
    assert!(matches!(fresh.token().await, Err(AskError::Forbidden(m)) if m.contains("not registered")));
    api.control("token-fault", json!({"answer": "401"})).await;
    assert!(matches!(fresh.token().await, Err(AskError::Credentials(_))));
}

/// An endpoint that answers without end: the client reads at most `MAX_ANSWER_BYTES` of it
/// and reports what it got as unreadable (memory stays bounded).
#[tokio::test]
async fn an_endless_answer_is_cut_off() {
    use axum::routing::post;
    use singapay_webhooks::reconcile::client::{ApiClient, MAX_ANSWER_BYTES};
    let endless = || async {
        use futures::StreamExt;
        let chunks = futures::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![b' '; 64 * 1024])).take(10_000);
        axum::body::Body::from_stream(chunks)
    };
    let token = || async {
        axum::Json(json!({"status": 200, "success": true, "data": {"access_token": "t", "expires_in": "3600"}}))
    };
    let router = axum::Router::new()
        .route(inquiry::TOKEN_PATH, post(token))
        .route("/api/v2.0/disbursement/{account}/inquiry-status", post(endless));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut settings = Api::start(Utc::now()).await.settings(Duration::from_secs(20));
    settings.base_url = url;
    let client = ApiClient::new(settings, std::sync::Arc::new(Utc::now)).unwrap();
    let exchange = client.ask(Product::Disbursement, &disbursement("REF-BIG")).await.unwrap();
    assert_eq!(exchange.response_body.len(), MAX_ANSWER_BYTES);
    assert!(matches!(exchange.answer, Answer::Unreadable { .. }), "{:?}", exchange.answer);
}
