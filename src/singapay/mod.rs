//! The pure domain: no I/O, no `axum`, no `sqlx`. Verification and classification are
//! functions of (bytes, headers, clock, configuration).

pub mod canonical;
pub mod inquiry;
pub mod json;
pub mod signature;
pub mod status;
pub mod time;
pub mod webhook;

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use json::{ParseError, Parsed};
use signature::BodyForms;

/// A received body with every form a signer may have hashed.
#[derive(Debug, Clone)]
pub struct Body {
    pub parsed: Result<Parsed, ParseError>,
    /// PHP's canonical form, when PHP could form one.
    pub php: Option<String>,
    /// Go's sorted-keys form, built only when a signature check gets that far.
    sorted: OnceLock<Option<String>>,
}

impl Body {
    pub fn analyse(raw: &[u8]) -> Body {
        let parsed = json::parse(raw);
        let php = parsed.as_ref().ok().and_then(canonical::php_form);
        Body { parsed, php, sorted: OnceLock::new() }
    }

    /// Go's sorted-keys form, when the body is JSON.
    pub fn sorted(&self) -> Option<&str> {
        self.sorted.get_or_init(|| self.parsed.as_ref().ok().map(canonical::sorted_form)).as_deref()
    }

    pub fn forms<'a>(&'a self, raw: &'a [u8]) -> BodyForms<'a> {
        BodyForms { php: self.php.as_deref().map(str::as_bytes), raw, body: self }
    }

    /// The dedupe key: SHA-256 of PHP's form when there is one (so a re-serialised retry of
    /// the same content is still a duplicate), else of the raw bytes.
    pub fn content_sha256(&self, raw: &[u8]) -> [u8; 32] {
        let bytes = self.php.as_deref().map_or(raw, str::as_bytes);
        Sha256::digest(bytes).into()
    }

    /// Why PHP's `json_decode` refuses this body — not JSON, not UTF-8, nested deeper than
    /// PHP goes, or a lone UTF-16 surrogate escape — or `None` when PHP decodes it (its
    /// `json_encode` may still fail, on a number that overflowed to INF).
    pub fn php_refusal(&self) -> Option<String> {
        match &self.parsed {
            Err(e) => Some(e.to_string()),
            Ok(p) if !p.php_decodable => Some("a lone UTF-16 surrogate escape, which PHP's json_decode refuses".into()),
            Ok(_) => None,
        }
    }

    /// The body as a JSON object, if it is one.
    pub fn object(&self) -> Option<&json::Value> {
        self.parsed.as_ref().ok().map(|p| &p.value).filter(|v| v.is_object())
    }
}
