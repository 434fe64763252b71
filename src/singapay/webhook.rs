//! What a verified callback says: its type, the request-level codes, and the transaction
//! state change(s) it reports. Pure: a function of the parsed body only.

use chrono::{DateTime, Utc};

use super::json::Value;
use super::status::{self, Product};
use super::time::parse_time;

/// The 13 callback types Singapay sends, plus anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookType {
    VaTransaction,
    QrisAcquirerTransaction,
    PaymentLinkTransaction,
    PaymentLinkInquiry,
    EwalletNativeTransaction,
    Disbursement,
    EwalletTopup,
    QrisIssuer,
    Settlement,
    SubscriptionCycle,
    DirectDebit,
    ProductExpiration,
    TransactionExpiration,
    Unknown,
}

impl WebhookType {
    pub const ALL: [WebhookType; 13] = [
        WebhookType::VaTransaction,
        WebhookType::QrisAcquirerTransaction,
        WebhookType::PaymentLinkTransaction,
        WebhookType::PaymentLinkInquiry,
        WebhookType::EwalletNativeTransaction,
        WebhookType::Disbursement,
        WebhookType::EwalletTopup,
        WebhookType::QrisIssuer,
        WebhookType::Settlement,
        WebhookType::SubscriptionCycle,
        WebhookType::DirectDebit,
        WebhookType::ProductExpiration,
        WebhookType::TransactionExpiration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookType::VaTransaction => "va-transaction",
            WebhookType::QrisAcquirerTransaction => "qris-acquirer-transaction",
            WebhookType::PaymentLinkTransaction => "payment-link-transaction",
            WebhookType::PaymentLinkInquiry => "payment-link-inquiry",
            WebhookType::EwalletNativeTransaction => "ewallet-native-transaction",
            WebhookType::Disbursement => "disbursement",
            WebhookType::EwalletTopup => "ewallet-topup",
            WebhookType::QrisIssuer => "qris-issuer",
            WebhookType::Settlement => "settlement",
            WebhookType::SubscriptionCycle => "subscription-cycle",
            WebhookType::DirectDebit => "direct-debit",
            WebhookType::ProductExpiration => "product-expiration",
            WebhookType::TransactionExpiration => "transaction-expiration",
            WebhookType::Unknown => "unknown",
        }
    }

    pub fn from_name(name: &str) -> Option<WebhookType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The SDKs' algorithm: exact name; `_` → `-`; known prefixes; with no usable or no
    /// known `event`, the payment-link payload shape.
    pub fn detect(body: &Value) -> WebhookType {
        let pl_type = body.at(&["data", "transaction", "type"]).and_then(Value::as_str) == Some("pl");
        let pl_method = body.at(&["data", "payment", "method"]).and_then(Value::as_str) == Some("payment_link");
        let by_shape = if pl_type || pl_method { WebhookType::PaymentLinkTransaction } else { WebhookType::Unknown };
        let event = body.get("event").and_then(Value::as_str).map(str::trim).filter(|e| !e.is_empty());
        match event.map(Self::by_event) {
            Some(WebhookType::Unknown) | None => by_shape,
            Some(t) => t,
        }
    }

    fn by_event(event: &str) -> WebhookType {
        let lower = event.to_ascii_lowercase();
        if let Some(t) = Self::from_name(&lower) {
            return t;
        }
        let hyphenated = lower.replace('_', "-");
        if let Some(t) = Self::from_name(&hyphenated) {
            return t;
        }
        if lower.starts_with("subscription.") {
            WebhookType::SubscriptionCycle
        } else if lower.starts_with("settlement.") {
            WebhookType::Settlement
        } else if hyphenated.starts_with("payment-link.inquiry") || hyphenated.starts_with("payment-link-inquiry") {
            WebhookType::PaymentLinkInquiry
        } else if hyphenated.starts_with("direct-debit") {
            WebhookType::DirectDebit
        } else {
            WebhookType::Unknown
        }
    }
}

