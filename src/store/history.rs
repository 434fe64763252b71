//! History by day: `deliveries`, `event_log`, `rejected_deliveries` and `inquiries` are
//! range-partitioned by `stored_at`, one partition per day (UTC). Partitions are made ahead
//! of time ([`ensure_ahead`]); retention retires whole days ([`retire`]): the few rows that
//! must outlive their day are moved into today's partition, the day is (optionally)
//! archived, detached concurrently and dropped. The cost of retiring a day is that of its
//! kept rows and a catalog change, however much history is kept.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
use sqlx::PgPool;

use super::inquiries::OPEN_STATUSES;

/// The partitioned history tables, in the order days are retired.
pub const TABLES: [&str; 4] = ["event_log", "deliveries", "rejected_deliveries", "inquiries"];

/// Days after today that `serve` and `prune` keep partitions ready for (at least 7).
pub const DAYS_AHEAD: u64 = 8;

/// How long creating a partition waits for a lock before giving up (it is tried again):
/// attaching takes a SHARE UPDATE EXCLUSIVE lock on the parent, which reads and writes do
/// not conflict with, but a concurrent retirement's detach does.
const DDL_LOCK_TIMEOUT: &str = "2s";

/// Whether `e` is Postgres refusing a row because no partition holds its day (SQLSTATE
/// 23514 with "no partition of relation …"): not the row's fault, and not a reason to
/// refuse the callback for good.
pub fn is_missing_partition(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23514") && db.message().starts_with("no partition of relation"))
}

/// Creates the missing partitions for the days `from` to `to` (inclusive, UTC), through
/// `singapay.ensure_partitions`; the number created.
pub async fn ensure_partitions(pool: &PgPool, from: NaiveDate, to: NaiveDate) -> Result<i32, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")).execute(&mut *tx).await?;
    let n: i32 =
        sqlx::query_scalar("SELECT singapay.ensure_partitions($1, $2)").bind(from).bind(to).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// Partitions from yesterday to [`DAYS_AHEAD`] days after today, by the database's clock
/// (the one `stored_at` is set by); the number created.
pub async fn ensure_ahead(pool: &PgPool) -> Result<i32, sqlx::Error> {
    let today: NaiveDate = sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date").fetch_one(pool).await?;
    ensure_partitions(pool, today - chrono::Days::new(1), today + chrono::Days::new(DAYS_AHEAD)).await
}

/// One partition of a history table.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Partition {
    pub table_name: String,
    pub partition: String,
    pub from_at: DateTime<Utc>,
    pub to_at: DateTime<Utc>,
    pub detaching: bool,
    /// The bounds as Postgres writes them (the legacy partition's lower one is
    /// '-infinity'), for the statements that select the partition's rows.
    pub from_bound: String,
    pub to_bound: String,
}

pub async fn partitions(pool: &PgPool) -> Result<Vec<Partition>, sqlx::Error> {
    sqlx::query_as(
        // The legacy partition starts at MINVALUE: '-infinity', which chrono cannot hold.
        "SELECT table_name, partition::text AS partition,
                greatest(from_at, '0001-01-01 00:00:00+00') AS from_at, to_at, detaching,
                from_at::text AS from_bound, to_at::text AS to_bound
           FROM singapay.history_partitions ORDER BY from_at, table_name",
    )
    .fetch_all(pool)
    .await
}

