//! Tools for integrators: `send` (a Singapay simulator), `verify` (the signature
//! explainer), `replay` and `sandbox` (Singapay's API stand-in).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use singapay_webhooks::singapay::webhook::WebhookType;
use singapay_webhooks::singapay::Body;
use singapay_webhooks::tools::simulate::{self, Spec};

use crate::helpers::{fresh_database, random_hex, SandboxApi, TestApp, DEFAULT_PATH, SANDBOX_ACCOUNT};
use crate::process::{env, run, Server};

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

/// Collects a child's output, line by line.
fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// `sandbox` with these arguments and exactly this environment, once it printed its banner:
/// the process (its port the one the banner names, its stderr in `logs`) and the banner.
async fn start_sandbox(args: &[&str], vars: &[(String, String)]) -> (Server, String) {
    let mut cmd = crate::process::command(crate::process::BIN, vars);
    cmd.arg("sandbox").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run the binary");
    let out = collect(child.stdout.take().unwrap());
    let logs = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let banner = out.lock().unwrap().join("\n");
        if banner.contains("Ctrl-C stops it.") {
            let bound: std::net::SocketAddr = banner
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("the banner names the address: {banner}"));
            return (Server { child, logs, port: bound.port() }, banner);
        }
        if let Some(status) = child.try_wait().unwrap() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("the sandbox exited ({status}): {:?}", logs.lock().unwrap());
        }
        assert!(Instant::now() < deadline, "no banner: {banner}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value after `label` on a banner line (`control token : abc…`).
fn banner_value<'b>(banner: &'b str, label: &str) -> &'b str {
    let line = banner.lines().find(|l| l.trim_start().starts_with(label)).unwrap_or_else(|| panic!("{banner}"));
    line.split_once(" : ").unwrap().1.split_whitespace().next().unwrap()
}

