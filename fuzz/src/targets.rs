//! The fuzz targets and the properties each input must satisfy beyond "no panic".
//!
//! Every target calls public entry points by function (the acceptance functions, the parsers,
//! the sidecar's connection layer and a real sidecar on loopback), so the harness keeps working while
//! their insides change. A check returns `Ok(signature)`, a short description of what the
//! input did (the loop keeps inputs with a new signature, a stand-in for coverage feedback),
//! or `Err(violation)`.

use std::borrow::Cow;
use std::net::IpAddr;

use fastrand::Rng;
use rollgate::rollout::{accept_rendered, render, PlanStep, RolloutStatus};
use rollgate_policy::breaker::expr::{self, Metric, Stats};
use rollgate_policy::config::accept_config;
use rollgate_policy::limits::MAX_ERRORS;
use rollgate_policy::policy::{accept_policy, parse_spec, PolicyErrors};
use rollgate_policy::request::Request;
use rollgate_policy::rule::{self, ParseError};

use crate::{api, gen, pending};

/// One fuzz target.
pub struct Target {
    /// Its name: the corpus directory `fuzz/corpus/<name>/` and the command-line name.
    pub name: &'static str,
    /// Makes a structured input.
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Runs an input and checks its properties.
    pub check: fn(&[u8]) -> Result<String, String>,
    /// Tokens byte mutation may insert.
    pub dict: &'static [&'static [u8]],
    /// Stack of the thread the checks run on. Parser targets get 256 KiB: the filter runs in a
    /// wasm VM with a 1 MiB shadow stack and under wasmtime's 512 KiB native one, and the
    /// limits promise the deepest allowed input fits in 128 KiB natively (plugin/src/limits.rs),
    /// so an input that needs more is a bound that does not hold. Host targets get the 2 MiB
    /// of a sidecar thread (Rust's default for spawned threads).
    pub stack: usize,
}

const PLUGIN_STACK: usize = 256 << 10;
const HOST_STACK: usize = 2 << 20;

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "policy",
        generate: gen::policy,
        check: check_policy,
        dict: JSON_DICT,
        stack: PLUGIN_STACK,
    },
    Target {
        name: "rule",
        generate: |rng| gen::rule(rng).into_bytes(),
        check: check_rule,
        dict: RULE_DICT,
        stack: PLUGIN_STACK,
    },
    Target {
        name: "pattern",
        generate: gen::pattern,
        check: check_pattern,
        dict: &[
            b".",
            b".*",
            b"^",
            b"$",
            b"\\",
            b"\n",
            b"\xff",
            b"\xef\xbf\xbd",
            b"\0",
        ],
        stack: PLUGIN_STACK,
    },
    Target {
        name: "breaker",
        generate: |rng| gen::breaker(rng).into_bytes(),
        check: check_breaker,
        dict: BREAKER_DICT,
        stack: PLUGIN_STACK,
    },
    Target {
        name: "header_map",
        generate: gen::header_map,
        check: check_header_map,
        dict: &[
            b"\0",
            b"\0\0\0\0",
            b"\xff\xff\xff\xff",
            b":path",
            b"cookie",
            b"host",
        ],
        stack: PLUGIN_STACK,
    },
    Target {
        name: "rls",
        generate: crate::rls::generate,
        check: crate::rls::check,
        dict: &[
            b"\x08\x01",
            b"\x08\x02",
            b"\x12",
            b"\x18",
            b"\x22",
            b"\xff\xff\xff\xff\x0f",
        ],
        stack: PLUGIN_STACK,
    },
    Target {
        name: "rollout",
        generate: gen::rollout,
        check: check_rollout,
        dict: YAML_DICT,
        stack: HOST_STACK,
    },
    Target {
        name: "http",
        generate: gen::http_session,
        check: crate::http::check,
        dict: HTTP_DICT,
        stack: HOST_STACK,
    },
    Target {
        name: "api",
        generate: gen::http_session,
        check: api::check,
        dict: HTTP_DICT,
        stack: HOST_STACK,
    },
];

