//! Writing a batch of deliveries in one Postgres transaction with set-based statements: one
//! statement per table, whatever the batch's size.
//!
//! 1. Lock every transaction the batch may change, in key order (writers never deadlock).
//! 2. Look up which contents are already stored (retries, counted rather than stored).
//! 3. Decide everything in Rust: duplicates inside the batch and against the table, the
//!    state machine for each reported status in arrival order, each delivery's outcome.
//! 4. Write the decided rows: deliveries, new and changed transactions, queue rows,
//!    retry counts, rejections.
//!
//! A concurrent writer that stored the same content or created the same transaction
//! between steps 1 and 4 makes an insert come back short; the batch then reports
//! [`BatchError::Raced`] and is retried whole (the retry sees the other's commit).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::deliveries::{Delivery, Outcome, Rejection, Signed, Stored};
use super::events::{self, EventFacts};
use super::transactions::{Context, DeliveryRef, Ledger, TransactionRow, ROW_COLUMNS};
use crate::singapay::status::Transition;
use crate::singapay::webhook::{Classification, Subject};

/// One thing for intake to write.
#[derive(Debug, Clone)]
pub enum Write {
    /// A verified, fresh delivery: stored once, its statuses applied.
    Deliver(Box<Delivery>),
    /// Authentic but outside the time window: a retry of stored content is counted; new
    /// content is kept as a rejection for `replay`.
    Stale(Rejection),
    /// A stored delivery through the state machine again (`replay --delivery`).
    Reapply { delivery_id: i64, classification: Classification },
}

impl Write {
    /// What was signed, for the items that arrived over HTTP.
    pub fn signed(&self) -> Option<&Signed> {
        match self {
            Write::Deliver(d) => Some(&d.signed),
            Write::Stale(r) => Some(&r.signed),
            Write::Reapply { .. } => None,
        }
    }
}

/// What writing one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Stored(Stored),
    /// New stale content, kept in `rejected_deliveries`.
    Rejected {
        rejection_id: i64,
    },
}

impl Written {
    /// Whether writing it added queue rows (a change was applied).
    pub fn queued_events(&self) -> bool {
        matches!(self, Written::Stored(s) if s.changes.iter().any(|c| c.transition == Transition::Applied))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("a concurrent writer stored {0} first")]
    Raced(&'static str),
}

/// A new delivery row: which item, how often it arrived in this batch, its outcome.
struct NewDelivery {
    item: usize,
    times: i32,
    outcome: Outcome,
}

/// What happened to each item, before ids are known.
enum Fate {
    New { row: usize, changes: Vec<super::StateChange> },
    Known { id: i64, outcome: Outcome },
    SameAsNew { row: usize },
    Rejected { row: usize },
    Reapplied { id: i64, outcome: Outcome, changes: Vec<super::StateChange> },
}

/// Writes `items` inside the caller's transaction; one answer per item, in order.
pub async fn write(conn: &mut PgConnection, items: &[Write]) -> Result<Vec<Written>, BatchError> {
    let (locked, known) = read(conn, items).await?;
    let reapplied = lock_reapplied(conn, items).await?;

    // Decide.
    let mut ledger = Ledger::new(locked);
    let mut new_rows: Vec<NewDelivery> = Vec::new();
    let mut new_by_sha: HashMap<[u8; 32], usize> = HashMap::new();
    let mut retries: HashMap<i64, i32> = HashMap::new();
    let mut rejections: Vec<(usize, i32)> = Vec::new();
    let mut rejection_by_sha: HashMap<[u8; 32], usize> = HashMap::new();
    let mut delivery_updates: Vec<(i64, usize, Outcome)> = Vec::new();
    let mut fates = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let fate = match item {
            Write::Deliver(_) | Write::Stale(_) => {
                let sha = item.signed().map_or([0; 32], |s| s.content_sha256);
                if let Some(&(id, outcome)) = known.get(&sha) {
                    *retries.entry(id).or_default() += 1;
                    Fate::Known { id, outcome }
                } else if let Some(&row) = new_by_sha.get(&sha) {
                    new_rows[row].times += 1;
                    Fate::SameAsNew { row }
                } else if let Write::Deliver(d) = item {
                    let row = new_rows.len();
                    new_rows.push(NewDelivery { item: i, times: 1, outcome: Outcome::of(&d.classification) });
                    new_by_sha.insert(sha, row);
                    let (outcome, changes) = apply(&mut ledger, &d.classification, DeliveryRef::New(row));
                    new_rows[row].outcome = outcome;
                    Fate::New { row, changes }
                } else {
                    let row = *rejection_by_sha.entry(sha).or_insert_with(|| {
                        rejections.push((i, 0));
                        rejections.len() - 1
                    });
                    rejections[row].1 += 1;
                    Fate::Rejected { row }
                }
            }
            Write::Reapply { delivery_id, classification } => {
                let previous = *reapplied.get(delivery_id).ok_or(sqlx::Error::RowNotFound)?;
                let (outcome, changes) = apply(&mut ledger, classification, DeliveryRef::Stored(*delivery_id));
                let applied_now = changes.iter().any(|c| c.transition == Transition::Applied);
                let understood_now = previous == Outcome::Unrecognised && outcome != Outcome::Unrecognised;
                if applied_now || understood_now {
                    delivery_updates.push((*delivery_id, i, outcome));
                }
                let outcome = if applied_now || previous == Outcome::Unrecognised { outcome } else { previous };
                Fate::Reapplied { id: *delivery_id, outcome, changes }
            }
        };
        fates.push(fate);
    }

