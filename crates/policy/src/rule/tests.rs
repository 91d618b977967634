//! Matcher tests: every function, v2 and v3 spellings, and compile errors with positions.

use std::net::IpAddr;

use super::*;
use crate::request::Request;

struct R {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    ip: Option<IpAddr>,
}

/// A request for `url` given as `authority` + path-and-query, as Traefik's tests write them.
fn url(u: &str) -> R {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => req(&rest[..i], &rest[i..]),
        Some(i) => req(&rest[..i], &format!("/{}", &rest[i..])),
        None => req(rest, "/"),
    }
}

fn req(authority: &str, path: &str) -> R {
    R {
        headers: vec![
            (b":authority".to_vec(), authority.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
            (b":method".to_vec(), b"GET".to_vec()),
        ],
        ip: None,
    }
}

impl R {
    fn h(mut self, k: &str, v: &[u8]) -> Self {
        self.headers.push((k.as_bytes().to_vec(), v.to_vec()));
        self
    }
    fn method(mut self, m: &str) -> Self {
        self.headers[2].1 = m.as_bytes().to_vec();
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.parse().unwrap());
        self
    }
    /// The rule without a stated syntax (v3 if valid, else v2).
    fn eval(&self, rule: &str) -> bool {
        self.run(rule, None)
    }
    fn v3(&self, rule: &str) -> bool {
        self.run(rule, Some(Syntax::V3))
    }
    fn v2(&self, rule: &str) -> bool {
        self.run(rule, Some(Syntax::V2))
    }
    fn run(&self, rule: &str, sx: Option<Syntax>) -> bool {
        let m = compile_with(rule, sx, &mut 256).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let pairs = self.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        m.matches(&Request::new(pairs, self.ip))
    }
}

fn compile_err(rule: &str) -> String {
    compile(rule).unwrap_err().to_string()
}

fn err_in(sx: Syntax, rule: &str) -> String {
    compile_with(rule, Some(sx), &mut 256)
        .unwrap_err()
        .to_string()
}

/// Asserts which of `urls` the rule matches in `sx` (`ok`) and which it does not.
fn table(sx: Option<Syntax>, rule: &str, ok: &[&str], not: &[&str]) {
    for u in ok {
        assert!(url(u).run(rule, sx), "{rule} ({sx:?}) should match {u}");
    }
    for u in not {
        assert!(
            !url(u).run(rule, sx),
            "{rule} ({sx:?}) should not match {u}"
        );
    }
}

const V3: Option<Syntax> = Some(Syntax::V3);
const V2: Option<Syntax> = Some(Syntax::V2);

// ---- 1. Refusals -------------------------------------------------------------------------

#[test]
fn empty_arguments_are_refused_in_both_syntaxes() {
    // traefik pkg/rules/parser.go:117-129 (CheckRule), used by pkg/muxer/http/mux.go:284;
    // cases from pkg/muxer/http/matcher_test.go:33,114,188,332,432,505,599,677,682,764,769,
    // 868,873,878,959 and matcher_v2_test.go:34,118,195,324,427,521,620,625,707,712
    // (v3.7, fd5a576df2)
    for (rule, col) in [
        ("Host(``)", 6),
        ("Path(``)", 6),
        ("PathPrefix(``)", 12),
        ("Method(``)", 8),
        ("HostRegexp(``)", 12),
        ("ClientIP(``)", 10),
        ("Query(``)", 7),
        ("Query(``, `traefik`)", 7),
        ("Query(`q`, ``)", 12),
        ("QueryRegexp(``)", 13),
        ("Cookie(`a`, ``)", 13),
    ] {
        for sx in [Syntax::V3, Syntax::V2] {
            if sx == Syntax::V2 && rule.starts_with("QueryRegexp") {
                continue;
            }
            let e = err_in(sx, rule);
            assert!(
                e.starts_with(&format!("column {col}: empty argument to ")),
                "{rule} {sx:?}: {e}"
            );
        }
    }
    for (rule, col) in [
        ("PathRegexp(``)", 12),
        ("Header(`k`, ``)", 13),
        ("Header(``, `example.com`)", 8),
        ("HeaderRegexp(`k`, ``)", 19),
    ] {
        assert_eq!(
            err_in(Syntax::V3, rule),
            format!(
                "column {col}: empty argument to {}",
                rule.split('(').next().unwrap()
            )
        );
    }
    for rule in [
        "Headers(`k`, ``)",
        "HeadersRegexp(`k`, ``)",
        "Headers(``, `v`)",
    ] {
        assert!(
            err_in(Syntax::V2, rule).contains("empty argument to Headers"),
            "{rule}"
        );
    }
    // Without a syntax the error is the same (neither syntax accepts it).
    assert_eq!(
        compile_err("PathPrefix(``)"),
        "column 12: empty argument to PathPrefix"
    );
    assert_eq!(
        compile_err("Host(`a`) && Method(``)"),
        "column 21: empty argument to Method"
    );
    // No argument at all: refused too (matcher_test.go:28,109,183).
    assert_eq!(
        compile_err("Host()"),
        "column 1: Host takes at least 1 argument, got 0"
    );
}

