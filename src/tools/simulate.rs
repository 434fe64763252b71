//! Realistic callback bodies of every type, shaped like Singapay's documented samples, for
//! `send` (a local Singapay simulator). Pure: the caller supplies the clock and randomness.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde_json::{json, Value};

use crate::singapay::webhook::WebhookType;

/// What the caller chose; `None` means a sensible default (random where it is an id).
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Money-in: `paid`, `pending`, `expired`…; money-out: `transaction_status.code`
    /// (`00`–`07`); settlement: the event suffix (`completed`, `refunded`,
    /// `refund_cancelled`); subscription: `payment_success`, `payment_failed` or a plan
    /// status; direct debit: `ACTIVE`, `PENDING_AUTH`…
    pub status: Option<String>,
    /// Money-out `response_code` (default `SP000`, or `SP001` for a failure `06`).
    pub response_code: Option<String>,
    /// The id the transaction key is made of.
    pub transaction_id: Option<String>,
    /// The merchant's own reference.
    pub reference: Option<String>,
    /// Whole rupiah.
    pub amount: Option<u64>,
    /// Items per list in expiration sweeps.
    pub items: Option<usize>,
}

/// A built callback and the ids it carries.
#[derive(Debug, Clone)]
pub struct Built {
    pub body: Value,
    pub transaction_id: String,
    pub reference: String,
    pub status: String,
}

fn digits(rng: &mut impl Rng, n: usize) -> String {
    (0..n).map(|i| char::from(b'0' + if i == 0 { rng.gen_range(1..10) } else { rng.gen_range(0..10) })).collect()
}

fn token(rng: &mut impl Rng, n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    (0..n).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect()
}

/// `d M Y H:i:s` in Asia/Jakarta (UTC+7), as v1 envelopes carry it.
pub fn jakarta(t: DateTime<Utc>) -> String {
    (t + Duration::hours(7)).format("%d %b %Y %H:%M:%S").to_string()
}

fn millis(t: DateTime<Utc>) -> String {
    t.timestamp_millis().to_string()
}

fn v1(event: &str, now: DateTime<Utc>, data: Value) -> Value {
    json!({ "status": 200, "success": true, "event": event, "timestamp": jakarta(now), "data": data })
}

pub const MONEY_OUT_CODES: [&str; 8] = ["00", "01", "02", "03", "04", "05", "06", "07"];

