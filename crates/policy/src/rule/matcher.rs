//! Compiled rules: the parsed tree checked against Traefik's matcher set (v2 and v3 spellings)
//! and turned into a structure that a request only reads.

use std::net::IpAddr;

use regex_lite::RegexBuilder;

use super::pattern::Pattern;

use super::goregex::escape_literal_braces;
use super::parse::{parse, Arg, Expr, ParseError};
use crate::limits::{MAX_REGEXES, MAX_REGEX_BYTES};
use crate::request::Request;

/// Which of Traefik's rule syntaxes a rule is read with (a router's `ruleSyntax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Traefik v3's matchers (pkg/muxer/http/matcher.go).
    V3,
    /// Traefik v2's matchers as Traefik 3 still reads them (pkg/muxer/http/matcher_v2.go).
    V2,
}

impl Syntax {
    /// `v3` or `v2`, as Traefik spells `ruleSyntax`.
    pub fn from_name(name: &str) -> Option<Syntax> {
        match name {
            "v3" => Some(Syntax::V3),
            "v2" => Some(Syntax::V2),
            _ => None,
        }
    }

    /// `v3` or `v2`.
    pub fn name(self) -> &'static str {
        match self {
            Syntax::V3 => "v3",
            Syntax::V2 => "v2",
        }
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Every one holds.
    All(Vec<Matcher>),
    /// At least one holds.
    Any(Vec<Matcher>),
    /// The inner one does not hold.
    Not(Box<Matcher>),
    /// The canonical host equals one of these (lower-case), a trailing dot ignored on either
    /// side; with `wildcard`, a leading `*` stands for the host's first label (v3).
    Host {
        /// Lower-case host expressions.
        hosts: Vec<Box<[u8]>>,
        /// Whether `*.` expressions are wildcards (v3) or literals (v2).
        wildcard: bool,
    },
    /// The canonical (lower-cased, port removed) host matches the regex (v3).
    HostRegexp(Pattern),
    /// The authority, port removed but case kept, matches the (case-insensitive) template
    /// regex (v2, gorilla/mux `Host`).
    HostTemplate(Pattern),
    /// The routing path equals one of these.
    Path(Vec<Box<[u8]>>),
    /// The routing path starts with one of these.
    PathPrefix(Vec<Box<[u8]>>),
    /// The routing path matches the regex.
    PathRegexp(Pattern),
    /// The method is one of these, exactly (the rule's were upper-cased).
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
        re: Pattern,
    },
    /// Some decoded value of the query key equals `value` (v3; `Query(k)` wants an empty
    /// value).
    Query {
        /// Decoded key.
        key: String,
        /// Decoded value.
        value: Box<[u8]>,
    },
    /// Some value of the query key matches the regex.
    QueryRegexp {
        /// Decoded key.
        key: String,
        /// The pattern.
        re: Pattern,
    },
    /// v2 (gorilla/mux `Queries`): `key=<first value of key>` (empty text when the key is
    /// absent) matches `^key=value$`, `value` a template; an empty value matches any.
    QueryFirst {
        /// Decoded key.
        key: String,
        /// The anchored template regex, or `None` for a plain value compared exactly.
        re: Option<Pattern>,
        /// The plain value (empty: any value).
        value: Box<[u8]>,
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
        re: Pattern,
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

/// Parses and compiles a rule without a stated syntax (see [`compile_with`]). Errors name the
/// column.
pub fn compile(rule: &str) -> Result<Matcher, ParseError> {
    let mut regexes_left = MAX_REGEXES;
    compile_counting(rule, &mut regexes_left)
}

/// [`compile`], taking the regular expressions it builds from `regexes_left`: a policy shares
/// one budget of [`MAX_REGEXES`] among all its rules.
pub fn compile_counting(rule: &str, regexes_left: &mut usize) -> Result<Matcher, ParseError> {
    compile_with(rule, None, regexes_left)
}

/// Parses and compiles a rule in `syntax`; without one, as v3 if it is a valid v3 rule, else
/// as v2, else an error saying what each syntax expected (the v3 error's column first).
pub fn compile_with(
    rule: &str,
    syntax: Option<Syntax>,
    regexes_left: &mut usize,
) -> Result<Matcher, ParseError> {
    let expr = parse(rule)?;
    if let Some(sx) = syntax {
        return compile_expr(&expr, Read { sx, auto: false }, regexes_left);
    }
    let mut left = *regexes_left;
    let v3 = match compile_expr(
        &expr,
        Read {
            sx: Syntax::V3,
            auto: true,
        },
        &mut left,
    ) {
        Ok(m) => {
            *regexes_left = left;
            return Ok(m);
        }
        Err(e) => e,
    };
    let mut left = *regexes_left;
    match compile_expr(
        &expr,
        Read {
            sx: Syntax::V2,
            auto: true,
        },
        &mut left,
    ) {
        Ok(m) => {
            *regexes_left = left;
            Ok(m)
        }
        // A rule that uses the other syntax's matchers is that syntax's: its error says more.
        Err(v2) if v2 == v3 => Err(v3),
        Err(v2) if v2.message.ends_with(OTHER_IS_V3) != v3.message.ends_with(OTHER_IS_V2) => {
            Err(if v3.message.ends_with(OTHER_IS_V2) {
                v2
            } else {
                v3
            })
        }
        Err(v2) => Err(err(
            v3.column,
            format!(
                "as v3: {}; as v2, column {}: {}",
                v3.message, v2.column, v2.message
            ),
        )),
    }
}

const OTHER_IS_V3: &str = "in rule syntax v2 (a v3 matcher)";
const OTHER_IS_V2: &str = "in rule syntax v3 (a v2 matcher)";

/// The syntax a rule is read in, and whether it was guessed (no `rule_syntax`).
#[derive(Clone, Copy)]
struct Read {
    sx: Syntax,
    auto: bool,
}

/// Recurses once per nesting level of the rule, which the parser bounds.
fn compile_expr(e: &Expr, sx: Read, budget: &mut usize) -> Result<Matcher, ParseError> {
    Ok(match e {
        Expr::And(items) => flatten(true, items, sx, budget)?,
        Expr::Or(items) => flatten(false, items, sx, budget)?,
        Expr::Not(a) => Matcher::Not(Box::new(compile_expr(a, sx, budget)?)),
        Expr::Call { name, column, args } => compile_call(name, *column, args, sx, budget)?,
    })
}

/// `All`/`Any` of `items`, splicing in the lists of inner ones of the same kind (`(a || b) ||
/// c` evaluates as `a || b || c`).
fn flatten(and: bool, items: &[Expr], sx: Read, budget: &mut usize) -> Result<Matcher, ParseError> {
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        match (and, compile_expr(e, sx, budget)?) {
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

fn regex(arg: &Arg, pattern: &str, budget: &mut usize) -> Result<Pattern, ParseError> {
    if *budget == 0 {
        return Err(err(
            arg.column,
            format!("more than {MAX_REGEXES} regular expressions in the policy"),
        ));
    }
    *budget -= 1;
    let pattern = escape_literal_braces(pattern);
    let mut builder = RegexBuilder::new(&pattern);
    builder.size_limit(MAX_REGEX_BYTES);
    let re = builder.build().map_err(|e| {
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
    })?;
    Ok(Pattern::new(&pattern, re))
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

/// What a gorilla/mux template is matched against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tpl {
    Host,
    Path,
    Prefix,
    Query,
}

/// gorilla/mux's `newRouteRegexp` (the containous/mux fork Traefik uses, 41b6ec3,
/// regexp.go:28-132): every top-level `{name}` or `{name:pattern}` is a variable (braces are
/// balanced, so `{id:[0-9]{3}}` is one), the rest is literal; hosts are case-insensitive;
/// everything but a prefix is anchored at both ends. `None` when there is no variable and the
/// template is a plain string (hosts always get a regex, as gorilla's does).
fn gorilla_template(tpl: &str, kind: Tpl) -> Result<Option<String>, String> {
    let mut idxs = Vec::new();
    let (mut level, mut open) = (0usize, 0usize);
    for (i, b) in tpl.bytes().enumerate() {
        match b {
            b'{' => {
                level += 1;
                if level == 1 {
                    open = i;
                }
            }
            b'}' => {
                if level == 0 {
                    return Err(format!(
                        "unbalanced braces in '{}'",
                        crate::excerpt::excerpt(tpl)
                    ));
                }
                level -= 1;
                if level == 0 {
                    idxs.push((open, i + 1));
                }
            }
            _ => {}
        }
    }
    if level != 0 {
        return Err(format!(
            "unbalanced braces in '{}'",
            crate::excerpt::excerpt(tpl)
        ));
    }
    if idxs.is_empty() && kind != Tpl::Host {
        return Ok(None);
    }
    let default = match kind {
        Tpl::Query => ".*",
        Tpl::Host => "[^.]+",
        Tpl::Path | Tpl::Prefix => "[^/]+",
    };
    let mut out = String::from(if kind == Tpl::Host { "(?i)^" } else { "^" });
    let mut end = 0;
    for (from, to) in idxs {
        out.push_str(&regex_lite::escape(tpl.get(end..from).unwrap_or("")));
        let inner = tpl.get(from + 1..to - 1).unwrap_or("");
        let (name, pattern) = inner.split_once(':').unwrap_or((inner, default));
        if name.is_empty() || pattern.is_empty() {
            return Err(format!(
                "missing name or pattern in '{}'",
                tpl.get(from..to).unwrap_or("")
            ));
        }
        out.push_str("(?:");
        out.push_str(pattern);
        out.push(')');
        end = to;
    }
    out.push_str(&regex_lite::escape(tpl.get(end..).unwrap_or("")));
    if kind == Tpl::Query && tpl.split_once('=').is_some_and(|(_, v)| v.is_empty()) {
        out.push_str(default);
    }
    if kind != Tpl::Prefix {
        out.push('$');
    }
    Ok(Some(out))
}

fn template(
    arg: &Arg,
    tpl: &str,
    kind: Tpl,
    budget: &mut usize,
) -> Result<Option<Pattern>, ParseError> {
    match gorilla_template(tpl, kind) {
        Ok(Some(pattern)) => Ok(Some(regex(arg, &pattern, budget)?)),
        Ok(None) => Ok(None),
        Err(m) => Err(err(arg.column, m)),
    }
}

/// Traefik's matcher names per syntax (pkg/muxer/http/matcher.go:16-28 and
/// matcher_v2.go:15-26, v3.7, fd5a576df2) plus rollgate's `Cookie` and `CookieRegexp`.
const V3_NAMES: &[&str] = &[
    "ClientIP",
    "Method",
    "Host",
    "HostRegexp",
    "Path",
    "PathRegexp",
    "PathPrefix",
    "Header",
    "HeaderRegexp",
    "Query",
    "QueryRegexp",
    "Cookie",
    "CookieRegexp",
];
const V2_NAMES: &[&str] = &[
    "Host",
    "HostHeader",
    "HostRegexp",
    "ClientIP",
    "Path",
    "PathPrefix",
    "Method",
    "Headers",
    "HeadersRegexp",
    "Query",
    "Cookie",
    "CookieRegexp",
];

/// Whether `written` is one of the spellings Traefik registers for `name`: as is, lower-case,
/// upper-case, and title case of the lower-case name (`Pathprefix`).
// traefik pkg/rules/parser.go:43-46 (v3.7, fd5a576df2)
fn spelled(name: &str, written: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let mut title = lower.clone();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    written == name || written == lower || written == name.to_ascii_uppercase() || written == title
}

fn non_ascii(name: &str, arg: &Arg) -> Result<(), ParseError> {
    if arg.value.is_ascii() {
        return Ok(());
    }
    Err(err(
        arg.column,
        format!(
            "invalid value '{}' for {name}: non-ASCII characters are not allowed",
            arg.value
        ),
    ))
}

fn path_start(arg: &Arg) -> Result<(), ParseError> {
    if arg.value.starts_with('/') {
        return Ok(());
    }
    Err(err(
        arg.column,
        format!(
            "path '{}' does not start with a '/'",
            crate::excerpt::excerpt(&arg.value)
        ),
    ))
}

fn one_or_any(mut ms: Vec<Matcher>, and: bool) -> Matcher {
    if ms.len() == 1 {
        ms.remove(0)
    } else if and {
        Matcher::All(ms)
    } else {
        Matcher::Any(ms)
    }
}

fn compile_call(
    name: &str,
    column: usize,
    args: &[Arg],
    read: Read,
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    let sx = read.sx;
    let (names, others, other) = match sx {
        Syntax::V3 => (V3_NAMES, V2_NAMES, Syntax::V2),
        Syntax::V2 => (V2_NAMES, V3_NAMES, Syntax::V3),
    };
    // Guessing, v2's one-pair `Headers(k, v)` / `HeadersRegexp(k, re)` are read as v3's
    // `Header` / `HeaderRegexp`, which mean the same (matcher_v2.go:173-185, 227-239 and
    // matcher.go:190-213): a v2 header rule, like the seed's, can then stand beside v3-only
    // matchers, as a Rollout's header route stands beside its `match`.
    let alias = match (read.auto, sx, args.len()) {
        (true, Syntax::V3, 2) if spelled("Headers", name) => Some("Header"),
        (true, Syntax::V3, 2) if spelled("HeadersRegexp", name) => Some("HeaderRegexp"),
        _ => None,
    };
    let Some(canonical) = alias.or_else(|| names.iter().find(|n| spelled(n, name)).copied()) else {
        let hint = if others.iter().any(|n| spelled(n, name)) {
            format!(" in rule syntax {} (a {} matcher)", sx.name(), other.name())
        } else if name.starts_with("HostSNI") || name == "ALPN" {
            " (a TCP matcher; rollgate routes HTTP)".to_string()
        } else {
            String::new()
        };
        return Err(err(
            column,
            format!("unknown matcher '{}'{hint}", crate::excerpt::excerpt(name)),
        ));
    };
    // Traefik checks every matcher's arguments before building it: at least one, none empty.
    // traefik pkg/rules/parser.go:117-129, pkg/muxer/http/mux.go:284 (v3.7, fd5a576df2)
    arity(name, column, args, 1, usize::MAX)?;
    if let Some(a) = args.iter().find(|a| a.value.is_empty()) {
        return Err(err(a.column, format!("empty argument to {name}")));
    }
    match sx {
        Syntax::V3 => {
            // Guessing, `Query(`k=v`)` is the v2 pair: a v3 key with `=` matches only a key
            // sent as `k%3Dv`, which no rule written for v3 means.
            if read.auto && canonical.starts_with("Query") && args[0].value.contains('=') {
                return Err(err(
                    args[0].column,
                    format!("a key=value pair in {name} is rule syntax v2"),
                ));
            }
            compile_v3(canonical, name, column, args, budget)
        }
        Syntax::V2 => compile_v2(canonical, name, column, args, budget),
    }
}

/// pkg/muxer/http/matcher.go (v3.7, fd5a576df2), one function per matcher.
fn compile_v3(
    canonical: &str,
    name: &str,
    column: usize,
    args: &[Arg],
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    let n = |min, max| arity(name, column, args, min, max);
    let a0 = &args[0];
    Ok(match canonical {
        "ClientIP" => {
            n(1, 1)?;
            Matcher::ClientIp(vec![IpNet::parse(&a0.value).map_err(|m| err(a0.column, m))?])
        }
        "Method" => {
            n(1, 1)?;
            Matcher::Method(vec![a0.value.to_ascii_uppercase().into_bytes().into()])
        }
        "Host" => {
            n(1, 1)?;
            if a0.value == "*" {
                return Ok(Matcher::All(Vec::new()));
            }
            non_ascii(name, a0)?;
            Matcher::Host {
                hosts: vec![a0.value.to_ascii_lowercase().into_bytes().into()],
                wildcard: true,
            }
        }
        "HostRegexp" => {
            n(1, 1)?;
            non_ascii(name, a0)?;
            Matcher::HostRegexp(regex(a0, &a0.value, budget)?)
        }
        "Path" => {
            n(1, 1)?;
            path_start(a0)?;
            Matcher::Path(vec![bytes(a0)])
        }
        "PathPrefix" => {
            n(1, 1)?;
            path_start(a0)?;
            Matcher::PathPrefix(vec![bytes(a0)])
        }
        "PathRegexp" => {
            n(1, 1)?;
            Matcher::PathRegexp(regex(a0, &a0.value, budget)?)
        }
        "Header" => {
            n(2, 2)?;
            Matcher::Header {
                name: header_name(a0)?,
                value: bytes(&args[1]),
            }
        }
        "HeaderRegexp" => {
            n(2, 2)?;
            Matcher::HeaderRegexp {
                name: header_name(a0)?,
                re: regex(&args[1], &args[1].value, budget)?,
            }
        }
        "Query" | "QueryRegexp" => {
            n(1, 2)?;
            match args.get(1) {
                Some(re) if canonical == "QueryRegexp" => Matcher::QueryRegexp {
                    key: a0.value.clone(),
                    re: regex(re, &re.value, budget)?,
                },
                value => Matcher::Query {
                    key: a0.value.clone(),
                    value: value.map(bytes).unwrap_or_default(),
                },
            }
        }
        _ => cookie(canonical, name, column, args, budget)?,
    })
}

/// pkg/muxer/http/matcher_v2.go (v3.7, fd5a576df2): gorilla/mux routes for paths, host
/// regexps, methods, headers and queries.
fn compile_v2(
    canonical: &str,
    name: &str,
    column: usize,
    args: &[Arg],
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    Ok(match canonical {
        "Host" | "HostHeader" => {
            for a in args {
                non_ascii(name, a)?;
            }
            Matcher::Host {
                hosts: args
                    .iter()
                    .map(|a| a.value.to_ascii_lowercase().into_bytes().into())
                    .collect(),
                wildcard: false,
            }
        }
        "HostRegexp" => {
            let mut any = Vec::new();
            for a in args {
                non_ascii(name, a)?;
                if let Some(re) = template(a, &a.value, Tpl::Host, budget)? {
                    any.push(Matcher::HostTemplate(re));
                }
            }
            one_or_any(any, false)
        }
        "ClientIP" => Matcher::ClientIp(
            args.iter()
                .map(|a| IpNet::parse(&a.value).map_err(|m| err(a.column, m)))
                .collect::<Result<_, _>>()?,
        ),
        "Path" | "PathPrefix" => {
            let kind = if canonical == "Path" {
                Tpl::Path
            } else {
                Tpl::Prefix
            };
            let mut plain = Vec::new();
            let mut any = Vec::new();
            for a in args {
                path_start(a)?;
                match template(a, &a.value, kind, budget)? {
                    Some(re) => any.push(Matcher::PathRegexp(re)),
                    None => plain.push(bytes(a)),
                }
            }
            if !plain.is_empty() {
                any.insert(
                    0,
                    if kind == Tpl::Path {
                        Matcher::Path(plain)
                    } else {
                        Matcher::PathPrefix(plain)
                    },
                );
            }
            one_or_any(any, false)
        }
        "Method" => Matcher::Method(
            args.iter()
                .map(|a| a.value.to_ascii_uppercase().into_bytes().into())
                .collect(),
        ),
        "Headers" | "HeadersRegexp" => {
            if !args.len().is_multiple_of(2) {
                return Err(err(
                    column,
                    format!(
                        "{name} takes pairs of arguments (name, value), got {}",
                        args.len()
                    ),
                ));
            }
            // gorilla/mux keeps the pairs in a map keyed by the name as written (route.go:248,
            // mux.go:495-505): a name repeated in the same spelling keeps its last value.
            let mut pairs: Vec<(&str, Box<[u8]>, &Arg)> = Vec::new();
            for pair in args.chunks(2) {
                let (k, v) = (&pair[0], &pair[1]);
                let name = header_name(k)?;
                pairs.retain(|(seen, _, _)| *seen != k.value);
                pairs.push((&k.value, name, v));
            }
            let mut all = Vec::new();
            for (_, k, v) in pairs {
                all.push(if canonical == "Headers" {
                    Matcher::Header {
                        name: k,
                        value: bytes(v),
                    }
                } else {
                    Matcher::HeaderRegexp {
                        name: k,
                        re: regex(v, &v.value, budget)?,
                    }
                });
            }
            one_or_any(all, true)
        }
        "Query" => query_v2(name, column, args, budget)?,
        _ => cookie(canonical, name, column, args, budget)?,
    })
}

/// `Query("a=1", "b=2")`: the arguments split at their first `=` and taken as key, value
/// pairs, every pair required (gorilla/mux `Queries`).
// traefik pkg/muxer/http/matcher_v2.go:187-204 (v3.7, fd5a576df2)
fn query_v2(
    name: &str,
    column: usize,
    args: &[Arg],
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    let mut parts: Vec<(&str, &Arg)> = Vec::new();
    for a in args {
        match a.value.split_once('=') {
            Some((k, v)) => parts.extend([(k, a), (v, a)]),
            None => parts.push((&a.value, a)),
        }
    }
    if !parts.len().is_multiple_of(2) {
        use crate::excerpt::{excerpt, MAX_LISTED};
        let shown: Vec<String> = args
            .iter()
            .take(MAX_LISTED)
            .map(|a| format!("'{}'", excerpt(&a.value)))
            .collect();
        let more = if args.len() > MAX_LISTED {
            format!(", … ({} in all)", args.len())
        } else {
            String::new()
        };
        return Err(err(
            column,
            format!(
                "{name} takes key=value pairs, got {} parts: {}{more}",
                parts.len(),
                shown.join(", ")
            ),
        ));
    }
    let mut all = Vec::new();
    for pair in parts.chunks(2) {
        let ((k, at), (v, _)) = (pair[0], pair[1]);
        let tpl = format!("{k}={v}");
        all.push(Matcher::QueryFirst {
            key: k.to_string(),
            re: template(at, &tpl, Tpl::Query, budget)?,
            value: v.as_bytes().into(),
        });
    }
    Ok(one_or_any(all, true))
}

/// rollgate's extensions, the same in both syntaxes.
fn cookie(
    canonical: &str,
    name: &str,
    column: usize,
    args: &[Arg],
    budget: &mut usize,
) -> Result<Matcher, ParseError> {
    let a0 = &args[0];
    Ok(match canonical {
        "Cookie" => {
            arity(name, column, args, 1, 2)?;
            Matcher::Cookie {
                name: bytes(a0),
                value: args.get(1).map(bytes),
            }
        }
        "CookieRegexp" => {
            arity(name, column, args, 2, 2)?;
            Matcher::CookieRegexp {
                name: bytes(a0),
                re: regex(&args[1], &args[1].value, budget)?,
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

/// Traefik's host comparison: equal ignoring ASCII case, or, for a `*` expression, equal once
/// the domain's first label is replaced by `*`.
// traefik pkg/muxer/muxer.go:23-31 (v3.7, fd5a576df2)
fn domain_match(domain: &[u8], expr: &[u8], wildcard: bool) -> bool {
    if wildcard && expr.first() == Some(&b'*') {
        let rest = domain
            .iter()
            .position(|&b| b == b'.')
            .and_then(|dot| domain.get(dot..))
            .unwrap_or(&[]);
        return expr.len() == rest.len() + 1
            && expr.get(1..).is_some_and(|e| e.eq_ignore_ascii_case(rest));
    }
    domain.eq_ignore_ascii_case(expr)
}

/// A trailing dot is ignored on the rule's side and on the request's.
// traefik pkg/muxer/http/matcher.go:93-116, matcher_v2.go:111-130 (v3.7, fd5a576df2)
fn host_matches(host: &[u8], expr: &[u8], wildcard: bool) -> bool {
    domain_match(host, expr, wildcard)
        || expr
            .strip_suffix(b".")
            .is_some_and(|e| domain_match(host, e, wildcard))
        || host
            .strip_suffix(b".")
            .is_some_and(|h| domain_match(h, expr, wildcard))
}

impl Matcher {
    /// Whether the request satisfies the rule.
    pub fn matches(&self, req: &Request<'_>) -> bool {
        match self {
            Matcher::All(ms) => ms.iter().all(|m| m.matches(req)),
            Matcher::Any(ms) => ms.iter().any(|m| m.matches(req)),
            Matcher::Not(m) => !m.matches(req),
            Matcher::Host { hosts, wildcard } => {
                let h = req.canonical_host();
                !h.is_empty() && hosts.iter().any(|x| host_matches(&h, x, *wildcard))
            }
            Matcher::HostRegexp(re) => re.is_match(&req.canonical_host()),
            Matcher::HostTemplate(re) => re.is_match(req.authority_host()),
            Matcher::Path(paths) => req
                .routing_path()
                .is_some_and(|path| paths.iter().any(|p| **p == *path)),
            Matcher::PathPrefix(ps) => req
                .routing_path()
                .is_some_and(|path| ps.iter().any(|p| path.starts_with(p))),
            Matcher::PathRegexp(re) => req.routing_path().is_some_and(|path| re.is_match(path)),
            Matcher::Method(ms) => ms.iter().any(|m| **m == *req.method()),
            Matcher::Header { name, value } => req.header_values(name).any(|v| v == &**value),
            Matcher::HeaderRegexp { name, re } => req.header_values(name).any(|v| re.is_match(v)),
            Matcher::Query { key, value } => req.query_values(key).any(|v| *v == **value),
            Matcher::QueryRegexp { key, re } => req.query_values(key).any(|v| re.is_match(&v)),
            Matcher::QueryFirst { key, re, value } => {
                let first = req.query_values(key).next();
                match (re, first) {
                    (Some(re), Some(v)) => {
                        let mut kv = key.as_bytes().to_vec();
                        kv.push(b'=');
                        kv.extend_from_slice(&v);
                        re.is_match(&kv)
                    }
                    (Some(re), None) => re.is_match(b""),
                    (None, Some(v)) => value.is_empty() || *v == **value,
                    (None, None) => false,
                }
            }
            Matcher::ClientIp(nets) => req
                .client_addr()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Matcher::Cookie { name, value: None } => req.cookie_values(name).next().is_some(),
            Matcher::Cookie {
                name,
                value: Some(want),
            } => req.cookie_values(name).any(|v| v == &**want),
            Matcher::CookieRegexp { name, re } => req.cookie_values(name).any(|v| re.is_match(v)),
        }
    }
}
