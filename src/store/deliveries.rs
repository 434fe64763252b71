//! What intake stores: one row per distinct verified delivery (retries are counted, not
//! stored twice), and authentic deliveries refused for their timestamp alone.

use chrono::{DateTime, Utc};

use super::transactions::StateChange;
use crate::singapay::signature::BodyForm;
use crate::singapay::webhook::{Classification, Subject};

/// What was signed and how it arrived, built once per request and shared by a stored
/// [`Delivery`] and a [`Rejection`].
#[derive(Debug, Clone)]
pub struct Signed {
    /// The dedupe key: SHA-256 of PHP's canonical form when there is one, else of the body.
    pub content_sha256: [u8; 32],
    pub credential: String,
    pub signature_form: BodyForm,
    /// X-Timestamp as a time, when it is representable.
    pub signed_at: Option<DateTime<Utc>>,
    /// X-Timestamp exactly as sent (it is signed as text).
    pub x_timestamp: String,
    pub request_path: String,
    pub request_id: Option<String>,
    pub partner_id: Option<String>,
    /// What was signed besides the body, so `verify` can explain a stored delivery later.
    pub x_signature: String,
    pub access_token: String,
    pub body: Vec<u8>,
}

/// A verified, fresh delivery and what it says.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub signed: Signed,
    pub classification: Classification,
    /// JSON text for the `payload jsonb` column.
    pub payload: Option<String>,
}

/// A correctly signed delivery refused for its timestamp, kept for `replay`.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub signed: Signed,
    pub reason: RejectionReason,
    /// The body's own time (`Classification::event_at`): which days may hold an earlier copy.
    pub event_at: Option<DateTime<Utc>>,
}

/// `rejected_deliveries.reason`: why a correctly signed delivery was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionReason {
    /// Its `X-Timestamp` is outside `TIMESTAMP_TOLERANCE_SECS`.
    StaleTimestamp,
}

impl RejectionReason {
    pub const ALL: [RejectionReason; 1] = [RejectionReason::StaleTimestamp];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectionReason::StaleTimestamp => "stale_timestamp",
        }
    }
}

/// `deliveries.outcome`: what a delivery did, decided before its row is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Stale,
    Conflict,
    /// An expiration sweep: one change per item (see `transaction_events`).
    Batch,
    Unrecognised,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Unchanged,
        Outcome::Stale,
        Outcome::Conflict,
        Outcome::Batch,
        Outcome::Unrecognised,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Conflict => "conflict",
            Outcome::Batch => "batch",
            Outcome::Unrecognised => "unrecognised",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcome a classification has before any status is applied.
    pub fn of(c: &Classification) -> Outcome {
        match &c.subject {
            Subject::Unrecognised(_) => Outcome::Unrecognised,
            Subject::Batch(_) => Outcome::Batch,
            Subject::Single(_) => Outcome::Unchanged,
        }
    }
}

/// What storing (or re-applying) a delivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub delivery_id: i64,
    pub duplicate: bool,
    pub outcome: Outcome,
    /// What each reported status did (empty for a duplicate).
    pub changes: Vec<StateChange>,
}
