//! The web dashboard's files, built into the binary (no toolchain, nothing to install): one
//! page, its script and its style sheet. The page reads the same open endpoints as the CLI
//! (`/v1/rollouts`, `/v1/traffic`) and sends commands with the bearer token the user pastes
//! into it; the token lives in the tab's `sessionStorage`, never in what is served.
//!
//! Served by `serve --dir` at `/` and `/dashboard`, and by `rollgate dashboard`, which serves
//! the same files in front of a sidecar it proxies.

use super::http::Response;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/app.css");

/// Scripts and styles only from these files (no inline code, so an injected `<script>` or
/// `on…=` attribute does not run), requests only to this origin, never framed; `data:`
/// images for the page's empty icon (else the browser fetches `/favicon.ico`, a 404).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The headers every dashboard file carries.
pub fn secured(resp: Response) -> Response {
    resp.with_header("content-security-policy", CSP)
        .with_header("x-content-type-options", "nosniff")
        .with_header("x-frame-options", "DENY")
        .with_header("referrer-policy", "no-referrer")
        .with_header("cache-control", "no-cache")
}

/// The file at `path`, if it is one of the dashboard's.
pub fn asset(path: &str) -> Option<Response> {
    let (content_type, body) = match path {
        "/" | "/dashboard" | "/dashboard/" => ("text/html; charset=utf-8", PAGE),
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/dashboard/app.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    };
    Some(secured(Response::new(200, content_type, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_with_their_headers_and_the_page_has_no_inline_code() {
        let r = asset("/dashboard").unwrap();
        let h = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("x-content-type-options").as_deref(), Some("nosniff"));
        assert!(h("content-security-policy")
            .unwrap()
            .contains("script-src 'self'"));
        let page = String::from_utf8(r.body).unwrap();
        assert!(page.contains("src=\"/dashboard/app.js\""));
        // The CSP would block them anyway; the page must not rely on any.
        assert!(
            !page.contains("<script>") && !page.contains(" style=") && !page.contains("onclick")
        );
        assert!(asset("/dashboard/app.js").is_some());
        assert!(asset("/dashboard/other").is_none());
    }
}
