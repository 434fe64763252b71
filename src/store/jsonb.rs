//! Shaping a parsed body for Postgres's `jsonb` column.

use crate::singapay::canonical;
use crate::singapay::json::Value;

/// JSON text that Postgres `jsonb` is certain to accept: NUL (which jsonb refuses) becomes
/// U+FFFD and numbers `numeric` could not hold are kept as strings. The exact bytes are
/// stored separately; this is the queryable copy.
pub fn to_jsonb_text(v: &Value) -> String {
    let number = |lit: &str, out: &mut String| {
        let exp_ok = lit
            .split_once(['e', 'E'])
            .is_none_or(|(_, e)| e.trim_start_matches(['+', '-']).parse::<u32>().is_ok_and(|e| e <= 1000));
        if lit.len() <= 100 && exp_ok {
            out.push_str(lit);
        } else {
            canonical::escape_string(lit, out);
        }
    };
    let string = |s: &str, out: &mut String| canonical::escape_string(&s.replace('\0', "\u{FFFD}"), out);
    let mut out = String::new();
    canonical::write_plain(v, &mut out, &number, &string);
    out
}
