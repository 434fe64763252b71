//! docs/openapi.yaml against the running router: every documented status and body shape
//! is produced, and nothing undocumented is.

use futures::StreamExt;
use std::collections::BTreeSet;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::{now, payload, random_hex, sign_php, sign_raw, TestApp, DEFAULT_PATH};

struct Observed {
    template: &'static str,
    method: &'static str,
    status: u16,
    content_type: String,
    body: String,
    headers: reqwest::header::HeaderMap,
}

async fn call(
    app: &TestApp,
    template: &'static str,
    method: &'static str,
    path: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> Observed {
    let mut req = app.client.request(method.parse().unwrap(), app.url(path)).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let headers = r.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let status = r.status().as_u16();
    Observed { template, method, status, content_type, body: r.text().await.unwrap(), headers }
}

fn signed(app: &TestApp, path: &str, body: &[u8], raw: bool) -> Vec<(&'static str, String)> {
    let ts = now().to_string();
    let token = random_hex(6);
    let sig = if raw {
        sign_raw(&app.secret, path, &token, body, &ts)
    } else {
        sign_php(&app.secret, path, &token, std::str::from_utf8(body).unwrap(), &ts)
    };
    vec![("x-signature", sig), ("x-timestamp", ts), ("authorization", format!("Bearer {token}"))]
}

fn resolve<'a>(doc: &'a Yaml, schema: &'a Yaml) -> &'a Yaml {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn validate(doc: &Yaml, schema: &Yaml, v: &Value) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema["oneOf"].as_vec() {
        let n = options.iter().filter(|s| validate(doc, s, v).is_ok()).count();
        return if n == 1 { Ok(()) } else { Err(format!("{n} oneOf alternatives match {v}")) };
    }
    let ok_type = match schema["type"].as_str() {
        Some("object") => v.is_object(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("boolean") => v.is_boolean(),
        Some(other) => return Err(format!("unsupported type {other}")),
        None => true,
    };
    if !ok_type {
        return Err(format!("{v} is not {:?}", schema["type"]));
    }
    let scalar = |y: &Yaml| match y {
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        other => panic!("unsupported literal {other:?}"),
    };
    if !schema["const"].is_badvalue() && scalar(&schema["const"]) != *v {
        return Err(format!("{v} is not {:?}", schema["const"]));
    }
    if let Some(values) = schema["enum"].as_vec() {
        if !values.iter().any(|e| scalar(e) == *v) {
            return Err(format!("{v} is not in the documented enum"));
        }
    }
    if let Value::Object(map) = v {
        for req in schema["required"].as_vec().into_iter().flatten() {
            if !map.contains_key(req.as_str().unwrap()) {
                return Err(format!("{v} lacks {req:?}"));
            }
        }
        let props = schema["properties"].as_hash();
        for (k, child) in map {
            match props.and_then(|p| p.get(&Yaml::String(k.clone()))) {
                Some(s) => validate(doc, s, child)?,
                None if schema["additionalProperties"].as_bool() == Some(false) => {
                    return Err(format!("undocumented field {k} in {v}"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_produces_exactly_what_openapi_documents() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let doc = &YamlLoader::load_from_str(&text).expect("openapi.yaml parses")[0];
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));

    // A small cap, so an oversized body still fits in the socket buffers: the 413 is sent
    // before the body is read, and a client still writing megabytes may see the connection
    // close instead of the answer.
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 4096).await;
    let fenced = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["192.0.2.0/24".parse().unwrap()])).await;
    let closed = format!("postgres://postgres@127.0.0.1:{}/none", singapay_webhooks::embedded_pg::free_port().unwrap());
    let lazy = sqlx::postgres::PgPoolOptions::new().connect_lazy(&closed).unwrap();
    let down = TestApp::spawn_on(closed, lazy, |_| {}).await;
    let broken = TestApp::spawn().await;
    // Bodies that stop arriving: 408 once BODY_READ_TIMEOUT_SECS has passed.
    let slow = TestApp::spawn_with(|s| s.body_read_timeout_secs = 1).await;
    let stalled = || {
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(b"{\"event\":".to_vec()) }).chain(
            futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                Ok(b"1}".to_vec())
            }),
        );
        reqwest::Body::wrap_stream(stream)
    };
    // A bug: the schema no longer matches what the code writes.
    sqlx::query("ALTER TABLE singapay.deliveries ADD CONSTRAINT refuse_every_new_row CHECK (false) NOT VALID")
        .execute(&broken.db)
        .await
        .unwrap();

    let mut seen = Vec::new();
    let targets: [(&'static str, &str); 2] =
        [(DEFAULT_PATH, DEFAULT_PATH), ("/webhooks/singapay/{subpath}", "/webhooks/singapay/money-out")];
    for (n, (template, path)) in targets.into_iter().enumerate() {
        let body = payload(["va-transaction", "disbursement"][n]).into_bytes();
        seen.push(call(&app, template, "POST", path, &signed(&app, path, &body, false), body.clone()).await);
        let ping = br#"{"status":200,"success":true,"data":"VA Payment Notification testing"}"#.to_vec();
        seen.push(call(&app, template, "POST", path, &[], ping).await);
        let array = b"[1,2,3]".to_vec();
        seen.push(call(&app, template, "POST", path, &signed(&app, path, &array, true), array).await);
        seen.push(call(&app, template, "POST", path, &[], body.clone()).await);
        seen.push(call(&app, template, "POST", path, &[], vec![b' '; 10_000]).await);
        seen.push(call(&fenced, template, "POST", path, &[], body.clone()).await);
        seen.push(call(&broken, template, "POST", path, &signed(&broken, path, &body, false), body.clone()).await);
        seen.push(call(&down, template, "POST", path, &signed(&down, path, &body, false), body.clone()).await);
        seen.push(call(&slow, template, "POST", path, &signed(&slow, path, b"{}", true), stalled()).await);
    }
    seen.push(call(&app, DEFAULT_PATH, "GET", DEFAULT_PATH, &[], Vec::new()).await);
    seen.push(call(&app, "/healthz", "GET", "/healthz", &[], Vec::new()).await);
    seen.push(call(&app, "/readyz", "GET", "/readyz", &[], Vec::new()).await);
    seen.push(call(&down, "/readyz", "GET", "/readyz", &[], Vec::new()).await);
    seen.push(call(&app, "/metrics", "GET", "/metrics", &[], Vec::new()).await);

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_hash().unwrap() {
        for (method, op) in item.as_hash().unwrap() {
            for (status, _) in op["responses"].as_hash().unwrap() {
                documented.insert((
                    path.as_str().unwrap().to_owned(),
                    method.as_str().unwrap().to_uppercase(),
                    status.as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    let mut observed = BTreeSet::new();
    for o in &seen {
        let key = (o.template.to_owned(), o.method.to_owned(), o.status.to_string());
        assert!(documented.contains(&key), "undocumented: {key:?} {}", o.body);
        let response =
            &doc["paths"][o.template][o.method.to_lowercase().as_str()]["responses"][o.status.to_string().as_str()];
        let content = response["content"].as_hash().unwrap();
        let (media, spec) = content.iter().next().unwrap();
        assert!(o.content_type.starts_with(media.as_str().unwrap()), "{key:?}: content-type {}", o.content_type);
        if media.as_str() == Some("application/json") {
            let v: Value = serde_json::from_str(&o.body).unwrap_or_else(|_| panic!("{key:?}: not JSON: {}", o.body));
            validate(doc, &spec["schema"], &v).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        }
        for (header, _) in response["headers"].as_hash().into_iter().flatten() {
            assert!(o.headers.contains_key(header.as_str().unwrap()), "{key:?} lacks header {header:?}");
        }
        observed.insert(key);
    }
    let missing: Vec<_> = documented.difference(&observed).collect();
    assert!(missing.is_empty(), "documented but never produced: {missing:?}");
}

/// Every refusal code is counted in `singapay_rejections_total{code}` (docs/operations.md),
/// once per refused callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_code_is_counted_once() {
    let app = TestApp::spawn_with(|s| s.max_body_bytes = 4096).await;
    let fenced = TestApp::spawn_with(|s| s.allowed_source_cidrs = Some(vec!["192.0.2.0/24".parse().unwrap()])).await;
    let closed = format!("postgres://postgres@127.0.0.1:{}/none", singapay_webhooks::embedded_pg::free_port().unwrap());
    let down =
        TestApp::spawn_on(closed.clone(), sqlx::postgres::PgPoolOptions::new().connect_lazy(&closed).unwrap(), |_| {})
            .await;
    let broken = TestApp::spawn().await;
    sqlx::query("ALTER TABLE singapay.deliveries ADD CONSTRAINT refuse_every_new_row CHECK (false) NOT VALID")
        .execute(&broken.db)
        .await
        .unwrap();
    let body = payload("disbursement");
    let p = DEFAULT_PATH;
    let mut codes = Vec::new();
    let mut refuse = |o: Observed| {
        let v: Value = serde_json::from_str(&o.body).unwrap();
        codes.push(v["error"]["code"].as_str().unwrap().to_owned());
    };
    refuse(call(&app, p, "POST", p, &[], body.clone().into_bytes()).await);
    let mut bad_ts = signed(&app, p, body.as_bytes(), false);
    bad_ts[1].1 = "yesterday".into();
    refuse(call(&app, p, "POST", p, &bad_ts, body.clone().into_bytes()).await);
    let mut forged = signed(&app, p, body.as_bytes(), false);
    forged[0].1 = "0".repeat(128);
    refuse(call(&app, p, "POST", p, &forged, body.clone().into_bytes()).await);
    refuse(call(&app, p, "POST", p, &[], vec![b' '; 10_000]).await);
    let array = b"[1,2,3]".to_vec();
    refuse(call(&app, p, "POST", p, &signed(&app, p, &array, true), array).await);
    refuse(call(&fenced, p, "POST", p, &[], body.clone().into_bytes()).await);
    refuse(call(&down, p, "POST", p, &signed(&down, p, body.as_bytes(), false), body.clone().into_bytes()).await);
    refuse(call(&broken, p, "POST", p, &signed(&broken, p, body.as_bytes(), false), body.clone().into_bytes()).await);
    let slow = TestApp::spawn_with(|s| s.body_read_timeout_secs = 1).await;
    let stalled =
        futures::stream::once(async { Ok::<_, std::io::Error>(b"{".to_vec()) }).chain(futures::stream::once(async {
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
            Ok(b"}".to_vec())
        }));
    let headers = signed(&slow, p, b"{}", true);
    refuse(call(&slow, p, "POST", p, &headers, reqwest::Body::wrap_stream(stalled)).await);
    let stale = app.send_at(&payload("ewallet-topup"), now() - 3600).await;
    codes.push(stale.error_code().to_owned());
    let expected = [
        "missing_signature_headers",
        "invalid_timestamp",
        "signature_invalid",
        "body_too_large",
        "invalid_body",
        "ip_not_allowed",
        "storage_unavailable",
        "internal",
        "body_timeout",
        "stale_timestamp",
    ];
    assert_eq!(codes, expected);
    // All four apps record into this process's one registry.
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for code in expected {
        let line = format!("singapay_rejections_total{{code=\"{code}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
}

/// The 404 body and `/readyz` on a database without the schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_and_migrations_pending_say_so() {
    let app = TestApp::spawn().await;
    let r = call(&app, "/nope", "GET", "/nope", &[], Vec::new()).await;
    assert_eq!(r.status, 404);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let (url, db) = crate::helpers::empty_database().await;
    let bare = TestApp::spawn_on(url, db, |_| {}).await;
    let r = call(&bare, "/readyz", "GET", "/readyz", &[], Vec::new()).await;
    assert_eq!(r.status, 503);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "migrations_pending", "{v}");
}
