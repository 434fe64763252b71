//! Reconciliation's tables: the checks to make (`reconcile_checks`, each claimed with a
//! lease so that of several replicas one asks at a time) and the record of every exchange
//! with Singapay's API (`inquiries`). An answer is written by [`super::write`] as a
//! [`super::Write::Inquiry`], through the same state machine and statements as a callback.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::singapay::webhook::Change;

/// Why a transaction is checked, in the order checks are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckReason {
    /// A callback said the outcome is unknown (`needs_inquiry`).
    NeedsInquiry,
    /// No final status for longer than its product's threshold.
    Overdue,
    /// Someone asked (`singapay.request_check`, `reconcile --key`).
    Requested,
}

impl CheckReason {
    pub const ALL: [CheckReason; 3] = [CheckReason::NeedsInquiry, CheckReason::Overdue, CheckReason::Requested];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckReason::NeedsInquiry => "needs_inquiry",
            CheckReason::Overdue => "overdue",
            CheckReason::Requested => "requested",
        }
    }

    pub fn parse(s: &str) -> Option<CheckReason> {
        CheckReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A check this replica holds the lease of.
#[derive(Debug, Clone)]
pub struct Check {
    pub transaction_key: String,
    pub reason: CheckReason,
    /// The delivery that needed the inquiry, when one did.
    pub delivery_id: Option<i64>,
    /// Times asked, this time included.
    pub asked: i32,
    /// Answers "not found" so far.
    pub not_found: i32,
    /// Answers that could not be applied so far (unreadable, about another record,
    /// ambiguous).
    pub unreadable: i32,
}

/// What becomes of a check after an answer (or after deciding not to ask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Final status known (or nothing left to ask): the check is deleted.
    Done,
    /// Ask again after this many seconds.
    Again { after_secs: u64 },
    /// Stop asking; the check stays, `gave_up`, with the reason.
    GiveUp(String),
    /// Not asked (inquiries are stopped): the lease is given back and this ask not counted.
    Release { after_secs: u64, error: String },
    /// Stop asking and flag the transaction for a person (its answers cannot be applied):
    /// the check stays, `flagged`, with the reason (`singapay.reconcile_attention`).
    Flag(String),
    /// One of several exchanges of a check that did not decide it: recorded only.
    Keep,
}

/// How an answer is recorded (`inquiries.answer`).
pub const ANSWERS: [&str; 8] =
    ["status", "mismatch", "ambiguous", "not_found", "retry_later", "token_rejected", "forbidden", "unreadable"];

/// One exchange with Singapay's API, to record and, when it told a status, to apply.
#[derive(Debug, Clone)]
pub struct Inquiry {
    pub transaction_key: String,
    pub reason: CheckReason,
    pub delivery_id: Option<i64>,
    /// The replica (or command) that asked, and holds the check's lease.
    pub asked_by: String,
    /// The credential's label and the account asked.
    pub credential: Option<String>,
    pub account_id: Option<String>,
    pub method: &'static str,
    pub path: String,
    /// JSON text.
    pub request_body: Option<String>,
    pub http_status: Option<u16>,
    pub response_body: Vec<u8>,
    /// One of [`ANSWERS`].
    pub answer: &'static str,
    pub detail: Option<String>,
    pub response_code: Option<String>,
    /// `field=value` of the answer that named the record the status came from.
    pub identified_by: Option<String>,
    /// The list pages a search read first (JSON text).
    pub steps: Option<String>,
    pub elapsed_ms: i32,
    pub retried_with_new_token: bool,
    /// The status Singapay answered, as a change of the transaction (applied like a
    /// callback's); `None` when it told no status.
    pub change: Option<Change>,
    pub next: Next,
}

/// What is stored about a check's transaction, to build the question from.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Known {
    pub product: Option<String>,
    pub status: Option<String>,
    pub singapay_id: Option<String>,
    pub merchant_reference: Option<String>,
    /// The body of the delivery that needed the inquiry (the only record of a transaction
    /// whose callback carried no status).
    pub delivery_body: Option<Vec<u8>>,
    /// What `request_check` was given to ask with (for a transaction nothing stored names).
    pub requested_singapay_id: Option<String>,
    pub requested_merchant_reference: Option<String>,
    /// The label of the webhook secret that verified the transaction's callbacks (the
    /// delivery that needed the inquiry, else its last one).
    pub credential: Option<String>,
}

