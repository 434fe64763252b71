//! Singapay's webhook signature:
//! `X-Signature = hex(HMAC-SHA512(secret, "POST:{endpoint}:{token}:{sha256_hex(body)}:{ts}"))`.
//!
//! Pure: the caller supplies the clock, the credentials and the already-computed body forms.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256, Sha512};
use std::fmt;

type HmacSha512 = Hmac<Sha512>;

/// One signing credential: the label is what we store and log, the secret never leaves here.
#[derive(Clone)]
pub struct Credential {
    pub label: String,
    pub secret: SecretString,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential").field("label", &self.label).field("secret", &"[redacted]").finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// Singapay's PHP sample: decode, recursive ksort, re-encode.
    Php,
    /// The bytes as received.
    Raw,
    /// Keys sorted without PHP's array round trip (Go's encoder).
    Sorted,
}

impl BodyForm {
    pub const ALL: [BodyForm; 3] = [BodyForm::Php, BodyForm::Raw, BodyForm::Sorted];

    pub fn parse(s: &str) -> Option<BodyForm> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BodyForm::Php => "php",
            BodyForm::Raw => "raw",
            BodyForm::Sorted => "sorted",
        }
    }
}

/// The candidate bodies, in the order they are tried. The sorted form is built only if
/// the first two do not match.
#[derive(Debug, Clone, Copy)]
pub struct BodyForms<'a> {
    pub php: Option<&'a [u8]>,
    pub raw: &'a [u8],
    pub body: &'a super::Body,
}

impl<'a> BodyForms<'a> {
    pub fn candidates(&self) -> impl Iterator<Item = (BodyForm, &'a [u8])> {
        let body = self.body;
        [self.php.map(|b| (BodyForm::Php, b)), Some((BodyForm::Raw, self.raw))]
            .into_iter()
            .flatten()
            .chain(std::iter::once_with(move || body.sorted().map(|s| (BodyForm::Sorted, s.as_bytes()))).flatten())
    }
}

/// The signed material a request carries, as raw header bytes.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub signature: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub form: BodyForm,
    pub credential: String,
    /// X-Timestamp, seconds since the epoch.
    pub timestamp: u64,
    /// X-Timestamp exactly as sent (it is signed as text).
    pub timestamp_text: String,
    /// Whether the timestamp is within the tolerance of `now` (either direction).
    pub fresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    MissingHeaders,
    InvalidTimestamp,
    SignatureInvalid,
}

impl VerifyError {
    pub fn code(self) -> &'static str {
        match self {
            VerifyError::MissingHeaders => "missing_signature_headers",
            VerifyError::InvalidTimestamp => "invalid_timestamp",
            VerifyError::SignatureInvalid => "signature_invalid",
        }
    }
}

