//! `replay`: re-run a stored delivery, or a rejected (stale) one, through classification
//! and the state machine, with the same idempotency as live traffic. `--dry-run` runs the
//! very same transaction and rolls it back.

use anyhow::{bail, Context, Result};
use clap::Args;
use secrecy::SecretString;

use crate::singapay::json::to_jsonb_text;
use crate::singapay::signature::BodyForm;
use crate::singapay::webhook::classify;
use crate::singapay::Body;
use crate::store::{self, Delivery, Signed, Stored, Write, Written};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["delivery", "rejection"])))]
pub struct ReplayArgs {
    /// A stored delivery: apply it again (e.g. one stored as unrecognised before an upgrade).
    #[arg(long)]
    pub delivery: Option<i64>,
    /// A rejected (stale) delivery: accept it now, once.
    #[arg(long)]
    pub rejection: Option<i64>,
    /// Show the outcome without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

type RejectionRow = (
    Vec<u8>,
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
    String,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
);

pub async fn replay(args: ReplayArgs, database_url: &SecretString) -> Result<()> {
    let pool = store::pool(database_url, 2)?;
    let mut tx = pool.begin().await?;
    let (what, stored) = match (args.delivery, args.rejection) {
        (Some(id), _) => {
            let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM singapay.deliveries WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .with_context(|| format!("no delivery {id}"))?;
            let analysed = Body::analyse(&body);
            let object = analysed.object().context("the stored body is not a JSON object")?;
            let write = Write::Reapply { delivery_id: id, classification: classify(object) };
            (format!("delivery {id}"), write_one(&mut tx, write).await?)
        }
        (None, Some(id)) => {
            let row: Option<RejectionRow> = sqlx::query_as(
                "SELECT body, credential, signature_form, signed_at, x_timestamp, request_path, request_id,
                        x_signature, access_token, partner_id
                   FROM singapay.rejected_deliveries WHERE id = $1 FOR UPDATE",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            let (
                body,
                credential,
                form,
                signed_at,
                x_timestamp,
                request_path,
                request_id,
                x_signature,
                access_token,
                partner_id,
            ) = row.with_context(|| format!("no rejected delivery {id}"))?;
            let analysed = Body::analyse(&body);
            let object = analysed.object().context("the rejected body is not a JSON object")?;
            let classification = classify(object);
            let payload = Some(to_jsonb_text(object));
            let delivery = Delivery {
                signed: Signed {
                    content_sha256: analysed.content_sha256(&body),
                    partner_id,
                    credential,
                    signature_form: match form.as_str() {
                        "php" => BodyForm::Php,
                        "raw" => BodyForm::Raw,
                        _ => BodyForm::Sorted,
                    },
                    signed_at: Some(signed_at.context("the rejection's timestamp is not representable")?),
                    x_timestamp,
                    request_path,
                    request_id,
                    x_signature,
                    access_token,
                    body,
                },
                classification,
                payload,
            };
            let stored = write_one(&mut tx, Write::Deliver(Box::new(delivery))).await?;
            sqlx::query("UPDATE singapay.rejected_deliveries SET replayed_delivery_id = $2 WHERE id = $1")
                .bind(id)
                .bind(stored.delivery_id)
                .execute(&mut *tx)
                .await?;
            (format!("rejected delivery {id}"), stored)
        }
        _ => bail!("give --delivery or --rejection"),
    };
    print_outcome(&what, &stored);
    if args.dry_run {
        tx.rollback().await?;
        super::say("dry run: nothing was written");
    } else {
        tx.commit().await?;
        if stored.changes.iter().any(|c| c.transition == crate::singapay::status::Transition::Applied) {
            let mut conn = pool.acquire().await?;
            store::wake_consumers(&mut conn).await?;
        }
    }
    pool.close().await;
    Ok(())
}

/// Through the same store code as live callbacks, inside `tx`.
async fn write_one(tx: &mut sqlx::PgConnection, write: Write) -> Result<Stored> {
    match store::write(tx, std::slice::from_ref(&write)).await?.pop() {
        Some(Written::Stored(stored)) => Ok(stored),
        other => bail!("unexpected result of a replay: {other:?}"),
    }
}

fn print_outcome(what: &str, s: &Stored) {
    let kind = if s.duplicate { "already stored" } else { "stored" };
    super::say(format!("{what}: {kind} as delivery {}, outcome {}", s.delivery_id, s.outcome.as_str()));
    for ch in &s.changes {
        super::say(format!(
            "  {}: {} -> {} ({}, version {})",
            ch.transaction_key,
            ch.from_status.as_deref().unwrap_or("(new)"),
            ch.to_status,
            ch.transition.as_str(),
            ch.version
        ));
    }
}
