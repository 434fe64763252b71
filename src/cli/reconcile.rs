use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::config::{Env, EnvFile};
use crate::reconcile::{self, Outcome, Reconciler};
use crate::singapay::inquiry::Lookup;
use crate::store::inquiries::{self, Next};
use crate::{store, telemetry};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Show what would be asked (and the request), ask nothing, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this transaction (e.g. disbursement:1405981222026031614220917745120), asked about
    /// now whatever its schedule: a stored one, or one of a product with an inquiry that
    /// nothing stored names yet (with --singapay-id or --reference when its key does not
    /// hold what the inquiry needs).
    #[arg(long)]
    pub key: Option<String>,
    /// With --key: Singapay's id, for a transaction nothing stored names (an e-wallet
    /// checkout is asked by it).
    #[arg(long, requires = "key")]
    pub singapay_id: Option<String>,
    /// With --key: the merchant's reference, for a transaction nothing stored names
    /// (money-out is asked by its reference_number).
    #[arg(long, requires = "key")]
    pub reference: Option<String>,
}

/// `reconcile`: one pass now.
pub async fn reconcile(env: &Env<'_>, file: &EnvFile, args: ReconcileArgs) -> Result<()> {
    let database_url = env.require_database_url()?;
    let settings = env.reconcile()?.context(
        "reconciliation is not configured: set SINGAPAY_API_URL, SINGAPAY_CLIENT_ID, SINGAPAY_CLIENT_SECRET, SINGAPAY_PARTNER_ID and SINGAPAY_ACCOUNT_ID",
    )?;
    telemetry::init(env.log_format()?, env.log_filter()?);
    file.announce();
    let pool = store::pool(&database_url, 4)?;
    let clock: reconcile::Clock = Arc::new(chrono::Utc::now);
    let reconciler = Reconciler::new(pool.clone(), settings, clock, &format!("reconcile@{}", reconcile::host_name()))?;
    let key = args.key.as_deref();
    let ids = (args.singapay_id.as_deref(), args.reference.as_deref());
    let result = if args.dry_run { dry_run(&reconciler, key, ids).await } else { pass(&reconciler, key, ids).await };
    pool.close().await;
    result
}

type Ids<'a> = (Option<&'a str>, Option<&'a str>);

async fn dry_run(reconciler: &Arc<Reconciler>, key: Option<&str>, (singapay_id, reference): Ids<'_>) -> Result<()> {
    // The checks a pass would find, found in a transaction that is rolled back.
    let mut tx = reconciler.pool().begin().await?;
    let found = match key {
        Some(key) => u64::from(inquiries::request_check(&mut tx, key, singapay_id, reference).await?),
        None => inquiries::discover(&mut tx, &reconciler.settings().overdue(), None).await?.added,
    };
    if key.is_some() && found == 0 {
        bail!("{:?} is neither stored nor the key of a product Singapay can be asked about", key.unwrap_or_default());
    }
    let due = inquiries::due(&mut tx, key, 10_000).await?;
    let mut lines = Vec::new();
    for check in &due {
        let line = match reconciler.plan(&mut tx, check).await? {
            Ok(plan) => plan
                .lookups
                .iter()
                .map(|(i, account, lookup)| {
                    let request = lookup.first_request();
                    let how = match lookup {
                        Lookup::Read { .. } => String::new(),
                        Lookup::Search { reff_no, .. } => {
                            format!("  (then the row whose reff_no is exactly {reff_no:?}, read by its id)")
                        }
                    };
                    format!(
                        "would ask  {}  ({})  as {} on {account}: {} {}{}{how}",
                        check.transaction_key,
                        check.reason.as_str(),
                        reconciler.label(*i),
                        request.method.as_str(),
                        request.path,
                        request.body.as_ref().map(|b| format!(" {b}")).unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n     or "),
            Err((next, why)) => format!(
                "would not ask  {}  ({})  {why}: {}",
                check.transaction_key,
                check.reason.as_str(),
                describe(&next)
            ),
        };
        lines.push(line);
    }
    tx.rollback().await?;
    for line in lines {
        super::say(line);
    }
    super::say(format!("reconcile --dry-run: {} due (nothing asked, nothing changed)", due.len()));
    Ok(())
}

async fn pass(reconciler: &Arc<Reconciler>, key: Option<&str>, (singapay_id, reference): Ids<'_>) -> Result<()> {
    if let (Some(key), true) = (key, singapay_id.is_some() || reference.is_some()) {
        let mut conn = reconciler.pool().acquire().await?;
        inquiries::request_check(&mut conn, key, singapay_id, reference).await?;
    }
    let report = reconciler.pass(key).await.context("reconciling")?;
    for (scope, cause) in &report.paused {
        super::say(format!("paused  {scope}: {cause}"));
    }
    for o in &report.outcomes {
        super::say(line(o));
    }
    if let Some(cause) = &report.halted {
        bail!("Singapay refused this receiver: {cause}");
    }
    if report.failed > 0 {
        bail!(
            "{} checks could not be recorded (see the log); they are asked again when their lease ends",
            report.failed
        );
    }
    if let Some(key) = key {
        if report.discovered == 0 {
            bail!("{key:?} is neither stored nor the key of a product Singapay can be asked about");
        }
    }
    super::say(format!("reconcile: {} new checks, {} asked about", report.discovered, report.outcomes.len()));
    Ok(())
}

fn line(o: &Outcome) -> String {
    format!(
        "{}  ({})  answer={}{}{}{}{}  next: {}",
        o.transaction_key,
        o.reason.as_str(),
        o.answer,
        match (&o.credential, &o.account_id) {
            (Some(c), Some(a)) => format!(" from={c}/{a}"),
            _ => String::new(),
        },
        o.identified_by.as_deref().map(|r| format!(" record={r}")).unwrap_or_default(),
        o.status.as_deref().map(|s| format!(" status={s}")).unwrap_or_default(),
        o.transition.as_deref().map(|t| format!(" transition={t}")).unwrap_or_default(),
        describe(&o.next)
    )
}

fn describe(next: &Next) -> String {
    match next {
        Next::Done => "done".into(),
        Next::Again { after_secs } => format!("ask again in {after_secs} s"),
        Next::GiveUp(why) => format!("gave up ({why})"),
        Next::Flag(why) => format!("flagged for a person ({why}); see singapay.reconcile_attention"),
        Next::Keep => "kept".into(),
        Next::Release { after_secs, .. } => format!("not asked; again in {after_secs} s"),
    }
}
