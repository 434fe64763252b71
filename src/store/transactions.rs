//! The state machine over a batch: the current state of every transaction the batch
//! touches, as locked at its start, with each reported status applied in arrival order
//! exactly as if the deliveries had been stored one by one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::singapay::status::{self, Transition};
use crate::singapay::webhook::Change;

/// What applying one reported status did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub transaction_key: String,
    pub transition: Transition,
    pub from_status: Option<String>,
    pub to_status: String,
    /// The transaction's version afterwards.
    pub version: i32,
}

/// Which delivery caused something: one already stored, or the n-th new row of the batch
/// (its id is known once the batch's deliveries are inserted); `Keep` for an inquiry's
/// answer about a stored transaction, which leaves its deliveries as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryRef {
    Stored(i64),
    New(usize),
    Keep,
}

/// A `singapay.transactions` row as the batch sees it.
#[derive(Debug, Clone)]
pub struct TransactionRow {
    pub transaction_key: String,
    pub product: String,
    pub status: String,
    pub version: i32,
    pub transaction_status_code: Option<String>,
    pub last_response_code: Option<String>,
    /// `numeric` as text, so it is written back exactly.
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub singapay_id: Option<String>,
    pub merchant_reference: Option<String>,
    pub processed_at: Option<DateTime<Utc>>,
}

/// The columns `lock` reads, in `TransactionRow`'s names.
pub const ROW_COLUMNS: &str = "transaction_key, product, status, version, transaction_status_code,
    last_response_code, amount::text AS amount, currency, singapay_id, merchant_reference, processed_at";

pub struct Tracked {
    pub row: TransactionRow,
    /// False for a transaction this batch creates.
    pub stored: bool,
    /// Whether the batch changed it.
    pub changed: bool,
    pub first_delivery: DeliveryRef,
    pub last_delivery: DeliveryRef,
}

/// The request-level facts every change of one delivery shares.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub delivery: DeliveryRef,
    pub webhook_type: &'a str,
    pub event: Option<&'a str>,
    pub response_code: Option<&'a str>,
    /// For an inquiry's answer: the batch item it is (its id is known once it is inserted).
    pub inquiry: Option<usize>,
}

/// One queue row to write.
pub struct PlannedEvent<'a> {
    pub change: &'a Change,
    pub ctx: Context<'a>,
    pub to_status: &'a str,
    pub version: i32,
    pub from_status: Option<String>,
}

/// The batch's view of every transaction it touches, and the queue rows it decided.
#[derive(Default)]
pub struct Ledger<'a> {
    pub rows: HashMap<String, Tracked>,
    pub events: Vec<PlannedEvent<'a>>,
}

impl<'a> Ledger<'a> {
    pub fn new(locked: Vec<TransactionRow>) -> Self {
        let rows = locked
            .into_iter()
            .map(|row| {
                let t = Tracked {
                    row,
                    stored: true,
                    changed: false,
                    // Stored rows keep theirs unless a delivery changes them.
                    first_delivery: DeliveryRef::Keep,
                    last_delivery: DeliveryRef::Keep,
                };
                (t.row.transaction_key.clone(), t)
            })
            .collect();
        Ledger { rows, events: Vec::new() }
    }

    /// Applies one reported status (DESIGN §5) and plans its queue row when it changes
    /// the transaction.
    pub fn apply(&mut self, change: &'a Change, to_status: &'a str, ctx: Context<'a>) -> StateChange {
        let key = &change.transaction_key;
        let (transition, from_status, version) = match self.rows.get_mut(key) {
            None => {
                let row = TransactionRow {
                    transaction_key: key.clone(),
                    product: change.product.as_str().to_owned(),
                    status: to_status.to_owned(),
                    version: 1,
                    transaction_status_code: change.transaction_status_code.clone(),
                    last_response_code: ctx.response_code.map(str::to_owned),
                    amount: change.amount.clone(),
                    currency: change.currency.clone(),
                    singapay_id: change.singapay_id.clone(),
                    merchant_reference: change.merchant_reference.clone(),
                    processed_at: change.occurred_at,
                };
                let tracked = Tracked {
                    row,
                    stored: false,
                    changed: true,
                    first_delivery: ctx.delivery,
                    last_delivery: ctx.delivery,
                };
                self.rows.insert(key.clone(), tracked);
                (Transition::Applied, None, 1)
            }
            Some(t) => {
                let current = t.row.status.clone();
                let transition = status::decide(change.product, Some(&current), to_status);
                if transition == Transition::Applied {
                    let r = &mut t.row;
                    r.status = to_status.to_owned();
                    coalesce_new(&mut r.transaction_status_code, &change.transaction_status_code);
                    coalesce_new(&mut r.last_response_code, &ctx.response_code.map(str::to_owned));
                    coalesce_new(&mut r.amount, &change.amount);
                    coalesce_new(&mut r.currency, &change.currency);
                    coalesce_old(&mut r.singapay_id, &change.singapay_id);
                    coalesce_old(&mut r.merchant_reference, &change.merchant_reference);
                    if change.occurred_at.is_some() {
                        r.processed_at = change.occurred_at;
                    }
                    r.version += 1;
                    t.changed = true;
                    if ctx.delivery != DeliveryRef::Keep {
                        t.last_delivery = ctx.delivery;
                    }
                }
                (transition, Some(current), t.row.version)
            }
        };
        if transition == Transition::Applied {
            self.events.push(PlannedEvent { change, ctx, to_status, version, from_status: from_status.clone() });
        }
        StateChange { transaction_key: key.clone(), transition, from_status, to_status: to_status.to_owned(), version }
    }
}

/// The reported value wins when there is one (`COALESCE(new, old)`).
fn coalesce_new(slot: &mut Option<String>, new: &Option<String>) {
    if new.is_some() {
        slot.clone_from(new);
    }
}

/// The first value ever reported wins (`COALESCE(old, new)`).
fn coalesce_old(slot: &mut Option<String>, new: &Option<String>) {
    if slot.is_none() {
        slot.clone_from(new);
    }
}