/// The target named `name`.
pub fn by_name(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

const JSON_DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\"\":",
    b"\"routes\":[{}]",
    b"\"match\":",
    b"\"split\":[",
    b"\"weight\":",
    b"\"variants\":{",
    b"\"source\":{",
    b"\"sticky\":{",
    b"\"expression\":",
    b"[[[[[[[[",
    b"{\"\":{\"\":{",
    b"Host(`a`)",
    b"((((",
    b"\"default\":",
];

const RULE_DICT: &[&[u8]] = &[
    b"(",
    b")",
    b"!",
    b"&&",
    b"||",
    b"`",
    b"\"",
    b",",
    b"\\",
    b"\\u{1F600}",
    b"\\x",
    b"Host(",
    b"HostRegexp(",
    b"PathRegexp(`",
    b"ClientIP(`10.0.0.0/8`)",
    b"Query(`a`)",
    b"{id:[0-9]+}",
    b"Cookie(",
    b"((((((((",
    b"!!!!!!!!",
    b"[",
    b"*",
    b"a{9999}",
    b"(?i)",
];

const BREAKER_DICT: &[&[u8]] = &[
    b"(",
    b")",
    b"!",
    b"&&",
    b"||",
    b">",
    b"<=",
    b"==",
    b"!=",
    b"LatencyAtQuantileMS(",
    b"NetworkErrorRatio()",
    b"ResponseCodeRatio(500,600,0,600)",
    b"RequestThreshold()",
    b"1e309",
    b"-",
    b".",
    b"e",
    b"((((((((",
];

const YAML_DICT: &[&[u8]] = &[
    b"\n",
    b"  ",
    b"- ",
    b": ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"&a ",
    b"*a",
    b"!!str ",
    b"---\n",
    b"\t",
    b"'",
    b"\"",
    b"|\n",
    b"? ",
    b"<<: ",
    b"~",
    b"0x1",
    b"1e999",
    b".inf",
    b"null",
    b"setWeight: ",
    b"match: ",
    b"steps:\n",
    b"variants:\n",
    b"[[[[[[[[",
];

const HTTP_DICT: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b" ",
    b":",
    b"?",
    b"&",
    b"=",
    b"%",
    b"%00",
    b"%ff",
    b"/",
    b"HTTP/1.1",
    b"content-length: ",
    b"connection: close",
    b"transfer-encoding: chunked",
    b"version=",
    b"wait=",
    b"18446744073709551614",
    b"/v1/policies/flask",
    b"/v1/rollouts/flask/promote",
    b"POST ",
    b"GET ",
    b"\r\n\r\n",
    b"origin: ",
    b"authorization: Bearer ",
];

/// Longest one error may be, path and message. A message may quote a short excerpt of what
/// it refuses; a whole value (a 64 KiB string, a list of hundreds of variants) it must not:
/// errors go into logs, status files and API answers.
pub const MAX_ERROR_CHARS: usize = 1024;

/// Messages about the whole document: their position is the document.
const DOCUMENT_LEVEL: &[&str] = &[
    "the document may be at most",
    "the configuration must be a JSON object",
];

