//! Reconciliation: asking Singapay about transactions whose callback was ambiguous
//! (`needs_inquiry`), never came (overdue), or that someone asked to check; each answer is
//! written as a [`Write::Inquiry`] through the same state machine and store code as a
//! callback (one transaction: the `inquiries` row, the change and its event, the check).
//!
//! Checks live in `singapay.reconcile_checks`: any number of replicas can run this, each
//! check is taken by one of them (`FOR UPDATE SKIP LOCKED`) with a lease longer than the
//! longest exchange, so no two ask about the same transaction at the same time.

pub mod client;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use sqlx::PgConnection;

use crate::singapay::inquiry::{self, Answer};
use crate::singapay::json;
use crate::singapay::status::{self, Product};
use crate::singapay::webhook::{self, Change};
use crate::store::inquiries::{self, Check, CheckReason, Inquiry, Next};
use crate::store::{StoreError, Write, Written};
use crate::telemetry::metric;
pub use client::{ApiClient, ApiSettings, AskError, Clock, Exchange};

/// Everything reconciliation needs besides the database.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub api: ApiSettings,
    /// The sub-account whose transactions are asked about (`SINGAPAY_ACCOUNT_ID`).
    pub account_id: String,
    /// A money-out transaction (disbursement, e-wallet top-up, QRIS payment) without a final
    /// status for this long is asked about.
    pub money_out_overdue: Duration,
    /// The same for money-in (VA, QRIS, payment link, e-wallet, direct debit).
    pub money_in_overdue: Duration,
    /// Questions in flight at once, per replica.
    pub concurrency: usize,
    /// The wait before asking about a transaction again, doubled after each ask up to
    /// `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// "Not found" answers (`SP009`) before a check is given up.
    pub not_found_attempts: u32,
    /// How often to look for due checks.
    pub interval: Duration,
}

impl ReconcileSettings {
    /// Seconds to wait after the `asked`-th question: `backoff × 2^(asked−1)`, at most
    /// `backoff_max`, never less than `backoff`.
    pub fn backoff_after(&self, asked: i32) -> u64 {
        let base = self.backoff.as_secs().max(1);
        let doublings = asked.saturating_sub(1).clamp(0, 30) as u32;
        base.saturating_mul(1u64 << doublings).min(self.backoff_max.as_secs().max(base))
    }

    /// A check's lease: longer than the longest exchange (token, question, new token,
    /// question again, each up to the timeout), so no other replica asks meanwhile.
    pub fn lease_secs(&self) -> u64 {
        self.api.timeout.as_secs().max(1) * 5 + 10
    }

    /// Every product that can be asked about, with its overdue threshold.
    pub fn overdue(&self) -> Vec<(&'static str, u64)> {
        Product::ALL
            .into_iter()
            .filter(|&p| inquiry::can_ask(p))
            .map(|p| {
                let after = if p.is_money_out() { self.money_out_overdue } else { self.money_in_overdue };
                (p.as_str(), after.as_secs())
            })
            .collect()
    }
}

/// This machine's name, for the leases its replica takes.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".to_owned())
}

/// Starts the loop for `serve` and `dev` when reconciliation is configured; the task is
/// aborted at shutdown (an exchange cut short is rolled back, its lease runs out, and the
/// check is taken again).
pub fn start(
    pool: &sqlx::PgPool,
    settings: Option<ReconcileSettings>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(settings) = settings else {
        tracing::info!("reconciliation off: set SINGAPAY_API_URL, SINGAPAY_CLIENT_ID, SINGAPAY_CLIENT_SECRET, SINGAPAY_PARTNER_ID and SINGAPAY_ACCOUNT_ID to turn it on");
        return Ok(None);
    };
    let clock: Clock = Arc::new(chrono::Utc::now);
    let reconciler = Reconciler::new(pool.clone(), settings, clock, &host_name())?;
    Ok(Some(tokio::spawn(reconciler.run())))
}

