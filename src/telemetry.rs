//! Logs: JSON by default (one object per line), `LOG_FORMAT=text` for people (the default
//! of `dev`); level via `RUST_LOG`. Secrets, signatures and bearer tokens are never passed to a log call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        // Colours only for a terminal, not for a file or a pipe.
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
}

/// A warning logged at most once per period however often its cause recurs (a flood, an
/// outage); the next one says how many were left out. Shared freely (`static`, or one per
/// accept loop): it locks for the moment it takes to decide.
#[derive(Debug)]
pub struct Throttled {
    every: Duration,
    /// When it was last due, and how many times it was asked since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new(every: Duration) -> Self {
        Throttled { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(repeats left out since the last one)` when it is time to log again.
    pub fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.every) {
            *suppressed += 1;
            return None;
        }
        *last = Some(Instant::now());
        Some(std::mem::take(suppressed))
    }
}

/// For tests: output goes through the test harness's capture.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// Prometheus series (documented in docs/operations.md).
pub mod metric {
    pub const DELIVERIES: &str = "singapay_deliveries_total";
    pub const DUPLICATES: &str = "singapay_duplicates_total";
    pub const REJECTIONS: &str = "singapay_rejections_total";
    pub const TEST_PINGS: &str = "singapay_test_pings_total";
    pub const CALLBACK_DURATION: &str = "singapay_callback_duration_seconds";
    pub const STORAGE_DURATION: &str = "singapay_storage_duration_seconds";
    pub const INTAKE_BATCH_SIZE: &str = "singapay_intake_batch_size";
    pub const INTAKE_QUEUED: &str = "singapay_intake_queued";
    pub const QUEUE_EVENTS: &str = "singapay_queue_events";
    pub const QUEUE_DUE: &str = "singapay_queue_due_events";
    pub const QUEUE_OLDEST_DUE_AGE: &str = "singapay_queue_oldest_due_age_seconds";
    pub const DB_POOL_CONNECTIONS: &str = "singapay_db_pool_connections";
    pub const DB_POOL_MAX: &str = "singapay_db_pool_max_connections";
    pub const OPEN_CONNECTIONS: &str = "singapay_open_connections";
    pub const CONNECTION_LIMIT_HITS: &str = "singapay_connection_limit_hits_total";
    pub const ACCEPT_ERRORS: &str = "singapay_accept_errors_total";
    pub const INQUIRIES: &str = "singapay_inquiries_total";
    pub const INQUIRY_DURATION: &str = "singapay_inquiry_duration_seconds";
    pub const RECONCILE_CHECKS: &str = "singapay_reconcile_checks";
    pub const RECONCILE_HALTED: &str = "singapay_reconcile_halted";
    pub const RECONCILE_PAUSED: &str = "singapay_reconcile_paused";
    pub const RECONCILE_FLAGGED: &str = "singapay_reconcile_flagged_total";
    pub const RECONCILE_GAVE_UP: &str = "singapay_reconcile_gave_up_total";
    pub const PARTITIONS_MISSING: &str = "singapay_partitions_missing_total";
    pub const PARTITIONS_READY_DAYS: &str = "singapay_partitions_ready_days";
}

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use std::sync::OnceLock;

    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
                .expect("buckets are non-empty")
                .set_buckets_for_metric(
                    Matcher::Full(metric::INTAKE_BATCH_SIZE.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
                )
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("the Prometheus recorder is installed once");
            describe_counter!(
                metric::DELIVERIES,
                "Distinct deliveries stored, by webhook_type, outcome and signature_form."
            );
            describe_counter!(
                metric::DUPLICATES,
                "Retries of stored deliveries, acknowledged without a new row, by webhook_type."
            );
            describe_counter!(metric::REJECTIONS, "Callbacks answered with an error, by error code.");
            describe_counter!(metric::TEST_PINGS, "Dashboard Test-button pings acknowledged (nothing stored).");
            describe_histogram!(
                metric::CALLBACK_DURATION,
                Unit::Seconds,
                "End-to-end handling of a callback, by result."
            );
            describe_histogram!(
                metric::STORAGE_DURATION,
                Unit::Seconds,
                "The database transaction that stored one delivery (shared by every delivery of its batch)."
            );
            describe_histogram!(
                metric::INTAKE_BATCH_SIZE,
                "Callbacks (and stale retries) each intake transaction took from the queue."
            );
            describe_gauge!(
                metric::INTAKE_QUEUED,
                "Verified callbacks waiting for an intake writer, read at scrape time."
            );
            describe_gauge!(
                metric::QUEUE_EVENTS,
                "Queue rows by state (available, running, done, dead), read at scrape time."
            );
            describe_gauge!(metric::QUEUE_DUE, "Available queue rows whose available_at has passed.");
            describe_gauge!(
                metric::QUEUE_OLDEST_DUE_AGE,
                Unit::Seconds,
                "Age of the oldest due queue row (0 when none)."
            );
            describe_gauge!(metric::DB_POOL_CONNECTIONS, "Database pool connections by state (idle, in_use).");
            describe_gauge!(metric::DB_POOL_MAX, "Configured maximum of the database pool (DB_MAX_CONNECTIONS).");
            describe_gauge!(metric::OPEN_CONNECTIONS, "Open client connections on the callback port.");
            describe_counter!(
                metric::CONNECTION_LIMIT_HITS,
                "Times a new connection found MAX_CONNECTIONS open (a silent one was closed or it waited)."
            );
            describe_counter!(metric::ACCEPT_ERRORS, "Failed accepts (e.g. out of file descriptors), survived.");
            describe_counter!(
                metric::INQUIRIES,
                "Questions to Singapay's API by product and answer (status, not_found, retry_later, token_rejected, forbidden, unreadable, no_token)."
            );
            describe_histogram!(
                metric::INQUIRY_DURATION,
                Unit::Seconds,
                "Time of one inquiry exchange, token included."
            );
            describe_gauge!(
                metric::RECONCILE_CHECKS,
                "Transactions to ask Singapay about, by reason (needs_inquiry, overdue, requested) and state (open, gave_up)."
            );
            describe_gauge!(
                metric::RECONCILE_HALTED,
                "1 while some credential or account is paused because Singapay refused it (credentials, IP address, account ownership)."
            );
            describe_gauge!(
                metric::RECONCILE_PAUSED,
                "1 while this credential (account \"\") or this account of it is paused because Singapay refused it."
            );
            describe_counter!(
                metric::RECONCILE_FLAGGED,
                "Checks flagged for a person after repeated answers that could not be applied, by product."
            );
            describe_counter!(metric::RECONCILE_GAVE_UP, "Checks given up after repeated not-found answers, by product.");
            describe_counter!(
                metric::PARTITIONS_MISSING,
                "Intake writes that found no partition for their day (it was created then, or the callbacks were answered 503)."
            );
            describe_gauge!(
                metric::PARTITIONS_READY_DAYS,
                "Days from now that every history table has partitions for, without a gap (serve keeps at least 7)."
            );
            handle
        })
        .clone()
}
