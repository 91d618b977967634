//! Who may drive a release through the API: reads are open (gateways poll policies without
//! credentials), commands (`POST`) need the bearer token when one is configured, and requests
//! a browser makes on a web page's behalf are refused, so a page a developer opens can never
//! promote or abort (no CSRF), token or not; the one exception is the dashboard served by this
//! same origin, with the token the user gives it.

use std::path::Path;

use subtle::ConstantTimeEq;

use super::http::{excerpt, Request, Response};

/// Shortest token accepted: 16 characters, 96 bits at least from a random generator.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token commands must carry. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text (surrounding whitespace, as a trailing newline in a file, is not
    /// part of it); `what` names where it came from in the error.
    pub fn new(text: &str, what: &str) -> Result<Token, String> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "{what}: the token must be at least {MIN_TOKEN_LEN} characters (it has {})",
                t.len()
            ));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{what}: the token must be printable ASCII without spaces"
            ));
        }
        Ok(Token(t.to_string()))
    }

    /// Reads a token file (`--token-file`).
    pub fn from_file(path: &Path) -> Result<Token, String> {
        let what = format!("--token-file {}", path.display());
        // A token is a line; a larger file is a mistake whose content must not be read.
        let meta = std::fs::metadata(path).map_err(|e| format!("{what}: {e}"))?;
        if meta.len() > 4096 {
            return Err(format!("{what}: larger than 4096 bytes, not a token"));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
        Token::new(&text, &what)
    }

    /// Why the token file at `path` may be read by others (group or world permission bits),
    /// if it may. Only a warning: a Kubernetes Secret volume is 0644 unless its `defaultMode`
    /// says otherwise, and refusing would stop a sidecar deployed that way.
    pub fn loose_permissions(path: &Path) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "--token-file {}: readable by other users (mode {mode:04o}), who can then drive \
                 releases; chmod 600 it (in Kubernetes: the Secret volume's defaultMode: 0400)",
                path.display()
            )
        })
    }

    /// `--token-file PATH` if given, else `$ROLLGATE_TOKEN` if set, else none.
    pub fn from_flag_or_env(
        file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Token>, String> {
        match (file, env("ROLLGATE_TOKEN")) {
            (Some(f), _) => Token::from_file(Path::new(f)).map(Some),
            (None, Some(t)) => Token::new(&t, "ROLLGATE_TOKEN").map(Some),
            (None, None) => Ok(None),
        }
    }

    /// The token's text, for a client to send.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `origin` (`http://host:port`) names the host the request was sent to.
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

/// Whether `req` changes something (every method but `GET` and `HEAD`).
pub fn mutating(req: &Request) -> bool {
    !matches!(req.method.as_str(), "GET" | "HEAD")
}

/// The refusal for a command that may not act, `None` when it may.
pub fn refuse(req: &Request, token: Option<&Token>) -> Option<Response> {
    if !mutating(req) {
        return None;
    }
    // A browser adds `Origin` to every POST, and `Sec-Fetch-Site`. The one page allowed to
    // command is the dashboard served here, from this very origin, and only with the token:
    // without a token configured, a page on another site that DNS rebinding makes look like
    // this origin could act, so then no page may.
    let origin = header(req, "origin");
    let site = header(req, "sec-fetch-site").filter(|s| *s != "none");
    if origin.is_some() || site.is_some() {
        if let Some(o) = origin.filter(|o| !same_origin(o, header(req, "host"))) {
            return Some(Response::error(
                403,
                &format!(
                    "requests from other web pages are refused (Origin {}); use the rollgate \
                     CLI or the dashboard this server serves",
                    excerpt(o.as_bytes())
                ),
            ));
        }
        if let Some(s) = site.filter(|s| *s != "same-origin") {
            return Some(Response::error(
                403,
                &format!(
                    "requests from web pages are refused (Sec-Fetch-Site {})",
                    excerpt(s.as_bytes())
                ),
            ));
        }
        if token.is_none() {
            return Some(Response::error(
                403,
                "the dashboard's commands need the server to have a token (--token-file or \
                 $ROLLGATE_TOKEN); use the rollgate CLI",
            ));
        }
    }
    // The content types an HTML form (or a fetch without a CORS preflight) can send.
    if let Some(ct) = header(req, "content-type") {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" {
            return Some(Response::error(
                415,
                &format!(
                    "commands take no body or application/json, not {}",
                    excerpt(essence.as_bytes())
                ),
            ));
        }
    }
    let token = token?;
    let given = header(req, "authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let ok = given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(token.secret().as_bytes())));
    if ok {
        return None;
    }
    let why = if given.is_some() {
        "wrong bearer token"
    } else {
        "commands need a bearer token (--token-file or $ROLLGATE_TOKEN)"
    };
    Some(Response::error(401, why).with_header("www-authenticate", "Bearer realm=\"rollgate\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/v1/rollouts/flask/abort".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Request::default()
        }
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::new("0123456789abcdef\n", "x").unwrap();
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::new("short", "x")
            .unwrap_err()
            .contains("at least 16"));
        let status = |h: &[(&str, &str)]| refuse(&post(h), Some(&t)).map(|r| r.status);
        assert_eq!(status(&[]), Some(401));
        assert_eq!(
            status(&[("authorization", "Bearer 0123456789abcdeX")]),
            Some(401)
        );
        assert_eq!(
            status(&[("authorization", "Basic 0123456789abcdef")]),
            Some(401)
        );
        assert_eq!(
            status(&[("authorization", "Bearer 0123456789abcdef")]),
            None
        );
        assert_eq!(
            status(&[("authorization", "bearer 0123456789abcdef")]),
            None
        );
    }

    #[test]
    fn only_the_dashboard_of_this_origin_with_the_token_may_command() {
        let t = Token::new("0123456789abcdef", "x").unwrap();
        let bearer = ("authorization", "Bearer 0123456789abcdef");
        let host = ("host", "127.0.0.1:8181");
        let page = [
            bearer,
            host,
            ("origin", "http://127.0.0.1:8181"),
            ("sec-fetch-site", "same-origin"),
        ];
        let status = |h: &[(&str, &str)], t: Option<&Token>| refuse(&post(h), t).map(|r| r.status);
        assert_eq!(status(&page, Some(&t)), None);
        // Same page without the token, or a server without one: refused.
        assert_eq!(status(&page[1..], Some(&t)), Some(401));
        assert_eq!(status(&page, None), Some(403));
        // Another origin (or a rebound name: its Host is the attacker's), or cross-site.
        let evil = [bearer, host, ("origin", "http://evil.example")];
        assert_eq!(status(&evil, Some(&t)), Some(403));
        // A name rebound to this server looks same-origin, but its page has no token.
        let rebound = [
            ("host", "evil.example:8181"),
            ("origin", "http://evil.example:8181"),
        ];
        assert_eq!(status(&rebound, Some(&t)), Some(401));
        assert_eq!(status(&rebound, None), Some(403));
        let cross = [
            bearer,
            host,
            ("origin", "http://127.0.0.1:8181"),
            ("sec-fetch-site", "cross-site"),
        ];
        assert_eq!(status(&cross, Some(&t)), Some(403));
    }
}
