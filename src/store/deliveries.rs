//! One row per distinct verified delivery; retries are counted, not stored twice.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::transactions::{self, Context, StateChange};
use super::{is_retryable_conflict, StoreError};
use crate::singapay::webhook::{Classification, Subject};

/// Everything known about a verified, fresh delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub content_sha256: [u8; 32],
    pub classification: Classification,
    pub partner_id: Option<String>,
    pub credential: String,
    pub signature_form: &'static str,
    pub signed_at: DateTime<Utc>,
    pub x_timestamp: String,
    pub request_path: String,
    pub request_id: Option<String>,
    pub x_signature: String,
    pub access_token: String,
    pub body: Vec<u8>,
    /// JSON text for the `payload jsonb` column.
    pub payload: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub delivery_id: i64,
    pub duplicate: bool,
    pub outcome: String,
    /// What each reported status did (empty for a duplicate).
    pub changes: Vec<StateChange>,
}

/// Records a delivery and applies what it reports, all in one transaction, retrying a
/// deadlock a few times before calling storage unavailable.
pub async fn record(pool: &PgPool, d: &Delivery) -> Result<Stored, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match record_once(pool, d).await {
            Err(e) if attempt < 4 && is_retryable_conflict(&e) => continue,
            other => return other.map_err(StoreError::from),
        }
    }
}

async fn record_once(pool: &PgPool, d: &Delivery) -> Result<Stored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let stored = record_in(&mut tx, d).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Records a delivery inside the caller's transaction (`replay --dry-run` rolls it back).
pub async fn record_in(tx: &mut PgConnection, d: &Delivery) -> Result<Stored, sqlx::Error> {
    let c = &d.classification;
    let single = c.single();
    let (provisional, reason) = match &c.subject {
        Subject::Unrecognised(why) => ("unrecognised", Some(*why)),
        Subject::Batch(_) => ("batch", None),
        Subject::Single(ch) if ch.status.is_none() => ("unchanged", None),
        Subject::Single(_) => ("applied", None),
    };
    // The unique key on content_sha256 is the idempotency guard: a concurrent identical
    // delivery waits here for ours to commit, then counts itself as a retry.
    let (delivery_id, inserted, stored_outcome): (i64, bool, String) = sqlx::query_as(
        "INSERT INTO singapay.deliveries
            (content_sha256, webhook_type, event, transaction_key, response_code, response_message,
             response_class, envelope_status, envelope_success, transaction_status_code,
             transaction_status_desc, status, needs_inquiry, outcome, unrecognised_reason, partner_id,
             credential, signature_form, signed_at, event_at, request_path, request_id, x_signature,
             access_token, body, payload, x_timestamp)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20, $21, $22, $23, $24, $25, $26::jsonb, $27)
         ON CONFLICT (content_sha256) DO UPDATE
            SET times_received = singapay.deliveries.times_received + 1,
                last_received_at = now()
         RETURNING id, (xmax = 0) AS inserted, outcome",
    )
    .bind(&d.content_sha256[..])
    .bind(c.webhook_type.as_str())
    .bind(&c.event)
    .bind(single.map(|s| &s.transaction_key))
    .bind(&c.response_code)
    .bind(&c.response_message)
    .bind(c.response_class)
    .bind(c.envelope_status)
    .bind(c.envelope_success)
    .bind(&c.transaction_status_code)
    .bind(&c.transaction_status_desc)
    .bind(single.and_then(|s| s.status.as_deref()))
    .bind(c.needs_inquiry)
    .bind(provisional)
    .bind(reason)
    .bind(&d.partner_id)
    .bind(&d.credential)
    .bind(d.signature_form)
    .bind(d.signed_at)
    .bind(c.event_at)
    .bind(&d.request_path)
    .bind(&d.request_id)
    .bind(&d.x_signature)
    .bind(&d.access_token)
    .bind(&d.body)
    .bind(&d.payload)
    .bind(&d.x_timestamp)
    .fetch_one(&mut *tx)
    .await?;
    if !inserted {
        return Ok(Stored { delivery_id, duplicate: true, outcome: stored_outcome, changes: Vec::new() });
    }

    let ctx = Context {
        delivery_id,
        webhook_type: c.webhook_type.as_str(),
        event: c.event.as_deref(),
        response_code: c.response_code.as_deref(),
    };
    let (outcome, changes) = apply_all(tx, c, &ctx, provisional).await?;
    if outcome != provisional {
        set_outcome(tx, delivery_id, outcome).await?;
    }
    Ok(Stored { delivery_id, duplicate: false, outcome: outcome.to_owned(), changes })
}