/// Days from `now` that every history table has partitions for without a gap (0 when `now`
/// itself has none): what `singapay_partitions_ready_days` reports.
pub fn days_ready(parts: &[Partition], now: DateTime<Utc>) -> f64 {
    TABLES
        .iter()
        .map(|table| {
            let mut ranges: Vec<_> = parts.iter().filter(|p| p.table_name == *table).collect();
            ranges.sort_by_key(|p| p.from_at);
            let mut covered = now;
            for p in ranges {
                if p.from_at <= covered && p.to_at > covered {
                    covered = p.to_at;
                }
            }
            (covered - now).num_seconds() as f64 / 86_400.0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Rows moved out of retired days into today's partition, because they must outlive them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub events: u64,
    pub deliveries: u64,
    pub rejections: u64,
    pub inquiries: u64,
}

/// A retired (or, on a dry run, retirable) partition.
#[derive(Debug, Clone)]
pub struct Retired {
    pub table: String,
    pub partition: String,
    pub from_at: DateTime<Utc>,
    pub to_at: DateTime<Utc>,
    /// Rows dropped with it (on a dry run: rows it holds, kept ones included).
    pub rows: u64,
    pub archive: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct RetireReport {
    pub kept: Kept,
    pub retired: Vec<Retired>,
    /// Days not retired because events stored on them are still unfinished (available or
    /// running): retired once the consumers have finished them (acknowledged, or dead).
    pub postponed: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetireError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("archiving {partition} to {path}: {source}")]
    Archive { partition: String, path: PathBuf, source: std::io::Error },
    #[error("archive of {partition} holds {written} rows, the partition {rows}: not retired")]
    ArchiveCount { partition: String, written: u64, rows: u64 },
}

/// Retires every day whose partition ends before `cutoff` and holds no unfinished event
/// (such a day waits for its consumers): moves the rows that must outlive it into today's
/// partition (the rules in docs/operations.md), writes the rest to
/// `archive` when given (gzip-compressed COPY text, row count checked), then detaches the
/// partition concurrently and drops it. A retirement interrupted at any point is finished
/// by the next: a partition left detaching is finalized and dropped, a table left detached
/// is dropped. With `dry_run`, counts and changes nothing.
pub async fn retire(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    archive: Option<&Path>,
    dry_run: bool,
) -> Result<RetireReport, RetireError> {
    let mut report = RetireReport::default();
    let began = std::time::Instant::now();
    let parts = partitions(pool).await?;
    // Never today's partition or a later one: kept rows are moved there.
    let (now, today): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT now(), date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'")
            .fetch_one(pool)
            .await?;
    if !dry_run {
        finish_interrupted(pool, &parts).await?;
        // `serve` keeps the days ahead ready; made here only when it has not.
        if days_ready(&parts, now) < DAYS_AHEAD as f64 {
            ensure_ahead(pool).await?;
        }
    }
    tracing::debug!(partitions = parts.len(), ms = began.elapsed().as_millis() as u64, "history retirement prepared");
    let due: Vec<Partition> =
        parts.into_iter().filter(|p| p.to_at <= cutoff && p.to_at <= today && !p.detaching).collect();
    let mut ranges: Vec<(DateTime<Utc>, DateTime<Utc>, String, String)> =
        due.iter().map(|p| (p.from_at, p.to_at, p.from_bound.clone(), p.to_bound.clone())).collect();
    ranges.dedup();
    // The start of the oldest day postponed so far: its transactions may have rows in the
    // later days retired now.
    let mut oldest_postponed: Option<String> = None;
    for (from, to, from_bound, to_bound) in ranges {
        let unfinished: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM singapay.event_queue
                             WHERE stored_at >= $1::text::timestamptz AND stored_at < $2::text::timestamptz)",
        )
        .bind(&from_bound)
        .bind(&to_bound)
        .fetch_one(pool)
        .await?;
        if unfinished {
            tracing::warn!(%from, %to, "history not retired: events stored then are still unfinished");
            report.postponed.push((from, to));
            oldest_postponed.get_or_insert_with(|| from_bound.clone());
            continue;
        }
        let day_parts: Vec<&Partition> = due.iter().filter(|p| p.from_at == from && p.to_at == to).collect();
        let day = Day {
            from: &from_bound,
            to: &to_bound,
            oldest: oldest_postponed.as_deref().unwrap_or(&from_bound),
            parts: day_parts.iter().map(|p| (p.table_name.as_str(), p.partition.as_str())).collect(),
        };
        let started = std::time::Instant::now();
        let k = keep(pool, &day, cutoff, dry_run).await?;
        let kept_in = started.elapsed();
        add(&mut report.kept, k);
        let mut counted = Vec::with_capacity(day_parts.len());
        for p in &day_parts {
            let rows = count_rows(pool, &p.partition).await?;
            let mut written = None;
            if !dry_run {
                if let Some(dir) = archive {
                    written = Some(archive_partition(pool, p, rows, dir).await?);
                }
            }
            counted.push((p, rows, written));
        }
        let counted_in = started.elapsed();
        if !dry_run {
            // Each detach waits for the statements in flight on its table: side by side, the
            // day waits for the longest of them once, not for each table in turn.
            futures_util::future::try_join_all(
                day_parts.iter().map(|p| drop_partition(pool, &p.table_name, &p.partition)),
            )
            .await?;
        }
        tracing::info!(
            %from, %to, kept = ?k, dry_run,
            keep_ms = kept_in.as_millis() as u64,
            count_and_archive_ms = (counted_in - kept_in).as_millis() as u64,
            detach_and_drop_ms = (started.elapsed() - counted_in).as_millis() as u64,
            "history day retired"
        );
        for (p, rows, archive) in counted {
            report.retired.push(Retired {
                table: p.table_name.clone(),
                partition: p.partition.clone(),
                from_at: p.from_at,
                to_at: p.to_at,
                rows,
                archive,
            });
        }
    }
    Ok(report)
}