    // Write.
    let new_ids = insert_deliveries(conn, items, &new_rows).await?;
    let resolve = |r: DeliveryRef| match r {
        DeliveryRef::Stored(id) => id,
        DeliveryRef::New(row) => new_ids[row],
    };
    write_transactions(conn, &ledger, &resolve).await?;
    insert_events(conn, &ledger, &resolve).await?;
    count_retries(conn, &retries).await?;
    let rejection_ids = insert_rejections(conn, items, &rejections).await?;
    update_reapplied(conn, items, &delivery_updates).await?;

    Ok(fates
        .into_iter()
        .map(|fate| match fate {
            Fate::New { row, changes } => Written::Stored(Stored {
                delivery_id: new_ids[row],
                duplicate: false,
                outcome: new_rows[row].outcome,
                changes,
            }),
            Fate::Known { id, outcome } => {
                Written::Stored(Stored { delivery_id: id, duplicate: true, outcome, changes: Vec::new() })
            }
            Fate::SameAsNew { row } => Written::Stored(Stored {
                delivery_id: new_ids[row],
                duplicate: true,
                outcome: new_rows[row].outcome,
                changes: Vec::new(),
            }),
            Fate::Rejected { row } => Written::Rejected { rejection_id: rejection_ids[row] },
            Fate::Reapplied { id, outcome, changes } => {
                Written::Stored(Stored { delivery_id: id, duplicate: false, outcome, changes })
            }
        })
        .collect())
}

/// Runs the state machine for every status a delivery reports; the delivery's outcome is
/// the single change's transition, else what its shape says.
fn apply<'a>(
    ledger: &mut Ledger<'a>,
    c: &'a Classification,
    delivery: DeliveryRef,
) -> (Outcome, Vec<super::StateChange>) {
    let ctx = Context {
        delivery,
        webhook_type: c.webhook_type.as_str(),
        event: c.event.as_deref(),
        response_code: c.response_code.as_deref(),
    };
    let mut changes = Vec::new();
    let mut outcome = Outcome::of(c);
    match &c.subject {
        Subject::Single(ch) => {
            if let Some(status) = &ch.status {
                let change = ledger.apply(ch, status, ctx);
                outcome = match change.transition {
                    Transition::Applied => Outcome::Applied,
                    Transition::Unchanged => Outcome::Unchanged,
                    Transition::Stale => Outcome::Stale,
                    Transition::Conflict => Outcome::Conflict,
                };
                changes.push(change);
            }
        }
        Subject::Batch(items) => {
            for ch in items {
                if let Some(status) = &ch.status {
                    changes.push(ledger.apply(ch, status, ctx));
                }
            }
        }
        Subject::Unrecognised(_) => {}
    }
    (outcome, changes)
}