/// Statuses that are not final (the partial index `transactions_open_idx` holds them).
pub const OPEN_STATUSES: &str = "('initiated', 'paying', 'pending')";

/// Most new checks one discovery adds per reason, so one pass stays short after an outage.
const DISCOVER_LIMIT: i64 = 1000;

/// What one discovery did.
#[derive(Debug, Clone, Copy)]
pub struct Discovery {
    /// New checks.
    pub added: u64,
    /// When it started, by the database's clock: the next one can start its search there.
    pub started_at: DateTime<Utc>,
    /// False when it stopped at its limit with overdue transactions left to add.
    pub complete: bool,
}

/// Adds checks for deliveries that need an inquiry and for transactions overdue by their
/// product's threshold (`overdue`: product name and seconds). Several replicas may run it
/// at once: a transaction already checked is left alone (`ON CONFLICT DO NOTHING`).
///
/// With `since`, only transactions that became overdue after it are looked at (those whose
/// last change is within the threshold before `since`): what a previous complete discovery
/// did not see yet. Without, every open transaction is (the partial index of open
/// transactions either way: one range of `(product, updated_at)` per product; `OFFSET 0`
/// keeps Postgres from flattening the per-product subquery into one scan of every open
/// transaction, which it prefers for eight products whatever the range).
pub async fn discover(
    conn: &mut PgConnection,
    overdue: &[(&str, u64)],
    since: Option<DateTime<Utc>>,
) -> Result<Discovery, sqlx::Error> {
    let started_at: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(&mut *conn).await?;
    let needs = sqlx::query(
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason, delivery_id)
         SELECT DISTINCT ON (d.transaction_key) d.transaction_key, 'needs_inquiry', d.id
           FROM singapay.deliveries d
          WHERE d.needs_inquiry AND d.transaction_key IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM singapay.reconcile_checks c WHERE c.transaction_key = d.transaction_key)
          ORDER BY d.transaction_key, d.id DESC
          LIMIT $1
         ON CONFLICT (transaction_key) DO NOTHING",
    )
    .bind(DISCOVER_LIMIT)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let (products, secs): (Vec<&str>, Vec<i64>) = overdue.iter().map(|&(p, s)| (p, s as i64)).unzip();
    let late = sqlx::query(&format!(
        "INSERT INTO singapay.reconcile_checks (transaction_key, reason)
         SELECT t.transaction_key, 'overdue'
           FROM unnest($1::text[], $2::int8[]) AS o(product, secs)
           CROSS JOIN LATERAL (
               SELECT t.transaction_key FROM singapay.transactions t
                WHERE t.product = o.product AND t.status IN {OPEN_STATUSES}
                  AND t.updated_at < now() - o.secs * interval '1 second'
                  AND t.updated_at >= coalesce($4::timestamptz - o.secs * interval '1 second', '-infinity')
               OFFSET 0) t
          WHERE NOT EXISTS (SELECT 1 FROM singapay.reconcile_checks c WHERE c.transaction_key = t.transaction_key)
          LIMIT $3
         ON CONFLICT (transaction_key) DO NOTHING"
    ))
    .bind(products)
    .bind(secs)
    .bind(DISCOVER_LIMIT)
    .bind(since)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Discovery { added: needs + late, started_at, complete: (late as i64) < DISCOVER_LIMIT })
}

const CHECK_COLUMNS: &str = "transaction_key, reason, delivery_id, asked, not_found, unreadable";

type CheckRow = (String, String, Option<i64>, i32, i32, i32);

fn check_of(
    (transaction_key, reason, delivery_id, asked, not_found, unreadable): CheckRow,
) -> Result<Check, sqlx::Error> {
    let reason = CheckReason::parse(&reason)
        .ok_or_else(|| sqlx::Error::Decode("reconcile_checks.reason outside its CHECK".into()))?;
    Ok(Check { transaction_key, reason, delivery_id, asked, not_found, unreadable })
}

