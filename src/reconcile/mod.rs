//! Reconciliation: asking Singapay about transactions whose callback was ambiguous
//! (`needs_inquiry`), never came (overdue), or that someone asked to check; each answer is
//! written as a [`Write::Inquiry`] through the same state machine and store code as a
//! callback (one transaction: the `inquiries` row, the change and its event, the check).
//!
//! Checks live in `singapay.reconcile_checks`: any number of replicas can run this, each
//! check is taken by one of them (`FOR UPDATE SKIP LOCKED`) with a lease longer than the
//! longest exchange, so no two ask about the same transaction at the same time.

pub mod client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use sqlx::PgConnection;

use crate::singapay::inquiry::{self, Answer, Lookup, Reading, Refused};
use crate::singapay::json;
use crate::singapay::status::{self, Product};
use crate::singapay::webhook::{self, Change};
use crate::store::inquiries::{self, Check, CheckReason, Inquiry, Next};
use crate::store::{StoreError, Write, Written};
use crate::telemetry::metric;
pub use client::{ApiClient, ApiSettings, AskError, Clock, Exchange};

/// One Singapay API credential and the sub-accounts it owns (an account owned by a
/// "Specific" credential must be asked with that credential).
#[derive(Debug, Clone)]
pub struct ApiCredential {
    /// Its label: a transaction whose callback was verified with the webhook secret of the
    /// same label is asked with this credential.
    pub label: String,
    pub api: ApiSettings,
    /// The sub-accounts (`{account_id}` in the paths) it asks about, at least one.
    pub accounts: Vec<String>,
}

