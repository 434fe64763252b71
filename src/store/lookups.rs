//! Reads for the operator commands and `/metrics`: a stored request as it arrived, a
//! rejected delivery to replay, the queue's depth, a database to create.

use sqlx::{PgConnection, PgPool};

use crate::singapay::signature::BodyForm;

/// Where a request was kept: as a delivery, or as a rejection (refused for its timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    Delivery,
    Rejection,
}

impl Kept {
    pub fn table(self) -> &'static str {
        match self {
            Kept::Delivery => "deliveries",
            Kept::Rejection => "rejected_deliveries",
        }
    }
}

/// A kept request's signed parts, as they arrived.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeptRequest {
    pub request_path: String,
    pub x_timestamp: Option<String>,
    pub x_signature: String,
    /// '' once `prune` dropped it (after BEARER_RETENTION_HOURS); its hash stays.
    pub access_token: String,
    pub access_token_sha256: Option<Vec<u8>>,
    pub partner_id: Option<String>,
    pub body: Vec<u8>,
}

pub async fn kept_request(pool: &PgPool, kept: Kept, id: i64) -> Result<Option<KeptRequest>, sqlx::Error> {
    let sql = match kept {
        Kept::Delivery => {
            "SELECT request_path, x_timestamp, x_signature, access_token, access_token_sha256, partner_id, body
               FROM singapay.deliveries WHERE id = $1"
        }
        Kept::Rejection => {
            "SELECT request_path, x_timestamp, x_signature, access_token, access_token_sha256, partner_id, body
               FROM singapay.rejected_deliveries WHERE id = $1"
        }
    };
    sqlx::query_as(sql).bind(id).fetch_optional(pool).await
}

/// A stored delivery's exact body.
pub async fn delivery_body(conn: &mut PgConnection, id: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    sqlx::query_scalar("SELECT body FROM singapay.deliveries WHERE id = $1").bind(id).fetch_optional(conn).await
}

/// A rejected delivery, locked for this transaction (one replay at a time).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Rejected {
    pub body: Vec<u8>,
    pub credential: String,
    #[sqlx(try_from = "String")]
    pub signature_form: FormText,
    pub signed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub x_timestamp: String,
    pub request_path: String,
    pub request_id: Option<String>,
    pub x_signature: String,
    pub access_token: String,
    pub partner_id: Option<String>,
}

/// `signature_form` as stored, read into the enum its CHECK constraint allows.
#[derive(Debug, Clone, Copy)]
pub struct FormText(pub BodyForm);

impl TryFrom<String> for FormText {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        BodyForm::parse(&s).map(FormText).ok_or_else(|| format!("signature_form {s:?} is outside its CHECK"))
    }
}

pub async fn lock_rejection(conn: &mut PgConnection, id: i64) -> Result<Option<Rejected>, sqlx::Error> {
    sqlx::query_as(
        "SELECT body, credential, signature_form, signed_at, x_timestamp, request_path, request_id,
                x_signature, access_token, partner_id
           FROM singapay.rejected_deliveries WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Records which delivery a replayed rejection became.
pub async fn mark_replayed(conn: &mut PgConnection, rejection: i64, delivery: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE singapay.rejected_deliveries SET replayed_delivery_id = $2 WHERE id = $1")
        .bind(rejection)
        .bind(delivery)
        .execute(conn)
        .await
        .map(drop)
}

/// The queue's gauges, at a cost that does not grow with the history kept: every count reads
/// `event_queue` (the unfinished events only, as many as the backlog) or the dead events
/// through their partial index; the finished events kept for `RETENTION_DAYS` are never
/// read. `done` is therefore an estimate: the log's live rows as Postgres's statistics
/// count them (`pg_stat_get_live_tuples` of each day's partition, kept up to date by every insert and delete, and
/// reset by `ANALYZE`), less the unfinished and dead events.
pub const QUEUE_GAUGES: &str = "
WITH unfinished AS (
    SELECT count(*) FILTER (WHERE q.state = 'available')                         AS available,
           count(*) FILTER (WHERE q.state = 'running')                           AS running,
           count(*) FILTER (WHERE q.state = 'available' AND q.available_at <= now()) AS due,
           coalesce(extract(epoch FROM now() - min(q.available_at)
                    FILTER (WHERE q.state = 'available' AND q.available_at <= now())), 0)::float8
                                                                                  AS oldest_due_secs
      FROM singapay.event_queue q
), dead AS (
    SELECT count(*) AS dead FROM singapay.event_log l WHERE l.state = 'dead'
)
SELECT u.available, u.running, u.due, u.oldest_due_secs, d.dead,
       greatest(coalesce((SELECT sum(pg_stat_get_live_tuples(i.inhrelid)) FROM pg_inherits i
                           WHERE i.inhparent = 'singapay.event_log'::regclass), 0)::int8
                - u.available - u.running - d.dead, 0) AS done
  FROM unfinished u, dead d";

/// The queue's gauges ([`QUEUE_GAUGES`]).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueGauges {
    pub available: i64,
    pub running: i64,
    pub due: i64,
    pub oldest_due_secs: f64,
    pub dead: i64,
    pub done: i64,
}

pub async fn queue_gauges(pool: &PgPool) -> Result<QueueGauges, sqlx::Error> {
    sqlx::query_as(QUEUE_GAUGES).fetch_one(pool).await
}

/// Creates `database` on the server `conn` is connected to, unless it exists.
pub async fn create_database_if_missing(conn: &mut PgConnection, database: &str) -> Result<(), sqlx::Error> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(database)
        .fetch_one(&mut *conn)
        .await?;
    if exists {
        return Ok(());
    }
    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
    match sqlx::query(&format!("CREATE DATABASE {quoted}")).execute(conn).await {
        Ok(_) => Ok(()),
        // Another process created it between our check and ours.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        Err(e) => Err(e),
    }
}

/// What `dev` suggests trying in psql.
pub const RECENT_DELIVERIES: &str =
    "SELECT id, webhook_type, transaction_key, status, outcome FROM singapay.deliveries ORDER BY id DESC LIMIT 10";