/// `Authorization` minus a leading `Bearer` and its whitespace (case-insensitive).
pub fn bearer_token(authorization: &[u8]) -> &[u8] {
    let trimmed = trim_ascii(authorization);
    // "Bearer" alone (HTTP strips the trailing space) carries no token.
    if trimmed.eq_ignore_ascii_case(b"bearer") {
        return &[];
    }
    if trimmed.len() > 6 && trimmed[..6].eq_ignore_ascii_case(b"bearer") && trimmed[6].is_ascii_whitespace() {
        trim_ascii(&trimmed[6..])
    } else {
        trimmed
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

fn non_empty(h: Option<&[u8]>) -> Option<&[u8]> {
    h.map(trim_ascii).filter(|v| !v.is_empty())
}

/// The checks that need no body, made before the body is read: `Ok(false)` when the
/// request carries none of the three headers (unsigned: only the dashboard's test ping may
/// be that), `Ok(true)` when all three are there and X-Timestamp is well-formed. The same
/// refusals, in the same order, as [`verify`].
pub fn check_headers(headers: SignedHeaders<'_>) -> Result<bool, VerifyError> {
    if headers.signature.is_none() && headers.timestamp.is_none() && headers.authorization.is_none() {
        return Ok(false);
    }
    present(headers).map(|_| true)
}

/// The three signed headers, present and well-formed.
struct Present<'a> {
    signature: &'a [u8],
    /// X-Timestamp as sent (it is signed as text).
    timestamp_text: &'a [u8],
    token: &'a [u8],
    timestamp: u64,
}

fn present(headers: SignedHeaders<'_>) -> Result<Present<'_>, VerifyError> {
    let (Some(sig_hex), Some(ts_raw), Some(auth)) =
        (non_empty(headers.signature), non_empty(headers.timestamp), non_empty(headers.authorization))
    else {
        return Err(VerifyError::MissingHeaders);
    };
    let token = bearer_token(auth);
    if token.is_empty() {
        return Err(VerifyError::MissingHeaders);
    }
    Ok(Present { signature: sig_hex, timestamp_text: ts_raw, token, timestamp: parse_timestamp(ts_raw)? })
}

/// Parses X-Timestamp: ASCII digits only, at most 19 of them.
pub fn parse_timestamp(raw: &[u8]) -> Result<u64, VerifyError> {
    if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(VerifyError::InvalidTimestamp);
    }
    std::str::from_utf8(raw).ok().and_then(|s| s.parse().ok()).ok_or(VerifyError::InvalidTimestamp)
}

pub fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The exact string Singapay signs.
pub fn string_to_sign(endpoint: &[u8], token: &[u8], body: &[u8], timestamp: &[u8]) -> Vec<u8> {
    string_to_sign_hashed(endpoint, token, &sha256_hex(body), timestamp)
}

/// The same, from the body's SHA-256 in hex.
pub fn string_to_sign_hashed(endpoint: &[u8], token: &[u8], body_sha256_hex: &str, timestamp: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(endpoint.len() + token.len() + timestamp.len() + body_sha256_hex.len() + 10);
    s.extend_from_slice(b"POST:");
    s.extend_from_slice(endpoint);
    s.push(b':');
    s.extend_from_slice(token);
    s.push(b':');
    s.extend_from_slice(body_sha256_hex.as_bytes());
    s.push(b':');
    s.extend_from_slice(timestamp);
    s
}

fn mac(secret: &SecretString, message: &[u8]) -> HmacSha512 {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut m = HmacSha512::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC accepts any key length");
    m.update(message);
    m
}

/// Whether `received` (raw bytes) is the signature of `message` under `secret`, compared in
/// constant time.
pub fn matches(secret: &SecretString, message: &[u8], received: &[u8]) -> bool {
    mac(secret, message).verify_slice(received).is_ok()
}

/// The lowercase hex signature of a string to sign.
pub fn sign_message(secret: &SecretString, message: &[u8]) -> String {
    hex::encode(mac(secret, message).finalize().into_bytes())
}

/// Lowercase hex signature, as Singapay sends it.
pub fn sign(secret: &SecretString, endpoint: &[u8], token: &[u8], body: &[u8], timestamp: &[u8]) -> String {
    sign_message(secret, &string_to_sign(endpoint, token, body, timestamp))
}

/// Checks a request against every credential and body form. Headers are checked first,
/// then authenticity, and freshness is reported separately so the caller can treat a
/// stale retry of known content as harmless.
pub fn verify(
    headers: SignedHeaders<'_>,
    endpoint: &[u8],
    forms: BodyForms<'_>,
    credentials: &[Credential],
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<Verified, VerifyError> {
    let Present { signature: sig_hex, timestamp_text: ts_raw, token, timestamp } = present(headers)?;
    // Hex decoding accepts either case, so the comparison below is case-insensitive; a
    // value that is not 64 bytes of hex can match nothing.
    let Ok(received) = hex::decode(sig_hex) else {
        return Err(VerifyError::SignatureInvalid);
    };
    if received.len() != 64 {
        return Err(VerifyError::SignatureInvalid);
    }
    for (form, body) in forms.candidates() {
        let message = string_to_sign(endpoint, token, body, ts_raw);
        for cred in credentials {
            // verify_slice compares in constant time.
            if matches(&cred.secret, &message, &received) {
                let skew = (i128::from(now_secs) - i128::from(timestamp)).unsigned_abs();
                return Ok(Verified {
                    form,
                    credential: cred.label.clone(),
                    timestamp,
                    timestamp_text: String::from_utf8_lossy(ts_raw).into_owned(),
                    fresh: skew <= u128::from(tolerance_secs),
                });
            }
        }
    }
    Err(VerifyError::SignatureInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefix_is_removed_case_insensitively() {
        assert_eq!(bearer_token(b"Bearer abc"), b"abc");
        assert_eq!(bearer_token(b"bearer   abc"), b"abc");
        assert_eq!(bearer_token(b"BEARER\tabc"), b"abc");
        assert_eq!(bearer_token(b"abc"), b"abc");
        assert_eq!(bearer_token(b"Bearerabc"), b"Bearerabc");
        assert_eq!(bearer_token(b"Bearer "), b"");
    }

    #[test]
    fn timestamps_must_be_digits() {
        assert_eq!(parse_timestamp(b"1774320000"), Ok(1_774_320_000));
        for bad in [&b"-1"[..], b"17743e0", b" 1", b"", b"99999999999999999999", b"+12"] {
            assert_eq!(parse_timestamp(bad), Err(VerifyError::InvalidTimestamp));
        }
    }

    #[test]
    fn facts_sheet_worked_example() {
        // FACTS §1.8, computed by PHP and Node independently of this code.
        let secret = SecretString::from("demo-client-secret-123");
        let body = br#"{"data":{"a":1,"b":2,"meta":[]},"event":"x"}"#;
        assert_eq!(sha256_hex(body), "e7d53bb63e37327d1f4840d60818a0c4690b8e54d409dc0e1f4331bc79dfa48e");
        assert_eq!(
            sign(&secret, b"/hooks/singapay?src=sp", b"q8Zr2LmX0vT5", body, b"1774320000"),
            "8877f18813a4347d6fb9ce4c710707394b32b2d2b6ad0097135a16e54ec8ea362d0a4f18126d5738178e7b854ca537cd67a94c9382bd41815e27604f46f5acff"
        );
    }
}
