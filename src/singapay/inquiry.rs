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
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub access_token: String,
    pub expires_in_secs: u64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("expires_in_secs", &self.expires_in_secs)
            .finish()
    }
}

/// How long a token is used when its answer gives no life (`expires_in` missing, `"0"`,
/// negative or unreadable): the SDKs keep such a token briefly rather than refuse it.
pub const SHORT_TOKEN_SECS: u64 = 30;
/// The longest life believed (Singapay's tokens live 216,000 s): a larger `expires_in` is
/// cut to this.
pub const MAX_TOKEN_SECS: u64 = 7 * 86_400;

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefused {
    /// HTTP 401: the client id, secret, partner id or signature (its date) is wrong.
    Credentials(String),
    /// HTTP 403 or `SP017`: this machine's IP is not whitelisted for the merchant.
    Forbidden(String),
    /// Anything else (5xx, a body that is not the documented envelope): try again later.
    Other(String),
}

/// Reads the token endpoint's answer: the v1 envelope `{"status":200,"success":true,"data":
/// {"access_token":"…","expires_in":"216000"}}` or the flat `{"access_token":…,
/// "expires_in":…}`; `expires_in` a string or a number. A token without a usable life is
/// used for [`SHORT_TOKEN_SECS`]; a huge one for at most [`MAX_TOKEN_SECS`].
///
/// Never quotes the body: a token endpoint's answer may hold a token. Only the envelope's
/// own message (bounded, NUL-free) is kept for a refusal.
pub fn read_token(http_status: u16, body: &[u8]) -> Result<Token, TokenRefused> {
    let v = json::parse(body).ok().map(|p| p.value);
    let code = v.as_ref().and_then(response_code);
    let message = || {
        let m = v.as_ref().and_then(error_message).map(|m| bounded(&m));
        match m {
            Some(m) => format!("HTTP {http_status}: {m}"),
            None => format!("HTTP {http_status}"),
        }
    };
    let ip_refused = code.as_deref() == Some("SP017")
        || (http_status == 403 && String::from_utf8_lossy(&body[..body.len().min(512)]).contains("IP address"));
    if ip_refused {
        let said = v.as_ref().and_then(error_message).map(|m| format!(" ({})", bounded(&m))).unwrap_or_default();
        return Err(TokenRefused::Forbidden(format!(
            "HTTP {http_status}: this machine's IP address is not registered with Singapay{said}"
        )));
    }
    match http_status {
        401 => return Err(TokenRefused::Credentials(message())),
        403 => return Err(TokenRefused::Forbidden(message())),
        200..=299 => {}
        _ => return Err(TokenRefused::Other(message())),
    }
    let field = |name: &str| {
        v.as_ref().and_then(|v| v.at(&["data", name]).or_else(|| v.get(name))).filter(|f| !matches!(f, Value::Null))
    };
    let Some(access_token) = field("access_token").and_then(text) else {
        return Err(TokenRefused::Other(format!("{}: no access_token in the answer", message())));
    };
    // A token goes into a header: one a header cannot carry would fail every question.
    if access_token.len() > 4096 || !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenRefused::Other(format!("{}: the access_token is not a header value", message())));
    }
    let life = field("expires_in").and_then(|e| e.as_text()).and_then(|e| {
        let e = e.trim();
        e.parse::<i128>().ok().or_else(|| e.parse::<f64>().ok().filter(|f| f.is_finite()).map(|f| f as i128))
    });
    let expires_in_secs = match life {
        Some(secs) if secs > 0 => u64::try_from(secs).unwrap_or(u64::MAX).min(MAX_TOKEN_SECS),
        _ => SHORT_TOKEN_SECS,
    };
    Ok(Token { access_token, expires_in_secs })
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

/// One request to make.
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

/// The identifier an inquiry about `s` names first: our `reference_number` for money-out,
/// Singapay's transaction id for a VA payment, Singapay's numeric id for a QRIS payment (its
/// `reff_no` when the id is not known: the list is searched for it), the attempt's `reff_no`
/// for a payment link (searched for, then read by its id), Singapay's id for an e-wallet
/// checkout, the binding id for direct debit. `None` when the product has no inquiry or
/// the identifier is not known.
pub fn identifier<'a>(s: &Subject<'a>) -> Option<&'a str> {
    let id = match s.product {
        Product::Disbursement | Product::EwalletTopup | Product::QrisIssuer => s.merchant_reference?,
        Product::Qris => s.singapay_id.filter(|id| path_segment(id).is_some()).unwrap_or(s.key_id),
        Product::Va | Product::PaymentLink | Product::DirectDebit => s.key_id,
        Product::Ewallet => s.singapay_id?,
        Product::Settlement | Product::SettlementRefund | Product::SubscriptionBill | Product::SubscriptionPlan => {
            return None
        }
    };
    (!id.is_empty() && id.len() <= 128).then_some(id)
}