#[test]
fn paths_must_start_with_a_slash() {
    // traefik pkg/muxer/http/matcher.go:147,178; matcher_test.go:437,604;
    // matcher_v2_test.go:432,526; gorilla route.go:191 (v3.7, fd5a576df2)
    for sx in [Syntax::V3, Syntax::V2] {
        assert_eq!(
            err_in(sx, "Path(`css`)"),
            "column 6: path 'css' does not start with a '/'"
        );
        assert_eq!(
            err_in(sx, "PathPrefix(`css`)"),
            "column 12: path 'css' does not start with a '/'"
        );
    }
    assert_eq!(
        compile_err("Path(`css`)"),
        "column 6: path 'css' does not start with a '/'"
    );
    // PathRegexp has no such rule (matcher.go:159).
    assert!(url("http://a/css").v3("PathRegexp(`css`)"));
}

#[test]
fn non_ascii_hosts_are_refused() {
    // traefik pkg/muxer/http/matcher.go:81,127; matcher_v2.go:82,210; matcher_test.go:193,337;
    // matcher_v2_test.go:200,329,953,958 (v3.7, fd5a576df2)
    for sx in [Syntax::V3, Syntax::V2] {
        for (rule, col) in [
            ("Host(`🦭.com`)", 6),
            ("HostRegexp(`🦭.com`)", 12),
            ("Host(`locàlhost`)", 6),
            ("HostRegexp(`locàlhost`)", 12),
        ] {
            let e = err_in(sx, rule);
            assert!(
                e.starts_with(&format!("column {col}: invalid value '"))
                    && e.ends_with("non-ASCII characters are not allowed"),
                "{rule} {sx:?}: {e}"
            );
        }
    }
    // Puny-code is how such a host is written (matcher_test.go:248-258).
    table(
        V3,
        "Host(`xn--9t9h.com`)",
        &["https://xn--9t9h.com/path"],
        &["https://🦭.com", "https://example.com"],
    );
}

// ---- 2. Requests ---------------------------------------------------------------------------

#[test]
fn method_is_exact_on_the_request_side() {
    // traefik pkg/muxer/http/matcher.go:61-69 (rule upper-cased, request compared exactly);
    // matcher_test.go:123-139, matcher_v2_test.go:122-147; gorilla route.go:333-337
    for sx in [Syntax::V3, Syntax::V2] {
        for rule in ["Method(`GET`)", "Method(`get`)"] {
            assert!(url("http://a/").method("GET").run(rule, Some(sx)), "{rule}");
            assert!(
                !url("http://a/").method("POST").run(rule, Some(sx)),
                "{rule}"
            );
            assert!(
                !url("http://a/").method("get").run(rule, Some(sx)),
                "{rule}"
            );
        }
    }
    // v3 takes one method (matcher_test.go:119), v2 many (matcher_v2_test.go:123).
    assert_eq!(
        err_in(Syntax::V3, "Method(`GET`, `POST`)"),
        "column 1: Method takes 1 argument, got 2"
    );
    assert!(url("http://a/").method("POST").v2("Method(`GET`, `POST`)"));
    assert!(url("http://a/")
        .method("POST")
        .eval("Method(`GET`, `POST`)"));
}

#[test]
fn host_trailing_dot_on_both_sides() {
    // traefik pkg/muxer/http/matcher.go:102-116, matcher_v2.go:116-130; matcher_test.go:202-246;
    // matcher_v2_test.go:216-260, 970-989 (v3.7, fd5a576df2)
    for sx in [V3, V2] {
        table(
            sx,
            "Host(`example.com`)",
            &[
                "https://example.com",
                "https://example.com:8080",
                "https://EXAMPLE.COM/path",
                "https://example.com.",
                "https://example.com./path",
            ],
            &["https://example.org", "https://example.org."],
        );
        table(
            sx,
            "Host(`example.com.`)",
            &[
                "https://example.com",
                "https://example.com/path",
                "https://example.com.",
                "https://example.com./path",
            ],
            &["https://example.org", "https://example.org./path"],
        );
        table(
            sx,
            "Host(`EXAMPLE.COM`)",
            &["https://example.com/path"],
            &["https://example.org"],
        );
    }
    table(
        V2,
        "Host(`example.com`, `example.org`)",
        &["https://example.org"],
        &["https://example.net"],
    );
    table(
        V2,
        "HostHeader(`localhost`)",
        &["http://localhost/"],
        &["http://other/"],
    );
    assert_eq!(
        err_in(Syntax::V3, "Host(`example.com`, `example.org`)"),
        "column 1: Host takes 1 argument, got 2"
    );
}

