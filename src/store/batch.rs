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

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::deliveries::{Delivery, Outcome, Rejection, Signed, Stored};
use super::events::{self, EventFacts};
use super::inquiries::{self, Inquiry};
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
    /// An answer from Singapay's API: recorded, its status (if it told one) applied like a
    /// callback's, its check settled.
    Inquiry(Box<Inquiry>),
}

impl Write {
    /// The content's own time, for the items that arrived over HTTP.
    fn event_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Write::Deliver(d) => d.classification.event_at,
            Write::Stale(r) => r.event_at,
            Write::Reapply { .. } | Write::Inquiry(_) => None,
        }
    }

    /// What was signed, for the items that arrived over HTTP.
    pub fn signed(&self) -> Option<&Signed> {
        match self {
            Write::Deliver(d) => Some(&d.signed),
            Write::Stale(r) => Some(&r.signed),
            Write::Reapply { .. } | Write::Inquiry(_) => None,
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
    /// An inquiry's answer, recorded in `inquiries`; what applying its status did.
    Inquired {
        inquiry_id: i64,
        change: Option<super::StateChange>,
    },
}

impl Written {
    /// Whether writing it added queue rows (a change was applied).
    pub fn queued_events(&self) -> bool {
        match self {
            Written::Stored(s) => s.changes.iter().any(|c| c.transition == Transition::Applied),
            Written::Inquired { change, .. } => change.as_ref().is_some_and(|c| c.transition == Transition::Applied),
            Written::Rejected { .. } => false,
        }
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
    Inquired { item: usize, change: Option<super::StateChange> },
}

/// Batches after which a connection's prepared statements are dropped, so that Postgres
/// plans them again for the tables as they are now (a generic plan chosen while a table
/// was empty would otherwise scan it whole until the next `ANALYZE`).
pub const REPREPARE_EVERY: u64 = 256;

/// How a batch's transaction starts: with generic plans for its statements, and without
/// sequential scans. Left to choose, Postgres plans the statements that take `= ANY($1)`
/// anew on every call (their generic plan's estimate assumes ten elements), which costs
/// more than the rest of a one-callback batch (measured: idle latency). Every statement of
/// a batch looks rows up by key; but while a table's statistics are older than its growth
/// (a fresh deployment before autovacuum's first `ANALYZE`), the generic plan was a
/// sequential scan of `deliveries` and `transactions` per batch: 550 buffers and 0.6–0.8 ms
/// for one callback with 2,000 rows stored, most of a lone callback's Postgres time.
pub const BEGIN_BATCH: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// Writes `items` inside the caller's transaction; one answer per item, in order. Waits
/// for a transaction row another session has locked (up to `lock_timeout`): for `replay`,
/// which writes one item.
pub async fn write(conn: &mut PgConnection, items: &[Write]) -> Result<Vec<Written>, BatchError> {
    let attempt = write_items(conn, items, Locking::Wait).await?;
    attempt.written.into_iter().map(|w| w.ok_or(BatchError::Raced("a locked transaction"))).collect()
}

/// What [`write_available`] did: one answer per item, in order, `None` for an item left
/// out because a transaction it changes is locked by another session.
#[derive(Debug)]
pub struct Attempt {
    pub written: Vec<Option<Written>>,
    /// The transaction keys found locked by another session.
    pub locked: Vec<String>,
}

/// Writes `items` inside the caller's transaction without waiting for a row lock: an item
/// that would change a transaction another session has locked (a consumer, an open `psql`,
/// a slow `replay`, another writer) is left out, answered `None`, for the caller to try
/// again — and so is every later item that shares a transaction or a content with one left
/// out, so that each transaction still sees its items in arrival order. The rest is
/// written at once.
pub async fn write_available(conn: &mut PgConnection, items: &[Write]) -> Result<Attempt, BatchError> {
    write_items(conn, items, Locking::SkipLocked).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locking {
    Wait,
    SkipLocked,
}

async fn write_items(conn: &mut PgConnection, items: &[Write], locking: Locking) -> Result<Attempt, BatchError> {
    lock_contents(conn, items).await?;
    // The days that may hold an earlier copy of the contents: where they are looked up and
    // where their retries are counted.
    let since = stored_since(content_times(items), "d");
    let Read { locked, known, busy } = read(conn, items, locking, &since).await?;
    let left_out = left_out(items, &busy);
    let reapplied = lock_reapplied(conn, items).await?;

    // Decide.
    let mut ledger = Ledger::new(locked);
    let mut new_rows: Vec<NewDelivery> = Vec::new();
    let mut new_by_sha: HashMap<[u8; 32], usize> = HashMap::new();
    let mut retries: HashMap<(i64, DateTime<Utc>), i32> = HashMap::new();
    let mut rejections: Vec<(usize, i32)> = Vec::new();
    let mut rejection_by_sha: HashMap<[u8; 32], usize> = HashMap::new();
    let mut delivery_updates: Vec<(i64, usize, Outcome)> = Vec::new();
    let mut fates = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if left_out[i] {
            fates.push(None);
            continue;
        }
        let fate = match item {
            Write::Deliver(_) | Write::Stale(_) => {
                let sha = item.signed().map_or([0; 32], |s| s.content_sha256);
                if let Some(&(id, stored_at, outcome)) = known.get(&sha) {
                    *retries.entry((id, stored_at)).or_default() += 1;
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
            Write::Inquiry(q) => {
                // A stored transaction keeps its deliveries. A new one is created from the
                // delivery that asked for the inquiry (its first and last delivery), or, for
                // a check someone requested, with no delivery; an overdue check's
                // transaction that has gone (it cannot, short of a manual delete) is not
                // brought back.
                let change = q.change.as_ref().and_then(|ch| {
                    let status = ch.status.as_deref()?;
                    let delivery = match q.delivery_id {
                        _ if ledger.rows.contains_key(&ch.transaction_key) => DeliveryRef::Keep,
                        Some(id) => DeliveryRef::Stored(id),
                        None if q.reason == inquiries::CheckReason::Requested => DeliveryRef::Keep,
                        None => return None,
                    };
                    let ctx = Context {
                        delivery,
                        webhook_type: INQUIRY_WEBHOOK_TYPE,
                        event: None,
                        response_code: q.response_code.as_deref(),
                        inquiry: Some(i),
                    };
                    Some(ledger.apply(ch, status, ctx))
                });
                Fate::Inquired { item: i, change }
            }
        };
        fates.push(Some(fate));
    }

    // Write. Inquiries first: their events name them.
    let mut inquiry_ids = HashMap::new();
    for fate in fates.iter().flatten() {
        if let Fate::Inquired { item, change } = fate {
            if let Write::Inquiry(q) = &items[*item] {
                inquiry_ids.insert(*item, inquiries::record(conn, q, change.as_ref()).await?);
            }
        }
    }
    let new_ids = insert_all(conn, items, &new_rows, &ledger, &inquiry_ids).await.map_err(raced_on_unique_violation)?;
    for (&item, &id) in &inquiry_ids {
        if let Write::Inquiry(q) = &items[item] {
            inquiries::finish_check(conn, &q.transaction_key, &q.asked_by, &q.next, Some(id), q.answer).await?;
            if q.change.as_ref().is_some_and(|c| c.status.is_some()) {
                inquiries::clear_needs_inquiry(conn, &q.transaction_key).await?;
            }
        }
    }
    count_retries(conn, &retries, &since).await?;
    let rejection_ids = insert_rejections(conn, items, &rejections).await?;
    update_reapplied(conn, items, &delivery_updates).await?;

    let written = fates
        .into_iter()
        .map(|fate| {
            fate.map(|fate| match fate {
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
                Fate::Inquired { item, change } => Written::Inquired { inquiry_id: inquiry_ids[&item], change },
            })
        })
        .collect();
    Ok(Attempt { written, locked: busy })
}

/// `webhook_type` of the events an inquiry's answer causes.
pub const INQUIRY_WEBHOOK_TYPE: &str = "inquiry";

/// A unique violation while inserting means a concurrent writer stored the same content or
/// created the same transaction first (its commit is visible to a retry).
fn raced_on_unique_violation(e: BatchError) -> BatchError {
    match e {
        BatchError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {
            BatchError::Raced("a delivery or transaction")
        }
        other => other,
    }
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
        inquiry: None,
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

/// Which items to leave out of this transaction: those that change a transaction in
/// `busy` (locked by another session), and every later item that shares a transaction or
/// a content with one left out (its turn comes after that one's).
fn left_out(items: &[Write], busy: &[String]) -> Vec<bool> {
    if busy.is_empty() {
        return vec![false; items.len()];
    }
    left_out_of(items.iter().map(|item| (item_keys(item).collect(), item.signed().map(|s| s.content_sha256))), busy)
}

/// [`left_out`] over each item's transaction keys and content.
fn left_out_of<'a>(items: impl Iterator<Item = (Vec<&'a str>, Option<[u8; 32]>)>, busy: &'a [String]) -> Vec<bool> {
    let mut keys: HashSet<&str> = busy.iter().map(String::as_str).collect();
    let mut shas: HashSet<[u8; 32]> = HashSet::new();
    items
        .map(|(item_keys, sha)| {
            let out = item_keys.iter().any(|k| keys.contains(k)) || sha.is_some_and(|s| shas.contains(&s));
            if out {
                keys.extend(item_keys);
                shas.extend(sha);
            }
            out
        })
        .collect()
}

/// Every transaction key an item may change.
fn item_keys(item: &Write) -> impl Iterator<Item = &str> {
    let classification = match item {
        Write::Deliver(d) => Some(&d.classification),
        Write::Reapply { classification, .. } => Some(classification),
        Write::Stale(_) | Write::Inquiry(_) => None,
    };
    let inquired = match item {
        Write::Inquiry(q) => q.change.as_ref().filter(|c| c.status.is_some()).map(|c| c.transaction_key.as_str()),
        _ => None,
    };
    classification.into_iter().flat_map(keys_of).chain(inquired)
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

/// Serialises the writers of each content: a transaction-scoped advisory lock per content
/// (its SHA-256's first 8 bytes), taken in key order (concurrent batches wait, never
/// deadlock), before [`read`] looks the contents up in a new snapshot. `deliveries` and
/// `rejected_deliveries` are partitioned by day and their unique indexes hold within a day
/// only: without this lock, the same content arriving on both sides of midnight would be
/// stored twice, once in each day. With it, the second writer waits for the first to commit
/// and then finds its row, whichever day holds it.
async fn lock_contents(conn: &mut PgConnection, items: &[Write]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i64> = items
        .iter()
        .filter_map(Write::signed)
        .map(|s| i64::from_be_bytes(s.content_sha256[..8].try_into().expect("8 bytes")))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort_unstable();
    keys.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::int8[]) AS u(k)")
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// How long before a content's own time (`event_at`: the body's `timestamp`, or its
/// change's) an earlier copy of it may have been stored: Singapay stamps a body before
/// sending it, so only a clock of Singapay's running more than this ahead of the database's
/// could put a copy earlier.
const COPY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// The days of history that may hold an earlier copy of the batch's contents, as a
/// condition on `{alias}.stored_at` with a literal bound (its day's start, so few distinct
/// statements): Postgres reads only those days' partitions (and the partition of history
/// kept from before partitioning, stored at '-infinity'), and locks only them, instead of
/// every day kept. A content without a time of its own (not Singapay's format) is looked up
/// in every day.
fn stored_since(times: impl IntoIterator<Item = Option<DateTime<Utc>>>, alias: &str) -> String {
    let mut from: Option<DateTime<Utc>> = None;
    for at in times {
        let Some(at) = at.and_then(|t| t.checked_sub_signed(COPY_MARGIN)) else {
            return "true".to_owned();
        };
        from = Some(from.map_or(at, |f| f.min(at)));
    }
    match from {
        None => "true".to_owned(),
        Some(t) => {
            let day = t.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
            format!(
                "({alias}.stored_at >= '{}'::timestamptz OR {alias}.stored_at = '-infinity')",
                day.format("%Y-%m-%d %H:%M:%S+00")
            )
        }
    }
}

/// The own times of the items' contents (those that arrived over HTTP), for [`stored_since`].
fn content_times(items: &[Write]) -> impl Iterator<Item = Option<DateTime<Utc>>> + '_ {
    items.iter().filter(|item| item.signed().is_some()).map(Write::event_at)
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
    /// A transaction that exists but that another session has locked (skipped).
    busy: bool,
    stored_at: Option<DateTime<Utc>>,
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

/// Contents already stored: the delivery's id, its day (`stored_at`, which partition) and
/// outcome.
type Known = HashMap<[u8; 32], (i64, DateTime<Utc>, Outcome)>;

/// What [`read`] found.
struct Read {
    locked: Vec<TransactionRow>,
    known: Known,
    /// Transactions that exist but another session has locked ([`Locking::SkipLocked`]).
    busy: Vec<String>,
}

/// In one statement: locks every transaction the batch may change, in key order (writers
/// never deadlock), and finds the contents already stored. A prepared statement with a
/// generic plan ([`BEGIN_BATCH`]), re-prepared now and then ([`REPREPARE_EVERY`]).
///
/// [`Locking::Wait`] waits for a row another session has locked (up to `lock_timeout`);
/// [`Locking::SkipLocked`] never waits: it returns such rows' keys as `busy` (a row in the
/// statement's snapshot that it could not lock).
///
/// The look-up sees the statement's snapshot, taken before any lock wait: content that a
/// writer we waited for has just committed is not seen, its insert comes back short, and
/// the batch is retried ([`BatchError::Raced`]).
/// `since`: the condition on `d.stored_at` of [`stored_since`].
async fn read(conn: &mut PgConnection, items: &[Write], locking: Locking, since: &str) -> Result<Read, sqlx::Error> {
    let mut keys: Vec<&str> = items.iter().flat_map(item_keys).collect();
    keys.sort_unstable();
    keys.dedup();
    let shas: Vec<&[u8]> = items.iter().filter_map(Write::signed).map(|s| &s.content_sha256[..]).collect();
    if keys.is_empty() && shas.is_empty() {
        return Ok(Read { locked: Vec::new(), known: HashMap::new(), busy: Vec::new() });
    }
    const NULLS: &str = "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL";
    let (skip, busy) = match locking {
        Locking::Wait => ("", String::new()),
        Locking::SkipLocked => (
            " SKIP LOCKED",
            format!(
                "UNION ALL
                 SELECT transaction_key, {NULLS}, NULL, NULL, NULL, true, NULL FROM singapay.transactions
                  WHERE transaction_key = ANY($1) AND transaction_key NOT IN (SELECT transaction_key FROM locked)"
            ),
        ),
    };
    let rows: Vec<ReadRow> = sqlx::query_as(&format!(
        "WITH locked AS (
            SELECT {ROW_COLUMNS} FROM singapay.transactions
             WHERE transaction_key = ANY($1) ORDER BY transaction_key FOR UPDATE{skip})
         SELECT locked.*, NULL::bytea AS content_sha256, NULL::int8 AS id, NULL::text AS outcome, false AS busy,
                NULL::timestamptz AS stored_at
           FROM locked
         UNION ALL
         SELECT NULL, {NULLS}, d.content_sha256, d.id, d.outcome, false, d.stored_at
           FROM singapay.deliveries d WHERE d.content_sha256 = ANY($2) AND {since}
         {busy}"
    ))
    .bind(keys)
    .bind(shas)
    .fetch_all(conn)
    .await?;
    let mut locked = Vec::new();
    let mut known = HashMap::new();
    let mut busy = Vec::new();
    for r in rows {
        let t = r.transaction;
        match (t.transaction_key, r.content_sha256, r.id, r.outcome) {
            (Some(transaction_key), ..) if r.busy => busy.push(transaction_key),
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
                let stored_at = r.stored_at.ok_or_else(|| decode("deliveries.stored_at is null"))?;
                known.insert(sha, (id, stored_at, outcome));
            }
            _ => return Err(decode("unexpected row in the batch read")),
        }
    }
    Ok(Read { locked, known, busy })
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

    fn bind<'q, O>(
        self,
        q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
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
/// The bearer token's SHA-256, kept after `prune` drops the token itself (`verify --token`).
const TOKEN_SHA256: &str = "CASE WHEN access_token <> '' THEN sha256(convert_to(access_token, 'UTF8')) END";
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

/// A delivery as the write statement refers to it: by id when stored, by content when it
/// is one of the rows the same statement inserts.
fn by_ref(r: DeliveryRef, new_sha: &impl Fn(usize) -> [u8; 32]) -> (Option<i64>, Option<[u8; 32]>) {
    match r {
        DeliveryRef::Stored(id) => (Some(id), None),
        DeliveryRef::New(row) => (None, Some(new_sha(row))),
        DeliveryRef::Keep => (None, None),
    }
}

/// The new deliveries, the new and the changed transactions and the queue rows, in one
/// statement (data-modifying CTEs: one round trip, and the foreign keys are checked at its
/// end, when every row exists). Rows refer to the deliveries inserted alongside them by
/// content. Returns the new deliveries' ids, in `rows` order.
///
/// No `ON CONFLICT` here: a content or a transaction that a concurrent writer stored first
/// is a unique violation, which [`write`] reports as [`BatchError::Raced`].
async fn insert_all(
    conn: &mut PgConnection,
    items: &[Write],
    rows: &[NewDelivery],
    ledger: &Ledger<'_>,
    inquiry_ids: &HashMap<usize, i64>,
) -> Result<Vec<i64>, BatchError> {
    if rows.is_empty() && ledger.events.is_empty() && !ledger.rows.values().any(|t| t.changed) {
        return Ok(Vec::new());
    }
    let delivery = |row: usize| match &items[rows[row].item] {
        Write::Deliver(d) => &**d,
        _ => unreachable!("new delivery rows come from Deliver items"),
    };
    let new_sha = |row: usize| delivery(row).signed.content_sha256;
    // Content order, the same in every writer: concurrent batches wait, never deadlock.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&row| new_sha(row));
    let mut signed = SignedColumns::default();
    let mut d = DeliveryColumns::default();
    for &row in &order {
        signed.push(&delivery(row).signed, rows[row].times);
        d.push(delivery(row), rows[row].outcome);
    }

    let mut changed: Vec<_> = ledger.rows.values().filter(|t| t.changed).collect();
    changed.sort_unstable_by(|a, b| a.row.transaction_key.cmp(&b.row.transaction_key));
    let mut t = TransactionColumns::default();
    for row in &changed {
        t.push(row, &new_sha);
    }

    let mut e = EventColumns::default();
    for ev in &ledger.events {
        e.push(ev, &new_sha, inquiry_ids);
    }

    let sql = format!(
        "WITH d AS (
            INSERT INTO singapay.deliveries ({SIGNED_COLUMNS}, access_token_sha256, {DELIVERY_COLUMNS}, payload)
            SELECT {SIGNED_COLUMNS}, {TOKEN_SHA256}, {DELIVERY_COLUMNS}, payload::jsonb
              FROM unnest({SIGNED_ARRAYS}, $13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                          $18::text[], $19::int4[], $20::bool[], $21::text[], $22::text[], $23::text[],
                          $24::bool[], $25::text[], $26::text[], $27::timestamptz[], $28::text[])
                   AS t({SIGNED_COLUMNS}, {DELIVERY_COLUMNS}, payload)
            RETURNING content_sha256, id
         ), t AS (
            SELECT u.*,
                   coalesce(u.fd, (SELECT d.id FROM d WHERE d.content_sha256 = u.fsha)) AS first_id,
                   coalesce(u.ld, (SELECT d.id FROM d WHERE d.content_sha256 = u.lsha)) AS last_id
              FROM unnest($29::bool[], $30::text[], $31::text[], $32::text[], $33::int4[], $34::text[],
                          $35::text[], $36::text[], $37::text[], $38::text[], $39::text[],
                          $40::timestamptz[], $41::int8[], $42::bytea[], $43::int8[], $44::bytea[])
                   AS u(stored, k, p, s, v, tsc, lrc, amt, cur, sid, mref, pa, fd, fsha, ld, lsha)
         ), created AS (
            INSERT INTO singapay.transactions
                (transaction_key, product, status, version, transaction_status_code, last_response_code,
                 amount, currency, singapay_id, merchant_reference, processed_at, first_delivery_id,
                 last_delivery_id)
            SELECT k, p, s, v, tsc, lrc, amt::numeric, cur, sid, mref, pa, first_id, last_id
              FROM t WHERE NOT stored
            RETURNING 1
         ), updated AS (
            UPDATE singapay.transactions x
               SET status = t.s, version = t.v, transaction_status_code = t.tsc, last_response_code = t.lrc,
                   amount = t.amt::numeric, currency = t.cur, singapay_id = t.sid, merchant_reference = t.mref,
                   processed_at = t.pa, last_delivery_id = coalesce(t.last_id, x.last_delivery_id),
                   updated_at = now()
              FROM t WHERE t.stored AND x.transaction_key = t.k
            RETURNING 1
         ), e AS (
            SELECT u.*, coalesce(u.did, (SELECT d.id FROM d WHERE d.content_sha256 = u.dsha)) AS delivery_id
              FROM unnest($45::uuid[], $46::text[], $47::int4[], $48::text[], $49::text[], $50::text[],
                          $51::text[], $52::text[], $53::int8[], $54::bytea[], $55::text[])
                   AS u(eid, k, v, wt, fs, ts, rc, tsc, did, dsha, doc)
         ), logged AS (
            INSERT INTO singapay.event_log
                (event_id, transaction_key, version, webhook_type, from_status, to_status, response_code,
                 transaction_status_code, delivery_id, payload)
            SELECT eid, k, v, wt, fs, ts, rc, tsc, delivery_id,
                   CASE WHEN delivery_id IS NULL THEN doc::jsonb
                        ELSE jsonb_set(doc::jsonb, '{{delivery_id}}', to_jsonb(delivery_id)) END
              FROM e
            RETURNING id, transaction_key, version, stored_at
         ), queued AS (
            INSERT INTO singapay.event_queue (id, transaction_key, version, stored_at)
            SELECT id, transaction_key, version, stored_at FROM logged
            RETURNING 1
         )
         SELECT content_sha256, id FROM d
         UNION ALL SELECT NULL, (SELECT count(*) FROM created) + (SELECT count(*) FROM updated)
         UNION ALL SELECT NULL, (SELECT count(*) FROM queued)"
    );
    let q = d.bind(signed.bind(sqlx::query_as(&sql)));
    let q = e.bind(t.bind(q));
    let returned: Vec<(Option<Vec<u8>>, i64)> = q.fetch_all(&mut *conn).await?;
    let mut inserted = Vec::with_capacity(rows.len());
    let mut counts = Vec::new();
    for (sha, id) in returned {
        match sha {
            Some(sha) => inserted.push((sha, id)),
            None => counts.push(id),
        }
    }
    if counts != [changed.len() as i64, ledger.events.len() as i64] {
        return Err(BatchError::Raced("a transaction"));
    }
    ids_by_sha(inserted, rows.len(), new_sha, "a delivery")
}

type Insert<'q> = sqlx::query::QueryAs<'q, sqlx::Postgres, (Option<Vec<u8>>, i64), sqlx::postgres::PgArguments>;

/// `deliveries` columns beyond what was signed, one array each.
#[derive(Default)]
struct DeliveryColumns<'a> {
    webhook_type: Vec<&'static str>,
    event: Vec<Option<&'a str>>,
    key: Vec<Option<&'a str>>,
    response_code: Vec<Option<&'a str>>,
    response_message: Vec<Option<&'a str>>,
    response_class: Vec<Option<&'static str>>,
    envelope_status: Vec<Option<i32>>,
    envelope_success: Vec<Option<bool>>,
    status_code: Vec<Option<&'a str>>,
    status_desc: Vec<Option<&'a str>>,
    status: Vec<Option<&'a str>>,
    needs_inquiry: Vec<bool>,
    outcome: Vec<&'static str>,
    unrecognised: Vec<Option<&'static str>>,
    event_at: Vec<Option<DateTime<Utc>>>,
    payload: Vec<Option<&'a str>>,
}

impl<'a> DeliveryColumns<'a> {
    fn push(&mut self, d: &'a Delivery, outcome: Outcome) {
        let c = &d.classification;
        let single = c.single();
        self.webhook_type.push(c.webhook_type.as_str());
        self.event.push(c.event.as_deref());
        self.key.push(single.map(|s| s.transaction_key.as_str()));
        self.response_code.push(c.response_code.as_deref());
        self.response_message.push(c.response_message.as_deref());
        self.response_class.push(c.response_class);
        self.envelope_status.push(c.envelope_status);
        self.envelope_success.push(c.envelope_success);
        self.status_code.push(c.transaction_status_code.as_deref());
        self.status_desc.push(c.transaction_status_desc.as_deref());
        self.status.push(single.and_then(|s| s.status.as_deref()));
        self.needs_inquiry.push(c.needs_inquiry);
        self.outcome.push(outcome.as_str());
        self.unrecognised.push(match &c.subject {
            Subject::Unrecognised(why) => Some(*why),
            _ => None,
        });
        self.event_at.push(c.event_at);
        self.payload.push(d.payload.as_deref());
    }

    fn bind<'q>(self, q: Insert<'q>) -> Insert<'q>
    where
        'a: 'q,
    {
        q.bind(self.webhook_type)
            .bind(self.event)
            .bind(self.key)
            .bind(self.response_code)
            .bind(self.response_message)
            .bind(self.response_class)
            .bind(self.envelope_status)
            .bind(self.envelope_success)
            .bind(self.status_code)
            .bind(self.status_desc)
            .bind(self.status)
            .bind(self.needs_inquiry)
            .bind(self.outcome)
            .bind(self.unrecognised)
            .bind(self.event_at)
            .bind(self.payload)
    }
}

