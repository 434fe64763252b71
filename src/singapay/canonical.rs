//! The body forms a Singapay signature may have been computed over.
//!
//! `php` reproduces Singapay's official PHP sample: `json_decode(assoc)`, recursive
//! `ksort(SORT_STRING)`, `json_encode(JSON_UNESCAPED_UNICODE|JSON_UNESCAPED_SLASHES)`, quirks
//! included. `sorted` is what a Go signer produces with `UseNumber` and
//! `SetEscapeHTML(false)`. Both read a [`Value`] whose object members are already sorted by
//! key bytes, which is PHP's `SORT_STRING` order and Go's map-key order alike.

use super::json::{Parsed, Value};

/// PHP's canonical form, or `None` where PHP's pipeline fails (lone surrogate, a number
/// that overflows to infinity, or a top level that is not an array/object).
pub fn php_form(parsed: &Parsed) -> Option<String> {
    php_form_with(parsed, Style::PHP)
}

/// How a signer re-encodes: Singapay's PHP sample, or one of the ways other signers (or a
/// PHP call with different flags) differ from it. `verify` tries these to explain a
/// mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// PHP's ksort turns arrays of 11+ items into objects; hand-written ports do not.
    pub big_arrays_as_objects: bool,
    /// `json_encode` without JSON_UNESCAPED_SLASHES writes `\/`.
    pub escape_slashes: bool,
    /// `json_encode` without JSON_UNESCAPED_UNICODE writes `\u00e9`.
    pub escape_unicode: bool,
}

impl Style {
    pub const PHP: Style = Style { big_arrays_as_objects: true, escape_slashes: false, escape_unicode: false };
}

pub fn php_form_with(parsed: &Parsed, style: Style) -> Option<String> {
    if !parsed.php_decodable || !matches!(parsed.value, Value::Object(_) | Value::Array(_)) {
        return None;
    }
    let mut out = String::new();
    if !php_value(&parsed.value, &mut out, style) {
        return None;
    }
    if style.escape_slashes || style.escape_unicode {
        out = re_escape(&out, style);
    }
    Some(out)
}

/// Applies the escaping differences to an already-encoded document (only inside strings
/// can `/` or non-ASCII occur).
fn re_escape(doc: &str, style: Style) -> String {
    let mut out = String::with_capacity(doc.len());
    for c in doc.chars() {
        match c {
            '/' if style.escape_slashes => out.push_str("\\/"),
            c if style.escape_unicode && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Go's `encoding/json` form: keys sorted, arrays and `{}` kept, numbers as written.
pub fn sorted_form(parsed: &Parsed) -> String {
    let mut out = String::new();
    go_value(&parsed.value, &mut out);
    out
}

fn php_value(v: &Value, out: &mut String, style: Style) -> bool {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => escape_string(s, out),
        Value::Number(lit) => match php_number(lit) {
            Some(n) => out.push_str(&n),
            None => return false,
        },
        Value::Array(items) => {
            // PHP arrays are ordered maps keyed 0..n-1; ksort(SORT_STRING) reorders the keys
            // as strings, so from 11 items on ("10" < "2") the result is no longer a list and
            // json_encode writes an object.
            if items.len() <= 10 || !style.big_arrays_as_objects {
                return php_list(items.iter(), out, style);
            } else {
                let mut keys: Vec<String> = (0..items.len()).map(|i| i.to_string()).collect();
                keys.sort();
                out.push('{');
                for (n, key) in keys.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    escape_string(key, out);
                    out.push(':');
                    let idx: usize = key.parse().unwrap_or_default();
                    if !php_value(&items[idx], out, style) {
                        return false;
                    }
                }
                out.push('}');
            }
        }
        Value::Object(members) => {
            // An empty PHP array is a list (`{}` → `[]`), and an object whose sorted keys are
            // exactly "0".."n-1" is indistinguishable from a list.
            let is_list = members.iter().enumerate().all(|(i, (k, _))| is_index(k, i));
            if is_list {
                return php_list(members.iter().map(|(_, item)| item), out, style);
            } else {
                out.push('{');
                for (i, (k, item)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape_string(k, out);
                    out.push(':');
                    if !php_value(item, out, style) {
                        return false;
                    }
                }
                out.push('}');
            }
        }
    }
    true
}

fn php_list<'a>(items: impl Iterator<Item = &'a Value>, out: &mut String, style: Style) -> bool {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !php_value(item, out, style) {
            return false;
        }
    }
    out.push(']');
    true
}

fn is_index(key: &str, i: usize) -> bool {
    // PHP turns only canonical decimal strings into integer keys ("01", "+1" and "-0" stay
    // strings), so only those can make an array a list.
    !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key.len() == 1 || !key.starts_with('0'))
        && key.parse::<usize>() == Ok(i)
}

