//! Traefik's router-rule language (v2 and v3 spellings) plus `Cookie`/`CookieRegexp`.
//!
//! [`parse`] turns text into a tree with column positions; [`compile`] checks names, arities,
//! regexes and addresses and yields a [`Matcher`] that requests only read.

mod goregex;
mod matcher;
mod parse;
mod pattern;
#[cfg(test)]
mod tests;

pub use goregex::escape_literal_braces;
pub use matcher::{compile, compile_counting, compile_with, IpNet, Matcher, Syntax};
pub use parse::{parse, Arg, Expr, ParseError};
pub use pattern::Pattern;