/// One reported state of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub transaction_key: String,
    pub product: Product,
    pub singapay_id: Option<String>,
    pub merchant_reference: Option<String>,
    /// Normalised status; `None` when the delivery carries none (only inquiry is safe).
    pub status: Option<String>,
    pub transaction_status_code: Option<String>,
    /// A plain decimal string (`"250000.00"`), stored as `numeric`.
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Single(Change),
    /// Expiration sweeps: one change per listed item.
    Batch(Vec<Change>),
    /// Authentic but not understood: stored and acknowledged, never applied.
    Unrecognised(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub webhook_type: WebhookType,
    pub event: Option<String>,
    pub response_code: Option<String>,
    pub response_message: Option<String>,
    pub response_class: Option<&'static str>,
    pub envelope_status: Option<i32>,
    pub envelope_success: Option<bool>,
    pub transaction_status_code: Option<String>,
    pub transaction_status_desc: Option<String>,
    pub event_at: Option<DateTime<Utc>>,
    pub needs_inquiry: bool,
    pub subject: Subject,
}

impl Classification {
    pub fn single(&self) -> Option<&Change> {
        match &self.subject {
            Subject::Single(c) => Some(c),
            _ => None,
        }
    }
}

/// The unsigned body the dashboard's "Test" button posts:
/// `{"status":200,"success":true,"data":"VA Payment Notification testing"}`.
pub fn is_dashboard_test(body: &Value) -> bool {
    match body {
        Value::Object(members) => {
            members.len() == 3
                && matches!(body.get("status"), Some(Value::Number(n)) if n == "200")
                && body.get("success").and_then(Value::as_bool) == Some(true)
                && body.get("data").and_then(Value::as_str).is_some()
        }
        _ => false,
    }
}

/// A free-text field as the callback says it (the store bounds it and replaces what its
/// columns refuse).
fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_text).map(str::to_owned)
}

/// An identifier: a non-empty string or a number literal, short and printable (it is a
/// primary key and a btree entry).
fn ident(v: Option<&Value>) -> Option<String> {
    let s = v?.as_text()?.trim();
    (!s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control)).then(|| s.to_owned())
}

/// A plain decimal (`245000`, `"125000.00"`); anything else is left in the payload only.
fn decimal(v: Option<&Value>) -> Option<String> {
    let s = v?.as_text()?.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let ok = !int.is_empty()
        && int.len() <= 30
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 18
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(digits.contains('.') && frac.is_empty());
    ok.then(|| s.to_owned())
}

fn time_of(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str).and_then(parse_time)
}

/// `{value, currency}` objects, or a bare number.
fn money(v: Option<&Value>) -> (Option<String>, Option<String>) {
    match v {
        Some(obj @ Value::Object(_)) => (decimal(obj.get("value")), text(obj.get("currency"))),
        other => (decimal(other), None),
    }
}

