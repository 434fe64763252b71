//! `verify`'s engine: every intermediate value of a signature check, and — when nothing
//! matches — which part of the request differs from what was signed.
//!
//! HMAC cannot say what is wrong, so the explainer searches: first the known ways signers
//! and proxies differ (query dropped, trailing slash, `Bearer ` left in the token,
//! millisecond timestamps, other JSON encoders), then every single-character change of the
//! timestamp, path, token, each configured secret and (for bodies up to 2 KiB) the body.
//! Secrets are never printed: only labels, and for a near-miss the position that differs.

use std::fmt::Write as _;

use secrecy::{ExposeSecret, SecretString};

use crate::singapay::canonical::{php_form_with, Style};
use crate::singapay::signature::{
    self, bearer_token, parse_timestamp, sha256_hex, string_to_sign, string_to_sign_hashed, BodyForm, Credential,
};
use crate::singapay::Body;

/// A request as received.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Path and query as Singapay signed them (after any SIGNED_PATH_PREFIX mapping).
    pub endpoint: &'a str,
    pub signature: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    /// The whole Authorization header value.
    pub authorization: Option<&'a [u8]>,
    pub partner_id: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Match { form: BodyForm, credential: String, fresh: bool },
    Mismatch { component: &'static str, detail: String },
}

#[derive(Debug, Clone)]
pub struct Report {
    pub text: String,
    pub verdict: Verdict,
}

const MAX_BODY_SEARCH: usize = 2048;
const TIMESTAMP_WINDOW: i64 = 900;

fn printable() -> impl Iterator<Item = u8> + Clone {
    0x21u8..=0x7e
}

fn short(sig: &str) -> String {
    if sig.len() > 24 {
        format!("{}…{}", &sig[..16], &sig[sig.len() - 8..])
    } else {
        sig.to_owned()
    }
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut p: String = text.chars().take(160).collect();
    if text.chars().count() > 160 {
        p.push('…');
    }
    // Control characters (newlines of a pretty body) are shown escaped; the rest as is.
    p.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The candidate bodies: (label, form, bytes).
struct Candidates {
    forms: Vec<(BodyForm, Vec<u8>)>,
}

impl Candidates {
    fn hashes(&self) -> Vec<(BodyForm, String)> {
        self.forms.iter().map(|(f, b)| (*f, sha256_hex(b))).collect()
    }
}

/// Does any (form, credential) produce `received` for these parts?
fn find(
    received: &[u8],
    endpoint: &[u8],
    token: &[u8],
    hashes: &[(BodyForm, String)],
    ts: &[u8],
    secrets: &[(String, SecretString)],
) -> Option<(BodyForm, String)> {
    for (form, hash) in hashes {
        let msg = string_to_sign_hashed(endpoint, token, hash, ts);
        for (label, secret) in secrets {
            if signature::matches(secret, &msg, received) {
                return Some((*form, label.clone()));
            }
        }
    }
    None
}

/// Every string that differs from `s` in exactly one printable-ASCII position.
fn one_edit(s: &[u8]) -> impl Iterator<Item = (usize, u8, Vec<u8>)> + '_ {
    (0..s.len()).flat_map(move |i| {
        printable().filter(move |c| *c != s[i]).map(move |c| {
            let mut v = s.to_vec();
            v[i] = c;
            (i, c, v)
        })
    })
}

fn minify(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let (mut in_str, mut esc) = (false, false);
    for &b in raw {
        if in_str {
            out.push(b);
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
        } else if b == b'"' {
            in_str = true;
            out.push(b);
        } else if !b.is_ascii_whitespace() {
            out.push(b);
        }
    }
    out
}