/// Runs the state machine for every status a delivery reports.
async fn apply_all(
    tx: &mut PgConnection,
    c: &Classification,
    ctx: &Context<'_>,
    provisional: &'static str,
) -> Result<(&'static str, Vec<StateChange>), sqlx::Error> {
    let mut changes = Vec::new();
    let outcome = match &c.subject {
        Subject::Single(ch) => match &ch.status {
            Some(status) => {
                let change = transactions::apply(tx, ch, status, ctx).await?;
                let outcome = change.transition.as_str();
                changes.push(change);
                outcome
            }
            None => provisional,
        },
        Subject::Batch(items) => {
            for ch in items {
                if let Some(status) = &ch.status {
                    changes.push(transactions::apply(tx, ch, status, ctx).await?);
                }
            }
            provisional
        }
        Subject::Unrecognised(_) => provisional,
    };
    Ok((outcome, changes))
}

/// Re-runs the state machine for an already stored delivery (after an upgrade taught the
/// classifier something), inside the caller's transaction. The same guarantees as live
/// traffic hold: the transaction rows are locked, a status already reached is `unchanged`,
/// and only real changes are queued. The delivery row is rewritten only when something was
/// applied now or it had not been understood before.
pub async fn reapply_in(tx: &mut PgConnection, delivery_id: i64, c: &Classification) -> Result<Stored, sqlx::Error> {
    let previous: String = sqlx::query_scalar("SELECT outcome FROM singapay.deliveries WHERE id = $1 FOR UPDATE")
        .bind(delivery_id)
        .fetch_one(&mut *tx)
        .await?;
    let ctx = Context {
        delivery_id,
        webhook_type: c.webhook_type.as_str(),
        event: c.event.as_deref(),
        response_code: c.response_code.as_deref(),
    };
    let provisional = match &c.subject {
        Subject::Unrecognised(_) => "unrecognised",
        Subject::Batch(_) => "batch",
        Subject::Single(_) => "unchanged",
    };
    let (outcome, changes) = apply_all(tx, c, &ctx, provisional).await?;
    let applied_now = changes.iter().any(|ch| ch.transition == crate::singapay::status::Transition::Applied);
    if applied_now || (previous == "unrecognised" && outcome != "unrecognised") {
        let single = c.single();
        sqlx::query(
            "UPDATE singapay.deliveries
                SET webhook_type = $2, transaction_key = $3, status = $4, needs_inquiry = $5, outcome = $6,
                    unrecognised_reason = NULL
              WHERE id = $1",
        )
        .bind(delivery_id)
        .bind(c.webhook_type.as_str())
        .bind(single.map(|s| &s.transaction_key))
        .bind(single.and_then(|s| s.status.as_deref()))
        .bind(c.needs_inquiry)
        .bind(outcome)
        .execute(&mut *tx)
        .await?;
    }
    let outcome = if applied_now || previous == "unrecognised" { outcome.to_owned() } else { previous };
    Ok(Stored { delivery_id, duplicate: false, outcome, changes })
}

async fn set_outcome(conn: &mut PgConnection, id: i64, outcome: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE singapay.deliveries SET outcome = $2 WHERE id = $1")
        .bind(id)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}

/// A stale but authentic delivery whose content is already stored is a harmless retry:
/// count it and return the stored delivery's id.
pub async fn touch_known(pool: &PgPool, content_sha256: &[u8; 32]) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE singapay.deliveries
            SET times_received = times_received + 1, last_received_at = now()
          WHERE content_sha256 = $1
         RETURNING id",
    )
    .bind(&content_sha256[..])
    .fetch_optional(pool)
    .await?)
}

/// A correctly signed delivery refused for its timestamp, kept for `replay`.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub content_sha256: [u8; 32],
    pub reason: &'static str,
    pub x_timestamp: String,
    pub signed_at: Option<DateTime<Utc>>,
    pub partner_id: Option<String>,
    pub credential: String,
    pub signature_form: &'static str,
    pub request_path: String,
    pub request_id: Option<String>,
    pub x_signature: String,
    pub access_token: String,
    pub body: Vec<u8>,
}

pub async fn record_rejection(pool: &PgPool, r: &Rejection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO singapay.rejected_deliveries
            (content_sha256, reason, x_timestamp, signed_at, partner_id, credential, signature_form,
             request_path, request_id, x_signature, access_token, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (content_sha256) DO UPDATE
            SET times_received = singapay.rejected_deliveries.times_received + 1,
                last_received_at = now()
         RETURNING id",
    )
    .bind(&r.content_sha256[..])
    .bind(r.reason)
    .bind(&r.x_timestamp)
    .bind(r.signed_at)
    .bind(&r.partner_id)
    .bind(&r.credential)
    .bind(r.signature_form)
    .bind(&r.request_path)
    .bind(&r.request_id)
    .bind(&r.x_signature)
    .bind(&r.access_token)
    .bind(&r.body)
    .fetch_one(pool)
    .await?)
}