pub fn classify(body: &Value) -> Classification {
    let webhook_type = WebhookType::detect(body);
    let response_code = text(body.get("response_code")).map(|c| c.trim().to_owned());
    let data = body.get("data");
    let ts = data.and_then(|d| d.get("transaction_status"));
    let mut c = Classification {
        webhook_type,
        event: text(body.get("event")),
        response_class: response_code.as_deref().map(status::response_class),
        response_code,
        response_message: text(body.get("response_message")),
        envelope_status: match body.get("status") {
            Some(Value::Number(n)) => n.parse().ok(),
            _ => None,
        },
        envelope_success: body.get("success").and_then(Value::as_bool),
        transaction_status_code: ts.and_then(|t| ident(t.get("code"))),
        transaction_status_desc: ts.and_then(|t| text(t.get("desc"))),
        event_at: time_of(body.get("timestamp")),
        needs_inquiry: false,
        subject: Subject::Unrecognised("unknown event"),
    };
    let Some(data) = data.filter(|d| d.is_object()) else {
        if webhook_type != WebhookType::Unknown {
            c.subject = Subject::Unrecognised("data is missing or not an object");
        }
        return c;
    };
    c.subject = match webhook_type {
        WebhookType::VaTransaction => money_in(data, Product::Va),
        WebhookType::QrisAcquirerTransaction => money_in(data, Product::Qris),
        WebhookType::PaymentLinkTransaction => money_in(data, Product::PaymentLink),
        WebhookType::EwalletNativeTransaction => money_in(data, Product::Ewallet),
        WebhookType::PaymentLinkInquiry => payment_link_inquiry(data, c.event.as_deref()),
        WebhookType::Disbursement => money_out(data, Product::Disbursement, &mut c),
        WebhookType::EwalletTopup => money_out(data, Product::EwalletTopup, &mut c),
        WebhookType::QrisIssuer => money_out(data, Product::QrisIssuer, &mut c),
        WebhookType::Settlement => settlement(data, c.event.as_deref().unwrap_or_default()),
        WebhookType::SubscriptionCycle => subscription(data, c.event.as_deref().unwrap_or_default()),
        WebhookType::DirectDebit => direct_debit(data),
        WebhookType::ProductExpiration => expiration(
            data,
            &[
                ("payment_links", Product::PaymentLink),
                ("virtual_accounts", Product::Va),
                ("qris_transactions", Product::Qris),
            ],
        ),
        WebhookType::TransactionExpiration => expiration(
            data,
            &[
                ("payment_link_histories", Product::PaymentLink),
                ("virtual_account_transactions", Product::Va),
                ("qris_histories", Product::Qris),
            ],
        ),
        WebhookType::Unknown => Subject::Unrecognised("unknown event"),
    };
    if c.event_at.is_none() {
        c.event_at = c.single().and_then(|ch| ch.occurred_at);
    }
    c
}

fn key(product: Product, id: &str) -> String {
    format!("{}:{}", product.as_str(), id)
}

/// The id a transaction key is made of (`disbursement:{this}`); empty when it has none.
pub fn key_id(transaction_key: &str) -> &str {
    transaction_key.split_once(':').map_or("", |(_, id)| id)
}

fn change(product: Product, id: String) -> Change {
    Change {
        transaction_key: key(product, &id),
        product,
        singapay_id: None,
        merchant_reference: None,
        status: None,
        transaction_status_code: None,
        amount: None,
        currency: None,
        occurred_at: None,
    }
}

fn money_in(data: &Value, product: Product) -> Subject {
    let Some(t) = data.get("transaction").filter(|t| t.is_object()) else {
        return Subject::Unrecognised("data.transaction is missing");
    };
    let additional = data.at(&["payment", "additional_info"]);
    let (id, singapay_id, merchant_reference) = match product {
        // VA: Singapay's transaction_id is the stable key; reff_no is the merchant's.
        Product::Va => (
            ident(t.get("transaction_id")).or_else(|| ident(t.get("reff_no"))),
            ident(t.get("transaction_id")),
            ident(t.get("reff_no")),
        ),
        // Payment link: transaction.reff_no is the payment attempt; the merchant's own
        // reference lives on the link.
        Product::PaymentLink => (
            ident(t.get("reff_no")),
            additional.and_then(|a| ident(a.at(&["payment_link", "id"]))),
            additional.and_then(|a| ident(a.at(&["payment_link", "reff_no"]))),
        ),
        _ => (ident(t.get("reff_no")), ident(t.get("id")), ident(t.get("merchant_reff_no"))),
    };
    let Some(id) = id else {
        return Subject::Unrecognised("transaction id is missing or not a string");
    };
    let Some(raw_status) = t.get("status").and_then(Value::as_str) else {
        return Subject::Unrecognised("transaction status is missing");
    };
    let Some(status) = status::status_from_money_in(raw_status) else {
        return Subject::Unrecognised("transaction status is not a known value");
    };
    let (amount, currency) = money(t.get("amount"));
    let mut ch = change(product, id);
    ch.singapay_id = singapay_id;
    ch.merchant_reference = merchant_reference;
    ch.status = Some(status.to_owned());
    ch.amount = amount;
    ch.currency = currency;
    ch.occurred_at = time_of(t.get("processed_timestamp"))
        .or_else(|| additional.and_then(|a| time_of(a.at(&["payment_link", "payment_date"]))))
        .or_else(|| time_of(t.get("post_timestamp")));
    Subject::Single(ch)
}