pub fn explain(req: &Request<'_>, credentials: &[Credential], now: i64, tolerance: u64) -> Report {
    let mut t = String::new();
    let secrets: Vec<(String, SecretString)> =
        credentials.iter().map(|c| (c.label.clone(), c.secret.clone())).collect();
    let labels: Vec<&str> = credentials.iter().map(|c| c.label.as_str()).collect();
    let _ = writeln!(t, "request");
    let _ = writeln!(t, "  endpoint (as signed) : {}", req.endpoint);
    let _ = writeln!(t, "  X-PARTNER-ID         : {}", req.partner_id.unwrap_or("(none)"));
    let _ = writeln!(t, "  credentials tried    : {}", labels.join(", "));

    let missing: Vec<&str> =
        [("X-Signature", req.signature), ("X-Timestamp", req.timestamp), ("Authorization", req.authorization)]
            .iter()
            .filter(|(_, v)| v.is_none_or(|v| v.trim_ascii().is_empty()))
            .map(|(n, _)| *n)
            .collect();
    if !missing.is_empty() {
        let detail = format!("missing {}", missing.join(", "));
        let _ = writeln!(t, "\nresult: mismatch component=headers ({detail})");
        return Report { text: t, verdict: Verdict::Mismatch { component: "headers", detail } };
    }
    let (sig_raw, ts_raw, auth) =
        (req.signature.unwrap_or_default(), req.timestamp.unwrap_or_default(), req.authorization.unwrap_or_default());
    let ts_raw = ts_raw.trim_ascii();
    let token = bearer_token(auth);
    let _ = writeln!(t, "  token                : {} ({} characters)", String::from_utf8_lossy(token), token.len());
    let ts = match parse_timestamp(ts_raw) {
        Ok(ts) => ts,
        Err(_) => {
            let detail = format!("X-Timestamp {:?} is not Unix seconds in digits", String::from_utf8_lossy(ts_raw));
            let _ = writeln!(t, "\nresult: mismatch component=timestamp ({detail})");
            return Report { text: t, verdict: Verdict::Mismatch { component: "timestamp", detail } };
        }
    };
    let skew = now - i64::try_from(ts).unwrap_or(i64::MAX);
    let fresh = skew.unsigned_abs() <= tolerance;
    let _ = writeln!(
        t,
        "  X-Timestamp          : {} ({}; {} s {} now, {} the {tolerance} s window)",
        String::from_utf8_lossy(ts_raw),
        chrono::DateTime::from_timestamp(i64::try_from(ts).unwrap_or(0), 0).map(|d| d.to_rfc3339()).unwrap_or_default(),
        skew.unsigned_abs(),
        if skew >= 0 { "before" } else { "after" },
        if fresh { "within" } else { "OUTSIDE" }
    );
    let sig_text = String::from_utf8_lossy(sig_raw.trim_ascii()).to_ascii_lowercase();
    let _ = writeln!(t, "  X-Signature          : {}", short(&sig_text));
    let received = match hex::decode(sig_text.as_bytes()) {
        Ok(b) if b.len() == 64 => b,
        _ => {
            let detail = format!("X-Signature is not 128 hex characters ({} given)", sig_text.len());
            let _ = writeln!(t, "\nresult: mismatch component=signature ({detail})");
            return Report { text: t, verdict: Verdict::Mismatch { component: "signature", detail } };
        }
    };

    // The three forms the receiver accepts.
    let body = Body::analyse(req.body);
    let mut cands = Candidates { forms: Vec::new() };
    let _ = writeln!(t, "\nbody forms ({} bytes received)", req.body.len());
    match &body.php {
        Some(p) => cands.forms.push((BodyForm::Php, p.as_bytes().to_vec())),
        None => {
            let why = body.php_refusal().unwrap_or_else(|| "PHP's json_encode would fail on it".to_owned());
            let _ = writeln!(t, "  php    : none ({why})");
        }
    }
    cands.forms.push((BodyForm::Raw, req.body.to_vec()));
    if let Some(s) = body.sorted() {
        cands.forms.push((BodyForm::Sorted, s.as_bytes().to_vec()));
    }
    let hashes = cands.hashes();
    for ((form, bytes), (_, hash)) in cands.forms.iter().zip(&hashes) {
        let _ = writeln!(t, "  {:<6} : sha256 {hash}  {}", form.as_str(), preview(bytes));
    }

    let _ = writeln!(t, "\nstrings to sign and expected signatures");
    let mut matched: Option<(BodyForm, String)> = None;
    for ((form, bytes), (_, hash)) in cands.forms.iter().zip(&hashes) {
        let sts = string_to_sign(req.endpoint.as_bytes(), token, bytes, ts_raw);
        let _ = writeln!(t, "  {:<6} : {}", form.as_str(), String::from_utf8_lossy(&sts));
        debug_assert!(String::from_utf8_lossy(&sts).contains(hash.as_str()));
        for (label, secret) in &secrets {
            let expected = signature::sign(secret, req.endpoint.as_bytes(), token, bytes, ts_raw);
            let ok = expected == sig_text;
            let _ = writeln!(t, "           {label:<16} {}  {}", short(&expected), if ok { "MATCH" } else { "-" });
            if ok && matched.is_none() {
                matched = Some((*form, label.clone()));
            }
        }
    }

    if let Some((form, credential)) = matched {
        let _ = writeln!(
            t,
            "\nresult: match form={} credential={}{}",
            form.as_str(),
            credential,
            if fresh {
                ""
            } else {
                " (timestamp outside the window: live traffic gets 401 stale_timestamp unless the content is already stored)"
            }
        );
        return Report { text: t, verdict: Verdict::Match { form, credential, fresh } };
    }

    let (component, detail) = diagnose(req, token, ts_raw, &received, &cands, &hashes, &secrets, &body);
    let _ = writeln!(t, "\nresult: mismatch component={component} ({detail})");
    Report { text: t, verdict: Verdict::Mismatch { component, detail } }
}

