//! The queue row's `payload`: a normalised, documented event document (docs/consuming.md, "The event
//! document"), never the raw body.

use std::sync::OnceLock;

use serde_json::json;
use uuid::Uuid;

use crate::singapay::webhook::Change;

/// `event_id = uuidv5(uuidv5(NAMESPACE_URL, EVENT_NAMESPACE_NAME), "{transaction_key}:{version}")`,
/// so any consumer can recompute it (e.g. with `uuid-ossp` in SQL).
pub const EVENT_NAMESPACE_NAME: &str = "urn:singapay-webhooks:transaction-events";

pub fn event_id(transaction_key: &str, version: i32) -> Uuid {
    static NS: OnceLock<Uuid> = OnceLock::new();
    let ns = NS.get_or_init(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, EVENT_NAMESPACE_NAME.as_bytes()));
    Uuid::new_v5(ns, format!("{transaction_key}:{version}").as_bytes())
}

pub struct EventFacts<'a> {
    pub event_id: Uuid,
    pub change: &'a Change,
    pub to_status: &'a str,
    pub version: i32,
    pub from_status: Option<&'a str>,
    pub webhook_type: &'a str,
    pub event: Option<&'a str>,
    pub response_code: Option<&'a str>,
    /// The delivery that caused the change; `None` for an inquiry's answer.
    pub delivery_id: Option<i64>,
    /// The inquiry whose answer caused the change.
    pub inquiry_id: Option<i64>,
}

pub fn document(f: &EventFacts<'_>) -> serde_json::Value {
    let c = f.change;
    let mut doc = json!({
        "schema": "singapay.transaction_event.v1",
        "event_id": f.event_id,
        "transaction_key": c.transaction_key,
        "product": c.product.as_str(),
        "version": f.version,
        "from_status": f.from_status,
        "to_status": f.to_status,
        "webhook_type": f.webhook_type,
        "event": f.event,
        "singapay_id": c.singapay_id,
        "merchant_reference": c.merchant_reference,
        "amount": c.amount,
        "currency": c.currency,
        "response_code": f.response_code,
        "transaction_status_code": c.transaction_status_code,
        "occurred_at": c.occurred_at.map(|t| t.to_rfc3339()),
        "delivery_id": f.delivery_id,
    });
    // Present only on events from an inquiry, so callbacks' documents stay as they were.
    if let Some(id) = f.inquiry_id {
        doc["source"] = json!("inquiry");
        doc["inquiry_id"] = json!(id);
    }
    doc
}