/// How an answer's status is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// `transaction_status.code` (`00`…`07`): disbursements, e-wallet top-ups, QRIS payments.
    MoneyOut,
    /// `status_computed`/`status` words (`paid`, `open`, `expired`…): VA, QRIS, payment
    /// links, e-wallet checkouts, direct-debit charges (`SUCCESS`, `PENDING`…).
    MoneyIn,
    /// A direct-debit binding's own status (`PENDING_AUTH`, `ACTIVE`…), lower-cased, as its
    /// callbacks are.
    Binding,
}

impl Reading {
    pub fn of(product: Product) -> Reading {
        match product {
            p if p.is_money_out() => Reading::MoneyOut,
            Product::DirectDebit => Reading::Binding,
            _ => Reading::MoneyIn,
        }
    }
}

/// The fields of an answer that name its record, and the value each must have for the
/// answer to be about the record asked about. A field the answer does not carry is not
/// compared; one it carries with another value makes the answer a [`Answer::Mismatch`].
pub type Identity = Vec<(&'static str, String)>;

/// How to find one record's status.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// One read; the answer must be about `identity`.
    Read { request: InquiryRequest, identity: Identity },
    /// A partial-match list (`?reff_no=`, newest first, 25 a page): paged through for the
    /// rows whose `reff_no` equals ours exactly; one such row is then read by its id
    /// (`read_prefix` + id), never the list's first row.
    Search { list: String, reff_no: String, read_prefix: String },
}

impl Lookup {
    /// The first request this lookup makes (what `reconcile --dry-run` shows).
    pub fn first_request(&self) -> InquiryRequest {
        match self {
            Lookup::Read { request, .. } => request.clone(),
            Lookup::Search { list, .. } => InquiryRequest { method: Method::Get, path: list_page(list, 1), body: None },
        }
    }
}

/// Most list pages read in one search (25 rows each).
pub const MAX_LIST_PAGES: u32 = 20;
/// Rows in a full list page.
pub const LIST_PAGE_ROWS: usize = 25;

/// A list path with its page.
pub fn list_page(list: &str, page: u32) -> String {
    format!("{list}&page={page}")
}

/// How to find `s`'s status on sub-account `account_id`, or `None` when the product has no
/// inquiry or we lack the identifier it needs ([`identifier`]).
pub fn lookup(s: &Subject<'_>, account_id: &str) -> Option<Lookup> {
    let account = path_segment(account_id)?;
    let id = identifier(s)?;
    let post = |path: String, body: serde_json::Value, identity: Identity| Lookup::Read {
        request: InquiryRequest { method: Method::Post, path, body: Some(body) },
        identity,
    };
    let get = |path: String, identity: Identity| Lookup::Read {
        request: InquiryRequest { method: Method::Get, path, body: None },
        identity,
    };
    // Money-out's reference_number is at most 64 characters.
    let reference = || (id.len() <= 64).then_some(id);
    // Money-out keys are Singapay's transaction_id; the reference is the merchant's.
    let by_reference = || vec![("reference_number", id.to_owned()), ("transaction_id", s.key_id.to_owned())];
    let search = |list: &str, read: &str| {
        Some(Lookup::Search {
            list: format!("/api/v1.0/{list}/{account}?reff_no={}", query_value(s.key_id)?),
            reff_no: s.key_id.to_owned(),
            read_prefix: format!("/api/v1.0/{read}/{account}/"),
        })
    };
    Some(match s.product {
        Product::Disbursement => post(
            format!("/api/v2.0/disbursement/{account}/inquiry-status"),
            json!({ "reference_number": reference()? }),
            by_reference(),
        ),
        Product::EwalletTopup => post(
            format!("/api/v2.0/ewallet/{account}/inquiry-status"),
            json!({ "reference_number": reference()? }),
            by_reference(),
        ),
        Product::QrisIssuer => post(
            format!("/api/v2.0/qris/status/{account}"),
            json!({ "reference_number": reference()?, "scope": "issuer" }),
            by_reference(),
        ),
        Product::Va => get(
            format!("/api/v1.0/va-transactions/{account}/{}", path_segment(id)?),
            vec![("transaction_id", id.to_owned())],
        ),
        // By the id its callback gave (`data.transaction.id`); without one, searched.
        Product::Qris => match s.singapay_id.and_then(path_segment) {
            Some(qris_id) => get(
                format!("/api/v1.0/qris-dynamic/{account}/show/{qris_id}"),
                vec![("id", qris_id.to_owned()), ("reff_no", s.key_id.to_owned())],
            ),
            None => search("qris-dynamic", "qris-dynamic")?.with_show(),
        },
        // A payment attempt's history id is not in its callback: searched by reff_no.
        Product::PaymentLink => search("payment-link-histories", "payment-link-histories")?,
        Product::Ewallet => get(
            format!("/api/v1.0/ewallet-native/{account}/inquiry-status/{}", path_segment(id)?),
            vec![("id", id.to_owned()), ("reff_no", s.key_id.to_owned())],
        ),
        Product::DirectDebit => {
            get(format!("/api/v2.0/direct-debit/binding/{}", path_segment(id)?), vec![("binding_id", id.to_owned())])
        }
        Product::Settlement | Product::SettlementRefund | Product::SubscriptionBill | Product::SubscriptionPlan => {
            return None
        }
    })
}

