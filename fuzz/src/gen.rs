//! Structure-aware generators: inputs that get past the first syntax check, so the fuzzer
//! spends its time in validation and compilation rather than on "expected a value".
//!
//! Each draws mostly valid parts with a few wrong ones mixed in (a wrong type, an unknown
//! field, a value just past a limit), and now and then a burst of depth or length around the
//! bounds of [`rollgate_policy::limits`].

use fastrand::Rng;
use rollgate_policy::limits::{MAX_NAME_BYTES, MAX_RULE_ARGS, MAX_RULE_DEPTH, MAX_RULE_TERMS};
use serde_json::{json, Map, Value};

/// Picks one of `items`.
pub fn pick<'a, T: ?Sized>(rng: &mut Rng, items: &[&'a T]) -> &'a T {
    items[rng.usize(..items.len())]
}

/// True with probability `percent` / 100.
pub fn chance(rng: &mut Rng, percent: u32) -> bool {
    rng.u32(..100) < percent
}

/// A length that is usually small and now and then sits on either side of `limit`.
fn around(rng: &mut Rng, small: usize, limit: usize) -> usize {
    match rng.u32(..100) {
        0..=93 => rng.usize(..=small),
        94..=96 => limit,
        _ => limit + 1,
    }
}

/// A short string: names, hosts, header values; sometimes odd bytes.
pub fn word(rng: &mut Rng) -> String {
    match rng.u32(..20) {
        0 => String::new(),
        1 => "x".repeat(around(rng, 8, MAX_NAME_BYTES)),
        2 => pick(
            rng,
            &["é", "\u{0}", "\n", "\"", "`", "\\", "日本", "\u{202e}", " "],
        )
        .to_string(),
        3 => format!("{}.{}", word_plain(rng), word_plain(rng)),
        _ => word_plain(rng),
    }
}

fn word_plain(rng: &mut Rng) -> String {
    pick(
        rng,
        &[
            "stable",
            "canary",
            "dev",
            "flask",
            "pro.coding",
            "dev.coding",
            "x-user-id",
            "uid",
            "location",
            "shenzhen",
            "GET",
            "POST",
            "/api",
            "/",
            "a",
            "b",
            "k8s-flask",
            "10.0.0.0/8",
            "::1",
            "127.0.0.1",
            "^/v[0-9]+/",
            "{id:[0-9]+}",
            "*.coding",
            "(",
        ],
    )
    .to_string()
}

/// A quoted rule argument: Go raw string (backticks) or interpreted string with escapes.
fn rule_arg(rng: &mut Rng) -> String {
    let w = word(rng);
    match rng.u32(..10) {
        0..=5 if !w.contains('`') => format!("`{w}`"),
        6 => format!("\"{}\\t\\u00e9\\x41\"", w.replace(['"', '\\'], "")),
        7 => format!("\"{}", w),
        _ => format!("\"{}\"", w.replace(['"', '\\'], "")),
    }
}

const MATCHERS: &[&str] = &[
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
    "HostSNI",
    "ALPN",
    "Nope",
];

fn rule_call(rng: &mut Rng) -> String {
    let name = pick(rng, MATCHERS);
    let n = match rng.u32(..50) {
        0 => around(rng, 4, MAX_RULE_ARGS),
        _ => rng.usize(..=3),
    };
    let args: Vec<String> = (0..n).map(|_| rule_arg(rng)).collect();
    let sep = pick(rng, &[", ", ",", " , "]);
    format!("{name}({})", args.join(sep))
}

/// A rule in Traefik's syntax, `depth` levels of nesting left.
pub fn rule(rng: &mut Rng) -> String {
    match rng.u32(..40) {
        // Nesting right at the bound: the only recursion in parsing, compiling and matching.
        0 => {
            let d = around(rng, MAX_RULE_DEPTH, MAX_RULE_DEPTH);
            format!("{}{}{}", "(".repeat(d), rule_call(rng), ")".repeat(d))
        }
        1 => format!(
            "{}{}",
            "!".repeat(around(rng, 8, MAX_RULE_DEPTH)),
            rule_call(rng)
        ),
        2 => {
            let n = around(rng, 16, MAX_RULE_TERMS);
            vec!["Method(`GET`)"; n.max(1)].join(pick(rng, &[" || ", " && "]))
        }
        _ => rule_expr(rng, 3),
    }
}