/// Every transaction key a delivery may change.
fn keys_of(c: &Classification) -> impl Iterator<Item = &str> {
    let changes: &[crate::singapay::webhook::Change] = match &c.subject {
        Subject::Single(ch) => std::slice::from_ref(ch),
        Subject::Batch(items) => items,
        Subject::Unrecognised(_) => &[],
    };
    changes.iter().filter(|ch| ch.status.is_some()).map(|ch| ch.transaction_key.as_str())
}

/// One row of [`read`]: a locked transaction, or a stored delivery with the same content as
/// an item.
#[derive(sqlx::FromRow)]
struct ReadRow {
    #[sqlx(flatten)]
    transaction: OptionalRow,
    content_sha256: Option<Vec<u8>>,
    id: Option<i64>,
    outcome: Option<String>,
}

#[derive(sqlx::FromRow)]
struct OptionalRow {
    transaction_key: Option<String>,
    product: Option<String>,
    status: Option<String>,
    version: Option<i32>,
    transaction_status_code: Option<String>,
    last_response_code: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    singapay_id: Option<String>,
    merchant_reference: Option<String>,
    processed_at: Option<DateTime<Utc>>,
}

type Known = HashMap<[u8; 32], (i64, Outcome)>;

/// In one round trip: locks every transaction the batch may change, in key order (writers
/// never deadlock), and finds the contents already stored. Both are planned for these
/// values every time (`persistent(false)`): a plan cached while a table was small would
/// keep scanning it whole once it has grown.
///
/// The look-up sees the statement's snapshot, taken before any lock wait: content that a
/// writer we waited for has just committed is not seen, its insert comes back short, and
/// the batch is retried ([`BatchError::Raced`]).
async fn read(conn: &mut PgConnection, items: &[Write]) -> Result<(Vec<TransactionRow>, Known), sqlx::Error> {
    let mut keys: Vec<&str> = items
        .iter()
        .flat_map(|item| match item {
            Write::Deliver(d) => Some(&d.classification),
            Write::Reapply { classification, .. } => Some(classification),
            Write::Stale(_) => None,
        })
        .flat_map(keys_of)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let shas: Vec<&[u8]> = items.iter().filter_map(Write::signed).map(|s| &s.content_sha256[..]).collect();
    if keys.is_empty() && shas.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let rows: Vec<ReadRow> = sqlx::query_as(&format!(
        "WITH locked AS (
            SELECT {ROW_COLUMNS} FROM singapay.transactions
             WHERE transaction_key = ANY($1) ORDER BY transaction_key FOR UPDATE)
         SELECT locked.*, NULL::bytea AS content_sha256, NULL::int8 AS id, NULL::text AS outcome FROM locked
         UNION ALL
         SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, content_sha256, id, outcome
           FROM singapay.deliveries WHERE content_sha256 = ANY($2)"
    ))
    .bind(keys)
    .bind(shas)
    .persistent(false)
    .fetch_all(conn)
    .await?;
    let mut locked = Vec::new();
    let mut known = HashMap::new();
    for r in rows {
        let t = r.transaction;
        match (t.transaction_key, r.content_sha256, r.id, r.outcome) {
            (Some(transaction_key), ..) => locked.push(TransactionRow {
                transaction_key,
                product: t.product.unwrap_or_default(),
                status: t.status.unwrap_or_default(),
                version: t.version.unwrap_or_default(),
                transaction_status_code: t.transaction_status_code,
                last_response_code: t.last_response_code,
                amount: t.amount,
                currency: t.currency,
                singapay_id: t.singapay_id,
                merchant_reference: t.merchant_reference,
                processed_at: t.processed_at,
            }),
            (None, Some(sha), Some(id), Some(outcome)) => {
                let sha: [u8; 32] = sha.try_into().map_err(|_| decode("deliveries.content_sha256 is not 32 bytes"))?;
                let outcome = Outcome::parse(&outcome).ok_or_else(|| decode("deliveries.outcome outside its CHECK"))?;
                known.insert(sha, (id, outcome));
            }
            _ => return Err(decode("unexpected row in the batch read")),
        }
    }
    Ok((locked, known))
}

