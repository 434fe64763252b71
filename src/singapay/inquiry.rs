//! Asking Singapay's REST API what became of a transaction: the access-token signature, the
//! inquiry request for each product, and how to read the answers (the facts are in the
//! project's INQUIRY notes: v1 and v2 envelopes, strings where numbers are expected, empty
//! strings for absent times).
//!
//! Pure: the caller supplies the clock and does the HTTP. Answers are read with the same
//! parser as callbacks (`singapay::json`: bounded depth, numbers kept as written); request
//! bodies are built with `serde_json`, for the HTTP client.

use chrono::{DateTime, FixedOffset, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha512;

use super::json::{self, Value};
use super::status::{self, Product};
use super::webhook::{self, Change};

/// Asia/Jakarta is UTC+7 all year.
const JAKARTA_OFFSET_SECS: i32 = 7 * 3600;

/// Today's date in Asia/Jakarta as `YYYYMMDD`: between 17:00 and 24:00 UTC it is already
/// tomorrow there, and Singapay refuses a token request signed with the UTC date.
pub fn jakarta_date(now: DateTime<Utc>) -> String {
    let jakarta = FixedOffset::east_opt(JAKARTA_OFFSET_SECS).expect("a valid offset");
    now.with_timezone(&jakarta).format("%Y%m%d").to_string()
}

/// `X-Signature` of the v1.1 token request: lowercase hex HMAC-SHA512, keyed with the client
/// secret, of `{client_id}_{client_secret}_{YYYYMMDD}` (the Jakarta date).
pub fn token_signature(client_id: &str, client_secret: &str, now: DateTime<Utc>) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(client_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{client_id}_{client_secret}_{}", jakarta_date(now)).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The path and body of the v1.1 token request.
pub const TOKEN_PATH: &str = "/api/v1.1/access-token/b2b";

pub fn token_body() -> serde_json::Value {
    json!({ "grant_type": "client_credentials" })
}

/// An access token and how long it is good for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub expires_in_secs: u64,
}

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefused {
    /// HTTP 401: the client id, secret, partner id or signature (its date) is wrong.
    Credentials(String),
    /// HTTP 403: this machine's IP is not whitelisted for the merchant.
    Forbidden(String),
    /// Anything else (5xx, a body that is not the documented envelope): try again later.
    Other(String),
}

/// Reads the token endpoint's answer: `{"status":200,"success":true,"data":{"access_token":
/// "…","expires_in":"216000"}}` (`expires_in` a string of seconds, or a number).
pub fn read_token(http_status: u16, body: &[u8]) -> Result<Token, TokenRefused> {
    let v = json::parse(body).ok().map(|p| p.value);
    let message = || v.as_ref().and_then(error_message).unwrap_or_else(|| excerpt(body));
    match http_status {
        401 => return Err(TokenRefused::Credentials(message())),
        403 => return Err(TokenRefused::Forbidden(message())),
        200..=299 => {}
        s => return Err(TokenRefused::Other(format!("HTTP {s}: {}", message()))),
    }
    let data = v.as_ref().and_then(|v| v.get("data"));
    let token = data.and_then(|d| d.get("access_token")).and_then(text);
    let expires = data.and_then(|d| d.get("expires_in")).and_then(number);
    match (token, expires) {
        (Some(t), Some(e)) if e > 0 => Ok(Token { access_token: t, expires_in_secs: e }),
        (Some(t), None) => Ok(Token { access_token: t, expires_in_secs: 3600 }),
        _ => Err(TokenRefused::Other(format!("no access_token in the answer: {}", message()))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

/// One inquiry to make.
#[derive(Debug, Clone, PartialEq)]
pub struct InquiryRequest {
    pub method: Method,
    /// Path and query, from `/api/…`.
    pub path: String,
    pub body: Option<serde_json::Value>,
}

/// What we know of a transaction to ask about it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub product: Product,
    /// The id in our transaction key (`disbursement:{this}`).
    pub key_id: &'a str,
    pub singapay_id: Option<&'a str>,
    pub merchant_reference: Option<&'a str>,
}

impl<'a> Subject<'a> {
    /// What a change reports of its transaction.
    pub fn of(change: &'a Change) -> Subject<'a> {
        Subject {
            product: change.product,
            key_id: webhook::key_id(&change.transaction_key),
            singapay_id: change.singapay_id.as_deref(),
            merchant_reference: change.merchant_reference.as_deref(),
        }
    }
}

/// Products Singapay has a per-transaction inquiry for. Settlements and subscription bills
/// have none (only a plan can be looked up), so they are never asked.
pub fn can_ask(product: Product) -> bool {
    matches!(
        product,
        Product::Disbursement
            | Product::EwalletTopup
            | Product::QrisIssuer
            | Product::Va
            | Product::Qris
            | Product::PaymentLink
            | Product::Ewallet
            | Product::DirectDebit
    )
}

/// The identifier an inquiry about `s` names: our `reference_number` for money-out,
/// Singapay's transaction id for a VA payment, the `reff_no` for QRIS and payment links,
/// Singapay's id for an e-wallet checkout, the transaction id for direct debit. `None` when
/// the product has no inquiry or the identifier is not known.
pub fn identifier<'a>(s: &Subject<'a>) -> Option<&'a str> {
    let id = match s.product {
        Product::Disbursement | Product::EwalletTopup | Product::QrisIssuer => s.merchant_reference?,
        Product::Va | Product::Qris | Product::PaymentLink | Product::DirectDebit => s.key_id,
        Product::Ewallet => s.singapay_id?,
        Product::Settlement | Product::SettlementRefund | Product::SubscriptionBill | Product::SubscriptionPlan => {
            return None
        }
    };
    (!id.is_empty() && id.len() <= 128).then_some(id)
}

/// The request that asks about `s` on sub-account `account_id`, or `None` when the product
/// has no inquiry or we lack the identifier it needs ([`identifier`]).
pub fn request(s: &Subject<'_>, account_id: &str) -> Option<InquiryRequest> {
    let account = path_segment(account_id)?;
    let id = identifier(s)?;
    let post = |path: String, body: serde_json::Value| InquiryRequest { method: Method::Post, path, body: Some(body) };
    let get = |path: String| InquiryRequest { method: Method::Get, path, body: None };
    // Money-out's reference_number is at most 64 characters.
    let reference = || (id.len() <= 64).then_some(id);
    Some(match s.product {
        Product::Disbursement => post(
            format!("/api/v2.0/disbursement/{account}/inquiry-status"),
            json!({ "reference_number": reference()? }),
        ),
        Product::EwalletTopup => {
            post(format!("/api/v2.0/ewallet/{account}/inquiry-status"), json!({ "reference_number": reference()? }))
        }
        Product::QrisIssuer => post(
            format!("/api/v2.0/qris/status/{account}"),
            json!({ "reference_number": reference()?, "scope": "issuer" }),
        ),
        Product::Va => get(format!("/api/v1.0/va-transactions/{account}/{}", path_segment(id)?)),
        Product::Qris => get(format!("/api/v1.0/qris-dynamic/{account}?reff_no={}", query_value(id)?)),
        Product::PaymentLink => get(format!("/api/v1.0/payment-link-histories/{account}?reff_no={}", query_value(id)?)),
        Product::Ewallet => get(format!("/api/v1.0/ewallet-native/{account}/inquiry-status/{}", path_segment(id)?)),
        Product::DirectDebit => get(format!("/api/v2.0/direct-debit/transactions/{}", path_segment(id)?)),
        Product::Settlement | Product::SettlementRefund | Product::SubscriptionBill | Product::SubscriptionPlan => {
            return None
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The transaction's status, normalised as a callback's would be (the whole answer is
    /// the caller's to keep).
    Status {
        status: String,
        /// `transaction_status.code` (money-out), when there is one.
        status_code: Option<String>,
        response_code: Option<String>,
    },
    /// `SP009`/`SP008`/HTTP 404: Singapay does not know the transaction (yet).
    NotFound { response_code: Option<String> },
    /// `SP005`, `SP002`, `SP019`, HTTP 5xx, a timeout: ask again later.
    RetryLater { reason: String },
    /// HTTP 401 or `SP013`: the token was refused; get a new one and ask once more.
    TokenRejected,
    /// HTTP 403, `SP017` (IP not whitelisted), `SP403` (account of another credential),
    /// `SP015`: asking again will not help until someone fixes the configuration.
    Forbidden { cause: String },
    /// Anything else (`SP018`, `SP020`, a body we cannot read): recorded, asked again later.
    Unreadable { reason: String },
}

/// Reads an inquiry's answer, leniently: v1 (`{status, success, data}`) and v2
/// (`{response_code, response_message, data}`) envelopes, list answers (a lookup by
/// reference), strings for numbers.
pub fn read_answer(product: Product, http_status: u16, body: &[u8]) -> Answer {
    let v = json::parse(body).ok().map(|p| p.value);
    let code = v
        .as_ref()
        .and_then(|v| v.get("response_code").or_else(|| v.at(&["error", "code"])))
        .and_then(text)
        .map(|c| c.trim().to_ascii_uppercase());
    let message = || v.as_ref().and_then(error_message).unwrap_or_else(|| excerpt(body));
    match code.as_deref() {
        Some("SP013") => return Answer::TokenRejected,
        Some(c @ ("SP017" | "SP403" | "SP015")) => return Answer::Forbidden { cause: format!("{c}: {}", message()) },
        Some("SP009" | "SP008") => return Answer::NotFound { response_code: code },
        Some(c @ ("SP005" | "SP002" | "SP019")) => return Answer::RetryLater { reason: format!("{c}: {}", message()) },
        _ => {}
    }
    match http_status {
        401 => return Answer::TokenRejected,
        403 => return Answer::Forbidden { cause: format!("HTTP 403: {}", message()) },
        404 => return Answer::NotFound { response_code: code },
        s if s >= 500 || s == 429 => return Answer::RetryLater { reason: format!("HTTP {s}: {}", message()) },
        200..=299 => {}
        s => return Answer::Unreadable { reason: format!("HTTP {s}: {}", message()) },
    }
    if code.as_deref().is_some_and(|c| c != "SP000") {
        return Answer::Unreadable { reason: message() };
    }
    let Some(data) = v.as_ref().and_then(|v| v.get("data")) else {
        return Answer::Unreadable { reason: format!("no data: {}", excerpt(body)) };
    };
    // A lookup by reference answers a list (or a page of one).
    let data = match data.as_array().or_else(|| data.get("data").and_then(Value::as_array)) {
        Some(list) => match list.first().filter(|f| f.is_object()) {
            Some(first) => first,
            None => return Answer::NotFound { response_code: code },
        },
        None => data,
    };
    // Money-out says it in transaction_status.code (as its callbacks do); money-in in a
    // status string.
    let money_out = product.is_money_out();
    // A code sent as a number (3) has lost its leading zero ("03").
    let status_code = data.at(&["transaction_status", "code"]).and_then(text).map(|c| match c.as_bytes() {
        [d] if d.is_ascii_digit() => format!("0{c}"),
        _ => c,
    });
    let status = if money_out {
        status_code.as_deref().and_then(status::status_from_code).map(str::to_owned)
    } else {
        // `status_computed` takes expiry into account (`status` may still say `open`).
        ["status_computed", "status"]
            .iter()
            .filter_map(|k| data.get(k).and_then(text))
            .find_map(|s| status::status_from_money_in(&s).map(str::to_owned))
    };
    match status {
        Some(status) => Answer::Status { status, status_code, response_code: code },
        None => Answer::Unreadable { reason: format!("no status Singapay's model knows in: {}", excerpt(body)) },
    }
}

/// A string, or a number written as one (Singapay sends both), trimmed and non-empty.
fn text(v: &Value) -> Option<String> {
    v.as_text().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn number(v: &Value) -> Option<u64> {
    v.as_text()?.trim().parse().ok()
}

fn error_message(v: &Value) -> Option<String> {
    ["response_message", "message"]
        .iter()
        .find_map(|k| v.get(k).and_then(text))
        .or_else(|| v.at(&["error", "message"]).and_then(text))
}

/// The start of a body we could not read, for a log line or a record.
fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    if s.trim().is_empty() {
        "(empty body)".into()
    } else {
        s
    }
}

/// An identifier as one path segment: refused if it could leave the segment.
fn path_segment(s: &str) -> Option<&str> {
    let ok = !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (ok && s != "." && s != "..").then_some(s)
}

fn query_value(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 128 {
        return None;
    }
    Some(
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_token_is_signed_with_the_jakarta_date() {
        // 23:30 UTC on 21 Nov is 06:30 on 22 Nov in Jakarta.
        let late = Utc.with_ymd_and_hms(2026, 11, 21, 23, 30, 0).unwrap();
        assert_eq!(jakarta_date(late), "20261122");
        assert_eq!(jakarta_date(Utc.with_ymd_and_hms(2026, 11, 21, 16, 59, 59).unwrap()), "20261121");
        // Independent HMAC of the documented string (not our function's output).
        let mut mac = Hmac::<Sha512>::new_from_slice(b"secret").unwrap();
        mac.update(b"client_secret_20261122");
        assert_eq!(token_signature("client", "secret", late), hex::encode(mac.finalize().into_bytes()));
    }

    #[test]
    fn token_answers_are_read_leniently() {
        let ok = br#"{"status":200,"success":true,"data":{"access_token":"abc","token_type":"Bearer","expires_in":"216000"}}"#;
        assert_eq!(read_token(200, ok), Ok(Token { access_token: "abc".into(), expires_in_secs: 216_000 }));
        let n = br#"{"data":{"access_token":"abc","expires_in":900}}"#;
        assert_eq!(read_token(200, n).unwrap().expires_in_secs, 900);
        let bad = br#"{"status":401,"success":false,"error":{"code":401,"message":"Invalid credentials"}}"#;
        assert_eq!(read_token(401, bad), Err(TokenRefused::Credentials("Invalid credentials".into())));
        assert!(
            matches!(read_token(403, b"Your IP address (1.2.3.4) is not registered"), Err(TokenRefused::Forbidden(m)) if m.contains("not registered"))
        );
        assert!(matches!(read_token(502, b""), Err(TokenRefused::Other(_))));
    }

    #[test]
    fn each_product_is_asked_where_singapay_answers() {
        let s = |product, key_id, singapay_id, merchant_reference| Subject {
            product,
            key_id,
            singapay_id,
            merchant_reference,
        };
        let r = request(&s(Product::Disbursement, "T1", Some("T1"), Some("REF-1")), "01ACC").unwrap();
        assert_eq!((r.method, r.path.as_str()), (Method::Post, "/api/v2.0/disbursement/01ACC/inquiry-status"));
        assert_eq!(r.body, Some(json!({"reference_number": "REF-1"})));
        assert!(request(&s(Product::Disbursement, "T1", None, None), "01ACC").is_none(), "no reference, no question");
        let r = request(&s(Product::Va, "VA-20251024-1", None, None), "01ACC").unwrap();
        assert_eq!(r.path, "/api/v1.0/va-transactions/01ACC/VA-20251024-1");
        let r = request(&s(Product::PaymentLink, "PL 1/2", None, None), "01ACC").unwrap();
        assert_eq!(r.path, "/api/v1.0/payment-link-histories/01ACC?reff_no=PL%201%2F2");
        assert!(request(&s(Product::Va, "../x", None, None), "01ACC").is_none());
        for p in [Product::Settlement, Product::SettlementRefund, Product::SubscriptionBill, Product::SubscriptionPlan]
        {
            assert!(!can_ask(p));
            assert!(request(&s(p, "1", Some("1"), Some("R")), "01ACC").is_none());
        }
    }

    #[test]
    fn answers_are_read_from_either_envelope() {
        let v2 = br#"{"response_code":"SP000","response_message":"Successfully","data":{"transaction_id":"T1","transaction_status":{"code":"00","desc":"Success"},"processed_timestamp":""}}"#;
        match read_answer(Product::Disbursement, 200, v2) {
            Answer::Status { status, status_code, .. } => {
                assert_eq!((status.as_str(), status_code.as_deref()), ("succeeded", Some("00")))
            }
            other => panic!("{other:?}"),
        }
        let pending = br#"{"response_code":"SP000","data":{"transaction_status":{"code":3,"desc":"Pending"}}}"#;
        assert!(
            matches!(read_answer(Product::Disbursement, 200, pending), Answer::Status { status, .. } if status == "pending")
        );
        let v1 = br#"{"status":200,"success":true,"data":{"id":"5","status":"paid"}}"#;
        assert!(matches!(read_answer(Product::Va, 200, v1), Answer::Status { status, .. } if status == "succeeded"));
        let list = br#"{"status":200,"success":true,"data":[{"id":7,"status":"expired"}]}"#;
        assert!(
            matches!(read_answer(Product::PaymentLink, 200, list), Answer::Status { status, .. } if status == "expired")
        );
        let empty = br#"{"status":200,"success":true,"data":[]}"#;
        assert!(matches!(read_answer(Product::PaymentLink, 200, empty), Answer::NotFound { .. }));
        let nf = br#"{"response_code":"SP009","response_message":"Transaction Not Found","data":null}"#;
        assert!(matches!(read_answer(Product::Disbursement, 400, nf), Answer::NotFound { .. }));
        let timeout = br#"{"response_code":"SP005","response_message":"Timeout"}"#;
        assert!(matches!(read_answer(Product::EwalletTopup, 400, timeout), Answer::RetryLater { .. }));
        let token = br#"{"response_code":"SP013","response_message":"Unauthorized"}"#;
        assert_eq!(read_answer(Product::Disbursement, 401, token), Answer::TokenRejected);
        assert_eq!(read_answer(Product::Va, 401, b""), Answer::TokenRejected);
        let ip = br#"{"response_code":"SP017","response_message":"Unauthorized IP"}"#;
        assert!(
            matches!(read_answer(Product::Disbursement, 403, ip), Answer::Forbidden { cause } if cause.starts_with("SP017"))
        );
        assert!(matches!(read_answer(Product::Va, 403, b"forbidden"), Answer::Forbidden { .. }));
        assert!(matches!(read_answer(Product::Va, 503, b"<html>"), Answer::RetryLater { .. }));
        assert!(matches!(read_answer(Product::Va, 200, b"<html>"), Answer::Unreadable { .. }));
        let unknown = br#"{"response_code":"SP000","data":{"transaction_status":{"code":"42"}}}"#;
        assert!(matches!(read_answer(Product::Disbursement, 200, unknown), Answer::Unreadable { .. }));
    }

    /// QRIS, payment links and e-wallet checkouts say `open` until paid; `status_computed`
    /// says `expired` once the code or link has expired while `status` may still say `open`.
    #[test]
    fn open_money_in_is_pending_unless_computed_expired() {
        let status = |body: &[u8]| match read_answer(Product::Qris, 200, body) {
            Answer::Status { status, .. } => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(br#"{"status":200,"success":true,"data":[{"id":1,"status":"open"}]}"#), "pending");
        assert_eq!(
            status(br#"{"status":200,"success":true,"data":[{"id":1,"status":"open","status_computed":"expired","is_expired":true}]}"#),
            "expired"
        );
        assert_eq!(status(br#"{"status":200,"success":true,"data":{"id":1,"status":"settled"}}"#), "succeeded");
    }
}
