//! A small JSON parser: the filter's only JSON input is its policy, read at configuration time.
//!
//! serde_json's parser and serde's derived visitors for every spec type made up about a third
//! of the filter's `.wasm`; this parser is a few KB. It parses into a plain tree ([`Json`])
//! that [`super::decode`] walks field by field, and names the JSON path of a syntax error from
//! its own recursion instead of reconstructing it from a line and column afterwards.

use std::borrow::Cow;
use std::fmt;

use crate::limits::{MAX_JSON_DEPTH, MAX_STRING_BYTES};

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number.
    Num(Num),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object's members in document order, duplicates kept: the decoder reports problems
    /// in the order they were written and refuses a field given twice.
    Obj(Vec<(String, Json)>),
}

/// A JSON number: integers are kept exact, as serde_json keeps them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// A non-negative integer that fits in `u64`.
    Uint(u64),
    /// A negative integer that fits in `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
}

impl Num {
    /// The number as `f64` (the nearest one for integers beyond 2^53).
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Uint(n) => n as f64,
            Num::Int(n) => n as f64,
            Num::Float(x) => x,
        }
    }
}

/// A syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// JSON path of the value being read when it went wrong; empty at the top level.
    pub path: String,
    /// What is wrong and where in the text, e.g. `EOF while parsing a value at line 1 column 9`.
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Parses one JSON value (surrounding whitespace allowed, nothing else).
pub fn parse(text: &[u8]) -> Result<Json, SyntaxError> {
    let mut p = Parser {
        text,
        pos: 0,
        depth: 0,
    };
    let value = p.value().and_then(|v| {
        p.skip_ws();
        match p.peek() {
            None => Ok(v),
            Some(_) => Err(p.fail("trailing characters")),
        }
    });
    value.map_err(|f| f.into_error(text))
}

/// Longest key written into a path as it is; a longer one is quoted as an excerpt.
const MAX_PLAIN_KEY: usize = crate::excerpt::MAX_EXCERPT_CHARS;

/// Appends member `key` to a JSON path: `.key` for a plain key, else `["key"]` with escapes,
/// shortened to an excerpt. So every path names a position (an empty key is `[""]`, not
/// nothing), a key cannot forge one (`a.b` or `x[0]` inside a key), and a 64 KiB key adds at
/// most ~70 characters to an error (found by fuzzing: `{"":1}` gave an error with no path).
pub(super) fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key.len() <= MAX_PLAIN_KEY
        && key
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '.' | '[' | ']' | '"' | '\\'));
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        return;
    }
    path.push_str("[\"");
    path.push_str(&crate::excerpt::excerpt(key).replace('"', "\\\""));
    path.push_str("\"]");
}

/// One step of a path, collected while an error unwinds out of the nested values.
enum Seg {
    Key(String),
    Index(usize),
}

/// An error on its way out: the message, its byte offset, and the path, innermost first.
struct Failure {
    message: Cow<'static, str>,
    at: usize,
    path: Vec<Seg>,
}

impl Failure {
    fn within(mut self, seg: Seg) -> Failure {
        self.path.push(seg);
        self
    }