/// New and changed `transactions` rows with their final state, one array per column.
#[derive(Default)]
struct TransactionColumns<'a> {
    stored: Vec<bool>,
    key: Vec<&'a str>,
    product: Vec<&'a str>,
    status: Vec<&'a str>,
    version: Vec<i32>,
    status_code: Vec<Option<&'a str>>,
    response_code: Vec<Option<&'a str>>,
    amount: Vec<Option<&'a str>>,
    currency: Vec<Option<&'a str>>,
    singapay_id: Vec<Option<&'a str>>,
    merchant_reference: Vec<Option<&'a str>>,
    processed_at: Vec<Option<DateTime<Utc>>>,
    first_id: Vec<Option<i64>>,
    first_sha: Vec<Option<[u8; 32]>>,
    last_id: Vec<Option<i64>>,
    last_sha: Vec<Option<[u8; 32]>>,
}

impl<'a> TransactionColumns<'a> {
    fn push(&mut self, t: &'a super::transactions::Tracked, new_sha: &impl Fn(usize) -> [u8; 32]) {
        let r = &t.row;
        self.stored.push(t.stored);
        self.key.push(&r.transaction_key);
        self.product.push(&r.product);
        self.status.push(&r.status);
        self.version.push(r.version);
        self.status_code.push(r.transaction_status_code.as_deref());
        self.response_code.push(r.last_response_code.as_deref());
        self.amount.push(r.amount.as_deref());
        self.currency.push(r.currency.as_deref());
        self.singapay_id.push(r.singapay_id.as_deref());
        self.merchant_reference.push(r.merchant_reference.as_deref());
        self.processed_at.push(r.processed_at);
        let (id, sha) = by_ref(t.first_delivery, new_sha);
        self.first_id.push(id);
        self.first_sha.push(sha);
        let (id, sha) = by_ref(t.last_delivery, new_sha);
        self.last_id.push(id);
        self.last_sha.push(sha);
    }

