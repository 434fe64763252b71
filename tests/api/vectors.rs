//! Every vector in `vectors.json` (canonical forms produced by PHP 8.2 itself).

use singapay_webhooks::singapay::signature::{self, BodyForm, SignedHeaders};
use singapay_webhooks::singapay::Body;

use crate::helpers::{credential, load_vectors};

#[test]
fn canonicaliser_reproduces_php_byte_for_byte() {
    let vectors = load_vectors();
    assert_eq!(vectors.len(), 301);
    let mut failures = Vec::new();
    for v in &vectors {
        let body = Body::analyse(v.raw_body.as_bytes());
        if body.php != v.canonical_body {
            failures.push(format!(
                "{}: ours {:?}\n   php  {:?}",
                v.name, body.php, v.canonical_body
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn every_vector_verifies_in_the_form_it_was_signed() {
    for v in load_vectors() {
        let body = Body::analyse(v.raw_body.as_bytes());
        let creds = [
            credential("wrong", "not-the-secret"),
            credential("vec", &v.secret),
        ];
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
            let ok = check(sig)
                .unwrap_or_else(|e| panic!("{}: canonical signature refused: {e:?}", v.name));
            assert_eq!(ok.form, BodyForm::Php, "{}", v.name);
            assert_eq!(ok.credential, "vec");
            assert!(ok.fresh);
            // Upper-case hex is the same signature.
            assert!(check(&sig.to_uppercase()).is_ok(), "{}", v.name);
        }
        let ok = check(&v.raw_signature)
            .unwrap_or_else(|e| panic!("{}: raw signature refused: {e:?}", v.name));
        // When PHP's form equals the raw bytes, the php form matches first.
        let want = if v.canonical_body.as_deref() == Some(v.raw_body.as_str()) {
            BodyForm::Php
        } else {
            BodyForm::Raw
        };
        assert_eq!(ok.form, want, "{}", v.name);
    }
}
