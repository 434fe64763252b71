//! ALLOWED_SOURCE_CIDRS with TRUSTED_PROXY_CIDRS and TRUSTED_PROXY_HOPS: allowed, denied,
//! and spoofed X-Forwarded-For, all decided before the body is read, for callbacks and for
//! everything else on the public port; the admin listener, where /metrics is by default.

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
        403,
        "health is behind the allowlist too"
    );
}

/// GET `path` on `base` (optionally as relayed with `X-Forwarded-For`): status and error code.
async fn probe(base: &str, path: &str, forwarded_for: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{base}{path}"));
    if let Some(xff) = forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

/// On the public port everything is behind ALLOWED_SOURCE_CIDRS, callbacks or not:
/// `/metrics` (served there with ADMIN_LISTEN_ADDR=off, as in TestApp), `/readyz` and
/// `/healthz` from elsewhere get `403 ip_not_allowed`; from an allowed source, or relayed
/// for one by a trusted load balancer, they are answered. A load balancer's own health
/// check is judged by its own address.
#[tokio::test]
async fn metrics_and_readiness_from_outside_the_allowlist_are_refused_on_the_public_port() {
    let fenced = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["192.0.2.0/24".parse().unwrap()])).await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(probe(&fenced.url(""), path, None).await, (403, "ip_not_allowed".to_owned()), "{path}");
    }
    let open = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["127.0.0.0/8".parse().unwrap()])).await;
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(probe(&open.url(""), path, None).await.0, 200, "{path}");
    }
    let behind = TestApp::spawn_with(|s| {
        s.allowed_source_cidrs = Some(vec!["203.0.113.0/24".parse().unwrap()]);
        s.trusted_proxy_cidrs = Some(vec!["127.0.0.0/8".parse().unwrap()]);
    })
    .await;
    let base = behind.url("");
    assert_eq!(probe(&base, "/readyz", None).await.0, 403, "the load balancer's own address is not allowed");
    assert_eq!(probe(&base, "/readyz", Some("203.0.113.9")).await.0, 200);
    assert_eq!(probe(&base, "/metrics", Some("203.0.113.9")).await.0, 200);
    assert_eq!(probe(&base, "/metrics", Some("203.0.113.9, 198.51.100.66")).await.0, 403, "spoofed");
    // An unknown path is a 404 whoever asks.
    assert_eq!(probe(&fenced.url(""), "/nope", None).await, (404, "not_found".to_owned()));
}

/// By default (`ADMIN_LISTEN_ADDR` unset) `/metrics` is on the admin listener,
/// 127.0.0.1:9090, and not on the public port; the admin listener answers metrics, health
/// and readiness whatever ALLOWED_SOURCE_CIDRS says (it is private), while the public port
/// refuses them to a source outside it. `off` turns the admin listener off.
#[tokio::test]
async fn by_default_metrics_are_on_the_admin_listener_only() {
    use secrecy::SecretString;
    use singapay_webhooks::config::Env;
    use singapay_webhooks::startup::{Application, Signals};

    let parse = |extra: &[(&'static str, &'static str)]| {
        let mut vars = vec![("SINGAPAY_WEBHOOK_SECRETS", "primary=abcdefghijklmnopqrstuvwx")];
        vars.extend_from_slice(extra);
        let get = move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        Env::new(&get).settings(true)
    };
    let mut settings = parse(&[]).unwrap();
    assert_eq!(settings.admin_listen_addr, Some("127.0.0.1:9090".parse().unwrap()));
    assert_eq!(settings.listen_addr, "0.0.0.0:8080".parse().unwrap());
    for off in ["off", "OFF", " off "] {
        assert_eq!(parse(&[("ADMIN_LISTEN_ADDR", off)]).unwrap().admin_listen_addr, None);
    }
    assert_eq!(
        parse(&[("ADMIN_LISTEN_ADDR", "0.0.0.0:9090")]).unwrap().admin_listen_addr,
        Some("0.0.0.0:9090".parse().unwrap())
    );
    for bad in ["9090", "no", "127.0.0.1"] {
        assert_eq!(parse(&[("ADMIN_LISTEN_ADDR", bad)]).unwrap_err().var, "ADMIN_LISTEN_ADDR", "{bad}");
    }
    assert_eq!(
        parse(&[("ADMIN_LISTEN_ADDR", "0.0.0.0:8080")]).unwrap_err().var,
        "ADMIN_LISTEN_ADDR",
        "the same address as LISTEN_ADDR"
    );

    // The default, on ports of its own (tests run side by side), behind an allowlist.
    settings.listen_addr = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen_addr = Some("127.0.0.1:0".parse().unwrap());
    settings.allowed_source_cidrs = Some(vec!["192.0.2.0/24".parse().unwrap()]);
    settings.shutdown_drain_secs = 0;
    let (url, _db) = crate::helpers::fresh_database().await;
    let pool = singapay_webhooks::store::pool(&SecretString::from(url), settings.db_max_connections).unwrap();
    let app = Application::build(settings, pool).await.unwrap();
    let public = format!("http://{}", app.address().unwrap());
    let admin = format!("http://{}", app.admin_address().expect("an admin listener").unwrap());
    tokio::spawn(app.run_until_stopped(Signals::never()));

    assert_eq!(probe(&public, "/metrics", None).await, (404, "not_found".to_owned()), "not on the public port");
    assert_eq!(probe(&public, "/readyz", None).await, (403, "ip_not_allowed".to_owned()));
    assert_eq!(probe(&public, "/healthz", None).await, (403, "ip_not_allowed".to_owned()));
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(probe(&admin, path, None).await.0, 200, "admin {path}");
    }
    let text = reqwest::get(format!("{admin}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains("singapay_queue_events{state=\"available\"}"), "{text}");
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
