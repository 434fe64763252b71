//! The sandbox behaves as Singapay documents its API (partial-match lists, by-id reads,
//! tokens, direct debit, account ownership), over real HTTP; it answers only requests for
//! this machine, only control calls with its token, marks every answer, and keeps bounded
//! logs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Utc};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use singapay_webhooks::tools::sandbox::{self, Sandbox, SandboxConfig};

const ACC: &str = "01JACCOUNTONE";
const ACC2: &str = "01JACCOUNTTWO";
const CONTROL_TOKEN: &str = "control-token-for-the-tests";

struct Sb {
    url: String,
    http: reqwest::Client,
    /// The control token it was started with.
    token: String,
    sandbox: Arc<Sandbox>,
}

/// A sandbox whose primary credential is client-1 / secret-1 / partner-1.
async fn start() -> Sb {
    start_with(Arc::new(Utc::now), CONTROL_TOKEN, None).await
}

/// A sandbox with this clock and control token, served as if bound to `bound` (it listens
/// on 127.0.0.1, on `bound`'s port when that is not 0).
async fn start_with(clock: Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>, token: &str, bound: Option<SocketAddr>) -> Sb {
    let sb = Sandbox::new(SandboxConfig {
        client_id: "client-1".into(),
        client_secret: "secret-1".into(),
        partner_id: "partner-1".into(),
        token_ttl_secs: 3600,
        clock,
        accounts: vec![],
        control_token: token.into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let url = format!("http://{local}");
    let router = match bound {
        Some(mut bound) => {
            bound.set_port(local.port());
            sandbox::router_at(sb.clone(), bound)
        }
        None => sandbox::router(sb.clone()),
    };
    tokio::spawn(async move { axum::serve(listener, router).await });
    Sb { url, http: reqwest::Client::new(), token: token.into(), sandbox: sb }
}

/// The documented v1.1 signature, computed here: HMAC-SHA512 of `id_secret_YYYYMMDD` (the
/// Jakarta date), keyed with the secret, lowercase hex.
fn signature(id: &str, secret: &str) -> String {
    let date = Utc::now().with_timezone(&FixedOffset::east_opt(7 * 3600).unwrap()).format("%Y%m%d");
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}_{secret}_{date}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

async fn body(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

impl Sb {
    async fn control(&self, path: &str, body: Value) -> reqwest::Response {
        let r = self
            .http
            .post(format!("{}/_sandbox/{path}", self.url))
            .header("X-Sandbox-Token", &self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r
    }

    /// Scripts a record; answers its record id.
    async fn script(&self, record: Value) -> u64 {
        let r = self.control("transactions", record.clone()).await;
        assert_eq!(r.status(), 201);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["id"], record["id"]);
        answer["record_id"].as_u64().unwrap()
    }

    async fn requests(&self) -> Vec<Value> {
        self.requests_and_dropped().await.0
    }

    /// The request log, and how many older requests it dropped (`X-Sandbox-Dropped`).
    async fn requests_and_dropped(&self) -> (Vec<Value>, u64) {
        let r = self
            .http
            .get(format!("{}/_sandbox/requests", self.url))
            .header("X-Sandbox-Token", &self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let dropped = r.headers()["x-sandbox-dropped"].to_str().unwrap().parse().unwrap();
        (r.json().await.unwrap(), dropped)
    }

    /// A v1.0 (HTTP Basic) token request for the primary credential.
    async fn token_v1_0(&self) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1.0/access-token/b2b", self.url))
            .basic_auth("client-1", Some("secret-1"))
            .header("X-PARTNER-ID", "partner-1")
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap()
    }

    async fn token_v1_1(&self, id: &str, secret: &str, partner: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1.1/access-token/b2b", self.url))
            .header("X-PARTNER-ID", partner)
            .header("X-CLIENT-ID", id)
            .header("X-Signature", signature(id, secret))
            .json(&json!({"grant_type": "client_credentials"}))
            .send()
            .await
            .unwrap();
        body(r).await
    }

    /// A token for the primary credential.
    async fn token(&self) -> String {
        let (status, answer) = self.token_v1_1("client-1", "secret-1", "partner-1").await;
        assert_eq!(status, 200, "{answer}");
        answer["data"]["access_token"].as_str().unwrap().to_owned()
    }

    async fn get(&self, token: &str, partner: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("X-PARTNER-ID", partner)
            .send()
            .await
            .unwrap();
        body(r).await
    }

    async fn money_out(&self, token: &str, path: &str, reference: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("X-PARTNER-ID", "partner-1")
            .json(&json!({"reference_number": reference}))
            .send()
            .await
            .unwrap();
        body(r).await
    }
}

/// The ids of a list's rows, in order.
fn ids(list: &Value) -> Vec<u64> {
    list["data"].as_array().unwrap().iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn v1_0_tokens_take_basic_credentials_with_a_json_or_form_body() {
    let sb = start().await;
    let url = format!("{}/api/v1.0/access-token/b2b", sb.url);
    let ask = |secret: &'static str, form: bool| {
        let r = sb.http.post(&url).basic_auth("client-1", Some(secret)).header("X-PARTNER-ID", "partner-1");
        let r = if form {
            r.header("Content-Type", "application/x-www-form-urlencoded").body("grant_type=client_credentials")
        } else {
            r.json(&json!({"grant_type": "client_credentials"}))
        };
        async move { body(r.send().await.unwrap()).await }
    };
    for form in [false, true] {
        let (status, answer) = ask("secret-1", form).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!((answer["status"].clone(), answer["success"].clone()), (json!(200), json!(true)));
        assert_eq!((&answer["data"]["token_type"], &answer["data"]["expires_in"]), (&json!("Bearer"), &json!("3600")));
        let token = answer["data"]["access_token"].as_str().unwrap();
        sb.script(json!({"id": "VA-1", "answers": ["paid"]})).await;
        let (status, read) = sb.get(token, "partner-1", &format!("/api/v1.0/va-transactions/{ACC}/VA-1")).await;
        assert_eq!((status, &read["data"]["status"]), (200, &json!("paid")));
    }
    let (status, refused) = ask("wrong", false).await;
    assert_eq!((status, &refused["success"], &refused["error"]["code"]), (401, &json!(false), &json!(401)));
    let requests = sb.requests().await;
    let tokens: Vec<(&str, &str)> = requests
        .iter()
        .filter(|r| r["kind"] == "token")
        .map(|r| (r["path"].as_str().unwrap(), r["answered"].as_str().unwrap()))
        .collect();
    let v1_0 = "/api/v1.0/access-token/b2b";
    assert_eq!(tokens, [(v1_0, "200"), (v1_0, "200"), (v1_0, "401")]);
}

#[tokio::test]
async fn token_answers_take_the_shapes_seen_in_the_wild_and_the_token_stays_valid() {
    let sb = start().await;
    sb.script(json!({"id": "VA-1", "answers": ["paid"]})).await;
    let va = format!("/api/v1.0/va-transactions/{ACC}/VA-1");

    sb.control("token-answer", json!({"flat": true, "expires_in": 900})).await;
    let (_, flat) = sb.token_v1_1("client-1", "secret-1", "partner-1").await;
    assert!(flat.get("data").is_none() && flat.get("success").is_none(), "{flat}");
    assert_eq!((&flat["token_type"], &flat["expires_in"]), (&json!("Bearer"), &json!(900)));

    sb.control("token-answer", json!({"expires_in": "0"})).await;
    let (_, zero) = sb.token_v1_1("client-1", "secret-1", "partner-1").await;
    assert_eq!(zero["data"]["expires_in"], json!("0"));
    let token = zero["data"]["access_token"].as_str().unwrap();
    assert_eq!(sb.get(token, "partner-1", &va).await.0, 200, "the sandbox keeps it for its own TTL");

    sb.control("token-answer", json!({})).await;
    let (_, absent) = sb.token_v1_1("client-1", "secret-1", "partner-1").await;
    assert!(absent["data"]["access_token"].is_string());
    assert!(absent["data"].get("expires_in").is_none(), "{absent}");

    sb.control("token-answer", json!({"flat": true, "expires_in": 18446744073709551615u64})).await;
    let r = sb
        .http
        .post(format!("{}/api/v1.1/access-token/b2b", sb.url))
        .header("X-PARTNER-ID", "partner-1")
        .header("X-CLIENT-ID", "client-1")
        .header("X-Signature", signature("client-1", "secret-1"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains(r#""expires_in":18446744073709551615"#));

    sb.control("token-answer", json!({"reset": true})).await;
    let (_, default) = sb.token_v1_1("client-1", "secret-1", "partner-1").await;
    assert_eq!(default["data"]["expires_in"], json!("3600"));

    // An IP refusal, as SP017 at 401 or 403.
    for (fault, status) in [("SP017-401", 401), ("SP017-403", 403)] {
        sb.control("token-fault", json!({"answer": fault})).await;
        let expected = json!({"response_code": "SP017", "response_message": "Unauthorized IP", "data": null});
        assert_eq!(sb.token_v1_1("client-1", "secret-1", "partner-1").await, (status, expected));
    }
}

#[tokio::test]
async fn lists_match_partially_newest_first_in_pages_of_25() {
    let sb = start().await;
    let token = sb.token().await;
    let list = |product: &str, reff: &str, page: u32| format!("/api/v1.0/{product}/{ACC}?reff_no={reff}&page={page}");

    let ours = sb.script(json!({"id": "INV-7", "product": "qris", "answers": ["paid"]})).await;
    let decoy = sb.script(json!({"id": "INV-70", "product": "qris", "answers": ["open"]})).await;
    sb.script(json!({"id": "INV-7b", "product": "qris", "account": ACC2, "answers": ["paid"]})).await;
    sb.script(json!({"id": "INV-7c", "product": "payment_link", "answers": ["paid"]})).await;
    assert!(ours >= 1000 && decoy > ours, "record ids increase from 1000");
    let (status, answer) = sb.get(&token, "partner-1", &list("qris-dynamic", "INV-7", 1)).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&answer), [decoy, ours], "the newer decoy first; other accounts and products left out");
    assert_eq!((&answer["data"][0]["reff_no"], &answer["data"][0]["status"]), (&json!("INV-70"), &json!("open")));
    // As the docs show a QRIS record: the amount a number.
    assert_eq!(answer["data"][1]["amount"], json!(10000));

    for i in 0..30 {
        sb.script(json!({"id": format!("PG-{i}"), "reff_no": format!("ORDER-PG-{i}"), "product": "payment_link", "answers": ["pending"]}))
            .await;
    }
    let (_, first) = sb.get(&token, "partner-1", &list("payment-link-histories", "PG-", 1)).await;
    let (_, second) = sb.get(&token, "partner-1", &list("payment-link-histories", "PG-", 2)).await;
    let pagination = |n: u64| json!({"current_page": n, "per_page": 25, "total": 30, "last_page": 2});
    assert_eq!((&first["pagination"], &second["pagination"]), (&pagination(1), &pagination(2)));
    let all: Vec<u64> = ids(&first).into_iter().chain(ids(&second)).collect();
    assert_eq!((ids(&first).len(), ids(&second).len()), (25, 5));
    assert!(all.windows(2).all(|w| w[0] > w[1]), "descending across pages: {all:?}");
    assert_eq!(first["data"][0]["reff_no"], json!("ORDER-PG-29"));

    let (status, none) = sb.get(&token, "partner-1", &list("payment-link-histories", "NOPE", 1)).await;
    assert_eq!((status, none), (200, json!({"status": 200, "success": true, "data": []})));
}

#[tokio::test]
async fn reads_by_id_take_answers_and_lists_do_not() {
    let sb = start().await;
    let token = sb.token().await;
    let get = |path: String| {
        let (sb, token) = (&sb, &token);
        async move { sb.get(token, "partner-1", &path).await }
    };
    let qris = sb.script(json!({"id": "Q-1", "product": "qris", "answers": ["open", "paid"]})).await;
    let q_list = format!("/api/v1.0/qris-dynamic/{ACC}?reff_no=Q-1");
    let q_show = format!("/api/v1.0/qris-dynamic/{ACC}/show/{qris}");
    assert_eq!(get(q_list.clone()).await.1["data"][0]["status"], "open");
    assert_eq!(get(q_list.clone()).await.1["data"][0]["status"], "open", "a list takes no answer");
    let (status, read) = get(q_show.clone()).await;
    assert_eq!((status, &read["data"]["id"], &read["data"]["status"]), (200, &json!(qris), &json!("open")));
    assert_eq!(get(q_show.clone()).await.1["data"]["status"], "paid");
    assert_eq!(get(q_list.clone()).await.1["data"][0]["status"], "paid", "as of the latest read");
    assert_eq!(get(q_show).await.1["data"]["status"], "paid", "the last answer repeats");

    // A fault shows as pending in the list, and is answered by the read.
    let link = sb.script(json!({"id": "PL-1", "product": "payment_link", "answers": ["SP005", "paid"]})).await;
    let p_list = format!("/api/v1.0/payment-link-histories/{ACC}?reff_no=PL-1");
    let p_read = format!("/api/v1.0/payment-link-histories/{ACC}/{link}");
    assert_eq!(get(p_list.clone()).await.1["data"][0]["status"], "pending");
    assert_eq!(get(p_read.clone()).await.1["response_code"], "SP005");
    assert_eq!(get(p_list).await.1["data"][0]["status"], "pending");
    let (status, read) = get(p_read).await;
    assert_eq!((status, &read["data"]["reff_no"], &read["data"]["status"]), (200, &json!("PL-1"), &json!("paid")));

    let not_found = json!({"status": 404, "success": false, "error": {"code": 404, "message": "Data not found"}});
    assert_eq!(get(format!("/api/v1.0/payment-link-histories/{ACC}/999999")).await, (404, not_found.clone()));
    assert_eq!(get(format!("/api/v1.0/qris-dynamic/{ACC}/show/{link}")).await, (404, not_found), "not a QRIS");

    let requests = sb.requests().await;
    let first_list = requests.iter().find(|r| r["kind"] == "inquiry").unwrap();
    assert_eq!((&first_list["id"], &first_list["answered"]), (&json!("Q-1"), &json!("list:1 rows")));
    assert!(requests.iter().any(|r| r["id"] == json!(qris.to_string()) && r["answered"] == "open"));
}

#[tokio::test]
async fn status_computed_and_is_expired_are_shown_as_scripted() {
    let sb = start().await;
    let token = sb.token().await;
    let expired = json!({"status": "open", "status_computed": "expired", "is_expired": true});
    let id = sb.script(json!({"id": "Q-EXP", "product": "qris", "record_id": 5000, "answers": [expired]})).await;
    assert_eq!(id, 5000);
    let (_, list) = sb.get(&token, "partner-1", &format!("/api/v1.0/qris-dynamic/{ACC}?reff_no=Q-EXP")).await;
    let (_, read) = sb.get(&token, "partner-1", &format!("/api/v1.0/qris-dynamic/{ACC}/show/5000")).await;
    for row in [&list["data"][0], &read["data"]] {
        assert_eq!(
            (&row["status"], &row["status_computed"], &row["is_expired"]),
            (&json!("open"), &json!("expired"), &json!(true))
        );
    }
    // Scripted again: the same record (and id), its answers from the start.
    assert_eq!(sb.script(json!({"id": "Q-EXP", "product": "qris", "answers": ["open"]})).await, 5000);
    assert!(sb.script(json!({"id": "Q-NEXT", "product": "qris", "answers": ["open"]})).await > 5000);
    let (_, read) = sb.get(&token, "partner-1", &format!("/api/v1.0/qris-dynamic/{ACC}/show/5000")).await;
    let row = &read["data"];
    assert_eq!(
        (&row["status"], &row["status_computed"], &row["is_expired"]),
        (&json!("open"), &json!("open"), &json!(false))
    );
}

#[tokio::test]
async fn a_failed_transfer_is_answered_sp001_with_code_06_at_http_400() {
    let sb = start().await;
    let token = sb.token().await;
    let path = format!("/api/v2.0/disbursement/{ACC}/inquiry-status");
    sb.script(json!({"id": "PAYOUT-1", "product": "disbursement", "answers": ["03", "06"]})).await;
    let (status, pending) = sb.money_out(&token, &path, "PAYOUT-1").await;
    assert_eq!(
        (status, &pending["response_code"], &pending["response_message"]),
        (200, &json!("SP000"), &json!("Success"))
    );
    assert_eq!(pending["data"]["transaction_status"], json!({"code": "03", "desc": "Pending"}));
    let (status, failed) = sb.money_out(&token, &path, "PAYOUT-1").await;
    assert_eq!(
        (status, &failed["response_code"], &failed["response_message"]),
        (400, &json!("SP001"), &json!("Failed"))
    );
    let data = &failed["data"];
    assert_eq!(data["transaction_status"], json!({"code": "06", "desc": "Failed"}));
    assert_eq!((&data["reference_number"], &data["processed_timestamp"]), (&json!("PAYOUT-1"), &json!("")));
    assert!(data["failed_reason"].is_string() && data["failed_code"].is_string(), "{data}");
    let (status, unknown) = sb.money_out(&token, &path, "PAYOUT-NONE").await;
    assert_eq!((status, &unknown["response_code"]), (404, &json!("SP009")));
    let (status, elsewhere) =
        sb.money_out(&token, &format!("/api/v2.0/ewallet/{ACC}/inquiry-status"), "PAYOUT-1").await;
    assert_eq!((status, &elsewhere["response_code"]), (404, &json!("SP009")), "a disbursement is no top-up");
}

#[tokio::test]
async fn an_account_of_another_credential_is_asked_with_that_credential() {
    let sb = start().await;
    let two =
        json!({"client_id": "client-2", "client_secret": "secret-2", "partner_id": "partner-2", "accounts": [ACC2]});
    sb.control("credentials", two).await;
    sb.script(json!({"id": "VA-9", "product": "va", "answers": ["paid"]})).await;
    let va = |account: &str| format!("/api/v1.0/va-transactions/{account}/VA-9");
    let primary = sb.token().await;
    let (status, answer) = sb.token_v1_1("client-2", "secret-2", "partner-2").await;
    assert_eq!(status, 200, "{answer}");
    let second = answer["data"]["access_token"].as_str().unwrap().to_owned();

    let denied = json!({"response_code": "SP403", "response_message": "Access denied to this account.", "data": null});
    assert_eq!(sb.get(&primary, "partner-1", &va(ACC2)).await, (403, denied.clone()));
    assert_eq!(sb.get(&second, "partner-2", &va(ACC)).await, (403, denied), "the primary owns the rest");
    let (status, read) = sb.get(&second, "partner-2", &va(ACC2)).await;
    assert_eq!(
        (status, &read["data"]["transaction_id"], &read["data"]["status"]),
        (200, &json!("VA-9"), &json!("paid"))
    );
    assert_eq!(sb.get(&primary, "partner-1", &va(ACC)).await.0, 200);
    let (status, wrong_partner) = sb.get(&second, "partner-1", &va(ACC2)).await;
    assert_eq!((status, &wrong_partner["response_code"]), (401, &json!("SP013")));
}

#[tokio::test]
async fn direct_debit_bindings_and_charges_are_read_by_id() {
    let sb = start().await;
    let token = sb.token().await;
    sb.script(json!({"id": "BIND-1", "product": "direct_debit", "answers": ["PENDING_AUTH", "ACTIVE"]})).await;
    sb.script(json!({"id": "CHARGE-1", "product": "direct_debit_charge", "answers": ["SUCCESS"]})).await;
    let binding = "/api/v2.0/direct-debit/binding/BIND-1";
    let ok = |data: Value| (200, json!({"response_code": "SP000", "response_message": "Success", "data": data}));
    assert_eq!(
        sb.get(&token, "partner-1", binding).await,
        ok(json!({"binding_id": "BIND-1", "status": "PENDING_AUTH"}))
    );
    assert_eq!(sb.get(&token, "partner-1", binding).await, ok(json!({"binding_id": "BIND-1", "status": "ACTIVE"})));
    let charge = "/api/v2.0/direct-debit/transactions/CHARGE-1";
    assert_eq!(
        sb.get(&token, "partner-1", charge).await,
        ok(json!({"transaction_id": "CHARGE-1", "status": "SUCCESS"}))
    );
    let (status, unknown) = sb.get(&token, "partner-1", "/api/v2.0/direct-debit/transactions/BIND-1").await;
    assert_eq!((status, &unknown["response_code"]), (404, &json!("SP009")));
}

#[tokio::test]
async fn raw_answers_are_served_verbatim() {
    let sb = start().await;
    let token = sb.token().await;
    let json_body =
        json!({"response_code": "SP018", "response_message": "Validation Error", "data": {"errors": {"id": ["bad"]}}});
    let text = r#"{"status":200,"success":true,"data":{"id":"77","status":"paid","amount":1.50}}"#;
    let answers = json!([
        {"http_status": 400, "body": json_body},
        {"http_status": 200, "body_text": text},
        {"http_status": 502, "body_text": "<html>Bad Gateway</html>"},
    ]);
    sb.script(json!({"id": "77", "product": "ewallet", "answers": answers})).await;
    let url = format!("{}/api/v1.0/ewallet-native/{ACC}/inquiry-status/77", sb.url);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = sb.http.get(&url).bearer_auth(&token).header("X-PARTNER-ID", "partner-1").send().await.unwrap();
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        seen.push((r.status().as_u16(), content_type, r.text().await.unwrap()));
    }
    assert_eq!((seen[0].0, serde_json::from_str::<Value>(&seen[0].2).unwrap()), (400, json_body));
    assert_eq!((seen[1].0, seen[1].2.as_str()), (200, text), "byte for byte");
    assert_eq!((seen[2].0, seen[2].2.as_str()), (502, "<html>Bad Gateway</html>"));
    assert!(seen[1].1.starts_with("application/json") && seen[2].1.starts_with("text/plain"), "{seen:?}");
}

/// DNS rebinding: a page on another name that resolves to 127.0.0.1 sends its own name as
/// `Host`. Only loopback names and addresses (any port), or exactly the bound address, are
/// answered.
#[tokio::test]
async fn a_request_for_another_host_is_refused() {
    let bound: SocketAddr = "192.0.2.1:0".parse().unwrap();
    let sb = start_with(Arc::new(Utc::now), CONTROL_TOKEN, Some(bound)).await;
    let port: u16 = sb.url.rsplit(':').next().unwrap().parse().unwrap();
    let ask = |host: String| {
        let r = sb
            .http
            .post(format!("{}/api/v1.0/access-token/b2b", sb.url))
            .header("Host", host)
            .basic_auth("client-1", Some("secret-1"))
            .header("X-PARTNER-ID", "partner-1")
            .json(&json!({"grant_type": "client_credentials"}));
        async move { r.send().await.unwrap() }
    };
    let foreign = [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("localhost.evil.example:{port}"),
        format!("192.0.2.1:{}", port.wrapping_add(1)),
        format!("192.0.2.2:{port}"),
    ];
    for host in foreign {
        let r = ask(host.clone()).await;
        assert_eq!(r.status(), 421, "{host}");
        assert_eq!(r.headers()["x-singapay-sandbox"], "1");
        assert!(r.text().await.unwrap().contains("only Host localhost"), "{host}");
    }
    let control = sb
        .http
        .get(format!("{}/_sandbox/requests", sb.url))
        .header("Host", "evil.example")
        .header("X-Sandbox-Token", CONTROL_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(control.status(), 421, "the control token does not make another host this one");
    let local = [
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("127.8.9.10:{port}"),
        format!("[::1]:{port}"),
        format!("192.0.2.1:{port}"),
    ];
    for host in &local {
        assert_eq!(ask(host.clone()).await.status(), 200, "{host}");
    }
    assert_eq!(sb.requests().await.len(), local.len(), "the refused requests never reached the sandbox");
}

#[tokio::test]
async fn control_calls_need_the_control_token_and_a_cross_site_form_cannot_revoke() {
    let sb = start().await;
    let url = |path: &str| format!("{}/_sandbox/{path}", sb.url);
    let script = json!({"id": "VA-1", "answers": ["paid"]});
    for token in [None, Some("wrong"), Some(""), Some("control-token-for-the-test")] {
        let mut r = sb.http.post(url("transactions")).json(&script);
        if let Some(t) = token {
            r = r.header("X-Sandbox-Token", t);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(r.text().await.unwrap().contains("X-Sandbox-Token"));
        let read = sb.http.get(url("requests")).header("X-Sandbox-Token", token.unwrap_or_default()).send().await;
        assert_eq!(read.unwrap().status(), 401, "the log is a control route too");
    }
    sb.script(script).await;

    // What a cross-site page can send without a preflight: a form POST, with cookies,
    // an Origin, no custom header.
    let token = sb.token().await;
    let va = format!("/api/v1.0/va-transactions/{ACC}/VA-1");
    let form = sb
        .http
        .post(url("revoke"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("Origin", "https://evil.example")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 401);
    assert_eq!(sb.get(&token, "partner-1", &va).await.0, 200, "the token survives the form");
    assert_eq!(sb.control("revoke", json!({})).await.status(), 204);
    assert_eq!(sb.get(&token, "partner-1", &va).await.0, 401, "with the control token it revokes");

    // An empty configured token refuses every control call.
    let closed = start_with(Arc::new(Utc::now), "", None).await;
    for token in [None, Some("")] {
        let mut r = closed.http.post(format!("{}/_sandbox/revoke", closed.url));
        if let Some(t) = token {
            r = r.header("X-Sandbox-Token", t);
        }
        assert_eq!(r.send().await.unwrap().status(), 401, "{token:?}");
    }
}

#[tokio::test]
async fn every_answer_says_it_is_the_sandboxs() {
    let sb = start().await;
    let mut seen: Vec<(String, reqwest::Response)> = Vec::new();
    seen.push(("token 200".into(), sb.token_v1_0().await));
    let refused = sb.http.post(format!("{}/api/v1.0/access-token/b2b", sb.url)).basic_auth("client-1", Some("x"));
    seen.push(("token 401".into(), refused.send().await.unwrap()));
    seen.push(("script 201".into(), sb.control("transactions", json!({"id": "P-1", "answers": ["06"]})).await));
    let raw = json!({"id": "R-1", "answers": [{"http_status": 502, "body_text": "<html>Bad Gateway</html>"}]});
    seen.push(("script raw".into(), sb.control("transactions", raw).await));
    let token = sb.token().await;
    let inquiry = |path: String| {
        let r = sb.http.get(format!("{}{path}", sb.url)).bearer_auth(&token).header("X-PARTNER-ID", "partner-1");
        async move { r.send().await.unwrap() }
    };
    seen.push(("read 200".into(), inquiry(format!("/api/v1.0/va-transactions/{ACC}/P-1")).await));
    seen.push(("read 404".into(), inquiry(format!("/api/v1.0/va-transactions/{ACC}/NONE")).await));
    seen.push(("raw 502".into(), inquiry(format!("/api/v1.0/va-transactions/{ACC}/R-1")).await));
    let money_out = sb
        .http
        .post(format!("{}/api/v2.0/disbursement/{ACC}/inquiry-status", sb.url))
        .bearer_auth(&token)
        .header("X-PARTNER-ID", "partner-1")
        .json(&json!({"reference_number": "P-1"}));
    seen.push(("money-out 400".into(), money_out.send().await.unwrap()));
    seen.push(("unknown route".into(), sb.http.get(format!("{}/nothing/here", sb.url)).send().await.unwrap()));
    let no_token = sb.http.post(format!("{}/_sandbox/revoke", sb.url)).send().await.unwrap();
    seen.push(("control 401".into(), no_token));
    let bad = sb
        .http
        .post(format!("{}/_sandbox/transactions", sb.url))
        .header("X-Sandbox-Token", CONTROL_TOKEN)
        .json(&json!({"answers": []}));
    seen.push(("control 422".into(), bad.send().await.unwrap()));
    let foreign = sb.http.get(format!("{}/_sandbox/requests", sb.url)).header("Host", "evil.example");
    seen.push(("host 421".into(), foreign.send().await.unwrap()));
    seen.push(("token fault".into(), sb.control("token-fault", json!({"answer": "403"})).await));
    seen.push(("token 403".into(), sb.token_v1_0().await));
    let statuses: Vec<u16> = seen.iter().map(|(_, r)| r.status().as_u16()).collect();
    assert_eq!(statuses, [200, 401, 201, 201, 200, 404, 502, 400, 404, 401, 422, 421, 204, 403]);
    for (what, r) in &seen {
        assert_eq!(r.headers().get("x-singapay-sandbox").map(|v| v.to_str().unwrap()), Some("1"), "{what}");
    }
}

/// The request log keeps the latest 10,000 requests and says how many it dropped; issued
/// tokens are pruned when expired and at most 10,000 live, the oldest dropped first.
#[tokio::test]
async fn the_request_log_and_the_live_tokens_are_bounded() {
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock = Arc::new(move || Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let sb = start_with(clock, CONTROL_TOKEN, None).await;
    sb.script(json!({"id": "VA-1", "answers": ["paid"]})).await;
    let extra = 50;
    let mut tokens = Vec::new();
    for _ in 0..sandbox::MAX_TOKENS + extra {
        let r = sb.token_v1_0().await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        tokens.push(answer["data"]["access_token"].as_str().unwrap().to_owned());
    }
    assert_eq!(sb.sandbox.live_tokens(), sandbox::MAX_TOKENS);
    let (log, dropped) = sb.requests_and_dropped().await;
    assert_eq!((log.len(), dropped), (sandbox::MAX_LOGGED, extra as u64));
    assert!(log.iter().all(|r| r["kind"] == "token" && r["answered"] == "200"));

    let va = format!("/api/v1.0/va-transactions/{ACC}/VA-1");
    assert_eq!(sb.get(&tokens[extra - 1], "partner-1", &va).await.0, 401, "the oldest were dropped");
    assert_eq!(sb.get(&tokens[extra], "partner-1", &va).await.0, 200);
    assert_eq!(sb.get(tokens.last().unwrap(), "partner-1", &va).await.0, 200);
    let (log, dropped) = sb.requests_and_dropped().await;
    assert_eq!((log.len(), dropped), (sandbox::MAX_LOGGED, extra as u64 + 3));
    assert_eq!(log.last().unwrap()["path"], json!(va), "the latest are kept");

    // Two hours later (tokens live one): every token has expired, and goes when one is issued.
    offset.store(7200, Ordering::SeqCst);
    assert_eq!(sb.token_v1_0().await.status(), 200);
    assert_eq!(sb.sandbox.live_tokens(), 1);
}
