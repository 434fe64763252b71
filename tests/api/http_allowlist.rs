//! ALLOWED_SOURCE_CIDRS with TRUSTED_PROXY_CIDRS and TRUSTED_PROXY_HOPS: allowed, denied,
//! and spoofed X-Forwarded-For, all decided before the body is read.

use crate::helpers::{now, payload, sign_php, TestApp, DEFAULT_PATH};

async fn send_from(app: &TestApp, forwarded_for: Option<&str>, body: String) -> (u16, String) {
    let ts = now().to_string();
    let sig = sign_php(&app.secret, DEFAULT_PATH, "tok", &body, &ts);
    let mut req = app
        .client
        .post(app.url(DEFAULT_PATH))
        .header("x-signature", sig)
        .header("x-timestamp", ts)
        .header("authorization", "Bearer tok")
        .body(body);
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let json: serde_json::Value = r.json().await.unwrap();
    (status, json["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn direct_connections_are_checked_by_peer_address() {
    let allowed = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["127.0.0.0/8".parse().unwrap()])).await;
    assert_eq!(send_from(&allowed, None, payload("va-transaction")).await.0, 200);
    // Without trusted hops, X-Forwarded-For is ignored: it cannot make a denied peer allowed.
    let denied = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["203.0.113.0/24".parse().unwrap()])).await;
    let r = send_from(&denied, Some("203.0.113.9"), payload("va-transaction")).await;
    assert_eq!(r, (403, "ip_not_allowed".to_owned()));
    assert_eq!(denied.total_rows().await, 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_decides_and_spoofed_hops_are_ignored() {
    // The test client plays the load balancer (127.0.0.1), which appended the client.
    let app = TestApp::spawn_with(|s| {
        s.allowed_source_cidrs = Some(vec!["203.0.113.0/24".parse().unwrap()]);
        s.trusted_proxy_cidrs = Some(vec!["127.0.0.0/8".parse().unwrap()]);
        s.trusted_proxy_hops = 1;
    })
    .await;
    assert_eq!(send_from(&app, Some("203.0.113.9"), payload("va-transaction")).await.0, 200);
    // A client claiming to be allowed, relayed by our load balancer: the LB's entry wins.
    let spoofed = send_from(&app, Some("203.0.113.9, 198.51.100.66"), payload("disbursement")).await;
    assert_eq!(spoofed, (403, "ip_not_allowed".to_owned()));
    // A denied client that prepends an allowed address gains nothing either.
    let spoofed = send_from(&app, Some("198.51.100.66,203.0.113.9, 198.51.100.66"), payload("disbursement")).await;
    assert_eq!(spoofed.0, 403);
    // No X-Forwarded-For at all: the request did not come through the proxy.
    assert_eq!(send_from(&app, None, payload("disbursement")).await.0, 403);
    assert_eq!(app.count("deliveries").await, 1);
}

#[tokio::test]
async fn a_denied_source_gets_403_before_any_body_work() {
    let app = TestApp::spawn_with(|s| {
        s.allowed_source_cidrs = Some(vec!["10.0.0.0/8".parse().unwrap()]);
        s.max_body_bytes = 2048;
    })
    .await;
    // Over the body cap, unsigned, not JSON: still just 403.
    let r = app.client.post(app.url(DEFAULT_PATH)).body(vec![b'x'; 10_000]).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        app.client.get(app.url("/healthz")).send().await.unwrap().status(),
        200,
        "health is not behind the allowlist"
    );
}

#[tokio::test]
async fn forwarded_for_decides_only_on_connections_from_the_trusted_proxies() {
    let allow = || Some(vec!["203.0.113.0/24".parse().unwrap()]);
    // The proxies are elsewhere: this peer (127.0.0.1) reached the receiver directly, and
    // its X-Forwarded-For naming an allowed client changes nothing.
    let direct = TestApp::spawn_with(|s| {
        s.allowed_source_cidrs = allow();
        s.trusted_proxy_cidrs = Some(vec!["10.0.0.0/8".parse().unwrap()]);
    })
    .await;
    assert_eq!(send_from(&direct, Some("203.0.113.9"), payload("va-transaction")).await.0, 403);
    assert_eq!(direct.total_rows().await, 0);

    // The peer is the load balancer: the right-most address that is not a trusted proxy is
    // the client, however many of our own proxies relayed it.
    let behind = TestApp::spawn_with(|s| {
        s.allowed_source_cidrs = allow();
        s.trusted_proxy_cidrs = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    assert_eq!(send_from(&behind, Some("203.0.113.9"), payload("va-transaction")).await.0, 200);
    assert_eq!(send_from(&behind, Some("203.0.113.9, 127.0.0.7"), payload("disbursement")).await.0, 200);
    let spoofed = send_from(&behind, Some("203.0.113.9, 198.51.100.66"), payload("qris-issuer")).await;
    assert_eq!(spoofed, (403, "ip_not_allowed".to_owned()));
    assert_eq!(behind.count("deliveries").await, 2);
}
