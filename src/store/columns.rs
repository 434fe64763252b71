//! Shaping what a callback says for Postgres's text columns and `jsonb` documents, which
//! refuse U+0000, and whose btree entries are bounded.

use crate::singapay::webhook::{Change, Classification, Subject};

/// Text for a column: NUL (which Postgres text refuses) replaced, length bounded.
pub fn column_text(s: &str) -> String {
    const MAX: usize = 2048;
    let mut end = s.len().min(MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].replace('\0', "\u{FFFD}")
}

/// A classification whose free text fits the columns and documents it is written to. Every
/// classification is passed through this before it is stored (`Delivery` and `Reapply`
/// are built with it).
pub fn fit_for_columns(mut c: Classification) -> Classification {
    for field in [&mut c.event, &mut c.response_code, &mut c.response_message, &mut c.transaction_status_desc] {
        fit(field);
    }
    match &mut c.subject {
        Subject::Single(change) => fit_change(change),
        Subject::Batch(changes) => changes.iter_mut().for_each(fit_change),
        Subject::Unrecognised(_) => {}
    }
    c
}

fn fit_change(change: &mut Change) {
    fit(&mut change.currency);
}

fn fit(field: &mut Option<String>) {
    if let Some(s) = field {
        *s = column_text(s);
    }
}