/// Whether a message names a position in the text (`line 3 column 9`, `column 12`).
pub fn has_position(message: &str) -> bool {
    ["column ", "line "].iter().any(|w| {
        message
            .match_indices(w)
            .any(|(i, _)| message[i + w.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Every error names its place and is bounded: a field path, a position in the text, or the
/// document as a whole; at most [`MAX_ERROR_CHARS`]; at most [`MAX_ERRORS`] of them plus the
/// "and N more problems" line.
pub fn check_errors<'a>(
    what: &str,
    errors: impl IntoIterator<Item = (&'a str, &'a str)>,
    max_chars: usize,
) -> Result<(), String> {
    let mut n = 0;
    for (path, message) in errors {
        n += 1;
        let located = !path.is_empty()
            || has_position(message)
            || DOCUMENT_LEVEL.iter().any(|d| message.starts_with(d))
            || (message.starts_with("and ") && message.ends_with(" more problems"));
        if !located {
            return Err(format!(
                "{what}: an error names no position: {:?}",
                excerpt(message, 200)
            ));
        }
        let len = path.chars().count() + message.chars().count();
        if len > max_chars {
            return Err(format!(
                "{what}: an error is {len} characters long (at most {max_chars}): {:?}",
                excerpt(&format!("{path}: {message}"), 200)
            ));
        }
    }
    if n == 0 {
        return Err(format!("{what}: refused without any error"));
    }
    if n > MAX_ERRORS + 1 {
        return Err(format!("{what}: {n} errors (at most {})", MAX_ERRORS + 1));
    }
    Ok(())
}

fn policy_errors(what: &str, e: &PolicyErrors) -> Result<(), String> {
    check_errors(
        what,
        e.0.iter().map(|e| (e.path.as_str(), e.message.as_str())),
        MAX_ERROR_CHARS,
    )
}

/// The first `n` characters of `s`, for messages about inputs.
pub fn excerpt(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// A short description of an outcome: numbers and quoted parts blanked, so "unknown variant
/// 'x'" and "unknown variant 'y'" count as one behaviour and `routes[3]` as `routes[#]`.
pub fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '\'' | '`' | '"') => {
                quote = Some(c);
                out.push('Q');
            }
            None if c.is_ascii_digit() => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            None => out.push(c),
        }
        if out.len() > 80 {
            break;
        }
    }
    out
}

fn errors_shape(e: &PolicyErrors) -> String {
    e.0.iter()
        .take(3)
        .map(|e| shape(&format!("{}: {}", e.path, e.message)))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Policy JSON. The filter (`accept_config` in `on_configure`, `accept_policy` for fetched
/// policies), `rollgate validate` and the sidecar (`accept_rendered`, on the policy it is
/// about to serve) must accept exactly the same documents; what the sidecar serves must mean
/// what was accepted; every error names its place.
pub fn check_policy(input: &[u8]) -> Result<String, String> {
    let policy = accept_policy(input);
    let config = accept_config(input);
    let validated = rollgate::validate::validate(input);
    for (what, r) in [
        ("accept_policy", policy.as_ref().err()),
        ("accept_config", config.as_ref().err()),
        ("validate", validated.as_ref().err()),
    ] {
        if let Some(e) = r {
            policy_errors(what, e)?;
        }
    }
    // `rollgate validate` is the filter's configuration check.
    match (&config, &validated) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) if a == b => {}
        _ => {
            return Err(format!(
                "accept_config and validate disagree: {:?} vs {:?}",
                config.as_ref().err().map(|e| excerpt(&e.to_string(), 300)),
                validated
                    .as_ref()
                    .err()
                    .map(|e| excerpt(&e.to_string(), 300))
            ))
        }
    }
    let spec = match parse_spec(input) {
        Ok(spec) => spec,
        Err(e) => {
            // Not even a policy: every path refuses it the same way.
            if policy.as_ref().err() != Some(&e) || config.as_ref().err() != Some(&e) {
                return Err("parse_spec refuses but an acceptance function differs".into());
            }
            return Ok(format!("parse: {}", errors_shape(&e)));
        }
    };
    if spec.source.is_some() {
        // A configuration with `source`: only the filter's configuration takes it.
        return Ok(match &config {
            Ok(c) => format!("config ok source policy={}", c.policy.is_some()),
            Err(e) => format!("config: {}", errors_shape(e)),
        });
    }
    // Without `source`, a configuration is a policy: same verdict, same errors.
    match (&policy, &config) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) if a == b => {}
        _ => {
            return Err(format!(
            "accept_policy and accept_config disagree on a document without source: {:?} vs {:?}",
            policy.as_ref().err().map(|e| excerpt(&e.to_string(), 300)),
            config.as_ref().err().map(|e| excerpt(&e.to_string(), 300))
        ))
        }
    }
    // The sidecar serves `accept_rendered`'s text of the spec it rendered.
    let served = accept_rendered(&spec);
    match (&policy, &served) {
        (Ok(_), Ok(json)) => {
            let back = parse_spec(json.as_bytes())
                .map_err(|e| format!("the served JSON does not parse back: {e}"))?;
            if back != spec {
                return Err(format!(
                    "the served policy means something else: accepted {spec:?}, serves {back:?}"
                ));
            }
            Ok(format!(
                "ok routes={} rl={} cb={}",
                spec.routes.len().min(4),
                spec.rate_limits.len().min(2),
                spec.circuit_breakers.len().min(2)
            ))
        }
        (Err(e), Err(_)) => Ok(format!("policy: {}", errors_shape(e))),
        (Ok(_), Err(e)) => Err(format!(
            "the filter accepts the policy, the sidecar refuses to serve it: {}",
            excerpt(&e.to_string(), 300)
        )),
        (Err(e), Ok(_)) => Err(format!(
            "the filter refuses the policy ({}), the sidecar would serve it",
            excerpt(&e.to_string(), 300)
        )),
    }
}