    fn bind<'q>(self, q: Insert<'q>) -> Insert<'q>
    where
        'a: 'q,
    {
        let shas = |v: Vec<Option<[u8; 32]>>| v.into_iter().map(|s| s.map(|s| s.to_vec())).collect::<Vec<_>>();
        q.bind(self.stored)
            .bind(self.key)
            .bind(self.product)
            .bind(self.status)
            .bind(self.version)
            .bind(self.status_code)
            .bind(self.response_code)
            .bind(self.amount)
            .bind(self.currency)
            .bind(self.singapay_id)
            .bind(self.merchant_reference)
            .bind(self.processed_at)
            .bind(self.first_id)
            .bind(shas(self.first_sha))
            .bind(self.last_id)
            .bind(shas(self.last_sha))
    }
}

/// Queue rows, one array per column; the event document's `delivery_id` is set in SQL.
#[derive(Default)]
struct EventColumns<'a> {
    event_id: Vec<uuid::Uuid>,
    key: Vec<&'a str>,
    version: Vec<i32>,
    webhook_type: Vec<&'a str>,
    from_status: Vec<Option<&'a str>>,
    to_status: Vec<&'a str>,
    response_code: Vec<Option<&'a str>>,
    status_code: Vec<Option<&'a str>>,
    delivery_id: Vec<Option<i64>>,
    delivery_sha: Vec<Option<Vec<u8>>>,
    document: Vec<String>,
}

