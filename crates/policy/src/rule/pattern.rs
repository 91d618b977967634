//! A rule's regular expression, compiled once by regex-lite, with the patterns that need no
//! automaton answered by comparing bytes.
//!
//! Why not always the automaton: regex-lite (chosen for size: the `regex` crate is several
//! times larger) has no literal prefilter, so even `.` runs its PikeVM over the value. On the
//! bench's request mix, whose rate limit applies to ``HeaderRegexp(`x-user-id`, `.`)``, that
//! one match cost about 2,300 of the filter's 14,800 Wasm instructions per request (wasmtime
//! fuel, `make bench`'s host part). Presence checks (`.`, `.+`) and plain text (`Chrome`,
//! `^/api/`, `^v2$`) are the common patterns, and each of them is a byte comparison that
//! answers exactly what the automaton would (`tests::byte_patterns_agree_with_regex_lite`).

use std::borrow::Cow;

use regex_lite::Regex;

/// A compiled pattern (unanchored, as Traefik's Go `MatchString`).
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Matches every text (`.*`, or the empty pattern).
    Any,
    /// Some character is not a line feed (`.`, `.+`: `.` never matches `\n`).
    AnyChar,
    /// The text contains this.
    Contains(Box<[u8]>),
    /// The text starts with this (`^text`).
    Prefix(Box<[u8]>),
    /// The text ends with this (`text$`).
    Suffix(Box<[u8]>),
    /// The text is this (`^text$`).
    Exact(Box<[u8]>),
    /// Anything else: the automaton, on the text (invalid UTF-8 replaced, as before).
    Regex(Regex),
}

/// Plain text: none of regex-lite's metacharacters (outside `(?x)`, whose flag needs `(`), and
/// no U+FFFD, which the automaton's text may hold where the value's bytes are not UTF-8.
fn plain(s: &str) -> bool {
    !s.contains([
        '\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
    ]) && !s.contains(char::REPLACEMENT_CHARACTER)
}

impl Pattern {
    /// `regex`, compiled from `pattern`; byte comparison when `pattern` says it all.
    pub fn new(pattern: &str, regex: Regex) -> Pattern {
        let bytes = |s: &str| s.as_bytes().to_vec().into_boxed_slice();
        match pattern {
            "" | ".*" => return Pattern::Any,
            "." | ".+" => return Pattern::AnyChar,
            _ => {}
        }
        let head = pattern.strip_prefix('^');
        let core = head.unwrap_or(pattern);
        let (core, tail) = match core.strip_suffix('$') {
            Some(c) => (c, true),
            None => (core, false),
        };
        if !plain(core) {
            return Pattern::Regex(regex);
        }
        match (head.is_some(), tail) {
            (false, false) => Pattern::Contains(bytes(core)),
            (true, false) => Pattern::Prefix(bytes(core)),
            (false, true) => Pattern::Suffix(bytes(core)),
            (true, true) => Pattern::Exact(bytes(core)),
        }
    }

    /// Whether `text` (a value's bytes) matches.
    pub fn is_match(&self, text: &[u8]) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::AnyChar => text.iter().any(|&b| b != b'\n'),
            Pattern::Contains(p) => p.is_empty() || text.windows(p.len()).any(|w| w == &**p),
            Pattern::Prefix(p) => text.starts_with(p),
            Pattern::Suffix(p) => text.ends_with(p),
            Pattern::Exact(p) => text == &**p,
            Pattern::Regex(re) => re.is_match(&lossy(text)),
        }
    }
}

fn lossy(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rng;

    /// One of `from`, drawn by `next`.
    fn pick<'a, T>(next: &mut impl FnMut() -> u64, from: &'a [T]) -> &'a T {
        &from[(next() % from.len() as u64) as usize]
    }

    /// Texts from bytes that make the cases differ: line feeds, bytes that are not UTF-8,
    /// the replacement character itself, letters of the patterns.
    fn text(next: &mut impl FnMut() -> u64) -> Vec<u8> {
        let parts: &[&[u8]] = &[
            b"a",
            b"b",
            b"ab",
            b"\n",
            b"\xff",
            b"\xe2",
            b"\xef\xbf\xbd",
            b"\xc3\xa9",
            b"/",
            b"-",
        ];
        let n = next() % 6;
        (0..n).flat_map(|_| pick(next, parts).to_vec()).collect()
    }

    fn pattern(next: &mut impl FnMut() -> u64) -> String {
        let cores = [
            "", "a", "b", "ab", "ba", "/a", "é", "-", "\u{fffd}", "a.b", "a+",
        ];
        let core = *pick(next, &cores);
        let head = if next().is_multiple_of(2) { "^" } else { "" };
        let tail = if next().is_multiple_of(2) { "$" } else { "" };
        match next() % 8 {
            0 => pick(next, &["", ".", ".*", ".+"]).to_string(),
            _ => format!("{head}{core}{tail}"),
        }
    }

    /// Every byte comparison answers as regex-lite does on the text the matcher gave it
    /// before (the value with invalid UTF-8 replaced), over 200,000 generated cases.
    #[test]
    fn byte_patterns_agree_with_regex_lite() {
        let mut next = rng(0x0dd_ba11_cafe_f00d);
        let mut fast = 0;
        for _ in 0..200_000 {
            let (p, t) = (pattern(&mut next), text(&mut next));
            let re = Regex::new(&p).unwrap();
            let compiled = Pattern::new(&p, re.clone());
            fast += usize::from(!matches!(compiled, Pattern::Regex(_)));
            assert_eq!(
                compiled.is_match(&t),
                re.is_match(&lossy(&t)),
                "pattern {p:?}, text {t:?}"
            );
        }
        assert!(fast > 150_000, "only {fast} cases took a byte comparison");
    }

    #[test]
    fn only_plain_patterns_skip_the_automaton() {
        let kind = |p: &str| match Pattern::new(p, Regex::new(p).unwrap()) {
            Pattern::Regex(_) => "regex",
            Pattern::Any => "any",
            Pattern::AnyChar => "any char",
            Pattern::Contains(_) => "contains",
            Pattern::Prefix(_) => "prefix",
            Pattern::Suffix(_) => "suffix",
            Pattern::Exact(_) => "exact",
        };
        assert_eq!(kind("."), "any char");
        assert_eq!(kind(".*"), "any");
        assert_eq!(kind("Chrome"), "contains");
        assert_eq!(kind("^/api/"), "prefix");
        assert_eq!(kind(".json$"), "regex");
        assert_eq!(kind("json$"), "suffix");
        assert_eq!(kind("^v2$"), "exact");
        for p in [
            "(?i)chrome",
            "a|b",
            "^a.*$",
            "\\.",
            "[0-9]",
            "a{2}",
            "x?",
            "^$a",
        ] {
            assert_eq!(kind(p), "regex", "{p}");
        }
    }
}