/// A v1.0 (HTTP Basic) token request to the sandbox on `port`: the status.
async fn basic_token(port: u16, client_secret: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/api/v1.0/access-token/b2b"))
        .basic_auth("sandbox-client", Some(client_secret))
        .header("X-PARTNER-ID", "sandbox-partner")
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `sandbox` as a command: with its default credentials it issues a token to a correctly
/// signed request, answers what is scripted (with the control token it printed, random
/// each run), says "not found" for the rest, and stops on Ctrl-C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_stands_in_for_singapays_api() {
    use singapay_webhooks::reconcile::client::{ApiClient, ApiSettings};
    use singapay_webhooks::singapay::inquiry::{self, Answer, Subject};
    use singapay_webhooks::singapay::status::Product;

    let (mut server, banner) = start_sandbox(&["--listen", "127.0.0.1:0"], &[]).await;
    let listen = format!("127.0.0.1:{}", server.port);
    assert!(banner.starts_with(&format!("Singapay API sandbox listening on {listen} ")), "{banner}");
    let token = banner_value(&banner, "control token").to_owned();
    assert!(token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{banner}");
    assert!(banner.contains(&format!("-H 'X-Sandbox-Token: {token}'")), "a ready-to-paste example: {banner}");
    let receiver = format!(
        "SINGAPAY_API_URL=http://{listen} SINGAPAY_API_ALLOW_INSECURE=1 SINGAPAY_CLIENT_ID=sandbox-client \
         SINGAPAY_CLIENT_SECRET=sandbox-secret SINGAPAY_PARTNER_ID=sandbox-partner"
    );
    assert!(banner.contains(&receiver), "what the receiver needs: {banner}");
    assert!(server.logs.lock().unwrap().is_empty(), "no warning on loopback: {:?}", server.logs.lock().unwrap());
    let (_other, second) = start_sandbox(&["--listen", "127.0.0.1:0"], &[]).await;
    assert_ne!(banner_value(&second, "control token"), token, "a new token each run");

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
        .header("X-Sandbox-Token", &token)
        .json(&serde_json::json!({"id": "TOPUP-1", "answers": ["06"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(scripted.status(), 201);
    assert!(matches!(ask("TOPUP-1").await, Answer::Status { status, .. } if status == "failed"));
    server.signal("INT");
    assert!(server.wait_exit(std::time::Duration::from_secs(10)).await.success());
}

/// On a wildcard address the sandbox says where it really listens and warns; it still
/// answers only requests for this machine, and control calls only with its token. (All the
/// test's traffic goes to 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_warns_off_loopback_and_guards_its_control_routes() {
    let token = format!("given-{}", random_hex(12));
    let (mut server, banner) =
        start_sandbox(&["--listen", "0.0.0.0:0"], &env(&[("SANDBOX_CONTROL_TOKEN", &token)])).await;
    let bound = format!("0.0.0.0:{}", server.port);
    assert!(banner.starts_with(&format!("Singapay API sandbox listening on {bound} ")), "{banner}");
    assert_eq!(banner_value(&banner, "control token"), token);
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let logs = server.logs.lock().unwrap().clone();
        if let Some(line) = logs.iter().find(|l| l.starts_with("WARN")) {
            break line.clone();
        }
        assert!(Instant::now() < deadline, "no warning: {logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(warning.contains(&format!("listening on {bound}, which is not a loopback address")), "{warning}");

    let http = reqwest::Client::new();
    let requests = |t: Option<&str>, host: Option<&str>| {
        let mut r = http.get(server.url("/_sandbox/requests"));
        if let Some(t) = t {
            r = r.header("X-Sandbox-Token", t);
        }
        if let Some(h) = host {
            r = r.header("Host", h);
        }
        async move { r.send().await.unwrap() }
    };
    let cases = [
        (None, None, 401),
        (Some("wrong-token-wrong-token"), None, 401),
        (Some(token.as_str()), Some("evil.example"), 421),
        (Some(token.as_str()), Some(bound.as_str()), 200),
        (Some(token.as_str()), None, 200),
    ];
    for (t, host, status) in cases {
        let r = requests(t, host).await;
        let marked = r.headers().get("x-singapay-sandbox").and_then(|v| v.to_str().ok());
        assert_eq!((r.status().as_u16(), marked), (status, Some("1")), "{t:?} {host:?}");
    }
    let form = http
        .post(server.url("/_sandbox/revoke"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Origin", "https://evil.example")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 401, "a cross-site form cannot revoke");
    assert_eq!(
        http.post(server.url("/_sandbox/revoke")).header("X-Sandbox-Token", &token).send().await.unwrap().status(),
        204
    );
    server.signal("INT");
    assert!(server.wait_exit(Duration::from_secs(10)).await.success());
}

/// The client secret never goes on the command line: `--client-secret` is gone, the secret
/// comes from `--client-secret-file` or SANDBOX_CLIENT_SECRET (else `sandbox-secret`), and
/// the banner tells the receiver where, not what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_command_takes_its_secrets_from_files_or_the_environment() {
    let (ok, _, err) = run(&["sandbox", "--listen", "127.0.0.1:0", "--client-secret", "argv-secret"], &[]).await;
    assert!(!ok && err.contains("--client-secret"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client-secret");
    let token_file = dir.path().join("control-token");
    let file_secret = format!("file-{}", random_hex(8));
    let file_token = format!("file-token-{}", random_hex(8));
    std::fs::write(&secret_file, format!("{file_secret}\n")).unwrap();
    std::fs::write(&token_file, format!("{file_token}\n")).unwrap();
    let (secret_path, token_path) = (secret_file.to_str().unwrap(), token_file.to_str().unwrap());

    // Given twice, or a token anyone could guess: one line naming it, and no start.
    let refusals = [
        (vec!["--client-secret-file", secret_path], vec![("SANDBOX_CLIENT_SECRET", "x")], "SANDBOX_CLIENT_SECRET"),
        (vec!["--control-token-file", token_path], vec![("SANDBOX_CONTROL_TOKEN", "x")], "SANDBOX_CONTROL_TOKEN"),
        (vec![], vec![("SANDBOX_CONTROL_TOKEN", "short")], "SANDBOX_CONTROL_TOKEN"),
        (vec![], vec![("SANDBOX_CONTROL_TOKEN", "has spaces in the middle")], "SANDBOX_CONTROL_TOKEN"),
    ];
    for (extra, vars, named) in refusals {
        let mut args = vec!["sandbox", "--listen", "127.0.0.1:0"];
        args.extend(extra);
        let (ok, _, err) = run(&args, &env(&vars)).await;
        assert!(!ok, "{vars:?} was accepted");
        assert!(err.lines().count() == 1 && err.contains(named), "{vars:?}: {err}");
    }

    let args = ["--listen", "127.0.0.1:0", "--client-secret-file", secret_path, "--control-token-file", token_path];
    let (server, banner) = start_sandbox(&args, &[]).await;
    assert_eq!(banner_value(&banner, "control token"), file_token);
    assert!(banner.contains(&format!("SINGAPAY_CLIENT_SECRET_FILE={secret_path}")), "{banner}");
    assert!(!banner.contains(&file_secret), "{banner}");
    assert_eq!(basic_token(server.port, &file_secret).await, 200);
    assert_eq!(basic_token(server.port, "sandbox-secret").await, 401);
    drop(server);

    let env_secret = format!("env-{}", random_hex(8));
    let (server, banner) =
        start_sandbox(&["--listen", "127.0.0.1:0"], &env(&[("SANDBOX_CLIENT_SECRET", &env_secret)])).await;
    assert!(banner.contains(r#"SINGAPAY_CLIENT_SECRET="$SANDBOX_CLIENT_SECRET""#), "{banner}");
    assert!(!banner.contains(&env_secret), "{banner}");
    assert_eq!(basic_token(server.port, &env_secret).await, 200);
    assert_eq!(basic_token(server.port, "sandbox-secret").await, 401);
}

/// With the secret of SINGAPAY_WEBHOOK_SECRETS (production's), `send` signs for this machine
/// only: another host is refused before anything is built, scripted, saved or sent, unless
/// `--i-mean-production` (checked here with --dry-run only: no traffic leaves the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_refuses_another_machine_with_the_configured_secret() {
    let secret = format!("cs_prod_{}", random_hex(12));
    let configured = env(&[("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={secret}"))]);
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().to_str().unwrap();
    // Stands in for a sandbox: nothing may connect to it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let sandbox = format!("http://{}", listener.local_addr().unwrap());
    let far = "http://example.invalid:9/webhooks/singapay";
    let attempts: [Vec<&str>; 3] = [
        vec!["--save", save],
        vec!["--save", save, "--sandbox", &sandbox, "--sandbox-answers", "00", "--sandbox-token", "t"],
        vec!["--dry-run"],
    ];
    for extra in attempts {
        let mut args = vec!["send", "disbursement", "--url", far];
        args.extend(extra.iter().copied());
        let (ok, out, err) = run(&args, &configured).await;
        assert!(!ok, "{extra:?}: {out}");
        assert!(
            err.contains("refusing to sign with the secret of SINGAPAY_WEBHOOK_SECRETS")
                && err.contains("http://example.invalid, which is not this machine")
                && err.contains("--i-mean-production"),
            "{err}"
        );
        assert!(!err.contains(&secret) && !out.contains(&secret), "the secret was shown");
        assert!(out.is_empty(), "{out}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was built");
    assert!(listener.accept().is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock), "nothing was scripted");

    // Printed, not sent: with --i-mean-production, a secret `dev` made, or --secret.
    let dev = format!("dev=dev_{}", random_hex(24));
    let explicit = format!("cs_test_{}", random_hex(8));
    let accepted = [
        (vec!["--i-mean-production"], configured.clone()),
        (vec![], env(&[("SINGAPAY_WEBHOOK_SECRETS", &dev)])),
        (vec!["--secret", &explicit], configured.clone()),
    ];
    for (extra, vars) in accepted {
        let mut args = vec!["send", "disbursement", "--url", far, "--dry-run"];
        args.extend(extra.iter().copied());
        let (ok, out, err) = run(&args, &vars).await;
        assert!(ok && out.contains("Host: example.invalid"), "{extra:?}: {err}");
    }
    // This machine, by any of its names: as before.
    for url in ["http://127.0.0.1:9/w", "http://127.3.2.1:9/w", "http://localhost:9/w", "http://[::1]:9/w"] {
        let (ok, out, err) = run(&["send", "va-transaction", "--url", url, "--dry-run"], &configured).await;
        assert!(ok && out.contains("X-Signature: "), "{url}: {err}");
    }
}

/// `send` signs with the configured secret for a receiver on this machine and scripts the
/// sandbox with its control token (`--sandbox-token` or SANDBOX_CONTROL_TOKEN); without it
/// the sandbox refuses and nothing is posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_scripts_the_sandbox_with_its_control_token() {
    use singapay_webhooks::singapay::inquiry::{self, Answer, Subject};
    use singapay_webhooks::singapay::status::Product;

    let app = TestApp::spawn().await;
    let api = SandboxApi::start_with_clock(Arc::new(chrono::Utc::now)).await;
    let configured = env(&[("SINGAPAY_WEBHOOK_SECRETS", &format!("primary={}", app.secret))]);
    let url = app.url(DEFAULT_PATH);
    let send = |reference: &'static str, extra: Vec<String>, mut vars: Vec<(String, String)>| {
        let mut args: Vec<String> = ["send", "disbursement", "--status", "01", "--reference", reference, "--url", &url]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.extend(["--sandbox".into(), api.url.clone(), "--sandbox-answers".into(), "03,00".into()]);
        args.extend(extra);
        vars.extend(configured.clone());
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args, &vars).await
        }
    };
    let (ok, _, err) = send("PAYOUT-T0", vec![], vec![]).await;
    assert!(!ok && err.contains("the sandbox refused the script (401)") && err.contains("--sandbox-token"), "{err}");
    let (ok, _, err) = send("PAYOUT-T0", vec!["--sandbox-token".into(), "not-the-token".into()], vec![]).await;
    assert!(!ok && err.contains("the one given is not it"), "{err}");
    assert_eq!(app.count("deliveries").await, 0, "nothing was posted");

    let (ok, out, err) = send("PAYOUT-T1", vec!["--sandbox-token".into(), api.token.clone()], vec![]).await;
    assert!(ok && out.contains("sandbox: asked about PAYOUT-T1") && out.contains("-> 200"), "{out}{err}");
    let (ok, out, err) = send("PAYOUT-T2", vec![], env(&[("SANDBOX_CONTROL_TOKEN", &api.token)])).await;
    assert!(ok && out.contains("sandbox: asked about PAYOUT-T2") && out.contains("-> 200"), "{out}{err}");
    assert_eq!(app.count("deliveries").await, 2);

    let client = api.client(chrono::Utc::now(), Duration::from_secs(5));
    for reference in ["PAYOUT-T1", "PAYOUT-T2"] {
        let s = Subject {
            product: Product::Disbursement,
            key_id: "T-1",
            singapay_id: None,
            merchant_reference: Some(reference),
        };
        let asked = client.ask(Product::Disbursement, &inquiry::request(&s, SANDBOX_ACCOUNT).unwrap()).await;
        assert!(matches!(asked.unwrap().answer, Answer::Status { status, .. } if status == "pending"), "{reference}");
    }
}
