//! Problems found in a policy, each at its JSON path: what decoding and compiling collect
//! ([`Errors`]) and what they answer ([`PolicyErrors`]).

use std::fmt;

use super::spec::PolicySpec;
use crate::limits::{MAX_ERRORS, MAX_NAME_BYTES};
use crate::rule;

/// One problem in a policy, at a JSON path such as `routes[2].split[0].weight`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where: a JSON path, or empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a policy (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

impl PolicyErrors {
    /// Both lists as one, still at most [`MAX_ERRORS`] problems and a count of the rest (found
    /// by fuzzing: a bad `source` beside a policy with 100 problems listed 102).
    pub fn and(self, other: PolicyErrors) -> PolicyErrors {
        let mut errs = Errors::new();
        for e in self.0.into_iter().chain(other.0) {
            let more = e
                .message
                .strip_prefix("and ")
                .and_then(|m| m.strip_suffix(" more problems"))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|_| e.path.is_empty());
            match more {
                Some(n) => errs.total += n,
                None => errs.push(e.path, e.message),
            }
        }
        errs.into_errors()
    }
}

/// Problems collected while decoding or compiling: the first [`MAX_ERRORS`] kept, the rest
/// counted.
pub(super) struct Errors {
    list: Vec<PolicyError>,
    total: usize,
}

impl Errors {
    pub(super) fn new() -> Errors {
        Errors {
            list: Vec::new(),
            total: 0,
        }
    }

    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.total += 1;
        if self.list.len() < MAX_ERRORS {
            self.list.push(PolicyError {
                path: crate::excerpt::path(path.into()),
                message: message.into(),
            });
        }
    }

    /// Problems found so far, kept or not.
    pub(super) fn count(&self) -> usize {
        self.total
    }

    /// Like [`Errors::push`], formatting the message only if it is kept: messages listing
    /// every variant would otherwise cost time for each of thousands of problems.
    pub(super) fn push_with(&mut self, path: impl Into<String>, message: impl FnOnce() -> String) {
        if self.list.len() < MAX_ERRORS {
            self.push(path, message());
        } else {
            self.total += 1;
        }
    }

    /// Compiles the `match` rule at `path` (`…match`) in the syntax its `rule_syntax` names,
    /// else the policy's, else guessed; problems are reported at `match` or `rule_syntax`.
    pub(super) fn rule(
        &mut self,
        spec: &PolicySpec,
        path: &str,
        rule: Option<&str>,
        syntax: Option<&str>,
        regexes_left: &mut usize,
    ) -> Option<rule::Matcher> {
        let at = |field: &str| {
            if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            }
        };
        let (named, where_) = match (syntax, spec.rule_syntax.as_deref()) {
            (Some(s), _) => (Some(s), at("rule_syntax")),
            (None, Some(s)) => (Some(s), "rule_syntax".to_string()),
            (None, None) => (None, String::new()),
        };
        let sx = match named.map(|n| (n, rule::Syntax::from_name(n))) {
            None => None,
            Some((_, Some(sx))) => Some(sx),
            Some((n, None)) => {
                // The policy-wide one is reported once, by the policy itself.
                if syntax.is_some() {
                    self.push(where_, format!("expected `v3` or `v2`, got `{n}`"));
                }
                return None;
            }
        };
        match rule::compile_with(rule?, sx, regexes_left) {
            Ok(m) => Some(m),
            Err(e) => {
                self.push(at("match"), e.to_string());
                None
            }
        }
    }

    /// `Ok(t)` if nothing was found, else every problem kept and a count of the others.
    pub(super) fn finish<T>(self, t: T) -> Result<T, PolicyErrors> {
        if self.total == 0 {
            Ok(t)
        } else {
            Err(self.into_errors())
        }
    }

    pub(super) fn into_errors(mut self) -> PolicyErrors {
        if self.total > self.list.len() {
            let more = self.total - self.list.len();
            self.list.push(PolicyError {
                path: String::new(),
                message: format!("and {more} more problems"),
            });
        }
        PolicyErrors(self.list)
    }

    /// Refuses a name longer than [`MAX_NAME_BYTES`].
    pub(super) fn check_len(&mut self, path: impl Into<String>, value: &str) {
        if value.len() > MAX_NAME_BYTES {
            self.push(
                path,
                format!(
                    "may be at most {MAX_NAME_BYTES} bytes, this one is {}",
                    value.len()
                ),
            );
        }
    }

    /// Refuses more than `max` entries of the list at `path` (naming the first one too many).
    pub(super) fn check_count(&mut self, path: &str, len: usize, max: usize, what: &str) {
        if len > max {
            self.push(
                format!("{path}[{max}]"),
                format!("at most {max} {what} are allowed, this policy has {len}"),
            );
        }
    }
}
