//! Go's regexp syntax where regex-lite differs: a `{` or `}` that does not form a repetition
//! (`{n}`, `{n,}`, `{n,m}`) is a literal in Go and an error in regex-lite.
//!
//! Traefik compiles rule regexes with Go's `regexp.Compile` (pkg/muxer/http/matcher.go:131,
//! v3.7, fd5a576df2), whose parser (regexp/syntax `parse.go`, `repeat`/`parseRepeat`) falls
//! back to a literal `{` when `parseRepeat` fails. We escape such braces before regex-lite
//! sees the pattern, so it keeps its linear-time matching and the meaning stays Go's.
//! Hand-written because no crate translates Go regexp syntax; one pass over the pattern.

/// `pattern` with every brace that Go reads as a literal escaped.
pub fn escape_literal_braces(pattern: &str) -> String {
    let bytes = pattern.as_bytes();
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut i = 0;
    let mut in_class = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                // An escape is copied whole (the next character, whatever its width).
                let next = pattern.get(i + 1..).and_then(|r| r.chars().next());
                out.push('\\');
                if let Some(n) = next {
                    out.push(n);
                    i += 1 + n.len_utf8();
                    // `\p{Greek}`, `\x{263a}`: the braces belong to the escape (regex-lite
                    // refuses Unicode classes with its own message).
                    if matches!(n, 'p' | 'P' | 'x') && bytes.get(i) == Some(&b'{') {
                        if let Some(end) = pattern.get(i..).and_then(|r| r.find('}')) {
                            out.push_str(pattern.get(i..=i + end).unwrap_or(""));
                            i += end + 1;
                        }
                    }
                } else {
                    i += 1;
                }
                continue;
            }
            b'[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                // A `]` right after `[` or `[^` is a literal member.
                if bytes.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                if bytes.get(i) == Some(&b']') {
                    out.push(']');
                    i += 1;
                }
                continue;
            }
            b'[' if in_class && pattern.get(i..).is_some_and(|r| r.starts_with("[:")) => {
                // `[:alpha:]` inside a class: copied whole so its `]` does not end the class.
                if let Some(end) = pattern.get(i + 2..).and_then(|r| r.find(":]")) {
                    let to = i + 2 + end + 2;
                    out.push_str(pattern.get(i..to).unwrap_or(""));
                    i = to;
                    continue;
                }
            }
            b']' if in_class => in_class = false,
            b'{' if !in_class => {
                if let Some(len) = repetition_len(pattern.get(i..).unwrap_or("")) {
                    out.push_str(pattern.get(i..i + len).unwrap_or(""));
                    i += len;
                } else {
                    out.push_str("\\{");
                    i += 1;
                }
                continue;
            }
            b'}' if !in_class => {
                // Any `}` reached here closes no repetition (those are copied whole above).
                out.push_str("\\}");
                i += 1;
                continue;
            }
            _ => {}
        }
        let ch = pattern
            .get(i..)
            .and_then(|r| r.chars().next())
            .unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// Length of the `{n}`, `{n,}` or `{n,m}` at the start of `s` (Go's `parseRepeat` forms),
/// `None` when `s` does not start with one.
fn repetition_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits = |from: usize| {
        b.get(from..)
            .map_or(0, |r| r.iter().take_while(|c| c.is_ascii_digit()).count())
    };
    let mut i = 1;
    let n = digits(i);
    if n == 0 {
        return None;
    }
    i += n;
    if b.get(i) == Some(&b',') {
        i += 1;
        i += digits(i);
    }
    (b.get(i) == Some(&b'}')).then_some(i + 1)
}