fn column_in_range(what: &str, text: &str, e: &ParseError) -> Result<(), String> {
    let chars = text.chars().count();
    if e.column == 0 || e.column > chars + 1 {
        return Err(format!(
            "{what}: column {} outside the text (1..={}): {}",
            e.column,
            chars + 1,
            excerpt(&e.message, 200)
        ));
    }
    let len = e.message.chars().count();
    if len > MAX_ERROR_CHARS {
        return Err(format!(
            "{what}: an error is {len} characters long: {:?}",
            excerpt(&e.message, 200)
        ));
    }
    Ok(())
}

fn sample_requests() -> Vec<Vec<(&'static [u8], &'static [u8])>> {
    vec![
        vec![],
        vec![
            (b":authority", b"pro.coding"),
            (b":path", b"/api/v1/items?user=%75&beta=1"),
            (b":method", b"GET"),
            (b"cookie", b"uid=7; tier=gold"),
            (b"location", b"shenzhen"),
            (b"x-forwarded-for", b"10.1.2.3, ::1"),
        ],
        vec![(b"host", b"DEV.CODING:8080"), (b":path", b"\xff\xfe?\x00")],
    ]
}

/// One policy around a rule or an expression: what the filter sees.
fn policy_with(field: &str, text: &str) -> Vec<u8> {
    let t = serde_json::to_string(text).unwrap_or_default();
    match field {
        "match" => format!(
            r#"{{"name":"f","variants":{{"a":"c"}},"routes":[{{"match":{t},"variant":"a"}}]}}"#
        ),
        _ => format!(
            r#"{{"name":"f","variants":{{"a":"c"}},"circuit_breakers":[{{"name":"b","expression":{t}}}]}}"#
        ),
    }
    .into_bytes()
}

/// The policy's verdict on `text` placed at `path` agrees with the parser's, and its error
/// names that path and the parser's column.
fn agrees_in_policy(
    field: &str,
    path: &str,
    text: &str,
    alone: &Result<(), ParseError>,
) -> Result<(), String> {
    let doc = policy_with(field, text);
    let in_policy = accept_policy(&doc);
    match (alone, &in_policy) {
        (Ok(()), Ok(_)) => Ok(()),
        (Err(e), Err(pe)) => {
            let at =
                pe.0.iter()
                    .find(|p| p.path == path)
                    .ok_or_else(|| format!("the policy's errors do not name {path}: {pe}"))?;
            // The rule's own column, unless the JSON layer refused the string first (its
            // own limit, with the JSON's line and column).
            if at.message.starts_with("column ")
                && !at.message.starts_with(&format!("column {}:", e.column))
            {
                return Err(format!(
                    "{path}: the policy reports {:?}, the parser column {}",
                    excerpt(&at.message, 200),
                    e.column
                ));
            }
            Ok(())
        }
        (Ok(()), Err(pe)) => Err(format!(
            "compiles alone, refused in a policy: {}",
            excerpt(&pe.to_string(), 300)
        )),
        (Err(e), Ok(_)) => Err(format!("refused alone ({e}), accepted in a policy")),
    }
}

/// A rule (`match`): parse and compile agree, errors carry a column inside the text, a
/// compiled rule matches any request without panicking, and a policy holding the rule
/// agrees with the rule's own verdict.
pub fn check_rule(input: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(input);
    let parsed = rule::parse(&text);
    let compiled = rule::compile(&text);
    if let (Err(a), Err(b)) = (&parsed, &compiled) {
        if a != b {
            return Err(format!(
                "parse and compile report different errors: {a} vs {b}"
            ));
        }
    }
    if let (Err(_), Ok(_)) = (&parsed, &compiled) {
        return Err("compile accepts what parse refuses".into());
    }
    let sig = match &compiled {
        Ok(m) => {
            for headers in sample_requests() {
                let req = Request::new(headers, Some(IpAddr::from([10, 1, 2, 3])));
                let _ = m.matches(&req);
            }
            "ok".to_string()
        }
        Err(e) => {
            column_in_range("rule", &text, e)?;
            shape(&e.message)
        }
    };
    let verdict = compiled.as_ref().map(|_| ()).map_err(Clone::clone);
    agrees_in_policy("match", "routes[0].match", &text, &verdict)?;
    Ok(sig)
}

