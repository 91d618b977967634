//! Traefik's router-rule language (v2 and v3 spellings) plus `Cookie`/`CookieRegexp`.
//!
//! [`parse`] turns text into a tree with column positions; [`compile`] checks names, arities,
//! regexes and addresses and yields a [`Matcher`] that requests only read.

mod matcher;
mod parse;
#[cfg(test)]
mod tests;

pub use matcher::{compile, compile_counting, IpNet, Matcher};
pub use parse::{parse, Arg, Expr, ParseError};