impl Lookup {
    /// QRIS records are read at `…/show/{id}`.
    fn with_show(self) -> Lookup {
        match self {
            Lookup::Search { list, reff_no, read_prefix } => {
                Lookup::Search { list, reff_no, read_prefix: format!("{read_prefix}show/") }
            }
            other => other,
        }
    }
}

/// The first request of [`lookup`] (a question built by hand: tools and tests).
pub fn request(s: &Subject<'_>, account_id: &str) -> Option<InquiryRequest> {
    lookup(s, account_id).map(|l| l.first_request())
}

/// The read of a direct-debit charge (`GET /api/v2.0/direct-debit/transactions/{id}`), read
/// with [`Reading::MoneyIn`]. No callback creates a charge, so nothing stored asks it yet.
pub fn charge_lookup(transaction_id: &str) -> Option<Lookup> {
    let id = path_segment(transaction_id)?;
    Some(Lookup::Read {
        request: InquiryRequest {
            method: Method::Get,
            path: format!("/api/v2.0/direct-debit/transactions/{id}"),
            body: None,
        },
        identity: vec![("transaction_id", id.to_owned())],
    })
}

/// The read of one row a search found.
pub fn read_found(read_prefix: &str, id: &str, reff_no: &str) -> Option<Lookup> {
    let id = path_segment(id)?;
    Some(Lookup::Read {
        request: InquiryRequest { method: Method::Get, path: format!("{read_prefix}{id}"), body: None },
        identity: vec![("id", id.to_owned()), ("reff_no", reff_no.to_owned())],
    })
}

/// Why a question could not be answered here and who is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This machine's IP (`SP017`, a 403 naming the IP address): every question with this
    /// credential is refused.
    Ip,
    /// This account (`SP403` "Access denied to this account.", `SP015`, another 403): it
    /// belongs to another credential, or the credential lacks the permission.
    Account,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The record's status, normalised as a callback's would be (the whole answer is the
    /// caller's to keep), and the identifier it was recognised by.
    Status {
        status: String,
        /// `transaction_status.code` (money-out), when there is one.
        status_code: Option<String>,
        response_code: Option<String>,
        /// `field=value` of the answer that names the record (`reference_number=REF-1`), or
        /// `asked:field=value` when the answer names none (the record read by that id).
        identified_by: Option<String>,
    },
    /// The answer is about another record than the one asked about: never applied.
    Mismatch { found: String, response_code: Option<String> },
    /// A search found several records with our `reff_no`, or did not end within
    /// [`MAX_LIST_PAGES`].
    Ambiguous { reason: String },
    /// `SP009`/`SP008`/HTTP 404, an empty list: Singapay does not know the record (yet).
    NotFound { response_code: Option<String> },
    /// `SP005`, `SP002`, `SP019`, HTTP 5xx/429, a timeout: ask again later.
    RetryLater { reason: String },
    /// HTTP 401 or `SP013`: the token was refused; get a new one and ask once more.
    TokenRejected,
    /// HTTP 403, `SP017`, `SP403`, `SP015`: asking again will not help until someone fixes
    /// the configuration (for this credential or this account).
    Forbidden { cause: String, refused: Refused },
    /// Anything else (`SP018`, `SP020`, a body we cannot read, a cut-off body): recorded,
    /// asked again later, up to a limit.
    Unreadable { reason: String },
}