impl<'a> EventColumns<'a> {
    fn push(
        &mut self,
        e: &'a super::transactions::PlannedEvent<'a>,
        new_sha: &impl Fn(usize) -> [u8; 32],
        inquiry_ids: &HashMap<usize, i64>,
    ) {
        let event_id = events::event_id(&e.change.transaction_key, e.version);
        let inquiry_id = e.ctx.inquiry.and_then(|item| inquiry_ids.get(&item).copied());
        // An inquiry's event names its inquiry, not a delivery.
        let (id, sha) = if inquiry_id.is_some() { (None, None) } else { by_ref(e.ctx.delivery, new_sha) };
        self.document.push(
            events::document(&EventFacts {
                event_id,
                change: e.change,
                to_status: e.to_status,
                version: e.version,
                from_status: e.from_status.as_deref(),
                webhook_type: e.ctx.webhook_type,
                event: e.ctx.event,
                response_code: e.ctx.response_code,
                // Set by the statement once the delivery's id is known.
                delivery_id: if inquiry_id.is_some() { None } else { Some(id.unwrap_or(0)) },
                inquiry_id,
            })
            .to_string(),
        );
        self.event_id.push(event_id);
        self.key.push(&e.change.transaction_key);
        self.version.push(e.version);
        self.webhook_type.push(e.ctx.webhook_type);
        self.from_status.push(e.from_status.as_deref());
        self.to_status.push(e.to_status);
        self.response_code.push(e.ctx.response_code);
        self.status_code.push(e.change.transaction_status_code.as_deref());
        self.delivery_id.push(id);
        self.delivery_sha.push(sha.map(|s| s.to_vec()));
    }