/// A rule's regular expression (before the first NUL) and a value (after it): the filter's
/// byte comparisons for plain patterns ([`rule::Pattern`]) answer exactly what regex-lite
/// answers on the value with invalid UTF-8 replaced, as the matcher asked it before them.
pub fn check_pattern(input: &[u8]) -> Result<String, String> {
    let (pattern, text) = match input.iter().position(|&b| b == 0) {
        Some(at) => (&input[..at], input.get(at + 1..).unwrap_or(&[])),
        None => (input, &[][..]),
    };
    // As the matcher compiles it: literal braces escaped, the same size limit.
    let pattern = rule::escape_literal_braces(&String::from_utf8_lossy(pattern));
    let mut builder = regex_lite::RegexBuilder::new(&pattern);
    builder.size_limit(rollgate_policy::limits::MAX_REGEX_BYTES);
    let Ok(re) = builder.build() else {
        return Ok("refused".into());
    };
    let compiled = rule::Pattern::new(&pattern, re.clone());
    let (ours, theirs) = (
        compiled.is_match(text),
        re.is_match(&String::from_utf8_lossy(text)),
    );
    if ours != theirs {
        return Err(format!(
            "pattern {pattern:?} on {text:?}: {ours} by {compiled:?}, {theirs} by regex-lite"
        ));
    }
    let kind = format!("{compiled:?}");
    let kind = kind.split(['(', ' ']).next().unwrap_or("");
    Ok(format!("{kind} {ours}"))
}

struct Figures(f64);

impl Stats for Figures {
    fn metric(&self, _: Metric) -> f64 {
        self.0
    }
}

/// A breaker expression: errors carry a column inside the text, a parsed expression evaluates
/// on any figures, and a policy holding it agrees.
pub fn check_breaker(input: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(input);
    let parsed = expr::parse(&text);
    let sig = match &parsed {
        Ok(c) => {
            for x in [0.0, 1.0, f64::NAN, f64::INFINITY, -1.0] {
                let _ = c.eval(&Figures(x));
            }
            "ok".to_string()
        }
        Err(e) => {
            column_in_range("expression", &text, e)?;
            shape(&e.message)
        }
    };
    let verdict = parsed.as_ref().map(|_| ()).map_err(Clone::clone);
    agrees_in_policy(
        "expression",
        "circuit_breakers[0].expression",
        &text,
        &verdict,
    )?;
    Ok(sig)
}

/// The filter's header-map deserializer: never reads outside the map, agrees with the host's
/// (cpp-host's rules) wherever that one yields headers, and a policy decides any map.
pub fn check_header_map(input: &[u8]) -> Result<String, String> {
    let pairs = Request::parse_header_map(input);
    let host = rollgate::wasmhost::Headers::deserialize(input);
    if !host.is_empty() {
        let theirs: Vec<(&[u8], &[u8])> = host
            .pairs()
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        if theirs != pairs {
            return Err(format!(
                "the filter reads {} headers where the host reads {}",
                pairs.len(),
                theirs.len()
            ));
        }
    }
    let n = pairs.len();
    let policy = decide_policy();
    let req = Request::new(pairs, None);
    let mut ids = 0;
    let d = policy.decide(&req, &mut || {
        ids += 1;
        format!("id{ids}")
    });
    Ok(format!(
        "n={} route={:?} variant={:?}",
        n.min(4),
        d.route,
        d.variant.map(|v| v.name.as_str())
    ))
}