#[test]
fn v3_host_wildcards() {
    // traefik pkg/muxer/http/matcher.go:74-79, pkg/muxer/muxer.go:23-31;
    // matcher_test.go:260-281 (v3.7, fd5a576df2)
    table(
        V3,
        "Host(`*.example.com`)",
        &[
            "https://test.example.com",
            "https://other.example.com",
            "https://Other.Example.com:80",
        ],
        &[
            "https://example.com",
            "https://test.otherexample.com",
            "https://a.b.example.com",
        ],
    );
    table(
        V3,
        "Host(`*`)",
        &[
            "https://test.example.com",
            "https://example.com",
            "https://localhost",
        ],
        &[],
    );
    // v2 has no wildcard: the `*` is a literal (matcher_v2.go:111-113).
    table(
        V2,
        "Host(`*.example.com`)",
        &[],
        &["https://test.example.com"],
    );
}

#[test]
fn host_regexp_v3_runs_on_the_lower_cased_host() {
    // traefik pkg/muxer/http/matcher.go:136-139 (GetCanonicalHost: lower-cased, port removed,
    // pkg/middlewares/requestdecorator/request_decorator.go:39); matcher_test.go:351-383
    table(
        V3,
        "HostRegexp(`^[a-zA-Z-]+\\.com$`)",
        &[
            "https://example.com",
            "https://example.com:8080",
            "https://example.com/path",
        ],
        &["https://example.org"],
    );
    table(
        V3,
        "HostRegexp(`^[A-Z]+\\.com$`)",
        &[],
        &["https://example.com", "https://EXAMPLE.com"],
    );
    assert!(url("https://API.Example.com").v3("HostRegexp(`^api\\.example\\.com$`)"));
    // A v2 template is a Go regexp in v3, braces literal (matcher_test.go:373-381).
    table(
        V3,
        "HostRegexp(`{domain:[a-zA-Z-]+\\.com}`)",
        &[],
        &["https://example.com", "https://example.org"],
    );
    assert!(
        url("https://example.com").v3("HostRegexp(`example`)"),
        "unanchored"
    );
}

#[test]
fn host_regexp_v2_templates() {
    // traefik pkg/muxer/http/matcher_v2.go:206-225 with gorilla/mux Host templates
    // (containous/mux 41b6ec3 regexp.go:28-132); matcher_v2_test.go:333-377, 804-858
    table(
        V2,
        "HostRegexp(`{domain:[a-zA-Z-]+\\.com}`)",
        &["https://example.com", "https://example.com/path"],
        &["https://example.org"],
    );
    table(
        V2,
        "HostRegexp(`example.com`, `example.org`)",
        &["https://example.com:8080", "https://example.org"],
        &["https://example.net"],
    );
    // Without a variable the template is literal: "(example.com" never matches a host.
    table(
        V2,
        "HostRegexp(`(example.com`)",
        &[],
        &["https://example.com"],
    );
    table(
        V2,
        "HostRegexp(`^[A-Z]+\\.com$`)",
        &[],
        &["https://EXAMPLE.com"],
    );
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "HostRegexp(`{subdomain:(foo\\.)?bar\\.com}`)",
            &["http://foo.bar.com", "http://bar.com"],
            &["http://fooubar.com", "http://barucom", "http://barcom"],
        ),
        (
            "HostRegexp(`{subdomain:(?:foo\\.)?bar\\.com}`)",
            &["http://foo.bar.com", "http://bar.com"],
            &["http://fooubar.com"],
        ),
        (
            "HostRegexp(`{dummy:[A-Za-z-]+\\.bar\\.com}`)",
            &["http://FOO.bar.com", "http://foo.bar.com"],
            &["http://fooubar.com"],
        ),
        (
            "HostRegexp(`{dummy:[a-z-]+\\.bar\\.com}`)",
            &["http://FOO.bar.com", "http://foo.bar.com"],
            &["http://barcom"],
        ),
        (
            "HostRegexp(`foo.bar.com`)",
            &["http://FOO.bar.com", "http://foo.bar.com"],
            &["http://fooubar.com"],
        ),
        (
            "HostRegexp(`{sub}.example.com`)",
            &["http://api.example.com"],
            &["http://a.b.example.com", "http://apixexample.com"],
        ),
    ];
    for (rule, ok, not) in cases {
        table(V2, rule, ok, not);
    }
    // matcher_v2_test.go:1308-1311: unbalanced braces are an error.
    assert_eq!(
        err_in(Syntax::V2, "HostRegexp(\"{test\")"),
        "column 12: unbalanced braces in '{test'"
    );
}