/// The rows of a partition, counted from its primary key's index (index-only: the
/// partition is no longer written, and vacuum has marked its pages visible) rather than by
/// reading its rows, which would push the live days out of the cache.
async fn count_rows(pool: &PgPool, partition: &str) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut *tx).await?;
    sqlx::query("SET LOCAL enable_bitmapscan = off").execute(&mut *tx).await?;
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {partition}")).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows as u64)
}

fn add(total: &mut Kept, k: Kept) {
    total.events += k.events;
    total.deliveries += k.deliveries;
    total.rejections += k.rejections;
    total.inquiries += k.inquiries;
}

/// The partitions of one range retired together: (table, partition), and the range's
/// bounds as Postgres writes them.
struct Day<'a> {
    from: &'a str,
    to: &'a str,
    /// The start of the oldest day not retired (this one, or one postponed before it): no
    /// transaction whose history begins earlier has rows here unless it is open, being
    /// reconciled, or from before `history_from`.
    oldest: &'a str,
    parts: Vec<(&'a str, &'a str)>,
}

impl Day<'_> {
    fn partition(&self, table: &str) -> Option<&str> {
        self.parts.iter().find(|(t, _)| *t == table).map(|(_, p)| *p)
    }
}

/// Settings for the statements that find and move a day's kept rows: each reads the day's
/// own partitions through their indexes (index-only where it can) and probes
/// `transactions` once per key (a day's worth), never joins by reading the transactions of
/// the whole retention window; no JIT (compiling costs more than these statements run).
const KEEP_SETTINGS: [&str; 5] = [
    "SET LOCAL enable_hashjoin = off",
    "SET LOCAL enable_mergejoin = off",
    "SET LOCAL enable_seqscan = off",
    "SET LOCAL jit = off",
    "SET LOCAL plan_cache_mode = force_custom_plan",
];

/// What [`keep`] looks the kept rows up by.
struct KeptBy {
    cutoff: DateTime<Utc>,
    /// Transactions with rows in the day whose history stays whole: changed since the
    /// cutoff, still open (not in a final status), or being reconciled.
    keys: Vec<String>,
    /// Deliveries that must stay: the causes of kept events, the first and current-state
    /// deliveries of kept transactions, those a reconciliation check names.
    deliveries: Vec<i64>,
    /// The last inquiry of every reconciliation check.
    inquiries: Vec<i64>,
}