fn decide_policy() -> &'static rollgate_policy::policy::Policy {
    static POLICY: std::sync::OnceLock<rollgate_policy::policy::Policy> =
        std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let doc = br#"{"name":"f","variants":{"s":"cs","c":"cc","d":"cd"},"default":"s",
          "routes":[
            {"match":"HostRegexp(`{sub:[a-z]+}.coding`) && PathRegexp(`^/api/v[0-9]+/`)","variant":"d"},
            {"match":"Cookie(`tier`, `gold`) || QueryRegexp(`user`, `^u`)","split":[{"variant":"c","weight":50}],"sticky":{"cookie":"uid"}},
            {"match":"ClientIP(`10.0.0.0/8`)","split":[{"variant":"c","weight":30}],"sticky":{"source_ip":{"xff_depth":1}}},
            {"split":[{"variant":"c","weight":10}],"sticky":{"assign_cookie":"uid"}}
          ]}"#;
        match accept_policy(doc) {
            Ok(p) => p,
            Err(e) => panic!("the header_map target's policy is refused: {e}"),
        }
    })
}

/// Rollout YAML: bounded errors that name their place, and a Rollout that validates renders,
/// at every step, a policy the filter accepts (else the sidecar would refuse to serve it in
/// the middle of a release, after `validate` said yes).
pub fn check_rollout(input: &[u8]) -> Result<String, String> {
    if !pending::ROLLOUT_ERRORS_LOCATED_AND_SHORT && yaml_depth(input) > 1000 {
        // serde_yaml is quadratic in nesting (2,000 levels take about a second in a debug
        // build): such inputs wait for the bounded parser, or every run would flag them.
        return Ok("deep: waits for the bounded YAML parser".into());
    }
    let text: Cow<'_, str> = String::from_utf8_lossy(input);
    let plan = match rollgate::rollout::load(&text) {
        Ok(plan) => plan,
        Err(e) => {
            if pending::ROLLOUT_ERRORS_LOCATED_AND_SHORT {
                check_errors(
                    "rollout",
                    e.0.iter().map(|e| (e.path.as_str(), e.message.as_str())),
                    MAX_ERROR_CHARS,
                )?;
            }
            return Ok(e
                .0
                .iter()
                .take(3)
                .map(|e| shape(&e.to_string()))
                .collect::<Vec<_>>()
                .join(" | "));
        }
    };
    // The controller reads the same Rollout as JSON from the API server (kube's serde), then
    // plans it with the same function: it must come to the same plan.
    let parsed = rollgate::rollout::validate::parse(&text)
        .map_err(|e| format!("load accepts what parse refuses: {e}"))?;
    let json = serde_json::to_value(&parsed)
        .map_err(|e| format!("an accepted Rollout does not serialize: {e}"))?;
    let from_api: rollgate::rollout::Rollout = serde_json::from_value(json)
        .map_err(|e| format!("the controller cannot read an accepted Rollout back: {e}"))?;
    match rollgate::rollout::validate::plan(&from_api) {
        Ok(p) if p == plan => {}
        Ok(_) => return Err("the controller plans the same Rollout differently".into()),
        Err(e) => {
            return Err(format!(
                "the sidecar accepts the Rollout, the controller refuses it: {}",
                excerpt(&e.to_string(), 300)
            ))
        }
    }
    let mut status = RolloutStatus::default();
    let mut states = vec![status.clone()];
    for s in &plan.steps {
        match s {
            PlanStep::SetWeight(w) => status.canary_weight = *w,
            PlanStep::SetHeaderRoute(r) => status.header_route = r.clone(),
            _ => continue,
        }
        states.push(status.clone());
    }
    status.canary_weight = 100.0;
    states.push(status);
    for (i, st) in states.iter().enumerate() {
        let policy = render(&plan.name, &plan.spec, st);
        if let Err(e) = accept_rendered(&policy) {
            return Err(format!(
                "the Rollout validates, but at step {i} (weight {}, header route {}) the \
                 sidecar refuses its policy: {}",
                st.canary_weight,
                st.header_route.is_some(),
                excerpt(&e.to_string(), 300)
            ));
        }
    }
    Ok(format!("ok steps={}", plan.steps.len().min(6)))
}

/// Nesting of flow collections (`[`, `{`) and of indentation, roughly.
fn yaml_depth(input: &[u8]) -> usize {
    let (mut depth, mut max, mut indent) = (0usize, 0usize, Some(0usize));
    for &b in input {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        indent = match (b, indent) {
            (b'\n', _) => Some(0),
            (b' ' | b'-' | b'\t', Some(n)) => Some(n + 1),
            _ => None,
        };
        max = max.max(depth).max(indent.unwrap_or(0));
    }
    max
}