/// The question to ask about a check.
#[derive(Debug, Clone)]
pub struct Plan {
    pub product: Product,
    pub request: inquiry::InquiryRequest,
    pub singapay_id: Option<String>,
    pub merchant_reference: Option<String>,
}

/// What became of one check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub transaction_key: String,
    pub reason: CheckReason,
    /// How Singapay's answer was read (`status`, `not_found`, …), or `not_asked`.
    pub answer: String,
    pub status: Option<String>,
    /// What the status did to the transaction: `applied`, `unchanged`, `stale`, `conflict`.
    pub transition: Option<String>,
    pub next: Next,
    pub inquiry_id: Option<i64>,
}

/// One pass: checks found, and what became of each one asked about.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub discovered: u64,
    pub outcomes: Vec<Outcome>,
    /// Set when Singapay refused this machine or its credentials: nothing more is asked
    /// until the pause is over.
    pub halted: Option<String>,
    /// The pass stopped at its time limit with checks still due: the next one starts at once.
    pub more: bool,
}

/// Overdue discovery looks only at what became overdue since the last complete one (less
/// this margin, for transactions that committed late)…
const DISCOVERY_OVERLAP: chrono::Duration = chrono::Duration::minutes(5);
/// …and at every open transaction this often (and at start).
const FULL_DISCOVERY_EVERY: Duration = Duration::from_secs(3600);

/// Where the last complete discovery started, and when the last full one was.
#[derive(Clone, Copy)]
struct Discovered {
    since: chrono::DateTime<chrono::Utc>,
    full_at: Instant,
}

/// Why inquiries are stopped, and until when.
struct Halt {
    cause: String,
    until: Instant,
}

pub struct Reconciler {
    pool: sqlx::PgPool,
    client: ApiClient,
    settings: ReconcileSettings,
    /// Who holds the leases this replica takes (host, process, a random tag).
    who: String,
    halt: Mutex<Option<Halt>>,
    discovered: Mutex<Option<Discovered>>,
}