#[test]
fn path_matching_sees_non_reserved_escapes_decoded() {
    // traefik pkg/muxer/http/mux.go:98-176 (withRoutingPath); mux_test.go:676-712
    // (v3.7, fd5a576df2)
    for sx in [V3, V2] {
        table(
            sx,
            "Path(`/foo bar`)",
            &["http://a/foo%20bar"],
            &["http://a/foo+bar"],
        );
        table(
            sx,
            "PathPrefix(`/foo bar`)",
            &["http://a/foo%20bar/baz"],
            &[],
        );
        // Reserved characters stay encoded: `%2F` is not a `/`.
        table(
            sx,
            "Path(`/foo%2Fbar`)",
            &["http://a/foo%2Fbar"],
            &["http://a/foo/bar"],
        );
        table(
            sx,
            "Path(`/foo/bar`)",
            &["http://a/foo/bar"],
            &["http://a/foo%2Fbar"],
        );
        table(
            sx,
            "Path(`/foo bar%2Fbaz%23qux`)",
            &["http://a/foo%20bar%2Fbaz%23qux"],
            &[],
        );
        // Only the upper-case forms are in Traefik's reserved list.
        table(sx, "Path(`/foo/bar`)", &["http://a/foo%2fbar"], &[]);
        table(sx, "Path(`/A`)", &["http://a/%41"], &[]);
    }
    table(V3, "PathRegexp(`^/foo bar$`)", &["http://a/foo%20bar"], &[]);
    // A malformed escape: Traefik answers 400, so no path rule matches.
    table(
        V3,
        "PathPrefix(`/`)",
        &["http://a/x"],
        &["http://a/x%", "http://a/x%zz"],
    );
    table(V3, "!PathPrefix(`/`)", &["http://a/x%"], &[]);
}

#[test]
fn v3_paths() {
    // traefik pkg/muxer/http/matcher.go:144-188; matcher_test.go:446-456, 519-548, 613-624
    table(
        V3,
        "Path(`/css`)",
        &["https://example.org/css", "https://example.com/css"],
        &[
            "https://example.com",
            "https://example.com/css/",
            "https://example.com/css/main.css",
        ],
    );
    table(
        V3,
        "PathPrefix(\"/css\")",
        &[
            "https://example.com/css",
            "https://example.com/css/main.css",
        ],
        &["https://example.com/js"],
    );
    table(
        V3,
        "PathRegexp(`^/(css|js)`)",
        &[
            "https://example.org/css",
            "https://example.com/css/main.css",
            "https://example.com/js/",
        ],
        &["https://example.com/html", "https://example.com/CSS"],
    );
    // Braces are literal in v3 paths (no templates).
    table(V3, "Path(`/{id}`)", &["http://a/{id}"], &["http://a/42"]);
    assert_eq!(
        err_in(Syntax::V3, "Path(`/css`, `/js`)"),
        "column 1: Path takes 1 argument, got 2"
    );
    assert_eq!(
        err_in(Syntax::V3, "PathPrefix(`/css`, `/js`)"),
        "column 1: PathPrefix takes 1 argument, got 2"
    );
    let r = url("http://a/api/v1/users?x=1");
    assert!(
        !r.v3("PathRegexp(`x=1`)"),
        "the query is not part of the path"
    );
}

#[test]
fn v2_paths_with_templates() {
    // traefik pkg/muxer/http/matcher_v2.go:28-78; matcher_v2_test.go:436-470, 530-566
    table(
        V2,
        "Path(`/css`, `/js`)",
        &["https://example.org/css", "https://example.com/js"],
        &["https://example.com/css/", "https://example.com/js/main.js"],
    );
    table(
        V2,
        "Path(`/css{path:(/.*)?}`)",
        &[
            "https://example.com/css/main.css",
            "https://example.com/css/components/component.css",
        ],
        &[
            "https://example.com",
            "https://example.com/css.css",
            "https://example.com/js/main.js",
        ],
    );
    table(
        V2,
        "PathPrefix(`/css-{name:[0-9]?}`)",
        &[
            "https://example.com/css-1/main.css",
            "https://example.org/css-222/main.css",
        ],
        &[
            "https://example.com/css.css",
            "https://example.com/js/main.js",
        ],
    );
    table(
        V2,
        "PathPrefix(`/css`, `/js`)",
        &["https://example.com/js/main.js"],
        &["https://example.com/html"],
    );
    table(
        V2,
        "Path(`/api/{version}/users`)",
        &["http://a/api/v1/users"],
        &["http://a/api/v1/x/users"],
    );
    table(
        V2,
        "Path(`/api/{v:v[0-9]{1}}/users`)",
        &["http://a/api/v1/users"],
        &["http://a/api/v12/users"],
    );
    // gorilla/mux: every top-level brace pair is a variable; a name and a pattern are required.
    assert_eq!(
        err_in(Syntax::V2, "Path(`/{:x}`)"),
        "column 6: missing name or pattern in '{:x}'"
    );
    assert_eq!(
        err_in(Syntax::V2, "Path(`/a}`)"),
        "column 6: unbalanced braces in '/a}'"
    );
    // Without a stated syntax, a rule valid in v3 is v3: the template is then literal.
    table(
        None,
        "Path(`/api/{version}/users`)",
        &["http://a/api/{version}/users"],
        &["http://a/api/v1/users"],
    );
    table(
        None,
        "Path(`/css`, `/js`)",
        &["https://example.com/js"],
        &[],
    );
}

