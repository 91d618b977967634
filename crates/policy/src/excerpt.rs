//! Short, escaped excerpts of input for error messages.
//!
//! Errors about a policy go into Envoy's log, `rollgate validate`'s output, the sidecar's log,
//! status files and API answers. A message that quoted a whole value could be 64 KiB long (a
//! variant name up to the string limit, an identifier in a rule), a hundred times over, and
//! could carry control or bidirectional characters into a terminal: fuzzing found errors of
//! 43,310 characters. Every value a message quotes goes through [`excerpt`]; lists of names
//! through [`list`].

use std::fmt::Write;

/// Characters of an excerpt, escapes counted as written.
pub const MAX_EXCERPT_CHARS: usize = 64;

/// Names listed in one message (`known: a, b, …`).
pub const MAX_LISTED: usize = 8;

/// Characters that would change how a terminal or log viewer shows the rest of the line.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Appends `c` as an error message may show it: control and bidirectional characters
/// escaped (`\n`, `\u{202e}`), anything else as is. The one escaping rule of every excerpt
/// (the Rollout's and the sidecar's bound theirs differently).
pub fn escape_into(out: &mut String, c: char) {
    // `escape_unicode`, not `escape_debug`: the latter links Unicode tables into the filter.
    if hidden(c) {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.extend(c.escape_unicode()),
        }
    } else {
        out.push(c);
    }
}

/// `s` as an error message may quote it: control and bidirectional characters escaped
/// (`\n`, `\u{202e}`), at most [`MAX_EXCERPT_CHARS`] characters, `…` where it was cut.
/// Ordinary text, quotes and backslashes included, is unchanged.
pub fn excerpt(s: &str) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let before = out.len();
        escape_into(&mut out, c);
        used += out[before..].chars().count();
        if used > MAX_EXCERPT_CHARS {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

/// Characters of a JSON path in an error: 32 levels of quoted keys could be 2,000.
pub const MAX_PATH_CHARS: usize = 200;

/// `path` shortened in the middle to at most [`MAX_PATH_CHARS`] (about): the start names
/// the section, the end the field (found by fuzzing: nested quoted keys made a path of
/// 1,100 characters).
pub fn path(path: String) -> String {
    let n = path.chars().count();
    if n <= MAX_PATH_CHARS {
        return path;
    }
    let half = MAX_PATH_CHARS / 2;
    let head: String = path.chars().take(half).collect();
    let tail: String = path.chars().skip(n - half).collect();
    format!("{head}…{tail}")
}

/// Names joined by `, `, each an [`excerpt`], the first [`MAX_LISTED`] and a count of the rest.
pub fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut n = 0;
    for name in names {
        if n < MAX_LISTED {
            if n > 0 {
                out.push_str(", ");
            }
            out.push_str(&excerpt(name));
        }
        n += 1;
    }
    if n > MAX_LISTED {
        let _ = write!(out, ", … ({n} in all)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_unchanged_and_long_text_is_cut() {
        assert_eq!(
            excerpt(r#"^/v[0-9]+/ "a" 'b' \d"#),
            r#"^/v[0-9]+/ "a" 'b' \d"#
        );
        let long = "x".repeat(70_000);
        assert_eq!(excerpt(&long), format!("{}…", "x".repeat(64)));
        assert_eq!(excerpt("a\nb\u{202e}c"), "a\\nb\\u{202e}c");
        // Escapes count as written: 70,000 newlines are still at most 64 characters.
        assert!(excerpt(&"\u{202e}".repeat(70_000)).chars().count() <= 65);
    }

    #[test]
    fn lists_show_the_first_names_and_count_the_rest() {
        assert_eq!(list(["a", "b"]), "a, b");
        let names: Vec<String> = (0..300).map(|i| format!("v{i}")).collect();
        assert_eq!(
            list(names.iter().map(String::as_str)),
            "v0, v1, v2, v3, v4, v5, v6, v7, … (300 in all)"
        );
    }
}
