//! Tools for integrators: `send` (a Singapay simulator), `verify` (the signature
//! explainer) and `replay`.

use std::process::Command;

use rand::SeedableRng;
use singapay_webhooks::singapay::webhook::WebhookType;
use singapay_webhooks::singapay::Body;
use singapay_webhooks::tools::simulate::{self, Spec};

use crate::helpers::{fresh_database, random_hex, TestApp, DEFAULT_PATH};
use crate::process::{env, run};

async fn send(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let url = app.url(DEFAULT_PATH);
    let mut all = vec!["send"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--url", &url, "--secret", &app.secret]);
    run(&all, &[]).await
}

/// (type, --status, --response-code, delivery status, delivery response_code, key product)
type SendCase =
    (&'static str, &'static str, Option<&'static str>, Option<&'static str>, Option<&'static str>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_delivers_every_type_with_the_chosen_values() {
    // A real `serve` process, as deployed.
    let (db_url, db) = fresh_database().await;
    let secret = format!("cs_{}", random_hex(10));
    let (mut server, _) = crate::process::serve_ready(&["serve"], |port| {
        env(&[
            ("DATABASE_URL", &db_url),
            ("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={secret}")),
            ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ])
    })
    .await;
    let url = server.url(DEFAULT_PATH);
    let cases: [SendCase; 13] = [
        ("va-transaction", "paid", None, Some("succeeded"), None, "va"),
        ("qris-acquirer-transaction", "paid", None, Some("succeeded"), None, "qris"),
        ("payment-link-transaction", "paid", None, Some("succeeded"), None, "payment_link"),
        ("payment-link-inquiry", "pending", None, Some("pending"), None, "payment_link"),
        ("ewallet-native-transaction", "paid", None, Some("succeeded"), None, "ewallet"),
        ("disbursement", "03", None, Some("pending"), Some("SP000"), "disbursement"),
        ("ewallet-topup", "06", None, Some("failed"), Some("SP001"), "ewallet_topup"),
        ("qris-issuer", "00", Some("SP000"), Some("succeeded"), Some("SP000"), "qris_issuer"),
        ("settlement", "completed", None, Some("completed"), None, "settlement"),
        ("subscription-cycle", "payment_failed", None, Some("failed"), None, "subscription_bill"),
        ("direct-debit", "PENDING_AUTH", None, Some("pending_auth"), None, "direct_debit"),
        ("product-expiration", "expired", None, None, None, "payment_link"),
        ("transaction-expiration", "expired", None, None, None, "payment_link"),
    ];
    for (kind, status, rc, want_status, want_rc, product) in cases {
        let tid = format!("T{}", random_hex(6));
        let reference = format!("REF-{}", random_hex(4));
        let mut args = vec![kind, "--status", status, "--transaction-id", &tid, "--reference", &reference];
        if let Some(rc) = rc {
            args.extend_from_slice(&["--response-code", rc]);
        }
        args.extend_from_slice(&["--url", &url, "--secret", &secret]);
        let mut all = vec!["send"];
        all.extend_from_slice(&args);
        let (ok, out, err) = run(&all, &[]).await;
        assert!(ok, "{kind}: {out} {err}");
        assert!(out.contains("-> 200"), "{kind}: {out}");
        let (wtype, st, code, key): (String, Option<String>, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT webhook_type, status, response_code, transaction_key FROM singapay.deliveries ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        assert_eq!(wtype, kind);
        assert_eq!(st.as_deref(), want_status, "{kind}");
        assert_eq!(code.as_deref(), want_rc, "{kind}");
        let expected_key = format!("{product}:{tid}");
        if want_status.is_some() {
            assert_eq!(key.as_deref(), Some(expected_key.as_str()), "{kind}");
        }
        let (state, merchant_ref): (String, Option<String>) =
            sqlx::query_as("SELECT status, merchant_reference FROM singapay.transactions WHERE transaction_key = $1")
                .bind(&expected_key)
                .fetch_one(&db)
                .await
                .unwrap_or_else(|e| panic!("{kind}: no transaction {expected_key}: {e}"));
        assert_eq!(state, want_status.unwrap_or("expired"), "{kind}");
        // Expiration items, direct-debit bindings and settlements carry no merchant reference.
        if !kind.ends_with("expiration") && kind != "direct-debit" && kind != "settlement" {
            assert_eq!(merchant_ref.as_deref(), Some(reference.as_str()), "{kind}");
        }
    }
    server.signal("TERM");
    assert!(server.wait_exit(std::time::Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_can_sign_wrong_repeat_a_retry_and_go_stale() {
    let app = TestApp::spawn().await;
    let (ok, out, _) = send(&app, &["disbursement", "--wrong-secret"]).await;
    assert!(!ok, "a 401 makes send fail");
    assert!(out.contains("-> 401") && out.contains("signature_invalid"), "{out}");

    let (ok, out, _) = send(&app, &["va-transaction", "--repeat", "1"]).await;
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains(r#""duplicate":false"#) && lines[1].contains(r#""duplicate":true"#), "{out}");

    let (ok, out, _) = send(&app, &["ewallet-topup", "--stale", "900"]).await;
    assert!(!ok);
    assert!(out.contains("-> 401") && out.contains("stale_timestamp"), "{out}");

    let (ok, out, _) = send(&app, &["disbursement", "--sequence", "01,03,00", "--transaction-id", "555"]).await;
    assert!(ok, "{out}");
    let to: Vec<String> = sqlx::query_scalar(
        "SELECT to_status FROM singapay.transaction_events WHERE transaction_key = 'disbursement:555' ORDER BY version",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(to, ["initiated", "pending", "succeeded"]);

    // A subscription body has `"metadata": {}`, which PHP's form turns into `[]`, so each
    // form is distinct from the others.
    for form in ["raw", "sorted"] {
        let (ok, out, _) = send(&app, &["subscription-cycle", "--form", form]).await;
        assert!(ok, "{out}");
        let stored: String =
            sqlx::query_scalar("SELECT signature_form FROM singapay.deliveries ORDER BY id DESC LIMIT 1")
                .fetch_one(&app.db)
                .await
                .unwrap();
        assert_eq!(stored, form);
    }
}

#[test]
fn sends_canonical_forms_agree_with_php_for_100_random_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261121);
    let statuses =
        ["paid", "pending", "00", "01", "03", "06", "completed", "refunded", "payment_failed", "suspended", "ACTIVE"];
    let mut bodies = Vec::new();
    for i in 0..100 {
        let kind = WebhookType::ALL[i % 13];
        let status = statuses.iter().find(|s| {
            simulate::build(
                kind,
                &Spec { status: Some(s.to_string()), ..Spec::default() },
                chrono::Utc::now(),
                &mut rng,
            )
            .is_ok()
        });
        let spec = Spec {
            status: status.filter(|_| i % 3 != 0).map(|s| s.to_string()),
            items: Some(1 + i % 14),
            ..Spec::default()
        };
        let built = simulate::build(kind, &spec, chrono::Utc::now(), &mut rng).unwrap();
        let text = if i % 2 == 0 { built.body.to_string() } else { serde_json::to_string_pretty(&built.body).unwrap() };
        std::fs::write(dir.path().join(format!("body-{i:03}.json")), &text).unwrap();
        bodies.push((format!("payload/body-{i:03}"), text));
    }
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/mkvectors.py");
    let out = Command::new("python3").arg(tool).arg("--payloads").arg(dir.path()).output().expect("python3 runs");
    assert!(out.status.success(), "mkvectors.py (needs php-cli): {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vectors = doc["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 100);
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let (_, text) = bodies.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(v["raw_body"].as_str().unwrap(), text);
        let ours = Body::analyse(text.as_bytes()).php;
        assert_eq!(ours.as_deref(), v["canonical_body"].as_str(), "{name}");
    }
}

fn secrets_env(secret: &str) -> Vec<(String, String)> {
    env(&[("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={secret}"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_explains_a_good_request_and_names_what_was_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("cs_{}", random_hex(12));
    let save = dir.path().to_str().unwrap();
    let (ok, _, err) = run(
        &[
            "send",
            "disbursement",
            "--url",
            "http://127.0.0.1:9/webhooks/singapay?src=sp",
            "--secret",
            &secret,
            "--dry-run",
            "--save",
            save,
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let good = std::fs::read_to_string(dir.path().join("1.http")).unwrap();
    let file = dir.path().join("case.http");
    let verify = |message: String, secret: String| {
        let file = file.clone();
        async move {
            std::fs::write(&file, message).unwrap();
            run(&["verify", "--request", file.to_str().unwrap()], &secrets_env(&secret)).await
        }
    };
    let (ok, out, err) = verify(good.clone(), secret.clone()).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("result: match form=php credential=primary"), "{out}");
    assert!(out.contains("POST:/webhooks/singapay?src=sp:"), "the string to sign is shown: {out}");

    // The same request as separate header and body files, with or without a request line.
    let (head, body) = good.split_at(good.find("\r\n\r\n").unwrap());
    let (headers_file, body_file) = (dir.path().join("headers.txt"), dir.path().join("body.json"));
    std::fs::write(&body_file, &body[4..]).unwrap();
    for (headers, extra) in [
        (head.to_owned(), vec![]),
        (head.lines().skip(1).collect::<Vec<_>>().join("\n"), vec!["--endpoint", "/webhooks/singapay?src=sp"]),
    ] {
        std::fs::write(&headers_file, headers).unwrap();
        let mut args =
            vec!["verify", "--headers", headers_file.to_str().unwrap(), "--body", body_file.to_str().unwrap()];
        args.extend(extra);
        let (ok, out, err) = run(&args, &secrets_env(&secret)).await;
        assert!(ok && out.contains("result: match form=php credential=primary"), "{out}{err}");
    }

    // One byte changed in each component.
    let head_end = good.find("\r\n\r\n").unwrap();
    let (head, body) = good.split_at(head_end);
    let header = |name: &str| head.lines().find(|l| l.starts_with(name)).unwrap().to_owned();
    let flip = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        let i = b.len() - 2;
        b[i] = if b[i] == b'1' { b'2' } else { b'1' };
        String::from_utf8(b).unwrap()
    };
    let ts = header("X-Timestamp");
    let auth = header("Authorization");
    // The first digit of the first amount.
    let value_at = body.find("\"value\"").unwrap();
    let amount_at = value_at + body[value_at..].find(|c: char| c.is_ascii_digit()).unwrap();
    let mut tampered_body = body.to_owned().into_bytes();
    tampered_body[amount_at] = if tampered_body[amount_at] == b'1' { b'2' } else { b'1' };
    let cases = [
        ("timestamp", good.replacen(&ts, &flip(&ts), 1), secret.clone()),
        ("path", good.replacen("?src=sp", "?src=sq", 1), secret.clone()),
        ("token", good.replacen(&auth, &flip(&auth), 1), secret.clone()),
        ("body", format!("{head}{}", String::from_utf8(tampered_body).unwrap()), secret.clone()),
        ("secret", good.clone(), flip(&secret)),
        ("secret", good.clone(), format!("cs_{}", random_hex(12))),
    ];
    for (component, message, configured) in cases {
        let (ok, out, err) = verify(message, configured.clone()).await;
        assert!(!ok, "{component}: a tampered request must not verify");
        assert!(out.contains(&format!("result: mismatch component={component} ")), "{component}: {out}{err}");
        assert!(!out.contains(&configured) && !out.contains(&secret), "a secret appeared in verify's output");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_replay_work_on_stored_and_rejected_deliveries() {
    let app = TestApp::spawn().await;
    let (ok, out, _) = send(&app, &["va-transaction"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = send(&app, &["ewallet-topup", "--stale", "900", "--transaction-id", "9090"]).await;
    assert!(!ok && out.contains("stale_timestamp"), "{out}");
    let mut vars = secrets_env(&app.secret);
    vars.push(("DATABASE_URL".into(), app_database_url(&app).await));

    let (ok, out, _) = run(&["verify", "--delivery", "1"], &vars).await;
    assert!(ok && out.contains("result: match form=php credential=primary"), "{out}");
    let (ok, out, _) = run(&["verify", "--rejection", "1"], &vars).await;
    assert!(ok && out.contains("result: match") && out.contains("outside the window"), "{out}");

    let (ok, out, err) = run(&["replay", "--rejection", "1", "--dry-run"], &vars).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("ewallet_topup:9090: (new) -> succeeded (applied, version 1)") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(app.count("deliveries").await, 1, "a dry run writes nothing");

    let (ok, out, err) = run(&["replay", "--rejection", "1"], &vars).await;
    assert!(ok, "{err}");
    assert!(out.contains("rejected delivery 1: stored as delivery ") && out.contains(", outcome applied"), "{out}");
    let replayed: Option<i64> =
        sqlx::query_scalar("SELECT replayed_delivery_id FROM singapay.rejected_deliveries WHERE id = 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let new_id = replayed.expect("the rejection points at its delivery");
    assert!(out.contains(&format!("stored as delivery {new_id},")), "{out}");
    let (ok, out, _) = run(&["replay", "--rejection", "1"], &vars).await;
    assert!(ok && out.contains(&format!("already stored as delivery {new_id}")), "{out}");
    assert_eq!(app.count("deliveries").await, 2, "replaying twice stores it once");
    assert_eq!(app.count("transaction_events").await, 2);

    // A stored delivery replayed: nothing new to apply, nothing queued.
    let (ok, out, _) = run(&["replay", "--delivery", "1"], &vars).await;
    assert!(ok && out.contains("outcome applied") && out.contains("(unchanged, version 1)"), "{out}");
    assert_eq!(app.count("transaction_events").await, 2);
}

async fn app_database_url(app: &TestApp) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()").fetch_one(&app.db).await.unwrap();
    let options = app.db.connect_options();
    format!("postgres://{}@{}:{}/{db}", options.get_username(), options.get_host(), options.get_port())
}

/// `sandbox` as a command: with its default credentials it issues a token to a correctly
/// signed request, answers what is scripted, says "not found" for the rest, and stops on
/// Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_stands_in_for_singapays_api() {
    use singapay_webhooks::reconcile::client::{ApiClient, ApiSettings};
    use singapay_webhooks::singapay::inquiry::{self, Answer, Subject};
    use singapay_webhooks::singapay::status::Product;

    let port = singapay_webhooks::embedded_pg::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut server = crate::process::serve(&["sandbox", "--listen", &listen], &[], port);
    server.try_wait_for("/_sandbox/requests").await.expect("the sandbox starts");
    let settings = ApiSettings {
        base_url: format!("http://{listen}"),
        client_id: "sandbox-client".into(),
        client_secret: secrecy::SecretString::from("sandbox-secret".to_owned()),
        partner_id: "sandbox-partner".into(),
        timeout: std::time::Duration::from_secs(5),
        allow_insecure: true,
    };
    let client = ApiClient::new(settings, std::sync::Arc::new(chrono::Utc::now)).unwrap();
    let ask = |reference: &'static str| {
        let client = &client;
        async move {
            let s = Subject {
                product: Product::EwalletTopup,
                key_id: "T-1",
                singapay_id: None,
                merchant_reference: Some(reference),
            };
            client.ask(Product::EwalletTopup, &inquiry::request(&s, "ACC").unwrap()).await.unwrap().answer
        }
    };
    assert!(matches!(ask("UNKNOWN").await, Answer::NotFound { .. }));
    let scripted = reqwest::Client::new()
        .post(server.url("/_sandbox/transactions"))
        .json(&serde_json::json!({"id": "TOPUP-1", "answers": ["06"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), 201);
    assert!(matches!(ask("TOPUP-1").await, Answer::Status { status, .. } if status == "failed"));
    server.signal("INT");
    assert!(server.wait_exit(std::time::Duration::from_secs(10)).await.success());
}
