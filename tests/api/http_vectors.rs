//! Every vector in `vectors.json` (canonical forms produced by PHP 8.2 itself).

use singapay_webhooks::singapay::signature::{self, BodyForm, SignedHeaders, VerifyError};
use singapay_webhooks::singapay::Body;

use crate::helpers::{credential, load_vectors};

#[test]
fn canonicaliser_reproduces_php_byte_for_byte() {
    let vectors = load_vectors();
    assert_eq!(vectors.len(), 311);
    let mut failures = Vec::new();
    for v in &vectors {
        let body = Body::analyse(v.raw_body.as_bytes());
        if body.php != v.canonical_body {
            failures.push(format!("{}: ours {:?}\n   php  {:?}", v.name, body.php, v.canonical_body));
        }
    }
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), vectors.len(), failures.join("\n"));
}

/// The `sorted` form against an oracle outside the crate: Python's JSON parser keeping
/// number literals as written (`tools/mksorted.py` → `tests/fixtures/sorted_vectors.json`).
#[test]
fn the_sorted_form_matches_an_independent_oracle() {
    #[derive(serde::Deserialize)]
    struct File {
        vectors: Vec<SortedVector>,
    }
    #[derive(serde::Deserialize)]
    struct SortedVector {
        body: String,
        sorted: String,
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sorted_vectors.json");
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(file.vectors.len() > 200);
    let mut wrong = Vec::new();
    for v in &file.vectors {
        let ours = Body::analyse(v.body.as_bytes()).sorted().map(str::to_owned);
        if ours.as_deref() != Some(v.sorted.as_str()) {
            wrong.push(format!("body {:?}\n  expected {:?}\n  got      {:?}", v.body, v.sorted, ours));
        }
    }
    assert!(wrong.is_empty(), "{} of {} differ:\n{}", wrong.len(), file.vectors.len(), wrong.join("\n"));
}

#[test]
fn every_vector_verifies_in_the_form_it_was_signed() {
    for v in load_vectors() {
        let body = Body::analyse(v.raw_body.as_bytes());
        let creds = [credential("wrong", "not-the-secret"), credential("vec", &v.secret)];
        let auth = format!("Bearer {}", v.access_token);
        let now: i64 = v.timestamp.parse().unwrap();
        let check = |sig: &str| {
            signature::verify(
                SignedHeaders {
                    signature: Some(sig.as_bytes()),
                    timestamp: Some(v.timestamp.as_bytes()),
                    authorization: Some(auth.as_bytes()),
                },
                v.endpoint.as_bytes(),
                body.forms(v.raw_body.as_bytes()),
                &creds,
                now,
                300,
            )
        };
        if let Some(sig) = &v.canonical_signature {
            let ok = check(sig).unwrap_or_else(|e| panic!("{}: canonical signature refused: {e:?}", v.name));
            assert_eq!(ok.form, BodyForm::Php, "{}", v.name);
            assert_eq!(ok.credential, "vec");
            assert!(ok.fresh);
            // Upper-case hex is the same signature.
            assert!(check(&sig.to_uppercase()).is_ok(), "{}", v.name);
        }
        let ok = check(&v.raw_signature).unwrap_or_else(|e| panic!("{}: raw signature refused: {e:?}", v.name));
        // When PHP's form equals the raw bytes, the php form matches first.
        let want = if v.canonical_body.as_deref() == Some(v.raw_body.as_str()) { BodyForm::Php } else { BodyForm::Raw };
        assert_eq!(ok.form, want, "{}", v.name);
    }
}

use std::collections::HashSet;

use crate::helpers::{sign_raw, TestApp, Vector};

/// The objects among the "undecodable" vectors that are still stored: valid JSON objects
/// that PHP cannot canonicalise (a float overflowing to INF). A lone surrogate escape
/// (`{"s":"\ud800"}`) is refused like invalid UTF-8, as PHP's json_decode refuses it.
const OBJECTS_WITHOUT_PHP_FORM: [&str; 1] = [r#"{"a":1e400}"#];

fn is_json_object(v: &Vector) -> bool {
    // Nesting is PHP's to judge (serde_json stops at 128 levels): a body PHP can decode is
    // accepted, one deeper than it goes is not.
    if v.name.starts_with("depth/") {
        return v.canonical_body.is_some();
    }
    if v.raw_body.contains("\\ud800") {
        return false;
    }
    OBJECTS_WITHOUT_PHP_FORM.contains(&v.raw_body.as_str())
        || serde_json::from_str::<serde_json::Value>(&v.raw_body).is_ok_and(|j| j.is_object())
}

fn webhook_path(endpoint: &str) -> &str {
    endpoint.split('?').next().unwrap()
}

async fn apps_for(paths: &[&str], secrets: &[String]) -> Vec<(String, TestApp)> {
    let mut apps = Vec::new();
    for p in paths {
        let path = p.to_string();
        let secrets = secrets.to_vec();
        let app = TestApp::spawn_with(move |s| {
            s.webhook_path = path;
            s.credentials = secrets
                .iter()
                .enumerate()
                .map(|(i, sec)| crate::helpers::credential(&format!("vec-{i}"), sec))
                .collect();
        })
        .await;
        apps.push((p.to_string(), app));
    }
    apps
}

/// A one-byte change to the body that changes its content (never just whitespace).
fn tamper_body(raw: &str) -> Vec<u8> {
    let mut b = raw.as_bytes().to_vec();
    let i = b.iter().rposition(|c| !c.is_ascii_whitespace()).unwrap();
    b[i] = match b[i] {
        b'}' => b']',
        b']' => b'}',
        c if c.is_ascii_digit() => {
            if c == b'9' {
                b'0'
            } else {
                c + 1
            }
        }
        c if c.is_ascii_alphabetic() => {
            if c == b'z' || c == b'Z' {
                c - 1
            } else {
                c + 1
            }
        }
        _ => b'#',
    };
    b
}

type Tampered = (&'static str, String, Vec<u8>, String, String, String);

fn app_for<'a>(apps: &'a [(String, TestApp)], v: &Vector) -> &'a TestApp {
    &apps.iter().find(|(p, _)| p == webhook_path(&v.endpoint)).unwrap().1
}

fn tamper_last(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let last = b.len() - 1;
    b[last] = if b[last] == b'x' { b'y' } else { b'x' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn every_vector_is_accepted_over_http_and_every_one_byte_change_is_refused() {
    let vectors = load_vectors();
    let secrets: Vec<String> = vectors.iter().map(|v| v.secret.clone()).collect::<HashSet<_>>().into_iter().collect();
    let paths: Vec<&str> =
        vectors.iter().map(|v| webhook_path(&v.endpoint)).collect::<HashSet<_>>().into_iter().collect();
    // One set of receivers gets the canonical signatures, another the raw ones, so each
    // form is seen on content not stored before.
    let canonical_apps = apps_for(&paths, &secrets).await;
    let raw_apps = apps_for(&paths, &secrets).await;
    let (canonical_apps, raw_apps) = (canonical_apps.as_slice(), raw_apps.as_slice());

    let mut seen_canonical = HashSet::new();
    let mut seen_raw = HashSet::new();
    for v in &vectors {
        let ts: i64 = v.timestamp.parse().unwrap();
        let auth = format!("Bearer {}", v.access_token);
        // What the dedupe key is made of, per PHP's own output.
        let content = v.canonical_body.clone().unwrap_or_else(|| v.raw_body.clone());
        for (apps, sig, seen, want_form) in [
            (canonical_apps, v.canonical_signature.clone(), &mut seen_canonical, "php"),
            (raw_apps, Some(v.raw_signature.clone()), &mut seen_raw, "raw"),
        ] {
            let Some(sig) = sig else { continue };
            let app = app_for(apps, v);
            app.set_clock(ts);
            let r = app.post_raw(&v.endpoint, v.raw_body.clone(), Some(&sig), Some(&v.timestamp), Some(&auth)).await;
            if !is_json_object(v) {
                assert_eq!((r.status, r.error_code()), (400, "invalid_body"), "{}: {:?}", v.name, r.json);
                continue;
            }
            assert_eq!(r.status, 200, "{} ({want_form}): {:?}", v.name, r.json);
            let first_time = seen.insert((webhook_path(&v.endpoint).to_owned(), content.clone()));
            assert_eq!(r.duplicate(), !first_time, "{}", v.name);
            if first_time {
                let form: String = sqlx::query_scalar("SELECT signature_form FROM singapay.deliveries WHERE id = $1")
                    .bind(r.delivery_id())
                    .fetch_one(&app.db)
                    .await
                    .unwrap();
                // Where PHP's form is the raw body byte for byte, the php form matches first.
                let expected = if v.canonical_body.as_deref() == Some(v.raw_body.as_str()) { "php" } else { want_form };
                assert_eq!(form, expected, "{}", v.name);
            }
        }
    }

    // Tampering: the same headers with one byte changed anywhere; all refused, no rows.
    let mut rows_before = 0;
    for (_, app) in canonical_apps {
        rows_before += app.total_rows().await;
    }
    for v in &vectors {
        let ts: i64 = v.timestamp.parse().unwrap();
        let sig = v.canonical_signature.clone().unwrap_or_else(|| v.raw_signature.clone());
        let auth = format!("Bearer {}", v.access_token);
        let app = app_for(canonical_apps, v);
        app.set_clock(ts);
        let tampered_path =
            if v.endpoint.contains('?') { tamper_last(&v.endpoint) } else { format!("{}/", v.endpoint) };
        let forged_secret = tamper_last(&v.secret);
        let forged_sig = sign_raw(&forged_secret, &v.endpoint, &v.access_token, v.raw_body.as_bytes(), &v.timestamp);
        let forged_canonical_sig = v
            .canonical_body
            .as_ref()
            .map(|c| sign_raw(&forged_secret, &v.endpoint, &v.access_token, c.as_bytes(), &v.timestamp));
        let next_ts = (ts + 1).to_string();
        // (what changed, endpoint, body, X-Signature, X-Timestamp, Authorization)
        let mut cases: Vec<Tampered> = vec![
            ("body", v.endpoint.clone(), tamper_body(&v.raw_body), sig.clone(), v.timestamp.clone(), auth.clone()),
            ("path", tampered_path, v.raw_body.as_bytes().to_vec(), sig.clone(), v.timestamp.clone(), auth.clone()),
            (
                "token",
                v.endpoint.clone(),
                v.raw_body.as_bytes().to_vec(),
                sig.clone(),
                v.timestamp.clone(),
                format!("Bearer {}", tamper_last(&v.access_token)),
            ),
            ("timestamp", v.endpoint.clone(), v.raw_body.as_bytes().to_vec(), sig.clone(), next_ts, auth.clone()),
            (
                "secret",
                v.endpoint.clone(),
                v.raw_body.as_bytes().to_vec(),
                forged_sig,
                v.timestamp.clone(),
                auth.clone(),
            ),
        ];
        if let Some(s) = forged_canonical_sig {
            cases.push((
                "secret/php",
                v.endpoint.clone(),
                v.raw_body.as_bytes().to_vec(),
                s,
                v.timestamp.clone(),
                auth.clone(),
            ));
        }
        // A body nested deeper than PHP goes is refused as such before any signature is
        // looked at.
        let too_deep = v.name.starts_with("depth/") && v.canonical_body.is_none();
        let expected = if too_deep { (400, "invalid_body") } else { (401, "signature_invalid") };
        for (what, endpoint, body, sig, ts_header, auth) in cases {
            let r = app.post_raw(&endpoint, body, Some(&sig), Some(&ts_header), Some(&auth)).await;
            assert_eq!((r.status, r.error_code()), expected, "{} with a changed {what}", v.name);
        }
    }
    let mut rows_after = 0;
    for (_, app) in canonical_apps {
        rows_after += app.total_rows().await;
    }
    assert_eq!(rows_after, rows_before, "a refused signature must leave no row");
}

/// No byte sequence may panic the verify/classify path: every vector body mutated at many
/// positions (deterministic pseudo-random, so a failure reproduces).
#[test]
fn mutated_bodies_never_panic() {
    use singapay_webhooks::singapay::webhook::classify;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let creds = [credential("c", "s")];
    for v in load_vectors() {
        for _ in 0..40 {
            let mut b = v.raw_body.as_bytes().to_vec();
            for _ in 0..(1 + next() % 4) {
                if b.is_empty() {
                    break;
                }
                let i = (next() as usize) % b.len();
                match next() % 3 {
                    0 => b[i] = next() as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => {
                        const ALPHABET: &[u8] = b"{}[]\",:\\u0";
                        b.insert(i, ALPHABET[(next() as usize) % ALPHABET.len()]);
                    }
                }
            }
            let body = Body::analyse(&b);
            if let Some(obj) = body.object() {
                let _ = classify(obj);
                let _ = singapay_webhooks::store::to_jsonb_text(obj);
            }
            // A one-byte signature can match nothing: whatever the body, it is refused.
            let refused = signature::verify(
                SignedHeaders { signature: Some(b"00"), timestamp: Some(b"1"), authorization: Some(b"Bearer x") },
                b"/webhooks/singapay",
                body.forms(&b),
                &creds,
                1,
                300,
            );
            assert_eq!(refused, Err(VerifyError::SignatureInvalid), "{:?}", String::from_utf8_lossy(&b));
        }
    }
}

/// `verify`'s explanation names what is actually wrong with bodies PHP rewrites or refuses,
/// not the secret: the float-tie vectors verify (the php form is PHP's), and a body nested
/// deeper than PHP decodes, or with a lone surrogate, is blamed on its body.
#[test]
fn verify_blames_the_body_not_the_secret_where_php_rewrites_or_refuses_it() {
    use singapay_webhooks::tools::explain::{explain, Request, Verdict};
    for v in load_vectors().into_iter().filter(|v| v.name.starts_with("tie/") || v.name.starts_with("depth/")) {
        let Some(sig) = v.canonical_signature.clone() else { continue };
        let auth = format!("Bearer {}", v.access_token);
        let req = Request {
            endpoint: &v.endpoint,
            signature: Some(sig.as_bytes()),
            timestamp: Some(v.timestamp.as_bytes()),
            authorization: Some(auth.as_bytes()),
            partner_id: None,
            body: v.raw_body.as_bytes(),
        };
        let report = explain(&req, &[credential("vec", &v.secret)], v.timestamp.parse().unwrap(), 300);
        assert!(matches!(report.verdict, Verdict::Match { .. }), "{}: {}", v.name, report.text);
    }
    let deep = format!("{{\"data\":{}1{}}}", "[".repeat(600), "]".repeat(600));
    let forged = "0".repeat(128);
    // A request with a signature no configured secret made.
    let unsigned_by_us = |body: &[u8]| {
        let req = Request {
            endpoint: "/webhooks/singapay",
            signature: Some(forged.as_bytes()),
            timestamp: Some(b"1774320000"),
            authorization: Some(b"Bearer t"),
            partner_id: None,
            body,
        };
        explain(&req, &[credential("c", "a-secret-long-enough")], 1_774_320_000, 300)
    };
    for body in [deep.as_str(), r#"{"s":"\ud800"}"#] {
        let report = unsigned_by_us(body.as_bytes());
        match report.verdict {
            Verdict::Mismatch { component, detail } => {
                assert_eq!(component, "body", "{detail}");
                assert!(!detail.contains("most likely the Client Secret"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }
    // A body PHP rewrites (a float, an empty object) signed in some other form: the secret
    // is not named as the most likely cause, and the php form is shown.
    let report = unsigned_by_us(br#"{"rate":10000.00,"meta":{}}"#);
    let Verdict::Mismatch { component, detail } = report.verdict else { panic!("{}", report.text) };
    assert_eq!(component, "secret_or_body_form");
    assert!(detail.contains(r#"{"meta":[],"rate":10000}"#), "{detail}");
}

/// The php form against PHP itself on random Singapay-like bodies that lean on the hard
/// cases (tools/soak.py): floats near ties and at every magnitude, integers around ±2^63,
/// `{}`/`[]`, lists of 0–30 items, numeric-string keys, unicode and escapes, duplicate
/// keys, nesting around PHP's limit, pretty and compact layouts. Seeded: a failure
/// reproduces. `SOAK_BODIES=100000 scripts/test php_differential_soak` runs more.
#[test]
fn php_differential_soak() {
    let count = std::env::var("SOAK_BODIES").unwrap_or_else(|_| "3000".into());
    let seed = std::env::var("SOAK_SEED").unwrap_or_else(|_| "1".into());
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/soak.py");
    let mut soak = std::process::Command::new("python3")
        .args([tool, "--count", &count, "--seed", &seed])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs tools/soak.py");
    let lines = std::io::BufRead::lines(std::io::BufReader::new(soak.stdout.take().unwrap()));
    let mut compared = 0;
    for line in lines {
        let case: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let body = case["body"].as_str().unwrap();
        let php = case["php"].as_str();
        let ours = Body::analyse(body.as_bytes()).php;
        if ours.as_deref() != php {
            panic!(
                "body {compared} of {count} (seed {seed}) differs from PHP; as a test:\n\n    assert_eq!(Body::analyse({body:?}.as_bytes()).php.as_deref(), {php:?});\n\nours: {ours:?}"
            );
        }
        compared += 1;
    }
    assert!(soak.wait().unwrap().success(), "soak.py failed (it needs php-cli)");
    assert_eq!(compared.to_string(), count, "every body was compared");
}