/// Takes up to `limit` due checks (only `key`'s when given) for `who`, with a lease of
/// `lease_secs`: `FOR UPDATE SKIP LOCKED` keeps two replicas from taking the same check at
/// the same instant, the lease keeps them apart while the question is out.
pub async fn claim(
    pool: &PgPool,
    who: &str,
    lease_secs: u64,
    limit: i64,
    key: Option<&str>,
) -> Result<Vec<Check>, sqlx::Error> {
    let rows: Vec<CheckRow> = sqlx::query_as(&format!(
        "WITH c AS (
            SELECT transaction_key FROM singapay.reconcile_checks
             WHERE state = 'open' AND due_at <= now()
               AND (locked_until IS NULL OR locked_until < now())
               AND ($4::text IS NULL OR transaction_key = $4)
             ORDER BY priority, due_at
             LIMIT $3
             FOR UPDATE SKIP LOCKED)
         UPDATE singapay.reconcile_checks r
            SET locked_by = $1, locked_until = now() + $2 * interval '1 second', asked = r.asked + 1
           FROM c WHERE r.transaction_key = c.transaction_key
         RETURNING r.{}",
        CHECK_COLUMNS.replace(", ", ", r.")
    ))
    .bind(who)
    .bind(lease_secs as i64)
    .bind(limit)
    .bind(key)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(check_of).collect()
}

/// The checks that are due (only `key`'s when given), without taking them: `reconcile
/// --dry-run`.
pub async fn due(conn: &mut PgConnection, key: Option<&str>, limit: i64) -> Result<Vec<Check>, sqlx::Error> {
    let rows: Vec<CheckRow> = sqlx::query_as(&format!(
        "SELECT {CHECK_COLUMNS} FROM singapay.reconcile_checks
          WHERE state = 'open' AND due_at <= now() AND (locked_until IS NULL OR locked_until < now())
            AND ($1::text IS NULL OR transaction_key = $1)
          ORDER BY priority, due_at
          LIMIT $2"
    ))
    .bind(key)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(check_of).collect()
}

/// What is stored about a check's transaction.
pub async fn known(conn: &mut PgConnection, check: &Check) -> Result<Known, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.product, t.status, t.singapay_id, t.merchant_reference, d.body AS delivery_body,
                c.singapay_id AS requested_singapay_id, c.merchant_reference AS requested_merchant_reference,
                coalesce(d.credential, ld.credential) AS credential
           FROM (SELECT $1::text AS k) x
           LEFT JOIN singapay.transactions t ON t.transaction_key = x.k
           LEFT JOIN singapay.deliveries d ON d.id = $2
           LEFT JOIN singapay.deliveries ld ON ld.id = t.last_delivery_id
           LEFT JOIN singapay.reconcile_checks c ON c.transaction_key = x.k",
    )
    .bind(&check.transaction_key)
    .bind(check.delivery_id)
    .fetch_one(conn)
    .await
}

/// Settles a check with nothing to record in `inquiries` (not asked, or its questions
/// ran out of time: `answer` says which, as [`finish_check`] counts it).
pub async fn settle(pool: &PgPool, key: &str, who: &str, next: &Next, answer: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    finish_check(&mut conn, key, who, next, None, answer).await
}