    fn into_error(self, text: &[u8]) -> SyntaxError {
        let before = text.get(..self.at).unwrap_or(text);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
        let mut path = String::new();
        for seg in self.path.iter().rev() {
            match seg {
                Seg::Key(k) => push_key(&mut path, k),
                Seg::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        SyntaxError {
            path,
            message: format!("{} at line {line} column {column}", self.message),
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn fail(&self, message: impl Into<Cow<'static, str>>) -> Failure {
        Failure {
            message: message.into(),
            at: self.pos,
            path: Vec::new(),
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn value(&mut self) -> Result<Json, Failure> {
        self.skip_ws();
        match self.peek() {
            None => Err(self.fail("EOF while parsing a value")),
            Some(b'{') => self.nested(Parser::object),
            Some(b'[') => self.nested(Parser::array),
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Json::Str)
            }
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Num),
            Some(_) => Err(self.fail("expected value")),
        }
    }

    /// Enters an object or array (at its opening bracket), within the depth limit.
    fn nested(&mut self, inner: fn(&mut Self) -> Result<Json, Failure>) -> Result<Json, Failure> {
        if self.depth >= MAX_JSON_DEPTH {
            // Refused rather than risking the wasm stack.
            return Err(self.fail(format!("nesting deeper than {MAX_JSON_DEPTH}")));
        }
        self.depth += 1;
        self.pos += 1;
        let v = inner(self);
        self.depth -= 1;
        v
    }

    fn literal(&mut self, word: &[u8], v: Json) -> Result<Json, Failure> {
        for &expected in word {
            match self.peek() {
                Some(b) if b == expected => self.pos += 1,
                None => return Err(self.fail("EOF while parsing a value")),
                Some(_) => return Err(self.fail("expected ident")),
            }
        }
        Ok(v)
    }

    fn object(&mut self) -> Result<Json, Failure> {
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'"') => self.pos += 1,
                Some(b'}') if !members.is_empty() => return Err(self.fail("trailing comma")),
                Some(_) => return Err(self.fail("key must be a string")),
                None => return Err(self.fail("EOF while parsing an object")),
            }
            let key = self.string()?;
            self.skip_ws();
            match self.peek() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(self.fail("expected `:`")),
                None => return Err(self.fail("EOF while parsing an object")),
            }
            match self.value() {
                Ok(v) => members.push((key, v)),
                Err(f) => return Err(f.within(Seg::Key(key))),
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Obj(members));
                }
                Some(_) => return Err(self.fail("expected `,` or `}`")),
                None => return Err(self.fail("EOF while parsing an object")),
            }
        }
    }

    fn array(&mut self) -> Result<Json, Failure> {
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            self.skip_ws();
            if self.peek() == Some(b']') {
                return Err(self.fail("trailing comma"));
            }
            match self.value() {
                Ok(v) => items.push(v),
                Err(f) => return Err(f.within(Seg::Index(items.len()))),
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Arr(items));
                }
                Some(_) => return Err(self.fail("expected `,` or `]`")),
                None => return Err(self.fail("EOF while parsing a list")),
            }
        }
    }

    /// The rest of a string, after its opening quote.
    fn string(&mut self) -> Result<String, Failure> {
        let start = self.pos;
        let mut out = Vec::new();
        loop {
            let run = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.extend_from_slice(self.text.get(run..self.pos).unwrap_or_default());
            if out.len() > MAX_STRING_BYTES {
                return Err(Failure {
                    message: format!("string longer than {MAX_STRING_BYTES} bytes").into(),
                    at: start,
                    path: Vec::new(),
                });
            }
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                Some(_) => {
                    return Err(self
                        .fail("control character (\\u0000-\\u001F) found while parsing a string"))
                }
                None => return Err(self.fail("EOF while parsing a string")),
            }
        }
        String::from_utf8(out).map_err(|_| Failure {
            message: "invalid unicode code point".into(),
            at: start,
            path: Vec::new(),
        })
    }

    /// One escape, after its backslash.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Failure> {
        let Some(b) = self.peek() else {
            return Err(self.fail("EOF while parsing a string"));
        };
        self.pos += 1;
        let simple = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let c = self.unicode_escape()?;
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return Err(self.fail("invalid escape")),
        };
        out.push(simple);
        Ok(())
    }

    /// The code point of `\uXXXX` (after its `u`), joining a surrogate pair.
    fn unicode_escape(&mut self) -> Result<char, Failure> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.text.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.fail("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.fail("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.fail("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Result<u32, Failure> {
        let mut n = 0;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                Some(_) => return Err(self.fail("invalid escape")),
                None => return Err(self.fail("EOF while parsing a string")),
            };
            n = n * 16 + u32::from(digit);
            self.pos += 1;
        }
        Ok(n)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A number, checked against JSON's grammar (no leading zeros, `+`, `.5`, `NaN`).
    fn number(&mut self) -> Result<Num, Failure> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        match self.digits() {
            0 => return Err(self.fail("invalid number")),
            n if n > 1 && self.text.get(int_start) == Some(&b'0') => {
                return Err(Failure {
                    message: "invalid number".into(),
                    at: int_start + 1,
                    path: Vec::new(),
                })
            }
            _ => {}
        }
        let int_end = self.pos;
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("invalid number"));
            }
        }
        let digits = self.text.get(int_start..int_end).unwrap_or_default();
        if integral {
            // Integers exactly while they fit, as serde_json; beyond, as a float.
            let magnitude = digits.iter().try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            });
            match (negative, magnitude) {
                (false, Some(n)) => return Ok(Num::Uint(n)),
                (true, Some(0)) => return Ok(Num::Uint(0)),
                (true, Some(n)) if n <= 1 << 63 => {
                    return Ok(Num::Int(0i64.wrapping_sub_unsigned(n)));
                }
                _ => {}
            }
        }
        // The text is ASCII by construction; `number::parse` rounds correctly.
        let text = self.text.get(start..self.pos).unwrap_or_default();
        let x = std::str::from_utf8(text)
            .ok()
            .and_then(super::number::parse)
            .filter(|x| x.is_finite());
        match x {
            Some(x) => Ok(Num::Float(x)),
            None => Err(Failure {
                message: "number out of range".into(),
                at: start,
                path: Vec::new(),
            }),
        }
    }
}

