//! Compiled rules: the parsed tree checked against Traefik's matcher set (v2 and v3 spellings)
//! and turned into a structure that a request only reads.

use std::borrow::Cow;
use std::net::IpAddr;

use regex_lite::{Regex, RegexBuilder};

use super::parse::{parse, Arg, Expr, ParseError};
use crate::limits::{MAX_REGEXES, MAX_REGEX_BYTES};
use crate::request::Request;

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Every one holds.
    All(Vec<Matcher>),
    /// At least one holds.
    Any(Vec<Matcher>),
    /// The inner one does not hold.
    Not(Box<Matcher>),
    /// The host (port removed) equals one of these, ignoring ASCII case.
    Host(Vec<Box<[u8]>>),
    /// The host matches the regex.
    HostRegexp(Regex),
    /// The path equals one of these.
    Path(Vec<Box<[u8]>>),
    /// The path starts with one of these.
    PathPrefix(Vec<Box<[u8]>>),
    /// The path matches the regex.
    PathRegexp(Regex),
    /// The method is one of these, ignoring ASCII case.
    Method(Vec<Box<[u8]>>),
    /// Some value of the header equals `value`.
    Header {
        /// Lower-case header name.
        name: Box<[u8]>,
        /// Exact value.
        value: Box<[u8]>,
    },
    /// Some value of the header matches the regex.
    HeaderRegexp {
        /// Lower-case header name.
        name: Box<[u8]>,
        /// The pattern (unanchored, as in Traefik).
        re: Regex,
    },
    /// The query has the key, with this value when one is given.
    Query {
        /// Decoded key.
        key: String,
        /// Decoded value; `None` means presence only.
        value: Option<Box<[u8]>>,
    },
    /// Some value of the query key matches the regex.
    QueryRegexp {
        /// Decoded key.
        key: String,
        /// The pattern.
        re: Regex,
    },
    /// The client address lies in one of these networks.
    ClientIp(Vec<IpNet>),
    /// A cookie of that name exists, with this value when one is given.
    Cookie {
        /// Cookie name (case-sensitive).
        name: Box<[u8]>,
        /// Exact value; `None` means presence only.
        value: Option<Box<[u8]>>,
    },
    /// Some cookie of that name matches the regex.
    CookieRegexp {
        /// Cookie name.
        name: Box<[u8]>,
        /// The pattern.
        re: Regex,
    },
}

/// An IP network (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .trim()
            .parse()
            .map_err(|_| format!("invalid IP address '{}'", crate::excerpt::excerpt(addr_s)))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "invalid prefix length '/{}' (0 to {max})",
                        crate::excerpt::excerpt(p)
                    ))
                }
            },
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in this network. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |n: u32, len: u8| {
            if len == 0 {
                0
            } else {
                n >> (32 - u32::from(len))
            }
        };
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                bits(u32::from(net), self.prefix) == bits(u32::from(ip), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let shift = 128 - u32::from(self.prefix);
                let mask = if shift >= 128 { 0 } else { u128::MAX << shift };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses and compiles a rule. Errors name the column.
pub fn compile(rule: &str) -> Result<Matcher, ParseError> {
    let mut regexes_left = MAX_REGEXES;
    compile_counting(rule, &mut regexes_left)
}

/// [`compile`], taking the regular expressions it builds from `regexes_left`: a policy shares
/// one budget of [`MAX_REGEXES`] among all its rules.
pub fn compile_counting(rule: &str, regexes_left: &mut usize) -> Result<Matcher, ParseError> {
    compile_expr(&parse(rule)?, regexes_left)
}

/// Recurses once per nesting level of the rule, which the parser bounds.
fn compile_expr(e: &Expr, budget: &mut usize) -> Result<Matcher, ParseError> {
    Ok(match e {
        Expr::And(items) => flatten(true, items, budget)?,
        Expr::Or(items) => flatten(false, items, budget)?,
        Expr::Not(a) => Matcher::Not(Box::new(compile_expr(a, budget)?)),
        Expr::Call { name, column, args } => compile_call(name, *column, args, budget)?,
    })
}

/// `All`/`Any` of `items`, splicing in the lists of inner ones of the same kind (`(a || b) ||
/// c` evaluates as `a || b || c`).
fn flatten(and: bool, items: &[Expr], budget: &mut usize) -> Result<Matcher, ParseError> {
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        match (and, compile_expr(e, budget)?) {
            (true, Matcher::All(inner)) | (false, Matcher::Any(inner)) => out.extend(inner),
            (_, m) => out.push(m),
        }
    }
    Ok(if and {
        Matcher::All(out)
    } else {
        Matcher::Any(out)
    })
}