/// Applies `next` to `key`'s check, if `who` still holds its lease (a replica whose lease
/// ran out leaves the check to the one that took it over); `answer`: how the answer was
/// read (`not_found` and the answers that cannot be applied are counted).
pub(super) async fn finish_check(
    conn: &mut PgConnection,
    key: &str,
    who: &str,
    next: &Next,
    inquiry_id: Option<i64>,
    answer: &str,
) -> Result<(), sqlx::Error> {
    // A "not found" that is given back (an owner refused) is not Singapay's word on it;
    // refusals count with the answers that cannot be applied, towards the flag.
    let released = matches!(next, Next::Release { .. });
    let not_found = answer == "not_found" && !released;
    let unreadable = i32::from(
        matches!(answer, "unreadable" | "mismatch" | "ambiguous" | "forbidden") || (answer == "not_found" && released),
    );
    // (state, ask again after, "not found" answers to add, asks to take back, error)
    let (state, after_secs, not_found, uncount, error) = match next {
        Next::Keep => return Ok(()),
        Next::Done => {
            sqlx::query("DELETE FROM singapay.reconcile_checks WHERE transaction_key = $1 AND locked_by = $2")
                .bind(key)
                .bind(who)
                .execute(conn)
                .await?;
            return Ok(());
        }
        Next::Again { after_secs } => ("open", Some(*after_secs as i64), i32::from(not_found), 0, None),
        Next::GiveUp(why) => ("gave_up", None, i32::from(not_found), 0, Some(why.as_str())),
        Next::Flag(why) => ("flagged", None, 0, 0, Some(why.as_str())),
        Next::Release { after_secs, error } => ("open", Some(*after_secs as i64), 0, 1, Some(error.as_str())),
    };
    sqlx::query(
        "UPDATE singapay.reconcile_checks
            SET state = $4, due_at = coalesce(now() + $5 * interval '1 second', due_at),
                locked_by = NULL, locked_until = NULL, not_found = not_found + $6, asked = greatest(asked - $7, 0),
                last_inquiry_id = coalesce($3, last_inquiry_id), last_error = $8, unreadable = unreadable + $9
          WHERE transaction_key = $1 AND locked_by = $2",
    )
    .bind(key)
    .bind(who)
    .bind(inquiry_id)
    .bind(state)
    .bind(after_secs)
    .bind(not_found)
    .bind(uncount)
    .bind(error)
    .bind(unreadable)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records an exchange: its `inquiries` row, with what applying its status did.
pub(super) async fn record(
    conn: &mut PgConnection,
    q: &Inquiry,
    change: Option<&super::StateChange>,
) -> Result<i64, sqlx::Error> {
    debug_assert!(ANSWERS.contains(&q.answer), "{} is not in ANSWERS", q.answer);
    let status = q.change.as_ref().and_then(|c| c.status.as_deref());
    let status_code = q.change.as_ref().and_then(|c| c.transaction_status_code.as_deref());
    sqlx::query_scalar(
        "INSERT INTO singapay.inquiries
            (transaction_key, reason, delivery_id, asked_by, method, path, request_body, http_status,
             response_body, answer, detail, status, transaction_status_code, response_code, transition,
             version, elapsed_ms, retried_with_new_token, credential, account_id, identified_by, steps)
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                 $21, $22::jsonb)
         RETURNING id",
    )
    .bind(&q.transaction_key)
    .bind(q.reason.as_str())
    .bind(q.delivery_id)
    .bind(&q.asked_by)
    .bind(q.method)
    .bind(&q.path)
    .bind(q.request_body.as_deref())
    .bind(q.http_status.map(i32::from))
    .bind(&q.response_body)
    .bind(q.answer)
    .bind(q.detail.as_deref())
    .bind(status)
    .bind(status_code)
    .bind(q.response_code.as_deref())
    .bind(change.map(|c| c.transition.as_str()))
    .bind(change.map(|c| c.version))
    .bind(q.elapsed_ms)
    .bind(q.retried_with_new_token)
    .bind(q.credential.as_deref())
    .bind(q.account_id.as_deref())
    .bind(q.identified_by.as_deref())
    .bind(q.steps.as_deref())
    .fetch_one(conn)
    .await
}

/// A status was answered: the deliveries that asked for an inquiry have had it.
pub(super) async fn clear_needs_inquiry(conn: &mut PgConnection, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE singapay.deliveries SET needs_inquiry = false WHERE transaction_key = $1 AND needs_inquiry")
        .bind(key)
        .execute(conn)
        .await?;
    Ok(())
}

/// `singapay.request_check`: false when the key is neither stored nor of a product with an
/// inquiry.
pub async fn request_check(
    conn: &mut PgConnection,
    key: &str,
    singapay_id: Option<&str>,
    merchant_reference: Option<&str>,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT singapay.request_check($1, $2, $3)")
        .bind(key)
        .bind(singapay_id)
        .bind(merchant_reference)
        .fetch_one(conn)
        .await
}

/// Checks by reason and state, for the metrics.
pub async fn check_counts(pool: &PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT reason, state, count(*) FROM singapay.reconcile_checks GROUP BY reason, state")
        .fetch_all(pool)
        .await
}