async fn lock_reapplied(conn: &mut PgConnection, items: &[Write]) -> Result<HashMap<i64, Outcome>, sqlx::Error> {
    let ids: Vec<i64> = items
        .iter()
        .filter_map(|item| match item {
            Write::Reapply { delivery_id, .. } => Some(*delivery_id),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, outcome FROM singapay.deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(ids)
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(id, o)| Ok((id, Outcome::parse(&o).ok_or_else(|| decode("deliveries.outcome outside its CHECK"))?)))
        .collect()
}

fn decode(what: &str) -> sqlx::Error {
    sqlx::Error::Decode(what.into())
}

/// Columns shared by `deliveries` and `rejected_deliveries`, one array each.
#[derive(Default)]
struct SignedColumns<'a> {
    times: Vec<i32>,
    sha: Vec<&'a [u8]>,
    credential: Vec<&'a str>,
    form: Vec<&'static str>,
    signed_at: Vec<Option<DateTime<Utc>>>,
    x_timestamp: Vec<&'a str>,
    request_path: Vec<&'a str>,
    request_id: Vec<Option<&'a str>>,
    partner_id: Vec<Option<&'a str>>,
    x_signature: Vec<&'a str>,
    access_token: Vec<&'a str>,
    body: Vec<&'a [u8]>,
}

impl<'a> SignedColumns<'a> {
    fn push(&mut self, s: &'a Signed, times: i32) {
        self.times.push(times);
        self.sha.push(&s.content_sha256);
        self.credential.push(&s.credential);
        self.form.push(s.signature_form.as_str());
        self.signed_at.push(s.signed_at);
        self.x_timestamp.push(&s.x_timestamp);
        self.request_path.push(&s.request_path);
        self.request_id.push(s.request_id.as_deref());
        self.partner_id.push(s.partner_id.as_deref());
        self.x_signature.push(&s.x_signature);
        self.access_token.push(&s.access_token);
        self.body.push(&s.body);
    }

    fn bind<'q>(
        self,
        q: sqlx::query::QueryAs<'q, sqlx::Postgres, (Vec<u8>, i64), sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, (Vec<u8>, i64), sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        q.bind(self.times)
            .bind(self.sha)
            .bind(self.credential)
            .bind(self.form)
            .bind(self.signed_at)
            .bind(self.x_timestamp)
            .bind(self.request_path)
            .bind(self.request_id)
            .bind(self.partner_id)
            .bind(self.x_signature)
            .bind(self.access_token)
            .bind(self.body)
    }
}

const SIGNED_COLUMNS: &str = "times_received, content_sha256, credential, signature_form, signed_at,
    x_timestamp, request_path, request_id, partner_id, x_signature, access_token, body";
const DELIVERY_COLUMNS: &str = "webhook_type, event, transaction_key, response_code, response_message,
    response_class, envelope_status, envelope_success, transaction_status_code, transaction_status_desc,
    status, needs_inquiry, outcome, unrecognised_reason, event_at";
const SIGNED_ARRAYS: &str = "$1::int4[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bytea[]";

/// Maps rows returned as `(content_sha256, id)` onto `rows` (in the order given by `sha_of`).
fn ids_by_sha(
    returned: Vec<(Vec<u8>, i64)>,
    n: usize,
    sha_of: impl Fn(usize) -> [u8; 32],
    what: &'static str,
) -> Result<Vec<i64>, BatchError> {
    if returned.len() != n {
        return Err(BatchError::Raced(what));
    }
    let by_sha: HashMap<Vec<u8>, i64> = returned.into_iter().collect();
    (0..n).map(|row| by_sha.get(&sha_of(row)[..]).copied().ok_or(BatchError::Raced(what))).collect()
}