fn payment_link_inquiry(data: &Value, event: Option<&str>) -> Subject {
    let Some(h) = data.get("payment_link_history").filter(|h| h.is_object()) else {
        return Subject::Unrecognised("data.payment_link_history is missing");
    };
    // Same key as the paid callback: history reff_no == transaction.reff_no.
    let Some(id) = ident(h.get("reff_no")) else {
        return Subject::Unrecognised("payment_link_history.reff_no is missing");
    };
    let expired_event = event.is_some_and(|e| e.to_ascii_lowercase().ends_with("expired"));
    let status = if expired_event {
        Some("expired")
    } else {
        h.get("status").and_then(Value::as_str).and_then(status::status_from_money_in)
    };
    let Some(status) = status else {
        return Subject::Unrecognised("payment_link_history.status is missing or unknown");
    };
    let (amount, currency) = money(h.get("amount"));
    let mut ch = change(Product::PaymentLink, id);
    ch.merchant_reference = ident(h.get("payment_link_reff_no"));
    ch.status = Some(status.to_owned());
    ch.amount = amount;
    ch.currency = currency;
    Subject::Single(ch)
}

fn money_out(data: &Value, product: Product, c: &mut Classification) -> Subject {
    let Some(id) = ident(data.get("transaction_id")) else {
        return Subject::Unrecognised("data.transaction_id is missing or not a string");
    };
    let (amount, currency) = money(data.get("net_amount"));
    let mut ch = change(product, id);
    ch.singapay_id = ident(data.get("transaction_id"));
    ch.merchant_reference = ident(data.get("reference_number"));
    ch.amount = amount;
    ch.currency = currency;
    ch.occurred_at = time_of(data.get("processed_timestamp")).or_else(|| time_of(data.get("post_timestamp")));
    ch.transaction_status_code = c.transaction_status_code.clone();
    // The payment state comes from transaction_status.code alone; response_code is about
    // the request (SP000 + 01 is initiated, SP001 + 06 is failed).
    match c.transaction_status_code.as_deref() {
        Some(code) => match status::status_from_code(code) {
            Some(s) => ch.status = Some(s.to_owned()),
            None => return Subject::Unrecognised("transaction_status.code is not a known value"),
        },
        None if c.response_code.as_deref().is_some_and(status::needs_inquiry) => c.needs_inquiry = true,
        None => return Subject::Unrecognised("transaction_status.code is missing"),
    }
    Subject::Single(ch)
}

fn settlement(data: &Value, event: &str) -> Subject {
    let suffix = event.trim().to_ascii_lowercase();
    let suffix = suffix.strip_prefix("settlement.").unwrap_or_default();
    let Some(status) = status::own_status(suffix) else {
        return Subject::Unrecognised("settlement event has no status");
    };
    let s = data.get("settlement");
    let mut ch = if suffix.starts_with("refund") {
        let Some(id) = ident(data.at(&["refund", "settlement_detail_id"])) else {
            return Subject::Unrecognised("refund.settlement_detail_id is missing");
        };
        let mut ch = change(Product::SettlementRefund, id);
        let r = data.get("refund");
        ch.singapay_id = r.and_then(|r| ident(r.get("transaction_id")));
        ch.merchant_reference = r.and_then(|r| ident(r.get("transaction_reff")));
        (ch.amount, ch.currency) = (r.and_then(|r| decimal(r.get("net_amount"))), None);
        ch
    } else {
        let Some(id) = s.and_then(|s| ident(s.get("reference_no"))) else {
            return Subject::Unrecognised("settlement.reference_no is missing");
        };
        let mut ch = change(Product::Settlement, id);
        ch.singapay_id = s.and_then(|s| ident(s.get("id")));
        ch.amount = s.and_then(|s| decimal(s.get("amount")));
        ch.currency = s.and_then(|s| text(s.get("currency")));
        ch
    };
    ch.status = Some(status);
    Subject::Single(ch)
}