fn err(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

fn arity(
    name: &str,
    column: usize,
    args: &[Arg],
    min: usize,
    max: usize,
) -> Result<(), ParseError> {
    let n = args.len();
    if n >= min && n <= max {
        return Ok(());
    }
    let want = match (min, max) {
        (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
        (a, usize::MAX) => format!("at least {a} argument{}", if a == 1 { "" } else { "s" }),
        (a, b) => format!("{a} to {b} arguments"),
    };
    Err(err(column, format!("{name} takes {want}, got {n}")))
}

fn regex(arg: &Arg, pattern: &str, budget: &mut usize) -> Result<Regex, ParseError> {
    if *budget == 0 {
        return Err(err(
            arg.column,
            format!("more than {MAX_REGEXES} regular expressions in the policy"),
        ));
    }
    *budget -= 1;
    let mut builder = RegexBuilder::new(pattern);
    builder.size_limit(MAX_REGEX_BYTES);
    builder.build().map_err(|e| {
        let first = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        err(
            arg.column,
            format!(
                "invalid regular expression '{}': {}",
                crate::excerpt::excerpt(&arg.value),
                crate::excerpt::excerpt(&first)
            ),
        )
    })
}

fn header_name(arg: &Arg) -> Result<Box<[u8]>, ParseError> {
    let v = &arg.value;
    let ok = !v.is_empty()
        && v.bytes().enumerate().all(|(i, b)| {
            (b.is_ascii_graphic() && !b"\"(),/;<=>?@[\\]{}".contains(&b)) || (b == b':' && i == 0)
        });
    if !ok {
        return Err(err(
            arg.column,
            format!("invalid header name '{}'", crate::excerpt::excerpt(v)),
        ));
    }
    Ok(v.to_ascii_lowercase().into_bytes().into_boxed_slice())
}

fn bytes(arg: &Arg) -> Box<[u8]> {
    arg.value.as_bytes().into()
}

/// Gorilla-mux templates of Traefik v2 (`{name}`, `{name:regex}`) as an anchored regex;
/// `None` when the string holds no template.
fn template_regex(tpl: &str, default: &str, prefix: bool, host: bool) -> Option<String> {
    let mut out = String::from(if host { "(?i)^" } else { "^" });
    let mut found = false;
    let mut rest = tpl;
    while let Some(open) = rest.find('{') {
        let after = rest.get(open + 1..)?;
        let ident_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let starts_ident = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let next = after.get(ident_len..)?.chars().next();
        if !starts_ident || !matches!(next, Some('}') | Some(':')) {
            // A quantifier like `{3}` or a literal brace: not a template variable.
            out.push_str(&regex_lite::escape(rest.get(..=open)?));
            rest = after;
            continue;
        }
        // Balance braces so patterns like `{id:[0-9]{3}}` work.
        let mut depth = 1usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let end = end?;
        let var = after.get(..end)?;
        let pattern = var.split_once(':').map_or(default, |(_, p)| p);
        out.push_str(&regex_lite::escape(rest.get(..open)?));
        out.push_str("(?:");
        out.push_str(pattern);
        out.push(')');
        found = true;
        rest = after.get(end + 1..)?;
    }
    out.push_str(&regex_lite::escape(rest));
    if !prefix {
        out.push('$');
    }
    found.then_some(out)
}

/// `Host`/`Path`/`PathPrefix` args: literal strings, or v2 templates compiled to regexes.
fn literal_or_template(
    args: &[Arg],
    default: &str,
    prefix: bool,
    host: bool,
    literal: fn(Vec<Box<[u8]>>) -> Matcher,
    templated: fn(Regex) -> Matcher,
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    let mut plain = Vec::new();
    let mut any = Vec::new();
    for a in args {
        match template_regex(&a.value, default, prefix, host) {
            Some(re) => any.push(templated(regex(a, &re, budget)?)),
            None if host => {
                plain.push(a.value.to_ascii_lowercase().into_bytes().into_boxed_slice())
            }
            None => plain.push(bytes(a)),
        }
    }
    if !plain.is_empty() {
        any.insert(0, literal(plain));
    }
    Ok(if any.len() == 1 {
        any.remove(0)
    } else {
        Matcher::Any(any)
    })
}

fn compile_call(
    name: &str,
    column: usize,
    args: &[Arg],
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    // Traefik v2 accepted lower-case matcher names too.
    const NAMES: &[&str] = &[
        "Host",
        "HostHeader",
        "HostRegexp",
        "Path",
        "PathPrefix",
        "PathRegexp",
        "Method",
        "Header",
        "Headers",
        "HeaderRegexp",
        "HeadersRegexp",
        "Query",
        "QueryRegexp",
        "ClientIP",
        "Cookie",
        "CookieRegexp",
    ];
    let canonical = NAMES
        .iter()
        .find(|n| **n == name || n.to_ascii_lowercase() == name);
    let Some(&canonical) = canonical else {
        let hint = if name.starts_with("HostSNI") || name == "ALPN" {
            " (a TCP matcher; rollgate routes HTTP)"
        } else {
            ""
        };
        return Err(err(
            column,
            format!("unknown matcher '{}'{hint}", crate::excerpt::excerpt(name)),
        ));
    };
    let first = |i: usize| args.get(i).map(|a| a.value.as_str()).unwrap_or("");
    Ok(match canonical {
        "Host" | "HostHeader" => {
            arity(name, column, args, 1, usize::MAX)?;
            literal_or_template(
                args,
                "[^.]+",
                false,
                true,
                Matcher::Host,
                Matcher::HostRegexp,
                budget,
            )?
        }
        "HostRegexp" => {
            arity(name, column, args, 1, usize::MAX)?;
            let mut any = Vec::new();
            for a in args {
                let pattern = template_regex(&a.value, "[^.]+", false, true)
                    .unwrap_or_else(|| a.value.clone());
                any.push(Matcher::HostRegexp(regex(a, &pattern, budget)?));
            }
            if any.len() == 1 {
                any.remove(0)
            } else {
                Matcher::Any(any)
            }
        }
        "Path" => {
            arity(name, column, args, 1, usize::MAX)?;
            literal_or_template(
                args,
                "[^/]+",
                false,
                false,
                Matcher::Path,
                Matcher::PathRegexp,
                budget,
            )?
        }
        "PathPrefix" => {
            arity(name, column, args, 1, usize::MAX)?;
            literal_or_template(
                args,
                "[^/]+",
                true,
                false,
                Matcher::PathPrefix,
                Matcher::PathRegexp,
                budget,
            )?
        }
        "PathRegexp" => {
            arity(name, column, args, 1, 1)?;
            Matcher::PathRegexp(regex(&args[0], first(0), budget)?)
        }
        "Method" => {
            arity(name, column, args, 1, usize::MAX)?;
            Matcher::Method(args.iter().map(bytes).collect())
        }
        "Header" | "Headers" => {
            arity(name, column, args, 2, 2)?;
            Matcher::Header {
                name: header_name(&args[0])?,
                value: bytes(&args[1]),
            }
        }
        "HeaderRegexp" | "HeadersRegexp" => {
            arity(name, column, args, 2, 2)?;
            Matcher::HeaderRegexp {
                name: header_name(&args[0])?,
                re: regex(&args[1], first(1), budget)?,
            }
        }
        "Query" => compile_query(name, column, args)?,
        "QueryRegexp" => {
            arity(name, column, args, 2, 2)?;
            Matcher::QueryRegexp {
                key: first(0).to_string(),
                re: regex(&args[1], first(1), budget)?,
            }
        }
        "ClientIP" => {
            arity(name, column, args, 1, usize::MAX)?;
            let nets = args
                .iter()
                .map(|a| IpNet::parse(&a.value).map_err(|m| err(a.column, m)))
                .collect::<Result<_, _>>()?;
            Matcher::ClientIp(nets)
        }
        "Cookie" => {
            arity(name, column, args, 1, 2)?;
            Matcher::Cookie {
                name: bytes(&args[0]),
                value: args.get(1).map(bytes),
            }
        }
        "CookieRegexp" => {
            arity(name, column, args, 2, 2)?;
            Matcher::CookieRegexp {
                name: bytes(&args[0]),
                re: regex(&args[1], first(1), budget)?,
            }
        }
        _ => {
            return Err(err(
                column,
                format!("unknown matcher '{}'", crate::excerpt::excerpt(name)),
            ))
        }
    })
}

/// `Query(key)`, `Query(key, value)` (v3) and `Query(k=v, …)` (v2) — any of the v2 pairs.
fn compile_query(name: &str, column: usize, args: &[Arg]) -> Result<Matcher, ParseError> {
    arity(name, column, args, 1, usize::MAX)?;
    let has_eq = |a: &Arg| a.value.contains('=');
    match args {
        [key] if !has_eq(key) => Ok(Matcher::Query {
            key: key.value.clone(),
            value: None,
        }),
        [key, value] if !has_eq(key) => Ok(Matcher::Query {
            key: key.value.clone(),
            value: Some(bytes(value)),
        }),
        _ => {
            let mut any = Vec::new();
            for a in args {
                let Some((k, v)) = a.value.split_once('=') else {
                    return Err(err(
                        a.column,
                        format!(
                            "expected 'key=value' in {name}, got '{}'",
                            crate::excerpt::excerpt(&a.value)
                        ),
                    ));
                };
                any.push(Matcher::Query {
                    key: k.to_string(),
                    value: Some(v.as_bytes().into()),
                });
            }
            Ok(if any.len() == 1 {
                any.remove(0)
            } else {
                Matcher::Any(any)
            })
        }
    }
}

fn text(b: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(b)
}

impl Matcher {
    /// Whether the request satisfies the rule.
    pub fn matches(&self, req: &Request<'_>) -> bool {
        match self {
            Matcher::All(ms) => ms.iter().all(|m| m.matches(req)),
            Matcher::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Matcher::Not(m) => !m.matches(req),
            Matcher::Host(hosts) => {
                let h = req.host();
                let h = h.strip_suffix(b".").unwrap_or(h);
                hosts.iter().any(|x| x.eq_ignore_ascii_case(h))
            }
            Matcher::HostRegexp(re) => re.is_match(&text(req.host())),
            Matcher::Path(paths) => paths.iter().any(|p| **p == *req.path()),
            Matcher::PathPrefix(ps) => ps.iter().any(|p| req.path().starts_with(p)),
            Matcher::PathRegexp(re) => re.is_match(&text(req.path())),
            Matcher::Method(ms) => ms.iter().any(|m| m.eq_ignore_ascii_case(req.method())),
            Matcher::Header { name, value } => req.header_values(name).any(|v| v == &**value),
            Matcher::HeaderRegexp { name, re } => {
                req.header_values(name).any(|v| re.is_match(&text(v)))
            }
            Matcher::Query { key, value: None } => req.query_values(key).next().is_some(),
            Matcher::Query {
                key,
                value: Some(want),
            } => req.query_values(key).any(|v| *v == **want),
            Matcher::QueryRegexp { key, re } => {
                req.query_values(key).any(|v| re.is_match(&text(&v)))
            }
            Matcher::ClientIp(nets) => req
                .client_addr()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Matcher::Cookie { name, value: None } => req.cookie_values(name).next().is_some(),
            Matcher::Cookie {
                name,
                value: Some(want),
            } => req.cookie_values(name).any(|v| v == &**want),
            Matcher::CookieRegexp { name, re } => {
                req.cookie_values(name).any(|v| re.is_match(&text(v)))
            }
        }
    }
}