async fn insert_deliveries(
    conn: &mut PgConnection,
    items: &[Write],
    rows: &[NewDelivery],
) -> Result<Vec<i64>, BatchError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let delivery = |row: usize| match &items[rows[row].item] {
        Write::Deliver(d) => &**d,
        _ => unreachable!("new delivery rows come from Deliver items"),
    };
    // Content order, the same in every writer: concurrent batches wait, never deadlock.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&row| delivery(row).signed.content_sha256);
    let mut signed = SignedColumns::default();
    let mut webhook_type = Vec::new();
    let mut event = Vec::new();
    let mut key = Vec::new();
    let mut response_code = Vec::new();
    let mut response_message = Vec::new();
    let mut response_class = Vec::new();
    let mut envelope_status = Vec::new();
    let mut envelope_success = Vec::new();
    let mut status_code = Vec::new();
    let mut status_desc = Vec::new();
    let mut status = Vec::new();
    let mut needs_inquiry = Vec::new();
    let mut outcome = Vec::new();
    let mut unrecognised = Vec::new();
    let mut event_at = Vec::new();
    let mut payload = Vec::new();
    for &row in &order {
        let d = delivery(row);
        let c = &d.classification;
        let single = c.single();
        signed.push(&d.signed, rows[row].times);
        webhook_type.push(c.webhook_type.as_str());
        event.push(c.event.as_deref());
        key.push(single.map(|s| s.transaction_key.as_str()));
        response_code.push(c.response_code.as_deref());
        response_message.push(c.response_message.as_deref());
        response_class.push(c.response_class);
        envelope_status.push(c.envelope_status);
        envelope_success.push(c.envelope_success);
        status_code.push(c.transaction_status_code.as_deref());
        status_desc.push(c.transaction_status_desc.as_deref());
        status.push(single.and_then(|s| s.status.as_deref()));
        needs_inquiry.push(c.needs_inquiry);
        outcome.push(rows[row].outcome.as_str());
        unrecognised.push(match &c.subject {
            Subject::Unrecognised(why) => Some(*why),
            _ => None,
        });
        event_at.push(c.event_at);
        payload.push(d.payload.as_deref());
    }
    let sql = format!(
        "INSERT INTO singapay.deliveries ({SIGNED_COLUMNS}, {DELIVERY_COLUMNS}, payload)
         SELECT {SIGNED_COLUMNS}, {DELIVERY_COLUMNS}, payload::jsonb
           FROM unnest({SIGNED_ARRAYS}, $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                       $18::text[], $19::int4[], $20::bool[], $21::text[], $22::text[], $23::text[],
                       $24::bool[], $25::text[], $26::text[], $27::timestamptz[], $28::text[])
                AS t({SIGNED_COLUMNS}, {DELIVERY_COLUMNS}, payload)
         ON CONFLICT (content_sha256) DO NOTHING
         RETURNING content_sha256, id"
    );
    let returned: Vec<(Vec<u8>, i64)> = signed
        .bind(sqlx::query_as(&sql))
        .bind(webhook_type)
        .bind(event)
        .bind(key)
        .bind(response_code)
        .bind(response_message)
        .bind(response_class)
        .bind(envelope_status)
        .bind(envelope_success)
        .bind(status_code)
        .bind(status_desc)
        .bind(status)
        .bind(needs_inquiry)
        .bind(outcome)
        .bind(unrecognised)
        .bind(event_at)
        .bind(payload)
        .fetch_all(&mut *conn)
        .await?;
    ids_by_sha(returned, rows.len(), |row| delivery(row).signed.content_sha256, "a delivery")
}