fn subscription(data: &Value, event: &str) -> Subject {
    let event = event.trim().to_ascii_lowercase();
    let plan = data.get("plan");
    if event.starts_with("subscription.plan.") {
        let Some(id) = plan.and_then(|p| ident(p.get("id"))) else {
            return Subject::Unrecognised("plan.id is missing");
        };
        let Some(status) = plan.and_then(|p| p.get("status")).and_then(Value::as_str).and_then(status::own_status)
        else {
            return Subject::Unrecognised("plan.status is missing");
        };
        let mut ch = change(Product::SubscriptionPlan, id);
        ch.merchant_reference = plan.and_then(|p| ident(p.get("subscription_id")));
        ch.status = Some(status);
        return Subject::Single(ch);
    }
    let status = match event.rsplit('.').next() {
        Some("payment_success") => "succeeded",
        Some("payment_failed") => "failed",
        _ => return Subject::Unrecognised("unknown subscription event"),
    };
    let Some(id) = ident(data.at(&["bill", "bill_number"])) else {
        return Subject::Unrecognised("bill.bill_number is missing");
    };
    let mut ch = change(Product::SubscriptionBill, id);
    ch.merchant_reference = plan.and_then(|p| ident(p.get("subscription_id")));
    ch.singapay_id = plan.and_then(|p| ident(p.get("id")));
    (ch.amount, ch.currency) = money(data.at(&["bill", "amount"]));
    ch.status = Some(status.to_owned());
    Subject::Single(ch)
}

fn direct_debit(data: &Value) -> Subject {
    let Some(id) = ident(data.get("binding_id")) else {
        return Subject::Unrecognised("data.binding_id is missing");
    };
    let Some(status) = data.get("status").and_then(Value::as_str).and_then(status::own_status) else {
        return Subject::Unrecognised("data.status is missing");
    };
    let mut ch = change(Product::DirectDebit, id);
    ch.status = Some(status);
    Subject::Single(ch)
}