pub fn build(kind: WebhookType, spec: &Spec, now: DateTime<Utc>, rng: &mut impl Rng) -> Result<Built, String> {
    let amount = spec.amount.unwrap_or_else(|| rng.gen_range(10..5000) * 1000);
    let earlier = now - Duration::seconds(rng.gen_range(2..30));
    let pick = |v: &Option<String>, default: String| v.clone().unwrap_or(default);
    let (tid, reference, status, body) = match kind {
        WebhookType::VaTransaction => {
            let tid = pick(&spec.transaction_id, digits(rng, 22));
            let reference = pick(&spec.reference, format!("ORD-{}-A", digits(rng, 5)));
            let status = pick(&spec.status, "paid".into());
            let body = v1(
                "va-transaction",
                now,
                json!({
                    "transaction": {
                        "reff_no": reference, "transaction_id": tid, "type": "va", "status": status,
                        "amount": { "value": amount, "currency": "IDR" }, "amount_type": "closed", "tip": null,
                        "post_timestamp": jakarta(earlier), "processed_timestamp": jakarta(now)
                    },
                    "payment": { "method": "va", "additional_info": {
                        "va_number": format!("8808{}", digits(rng, 12)), "va_name": "Toko Simulasi",
                        "bank": { "short_name": "BNI", "number": "009", "swift_code": "BNINIDJA", "bank_code": "BNI" },
                        "fees": { "name": "VA BNI", "amount": 4000, "currency": "IDR" }
                    }}
                }),
            );
            (tid, reference, status, body)
        }
        WebhookType::QrisAcquirerTransaction => {
            let tid = pick(&spec.transaction_id, format!("6601{}", token(rng, 22)));
            let reference = pick(&spec.reference, format!("ORD-{}-Q", digits(rng, 5)));
            let status = pick(&spec.status, "paid".into());
            let body = v1(
                "qris-acquirer-transaction",
                now,
                json!({
                    "transaction": {
                        "id": rng.gen_range(1000..99999), "reff_no": tid, "merchant_reff_no": reference, "type": "qris",
                        "status": status, "amount": { "value": amount, "currency": "IDR" },
                        "tip": { "value": 0, "currency": "IDR" }, "total_amount": { "value": amount, "currency": "IDR" },
                        "post_timestamp": jakarta(earlier), "processed_timestamp": jakarta(now)
                    },
                    "customer": { "id": token(rng, 26), "name": "Pelanggan Simulasi" },
                    "payment": { "method": "qris", "additional_info": {
                        "qr_string": format!("000201010212{}", digits(rng, 40)), "payment_event_id": rng.gen_range(1000..99999)
                    }}
                }),
            );
            (tid, reference, status, body)
        }
        WebhookType::PaymentLinkTransaction => {
            let tid = pick(&spec.transaction_id, format!("{}{}", digits(rng, 26), token(rng, 6)));
            let reference = pick(&spec.reference, format!("INV-{}", digits(rng, 6)));
            let status = pick(&spec.status, "paid".into());
            let body = v1(
                "payment-link-transaction",
                now,
                json!({
                    "transaction": {
                        "reff_no": tid, "type": "pl", "status": status,
                        "amount": { "value": format!("{amount}.00"), "currency": "IDR" }, "tip": null,
                        "post_timestamp": jakarta(earlier), "processed_timestamp": jakarta(now)
                    },
                    "customer": { "id": null, "name": "Pelanggan Simulasi", "email": "sim@example.net", "phone": "081200000000" },
                    "payment": { "method": "payment_link", "additional_info": { "payment_link": {
                        "id": rng.gen_range(1000..9999), "reff_no": reference, "title": "Simulasi",
                        "payment_date": now.format("%Y-%m-%dT%H:%M:%S.000000Z").to_string(),
                        "payment_url": format!("https://sandbox-paymentlink.singapay.id/b2b/{reference}"),
                        "status": "open", "max_usage": 1, "current_usage": 1, "expired_at": null,
                        "total_amount": format!("{amount}.00"), "account_id": rng.gen_range(1..500)
                    }}}
                }),
            );
            (tid, reference, status, body)
        }
        WebhookType::PaymentLinkInquiry => {
            let tid = pick(&spec.transaction_id, format!("{}{}", digits(rng, 26), token(rng, 6)));
            let reference = pick(&spec.reference, format!("INV-{}", digits(rng, 6)));
            let status = pick(&spec.status, "pending".into());
            let event = if status == "expired" { "payment_link.inquiry.expired" } else { "payment_link.inquiry" };
            let body = v1(
                event,
                now,
                json!({ "payment_link_history": {
                    "reff_no": tid, "payment_link_reff_no": reference, "status": status,
                    "payment_method_name": "Alfamart (Linkqu)", "payment_method_value": digits(rng, 15),
                    "payment_method_additional": format!(r#"{{"retail_code":"ALFAMART","partner_reff":"{}"}}"#, digits(rng, 20)),
                    "amount": amount, "vendor_fee": 2500, "our_margin": 1500, "merchant_fee": 4000,
                    "net_amount": amount.saturating_sub(4000),
                    "expired_at": (now + Duration::days(1)).format("%Y-%m-%dT%H:%M:%S+07:00").to_string()
                }}),
            );
            (tid, reference, status, body)
        }
        WebhookType::EwalletNativeTransaction => {
            let tid = pick(&spec.transaction_id, format!("EW{}{}", digits(rng, 16), token(rng, 2)));
            let reference = pick(&spec.reference, format!("ORD-{}-E", digits(rng, 5)));
            let status = pick(&spec.status, "paid".into());
            let body = v1(
                "ewallet-native-transaction",
                now,
                json!({
                    "transaction": {
                        "id": rng.gen_range(1000..99999), "reff_no": tid, "merchant_reff_no": reference, "type": "ewallet",
                        "ewallet_vendor": "DANA", "status": status,
                        "amount": { "value": amount.saturating_sub(1850), "currency": "IDR" },
                        "total_amount": { "value": amount, "currency": "IDR" },
                        "post_timestamp": jakarta(earlier), "processed_timestamp": jakarta(now)
                    },
                    "customer": { "name": "Pelanggan Simulasi", "email": "sim@example.org", "phone": "081290000000" },
                    "payment": { "method": "ewallet", "vendor": "DANA", "additional_info": {
                        "payment_event_id": rng.gen_range(1000..99999), "vendor_reference_no": digits(rng, 35)
                    }}
                }),
            );
            (tid, reference, status, body)
        }
        WebhookType::Disbursement | WebhookType::EwalletTopup | WebhookType::QrisIssuer => {
            let tid = pick(&spec.transaction_id, digits(rng, 31));
            let prefix = match kind {
                WebhookType::Disbursement => "PAYOUT",
                WebhookType::EwalletTopup => "TOPUP",
                _ => "QRPAY",
            };
            let reference = pick(&spec.reference, format!("{prefix}-{}", digits(rng, 8)));
            let status = pick(&spec.status, "00".into());
            if !MONEY_OUT_CODES.contains(&status.as_str()) {
                return Err(format!(
                    "--status for {} is a transaction_status.code, 00..07 (got {status:?})",
                    kind.as_str()
                ));
            }
            let failed = status == "06";
            let response_code = pick(&spec.response_code, if failed { "SP001".into() } else { "SP000".into() });
            let desc = ["Success", "Initiated", "Paying", "Pending", "Refunded", "Canceled", "Failed", "Not Found"]
                [MONEY_OUT_CODES.iter().position(|c| *c == status).unwrap_or(0)];
            let fee = 2500u64;
            let mut data = json!({
                "transaction_id": tid, "reference_number": reference,
                "transaction_status": { "code": status, "desc": desc },
                "post_timestamp": millis(earlier), "processed_timestamp": if failed { String::new() } else { millis(now) },
                "gross_amount": { "currency": "IDR", "value": format!("{}.00", amount + fee) },
                "fee": { "currency": "IDR", "value": fee.to_string() },
                "net_amount": { "currency": "IDR", "value": format!("{amount}.00") },
                "balance_after": { "currency": "IDR", "value": if failed { "0".to_owned() } else { format!("{}.00", rng.gen_range(1_000_000..9_000_000)) } },
                "notes": "Simulasi"
            });
            let beneficiary = match kind {
                WebhookType::Disbursement => (
                    "bank",
                    json!({ "code": "014", "name": "BCA", "account_name": "CV SIMULASI", "account_number": digits(rng, 13) }),
                ),
                WebhookType::EwalletTopup => (
                    "ewallet",
                    json!({ "code": "DANA", "name": "DANA", "account_name": "SIMULASI", "account_number": format!("0813{}", digits(rng, 8)) }),
                ),
                _ => (
                    "qr_code",
                    json!({ "merchant_name": "TOKO SIMULASI", "nmid": format!("ID10{}", digits(rng, 11)), "qr_data": format!("000201010212{}", digits(rng, 40)) }),
                ),
            };
            data[beneficiary.0] = beneficiary.1;
            if failed {
                data["failed_reason"] = json!("Transaction Failure : simulated");
                data["failed_code"] = json!(response_code);
            }
            let message = if response_code == "SP000" { "Successfully" } else { "Transaction Failure" };
            let body = json!({ "response_code": response_code, "response_message": message, "event": kind.as_str(), "data": data });
            (tid, reference, status, body)
        }
        WebhookType::Settlement => {
            let status = pick(&spec.status, "completed".into());
            let event = format!("settlement.{status}");
            if status.starts_with("refund") {
                let tid = pick(&spec.transaction_id, rng.gen_range(10_000..99_999).to_string());
                let reference = pick(&spec.reference, format!("ORD-{}-R", digits(rng, 5)));
                let body = v1(
                    &event,
                    now,
                    json!({ "refund": {
                        "settlement_detail_id": tid.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(tid.clone())),
                        "transaction_type": "va", "transaction_id": rng.gen_range(1000..99999), "transaction_reff": reference,
                        "account_id": rng.gen_range(1..500), "net_amount": amount, "is_refunded": status == "refunded",
                        "is_refund_cancelled": status == "refund_cancelled", "refunded_by": "Finance", "refunded_at": jakarta(now),
                        "refund_cancelled_by": null, "refund_cancelled_at": null, "actor": "merchant"
                    }}),
                );
                (tid, reference, status, body)
            } else {
                let tid = pick(&spec.transaction_id, format!("SETTLEMENT-{}-{}", rng.gen_range(1..500), token(rng, 6)));
                let reference = pick(&spec.reference, tid.clone());
                let body = v1(
                    &event,
                    now,
                    json!({
                        "settlement": {
                            "id": rng.gen_range(1000..9999), "reference_no": tid, "title": "Settlement Simulasi", "status": status,
                            "settlement_type": "ALL", "settlement_method": "balance", "is_auto_created": false,
                            "start_date": jakarta(now - Duration::days(7)), "end_date": jakarta(now - Duration::days(1)),
                            "amount": amount, "total_admin_fee": 0, "total_vendor_fee": 0, "total_our_margin": 0,
                            "settlement_fee": 0, "total_to_transfer": amount, "total_refunded": 0, "currency": "IDR",
                            "transfer_status": null, "approved_by": "Finance", "approved_at": jakarta(now),
                            "recipient": { "bank_code": null, "account_number": null, "account_name": null }
                        },
                        "total_transactions": rng.gen_range(1..50)
                    }),
                );
                (tid, reference, status, body)
            }
        }
        WebhookType::SubscriptionCycle => {
            let status = pick(&spec.status, "payment_success".into());
            let reference = pick(&spec.reference, format!("SUB-{}", digits(rng, 5)));
            if status == "payment_success" || status == "payment_failed" {
                let tid = pick(&spec.transaction_id, format!("BILL-{}-{}", now.format("%Y%m%d"), digits(rng, 5)));
                let body = v1(
                    &format!("subscription.cycle.{status}"),
                    now,
                    json!({
                        "plan": { "id": token(rng, 26), "subscription_id": reference, "status": "active", "metadata": {} },
                        "bill": { "bill_number": tid }
                    }),
                );
                (tid, reference, status, body)
            } else {
                let tid = pick(&spec.transaction_id, token(rng, 26));
                let body = v1(
                    "subscription.plan.status_changed",
                    now,
                    json!({
                        "plan": { "id": tid, "subscription_id": reference, "status": status, "metadata": {} }
                    }),
                );
                (tid, reference, status, body)
            }
        }
        WebhookType::DirectDebit => {
            let tid = pick(&spec.transaction_id, uuid::Uuid::from_u128(rng.gen()).to_string());
            let status = pick(&spec.status, "ACTIVE".into());
            let reference = pick(&spec.reference, tid.clone());
            let body = v1("direct-debit-binding", now, json!({ "binding_id": tid, "status": status }));
            (tid, reference, status, body)
        }
        WebhookType::ProductExpiration | WebhookType::TransactionExpiration => {
            let n = spec.items.unwrap_or(2).max(1);
            let first = pick(&spec.transaction_id, format!("{}{}", digits(rng, 26), token(rng, 6)));
            let mut refs = vec![first.clone()];
            refs.extend((1..n).map(|_| format!("{}{}", digits(rng, 26), token(rng, 6))));
            let items: Vec<Value> = refs
                .iter()
                .map(|r| json!({ "id": rng.gen_range(1000..99999), "reff_no": r, "status": "expired" }))
                .collect();
            let body = if kind == WebhookType::ProductExpiration {
                v1(
                    "product-expiration",
                    now,
                    json!({ "payment_links": items, "virtual_accounts": [], "qris_transactions": [] }),
                )
            } else {
                v1(
                    "transaction-expiration",
                    now,
                    json!({
                        "payment_link_histories": items, "virtual_account_transactions": [], "qris_histories": [],
                        "summary": { "payment_link_histories": n, "virtual_account_transactions": 0, "qris_histories": 0 }
                    }),
                )
            };
            (first.clone(), first, "expired".to_owned(), body)
        }
        WebhookType::Unknown => return Err("choose one of the 13 webhook types".into()),
    };
    Ok(Built { body, transaction_id: tid, reference, status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::singapay::json::parse;
    use crate::singapay::webhook::{classify, Subject};

    #[test]
    fn every_type_builds_a_body_its_classifier_recognises() {
        let mut rng = rand::thread_rng();
        for kind in WebhookType::ALL {
            let built = build(kind, &Spec::default(), Utc::now(), &mut rng).unwrap();
            let text = built.body.to_string();
            let c = classify(&parse(text.as_bytes()).unwrap().value);
            assert_eq!(c.webhook_type, kind, "{text}");
            assert!(!matches!(c.subject, Subject::Unrecognised(_)), "{}: {:?}", kind.as_str(), c.subject);
        }
    }

    #[test]
    fn money_out_status_must_be_a_code() {
        let spec = Spec { status: Some("paid".into()), ..Spec::default() };
        assert!(build(WebhookType::Disbursement, &spec, Utc::now(), &mut rand::thread_rng()).is_err());
    }
}