impl Answer {
    /// How the answer is recorded (`inquiries.answer`).
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Status { .. } => "status",
            Answer::Mismatch { .. } => "mismatch",
            Answer::Ambiguous { .. } => "ambiguous",
            Answer::NotFound { .. } => "not_found",
            Answer::RetryLater { .. } => "retry_later",
            Answer::TokenRejected => "token_rejected",
            Answer::Forbidden { .. } => "forbidden",
            Answer::Unreadable { .. } => "unreadable",
        }
    }
}

/// The `response_code` of either envelope (`error.code` in v1's), upper-cased.
fn response_code(v: &Value) -> Option<String> {
    // A code is a short word (`SP000`, `401`): anything else is not one, and never reaches a
    // log line or a column.
    v.get("response_code")
        .or_else(|| v.at(&["error", "code"]))
        .and_then(text)
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| c.len() <= 32 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
}

/// Reads a record's status, or `None` when `data` has none Singapay's model knows.
fn read_status(reading: Reading, data: &Value) -> Option<(String, Option<String>)> {
    match reading {
        Reading::MoneyOut => {
            // A code sent as a number (3) has lost its leading zero ("03").
            let code = data.at(&["transaction_status", "code"]).and_then(text).map(|c| match c.as_bytes() {
                [d] if d.is_ascii_digit() => format!("0{c}"),
                _ => c,
            })?;
            status::status_from_code(&code).map(|s| (s.to_owned(), Some(code)))
        }
        // `status_computed` takes expiry into account (`status` may still say `open`).
        Reading::MoneyIn => ["status_computed", "status"]
            .iter()
            .filter_map(|k| data.get(k).and_then(text))
            .find_map(|s| status::status_from_money_in(&s.to_ascii_lowercase()).map(|s| (s.to_owned(), None))),
        Reading::Binding => data
            .get("status")
            .and_then(text)
            .filter(|s| s.chars().all(|c| c.is_alphanumeric() || "_- ".contains(c)))
            .and_then(|s| status::own_status(&s))
            .map(|s| (s, None)),
    }
}