#[test]
fn v3_query_key_alone_means_an_empty_value() {
    // traefik pkg/muxer/http/matcher.go:215-233; matcher_test.go:886-916 (v3.7, fd5a576df2)
    table(
        V3,
        "Query(`q`, `traefik`)",
        &[
            "https://example.com?q=traefik",
            "https://example.com?rel=ddg&q=traefik",
            "https://example.com?q=traefik&q=proxy",
            "https://example.com?q=awesome&q=traefik",
        ],
        &[
            "https://example.com",
            "https://example.com?q=nginx",
            "https://example.com?rel=ddg",
            "https://example.com?q=TRAEFIK",
            "https://example.com?Q=traefik",
            "https://example.com?rel=traefik",
        ],
    );
    table(
        V3,
        "Query(`mobile`)",
        &["https://example.com?mobile", "https://example.com?mobile="],
        &["https://example.com", "https://example.com?mobile=true"],
    );
    // QueryRegexp with one argument is Query (matcher.go:236-238).
    table(
        V3,
        "QueryRegexp(`mobile`)",
        &["https://example.com?mobile"],
        &["https://example.com?mobile=true"],
    );
    table(
        V3,
        "QueryRegexp(`q`, `^(traefik|nginx)$`)",
        &["https://example.com?q=nginx"],
        &["https://example.com?q=proxy"],
    );
    assert!(
        url("http://a/p?q=a%20b&tag=x&tag=y+z").v3("Query(`q`, `a b`)"),
        "values are decoded"
    );
    assert!(url("http://a/p?tag=x&tag=y+z").v3("Query(`tag`, `y z`)"));
    assert_eq!(
        err_in(Syntax::V3, "Query(`q`, `traefik`, `proxy`)"),
        "column 1: Query takes 1 to 2 arguments, got 3"
    );
}

#[test]
fn v2_query_requires_every_pair() {
    // traefik pkg/muxer/http/matcher_v2.go:187-204; gorilla route.go:401-415, regexp.go:207-225;
    // matcher_v2_test.go:1136-1151, 1313-1321 (v3.7, fd5a576df2)
    table(
        V2,
        "Query(`foo=bar`, `bar=baz`)",
        &["http://localhost/foo?foo=bar&bar=baz"],
        &[
            "http://localhost/foo?bar=baz",
            "http://localhost/foo?foo=bar",
        ],
    );
    table(
        V2,
        "Query(`foo=b=ar`)",
        &["http://localhost/foo?foo=b=ar"],
        &["http://localhost/foo?foo=bar"],
    );
    table(
        None,
        "Query(`foo=bar`, `bar=baz`)",
        &["http://localhost/foo?foo=bar&bar=baz"],
        &["http://localhost/foo?bar=baz"],
    );
    // gorilla/mux compares the key's first value only.
    table(
        V2,
        "Query(`tag=y`)",
        &["http://a/?tag=y&tag=x"],
        &["http://a/?tag=x&tag=y"],
    );
    // An empty value means any value; a template value is a regexp.
    table(
        V2,
        "Query(`tag=`)",
        &["http://a/?tag=x", "http://a/?tag"],
        &["http://a/"],
    );
    table(
        V2,
        "Query(`id={id:[0-9]+}`)",
        &["http://a/?id=42"],
        &["http://a/?id=x", "http://a/"],
    );
    assert!(err_in(Syntax::V2, "Query(\"titi\")").contains("Query takes key=value pairs"));
    // Stated v3, a key with `=` is a key (matcher.go:224 looks it up decoded).
    table(V3, "Query(`a=1`)", &["http://a/?a%3D1"], &["http://a/?a=1"]);
    table(
        None,
        "Query(`a=1`)",
        &["http://a/?a=1"],
        &["http://a/?a%3D1"],
    );
    assert_eq!(
        err_in(Syntax::V2, "Query(\"titi={test\")"),
        "column 7: unbalanced braces in 'titi={test'"
    );
}

