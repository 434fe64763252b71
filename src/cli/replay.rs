//! `replay`: re-run a stored delivery, or a rejected (stale) one, through classification
//! and the state machine, with the same idempotency as live traffic. `--dry-run` runs the
//! very same transaction and rolls it back.

use crate::config::Env;
use anyhow::{bail, Context, Result};
use clap::Args;

use crate::singapay::webhook::classify;
use crate::singapay::Body;
use crate::store::to_jsonb_text;
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

pub async fn replay(env: &Env<'_>, args: ReplayArgs) -> Result<()> {
    let pool = store::pool(&env.require_database_url()?, 2)?;
    let mut tx = pool.begin().await?;
    let (what, stored) = match (args.delivery, args.rejection) {
        (Some(id), _) => {
            let body = store::delivery_body(&mut tx, id).await?.with_context(|| format!("no delivery {id}"))?;
            let analysed = Body::analyse(&body);
            let object = analysed.object().context("the stored body is not a JSON object")?;
            let write = Write::Reapply { delivery_id: id, classification: store::fit_for_columns(classify(object)) };
            (format!("delivery {id}"), write_one(&mut tx, write).await?)
        }
        (None, Some(id)) => {
            let r = store::lock_rejection(&mut tx, id).await?.with_context(|| format!("no rejected delivery {id}"))?;
            let body = r.body;
            let analysed = Body::analyse(&body);
            let object = analysed.object().context("the rejected body is not a JSON object")?;
            let classification = store::fit_for_columns(classify(object));
            let payload = Some(to_jsonb_text(object));
            let delivery = Delivery {
                signed: Signed {
                    content_sha256: analysed.content_sha256(&body),
                    partner_id: r.partner_id,
                    credential: r.credential,
                    signature_form: r.signature_form.0,
                    signed_at: Some(r.signed_at.context("the rejection's timestamp is not representable")?),
                    x_timestamp: r.x_timestamp,
                    request_path: r.request_path,
                    request_id: r.request_id,
                    x_signature: r.x_signature,
                    access_token: r.access_token,
                    body,
                },
                classification,
                payload,
            };
            let stored = write_one(&mut tx, Write::Deliver(Box::new(delivery))).await?;
            store::mark_replayed(&mut tx, id, stored.delivery_id).await?;
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