/// Compares a record with the identity asked about: `Ok(Some("field=value"))` for the first
/// identifying field it carries (all it carries agree), `Ok(None)` when it carries none,
/// `Err("field=value")` for the first that differs.
fn identify(data: &Value, identity: &[(&'static str, String)]) -> Result<Option<String>, String> {
    let mut first = None;
    for (field, expected) in identity {
        let Some(found) = data.get(field).and_then(text) else { continue };
        if found != *expected {
            return Err(format!("{field}={}", bounded(&found)));
        }
        first.get_or_insert_with(|| format!("{field}={}", bounded(&found)));
    }
    Ok(first)
}

/// Reads a record's answer, leniently: v1 (`{status, success, data}`) and v2
/// (`{response_code, response_message, data}`) envelopes, strings for numbers. A readable
/// status is the record's whatever the `response_code` or HTTP status (a failed transfer is
/// answered `SP001` with code `06` at HTTP 400); it is returned only when the record is the
/// one asked about. `truncated`: the body was cut off at the size limit.
pub fn read_answer(reading: Reading, identity: &[(&'static str, String)], http_status: u16, body: &[u8]) -> Answer {
    read_answer_bounded(reading, identity, http_status, body, false)
}

pub fn read_answer_bounded(
    reading: Reading,
    identity: &[(&'static str, String)],
    http_status: u16,
    body: &[u8],
    truncated: bool,
) -> Answer {
    if truncated {
        return Answer::Unreadable { reason: format!("HTTP {http_status}: the answer was longer than the limit") };
    }
    let v = json::parse(body).ok().map(|p| p.value);
    let code = v.as_ref().and_then(response_code);
    let message = || v.as_ref().and_then(error_message).map_or_else(|| excerpt(body), |m| bounded(&m));
    // A list where one record was expected: only a row about our record counts.
    let data = v.as_ref().and_then(|v| v.get("data")).and_then(|d| match d.as_array() {
        Some(rows) => {
            let ours: Vec<&Value> = rows.iter().filter(|r| r.is_object() && identify(r, identity).is_ok()).collect();
            match ours.as_slice() {
                [one] => Some(*one),
                _ => rows.first().filter(|_| !rows.is_empty() && ours.is_empty()),
            }
        }
        None => d.is_object().then_some(d),
    });
    if let Some(data) = data {
        if let Some((status, status_code)) = read_status(reading, data) {
            return match identify(data, identity) {
                // An answer that names no record is the one asked for by its path or body.
                Ok(identified_by) => Answer::Status {
                    status,
                    status_code,
                    response_code: code,
                    identified_by: identified_by.or_else(|| identity.first().map(|(f, v)| format!("asked:{f}={v}"))),
                },
                Err(found) => Answer::Mismatch { found, response_code: code },
            };
        }
    }
    if v.as_ref().and_then(|v| v.get("data")).and_then(Value::as_array).is_some_and(|rows| rows.is_empty()) {
        return Answer::NotFound { response_code: code };
    }
    match code.as_deref() {
        Some("SP013") => return Answer::TokenRejected,
        Some(c @ "SP017") => return Answer::Forbidden { cause: format!("{c}: {}", message()), refused: Refused::Ip },
        Some(c @ ("SP403" | "SP015")) => {
            return Answer::Forbidden { cause: format!("{c}: {}", message()), refused: Refused::Account }
        }
        Some("SP009" | "SP008") => return Answer::NotFound { response_code: code },
        // Validation, an account id Singapay does not know: not about the record.
        Some(c @ ("SP018" | "SP020")) => return Answer::Unreadable { reason: format!("{c}: {}", message()) },
        Some(c @ ("SP005" | "SP002" | "SP019")) => return Answer::RetryLater { reason: format!("{c}: {}", message()) },
        _ => {}
    }
    match http_status {
        401 => return Answer::TokenRejected,
        403 => {
            let m = message();
            let refused = if m.contains("IP address") { Refused::Ip } else { Refused::Account };
            return Answer::Forbidden { cause: format!("HTTP 403: {m}"), refused };
        }
        404 => return Answer::NotFound { response_code: code },
        s if s >= 500 || s == 429 => return Answer::RetryLater { reason: format!("HTTP {s}: {}", message()) },
        200..=299 => {}
        s => return Answer::Unreadable { reason: format!("HTTP {s}: {}", message()) },
    }
    if code.as_deref().is_some_and(|c| c != "SP000") {
        return Answer::Unreadable { reason: message() };
    }
    match data {
        None => Answer::Unreadable { reason: format!("no data: {}", excerpt(body)) },
        Some(_) => Answer::Unreadable { reason: format!("no status Singapay's model knows in: {}", excerpt(body)) },
    }
}

/// One page of a partial-match list.
#[derive(Debug, Clone, PartialEq)]
pub enum ListPage {
    Rows {
        /// The ids of the rows whose `reff_no` equals ours exactly.
        exact: Vec<String>,
        /// Rows on the page.
        rows: usize,
        /// Whether another page follows (from the pagination, else: the page was full).
        more: bool,
    },
    /// Not a list: what the answer was (a fault, a refusal…).
    Other(Answer),
}

/// Reads one page of a `?reff_no=` list: only rows whose `reff_no` equals ours count.
pub fn read_list(http_status: u16, body: &[u8], reff_no: &str, truncated: bool) -> ListPage {
    let v = json::parse(body).ok().map(|p| p.value).filter(|_| !truncated);
    let rows = v.as_ref().filter(|_| (200..300).contains(&http_status)).and_then(|v| {
        let data = v.get("data")?;
        data.as_array().or_else(|| data.get("data").and_then(Value::as_array))
    });
    let Some(rows) = rows else {
        // A fault, or not the list it should be: read as any answer (never as a status).
        return ListPage::Other(match read_answer_bounded(Reading::MoneyIn, &[], http_status, body, truncated) {
            Answer::Status { .. } | Answer::Mismatch { .. } => {
                Answer::Unreadable { reason: format!("HTTP {http_status}: a list was expected: {}", excerpt(body)) }
            }
            other => other,
        });
    };
    let exact: Vec<String> = rows
        .iter()
        .filter(|r| r.get("reff_no").and_then(text).is_some_and(|r| r == reff_no))
        .filter_map(|r| r.get("id").and_then(text))
        .map(|id| bounded(&id))
        .collect();
    let v = v.as_ref().expect("rows came from it");
    let page = |names: &[&str]| {
        names.iter().find_map(|n| {
            [&["pagination", *n][..], &["meta", *n][..], &["data", *n][..], &[*n][..]]
                .iter()
                .find_map(|path| v.at(path).and_then(|x| x.as_text()).and_then(|x| x.trim().parse::<u64>().ok()))
        })
    };
    let more = match (page(&["current_page"]), page(&["last_page", "total_pages"])) {
        (Some(current), Some(last)) => current < last,
        _ => rows.len() >= LIST_PAGE_ROWS,
    };
    ListPage::Rows { exact, rows: rows.len(), more }
}

/// A string, or a number written as one (Singapay sends both), trimmed and non-empty.
fn text(v: &Value) -> Option<String> {
    v.as_text().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn error_message(v: &Value) -> Option<String> {
    ["response_message", "message"]
        .iter()
        .find_map(|k| v.get(k).and_then(text))
        .or_else(|| v.at(&["error", "message"]).and_then(text))
}

/// The longest piece of an answer's text kept in a log line or a column.
pub const MAX_TEXT_CHARS: usize = 200;

/// Text from an answer, fit to log and store: at most [`MAX_TEXT_CHARS`] characters,
/// control characters (NUL included) replaced.
pub fn bounded(s: &str) -> String {
    let mut out: String =
        s.chars().take(MAX_TEXT_CHARS).map(|c| if c.is_control() && c != ' ' { '\u{fffd}' } else { c }).collect();
    if s.chars().count() > MAX_TEXT_CHARS {
        out.push('…');
    }
    out
}

/// The start of a body we could not read, for a log line or a record.
fn excerpt(body: &[u8]) -> String {
    let s = bounded(&String::from_utf8_lossy(&body[..body.len().min(MAX_TEXT_CHARS * 4)]));
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
    fn a_token_is_never_in_debug_output() {
        let t = read_token(200, br#"{"data":{"access_token":"tok-visible-123","expires_in":"60"}}"#).unwrap();
        assert!(!format!("{t:?}").contains("tok-visible-123"));
    }

    #[test]
    fn token_answers_are_read_leniently() {
        let ok = br#"{"status":200,"success":true,"data":{"access_token":"abc","token_type":"Bearer","expires_in":"216000"}}"#;
        assert_eq!(read_token(200, ok), Ok(Token { access_token: "abc".into(), expires_in_secs: 216_000 }));
        let n = br#"{"data":{"access_token":"abc","expires_in":900}}"#;
        assert_eq!(read_token(200, n).unwrap().expires_in_secs, 900);
        let bad = br#"{"status":401,"success":false,"error":{"code":401,"message":"Invalid credentials"}}"#;
        assert_eq!(read_token(401, bad), Err(TokenRefused::Credentials("HTTP 401: Invalid credentials".into())));
        // The flat form, lives given as "0", missing, negative or huge.
        let flat = br#"{"access_token":"abc","token_type":"Bearer","expires_in":"0"}"#;
        assert_eq!(read_token(200, flat), Ok(Token { access_token: "abc".into(), expires_in_secs: SHORT_TOKEN_SECS }));
        assert_eq!(read_token(200, br#"{"access_token":"abc"}"#).unwrap().expires_in_secs, SHORT_TOKEN_SECS);
        assert_eq!(
            read_token(200, br#"{"data":{"access_token":"a","expires_in":-5}}"#).unwrap().expires_in_secs,
            SHORT_TOKEN_SECS
        );
        let huge = br#"{"data":{"access_token":"a","expires_in":18446744073709551615999}}"#;
        assert_eq!(read_token(200, huge).unwrap().expires_in_secs, MAX_TOKEN_SECS);
        // SP017 is the IP whitelist at 401 as at 403.
        let ip = br#"{"response_code":"SP017","response_message":"Unauthorized IP","data":null}"#;
        assert!(matches!(read_token(401, ip), Err(TokenRefused::Forbidden(_))));
        assert!(matches!(read_token(403, ip), Err(TokenRefused::Forbidden(_))));
        // A refusal never quotes the body (it may hold a token).
        let leaky = br#"{"data":{"access_token":"SECRET-TOKEN","expires_in":"x"},"status":500}"#;
        assert!(!format!("{:?}", read_token(500, leaky)).contains("SECRET-TOKEN"));
        assert!(
            matches!(read_token(403, b"Your IP address (1.2.3.4) is not registered"), Err(TokenRefused::Forbidden(m)) if m.contains("not registered"))
        );
        assert!(matches!(read_token(502, b""), Err(TokenRefused::Other(_))));
    }

    #[test]
    fn each_product_is_asked_where_singapay_answers() {
        let request = |s: &Subject<'_>, account: &str| match lookup(s, account)? {
            Lookup::Read { request, .. } => Some(request),
            Lookup::Search { .. } => None,
        };
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
        match lookup(&s(Product::PaymentLink, "PL 1/2", None, None), "01ACC").unwrap() {
            Lookup::Search { list, reff_no, read_prefix } => {
                assert_eq!(list, "/api/v1.0/payment-link-histories/01ACC?reff_no=PL%201%2F2");
                assert_eq!(
                    (reff_no.as_str(), read_prefix.as_str()),
                    ("PL 1/2", "/api/v1.0/payment-link-histories/01ACC/")
                );
            }
            other => panic!("{other:?}"),
        }
        let r = request(&s(Product::Qris, "INV-7", Some("7001"), None), "01ACC").unwrap();
        assert_eq!(r.path, "/api/v1.0/qris-dynamic/01ACC/show/7001");
        match lookup(&s(Product::Qris, "INV-7", None, None), "01ACC").unwrap() {
            Lookup::Search { read_prefix, .. } => assert_eq!(read_prefix, "/api/v1.0/qris-dynamic/01ACC/show/"),
            other => panic!("{other:?}"),
        }
        let r = request(&s(Product::DirectDebit, "b-1", None, None), "01ACC").unwrap();
        assert_eq!(r.path, "/api/v2.0/direct-debit/binding/b-1");
        assert!(request(&s(Product::Va, "../x", None, None), "01ACC").is_none());
        for p in [Product::Settlement, Product::SettlementRefund, Product::SubscriptionBill, Product::SubscriptionPlan]
        {
            assert!(!can_ask(p));
            assert!(lookup(&s(p, "1", Some("1"), Some("R")), "01ACC").is_none());
        }
    }

    #[test]
    fn answers_are_read_from_either_envelope() {
        let v2 = br#"{"response_code":"SP000","response_message":"Successfully","data":{"transaction_id":"T1","transaction_status":{"code":"00","desc":"Success"},"processed_timestamp":""}}"#;
        match read_answer(Reading::of(Product::Disbursement), &[], 200, v2) {
            Answer::Status { status, status_code, .. } => {
                assert_eq!((status.as_str(), status_code.as_deref()), ("succeeded", Some("00")))
            }
            other => panic!("{other:?}"),
        }
        let pending = br#"{"response_code":"SP000","data":{"transaction_status":{"code":3,"desc":"Pending"}}}"#;
        assert!(
            matches!(read_answer(Reading::of(Product::Disbursement), &[], 200, pending), Answer::Status { status, .. } if status == "pending")
        );
        let v1 = br#"{"status":200,"success":true,"data":{"id":"5","status":"paid"}}"#;
        assert!(
            matches!(read_answer(Reading::of(Product::Va), &[], 200, v1), Answer::Status { status, .. } if status == "succeeded")
        );
        let list = br#"{"status":200,"success":true,"data":[{"id":7,"status":"expired"}]}"#;
        assert!(
            matches!(read_answer(Reading::of(Product::PaymentLink), &[], 200, list), Answer::Status { status, .. } if status == "expired")
        );
        let empty = br#"{"status":200,"success":true,"data":[]}"#;
        assert!(matches!(read_answer(Reading::of(Product::PaymentLink), &[], 200, empty), Answer::NotFound { .. }));
        let nf = br#"{"response_code":"SP009","response_message":"Transaction Not Found","data":null}"#;
        assert!(matches!(read_answer(Reading::of(Product::Disbursement), &[], 400, nf), Answer::NotFound { .. }));
        let timeout = br#"{"response_code":"SP005","response_message":"Timeout"}"#;
        assert!(matches!(
            read_answer(Reading::of(Product::EwalletTopup), &[], 400, timeout),
            Answer::RetryLater { .. }
        ));
        let token = br#"{"response_code":"SP013","response_message":"Unauthorized"}"#;
        assert_eq!(read_answer(Reading::of(Product::Disbursement), &[], 401, token), Answer::TokenRejected);
        assert_eq!(read_answer(Reading::of(Product::Va), &[], 401, b""), Answer::TokenRejected);
        let ip = br#"{"response_code":"SP017","response_message":"Unauthorized IP"}"#;
        assert!(
            matches!(read_answer(Reading::of(Product::Disbursement), &[], 403, ip), Answer::Forbidden { cause, refused: Refused::Ip } if cause.starts_with("SP017"))
        );
        assert!(matches!(read_answer(Reading::of(Product::Va), &[], 403, b"forbidden"), Answer::Forbidden { .. }));
        assert!(matches!(read_answer(Reading::of(Product::Va), &[], 503, b"<html>"), Answer::RetryLater { .. }));
        assert!(matches!(read_answer(Reading::of(Product::Va), &[], 200, b"<html>"), Answer::Unreadable { .. }));
        let unknown = br#"{"response_code":"SP000","data":{"transaction_status":{"code":"42"}}}"#;
        assert!(matches!(
            read_answer(Reading::of(Product::Disbursement), &[], 200, unknown),
            Answer::Unreadable { .. }
        ));
    }

    /// QRIS, payment links and e-wallet checkouts say `open` until paid; `status_computed`
    /// says `expired` once the code or link has expired while `status` may still say `open`.
    #[test]
    fn open_money_in_is_pending_unless_computed_expired() {
        let status = |body: &[u8]| match read_answer(Reading::of(Product::Qris), &[], 200, body) {
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

    /// A status is taken only from the record asked about, and whatever the response code.
    #[test]
    fn identity_before_status_and_status_over_code() {
        let ours: Identity = vec![("reference_number", "REF-1".to_owned())];
        let failed = br#"{"response_code":"SP001","response_message":"Failed","data":{"reference_number":"REF-1","transaction_status":{"code":"06","desc":"Failed"},"processed_timestamp":""}}"#;
        match read_answer(Reading::MoneyOut, &ours, 400, failed) {
            Answer::Status { status, response_code, identified_by, .. } => {
                assert_eq!(status, "failed");
                assert_eq!(response_code.as_deref(), Some("SP001"));
                assert_eq!(identified_by.as_deref(), Some("reference_number=REF-1"));
            }
            other => panic!("{other:?}"),
        }
        let other =
            br#"{"response_code":"SP000","data":{"reference_number":"REF-10","transaction_status":{"code":"00"}}}"#;
        assert!(
            matches!(read_answer(Reading::MoneyOut, &ours, 200, other), Answer::Mismatch { found, .. } if found == "reference_number=REF-10")
        );
        // A list where one record was expected: the row about ours, never the first.
        let qris: Identity = vec![("id", "7".to_owned()), ("reff_no", "INV-7".to_owned())];
        let rows = br#"{"status":200,"success":true,"data":[{"id":70,"reff_no":"INV-70","status":"paid"},{"id":7,"reff_no":"INV-7","status":"open"}]}"#;
        assert!(
            matches!(read_answer(Reading::MoneyIn, &qris, 200, rows), Answer::Status { status, .. } if status == "pending")
        );
        let decoy = br#"{"status":200,"success":true,"data":{"id":70,"reff_no":"INV-70","status":"paid"}}"#;
        assert!(matches!(read_answer(Reading::MoneyIn, &qris, 200, decoy), Answer::Mismatch { .. }));
        // Bindings keep their own words.
        let binding = br#"{"response_code":"SP000","data":{"binding_id":"b-1","status":"ACTIVE"}}"#;
        let b: Identity = vec![("binding_id", "b-1".to_owned())];
        assert!(
            matches!(read_answer(Reading::Binding, &b, 200, binding), Answer::Status { status, .. } if status == "active")
        );
        // A cut-off answer is never read.
        assert!(matches!(read_answer_bounded(Reading::MoneyOut, &ours, 200, failed, true), Answer::Unreadable { .. }));
    }

    #[test]
    fn lists_count_only_exact_matches() {
        let page = br#"{"status":200,"success":true,"data":[{"id":70,"reff_no":"INV-70"},{"id":7,"reff_no":"INV-7"}],"pagination":{"current_page":1,"last_page":2}}"#;
        assert_eq!(
            read_list(200, page, "INV-7", false),
            ListPage::Rows { exact: vec!["7".into()], rows: 2, more: true }
        );
        let empty = br#"{"status":200,"success":true,"data":[]}"#;
        assert_eq!(read_list(200, empty, "INV-7", false), ListPage::Rows { exact: vec![], rows: 0, more: false });
        let fault = br#"{"response_code":"SP005","response_message":"Timeout"}"#;
        assert!(matches!(read_list(400, fault, "INV-7", false), ListPage::Other(Answer::RetryLater { .. })));
        let one = br#"{"status":200,"success":true,"data":{"id":7,"reff_no":"INV-7","status":"paid"}}"#;
        assert!(matches!(read_list(200, one, "INV-7", false), ListPage::Other(Answer::Unreadable { .. })));
    }

    #[test]
    fn text_from_answers_is_bounded_and_printable() {
        let long = "x".repeat(5000);
        assert_eq!(bounded(&long).chars().count(), MAX_TEXT_CHARS + 1);
        assert!(!bounded("a\u{0}b").contains('\u{0}'));
    }
}