impl KeptBy {
    /// The rows of `partition` (of `table`) that outlive their day, as `FROM … WHERE …`
    /// over the alias `x` put in place of `{ROWS}` in `select`; bind with [`KeptBy::bind`],
    /// which binds `$1` … `$3`.
    fn sql(table: &str, partition: &str, select: &str) -> String {
        let condition = match table {
            "event_log" => "x.state = 'dead' OR x.transaction_key = ANY($1)",
            "deliveries" => {
                "x.transaction_key = ANY($1) OR x.id = ANY($2) OR (x.times_received > 1 AND x.last_received_at >= $3)"
            }
            "rejected_deliveries" => "x.times_received > 1 AND x.last_received_at >= $1",
            _ => "x.transaction_key = ANY($1) OR x.id = ANY($2)",
        };
        select.replace("{ROWS}", &format!("FROM {partition} x WHERE ({condition})"))
    }

    /// The parameters of [`KeptBy::sql`] for `table`.
    fn bind<'q, O>(&'q self, table: &str, q: QueryScalar<'q, O>) -> QueryScalar<'q, O> {
        match table {
            "event_log" => q.bind(&self.keys),
            "deliveries" => q.bind(&self.keys).bind(&self.deliveries).bind(self.cutoff),
            "rejected_deliveries" => q.bind(self.cutoff),
            _ => q.bind(&self.keys).bind(&self.inquiries),
        }
    }
}

/// A bound as Postgres printed it (`from_bound`, `to_bound`), as a `timestamptz` literal.
fn literal(bound: &str) -> String {
    format!("'{}'::timestamptz", bound.replace('\'', "''"))
}

type QueryScalar<'q, O> = sqlx::query::QueryScalar<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

async fn kept_by(conn: &mut sqlx::PgConnection, day: &Day<'_>, cutoff: DateTime<Utc>) -> Result<KeptBy, sqlx::Error> {
    // Transactions whose history may hold rows of the day (it begins between the oldest
    // day still kept and the day's end), changed since the cutoff or open: one range of
    // `transactions_history_from_idx`, read index-only. Those from before that column
    // ('-infinity') count by their last change; open ones whose history began earlier
    // still (`transactions_open_history_idx`) and those being reconciled are few.
    let keys: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT transaction_key FROM singapay.transactions
          WHERE history_from >= $1::text::timestamptz AND history_from < $2::text::timestamptz
            AND (updated_at >= $3 OR status IN {OPEN_STATUSES})
         UNION
         SELECT transaction_key FROM singapay.transactions WHERE history_from = '-infinity' AND updated_at >= $3
         UNION
         SELECT transaction_key FROM singapay.transactions
          WHERE status IN {OPEN_STATUSES} AND history_from < $1::text::timestamptz
         UNION
         SELECT transaction_key FROM singapay.reconcile_checks"
    ))
    .bind(day.oldest)
    .bind(day.to)
    .bind(cutoff)
    .fetch_all(&mut *conn)
    .await?;
    let events = day.partition("event_log").map_or(String::new(), |p| {
        format!(
            "UNION SELECT e.delivery_id FROM {p} e
              WHERE e.delivery_id IS NOT NULL AND (e.state = 'dead' OR e.transaction_key = ANY($1))"
        )
    });
    let deliveries: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT delivery_id FROM singapay.reconcile_checks WHERE delivery_id IS NOT NULL
         UNION SELECT d FROM singapay.transactions t, unnest(ARRAY[t.first_delivery_id, t.last_delivery_id]) d
          WHERE t.transaction_key = ANY($1) AND d IS NOT NULL
         {events}"
    ))
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let inquiries: Vec<i64> =
        sqlx::query_scalar("SELECT last_inquiry_id FROM singapay.reconcile_checks WHERE last_inquiry_id IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?;
    Ok(KeptBy { cutoff, keys, deliveries, inquiries })
}