#[test]
fn headers_exact_and_regexp() {
    // traefik pkg/muxer/http/matcher.go:190-213; matcher_test.go:691-711, 783-803;
    // matcher_v2_test.go:634-655, 726-747
    let r = req("a", "/")
        .h("x-forwarded-proto", b"https")
        .h("x-multi", b"one")
        .h("x-multi", b"two");
    for (sx, exact, re) in [
        (Syntax::V3, "Header", "HeaderRegexp"),
        (Syntax::V2, "Headers", "HeadersRegexp"),
    ] {
        let run = |rule: String| r.run(&rule, Some(sx));
        assert!(run(format!("{exact}(`X-Forwarded-Proto`, `https`)")));
        assert!(run(format!("{exact}(`x-forwarded-proto`, `https`)")));
        assert!(
            !run(format!("{exact}(`x-forwarded-proto`, `HTTPS`)")),
            "values are exact"
        );
        assert!(
            run(format!("{exact}(`x-multi`, `two`)")),
            "any value of a repeated header"
        );
        assert!(run(format!("{re}(`X-Forwarded-Proto`, `^https?$`)")));
        assert!(!run(format!("{re}(`X-Forwarded-Proto`, `^http$`)")));
    }
    // v2 takes pairs, all required (gorilla route.go:248-280).
    assert!(r.v2("Headers(`x-multi`, `one`, `x-forwarded-proto`, `https`)"));
    assert!(!r.v2("Headers(`x-multi`, `one`, `x-forwarded-proto`, `http`)"));
    // A name repeated as written keeps its last value; in another spelling both hold.
    assert!(r.v2("Headers(`x-multi`, `nope`, `x-multi`, `one`)"));
    assert!(!r.v2("Headers(`X-Multi`, `nope`, `x-multi`, `one`)"));
    assert_eq!(
        err_in(
            Syntax::V2,
            "Headers(`X-Forwarded-Host`, `example.com`, `example.org`)"
        ),
        "column 1: Headers takes pairs of arguments (name, value), got 3"
    );
    assert_eq!(
        err_in(
            Syntax::V3,
            "Header(`X-Forwarded-Host`, `example.com`, `example.org`)"
        ),
        "column 1: Header takes 2 arguments, got 3"
    );
    let bad = req("a", "/").h("location", b"\xff\xfeshenzhen");
    assert!(!bad.eval("Header(`location`, `shenzhen`)"));
    assert!(
        bad.eval("HeaderRegexp(`location`, `shenzhen$`)"),
        "invalid UTF-8 is matched lossily"
    );
}

#[test]
fn matcher_names_in_every_casing_traefik_registers() {
    // traefik pkg/rules/parser.go:43-46 (as written, lower, UPPER, Title of lower);
    // mux_test.go:115-146 (v3.7, fd5a576df2)
    for name in ["PathPrefix", "pathprefix", "PATHPREFIX", "Pathprefix"] {
        for sx in [V3, V2, None] {
            table(
                sx,
                &format!("{name}(\"/css\")"),
                &["https://example.com/css"],
                &["https://example.com/js"],
            );
        }
    }
    for name in ["ClientIP", "clientip", "CLIENTIP", "Clientip"] {
        assert!(
            req("a", "/")
                .ip("10.0.0.1")
                .eval(&format!("{name}(`10.0.0.0/8`)")),
            "{name}"
        );
    }
    for name in ["pathPrefix", "PathPREFIX", "PathprefiX"] {
        assert_eq!(
            compile_err(&format!("{name}(`/`)")),
            format!("column 1: unknown matcher '{name}'")
        );
    }
    assert!(url("http://a/").v2("HEADERS(`x`, `y`) || HOSTHEADER(`a`)"));
}

// ---- 3. Go's literal braces ---------------------------------------------------------------

#[test]
fn go_regexp_braces_that_repeat_nothing_are_literal() {
    // Go regexp/syntax parse.go: a `{` that does not start `{n}`, `{n,}`, `{n,m}` is a
    // literal; Traefik's tests rely on it: matcher_test.go:535-550, 807-820, 1019-1027
    // (v3.7, fd5a576df2)
    table(
        V3,
        "PathRegexp(\"/{path:(css|js)}\")",
        &[
            "https://example.com/{path:css}",
            "https://example.com/{path:css}/",
            "https://example.com/%7Bpath:css%7D",
            "https://example.com/%7Bpath:js%7D/",
        ],
        &[
            "https://example.com",
            "https://example.com/html",
            "https://example.org/css",
        ],
    );
    let h = |v: &[u8]| req("a", "/").h("x-forwarded-proto", v);
    let rule = "HeaderRegexp(`X-Forwarded-Proto`, `http{secure:s?}`)";
    for v in [&b"http{secure:}"[..], b"http{secure:s}"] {
        assert!(h(v).v3(rule), "{}", String::from_utf8_lossy(v));
    }
    for v in [
        &b"http"[..],
        b"https",
        b"HTTP{secure:}",
        b"http{secure:S}",
        b"HTTPS",
    ] {
        assert!(!h(v).v3(rule), "{}", String::from_utf8_lossy(v));
    }
    table(
        V3,
        "QueryRegexp(`q`, `{value:(traefik|nginx)}`)",
        &["https://example.com?q={value:traefik}"],
        &["https://example.com?q=traefik"],
    );
    // Real repetitions keep their meaning.
    table(
        V3,
        "HostRegexp(`^[a-z]{2}\\.example\\.com$`)",
        &["http://ab.example.com"],
        &["http://api.example.com"],
    );
    table(
        V3,
        "PathRegexp(`^/a{2,}$`)",
        &["http://x/aa", "http://x/aaa"],
        &["http://x/a"],
    );
    table(
        V3,
        "PathRegexp(`^/a{1,2}$`)",
        &["http://x/aa"],
        &["http://x/aaa"],
    );
}