fn go_value(v: &Value, out: &mut String) {
    write_plain(v, out, &|n, out| out.push_str(n), &escape_string);
}

/// Writes `v` as JSON with arrays and objects kept as they are (members in key order), the
/// way numbers and strings are written left to the caller: Go's form and the jsonb copy
/// differ only there.
pub(crate) fn write_plain(
    v: &Value,
    out: &mut String,
    number: &dyn Fn(&str, &mut String),
    string: &dyn Fn(&str, &mut String),
) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::String(s) => string(s, out),
        Value::Number(lit) => number(lit, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_plain(item, out, number, string);
            }
            out.push(']');
        }
        Value::Object(members) => {
            out.push('{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write_plain(item, out, number, string);
            }
            out.push('}');
        }
    }
}

/// String escaping shared by PHP (`JSON_UNESCAPED_UNICODE|JSON_UNESCAPED_SLASHES`) and Go
/// (`SetEscapeHTML(false)`): they agree on every valid UTF-8 string.
pub fn escape_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
            // UNESCAPED_UNICODE does not cover the JS line terminators.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number literal as PHP re-encodes it: integers that fit int64 stay exact, all
/// else goes through a double printed with `serialize_precision = -1`. `None` for ±INF.
pub fn php_number(lit: &str) -> Option<String> {
    if !lit.contains(['.', 'e', 'E']) {
        if let Ok(i) = lit.parse::<i64>() {
            return Some(i.to_string());
        }
    }
    let f: f64 = lit.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    Some(php_gcvt(f))
}

/// The shortest digits that round-trip `f` (finite, positive), as zend_dtoa mode 0 gives
/// them, and the decimal exponent of the first: `f = d.ddd × 10^exp`. Ryu picks the same
/// digit as zend_dtoa (and Python's repr) when two shortest strings are equally close —
/// the even one — where Rust's own formatting picks the higher one
/// (`753314041375214.3` → PHP and Ryu `…214.2`).
fn shortest_digits(f: f64) -> (String, i32) {
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(f);
    let (mantissa, exp) = text.split_once('e').unwrap_or((text, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all: String = int.chars().chain(frac.chars()).collect();
    let leading = all.bytes().take_while(|b| *b == b'0').count();
    let digits = all[leading..].trim_end_matches('0').to_owned();
    // The first significant digit's place: int.len() - 1 - leading, counted from the point.
    let first = int.len() as i32 - 1 - leading as i32;
    if digits.is_empty() {
        return ("0".to_owned(), 0);
    }
    (digits, first + exp)
}

/// PHP's `php_gcvt(value, 17, '.', 'e')` in mode 0 (shortest round-trip digits).
fn php_gcvt(f: f64) -> String {
    let mut out = String::new();
    if f.is_sign_negative() {
        out.push('-');
    }
    if f == 0.0 {
        out.push('0');
        return out;
    }
    let (digits, exp) = shortest_digits(f.abs());
    let decpt = exp + 1;
    const NDIGIT: i32 = 17;
    let exponential = if decpt < 0 { decpt < -3 } else { decpt > NDIGIT };
    let d = digits.as_bytes();
    if exponential {
        out.push(d[0] as char);
        out.push('.');
        if d.len() == 1 {
            out.push('0');
        } else {
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        out.push_str(&exp.unsigned_abs().to_string());
    } else if decpt < 0 {
        out.push_str("0.");
        for _ in 0..(-decpt) {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let decpt = decpt as usize;
        for i in 0..decpt {
            out.push(d.get(i).map_or('0', |b| *b as char));
        }
        if d.len() > decpt {
            if decpt == 0 {
                out.push('0');
            }
            out.push('.');
            out.push_str(&digits[decpt..]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn php_numbers_follow_serialize_precision_minus_one() {
        let cases = [
            ("10000.00", "10000"),
            ("0.070", "0.07"),
            ("1e3", "1000"),
            ("-0", "0"),
            ("-0.0", "-0"),
            ("1e17", "1.0e+17"),
            ("1e16", "10000000000000000"),
            ("0.00001", "1.0e-5"),
            ("0.0001", "0.0001"),
            ("0.5", "0.5"),
            ("9223372036854775807", "9223372036854775807"),
            ("9223372036854775808", "9.223372036854776e+18"),
            ("99999999999999999999", "1.0e+20"),
            ("1.5e-7", "1.5e-7"),
        ];
        for (lit, want) in cases {
            assert_eq!(php_number(lit).as_deref(), Some(want), "{lit}");
        }
        assert_eq!(php_number("1e400"), None);
    }
}
