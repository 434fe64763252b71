//! The state machine's writes: current state per transaction, one queue row per change.

use sqlx::PgConnection;

use super::events::{self, EventFacts};
use crate::singapay::status::{self, Transition};
use crate::singapay::webhook::Change;

pub struct Context<'a> {
    pub delivery_id: i64,
    pub webhook_type: &'a str,
    pub event: Option<&'a str>,
    pub response_code: Option<&'a str>,
}

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

/// Applies one reported status under the transaction's row lock. Concurrent deliveries for
/// one key serialise here, so versions are gap-free and each gets exactly one queue row.
pub async fn apply(
    conn: &mut PgConnection,
    change: &Change,
    to_status: &str,
    ctx: &Context<'_>,
) -> Result<StateChange, sqlx::Error> {
    let done = |transition, from_status: Option<&str>, version| StateChange {
        transaction_key: change.transaction_key.clone(),
        transition,
        from_status: from_status.map(str::to_owned),
        to_status: to_status.to_owned(),
        version,
    };
    // Two rounds at most: when a concurrent delivery creates the row between our SELECT
    // and INSERT, the INSERT waits for it, does nothing, and the next SELECT locks it.
    for _ in 0..3 {
        let current: Option<(String, i32)> =
            sqlx::query_as("SELECT status, version FROM singapay.transactions WHERE transaction_key = $1 FOR UPDATE")
                .bind(&change.transaction_key)
                .fetch_optional(&mut *conn)
                .await?;
        match current {
            None => {
                let created: Option<i32> = sqlx::query_scalar(
                    "INSERT INTO singapay.transactions
                        (transaction_key, product, singapay_id, merchant_reference, status,
                         transaction_status_code, last_response_code, amount, currency, version,
                         first_delivery_id, last_delivery_id, processed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::numeric, $9, 1, $10, $10, $11)
                     ON CONFLICT (transaction_key) DO NOTHING
                     RETURNING version",
                )
                .bind(&change.transaction_key)
                .bind(change.product.as_str())
                .bind(&change.singapay_id)
                .bind(&change.merchant_reference)
                .bind(to_status)
                .bind(&change.transaction_status_code)
                .bind(ctx.response_code)
                .bind(&change.amount)
                .bind(&change.currency)
                .bind(ctx.delivery_id)
                .bind(change.occurred_at)
                .fetch_optional(&mut *conn)
                .await?;
                if created.is_some() {
                    enqueue(conn, change, to_status, 1, None, ctx).await?;
                    return Ok(done(Transition::Applied, None, 1));
                }
            }
            Some((current_status, version)) => {
                let t = status::decide(change.product, Some(&current_status), to_status);
                if t == Transition::Applied {
                    sqlx::query(
                        "UPDATE singapay.transactions SET
                            status = $2,
                            transaction_status_code = COALESCE($3, transaction_status_code),
                            last_response_code = COALESCE($4, last_response_code),
                            amount = COALESCE($5::numeric, amount),
                            currency = COALESCE($6, currency),
                            singapay_id = COALESCE(singapay_id, $7),
                            merchant_reference = COALESCE(merchant_reference, $8),
                            processed_at = COALESCE($9, processed_at),
                            version = version + 1,
                            last_delivery_id = $10,
                            updated_at = now()
                         WHERE transaction_key = $1",
                    )
                    .bind(&change.transaction_key)
                    .bind(to_status)
                    .bind(&change.transaction_status_code)
                    .bind(ctx.response_code)
                    .bind(&change.amount)
                    .bind(&change.currency)
                    .bind(&change.singapay_id)
                    .bind(&change.merchant_reference)
                    .bind(change.occurred_at)
                    .bind(ctx.delivery_id)
                    .execute(&mut *conn)
                    .await?;
                    enqueue(conn, change, to_status, version + 1, Some(&current_status), ctx).await?;
                    return Ok(done(t, Some(&current_status), version + 1));
                }
                return Ok(done(t, Some(&current_status), version));
            }
        }
    }
    Err(sqlx::Error::Protocol("transaction row neither found nor created after 3 attempts".into()))
}

async fn enqueue(
    conn: &mut PgConnection,
    change: &Change,
    to_status: &str,
    version: i32,
    from_status: Option<&str>,
    ctx: &Context<'_>,
) -> Result<(), sqlx::Error> {
    let event_id = events::event_id(&change.transaction_key, version);
    let doc = events::document(&EventFacts {
        event_id,
        change,
        to_status,
        version,
        from_status,
        webhook_type: ctx.webhook_type,
        event: ctx.event,
        response_code: ctx.response_code,
        delivery_id: ctx.delivery_id,
    });
    sqlx::query(
        "INSERT INTO singapay.transaction_events
            (event_id, transaction_key, version, webhook_type, from_status, to_status,
             response_code, transaction_status_code, delivery_id, payload)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)",
    )
    .bind(event_id)
    .bind(&change.transaction_key)
    .bind(version)
    .bind(ctx.webhook_type)
    .bind(from_status)
    .bind(to_status)
    .bind(ctx.response_code)
    .bind(&change.transaction_status_code)
    .bind(ctx.delivery_id)
    .bind(doc.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