fn rule_expr(rng: &mut Rng, depth: u32) -> String {
    if depth == 0 || chance(rng, 40) {
        return rule_call(rng);
    }
    match rng.u32(..5) {
        0 => format!("!{}", rule_expr(rng, depth - 1)),
        1 => format!("({})", rule_expr(rng, depth - 1)),
        2 => format!(
            "{} && {}",
            rule_expr(rng, depth - 1),
            rule_expr(rng, depth - 1)
        ),
        3 => format!(
            "{} || {}",
            rule_expr(rng, depth - 1),
            rule_expr(rng, depth - 1)
        ),
        _ => format!(
            "{}{}{}",
            rule_expr(rng, depth - 1),
            pick(rng, &[" & ", " | ", " ", "&&", " &&", ""]),
            rule_expr(rng, depth - 1)
        ),
    }
}

fn number(rng: &mut Rng) -> String {
    match rng.u32(..12) {
        0 => pick(
            rng,
            &[
                "1e309", "-0", "NaN", "inf", "0x10", "1.", ".5", "1e-400", "00",
            ],
        )
        .into(),
        1 => u64::MAX.to_string(),
        2 => format!("{}", rng.f64() * 1000.0),
        3 => format!("-{}", rng.u32(..1000)),
        _ => rng.u32(..600).to_string(),
    }
}

fn breaker_term(rng: &mut Rng) -> String {
    let f = match rng.u32(..5) {
        0 => format!("LatencyAtQuantileMS({})", number(rng)),
        1 => "NetworkErrorRatio()".to_string(),
        2 => format!(
            "ResponseCodeRatio({}, {}, {}, {})",
            number(rng),
            number(rng),
            number(rng),
            number(rng)
        ),
        3 => "RequestThreshold()".to_string(),
        _ => format!("{}({})", word_plain(rng), number(rng)),
    };
    let op = pick(rng, &[">", ">=", "<", "<=", "==", "!=", "=", "=>"]);
    if chance(rng, 20) {
        format!("{} {op} {f}", number(rng))
    } else {
        format!("{f} {op} {}", number(rng))
    }
}

/// A breaker expression (Traefik's functions and comparisons, with `!`).
pub fn breaker(rng: &mut Rng) -> String {
    match rng.u32(..30) {
        0 => {
            let d = around(rng, MAX_RULE_DEPTH, MAX_RULE_DEPTH);
            format!("{}{}{}", "(".repeat(d), breaker_term(rng), ")".repeat(d))
        }
        1 => {
            let n = around(rng, 8, 3300);
            vec!["NetworkErrorRatio() > 0.5"; n.max(1)].join(" || ")
        }
        _ => breaker_expr(rng, 3),
    }
}

fn breaker_expr(rng: &mut Rng, depth: u32) -> String {
    if depth == 0 || chance(rng, 40) {
        return breaker_term(rng);
    }
    let a = breaker_expr(rng, depth - 1);
    match rng.u32(..4) {
        0 => format!("!({a})"),
        1 => format!("({a})"),
        2 => format!("{a} && {}", breaker_expr(rng, depth - 1)),
        _ => format!("{a} || {}", breaker_expr(rng, depth - 1)),
    }
}

fn duration(rng: &mut Rng) -> Value {
    match rng.u32(..12) {
        0 => json!(5),
        1 => json!(""),
        2 => json!(pick(
            rng,
            &["0s", "-1s", "1h1h", "99999999999h", "1.5s", "bogus", "1"]
        )),
        _ => json!(format!(
            "{}{}",
            rng.u32(1..500),
            pick(rng, &["ms", "s", "m", "h", "us", "ns"])
        )),
    }
}