/// Moves the rows of the day's partitions that must outlive it into today's partition, in
/// one transaction (with `dry_run`, counts them and changes nothing). An intake write racing
/// the move of the same row (a duplicate counted on a kept delivery) fails with a
/// serialization error and is retried by intake.
async fn keep(pool: &PgPool, day: &Day<'_>, cutoff: DateTime<Utc>, dry_run: bool) -> Result<Kept, sqlx::Error> {
    let mut tx = pool.begin().await?;
    for setting in KEEP_SETTINGS {
        sqlx::query(setting).execute(&mut *tx).await?;
    }
    let by = kept_by(&mut tx, day, cutoff).await?;
    let mut n = [0u64; 4];
    for (i, table) in TABLES.into_iter().enumerate() {
        let Some(partition) = day.partition(table) else { continue };
        // The bounds, as literals (constants when the statement is planned), let Postgres
        // plan and lock only the day's partition among the table's, however many days are
        // kept: a bound given as a parameter cast from text prunes only when the statement
        // runs, after planning over every partition.
        let select = if dry_run {
            "SELECT count(*) {ROWS}".to_string()
        } else {
            format!(
                "WITH moved AS (
                    UPDATE singapay.{table} m SET stored_at = now()
                     WHERE m.id IN (SELECT x.id {{ROWS}})
                       AND m.stored_at >= {} AND m.stored_at < {}
                    RETURNING 1
                 )
                 SELECT count(*) FROM moved",
                literal(day.from),
                literal(day.to)
            )
        };
        let sql = KeptBy::sql(table, partition, &select);
        let q = by.bind(table, sqlx::query_scalar(&sql));
        let c: i64 = q.fetch_one(&mut *tx).await?;
        n[i] = c as u64;
    }
    if dry_run {
        tx.rollback().await?;
    } else {
        // The kept transactions' history now begins after the day at the earliest (unless
        // a day before it waits, postponed, and may hold more of it).
        if day.oldest == day.from {
            sqlx::query(
                "UPDATE singapay.transactions SET history_from = $2::text::timestamptz
                  WHERE transaction_key = ANY($1) AND history_from > '-infinity'
                    AND history_from < $2::text::timestamptz",
            )
            .bind(&by.keys)
            .bind(day.to)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
    }
    Ok(Kept { events: n[0], deliveries: n[1], rejections: n[2], inquiries: n[3] })
}

/// Detaches a partition concurrently (reads and writes of the table go on; it waits for
/// the queries that may still see it) and drops it.
async fn drop_partition(pool: &PgPool, table: &str, partition: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("ALTER TABLE singapay.{table} DETACH PARTITION {partition} CONCURRENTLY"))
        .execute(pool)
        .await?;
    sqlx::query(&format!("DROP TABLE {partition}")).execute(pool).await?;
    Ok(())
}

/// Finishes what an interrupted retirement left: partitions still detaching are finalized
/// and dropped; tables in `singapay_history` that are neither attached nor a template were
/// detached and not yet dropped.
async fn finish_interrupted(pool: &PgPool, parts: &[Partition]) -> Result<(), sqlx::Error> {
    for p in parts.iter().filter(|p| p.detaching) {
        sqlx::query(&format!("ALTER TABLE singapay.{} DETACH PARTITION {} FINALIZE", p.table_name, p.partition))
            .execute(pool)
            .await?;
        sqlx::query(&format!("DROP TABLE {}", p.partition)).execute(pool).await?;
    }
    let loose: Vec<String> = sqlx::query_scalar(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'singapay_history' AND c.relkind = 'r' AND c.relname NOT LIKE '%\\_template'
            AND c.relname ~ ('^(' || array_to_string(singapay_history.tables(), '|') || ')_')
            AND NOT c.relispartition",
    )
    .fetch_all(pool)
    .await?;
    for table in loose {
        tracing::warn!(%table, "dropping a history partition whose retirement was interrupted");
        sqlx::query(&format!("DROP TABLE {table}")).execute(pool).await?;
    }
    Ok(())
}