#[test]
fn literal_brace_rewrite() {
    use super::escape_literal_braces as e;
    assert_eq!(e("/{path:(css|js)}"), r"/\{path:(css|js)\}");
    assert_eq!(e("http{secure:s?}"), r"http\{secure:s?\}");
    assert_eq!(e("a{2}b{3,}c{4,5}"), "a{2}b{3,}c{4,5}");
    assert_eq!(e("a{,2}"), r"a\{,2\}");
    assert_eq!(e("a{2"), r"a\{2");
    assert_eq!(e("}"), r"\}");
    assert_eq!(e(r"\{x\}"), r"\{x\}");
    assert_eq!(e("[{}]{2}"), "[{}]{2}");
    assert_eq!(e("[]{]x{"), r"[]{]x\{");
    assert_eq!(e("[[:alpha:]]{1}{"), r"[[:alpha:]]{1}\{");
    assert_eq!(e("é{"), r"é\{");
    assert_eq!(e(r"\p{Greek}{2}\pL{"), r"\p{Greek}{2}\pL\{");
    assert_eq!(e(r"\x{263a}{2}"), r"\x{263a}{2}");
    table(
        V3,
        "PathRegexp(`^/\\x{41}{2}$`)",
        &["http://a/AA"],
        &["http://a/A"],
    );
}

// ---- Operators, extensions, errors ---------------------------------------------------------

#[test]
fn client_ip_v4_v6() {
    let r = req("a", "/").ip("10.1.2.3");
    assert!(r.eval("ClientIP(`10.0.0.0/8`)"));
    assert!(r.eval("ClientIP(`10.1.2.3`)"));
    assert!(r.v2("ClientIP(`192.168.0.0/16`, `10.1.2.0/24`)"));
    assert!(!r.eval("ClientIP(`10.1.3.0/24`)"));
    assert!(r.eval("ClientIP(`0.0.0.0/0`)"));
    assert!(
        !r.eval("ClientIP(`::/0`)"),
        "v4 address is not in a v6 network"
    );
    let v6 = req("a", "/").ip("2001:db8::42");
    assert!(v6.eval("ClientIP(`2001:db8::/32`)"));
    assert!(!v6.eval("ClientIP(`2001:db9::/32`)"));
    assert!(v6.eval("ClientIP(`2001:db8::42`)"));
    let mapped = req("a", "/").ip("::ffff:10.1.2.3");
    assert!(
        mapped.eval("ClientIP(`10.0.0.0/8`)"),
        "v4-mapped v6 counts as v4"
    );
    assert!(
        !req("a", "/").eval("ClientIP(`0.0.0.0/0`)"),
        "unknown client matches nothing"
    );
    // matcher_test.go:37-40: v3 takes one.
    assert_eq!(
        err_in(Syntax::V3, "ClientIP(`127.0.0.1`, `192.168.1.0/24`)"),
        "column 1: ClientIP takes 1 argument, got 2"
    );
}

#[test]
fn cookies_in_both_syntaxes() {
    let r = req("a", "/")
        .h("cookie", b"session=abc; beta=yes")
        .h("cookie", b"uid=42");
    for sx in [V3, V2] {
        assert!(r.run("Cookie(`beta`, `yes`)", sx));
        assert!(r.run("Cookie(`uid`, `42`)", sx));
        assert!(r.run("Cookie(`beta`)", sx));
        assert!(!r.run("Cookie(`beta`, `no`)", sx));
        assert!(
            !r.run("Cookie(`Beta`, `yes`)", sx),
            "cookie names are case-sensitive"
        );
        assert!(r.run("CookieRegexp(`session`, `^a`)", sx));
        assert!(!r.run("CookieRegexp(`session`, `^b`)", sx));
    }
}

#[test]
fn boolean_operators() {
    let r = req("pro.coding", "/").h("location", b"shenzhen");
    assert!(r.eval("Host(`pro.coding`) && Headers(`location`, `shenzhen`)"));
    assert!(!r.eval("Host(`pro.coding`) && !Headers(`location`, `shenzhen`)"));
    assert!(r.eval("Host(`x`) || Host(`pro.coding`)"));
    assert!(r.eval("Host(`x`) || Host(`y`) || Header(`location`, `shenzhen`)"));
    assert!(!r.eval("(Host(`x`) || Host(`pro.coding`)) && Path(`/nope`)"));
    assert!(r.eval("Host(`x`) || Host(`pro.coding`) && Path(`/`)"));
    assert!(r.eval("!(Host(`x`) && Path(`/`))"));
}