/// Sometimes a value of the wrong type instead of `v`.
fn maybe_wrong(rng: &mut Rng, v: Value) -> Value {
    match rng.u32(..40) {
        0 => Value::Null,
        1 => json!(1.5),
        2 => json!([v]),
        3 => json!({"": v}),
        4 => json!(true),
        _ => v,
    }
}

fn variant_name(rng: &mut Rng, variants: &[String]) -> Value {
    if variants.is_empty() || chance(rng, 8) {
        json!(word(rng))
    } else {
        json!(variants[rng.usize(..variants.len())])
    }
}

fn sticky(rng: &mut Rng) -> Value {
    let mut m = Map::new();
    match rng.u32(..6) {
        0 => m.insert("header".into(), json!(word(rng))),
        1 => m.insert("cookie".into(), json!(word(rng))),
        2 => m.insert("query".into(), json!(word(rng))),
        3 => m.insert("source_ip".into(), json!({"xff_depth": rng.u32(..5)})),
        4 => m.insert("assign_cookie".into(), json!(word(rng))),
        _ => None,
    };
    if chance(rng, 30) {
        m.insert("salt".into(), json!(word(rng)));
    }
    if chance(rng, 5) {
        m.insert(word(rng), json!(1));
    }
    Value::Object(m)
}

fn route(rng: &mut Rng, variants: &[String]) -> Value {
    let mut m = Map::new();
    if chance(rng, 85) {
        let r = json!(rule(rng));
        m.insert("match".into(), maybe_wrong(rng, r));
    }
    if chance(rng, 50) {
        m.insert("variant".into(), variant_name(rng, variants));
    } else {
        let n = rng.usize(..4);
        let split: Vec<Value> = (0..n)
            .map(|_| {
                let variant = variant_name(rng, variants);
                let w = json!(rng.f64() * 60.0);
                json!({"variant": variant, "weight": maybe_wrong(rng, w)})
            })
            .collect();
        m.insert("split".into(), json!(split));
        if chance(rng, 70) {
            m.insert("sticky".into(), sticky(rng));
        }
        if chance(rng, 40) {
            m.insert("default".into(), variant_name(rng, variants));
        }
    }
    if chance(rng, 3) {
        m.insert(word(rng), json!(null));
    }
    Value::Object(m)
}

/// A policy document (`source` now and then, which makes it a filter configuration).
pub fn policy_value(rng: &mut Rng) -> Value {
    let n = match rng.u32(..40) {
        0 => around(rng, 4, 256),
        _ => rng.usize(..4),
    };
    let variants: Vec<String> = (0..n).map(|_| word(rng)).collect();
    let mut vm = Map::new();
    for v in &variants {
        vm.insert(v.clone(), json!(word(rng)));
    }
    let mut m = Map::new();
    if chance(rng, 95) {
        let w = json!(word(rng));
        m.insert("name".into(), maybe_wrong(rng, w));
    }
    if chance(rng, 95) {
        m.insert("variants".into(), maybe_wrong(rng, Value::Object(vm)));
    }
    if chance(rng, 60) {
        m.insert("default".into(), variant_name(rng, &variants));
    }
    let routes = match rng.u32(..40) {
        0 => around(rng, 4, 1024),
        _ => rng.usize(..5),
    };
    let routes: Vec<Value> = (0..routes).map(|_| route(rng, &variants)).collect();
    m.insert("routes".into(), json!(routes));
    for h in ["cluster_header", "variant_header"] {
        if chance(rng, 10) {
            m.insert(h.into(), json!(word(rng)));
        }
    }
    if chance(rng, 10) {
        m.insert("expose_variant".into(), maybe_wrong(rng, json!(true)));
    }
    if chance(rng, 25) {
        let rl: Vec<Value> = (0..rng.usize(1..3))
            .map(|_| {
                let name = word(rng);
                let average = json!(number(rng).parse::<f64>().unwrap_or(1.0));
                let average = maybe_wrong(rng, average);
                let period = duration(rng);
                let mut r = json!({"name": name, "average": average, "period": period});
                if chance(rng, 50) {
                    r["match"] = json!(rule(rng));
                }
                if chance(rng, 50) {
                    r["burst"] = json!(rng.u64(..2000));
                }
                if chance(rng, 40) {
                    r["source"] = pick(
                        rng,
                        &[
                            &json!({"header": "x-tenant"}),
                            &json!({"host": {}}),
                            &json!({"client_ip": {"xff_depth": 1}}),
                            &json!({"cookie": ""}),
                            &json!({}),
                        ],
                    )
                    .clone();
                }
                r
            })
            .collect();
        m.insert("rate_limits".into(), json!(rl));
    }
    if chance(rng, 25) {
        let cb: Vec<Value> = (0..rng.usize(1..3))
            .map(|_| {
                let mut b = json!({"name": word(rng), "expression": breaker(rng)});
                for f in [
                    "check_period",
                    "fallback_duration",
                    "recovery_duration",
                    "window",
                ] {
                    if chance(rng, 40) {
                        b[f] = duration(rng);
                    }
                }
                if chance(rng, 40) {
                    b["variant"] = variant_name(rng, &variants);
                }
                if chance(rng, 20) {
                    b["fallback_variant"] = variant_name(rng, &variants);
                }
                if chance(rng, 20) {
                    b["response_code"] = json!(rng.u32(..700));
                }
                b
            })
            .collect();
        m.insert("circuit_breakers".into(), json!(cb));
    }
    if chance(rng, 12) {
        m.insert(
            "source".into(),
            json!({"cluster": word(rng), "path": pick(rng, &["/v1/policies/flask", "x", "/p?q", ""]),
                   "poll": duration(rng), "wait": duration(rng)}),
        );
    }
    if chance(rng, 4) {
        m.insert(word(rng), json!(word(rng)));
    }
    Value::Object(m)
}