fn expiration(data: &Value, lists: &[(&str, Product)]) -> Subject {
    let mut changes = Vec::new();
    let mut any_list = false;
    for (field, product) in lists {
        let Some(items) = data.get(field).and_then(Value::as_array) else {
            continue;
        };
        any_list = true;
        for item in items {
            let Some(id) = ident(item.get("reff_no")).or_else(|| ident(item.get("id"))) else {
                continue;
            };
            let mut ch = change(*product, id);
            ch.singapay_id = ident(item.get("id"));
            ch.merchant_reference = ident(item.get("merchant_reff_no"));
            ch.status = Some("expired".to_owned());
            changes.push(ch);
        }
    }
    if !any_list {
        return Subject::Unrecognised("no expiration list in data");
    }
    // Locks are taken in key order (no deadlock between batches); a key listed twice is
    // one change.
    changes.sort_by(|a, b| a.transaction_key.cmp(&b.transaction_key));
    changes.dedup_by(|a, b| a.transaction_key == b.transaction_key);
    Subject::Batch(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::singapay::json::parse;

    fn classify_str(s: &str) -> Classification {
        classify(&parse(s.as_bytes()).unwrap().value)
    }

    #[test]
    fn event_spellings_are_normalised() {
        for (event, want) in [
            ("transaction_expiration", WebhookType::TransactionExpiration),
            ("payment_link.inquiry.expired", WebhookType::PaymentLinkInquiry),
            ("subscription.plan.status_changed", WebhookType::SubscriptionCycle),
            ("settlement.refund_cancelled", WebhookType::Settlement),
            ("direct_debit_unbinding", WebhookType::DirectDebit),
            ("kyb-result", WebhookType::Unknown),
        ] {
            let v = parse(format!(r#"{{"event":"{event}"}}"#).as_bytes()).unwrap().value;
            assert_eq!(WebhookType::detect(&v), want, "{event}");
        }
    }

    #[test]
    fn payment_link_with_an_unknown_event_is_recognised_by_shape() {
        for event in [r#""payment-link.something-new""#, r#""""#, "42"] {
            let c = classify_str(&format!(
                r#"{{"event":{event},"data":{{"transaction":{{"type":"pl","reff_no":"R2","status":"paid"}}}}}}"#
            ));
            assert_eq!(c.webhook_type, WebhookType::PaymentLinkTransaction, "{event}");
            assert_eq!(c.single().unwrap().transaction_key, "payment_link:R2");
        }
        let c = classify_str(r#"{"event":"pl-v9","data":{"payment":{"method":"payment_link"}}}"#);
        assert_eq!(c.webhook_type, WebhookType::PaymentLinkTransaction);
        let c = classify_str(r#"{"event":"something-else","data":{"transaction":{"type":"va"}}}"#);
        assert_eq!(c.webhook_type, WebhookType::Unknown);
    }

    #[test]
    fn payment_link_without_event_is_recognised_by_shape() {
        let c = classify_str(r#"{"data":{"transaction":{"type":"pl","reff_no":"R1","status":"paid"}}}"#);
        assert_eq!(c.webhook_type, WebhookType::PaymentLinkTransaction);
        assert_eq!(c.single().unwrap().transaction_key, "payment_link:R1");
    }

    #[test]
    fn money_out_failure_without_status_needs_inquiry() {
        let c = classify_str(r#"{"response_code":"SP005","event":"disbursement","data":{"transaction_id":"123"}}"#);
        assert!(c.needs_inquiry);
        assert_eq!(c.single().unwrap().status, None);
        let c = classify_str(r#"{"response_code":"SP000","event":"disbursement","data":{"transaction_id":"123"}}"#);
        assert!(matches!(c.subject, Subject::Unrecognised(_)));
    }

    #[test]
    fn response_code_never_decides_the_state() {
        let c = classify_str(
            r#"{"response_code":"SP000","event":"disbursement","data":{"transaction_id":"9","transaction_status":{"code":"01"}}}"#,
        );
        assert_eq!(c.single().unwrap().status.as_deref(), Some("initiated"));
        assert_eq!(c.response_class, Some("success"));
    }

    #[test]
    fn identifiers_of_the_wrong_type_are_unrecognised() {
        let c = classify_str(
            r#"{"event":"disbursement","data":{"transaction_id":{"x":1},"transaction_status":{"code":"00"}}}"#,
        );
        assert!(matches!(c.subject, Subject::Unrecognised(_)));
        let c = classify_str(r#"{"event":"va-transaction","data":[]}"#);
        assert!(matches!(c.subject, Subject::Unrecognised(_)));
    }

    #[test]
    fn amounts_are_plain_decimals_only() {
        assert_eq!(decimal(Some(&Value::Number("245000".into()))).as_deref(), Some("245000"));
        assert_eq!(decimal(Some(&Value::String("125000.00".into()))).as_deref(), Some("125000.00"));
        for bad in ["1e3", "12.", ".5", "abc", "", "1.2.3"] {
            assert_eq!(decimal(Some(&Value::String(bad.into()))), None, "{bad}");
        }
    }
}
