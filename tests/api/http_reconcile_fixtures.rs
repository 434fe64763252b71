//! Contract tests from the world: `tests/fixtures/inquiry_answers.json` holds answer shapes
//! from Singapay's docs and the open-source clients (laravel-singapay, singapay-js, a Go
//! ledger client), each with its source and the outcome the docs imply. Each is read by the
//! reconciler's own code to that outcome; then each is served by the `sandbox` to a real
//! reconciler pass over a database holding the asked transaction and every transaction the
//! answer names, and no row other than the one asked about may move.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use singapay_webhooks::reconcile::{ReconcileSettings, Reconciler};
use singapay_webhooks::singapay::inquiry::{self, Answer, Identity, ListPage, Lookup, Reading, Subject, TokenRefused};
use singapay_webhooks::singapay::status::Product;

use crate::helpers::{SandboxApi, TestApp, SANDBOX_ACCOUNT};

#[derive(Debug, Clone, Deserialize)]
struct Fixture {
    name: String,
    source: String,
    product: String,
    endpoint: String,
    asked: String,
    http_status: u16,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    body_text: Option<String>,
    expect: Value,
}

impl Fixture {
    fn bytes(&self) -> Vec<u8> {
        match (&self.body, &self.body_text) {
            (Some(b), _) => serde_json::to_vec(b).unwrap(),
            (None, Some(t)) => t.clone().into_bytes(),
            (None, None) => Vec::new(),
        }
    }

    fn outcome(&self) -> &str {
        self.expect["outcome"].as_str().expect("expect.outcome")
    }

    fn data_text(&self, field: &str) -> Option<String> {
        let v = self.body.as_ref()?.get("data")?.get(field)?;
        v.as_str().map(str::to_owned).or_else(|| v.as_i64().map(|n| n.to_string()))
    }

    /// The transaction this answer is asked about: (key, singapay_id, merchant_reference),
    /// built as a stored transaction would hold it. A status fixture's record carries our
    /// `reff_no`; any other is asked under a reference of its own.
    fn subject(&self, n: usize) -> (String, Option<String>, Option<String>) {
        let ours = |prefix: &str| {
            self.data_text("reff_no").filter(|_| self.outcome() == "status").unwrap_or_else(|| format!("{prefix}{n}"))
        };
        let asked = self.asked.clone();
        match self.product.as_str() {
            // Money-out is keyed by Singapay's transaction_id.
            p @ ("disbursement" | "ewallet_topup" | "qris_issuer") => {
                let id = self
                    .data_text("transaction_id")
                    .filter(|_| self.outcome() == "status")
                    .unwrap_or_else(|| format!("FX{n}"));
                (format!("{p}:{id}"), None, Some(asked))
            }
            "va" => (format!("va:{asked}"), Some(asked), None),
            "qris" => (format!("qris:{}", ours("FXQ")), Some(asked), None),
            "payment_link" => (format!("payment_link:{}", ours("FXP")), None, None),
            "ewallet" => (format!("ewallet:{}", ours("FXE")), Some(asked), None),
            "direct_debit" => (format!("direct_debit:{asked}"), None, None),
            other => panic!("no transaction for {other}"),
        }
    }

    /// What the reconciler compares an answer about this fixture's record with.
    fn identity(&self, n: usize) -> (Reading, Identity) {
        if self.product == "direct_debit_charge" {
            return match inquiry::charge_lookup(&self.asked) {
                Some(Lookup::Read { identity, .. }) => (Reading::MoneyIn, identity),
                other => panic!("{other:?}"),
            };
        }
        let product = Product::from_name(&self.product).expect("a product");
        let (key, singapay_id, merchant_reference) = self.subject(n);
        let subject = Subject {
            product,
            key_id: singapay_webhooks::singapay::webhook::key_id(&key),
            singapay_id: singapay_id.as_deref(),
            merchant_reference: merchant_reference.as_deref(),
        };
        let identity = match inquiry::lookup(&subject, SANDBOX_ACCOUNT).expect("askable") {
            Lookup::Read { identity, .. } => identity,
            // A search ends in a read of the row it found, by that row's id.
            Lookup::Search { read_prefix, reff_no, .. } => {
                match inquiry::read_found(&read_prefix, &self.asked, &reff_no) {
                    Some(Lookup::Read { identity, .. }) => identity,
                    other => panic!("{other:?}"),
                }
            }
        };
        (Reading::of(product), identity)
    }
}

fn fixtures() -> Vec<Fixture> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/inquiry_answers.json");
    let all: Vec<Fixture> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(all.len() >= 35, "the fixture set shrank: {}", all.len());
    for f in &all {
        assert!(!f.source.trim().is_empty() && !f.name.trim().is_empty(), "every fixture names its source: {f:?}");
    }
    all
}