impl Reconciler {
    pub fn new(pool: sqlx::PgPool, settings: ReconcileSettings, clock: Clock, who: &str) -> anyhow::Result<Arc<Self>> {
        let client = ApiClient::new(settings.api.clone(), clock)?;
        let who = format!("{who}:{}:{:08x}", std::process::id(), rand::random::<u32>());
        Ok(Arc::new(Reconciler { pool, client, settings, who, halt: Mutex::new(None), discovered: Mutex::new(None) }))
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Runs until the task is dropped: a pass every `interval`.
    pub async fn run(self: Arc<Self>) {
        tracing::info!(
            api = %self.settings.api.base_url,
            account_id = %self.settings.account_id,
            replica = %self.who,
            "reconciliation on: asking Singapay about ambiguous, overdue and requested transactions"
        );
        loop {
            let more = match self.pass(None).await {
                Ok(report) => {
                    if !report.outcomes.is_empty() || report.discovered > 0 {
                        tracing::debug!(
                            discovered = report.discovered,
                            asked = report.outcomes.len(),
                            "reconciliation pass"
                        );
                    }
                    report.more
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation pass failed; trying again next interval");
                    false
                }
            };
            self.count_checks().await;
            if !more {
                tokio::time::sleep(self.settings.interval).await;
            }
        }
    }

    /// One pass: finds new checks, then asks about every due one (only `key`'s when given),
    /// `concurrency` at a time, for at most `interval` (so that new checks are found at
    /// least that often however long the backlog).
    pub async fn pass(self: &Arc<Self>, key: Option<&str>) -> Result<PassReport, StoreError> {
        let started = Instant::now();
        let mut report = PassReport::default();
        if let Some(cause) = self.halted() {
            report.halted = Some(cause);
            return Ok(report);
        }
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        report.discovered = match key {
            Some(key) => u64::from(inquiries::request_check(&mut conn, key, None, None).await?),
            None => self.discover(&mut conn).await?,
        };
        drop(conn);
        loop {
            let checks = inquiries::claim(
                &self.pool,
                &self.who,
                self.settings.lease_secs(),
                self.settings.concurrency as i64,
                key,
            )
            .await?;
            if checks.is_empty() {
                break;
            }
            let mut tasks = tokio::task::JoinSet::new();
            for check in checks {
                let me = Arc::clone(self);
                tasks.spawn(async move { me.check(check).await });
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(outcome)) => report.outcomes.push(outcome),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "a check could not be recorded; it is asked again once its lease ends")
                    }
                    Err(e) => tracing::error!(error = %e, "a check panicked"),
                }
            }
            if let Some(cause) = self.halted() {
                report.halted = Some(cause);
                break;
            }
            if key.is_none() && started.elapsed() >= self.settings.interval {
                report.more = true;
                break;
            }
        }
        Ok(report)
    }

    /// Finds new checks: since the last complete discovery, or everywhere once an hour.
    async fn discover(&self, conn: &mut PgConnection) -> Result<u64, StoreError> {
        let last = *self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        let incremental = last.filter(|d| d.full_at.elapsed() < FULL_DISCOVERY_EVERY);
        let since = incremental.map(|d| d.since - DISCOVERY_OVERLAP);
        let found = inquiries::discover(conn, &self.settings.overdue(), since).await?;
        if found.complete {
            let full_at = incremental.map_or_else(Instant::now, |d| d.full_at);
            *self.discovered.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Discovered { since: found.started_at, full_at });
        }
        Ok(found.added)
    }

    /// The cause while inquiries are stopped. After the pause the next question tries
    /// again; the cause is kept until an answer comes, so that the same refusal is not
    /// logged twice.
    fn halted(&self) -> Option<String> {
        let halt = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        halt.as_ref().filter(|h| Instant::now() < h.until).map(|h| h.cause.clone())
    }

    /// Stops asking for `backoff_max`: one log line naming the cause and the fix (again only
    /// if the cause changes), and the `singapay_reconcile_halted` gauge.
    fn stop(&self, cause: String, fix: &str) {
        let mut halt = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = halt.as_ref().is_some_and(|h| h.cause == cause);
        if !repeated {
            tracing::error!(
                cause = %cause,
                fix,
                pause_secs = self.settings.backoff_max.as_secs(),
                "reconciliation stopped: Singapay refused this receiver ({cause}); {fix}"
            );
        }
        gauge!(metric::RECONCILE_HALTED).set(1.0);
        *halt = Some(Halt { cause, until: Instant::now() + self.settings.backoff_max });
    }

    /// A question was answered: inquiries are no longer stopped.
    fn resume(&self) {
        let mut halt = self.halt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = halt.take() {
            tracing::info!(previous_cause = %h.cause, "reconciliation resumed: Singapay answers again");
            gauge!(metric::RECONCILE_HALTED).set(0.0);
        }
    }

    /// What to ask about one check, or why not to ask (and what becomes of the check).
    pub async fn plan(&self, conn: &mut PgConnection, c: &Check) -> Result<Result<Plan, (Next, String)>, StoreError> {
        let known = inquiries::known(conn, c).await?;
        // What the delivery that asked for an inquiry says (a callback without a status
        // created no transaction row, and holds the merchant's reference).
        let reported: Option<Change> = known
            .delivery_body
            .as_deref()
            .and_then(|body| json::parse(body).ok())
            .and_then(|p| webhook::classify(&p.value).single().cloned());
        let product =
            known.product.as_deref().and_then(Product::from_name).or_else(|| Product::from_name(&c.transaction_key));
        let Some(product) = product else {
            return Ok(Err((Next::GiveUp("unknown product".into()), "unknown product".into())));
        };
        // Overdue no more: a callback brought the final status meanwhile.
        if c.reason == CheckReason::Overdue
            && known.status.as_deref().is_some_and(|s| status::rank(product, s) == Some(4))
        {
            return Ok(Err((Next::Done, "the final status arrived".into())));
        }
        if !inquiry::can_ask(product) {
            let why = format!("Singapay has no inquiry for {}", product.as_str());
            return Ok(Err((Next::GiveUp(why.clone()), why)));
        }
        // The stored transaction first, then the delivery that needed the inquiry, then what
        // the request for a check gave.
        let singapay_id = known
            .singapay_id
            .or_else(|| reported.as_ref().and_then(|r| r.singapay_id.clone()))
            .or(known.requested_singapay_id);
        let merchant_reference = known
            .merchant_reference
            .or_else(|| reported.as_ref().and_then(|r| r.merchant_reference.clone()))
            .or(known.requested_merchant_reference);
        let subject = inquiry::Subject {
            product,
            key_id: webhook::key_id(&c.transaction_key),
            singapay_id: singapay_id.as_deref(),
            merchant_reference: merchant_reference.as_deref(),
        };
        let Some(request) = inquiry::request(&subject, &self.settings.account_id) else {
            let why = "the identifier its inquiry needs (reference_number or id) is not known".to_owned();
            return Ok(Err((Next::GiveUp(why.clone()), why)));
        };
        Ok(Ok(Plan { product, request, singapay_id, merchant_reference }))
    }

    /// Asks about one check and writes what came of it.
    async fn check(&self, c: Check) -> Result<Outcome, StoreError> {
        let not_asked = |next: Next, why: &str| Outcome {
            transaction_key: c.transaction_key.clone(),
            reason: c.reason,
            answer: format!("not_asked: {why}"),
            status: None,
            transition: None,
            next,
            inquiry_id: None,
        };
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let planned = self.plan(&mut conn, &c).await?;
        drop(conn);
        let Plan { product, request, singapay_id, merchant_reference } = match planned {
            Ok(plan) => plan,
            Err((next, why)) => return self.settle(&c, not_asked(next, &why)).await,
        };
        let exchange = match self.client.ask(product, &request).await {
            Ok(exchange) => exchange,
            Err(e) => {
                let error = e.to_string();
                match e {
                    AskError::Credentials(_) => self.stop(
                        error.clone(),
                        "check SINGAPAY_CLIENT_ID, SINGAPAY_CLIENT_SECRET and SINGAPAY_PARTNER_ID against the dashboard, and this machine's clock",
                    ),
                    AskError::Forbidden(_) => self.stop(
                        error.clone(),
                        "ask Singapay to whitelist this machine's public IP address for the API",
                    ),
                    AskError::TokenUnavailable(_) => {
                        tracing::warn!(error = %error, "no access token from Singapay; asking again later")
                    }
                }
                counter!(metric::INQUIRIES, "product" => product.as_str(), "answer" => "no_token").increment(1);
                let next = Next::Release { after_secs: self.settings.backoff_after(c.asked), error: error.clone() };
                return self.settle(&c, not_asked(next, &error)).await;
            }
        };
        histogram!(metric::INQUIRY_DURATION).record(exchange.elapsed.as_secs_f64());
        let backoff = self.settings.backoff_after(c.asked);
        let (answer, detail, next, change, response_code) = match &exchange.answer {
            Answer::Status { status: s, status_code, response_code } => {
                let next =
                    if status::rank(product, s) == Some(4) { Next::Done } else { Next::Again { after_secs: backoff } };
                let change = Change {
                    transaction_key: c.transaction_key.clone(),
                    product,
                    singapay_id: singapay_id.clone(),
                    merchant_reference: merchant_reference.clone(),
                    status: Some(s.clone()),
                    transaction_status_code: status_code.clone(),
                    amount: None,
                    currency: None,
                    occurred_at: None,
                };
                ("status", None, next, Some(change), response_code.clone())
            }
            Answer::NotFound { response_code } => {
                let seen = c.not_found + 1;
                let next = if seen as u32 >= self.settings.not_found_attempts {
                    let why = format!("Singapay answered not found {seen} times");
                    tracing::warn!(transaction_key = %c.transaction_key, reason = c.reason.as_str(), answers = seen, "reconciliation gave up: Singapay does not know this transaction");
                    counter!(metric::RECONCILE_GAVE_UP, "product" => product.as_str()).increment(1);
                    Next::GiveUp(why)
                } else {
                    Next::Again { after_secs: backoff }
                };
                ("not_found", None, next, None, response_code.clone())
            }
            Answer::RetryLater { reason } => {
                ("retry_later", Some(reason.clone()), Next::Again { after_secs: backoff }, None, None)
            }
            Answer::TokenRejected => {
                tracing::warn!(transaction_key = %c.transaction_key, "Singapay refused a fresh access token too; asking again later");
                let detail = Some("the access token was refused twice".to_owned());
                ("token_rejected", detail, Next::Again { after_secs: backoff }, None, None)
            }
            Answer::Forbidden { cause } => {
                self.stop(cause.clone(), "ask Singapay to whitelist this machine's public IP address for the API (SP017/403), or check the account's permissions (SP403)");
                (
                    "forbidden",
                    Some(cause.clone()),
                    Next::Release { after_secs: backoff, error: cause.clone() },
                    None,
                    None,
                )
            }
            Answer::Unreadable { reason } => {
                tracing::warn!(transaction_key = %c.transaction_key, reason = %reason, "an inquiry's answer could not be read; asking again later");
                ("unreadable", Some(reason.clone()), Next::Again { after_secs: backoff }, None, None)
            }
        };
        if !matches!(exchange.answer, Answer::Forbidden { .. }) {
            self.resume();
        }
        counter!(metric::INQUIRIES, "product" => product.as_str(), "answer" => answer).increment(1);
        let record = Inquiry {
            transaction_key: c.transaction_key.clone(),
            reason: c.reason,
            delivery_id: c.delivery_id,
            asked_by: self.who.clone(),
            method: exchange.method.as_str(),
            path: exchange.path.clone(),
            request_body: exchange.request_body.as_ref().map(|b| b.to_string()),
            http_status: exchange.http_status,
            response_body: exchange.response_body.clone(),
            answer,
            detail,
            response_code,
            elapsed_ms: exchange.elapsed.as_millis().min(i32::MAX as u128) as i32,
            retried_with_new_token: exchange.retried_with_new_token,
            change,
            next: next.clone(),
        };
        let status = record.change.as_ref().and_then(|ch| ch.status.clone());
        let written = crate::intake::write_batch(&self.pool, &[Write::Inquiry(Box::new(record))])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Internal("no answer from the store".into())))?;
        let Written::Inquired { inquiry_id, change } = written else {
            return Err(StoreError::Internal("an inquiry was not recorded as one".into()));
        };
        let transition = change.as_ref().map(|ch| ch.transition.as_str().to_owned());
        tracing::info!(
            transaction_key = %c.transaction_key,
            reason = c.reason.as_str(),
            answer,
            status = status.as_deref(),
            transition = transition.as_deref(),
            version = change.as_ref().map(|ch| ch.version),
            inquiry_id,
            "inquiry answered"
        );
        Ok(Outcome {
            transaction_key: c.transaction_key,
            reason: c.reason,
            answer: answer.to_owned(),
            status,
            transition,
            next,
            inquiry_id: Some(inquiry_id),
        })
    }

    async fn settle(&self, c: &Check, outcome: Outcome) -> Result<Outcome, StoreError> {
        if let Next::GiveUp(why) = &outcome.next {
            tracing::warn!(transaction_key = %c.transaction_key, reason = c.reason.as_str(), why = %why, "reconciliation gave up on a check");
        }
        inquiries::settle(&self.pool, &c.transaction_key, &self.who, &outcome.next).await?;
        Ok(outcome)
    }

    /// Sets the checks gauge (`singapay_reconcile_checks{reason,state}`).
    pub async fn count_checks(&self) {
        let Ok(rows) = inquiries::check_counts(&self.pool).await else { return };
        for reason in ["needs_inquiry", "overdue", "requested"] {
            for state in ["open", "gave_up"] {
                let n = rows.iter().find(|(r, s, _)| r == reason && s == state).map_or(0, |r| r.2);
                gauge!(metric::RECONCILE_CHECKS, "reason" => reason, "state" => state).set(n as f64);
            }
        }
    }
}
