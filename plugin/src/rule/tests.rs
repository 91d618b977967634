//! Matcher tests: every function, v2 and v3 spellings, and compile errors with positions.

use std::net::IpAddr;

use super::*;
use crate::request::Request;

struct R {
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    ip: Option<IpAddr>,
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
    fn eval(&self, rule: &str) -> bool {
        let m = compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let pairs = self.headers.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        m.matches(&Request::new(pairs, self.ip))
    }
}

fn compile_err(rule: &str) -> String {
    compile(rule).unwrap_err().to_string()
}

#[test]
fn host_v2_and_v3() {
    let r = req("Pro.Coding:8443", "/");
    assert!(r.eval("Host(`pro.coding`)"));
    assert!(r.eval("Host(`PRO.coding`)"));
    assert!(r.eval("Host(`a.com`, `pro.coding`)"));
    assert!(r.eval("HostHeader(`pro.coding`)"));
    assert!(r.eval("host(`pro.coding`)"));
    assert!(!r.eval("Host(`dev.coding`)"));
    assert!(!r.eval("Host(`coding`)"));
    assert!(req("pro.coding.", "/").eval("Host(`pro.coding`)"));
}

#[test]
fn host_regexp_plain_and_template() {
    let r = req("api.example.com", "/");
    assert!(r.eval("HostRegexp(`^[a-z]+\\.example\\.com$`)"));
    assert!(r.eval("HostRegexp(`example`)"), "v3 regexes are unanchored");
    assert!(
        !r.eval("HostRegexp(`^[a-z]{2}\\.example\\.com$`)"),
        "{{2}} is a quantifier"
    );
    assert!(r.eval("HostRegexp(`{subdomain:[a-z]+}.example.com`)"));
    assert!(r.eval("HostRegexp(`{sub}.example.com`)"));
    assert!(req("API.Example.com", "/").eval("HostRegexp(`{sub}.example.com`)"));
    assert!(!req("a.b.example.com", "/").eval("HostRegexp(`{sub}.example.com`)"));
    assert!(
        !req("apixexample.com", "/").eval("HostRegexp(`{sub}.example.com`)"),
        "dots are literal"
    );
    assert!(
        r.eval("Host(`{sub:[a-z]+}.example.com`)"),
        "v2 Host accepted templates"
    );
}

#[test]
fn paths() {
    let r = req("a", "/api/v1/users?x=1");
    assert!(r.eval("Path(`/api/v1/users`)"));
    assert!(!r.eval("Path(`/api/v1`)"));
    assert!(r.eval("PathPrefix(`/api`)"));
    assert!(r.eval("PathPrefix(`/x`, `/api/`)"));
    assert!(!r.eval("PathPrefix(`/API`)"));
    assert!(r.eval("PathRegexp(`^/api/v[0-9]+/`)"));
    assert!(r.eval("PathRegexp(`users`)"));
    assert!(
        !r.eval("PathRegexp(`x=1`)"),
        "the query is not part of the path"
    );
    assert!(r.eval("Path(`/api/{version}/users`)"));
    assert!(r.eval("Path(`/api/{version:v[0-9]}/users`)"));
    assert!(!r.eval("Path(`/api/{version:v[2-9]}/users`)"));
    assert!(r.eval("PathPrefix(`/api/{v:v[0-9]{1}}/`)"));
    assert!(!req("a", "/api/v1x/users").eval("Path(`/api/{version:v[0-9]}/users`)"));
}

#[test]
fn methods() {
    let r = req("a", "/").method("POST");
    assert!(r.eval("Method(`POST`)"));
    assert!(r.eval("Method(`GET`, `POST`)"));
    assert!(!r.eval("Method(`GET`)"));
}

#[test]
fn headers_exact_and_regexp() {
    let r = req("a", "/")
        .h("location", b"shenzhen")
        .h("x-multi", b"one")
        .h("x-multi", b"two");
    assert!(r.eval("Header(`location`, `shenzhen`)"));
    assert!(
        r.eval("Headers(`Location`, `shenzhen`)"),
        "names ignore case"
    );
    assert!(
        !r.eval("Header(`location`, `Shenzhen`)"),
        "values are exact"
    );
    assert!(!r.eval("Header(`missing`, ``)"));
    assert!(
        r.eval("Header(`x-multi`, `two`)"),
        "any value of a repeated header"
    );
    assert!(r.eval("HeaderRegexp(`location`, `^shen`)"));
    assert!(r.eval("HeadersRegexp(`location`, `zhe`)"));
    assert!(!r.eval("HeaderRegexp(`location`, `^zhen`)"));
    let bad = req("a", "/").h("location", b"\xff\xfeshenzhen");
    assert!(!bad.eval("Header(`location`, `shenzhen`)"));
    assert!(
        bad.eval("HeaderRegexp(`location`, `shenzhen$`)"),
        "invalid UTF-8 is matched lossily"
    );
}

#[test]
fn query_v2_and_v3() {
    let r = req("a", "/p?mobile=android&flag&q=a%20b&tag=x&tag=y+z");
    assert!(r.eval("Query(`mobile`, `android`)"));
    assert!(r.eval("Query(`mobile`)"));
    assert!(r.eval("Query(`flag`)"));
    assert!(!r.eval("Query(`missing`)"));
    assert!(r.eval("Query(`mobile=android`)"));
    assert!(r.eval("Query(`mobile=ios`, `mobile=android`)"));
    assert!(!r.eval("Query(`mobile=ios`)"));
    assert!(r.eval("Query(`q`, `a b`)"), "values are decoded");
    assert!(r.eval("Query(`tag`, `y z`)"), "any value of a repeated key");
    assert!(r.eval("QueryRegexp(`mobile`, `^and`)"));
    assert!(!r.eval("QueryRegexp(`mobile`, `^ios`)"));
}

#[test]
fn client_ip_v4_v6() {
    let r = req("a", "/").ip("10.1.2.3");
    assert!(r.eval("ClientIP(`10.0.0.0/8`)"));
    assert!(r.eval("ClientIP(`10.1.2.3`)"));
    assert!(r.eval("ClientIP(`192.168.0.0/16`, `10.1.2.0/24`)"));
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
}

#[test]
fn cookies() {
    let r = req("a", "/")
        .h("cookie", b"session=abc; beta=yes")
        .h("cookie", b"uid=42");
    assert!(r.eval("Cookie(`beta`, `yes`)"));
    assert!(r.eval("Cookie(`uid`, `42`)"));
    assert!(r.eval("Cookie(`beta`)"));
    assert!(!r.eval("Cookie(`beta`, `no`)"));
    assert!(
        !r.eval("Cookie(`Beta`, `yes`)"),
        "cookie names are case-sensitive"
    );
    assert!(r.eval("CookieRegexp(`session`, `^a`)"));
    assert!(!r.eval("CookieRegexp(`session`, `^b`)"));
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
        compile_err("Host()"),
        "column 1: Host takes at least 1 argument, got 0"
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
        compile_err("Query(`a=b`, `c`)"),
        "column 14: expected 'key=value' in Query, got 'c'"
    );
    assert_eq!(
        compile_err("Host(`pro.coding`) && Headers(`location` `shenzhen`)"),
        "column 42: expected ',' or ')'"
    );
}