/// The outcome an answer was read as, in the fixtures' words.
fn said(answer: &Answer) -> String {
    match answer {
        Answer::Status { status, .. } => format!("status:{status}"),
        other => other.name().to_owned(),
    }
}

fn expected(f: &Fixture) -> String {
    match f.outcome() {
        "status" => format!("status:{}", f.expect["status"].as_str().unwrap()),
        other => other.to_owned(),
    }
}

#[test]
fn every_fixture_is_read_to_the_outcome_the_docs_imply() {
    let mut wrong = Vec::new();
    for (n, f) in fixtures().iter().enumerate() {
        let body = f.bytes();
        let got = match f.endpoint.as_str() {
            "token" => match inquiry::read_token(f.http_status, &body) {
                Ok(t) => {
                    assert!(t.expires_in_secs > 0, "{}", f.name);
                    let want = f.expect["access_token"].as_str().unwrap_or_default();
                    if t.access_token == want {
                        "token".to_owned()
                    } else {
                        format!("token {:?}", t.access_token)
                    }
                }
                Err(TokenRefused::Credentials(_)) => "refused:credentials".into(),
                Err(TokenRefused::Forbidden(_)) => "refused:ip".into(),
                Err(TokenRefused::Other(_)) => "refused:other".into(),
            },
            "list" => match inquiry::read_list(f.http_status, &body, &f.asked, false) {
                ListPage::Rows { exact, .. } => match exact.as_slice() {
                    [] => "not_found".to_owned(),
                    [id] => format!("exact:{id}"),
                    _ => "ambiguous".to_owned(),
                },
                ListPage::Other(answer) => said(&answer),
            },
            _ => {
                let (reading, identity) = f.identity(n);
                said(&inquiry::read_answer(reading, &identity, f.http_status, &body))
            }
        };
        let want = match (f.endpoint.as_str(), f.outcome()) {
            ("token", "refused") => format!("refused:{}", f.expect["cause"].as_str().unwrap()),
            ("list", "exact") => format!("exact:{}", f.expect["id"].as_str().unwrap()),
            _ => expected(f),
        };
        if got != want {
            wrong.push(format!("#{n} {}: read as {got}, the docs imply {want}", f.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every transaction: (key, status, version).
async fn snapshot(app: &TestApp) -> Vec<(String, String, i32)> {
    sqlx::query_as("SELECT transaction_key, status, version FROM singapay.transactions ORDER BY transaction_key")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

async fn store(
    app: &TestApp,
    key: &str,
    product: &str,
    singapay_id: Option<&str>,
    reference: Option<&str>,
    status: &str,
) {
    sqlx::query(
        "INSERT INTO singapay.transactions (transaction_key, product, singapay_id, merchant_reference, status, version)
         VALUES ($1, $2, $3, $4, $5, 1)
         ON CONFLICT (transaction_key) DO UPDATE
            SET status = excluded.status,
                singapay_id = coalesce(excluded.singapay_id, singapay.transactions.singapay_id),
                merchant_reference = coalesce(excluded.merchant_reference, singapay.transactions.merchant_reference)",
    )
    .bind(key)
    .bind(product)
    .bind(singapay_id)
    .bind(reference)
    .bind(status)
    .execute(&app.db)
    .await
    .unwrap();
}

fn initial(product: &str) -> &'static str {
    if product == "direct_debit" {
        "pending_auth"
    } else {
        "initiated"
    }
}

fn settings(api: &SandboxApi) -> ReconcileSettings {
    ReconcileSettings {
        credentials: vec![api.credential("default", &[SANDBOX_ACCOUNT], Duration::from_secs(5))],
        money_out_overdue: Duration::from_secs(900),
        money_in_overdue: Duration::from_secs(86_400),
        concurrency: 1,
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(2),
        not_found_attempts: 5,
        unreadable_attempts: 5,
        interval: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_moves_a_transaction_it_was_not_asked_about() {
    let app = TestApp::spawn().await;
    let mut all: Vec<(usize, Fixture)> = fixtures()
        .into_iter()
        .enumerate()
        .filter(|(_, f)| f.endpoint == "inquiry" && f.product != "direct_debit_charge")
        .collect();
    // An oversized answer (cut off at the read limit) naming another record, paid.
    let huge = "x".repeat(1_500_000);
    all.push((
        all.len() + 1000,
        Fixture {
            name: "an answer longer than the read limit".into(),
            source: "synthetic: the bounded read".into(),
            product: "disbursement".into(),
            endpoint: "inquiry".into(),
            asked: "REF-HUGE".into(),
            http_status: 200,
            body: Some(json!({"response_code": "SP000", "data": {"reference_number": "REF-HUGE",
                "transaction_status": {"code": "00"}, "notes": huge}})),
            body_text: None,
            expect: json!({"outcome": "unreadable"}),
        },
    ));
    // The asked transactions, and every transaction an answer names.
    for (n, f) in &all {
        let (key, singapay_id, reference) = f.subject(*n);
        store(&app, &key, &f.product, singapay_id.as_deref(), reference.as_deref(), initial(&f.product)).await;
        for field in ["reff_no", "reference_number", "transaction_id", "id", "binding_id"] {
            if let Some(v) = f.data_text(field) {
                let bystander = format!("{}:{v}", f.product);
                if bystander != key {
                    store(&app, &bystander, &f.product, Some(&v), Some(&v), "pending").await;
                }
            }
        }
    }
    let mut wrong = Vec::new();
    for (n, f) in &all {
        let (key, singapay_id, reference) = f.subject(*n);
        // The asked transaction starts over; everything else is as it was.
        store(&app, &key, &f.product, singapay_id.as_deref(), reference.as_deref(), initial(&f.product)).await;
        let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
        let raw = match &f.body {
            Some(b) => json!({"http_status": f.http_status, "body": b}),
            None => json!({"http_status": f.http_status, "body_text": f.body_text.clone().unwrap_or_default()}),
        };
        let mut script = json!({"id": f.asked, "answers": [raw]});
        if matches!(f.product.as_str(), "disbursement" | "ewallet_topup" | "qris_issuer") {
            script["transaction_id"] = json!(singapay_webhooks::singapay::webhook::key_id(&key));
        }
        if f.product == "payment_link" {
            // Found by its exact reff_no in the list, then read by its id.
            let id: i64 = f.asked.parse().expect("a history id");
            script = json!({"id": f.asked, "record_id": id, "reff_no": singapay_webhooks::singapay::webhook::key_id(&key),
                            "product": "payment_link", "answers": [raw]});
        } else if f.product == "direct_debit" {
            script["product"] = json!("direct_debit");
        }
        api.control("transactions", script).await;
        let before = snapshot(&app).await;
        let clock: singapay_webhooks::reconcile::Clock = Arc::new(Utc::now);
        let reconciler = Reconciler::new(app.db.clone(), settings(&api), clock, "fixtures").unwrap();
        let report = reconciler.pass(Some(&key)).await.unwrap();
        let outcome = report.outcomes.iter().find(|o| o.transaction_key == key);
        let got = match outcome {
            Some(o) if o.answer == "status" => format!("status:{}", o.status.as_deref().unwrap_or_default()),
            Some(o) => o.answer.clone(),
            None => format!("no outcome: {report:?}"),
        };
        if got != expected(f) {
            wrong.push(format!("#{n} {}: {got}, the docs imply {}", f.name, expected(f)));
        }
        let after = snapshot(&app).await;
        for (row_before, row_after) in before.iter().zip(&after) {
            if row_before.0 == key {
                let want = if f.outcome() == "status" { f.expect["status"].as_str().unwrap() } else { &row_before.1 };
                if row_after.1 != want {
                    wrong.push(format!("#{n} {}: {key} became {} instead of {want}", f.name, row_after.1));
                }
            } else if row_before != row_after {
                wrong.push(format!("#{n} {}: {row_before:?} moved to {row_after:?} (asked about {key})", f.name));
            }
        }
        assert_eq!(before.len(), after.len(), "#{n}: no transaction is created but the asked one");
        // Settle the check so the next fixture asking about the same key starts afresh.
        sqlx::query("DELETE FROM singapay.reconcile_checks").execute(&app.db).await.unwrap();
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The JSON type of a value, for comparing shapes.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field `ours` has, `documented` has too, with the same JSON type (nulls aside),
/// recursively: the sandbox invents no field and no type Singapay's answers do not have.
fn same_shape(ours: &Value, documented: &Value, at: &str, wrong: &mut Vec<String>) {
    match (ours, documented) {
        (Value::Object(o), Value::Object(d)) => {
            for (k, v) in o {
                match d.get(k) {
                    None => wrong.push(format!("{at}.{k} is not in the documented answer")),
                    Some(dv) => same_shape(v, dv, &format!("{at}.{k}"), wrong),
                }
            }
        }
        (Value::Array(o), Value::Array(d)) => {
            if let (Some(first), Some(dfirst)) = (o.first(), d.first()) {
                same_shape(first, dfirst, &format!("{at}[0]"), wrong);
            }
        }
        (Value::Null, _) | (_, Value::Null) => {}
        (o, d) if kind(o) != kind(d) => wrong.push(format!("{at} is a {} where Singapay's is a {}", kind(o), kind(d))),
        _ => {}
    }
}

/// The sandbox the end-to-end tests ask is held to the documented answers: for one answer
/// per product (each from Singapay's docs or an open-source client, the fixtures'
/// sources), the sandbox scripted to the same status answers with the same HTTP status,
/// envelope and fields (no field or type of its own), and the reconciler reads both alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_answers_in_the_shapes_singapay_documents() {
    use singapay_webhooks::singapay::inquiry::{InquiryRequest, Method};
    let all = fixtures();
    let api = SandboxApi::start_with_clock(Arc::new(Utc::now)).await;
    let client = api.client(Utc::now(), Duration::from_secs(5));
    let find = |name_has: &str| all.iter().find(|f| f.name.contains(name_has)).unwrap_or_else(|| panic!("{name_has}"));
    let a = SANDBOX_ACCOUNT;
    let post = |path: String, reference: &str| InquiryRequest {
        method: Method::Post,
        path,
        body: Some(json!({ "reference_number": reference })),
    };
    let get = |path: String| InquiryRequest { method: Method::Get, path, body: None };
    let cases: Vec<(&Fixture, Value, InquiryRequest)> = vec![
        {
            let f = find("disbursement failed transfer answered SP001 with 06");
            let t = f.data_text("transaction_id").unwrap();
            (
                f,
                json!({"id": f.asked, "transaction_id": t, "answers": ["06"]}),
                post(format!("/api/v2.0/disbursement/{a}/inquiry-status"), &f.asked),
            )
        },
        {
            let f = find("ewallet topup success");
            let t = f.data_text("transaction_id").unwrap();
            (
                f,
                json!({"id": f.asked, "transaction_id": t, "answers": ["00"]}),
                post(format!("/api/v2.0/ewallet/{a}/inquiry-status"), &f.asked),
            )
        },
        {
            let f = find("va paid by transaction_id");
            (
                f,
                json!({"id": f.asked, "product": "va", "answers": ["paid"]}),
                get(format!("/api/v1.0/va-transactions/{a}/{}", f.asked)),
            )
        },
        {
            let f = find("qris show open");
            let r = f.data_text("reff_no").unwrap();
            (
                f,
                json!({"id": f.asked, "product": "qris", "reff_no": r, "answers": ["open"]}),
                get(format!("/api/v1.0/qris-dynamic/{a}/show/{}", f.asked)),
            )
        },
        {
            let f = find("payment link history paid by id");
            let r = f.data_text("reff_no").unwrap();
            (
                f,
                json!({"id": f.asked, "product": "payment_link", "reff_no": r, "answers": ["paid"]}),
                get(format!("/api/v1.0/payment-link-histories/{a}/{}", f.asked)),
            )
        },
        {
            let f = find("ewallet native inquiry open");
            let r = f.data_text("reff_no").unwrap();
            (
                f,
                json!({"id": f.asked, "product": "ewallet", "reff_no": r, "answers": ["open"]}),
                get(format!("/api/v1.0/ewallet-native/{a}/inquiry-status/{}", f.asked)),
            )
        },
        {
            let f = find("direct debit binding ACTIVE");
            (
                f,
                json!({"id": f.asked, "product": "direct_debit", "answers": ["ACTIVE"]}),
                get(format!("/api/v2.0/direct-debit/binding/{}", f.asked)),
            )
        },
    ];
    let mut wrong = Vec::new();
    for (f, script, request) in cases {
        api.control("transactions", script).await;
        let product = Product::from_name(&f.product).unwrap();
        let exchange = client.ask(product, &request).await.unwrap();
        let ours: Value = serde_json::from_slice(&exchange.response_body).unwrap();
        if exchange.http_status != Some(f.http_status) {
            wrong.push(format!("{}: HTTP {:?}, Singapay's {}", f.name, exchange.http_status, f.http_status));
        }
        let mut shape = Vec::new();
        same_shape(&ours, f.body.as_ref().unwrap(), "", &mut shape);
        wrong.extend(shape.into_iter().map(|w| format!("{}: {w}", f.name)));
        let (reading, identity) = f.identity(0);
        let documented = said(&inquiry::read_answer(reading, &identity, f.http_status, &f.bytes()));
        let sandbox =
            said(&inquiry::read_answer(reading, &identity, exchange.http_status.unwrap(), &exchange.response_body));
        if documented != sandbox {
            wrong.push(format!("{}: the sandbox's answer reads as {sandbox}, Singapay's as {documented}", f.name));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