#[test]
fn syntax_is_chosen_per_rule_when_not_stated() {
    // The seed's rule is v2 (Headers); Header is v3; each compiles in its own syntax.
    let r = req("pro.coding", "/").h("location", b"shenzhen");
    assert!(r.eval("Host(`pro.coding`) && Headers(`location`, `shenzhen`)"));
    assert!(r.eval("Host(`pro.coding`) && Header(`location`, `shenzhen`)"));
    assert_eq!(
        err_in(Syntax::V3, "Headers(`location`, `shenzhen`)"),
        "column 1: unknown matcher 'Headers' in rule syntax v3 (a v2 matcher)"
    );
    assert_eq!(
        err_in(Syntax::V2, "Header(`location`, `shenzhen`)"),
        "column 1: unknown matcher 'Header' in rule syntax v2 (a v3 matcher)"
    );
    // Guessing, a one-pair Headers is v3's Header (the same meaning in both syntaxes), so
    // it stands beside v3-only matchers; stated v3 it stays unknown.
    let both = "PathRegexp(`^/`) && Headers(`location`, `shenzhen`)";
    assert!(r.eval(both));
    assert!(!req("pro.coding", "/").h("location", b"x").eval(both));
    assert!(r.eval("PathRegexp(`^/`) && HeadersRegexp(`location`, `^shen`)"));
    assert!(compile_with(both, Some(Syntax::V3), &mut 256).is_err());
    // Valid in neither: the error says what each expected.
    assert_eq!(
        compile_err("Header(`a`, `b`) && HostHeader(`a`)"),
        "column 21: as v3: unknown matcher 'HostHeader' in rule syntax v3 (a v2 matcher); \
         as v2, column 1: unknown matcher 'Header' in rule syntax v2 (a v3 matcher)"
    );
    assert_eq!(
        compile_err("Host(`a`, `b`) && Path(`/{`)"),
        "column 1: as v3: Host takes 1 argument, got 2; as v2, column 24: unbalanced braces in '/{'"
    );
    // A v3-only matcher with a v3 error reports the v3 error alone.
    assert_eq!(
        compile_err("PathRegexp(`/`, `/x`)"),
        "column 1: PathRegexp takes 1 argument, got 2"
    );
}

#[test]
fn traefik_ingressroute_rules_paste_unchanged() {
    // Rules as they appear in Traefik's documentation and typical IngressRoutes.
    let r = req("example.com", "/products/42?mobile=android")
        .h("content-type", b"application/json")
        .ip("192.168.1.7");
    for rule in [
        "Host(`example.com`) && PathPrefix(`/products`)",
        "Host(`example.com`) && (PathPrefix(`/products`) || PathPrefix(`/api`))",
        "Header(`Content-Type`, `application/json`)",
        "HeaderRegexp(`Content-Type`, `^application/(json|yaml)$`)",
        "Query(`mobile`, `android`)",
        "ClientIP(`192.168.0.0/16`) && Method(`GET`)",
        "PathRegexp(`^/products/(foo|[0-9]+)$`)",
        "HostRegexp(`^.+\\.com$`)",
        "Host(\"example.com\") && Path(\"/products/42\")",
    ] {
        assert!(r.eval(rule), "{rule}");
        assert!(r.v3(rule), "{rule}");
    }
}

#[test]
fn compile_errors_name_the_column() {
    assert_eq!(compile_err("Hots(`a`)"), "column 1: unknown matcher 'Hots'");
    assert_eq!(
        compile_err("Host(`a`) && HostSNI(`b`)"),
        "column 14: unknown matcher 'HostSNI' (a TCP matcher; rollgate routes HTTP)"
    );
    assert_eq!(
        compile_err("Header(`a`)"),
        "column 1: Header takes 2 arguments, got 1"
    );
    assert_eq!(
        compile_err("Cookie(`a`, `b`, `c`)"),
        "column 1: Cookie takes 1 to 2 arguments, got 3"
    );
    assert!(compile_err("PathRegexp(`(`)").starts_with("column 12: invalid regular expression '('"));
    assert_eq!(
        compile_err("ClientIP(`10.0.0.0/33`)"),
        "column 10: invalid prefix length '/33' (0 to 32)"
    );
    assert_eq!(
        compile_err("ClientIP(`a.b`)"),
        "column 10: invalid IP address 'a.b'"
    );
    assert_eq!(
        compile_err("Header(`a b`, `c`)"),
        "column 8: invalid header name 'a b'"
    );
    assert_eq!(
        compile_err("Host(`pro.coding`) && Headers(`location` `shenzhen`)"),
        "column 42: expected ',' or ')'"
    );
}