/// Writes `p`'s rows as `DIR/<partition>.copy.gz` (COPY text format, in the parent table's
/// column order, so that `COPY singapay.<table> FROM STDIN` restores it) and a manifest
/// `DIR/<partition>.json`; checks that the file holds `rows` rows before returning.
async fn archive_partition(pool: &PgPool, p: &Partition, rows: u64, dir: &Path) -> Result<PathBuf, RetireError> {
    let name = p.partition.trim_start_matches("singapay_history.").trim_matches('"').to_string();
    let path = dir.join(format!("{name}.copy.gz"));
    let io = |source| RetireError::Archive { partition: p.partition.clone(), path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(attname) FROM pg_attribute
          WHERE attrelid = format('singapay.%I', $1::text)::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(&p.table_name)
    .fetch_all(pool)
    .await?;
    let list = columns.join(", ");
    let partial = path.with_extension("gz.part");
    let file = std::fs::File::create(&partial).map_err(io)?;
    let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::default());
    let mut conn = pool.acquire().await?;
    let mut stream = conn.copy_out_raw(&format!("COPY (SELECT {list} FROM {}) TO STDOUT", p.partition)).await?;
    let mut lines = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        gz.write_all(&chunk).map_err(io)?;
    }
    drop(stream);
    let file = gz.finish().map_err(io)?.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    if lines != rows {
        return Err(RetireError::ArchiveCount { partition: p.partition.clone(), written: lines, rows });
    }
    std::fs::rename(&partial, &path).map_err(io)?;
    let manifest = serde_json::json!({
        "table": format!("singapay.{}", p.table_name),
        "partition": p.partition,
        "from": p.from_at.to_rfc3339(),
        "to": p.to_at.to_rfc3339(),
        "rows": rows,
        "columns": columns,
        "format": "COPY text, gzip",
        "restore": format!(
            "SELECT singapay.ensure_partitions('{}', '{}'); then: gunzip -c {name}.copy.gz | psql \"$DATABASE_URL\" -c 'COPY singapay.{} ({list}) FROM STDIN'",
            p.from_at.date_naive(),
            (p.to_at - chrono::Duration::seconds(1)).date_naive(),
            p.table_name
        ),
    });
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_vec_pretty(&manifest).expect("json"))
        .map_err(io)?;
    Ok(path)
}

/// Rows of the partitions still holding history from before the upgrade to partitioned
/// tables (`singapay_history.<table>_legacy`), deleted row by row with the previous
/// version's rules until the partition can be retired whole: see [`super::prune`].
pub async fn legacy_tables(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT table_name FROM singapay.history_partitions WHERE partition::text LIKE '%\\_legacy' AND NOT detaching",
    )
    .fetch_all(pool)
    .await
}

/// When `serve` first makes sure the days ahead have partitions, after it starts.
pub const MAINTAIN_FIRST_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// How often `serve` makes sure the days ahead have partitions.
pub const MAINTAIN_EVERY: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Keeps partitions ready [`DAYS_AHEAD`] days ahead, every [`MAINTAIN_EVERY`], and reports
/// how many days are ready (`singapay_partitions_ready_days`). Runs until aborted; a
/// failure (Postgres away, a lock not granted in time) is logged and tried again next time
/// (intake creates a missing day itself if it ever meets one).
pub async fn maintain(pool: PgPool) {
    // Not at the very start: the migrations made the days ahead, and intake makes a missing
    // day itself; a replica that starts does not add DDL to its first seconds.
    tokio::time::sleep(MAINTAIN_FIRST_AFTER).await;
    loop {
        match ensure_ahead(&pool).await {
            Ok(created) if created > 0 => tracing::info!(created, "history partitions created ahead"),
            Ok(_) => {}
            Err(e) if super::is_schema_behind(&e) => {}
            Err(e) => tracing::warn!(error = %e, "creating history partitions ahead failed; tried again later"),
        }
        if let Ok(parts) = partitions(&pool).await {
            metrics::gauge!(crate::telemetry::metric::PARTITIONS_READY_DAYS).set(days_ready(&parts, Utc::now()));
        }
        tokio::time::sleep(MAINTAIN_EVERY).await;
    }
}