/// Creates the batch's new transactions and updates the ones it changed, each once with
/// its final state.
async fn write_transactions(
    conn: &mut PgConnection,
    ledger: &Ledger<'_>,
    resolve: &impl Fn(DeliveryRef) -> i64,
) -> Result<(), BatchError> {
    let mut changed: Vec<_> = ledger.rows.values().filter(|t| t.changed).collect();
    changed.sort_unstable_by(|a, b| a.row.transaction_key.cmp(&b.row.transaction_key));
    for created in [true, false] {
        let rows: Vec<_> = changed.iter().filter(|t| t.stored != created).collect();
        if rows.is_empty() {
            continue;
        }
        let col = |f: fn(&TransactionRow) -> Option<&str>| rows.iter().map(|t| f(&t.row)).collect::<Vec<_>>();
        let keys: Vec<&str> = rows.iter().map(|t| t.row.transaction_key.as_str()).collect();
        let products: Vec<&str> = rows.iter().map(|t| t.row.product.as_str()).collect();
        let statuses: Vec<&str> = rows.iter().map(|t| t.row.status.as_str()).collect();
        let versions: Vec<i32> = rows.iter().map(|t| t.row.version).collect();
        let processed: Vec<Option<DateTime<Utc>>> = rows.iter().map(|t| t.row.processed_at).collect();
        let first: Vec<i64> = rows.iter().map(|t| resolve(t.first_delivery)).collect();
        let last: Vec<i64> = rows.iter().map(|t| resolve(t.last_delivery)).collect();
        let sql = if created {
            "INSERT INTO singapay.transactions
                (transaction_key, product, status, version, transaction_status_code, last_response_code,
                 amount, currency, singapay_id, merchant_reference, processed_at, first_delivery_id,
                 last_delivery_id)
             SELECT k, p, s, v, tsc, lrc, amt::numeric, cur, sid, mref, pa, fd, ld
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                           $12::int8[], $13::int8[])
                    AS t(k, p, s, v, tsc, lrc, amt, cur, sid, mref, pa, fd, ld)
             ON CONFLICT (transaction_key) DO NOTHING
             RETURNING transaction_key"
        } else {
            "UPDATE singapay.transactions t
                SET status = u.s, version = u.v, transaction_status_code = u.tsc, last_response_code = u.lrc,
                    amount = u.amt::numeric, currency = u.cur, singapay_id = u.sid, merchant_reference = u.mref,
                    processed_at = u.pa, last_delivery_id = u.ld, updated_at = now()
               FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[],
                           $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                           $12::int8[], $13::int8[])
                    AS u(k, p, s, v, tsc, lrc, amt, cur, sid, mref, pa, fd, ld)
              WHERE t.transaction_key = u.k
             RETURNING t.transaction_key"
        };
        let written: Vec<String> = sqlx::query_scalar(sql)
            .bind(&keys)
            .bind(products)
            .bind(statuses)
            .bind(versions)
            .bind(col(|r| r.transaction_status_code.as_deref()))
            .bind(col(|r| r.last_response_code.as_deref()))
            .bind(col(|r| r.amount.as_deref()))
            .bind(col(|r| r.currency.as_deref()))
            .bind(col(|r| r.singapay_id.as_deref()))
            .bind(col(|r| r.merchant_reference.as_deref()))
            .bind(processed)
            .bind(first)
            .bind(last)
            .fetch_all(&mut *conn)
            .await?;
        if written.len() != keys.len() {
            return Err(BatchError::Raced("a transaction"));
        }
    }
    Ok(())
}

async fn insert_events(
    conn: &mut PgConnection,
    ledger: &Ledger<'_>,
    resolve: &impl Fn(DeliveryRef) -> i64,
) -> Result<(), sqlx::Error> {
    if ledger.events.is_empty() {
        return Ok(());
    }
    let n = ledger.events.len();
    let (
        mut ids,
        mut keys,
        mut versions,
        mut types,
        mut from,
        mut to,
        mut codes,
        mut status_codes,
        mut deliveries,
        mut docs,
    ) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in &ledger.events {
        let event_id = events::event_id(&e.change.transaction_key, e.version);
        let delivery_id = resolve(e.ctx.delivery);
        docs.push(
            events::document(&EventFacts {
                event_id,
                change: e.change,
                to_status: e.to_status,
                version: e.version,
                from_status: e.from_status.as_deref(),
                webhook_type: e.ctx.webhook_type,
                event: e.ctx.event,
                response_code: e.ctx.response_code,
                delivery_id,
            })
            .to_string(),
        );
        ids.push(event_id);
        keys.push(e.change.transaction_key.as_str());
        versions.push(e.version);
        types.push(e.ctx.webhook_type);
        from.push(e.from_status.as_deref());
        to.push(e.to_status);
        codes.push(e.ctx.response_code);
        status_codes.push(e.change.transaction_status_code.as_deref());
        deliveries.push(delivery_id);
    }
    sqlx::query(
        "INSERT INTO singapay.transaction_events
            (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
             transaction_status_code, delivery_id, payload)
         SELECT e, k, v, wt, fs, ts, rc, tsc, d, p::jsonb
           FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::int8[], $10::text[])
                AS t(e, k, v, wt, fs, ts, rc, tsc, d, p)",
    )
    .bind(ids)
    .bind(keys)
    .bind(versions)
    .bind(types)
    .bind(from)
    .bind(to)
    .bind(codes)
    .bind(status_codes)
    .bind(deliveries)
    .bind(docs)
    .execute(conn)
    .await?;
    Ok(())
}