/// A policy document as bytes, sometimes deeply nested or with duplicate keys.
pub fn policy(rng: &mut Rng) -> Vec<u8> {
    if chance(rng, 40) {
        return serde_json::to_vec(&valid_policy_value(rng)).unwrap_or_default();
    }
    match rng.u32(..30) {
        0 => {
            let d = around(rng, 40, 100_000);
            format!(r#"{{"name":{}1{}}}"#, "[".repeat(d), "]".repeat(d)).into_bytes()
        }
        1 => br#"{"name":"a","name":"b","variants":{"a":"c","a":"d"}}"#.to_vec(),
        _ => {
            let v = policy_value(rng);
            if chance(rng, 50) {
                serde_json::to_vec_pretty(&v).unwrap_or_default()
            } else {
                serde_json::to_vec(&v).unwrap_or_default()
            }
        }
    }
}

fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A Rollout YAML document.
pub fn rollout(rng: &mut Rng) -> Vec<u8> {
    if chance(rng, 40) {
        return valid_rollout(rng);
    }
    if chance(rng, 3) {
        // serde_yaml takes 35 s at 100,000 levels: that depth waits for the new parser.
        let deep = if crate::pending::ROLLOUT_ERRORS_LOCATED_AND_SHORT {
            100_000
        } else {
            5_000
        };
        let d = around(rng, 40, deep);
        return format!("apiVersion: {}1{}\n", "[".repeat(d), "]".repeat(d)).into_bytes();
    }
    let variants: Vec<String> = (0..rng.usize(1..4)).map(|_| word_plain(rng)).collect();
    let mut y = String::new();
    y.push_str(pick(
        rng,
        &[
            "apiVersion: rollgate.dev/v1alpha1\n",
            "apiVersion: rollgate.dev/v1alpha1\n",
            "apiVersion: v1\n",
            "",
        ],
    ));
    y.push_str(pick(
        rng,
        &["kind: Rollout\n", "kind: Rollout\n", "kind: Pod\n", ""],
    ));
    let name = if chance(rng, 85) {
        "flask".to_string()
    } else {
        word(rng)
    };
    y.push_str(&format!("metadata:\n  name: {}\n", yaml_str(&name)));
    y.push_str("spec:\n  variants:\n");
    for v in &variants {
        y.push_str(&format!("    {}: {}\n", yaml_str(v), yaml_str(&word(rng))));
    }
    let v = |rng: &mut Rng| yaml_str(&variants[rng.usize(..variants.len())]);
    y.push_str(&format!("  stableVariant: {}\n", v(rng)));
    y.push_str(&format!("  canaryVariant: {}\n", v(rng)));
    // Now and then a match near its bounds, so a header route joined to it crosses them.
    let joined = chance(rng, 4);
    if joined {
        let m = if chance(rng, 50) {
            vec!["Host(`a`)"; rng.usize(2000..4096)].join(" || ")
        } else {
            let d = rng.usize(28..=MAX_RULE_DEPTH);
            format!("{}Host(`a`) || Host(`b`){}", "(".repeat(d), ")".repeat(d))
        };
        y.push_str(&format!("  match: {}\n", yaml_str(&m)));
    } else if chance(rng, 70) {
        y.push_str(&format!("  match: {}\n", yaml_str(&rule(rng))));
    }
    if chance(rng, 30) {
        y.push_str("  sticky:\n    header: x-user-id\n");
    }
    if chance(rng, 30) {
        y.push_str(&format!(
            "  routes:\n    - match: {}\n      variant: {}\n",
            yaml_str(&rule(rng)),
            v(rng)
        ));
    }
    if chance(rng, 20) {
        y.push_str(&format!(
            "  rateLimits:\n    - name: {}\n      average: {}\n      period: 1s\n",
            yaml_str(&word(rng)),
            number(rng)
        ));
    }
    if chance(rng, 20) {
        y.push_str(&format!(
            "  circuitBreakers:\n    - name: cb\n      variant: {}\n      expression: {}\n",
            v(rng),
            yaml_str(&breaker(rng))
        ));
    }
    y.push_str("  strategy:\n    steps:\n");
    if joined {
        let h = vec!["Method(`GET`)"; rng.usize(1..2500)].join(" && ");
        y.push_str(&format!(
            "      - setHeaderRoute:\n          match: {}\n",
            yaml_str(&h)
        ));
    }
    for _ in 0..rng.usize(..6) {
        let step = match rng.u32(..6) {
            0 => format!("      - setWeight: {}\n", number(rng)),
            1 => "      - pause: {}\n".to_string(),
            2 => format!(
                "      - pause: {{duration: {}}}\n",
                yaml_str(duration(rng).as_str().unwrap_or("1s"))
            ),
            3 => format!(
                "      - setHeaderRoute:\n          match: {}\n",
                yaml_str(&rule(rng))
            ),
            4 => "      - setHeaderRoute: {}\n".to_string(),
            _ => format!(
                "      - webhook: {{url: {}}}\n",
                yaml_str(pick(
                    rng,
                    &["http://127.0.0.1:1/x", "ftp://x", "http://", "x"]
                ))
            ),
        };
        y.push_str(&step);
    }
    if chance(rng, 25) {
        y.push_str(&format!(
            "    analysis:\n      interval: {}\n      metrics:\n        - name: {}\n          min: {}\n",
            yaml_str(duration(rng).as_str().unwrap_or("1s")),
            pick(rng, &["success-rate", "latency-p99", "error-rate", "bogus"]),
            number(rng)
        ));
    }
    if chance(rng, 5) {
        y.push_str(pick(
            rng,
            &[
                "  bogus: 1\n",
                "status: {}\n",
                "  - x\n",
                "\t\n",
                "a: &a [*a]\n",
            ],
        ));
    }
    y.into_bytes()
}

/// One HTTP request for the sidecar, keep-alive unless said otherwise.
pub fn http(rng: &mut Rng) -> Vec<u8> {
    let method = pick(
        rng,
        &["GET", "GET", "POST", "PUT", "DELETE", "get", "", "G\0T"],
    );
    let name = pick(
        rng,
        &["flask", "flask", "nope", "", "..", "%2e%2e", "flask/x"],
    );
    let mut path = match rng.u32(..8) {
        0 => "/healthz".to_string(),
        1 => "/metrics".to_string(),
        2 => "/v1/rollouts".to_string(),
        3 => format!("/v1/rollouts/{name}"),
        4 => format!(
            "/v1/rollouts/{name}/{}",
            pick(rng, &["promote", "abort", "retry", "bogus"])
        ),
        5 => format!("//v1//policies/{name}"),
        6 => "/".repeat(around(rng, 3, 16 << 10)),
        _ => format!("/v1/policies/{name}"),
    };
    let mut query = Vec::new();
    if chance(rng, 50) {
        query.push(format!(
            "version={}",
            pick(
                rng,
                &[
                    "0",
                    "1",
                    "2",
                    "18446744073709551614",
                    "18446744073709551615",
                    "-1",
                    "x",
                    ""
                ]
            )
        ));
    }
    if chance(rng, 20) {
        query.push(format!(
            "wait={}",
            pick(rng, &["0ms", "0s", "1ms", "bogus", "%30ms"])
        ));
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let version = pick(
        rng,
        &["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1"],
    );
    let mut out = format!("{method} {path} {version}\r\n");
    for _ in 0..rng.usize(..4) {
        let h = match rng.u32(..10) {
            0 => format!("content-length: {}", number(rng)),
            1 => "transfer-encoding: chunked".to_string(),
            2 => "connection: close".to_string(),
            3 => "origin: http://evil.example".to_string(),
            4 => "sec-fetch-site: cross-site".to_string(),
            5 => "content-type: application/x-www-form-urlencoded".to_string(),
            6 => "authorization: Bearer nope".to_string(),
            7 => format!("x-long: {}", "a".repeat(around(rng, 10, 16 << 10))),
            8 => "no colon".to_string(),
            _ => format!("{}: {}", word(rng), word(rng)),
        };
        out.push_str(&h);
        out.push_str(pick(rng, &["\r\n", "\r\n", "\n"]));
    }
    out.push_str("\r\n");
    if chance(rng, 10) {
        out.push_str("x=1");
    }
    out.into_bytes()
}

/// Several requests back to back on one connection.
pub fn http_session(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.usize(1..5) {
        out.extend(http(rng));
    }
    out
}

/// A proxy-wasm serialized header map; the counts and lengths are now and then wrong.
pub fn header_map(rng: &mut Rng) -> Vec<u8> {
    let n = rng.usize(..6);
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|_| {
            let k = pick(
                rng,
                &[
                    ":authority",
                    ":path",
                    ":method",
                    "host",
                    "cookie",
                    "x-user-id",
                    "x-forwarded-for",
                    "HOST",
                    "",
                ],
            );
            let v = match rng.u32(..6) {
                0 => vec![rng.u8(..)],
                1 => b"pro.coding".to_vec(),
                2 => b"/a?b=c&user=%75#f".to_vec(),
                3 => b"uid=1; uid=2;;=".to_vec(),
                4 => b"1.2.3.4, ::1, junk".to_vec(),
                _ => word(rng).into_bytes(),
            };
            (k.as_bytes().to_vec(), v)
        })
        .collect();
    let mut out = (n as u32).to_le_bytes().to_vec();
    for (k, v) in &pairs {
        out.extend((k.len() as u32).to_le_bytes());
        out.extend((v.len() as u32).to_le_bytes());
    }
    for (k, v) in &pairs {
        out.extend(k);
        out.push(0);
        out.extend(v);
        out.push(0);
    }
    match rng.u32(..10) {
        0 => out[0] = out[0].wrapping_add(1),
        1 => {
            out.pop();
        }
        2 if out.len() > 8 => out[4] = 0xff,
        3 => out.splice(0..4, u32::MAX.to_le_bytes()).for_each(drop),
        _ => {}
    }
    out
}

// Valid documents. The mixed generators above rarely make one (a wrong part somewhere is
// likely), so the properties that only apply to accepted documents (the sidecar serves what
// the filter accepted; every step of a validated Rollout renders) get their own supply.

const VALID_CALLS: &[&str] = &[
    "Host(`pro.coding`)",
    "Host(`a.coding`, `b.coding`)",
    "HostRegexp(`{sub:[a-z]+}.coding`)",
    "PathPrefix(`/api`)",
    "Path(`/a`, `/b`)",
    "PathRegexp(`^/v[0-9]+/`)",
    "Method(`GET`, `HEAD`)",
    "Headers(`location`, `shenzhen`)",
    "HeadersRegexp(`x-user-id`, `^u[0-9]+$`)",
    "Query(`beta`, `1`)",
    "QueryRegexp(`user`, `^u`)",
    "ClientIP(`10.0.0.0/8`, `::1`)",
    "Cookie(`tier`, `gold`)",
    "CookieRegexp(`uid`, `^[0-9a-f]+$`)",
];

/// A rule that compiles.
pub fn valid_rule(rng: &mut Rng) -> String {
    fn expr(rng: &mut Rng, depth: u32) -> String {
        if depth == 0 || chance(rng, 45) {
            return pick(rng, VALID_CALLS).to_string();
        }
        let a = expr(rng, depth - 1);
        match rng.u32(..4) {
            0 => format!("!({a})"),
            1 => format!("({a})"),
            2 => format!("{a} && {}", expr(rng, depth - 1)),
            _ => format!("({a} || {})", expr(rng, depth - 1)),
        }
    }
    expr(rng, 3)
}

/// A breaker expression that parses.
pub fn valid_breaker(rng: &mut Rng) -> String {
    let term = |rng: &mut Rng| {
        pick(
            rng,
            &[
                "NetworkErrorRatio() > 0.5",
                "LatencyAtQuantileMS(50.0) > 100",
                "ResponseCodeRatio(500, 600, 0, 600) > 0.25",
                "RequestThreshold() >= 20",
                "100 < LatencyAtQuantileMS(99)",
            ],
        )
        .to_string()
    };
    match rng.u32(..4) {
        0 => format!("{} && {}", term(rng), term(rng)),
        1 => format!("{} || !({})", term(rng), term(rng)),
        _ => term(rng),
    }
}

fn valid_duration(rng: &mut Rng) -> String {
    format!("{}{}", rng.u32(1..60), pick(rng, &["s", "m"]))
}

/// A policy the filter accepts (most of the time: a generated mix can still cross a rule).
pub fn valid_policy_value(rng: &mut Rng) -> Value {
    let names = ["stable", "canary", "dev", "v2", "blue_green"];
    let n = rng.usize(1..=names.len());
    let variants: Vec<&str> = names[..n].to_vec();
    let mut vm = Map::new();
    for v in &variants {
        vm.insert(v.to_string(), json!(format!("k8s-{v}")));
    }
    let v = |rng: &mut Rng| json!(variants[rng.usize(..variants.len())]);
    let mut routes = Vec::new();
    for _ in 0..rng.usize(..4) {
        let mut r = Map::new();
        if chance(rng, 80) {
            r.insert("match".into(), json!(valid_rule(rng)));
        }
        if chance(rng, 50) {
            r.insert("variant".into(), v(rng));
        } else {
            let w = f64::from(rng.u32(..=5000)) / 100.0;
            r.insert("split".into(), json!([{"variant": v(rng), "weight": w}]));
            let sticky = pick(
                rng,
                &[
                    &json!({"header": "x-user-id"}),
                    &json!({"cookie": "uid", "salt": "s1"}),
                    &json!({"query": "user"}),
                    &json!({"source_ip": {"xff_depth": 1}}),
                    &json!({"assign_cookie": "rg"}),
                ],
            )
            .clone();
            r.insert("sticky".into(), sticky);
            if chance(rng, 50) {
                r.insert("default".into(), v(rng));
            }
        }
        routes.push(Value::Object(r));
    }
    let mut m = Map::new();
    m.insert(
        "name".into(),
        json!(pick(rng, &["flask", "shop", "api-v2"])),
    );
    m.insert("variants".into(), Value::Object(vm));
    if chance(rng, 70) {
        m.insert("default".into(), v(rng));
    }
    m.insert("routes".into(), json!(routes));
    if chance(rng, 30) {
        m.insert(
            "rate_limits".into(),
            json!([{"name": "per-client", "average": rng.u32(1..1000), "period": "1s",
                    "burst": rng.u32(1..2000), "match": valid_rule(rng)}]),
        );
    }
    if chance(rng, 30) {
        let mut b = json!({"name": "cb", "expression": valid_breaker(rng),
                           "window": "10s", "fallback_duration": valid_duration(rng)});
        if n > 1 && chance(rng, 60) {
            b["variant"] = json!(variants[1]);
            b["fallback_variant"] = json!(variants[0]);
        }
        m.insert("circuit_breakers".into(), json!([b]));
    }
    Value::Object(m)
}

/// A Rollout that validates (most of the time).
pub fn valid_rollout(rng: &mut Rng) -> Vec<u8> {
    let mut y = String::from(
        "apiVersion: rollgate.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: flask\nspec:\n  \
         variants:\n    stable: k8s-flask\n    canary: k8s-flask-canary\n    dev: k8s-flask-dev\n  \
         stableVariant: stable\n  canaryVariant: canary\n",
    );
    if chance(rng, 70) {
        y.push_str(&format!("  match: {}\n", yaml_str(&valid_rule(rng))));
    }
    if chance(rng, 50) {
        y.push_str(pick(
            rng,
            &[
                "  sticky:\n    header: x-user-id\n",
                "  sticky:\n    cookie: uid\n",
                "  sticky:\n    assignCookie: rg\n",
            ],
        ));
    }
    if chance(rng, 40) {
        y.push_str(&format!(
            "  routes:\n    - match: {}\n      variant: dev\n",
            yaml_str(&valid_rule(rng))
        ));
    }
    if chance(rng, 30) {
        y.push_str("  rateLimits:\n    - name: per-client\n      average: 500\n      period: 1s\n");
    }
    if chance(rng, 30) {
        y.push_str(&format!(
            "  circuitBreakers:\n    - name: cb\n      variant: canary\n      expression: {}\n      \
             fallbackVariant: stable\n",
            yaml_str(&valid_breaker(rng))
        ));
    }
    y.push_str("  strategy:\n    steps:\n");
    for _ in 0..rng.usize(1..6) {
        let step = match rng.u32(..5) {
            0 => format!("      - setWeight: {}\n", rng.u32(..=100)),
            1 => "      - pause: {}\n".to_string(),
            2 => format!("      - pause: {{duration: {}}}\n", valid_duration(rng)),
            3 => format!(
                "      - setHeaderRoute:\n          match: {}\n",
                yaml_str(&valid_rule(rng))
            ),
            _ => "      - setHeaderRoute: {}\n".to_string(),
        };
        y.push_str(&step);
    }
    if chance(rng, 30) {
        y.push_str(
            "    analysis:\n      interval: 10s\n      metrics:\n        - name: success-rate\n          min: 0.99\n",
        );
    }
    y.into_bytes()
}

/// A `pattern` input: a regular expression, a NUL, a value's bytes. Both from pieces that make
/// [`rollgate_policy::rule::Pattern`]'s byte comparisons and regex-lite differ if they can:
/// anchors, `.`, line feeds, bytes that are not UTF-8, the replacement character.
pub fn pattern(rng: &mut Rng) -> Vec<u8> {
    let pieces = [
        "", ".", ".*", ".+", "^", "$", "a", "b", "ab", "/api", "\u{e9}", "\u{fffd}", "\\.", "[a]",
        "(?i)", "|", "-", "{", "}", "x{2}", "\\",
    ];
    let n = rng.usize(..4);
    let mut out: Vec<u8> = (0..n)
        .flat_map(|_| pick(rng, &pieces).as_bytes().to_vec())
        .collect();
    out.push(0);
    let bytes: [&[u8]; 10] = [
        b"a",
        b"b",
        b"ab",
        b"\n",
        b"\xff",
        b"\xe2",
        b"\xef\xbf\xbd",
        b"\xc3\xa9",
        b"/api",
        b"",
    ];
    for _ in 0..rng.usize(..6) {
        out.extend_from_slice(pick(rng, &bytes));
    }
    out
}
