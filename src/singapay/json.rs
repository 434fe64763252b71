//! A small, strict JSON parser for hostile webhook bodies.
//!
//! It exists because neither signature form can be computed from a `serde_json::Value`:
//! PHP's form needs number literals re-read the way PHP reads them, Go's form needs them
//! kept exactly as written, and both need to know where a lone UTF-16 surrogate was
//! replaced. Nesting is limited *before* descending, so no input can exhaust the stack.

use std::fmt;

/// Deepest nesting of arrays/objects accepted (`{"a":1}` is depth 1): PHP's. `json_decode`'s
/// default depth of 512 counts the innermost values as a level, so objects and arrays nest
/// at most 511 deep there (checked against PHP by the `depth/` vectors). Every recursive
/// walk over a [`Value`] is bounded by it; a test runs them on a 2 MiB stack, the smallest
/// the service's threads have (Tokio's workers and blocking pool).
pub const MAX_DEPTH: usize = 511;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number exactly as written in the body (already checked against the JSON grammar).
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Members sorted by key bytes, duplicate keys collapsed with the last one winning
    /// (what PHP's `json_decode` + `ksort` and Go's map decoding both end up with).
    Object(Vec<(String, Value)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub value: Value,
    /// False when a lone UTF-16 surrogate escape was replaced by U+FFFD: PHP's decoder
    /// refuses such input, so no PHP canonical form exists for it.
    pub php_decodable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    InvalidUtf8,
    TooDeep,
    Syntax { offset: usize, what: &'static str },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::InvalidUtf8 => f.write_str("body is not valid UTF-8"),
            ParseError::TooDeep => {
                write!(f, "body nests deeper than {MAX_DEPTH} levels, more than PHP's json_decode accepts")
            }
            ParseError::Syntax { offset, what } => {
                write!(f, "invalid JSON at byte {offset}: {what}")
            }
        }
    }
}

impl std::error::Error for ParseError {}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => {
                members.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &members[i].1)
            }
            _ => None,
        }
    }

    /// Follows a path of object keys.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |v, k| v.get(k))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    /// A string, or the literal of a number: how ids and amounts arrive.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Number(n) => Some(n),
            _ => None,
        }
    }
}

pub fn parse(body: &[u8]) -> Result<Parsed, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::InvalidUtf8)?;
    let mut p = Parser { s: text.as_bytes(), text, pos: 0, php_decodable: true };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(Parsed { value, php_decodable: p.php_decodable })
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    php_decodable: bool,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError::Syntax { offset: self.pos, what }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, lit: &'static str, v: Value) -> Result<Value, ParseError> {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            Ok(v)
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.err("unexpected end of input")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') => self.expect_literal("true", Value::Bool(true)),
            Some(b'f') => self.expect_literal("false", Value::Bool(false)),
            Some(b'n') => self.expect_literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        self.pos += 1; // '{'
        let mut members: Vec<(String, Value)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            self.skip_ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
        // Stable sort keeps duplicates in arrival order, so "last one wins" is the last of a run.
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut out: Vec<(String, Value)> = Vec::with_capacity(members.len());
        for (k, v) in members {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Ok(Value::Object(out))
    }

    fn array(&mut self, depth: usize) -> Result<Value, ParseError> {
        if depth > MAX_DEPTH {
            return Err(ParseError::TooDeep);
        }
        self.pos += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
        Ok(Value::Array(items))
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err("invalid number"));
            }
            self.digits();
        }
        Ok(Value::Number(self.text[start..self.pos].to_owned()))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u16, ParseError> {
        let h = self.s.get(self.pos..self.pos + 4).ok_or_else(|| self.err("short \\u escape"))?;
        let mut v: u16 = 0;
        for &b in h {
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.err("invalid \\u escape")),
            };
            v = v << 4 | u16::from(d);
        }
        self.pos += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the run of ordinary characters in one go.
            let run_start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run_start..self.pos]);
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let esc = self.peek().ok_or_else(|| self.err("unterminated escape"))?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let cu = self.hex4()?;
                            out.push(self.code_point(cu)?);
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    /// Joins a surrogate pair; a lone surrogate becomes U+FFFD (as Go does) and marks the
    /// body as one PHP cannot decode.
    fn code_point(&mut self, cu: u16) -> Result<char, ParseError> {
        if (0xD800..0xDC00).contains(&cu) {
            let rest = &self.s[self.pos..];
            if rest.len() >= 6 && rest[0] == b'\\' && rest[1] == b'u' {
                let save = self.pos;
                self.pos += 2;
                let lo = self.hex4()?;
                if (0xDC00..0xE000).contains(&lo) {
                    let c = 0x10000 + ((u32::from(cu) - 0xD800) << 10) + (u32::from(lo) - 0xDC00);
                    return Ok(char::from_u32(c).unwrap_or('\u{FFFD}'));
                }
                self.pos = save;
            }
            self.php_decodable = false;
            return Ok('\u{FFFD}');
        }
        if (0xDC00..0xE000).contains(&cu) {
            self.php_decodable = false;
            return Ok('\u{FFFD}');
        }
        Ok(char::from_u32(u32::from(cu)).unwrap_or('\u{FFFD}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_beyond_the_limit_is_refused_without_recursing() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse(deep.as_bytes()), Err(ParseError::TooDeep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        let over = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(over.as_bytes()), Err(ParseError::TooDeep));
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let p = parse(br#"{"b":1,"a":2,"b":3}"#).unwrap();
        assert_eq!(
            p.value,
            Value::Object(vec![("a".into(), Value::Number("2".into())), ("b".into(), Value::Number("3".into()))])
        );
    }

    #[test]
    fn lone_surrogates_are_replaced_and_flagged() {
        let p = parse(br#"{"s":"\ud800x"}"#).unwrap();
        assert!(!p.php_decodable);
        assert_eq!(p.value.get("s").and_then(Value::as_str), Some("\u{FFFD}x"));
        let p = parse(br#"{"s":"\ud83d\ude00"}"#).unwrap();
        assert!(p.php_decodable);
        assert_eq!(p.value.get("s").and_then(Value::as_str), Some("😀"));
    }

    #[test]
    fn grammar_is_strict() {
        for bad in ["{\"a\":1,}", "01", "1.", ".5", "{\"a\" 1}", "\"a\nb\"", "[1]x", "", "tru", "-", "1e"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse(b"\xff{}"), Err(ParseError::InvalidUtf8));
    }
}