/// Everything reconciliation needs besides the database.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// At least one; labels are distinct.
    pub credentials: Vec<ApiCredential>,
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
    /// Answers that cannot be applied (unreadable, about another record, ambiguous) before a
    /// check is flagged for a person (`state = 'flagged'`, `singapay.reconcile_attention`).
    pub unreadable_attempts: u32,
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
        self.timeout().as_secs().max(1) * 5 + 10
    }

    /// The longest a check's questions may take together (a search pages through a list,
    /// several accounts may be tried): shorter than the lease, so no other replica asks
    /// meanwhile.
    pub fn check_deadline(&self) -> Duration {
        Duration::from_secs(self.lease_secs().saturating_sub(5).max(1))
    }

    fn timeout(&self) -> Duration {
        self.credentials.iter().map(|c| c.api.timeout).max().unwrap_or(Duration::from_secs(15))
    }

    /// `(credential index, account)` in the order they are tried for a transaction whose
    /// callback was verified by `credential` (its accounts only, when it is configured),
    /// else every configured account.
    pub fn candidates(&self, credential: Option<&str>) -> Vec<(usize, String)> {
        let owner = credential.and_then(|l| self.credentials.iter().position(|c| c.label == l));
        self.credentials
            .iter()
            .enumerate()
            .filter(|(i, _)| owner.is_none_or(|o| o == *i))
            .flat_map(|(i, c)| c.accounts.iter().map(move |a| (i, a.clone())))
            .collect()
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

/// What `ask_each` asked: the exchanges `(credential, account, exchange)`, why some could not
/// be asked, and how many were skipped as paused.
type Asked = (Vec<(usize, String, Exchange)>, Vec<String>, usize);

fn not_asked_where(errors: &[String], skipped: usize) -> String {
    let mut why = errors.to_vec();
    if skipped > 0 {
        why.push(format!("{skipped} paused"));
    }
    why.join("; ")
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

/// The questions to ask about a check: one lookup per `(credential, account)` that may own
/// it, tried in order until one answers with the record's status.
#[derive(Debug, Clone)]
pub struct Plan {
    pub product: Product,
    pub lookups: Vec<(usize, String, Lookup)>,
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
    /// The credential and account of the deciding answer.
    pub credential: Option<String>,
    pub account_id: Option<String>,
    /// Which record the status came from (`reference_number=REF-1`).
    pub identified_by: Option<String>,
}

/// One pass: checks found, and what became of each one asked about.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub discovered: u64,
    pub outcomes: Vec<Outcome>,
    /// Set when Singapay refused every configured credential or account: nothing more is
    /// asked until a pause is over.
    pub halted: Option<String>,
    /// What is paused (`credential` or `credential/account`) and why, at the pass's end.
    pub paused: Vec<(String, String)>,
    /// The pass stopped at its time limit with checks still due: the next one starts at once.
    pub more: bool,
    /// Checks that could not be recorded (a store error) or whose task panicked: they are
    /// taken again when their lease ends; `reconcile` exits non-zero.
    pub failed: u64,
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
    /// One per credential, in `settings.credentials`' order.
    clients: Vec<ApiClient>,
    settings: ReconcileSettings,
    /// Who holds the leases this replica takes (host, process, a random tag).
    who: String,
    /// Paused scopes: a credential's label, or `label/account`.
    halts: Mutex<HashMap<String, Halt>>,
    discovered: Mutex<Option<Discovered>>,
}

impl Reconciler {
    pub fn new(pool: sqlx::PgPool, settings: ReconcileSettings, clock: Clock, who: &str) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!settings.credentials.is_empty(), "reconciliation needs at least one API credential");
        let clients = settings
            .credentials
            .iter()
            .map(|c| ApiClient::new(c.api.clone(), clock.clone()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for c in settings.credentials.iter().filter(|c| c.api.allow_insecure) {
            tracing::warn!(
                credential = %c.label,
                api = %c.api.base_url,
                "SINGAPAY_API_ALLOW_INSECURE=1: statuses are taken from {} (any host, plain http, the local sandbox); never in production",
                c.api.base_url
            );
        }
        let who = format!("{who}:{}:{:08x}", std::process::id(), rand::random::<u32>());
        Ok(Arc::new(Reconciler {
            pool,
            clients,
            settings,
            who,
            halts: Mutex::new(HashMap::new()),
            discovered: Mutex::new(None),
        }))
    }

    pub fn settings(&self) -> &ReconcileSettings {
        &self.settings
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// Runs until the task is dropped: a pass every `interval`.
    pub async fn run(self: Arc<Self>) {
        let accounts: Vec<String> = self
            .settings
            .credentials
            .iter()
            .map(|c| format!("{} ({}): {}", c.label, c.api.base_url, c.accounts.join(", ")))
            .collect();
        tracing::info!(
            credentials = %accounts.join("; "),
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
            report.paused = self.paused();
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
                        report.failed += 1;
                        tracing::warn!(error = %e, "a check could not be recorded; it is asked again once its lease ends")
                    }
                    Err(e) => {
                        report.failed += 1;
                        tracing::error!(error = %e, "a check panicked; it is asked again once its lease ends")
                    }
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
        report.paused = self.paused();
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

    /// Ends the pauses whose time is over: asking tries again, and their gauges read 0 (an
    /// alert on them stops even if nothing is asked with that credential or account).
    fn expire_pauses(&self) {
        let mut halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let over: Vec<String> = halts.iter().filter(|(_, h)| now >= h.until).map(|(s, _)| s.clone()).collect();
        for scope in over {
            halts.remove(&scope);
            tracing::info!(scope = %scope, "reconciliation pause over: asking again");
            let (credential, account) = scope.split_once('/').unwrap_or((&scope, ""));
            gauge!(metric::RECONCILE_PAUSED, "credential" => credential.to_owned(), "account" => account.to_owned())
                .set(0.0);
        }
        if halts.is_empty() {
            gauge!(metric::RECONCILE_HALTED).set(0.0);
        }
    }

    /// The cause when every credential and account is paused (nothing can be asked).
    fn halted(&self) -> Option<String> {
        self.expire_pauses();
        let halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let live = |scope: &str| halts.get(scope).filter(|h| now < h.until);
        let mut causes = Vec::new();
        for (i, account) in self.settings.candidates(None) {
            let label = &self.settings.credentials[i].label;
            match live(label).or_else(|| live(&format!("{label}/{account}"))) {
                Some(h) => causes.push(h.cause.clone()),
                None => return None,
            }
        }
        causes.dedup();
        Some(causes.join("; "))
    }

    /// Paused scopes and their causes, now.
    pub fn paused(&self) -> Vec<(String, String)> {
        let halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out: Vec<(String, String)> =
            halts.iter().filter(|(_, h)| now < h.until).map(|(s, h)| (s.clone(), h.cause.clone())).collect();
        out.sort();
        out
    }

    fn is_paused(&self, label: &str, account: &str) -> bool {
        let halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        [label.to_owned(), format!("{label}/{account}")].iter().any(|s| halts.get(s).is_some_and(|h| now < h.until))
    }

    /// Stops asking with `scope` (a credential's label, or `label/account`) for
    /// `backoff_max`: one log line naming the cause and the fix (again only if the cause
    /// changes), and the gauges. The other credentials and accounts go on.
    fn stop(&self, scope: &str, cause: String, fix: &str) {
        let mut halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        let repeated = halts.get(scope).is_some_and(|h| h.cause == cause);
        if !repeated {
            tracing::error!(
                scope,
                cause = %cause,
                fix,
                pause_secs = self.settings.backoff_max.as_secs(),
                "reconciliation paused for {scope}: Singapay refused it ({cause}); {fix}"
            );
        }
        let (credential, account) = scope.split_once('/').unwrap_or((scope, ""));
        gauge!(metric::RECONCILE_PAUSED, "credential" => credential.to_owned(), "account" => account.to_owned())
            .set(1.0);
        gauge!(metric::RECONCILE_HALTED).set(1.0);
        halts.insert(scope.to_owned(), Halt { cause, until: Instant::now() + self.settings.backoff_max });
    }

    /// An answer came with `label` on `account`: neither is paused any more.
    fn resume(&self, label: &str, account: &str) {
        let mut halts = self.halts.lock().unwrap_or_else(|e| e.into_inner());
        for scope in [label.to_owned(), format!("{label}/{account}")] {
            if let Some(h) = halts.remove(&scope) {
                tracing::info!(scope = %scope, previous_cause = %h.cause, "reconciliation resumed: Singapay answers again");
                let (credential, account) = scope.split_once('/').unwrap_or((&scope, ""));
                gauge!(metric::RECONCILE_PAUSED, "credential" => credential.to_owned(), "account" => account.to_owned())
                    .set(0.0);
            }
        }
        if halts.is_empty() {
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
        let lookups: Vec<(usize, String, Lookup)> = self
            .settings
            .candidates(known.credential.as_deref())
            .into_iter()
            .filter_map(|(i, account)| inquiry::lookup(&subject, &account).map(|l| (i, account, l)))
            .fold(Vec::new(), |mut unique: Vec<(usize, String, Lookup)>, (i, account, l)| {
                // A path without an account (direct debit) is asked once per credential.
                if !unique.iter().any(|(j, _, m)| *j == i && *m == l) {
                    unique.push((i, account, l));
                }
                unique
            });
        if lookups.is_empty() {
            let why = "the identifier its inquiry needs (reference_number or id) is not known".to_owned();
            return Ok(Err((Next::GiveUp(why.clone()), why)));
        }
        Ok(Ok(Plan { product, lookups, singapay_id, merchant_reference }))
    }

    /// The label of credential `i`.
    pub fn label(&self, i: usize) -> &str {
        &self.settings.credentials[i].label
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
            credential: None,
            account_id: None,
            identified_by: None,
        };
        let claimed = Instant::now();
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let planned = self.plan(&mut conn, &c).await?;
        drop(conn);
        let Plan { product, lookups, singapay_id, merchant_reference } = match planned {
            Ok(plan) => plan,
            Err((next, why)) => return self.settle(&c, not_asked(next, &why)).await,
        };
        let backoff = self.settings.backoff_after(c.asked);
        // The lease runs from the claim: planning counted, and room left to write.
        let deadline = self.settings.check_deadline().saturating_sub(claimed.elapsed());
        let asked = tokio::time::timeout(deadline, self.ask_each(product, &lookups)).await;
        let (exchanges, errors, skipped) = match asked {
            Ok(asked) => asked,
            Err(_) => {
                // Counted as an answer that could not be applied: a check that never ends
                // in time is flagged for a person, not asked in silence forever.
                let error = "the questions took longer than a check's lease".to_owned();
                tracing::warn!(transaction_key = %c.transaction_key, "{error}; asking again later");
                let next = self.unreadable_next(&c, product, "timeout", backoff);
                return self.settle_as(&c, not_asked(next, &error), "unreadable").await;
            }
        };
        // The deciding exchange: a status about our record, else the answer that says most
        // about what to do next.
        // A refusal outweighs "not found": the record may be on the account that refused.
        let weight = |a: &Answer| match a {
            Answer::Status { .. } => 5,
            Answer::Unreadable { .. } | Answer::Mismatch { .. } | Answer::Ambiguous { .. } => 4,
            Answer::RetryLater { .. } | Answer::TokenRejected => 3,
            Answer::Forbidden { .. } => 2,
            Answer::NotFound { .. } => 1,
        };
        let deciding = (0..exchanges.len()).max_by_key(|&i| (weight(&exchanges[i].2.answer), std::cmp::Reverse(i)));
        // "Not found" where some owner could not be asked (paused, no token) says nothing.
        let inconclusive = skipped > 0 || !errors.is_empty();
        let Some(deciding) = deciding else {
            // Nothing asked: every owner is paused, or no token could be had.
            let error = if errors.is_empty() {
                "every credential and account that could be asked is paused".to_owned()
            } else {
                errors.join("; ")
            };
            counter!(metric::INQUIRIES, "product" => product.as_str(), "answer" => "no_token").increment(1);
            let after_secs = if skipped > 0 { self.settings.backoff_max.as_secs() } else { backoff };
            let next = Next::Release { after_secs, error: error.clone() };
            return self.settle(&c, not_asked(next, &error)).await;
        };
        let mut records = Vec::with_capacity(exchanges.len());
        let mut outcome = None;
        for (n, (i, account, exchange)) in exchanges.into_iter().enumerate() {
            histogram!(metric::INQUIRY_DURATION).record(exchange.elapsed.as_secs_f64());
            let answer = exchange.answer.name();
            counter!(metric::INQUIRIES, "product" => product.as_str(), "answer" => answer).increment(1);
            let mut change = None;
            let mut response_code = None;
            let mut detail = None;
            let mut identified_by = None;
            let next = if n != deciding {
                Next::Keep
            } else {
                match &exchange.answer {
                    Answer::Status { status: s, status_code, response_code: code, identified_by: by } => {
                        change = Some(Change {
                            transaction_key: c.transaction_key.clone(),
                            product,
                            singapay_id: singapay_id.clone(),
                            merchant_reference: merchant_reference.clone(),
                            status: Some(s.clone()),
                            transaction_status_code: status_code.clone(),
                            amount: None,
                            currency: None,
                            occurred_at: None,
                        });
                        response_code = code.clone();
                        identified_by = by.clone();
                        // A binding is not a payment: its status, whatever it is, answers the check.
                        if status::rank(product, s) == Some(4) || product == Product::DirectDebit {
                            Next::Done
                        } else {
                            Next::Again { after_secs: backoff }
                        }
                    }
                    Answer::NotFound { .. } if inconclusive => self.refused_next(
                        &c,
                        product,
                        format!("not found where asked; not asked: {}", not_asked_where(&errors, skipped)),
                    ),
                    Answer::NotFound { .. } => {
                        let seen = c.not_found + 1;
                        if seen as u32 >= self.settings.not_found_attempts {
                            tracing::warn!(transaction_key = %c.transaction_key, reason = c.reason.as_str(), answers = seen, "reconciliation gave up: Singapay does not know this transaction");
                            counter!(metric::RECONCILE_GAVE_UP, "product" => product.as_str()).increment(1);
                            Next::GiveUp(format!("Singapay answered not found {seen} times"))
                        } else {
                            Next::Again { after_secs: backoff }
                        }
                    }
                    Answer::Unreadable { .. } | Answer::Mismatch { .. } | Answer::Ambiguous { .. } => {
                        self.unreadable_next(&c, product, answer, backoff)
                    }
                    Answer::RetryLater { .. } | Answer::TokenRejected => Next::Again { after_secs: backoff },
                    Answer::Forbidden { cause, .. } => self.refused_next(&c, product, cause.clone()),
                }
            };
            match &exchange.answer {
                Answer::Status { .. } => {}
                Answer::NotFound { response_code: code } => response_code = code.clone(),
                Answer::Mismatch { found, response_code: code } => {
                    tracing::warn!(transaction_key = %c.transaction_key, found = %found, "an inquiry's answer was about another record; not applied");
                    detail = Some(format!("the answer is about {found}"));
                    response_code = code.clone();
                }
                Answer::Ambiguous { reason } | Answer::RetryLater { reason } | Answer::Unreadable { reason } => {
                    if matches!(exchange.answer, Answer::Unreadable { .. } | Answer::Ambiguous { .. }) {
                        tracing::warn!(transaction_key = %c.transaction_key, reason = %reason, "an inquiry's answer could not be applied; asking again later");
                    }
                    detail = Some(reason.clone());
                }
                Answer::TokenRejected => {
                    tracing::warn!(transaction_key = %c.transaction_key, "Singapay refused a fresh access token too; asking again later");
                    detail = Some("the access token was refused twice".to_owned());
                }
                Answer::Forbidden { cause, .. } => detail = Some(cause.clone()),
            }
            if n == deciding {
                outcome = Some((answer, i, account.clone(), identified_by.clone(), next.clone()));
            }
            records.push(Write::Inquiry(Box::new(Inquiry {
                transaction_key: c.transaction_key.clone(),
                reason: c.reason,
                delivery_id: c.delivery_id,
                asked_by: self.who.clone(),
                credential: Some(self.label(i).to_owned()),
                account_id: Some(account),
                method: exchange.method.as_str(),
                path: exchange.path.clone(),
                request_body: exchange.request_body.as_ref().map(|b| b.to_string()),
                http_status: exchange.http_status,
                response_body: exchange.response_body.clone(),
                answer,
                detail,
                response_code,
                identified_by,
                steps: (!exchange.steps.is_empty())
                    .then(|| serde_json::Value::from(exchange.steps.clone()).to_string()),
                elapsed_ms: exchange.elapsed.as_millis().min(i32::MAX as u128) as i32,
                retried_with_new_token: exchange.retried_with_new_token,
                change,
                next,
            })));
        }
        let (answer, i, account, identified_by, next) = outcome.expect("the deciding exchange is recorded");
        let status = records.iter().find_map(|r| match r {
            Write::Inquiry(q) => q.change.as_ref().and_then(|ch| ch.status.clone()),
            _ => None,
        });
        let written = crate::intake::write_batch(&self.pool, &records).await;
        let mut decided = None;
        for w in written {
            if let Written::Inquired { inquiry_id, change } = w? {
                if change.is_some() || decided.is_none() {
                    decided = Some((inquiry_id, change));
                }
            }
        }
        let Some((inquiry_id, change)) = decided else {
            return Err(StoreError::Internal("an inquiry was not recorded as one".into()));
        };
        let transition = change.as_ref().map(|ch| ch.transition.as_str().to_owned());
        tracing::info!(
            transaction_key = %c.transaction_key,
            reason = c.reason.as_str(),
            answer,
            credential = self.label(i),
            account_id = %account,
            identified_by = identified_by.as_deref(),
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
            credential: Some(self.label(i).to_owned()),
            account_id: Some(account),
            identified_by,
        })
    }

    /// Asks each `(credential, account)` in turn, skipping paused ones, until one answers
    /// with our record's status. Refusals pause their credential or account.
    async fn ask_each(&self, product: Product, lookups: &[(usize, String, Lookup)]) -> Asked {
        let reading = Reading::of(product);
        let mut exchanges = Vec::new();
        let mut errors = Vec::new();
        let mut skipped = 0;
        for (i, account, lookup) in lookups {
            let label = self.label(*i);
            if self.is_paused(label, account) {
                skipped += 1;
                continue;
            }
            let exchange = match self.clients[*i].look_up(reading, lookup).await {
                Ok(exchange) => exchange,
                Err(e) => {
                    let error = format!("{label}: {e}");
                    match e {
                        AskError::Credentials(_) => self.stop(
                            label,
                            e.to_string(),
                            "check this credential's client id, client secret and partner id against the dashboard, and this machine's clock",
                        ),
                        AskError::Forbidden(_) => self.stop(
                            label,
                            e.to_string(),
                            "ask Singapay to whitelist this machine's public IP address for the API",
                        ),
                        AskError::Untrusted(_) => self.stop(
                            label,
                            e.to_string(),
                            "point SINGAPAY_API_URL at https://payment-b2b.singapay.id (or the sandbox host)",
                        ),
                        AskError::TokenUnavailable(_) => {
                            tracing::warn!(credential = label, error = %e, "no access token from Singapay; asking again later")
                        }
                    }
                    errors.push(error);
                    continue;
                }
            };
            match &exchange.answer {
                Answer::Forbidden { cause, refused: Refused::Ip } => self.stop(
                    label,
                    cause.clone(),
                    "ask Singapay to whitelist this machine's public IP address for the API (SP017)",
                ),
                Answer::Forbidden { cause, refused: Refused::Account } => self.stop(
                    &format!("{label}/{account}"),
                    cause.clone(),
                    "this account belongs to another credential (SP403) or the credential lacks the permission: configure the account under the credential that owns it",
                ),
                Answer::TokenRejected => self.stop(
                    label,
                    "a fresh access token was refused too (HTTP 401 / SP013)".to_owned(),
                    "check this credential's partner id (X-PARTNER-ID) and client id against the dashboard",
                ),
                // Singapay took the question (a fault or no answer says nothing either way).
                Answer::Status { .. }
                | Answer::NotFound { .. }
                | Answer::Mismatch { .. }
                | Answer::Ambiguous { .. }
                | Answer::Unreadable { .. } => self.resume(label, account),
                Answer::RetryLater { .. } => {}
            }
            let found = matches!(exchange.answer, Answer::Status { .. });
            exchanges.push((*i, account.clone(), exchange));
            if found {
                break;
            }
        }
        (exchanges, errors, skipped)
    }

    async fn settle(&self, c: &Check, outcome: Outcome) -> Result<Outcome, StoreError> {
        self.settle_as(c, outcome, "not_asked").await
    }

    /// Settles a check with no inquiry to record; `answer` counts as [`inquiries::finish_check`]
    /// counts answers.
    async fn settle_as(&self, c: &Check, outcome: Outcome, answer: &str) -> Result<Outcome, StoreError> {
        if let Next::GiveUp(why) | Next::Flag(why) = &outcome.next {
            tracing::warn!(transaction_key = %c.transaction_key, reason = c.reason.as_str(), why = %why, "reconciliation gave up on a check");
        }
        inquiries::settle(&self.pool, &c.transaction_key, &self.who, &outcome.next, answer).await?;
        Ok(outcome)
    }

    /// After an answer that cannot be applied: again after the backoff, or flagged for a
    /// person at `unreadable_attempts`.
    fn unreadable_next(&self, c: &Check, product: Product, answer: &str, backoff: u64) -> Next {
        let seen = c.unreadable + 1;
        if (seen as u32) < self.settings.unreadable_attempts {
            return Next::Again { after_secs: backoff };
        }
        tracing::warn!(transaction_key = %c.transaction_key, reason = c.reason.as_str(), answers = seen, "reconciliation flagged a transaction for a person: Singapay's answers about it cannot be applied");
        counter!(metric::RECONCILE_FLAGGED, "product" => product.as_str()).increment(1);
        Next::Flag(format!("{seen} answers could not be applied; the last: {answer}"))
    }

    /// After a refusal (or "not found" where an owner refused): given back uncounted, due
    /// when the pause ends; refusals count towards the flag, so an account refused for good
    /// does not keep a check asked forever.
    fn refused_next(&self, c: &Check, product: Product, error: String) -> Next {
        if c.unreadable as u32 + 1 >= self.settings.unreadable_attempts {
            counter!(metric::RECONCILE_FLAGGED, "product" => product.as_str()).increment(1);
            return Next::Flag(format!(
                "refused or unanswered by its owner {} times; the last: {error}",
                c.unreadable + 1
            ));
        }
        Next::Release { after_secs: self.settings.backoff_max.as_secs(), error }
    }

    /// Sets the checks gauge (`singapay_reconcile_checks{reason,state}`).
    pub async fn count_checks(&self) {
        let Ok(rows) = inquiries::check_counts(&self.pool).await else { return };
        for reason in ["needs_inquiry", "overdue", "requested"] {
            for state in ["open", "gave_up", "flagged"] {
                let n = rows.iter().find(|(r, s, _)| r == reason && s == state).map_or(0, |r| r.2);
                gauge!(metric::RECONCILE_CHECKS, "reason" => reason, "state" => state).set(n as f64);
            }
        }
    }
}