#[allow(clippy::too_many_arguments)]
fn diagnose(
    req: &Request<'_>,
    token: &[u8],
    ts_raw: &[u8],
    received: &[u8],
    cands: &Candidates,
    hashes: &[(BodyForm, String)],
    secrets: &[(String, SecretString)],
    body: &Body,
) -> (&'static str, String) {
    let endpoint = req.endpoint.as_bytes();
    let found = |e: &[u8], tok: &[u8], h: &[(BodyForm, String)], ts: &[u8], s: &[(String, SecretString)]| {
        find(received, e, tok, h, ts, s)
    };

    // Timestamp: milliseconds, a nearby second, or one digit changed.
    let ts_text = String::from_utf8_lossy(ts_raw).into_owned();
    let mut ts_variants: Vec<String> = Vec::new();
    if let Ok(n) = ts_text.parse::<i64>() {
        ts_variants.push((n * 1000).to_string());
        ts_variants.push((n / 1000).to_string());
        ts_variants.extend((1..=TIMESTAMP_WINDOW).flat_map(|d| [(n - d).to_string(), (n + d).to_string()]));
    }
    ts_variants.extend(
        one_edit(ts_raw)
            .filter(|(_, c, _)| c.is_ascii_digit())
            .map(|(_, _, v)| String::from_utf8_lossy(&v).into_owned()),
    );
    for v in &ts_variants {
        if found(endpoint, token, hashes, v.as_bytes(), secrets).is_some() {
            return (
                "timestamp",
                format!("the signature was made with X-Timestamp {v}, but the request says {ts_text}"),
            );
        }
    }

    // Path: a dropped or added query, a trailing slash, one character.
    let (path, query) = req.endpoint.split_once('?').map_or((req.endpoint, None), |(p, q)| (p, Some(q)));
    let mut path_variants: Vec<String> = vec![path.trim_end_matches('/').to_owned(), format!("{path}/")];
    if let Some(q) = query {
        path_variants.push(path.to_owned());
        path_variants.push(format!("{}/?{q}", path.trim_end_matches('/')));
        path_variants.push(format!("{}?{q}", path.trim_end_matches('/')));
    }
    path_variants.retain(|p| p != req.endpoint);
    path_variants.extend(one_edit(endpoint).map(|(_, _, v)| String::from_utf8_lossy(&v).into_owned()));
    for v in &path_variants {
        if found(v.as_bytes(), token, hashes, ts_raw, secrets).is_some() {
            return (
                "path",
                format!(
                    "the signature was made for endpoint {v}, but the request arrived at {} (register the URL exactly as served, or set SIGNED_PATH_PREFIX behind a rewriting proxy)",
                    req.endpoint
                ),
            );
        }
    }

    // Token: the whole Authorization value, or one character.
    let auth = req.authorization.unwrap_or_default().trim_ascii();
    let mut token_variants: Vec<Vec<u8>> = vec![auth.to_vec()];
    token_variants.extend(one_edit(token).map(|(_, _, v)| v));
    for v in &token_variants {
        if v.as_slice() != token && found(endpoint, v, hashes, ts_raw, secrets).is_some() {
            let what = if v.as_slice() == auth {
                "the whole Authorization value (with its \"Bearer \" prefix)".to_owned()
            } else {
                format!("token {:?}", String::from_utf8_lossy(v))
            };
            return (
                "token",
                format!(
                    "the signature was made with {what}, but the request carries token {:?}",
                    String::from_utf8_lossy(token)
                ),
            );
        }
    }

    // A configured secret one character off (a copy-paste slip); positions only.
    for (label, secret) in secrets {
        let bytes = secret.expose_secret().as_bytes();
        for (i, _, v) in one_edit(bytes) {
            let candidate = [(label.clone(), SecretString::from(String::from_utf8_lossy(&v).into_owned()))];
            if found(endpoint, token, hashes, ts_raw, &candidate).is_some() {
                return (
                    "secret",
                    format!(
                        "credential {label:?} differs from the secret that signed in one character, at position {}",
                        i + 1
                    ),
                );
            }
        }
    }

    // Other encoders of the same JSON, then one changed byte in the body.
    if let Ok(parsed) = &body.parsed {
        let styles = [
            ("PHP json_encode without JSON_UNESCAPED_SLASHES (\\/)", Style { escape_slashes: true, ..Style::PHP }),
            ("PHP json_encode without JSON_UNESCAPED_UNICODE (\\uXXXX)", Style { escape_unicode: true, ..Style::PHP }),
            (
                "a PHP port that keeps arrays of 11+ items as arrays (the JS SDK)",
                Style { big_arrays_as_objects: false, ..Style::PHP },
            ),
        ];
        for (what, style) in styles {
            if let Some(form) = php_form_with(parsed, style) {
                let h = [(BodyForm::Php, sha256_hex(form.as_bytes()))];
                if found(endpoint, token, &h, ts_raw, secrets).is_some() {
                    return ("body", format!("the body was signed in the form of {what}; Singapay's PHP sample hashes the canonical php form"));
                }
            }
        }
    }
    let raw = req.body;
    let mut raw_variants = vec![("the raw body without insignificant whitespace", minify(raw))];
    if raw.last() == Some(&b'\n') {
        raw_variants.push(("the raw body without its trailing newline", raw[..raw.len() - 1].to_vec()));
    } else {
        raw_variants.push(("the raw body with a trailing newline", [raw, b"\n"].concat()));
    }
    for (what, v) in raw_variants {
        let h = [(BodyForm::Raw, sha256_hex(&v))];
        if v != raw && found(endpoint, token, &h, ts_raw, secrets).is_some() {
            return ("body", format!("the signature covers {what}"));
        }
    }
    for (form, bytes) in &cands.forms {
        if bytes.len() > MAX_BODY_SEARCH || *form == BodyForm::Sorted {
            continue;
        }
        for (i, c, v) in one_edit(bytes) {
            let h = [(*form, sha256_hex(&v))];
            if found(endpoint, token, &h, ts_raw, secrets).is_some() {
                return (
                    "body",
                    format!(
                        "the signed body differs from this one at byte {} of its {} form ({:?} signed, {:?} received): it was changed after signing",
                        i + 1,
                        form.as_str(),
                        char::from(c),
                        char::from(bytes[i])
                    ),
                );
            }
        }
    }
    let signer = req.partner_id.map_or("X-PARTNER-ID not sent".to_owned(), |p| format!("X-PARTNER-ID {p}"));
    // PHP cannot put the body in its form at all: no PHP signer can have signed that form,
    // and the receiver refuses the body before its signature (400 invalid_body).
    if let Some(why) = body.php_refusal() {
        return (
            "body",
            format!(
                "PHP's pipeline cannot decode this body ({why}), so it has no php form and only a signature over its exact bytes could match; Singapay signs the php form"
            ),
        );
    }
    // PHP rewrites this body (numbers, {}, lists of 11+ items, escapes): a signer whose
    // canonical form differs from PHP's there is as likely as a missing secret.
    if let (Some(php), Some(sorted)) = (body.php.as_deref(), body.sorted()) {
        if php != sorted {
            return (
                "secret_or_body_form",
                format!(
                    "no configured secret signs this request in any form. Either the Client Secret of the credential that signed ({signer}) is missing from SINGAPAY_WEBHOOK_SECRETS, or the signer's canonical form differs from PHP's where PHP rewrites this body (numbers, {{}}, lists of 11+ items, escapes); the php form computed here is {}",
                    preview(php.as_bytes())
                ),
            );
        }
    }
    (
        "secret",
        format!(
            "no configured secret signs this request in any form; most likely the Client Secret of the credential that signed ({signer}) is missing from SINGAPAY_WEBHOOK_SECRETS, otherwise the body was altered after signing"
        ),
    )
}