    fn bind<'q>(self, q: Insert<'q>) -> Insert<'q>
    where
        'a: 'q,
    {
        q.bind(self.event_id)
            .bind(self.key)
            .bind(self.version)
            .bind(self.webhook_type)
            .bind(self.from_status)
            .bind(self.to_status)
            .bind(self.response_code)
            .bind(self.status_code)
            .bind(self.delivery_id)
            .bind(self.delivery_sha)
            .bind(self.document)
    }
}

/// Retries of stored content: counted on the stored row, found by its id in its day's
/// partition (`since`: the days [`read`] looked in, so that only their partitions are read
/// and locked).
async fn count_retries(
    conn: &mut PgConnection,
    retries: &HashMap<(i64, DateTime<Utc>), i32>,
    since: &str,
) -> Result<(), sqlx::Error> {
    if retries.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<((i64, DateTime<Utc>), i32)> = retries.iter().map(|(&k, &n)| (k, n)).collect();
    rows.sort_unstable();
    let mut ids = Vec::with_capacity(rows.len());
    let mut days = Vec::with_capacity(rows.len());
    let mut counts = Vec::with_capacity(rows.len());
    for ((id, stored_at), n) in rows {
        ids.push(id);
        days.push(stored_at);
        counts.push(n);
    }
    sqlx::query(&format!(
        "UPDATE singapay.deliveries d
            SET times_received = d.times_received + u.n, last_received_at = now()
           FROM unnest($1::int8[], $2::timestamptz[], $3::int4[]) AS u(id, stored_at, n)
          WHERE d.id = u.id AND d.stored_at = u.stored_at AND {since}"
    ))
    .bind(ids)
    .bind(days)
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
        reasons.push(rejection(row).reason.as_str());
    }
    // Content already refused on another day (the unique index holds within a day) is
    // counted there; the rest is inserted. The contents are locked ([`lock_contents`]).
    // Only the days that may hold an earlier copy are read.
    let since = stored_since(rows.iter().map(|&(item, _)| items[item].event_at()), "r");
    let sql = format!(
        "WITH t AS (
            SELECT * FROM unnest({SIGNED_ARRAYS}, $13::text[]) AS t({SIGNED_COLUMNS}, reason)
         ), counted AS (
            UPDATE singapay.rejected_deliveries r
               SET times_received = r.times_received + t.times_received, last_received_at = now()
              FROM t WHERE r.content_sha256 = t.content_sha256 AND {since}
            RETURNING r.content_sha256, r.id
         ), inserted AS (
            INSERT INTO singapay.rejected_deliveries ({SIGNED_COLUMNS}, access_token_sha256, reason)
            SELECT {SIGNED_COLUMNS}, {TOKEN_SHA256}, reason
              FROM t WHERE NOT EXISTS (SELECT 1 FROM singapay.rejected_deliveries r
                                        WHERE r.content_sha256 = t.content_sha256 AND {since})
            RETURNING content_sha256, id
         )
         SELECT content_sha256, id FROM counted UNION ALL SELECT content_sha256, id FROM inserted"
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
    let mut marked: Vec<String> = Vec::new();
    for &(id, item, outcome) in updates {
        let Write::Reapply { classification: c, .. } = &items[item] else { continue };
        let single = c.single();
        ids.push(id);
        types.push(c.webhook_type.as_str());
        keys.push(single.map(|s| s.transaction_key.as_str()));
        statuses.push(single.and_then(|s| s.status.as_deref()));
        inquiry.push(c.needs_inquiry);
        outcomes.push(outcome.as_str());
        marked.extend(keys_of(c).chain(single.map(|s| s.transaction_key.as_str())).map(str::to_owned));
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
    .execute(&mut *conn)
    .await?;
    // The transactions it names now have a row from the day the delivery was stored, before
    // their `history_from`: retirement finds them by their last change instead.
    sqlx::query(
        "UPDATE singapay.transactions SET history_from = '-infinity'
          WHERE transaction_key = ANY($1) AND history_from > '-infinity'",
    )
    .bind(marked)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::left_out_of;

    #[test]
    fn items_behind_a_locked_transaction_wait_with_it_in_arrival_order() {
        let sha = |b: u8| Some([b; 32]);
        let items = vec![
            (vec!["x"], sha(1)),      // 0: the locked transaction
            (vec!["y"], sha(2)),      // 1: unrelated
            (vec!["z"], sha(3)),      // 2: z before anything ties it to x: written now
            (vec!["x", "w"], sha(4)), // 3: a sweep naming x and w: waits
            (vec!["w"], sha(5)),      // 4: w after that sweep: waits behind it
            (vec!["y"], sha(6)),      // 5: y again: nothing to wait for
            (vec![], sha(1)),         // 6: the same content as 0 (a stale retry): waits with it
            (vec![], sha(2)),         // 7: the same content as 1: written now
            (vec!["v"], None),        // 8: unrelated, no content (an inquiry)
        ];
        let busy = vec!["x".to_owned()];
        assert_eq!(left_out_of(items.into_iter(), &busy), [true, false, false, true, true, false, true, false, false]);
    }
}
