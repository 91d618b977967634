//! Bounds on what an error message may repeat of a file.
//!
//! Errors about Rollout files go to the log, the status file beside the rollout and the API
//! (`GET /v1/rollouts`, unauthenticated). A file may hold anything (a key pasted by mistake, a
//! file linked in), so a message quotes at most a short excerpt of a value, control characters
//! escaped, and the whole report is bounded.

/// Characters of a value an error quotes.
pub const MAX_EXCERPT: usize = 80;
/// Characters in one problem's message (its path included).
pub const MAX_MESSAGE: usize = 240;
/// Problems listed in one report; the rest are counted.
pub const MAX_PROBLEMS: usize = 20;

/// At most `max` characters of `s`, control and bidirectional characters escaped as the
/// policy's errors escape them (`\n`, `\u{1b}`, `\u{202e}`), `…` where it was cut.
pub fn bounded(s: &str, max: usize) -> String {
    // One character more than fits tells whether it was cut; nothing past that is looked at.
    let mut head: Vec<char> = Vec::with_capacity(max + 1);
    let mut escaped = String::new();
    'chars: for c in s.chars() {
        escaped.clear();
        rollgate_policy::excerpt::escape_into(&mut escaped, c);
        for e in escaped.chars() {
            head.push(e);
            if head.len() > max {
                break 'chars;
            }
        }
    }
    if head.len() <= max {
        return head.into_iter().collect();
    }
    let mut out: String = head[..max.saturating_sub(1)].iter().collect();
    out.push('…');
    out
}

/// A value as an error quotes it: at most [`MAX_EXCERPT`] characters, escaped.
pub fn excerpt(s: &str) -> String {
    bounded(s, MAX_EXCERPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_and_escapes() {
        assert_eq!(excerpt("Deployment"), "Deployment");
        assert_eq!(excerpt("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), MAX_EXCERPT);
        assert!(e.ends_with('…'));
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abcd", 3), "ab…");
        assert_eq!(bounded("", 3), "");
        assert!(bounded(&"\n".repeat(100), 10).chars().count() <= 10);
        // Bidirectional overrides too, as in the policy's errors.
        assert_eq!(excerpt("a\u{202e}b"), "a\\u{202e}b");
    }
}