/// Builds a [`Json`] from any serde format, so the spec types' `Deserialize` implementations
/// can run the filter's own decoder (one set of rules and defaults for the filter, the CLI and
/// the controller). Generic: costs the filter nothing, which never calls it.
impl<'de> serde::Deserialize<'de> for Json {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> serde::de::Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
        Ok(Json::Num(match u64::try_from(n) {
            Ok(u) => Num::Uint(u),
            Err(_) => Num::Int(n),
        }))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
        Ok(Json::Num(Num::Uint(n)))
    }

    fn visit_f64<E>(self, x: f64) -> Result<Json, E> {
        Ok(Json::Num(Num::Float(x)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Json, E> {
        Ok(Json::Str(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Json, E> {
        Ok(Json::Str(s))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        serde::Deserialize::deserialize(d)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry()? {
            members.push(member);
        }
        Ok(Json::Obj(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Json {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).unwrap_err().to_string()
    }

    fn obj(members: &[(&str, Json)]) -> Json {
        Json::Obj(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn values() {
        assert_eq!(ok(" null "), Json::Null);
        assert_eq!(ok("true"), Json::Bool(true));
        assert_eq!(
            ok("[false, []]"),
            Json::Arr(vec![Json::Bool(false), Json::Arr(vec![])])
        );
        assert_eq!(
            ok(r#"{"a": {}, "a": 1}"#),
            obj(&[("a", obj(&[])), ("a", Json::Num(Num::Uint(1)))]),
            "members in order, duplicates kept"
        );
        assert_eq!(ok("\t\r\n{ }\n"), obj(&[]));
    }

    #[test]
    fn numbers_are_exact_integers_or_correctly_rounded_floats() {
        let num = |t: &str| match ok(t) {
            Json::Num(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(num("0"), Num::Uint(0));
        assert_eq!(num("-0"), Num::Uint(0));
        assert_eq!(num("18446744073709551615"), Num::Uint(u64::MAX));
        assert_eq!(
            num("18446744073709551616"),
            Num::Float(18446744073709551616.0)
        );
        assert_eq!(num("-9223372036854775808"), Num::Int(i64::MIN));
        assert_eq!(
            num("-9223372036854775809"),
            Num::Float(-9223372036854775809.0)
        );
        assert_eq!(num("-12"), Num::Int(-12));
        assert_eq!(num("33.33"), Num::Float(33.33));
        assert_eq!(num("0.1"), Num::Float(0.1));
        assert_eq!(num("1e2"), Num::Float(100.0));
        assert_eq!(num("-2.5E-3"), Num::Float(-0.0025));
        assert_eq!(num("1E+2"), Num::Float(100.0));
        for bad in [
            "01", "-", "1.", ".5", "+1", "1e", "1e+", "-a", "NaN", "1.5.2",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(err("1e999"), "number out of range at line 1 column 1");
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            ok(r#""a\"b\\c\/d\b\f\n\r\t""#),
            Json::Str("a\"b\\c/d\u{8}\u{c}\n\r\t".into())
        );
        assert_eq!(ok(r#""\u00e9\u4e2d""#), Json::Str("é中".into()));
        assert_eq!(ok(r#""\ud83d\ude00""#), Json::Str("😀".into()));
        assert_eq!(ok("\"é\""), Json::Str("é".into()));
        assert!(err(r#""\ud83d""#).starts_with("lone leading surrogate"));
        assert!(err(r#""\x""#).starts_with("invalid escape"));
        assert!(err(r#""\u12g4""#).starts_with("invalid escape"));
        assert!(err("\"a\nb\"").starts_with("control character"));
        assert!(parse(b"\"\xff\"")
            .unwrap_err()
            .message
            .starts_with("invalid unicode"));
        assert!(err(r#""abc"#).starts_with("EOF while parsing a string"));
    }

    #[test]
    fn syntax_errors_name_path_and_position() {
        assert_eq!(
            err("{\"name\": "),
            "name: EOF while parsing a value at line 1 column 10"
        );
        assert_eq!(
            err("{\n  \"routes\": [{\"variant\": \"a\"}, {\"split\": [1, tru]}]\n}"),
            "routes[1].split[1]: expected ident at line 2 column 49"
        );
        assert_eq!(
            err(r#"{"a": 1 "b": 2}"#),
            "expected `,` or `}` at line 1 column 9"
        );
        assert_eq!(
            err(r#"{"a": [1 2]}"#),
            "a: expected `,` or `]` at line 1 column 10"
        );
        assert_eq!(err(r#"{"a" 1}"#), "expected `:` at line 1 column 6");
        assert_eq!(err(r#"{1: 2}"#), "key must be a string at line 1 column 2");
        assert_eq!(err(r#"{"a": 1,}"#), "trailing comma at line 1 column 9");
        assert_eq!(err(r#"[1,]"#), "trailing comma at line 1 column 4");
        assert_eq!(err(r#"{} x"#), "trailing characters at line 1 column 4");
        assert_eq!(err(""), "EOF while parsing a value at line 1 column 1");
        assert_eq!(err("[1"), "EOF while parsing a list at line 1 column 3");
        assert_eq!(
            err(r#"{"a":1"#),
            "EOF while parsing an object at line 1 column 7"
        );
        assert_eq!(err("@"), "expected value at line 1 column 1");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_JSON_DEPTH).as_bytes()).is_ok());
        let e = parse(deep(MAX_JSON_DEPTH + 1).as_bytes()).unwrap_err();
        assert_eq!(e.message, "nesting deeper than 32 at line 1 column 33");
        // An attacker's megabyte of brackets must not overflow the stack either.
        assert!(parse("[".repeat(1 << 20).as_bytes()).is_err());
    }
}