/// Retries of stored content: counted on the stored row.
async fn count_retries(conn: &mut PgConnection, retries: &HashMap<i64, i32>) -> Result<(), sqlx::Error> {
    if retries.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<(i64, i32)> = retries.iter().map(|(&id, &n)| (id, n)).collect();
    rows.sort_unstable();
    let (ids, counts): (Vec<i64>, Vec<i32>) = rows.into_iter().unzip();
    sqlx::query(
        "UPDATE singapay.deliveries d
            SET times_received = d.times_received + u.n, last_received_at = now()
           FROM unnest($1::int8[], $2::int4[]) AS u(id, n)
          WHERE d.id = u.id",
    )
    .bind(ids)
    .bind(counts)
    .execute(conn)
    .await?;
    Ok(())
}

async fn insert_rejections(
    conn: &mut PgConnection,
    items: &[Write],
    rows: &[(usize, i32)],
) -> Result<Vec<i64>, BatchError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let rejection = |row: usize| match &items[rows[row].0] {
        Write::Stale(r) => r,
        _ => unreachable!("rejection rows come from Stale items"),
    };
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&row| rejection(row).signed.content_sha256);
    let mut signed = SignedColumns::default();
    let mut reasons = Vec::new();
    for &row in &order {
        signed.push(&rejection(row).signed, rows[row].1);
        reasons.push(rejection(row).reason);
    }
    let sql = format!(
        "INSERT INTO singapay.rejected_deliveries ({SIGNED_COLUMNS}, reason)
         SELECT {SIGNED_COLUMNS}, reason
           FROM unnest({SIGNED_ARRAYS}, $13::text[]) AS t({SIGNED_COLUMNS}, reason)
         ON CONFLICT (content_sha256) DO UPDATE
            SET times_received = singapay.rejected_deliveries.times_received + excluded.times_received,
                last_received_at = now()
         RETURNING content_sha256, id"
    );
    let returned: Vec<(Vec<u8>, i64)> = signed.bind(sqlx::query_as(&sql)).bind(reasons).fetch_all(&mut *conn).await?;
    ids_by_sha(returned, rows.len(), |row| rejection(row).signed.content_sha256, "a rejection")
}

/// A re-applied delivery's row is rewritten only when something was applied now or it had
/// not been understood before.
async fn update_reapplied(
    conn: &mut PgConnection,
    items: &[Write],
    updates: &[(i64, usize, Outcome)],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut keys = Vec::new();
    let mut statuses = Vec::new();
    let mut inquiry = Vec::new();
    let mut outcomes = Vec::new();
    for &(id, item, outcome) in updates {
        let Write::Reapply { classification: c, .. } = &items[item] else { continue };
        let single = c.single();
        ids.push(id);
        types.push(c.webhook_type.as_str());
        keys.push(single.map(|s| s.transaction_key.as_str()));
        statuses.push(single.and_then(|s| s.status.as_deref()));
        inquiry.push(c.needs_inquiry);
        outcomes.push(outcome.as_str());
    }
    sqlx::query(
        "UPDATE singapay.deliveries d
            SET webhook_type = u.wt, transaction_key = u.k, status = u.s, needs_inquiry = u.ni,
                outcome = u.o, unrecognised_reason = NULL
           FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::text[])
                AS u(id, wt, k, s, ni, o)
          WHERE d.id = u.id",
    )
    .bind(ids)
    .bind(types)
    .bind(keys)
    .bind(statuses)
    .bind(inquiry)
    .bind(outcomes)
    .execute(conn)
    .await?;
    Ok(())
}
