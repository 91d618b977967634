//! The API's view of one exchange: a [`Request`] read whole (head and bounded body) from
//! hyper's, and a [`Response`] turned into hyper's. hyper parses and frames HTTP/1.1
//! ([`crate::conn`] serves the connections); this module only bounds the body and keeps the
//! handlers free of hyper's types.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::time::{timeout_at, Instant};

/// Largest request head accepted (hyper's read buffer: a longer head is a 431).
pub const MAX_HEAD: usize = 16 << 10;
/// Largest request body accepted: commands take a small JSON object at most.
pub const MAX_BODY: usize = 64 << 10;

/// A request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (at most [`MAX_BODY`] bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// First value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// First value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides `content-length`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// JSON of `value`.
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// hyper's response; a header hyper cannot send (never one of ours) is left out.
    pub fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let mut resp = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *resp.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        for (n, v) in self.headers {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::from_bytes(n.as_bytes()),
                hyper::header::HeaderValue::from_str(&v),
            ) {
                resp.headers_mut().append(n, v);
            }
        }
        resp
    }
}

/// At most 64 characters of client text, escaped as every error escapes
/// ([`rollgate_rollout::excerpt::bounded`]), for an error message.
pub fn excerpt(b: &[u8]) -> String {
    rollgate_rollout::excerpt::bounded(&String::from_utf8_lossy(b), 64)
}

/// Why a request could not be read whole.
#[derive(Debug)]
pub enum ReadError {
    /// Answer this (then close the connection).
    Refuse(Response),
    /// The connection broke: close without an answer.
    Io(hyper::Error),
}

fn refuse(status: u16, why: &str) -> ReadError {
    ReadError::Refuse(Response::error(status, why))
}

/// Reads the rest of `req` (its body, at most [`MAX_BODY`] bytes, by `deadline`).
pub async fn read_request<B>(
    req: hyper::Request<B>,
    deadline: Instant,
) -> Result<Request, ReadError>
where
    B: hyper::body::Body<Data = Bytes, Error = hyper::Error>,
{
    let (head, body) = req.into_parts();
    let text = |v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), text(v)))
        .collect();
    // Commands are small JSON objects; a streamed body has no use here.
    if head.headers.contains_key(hyper::header::TRANSFER_ENCODING) {
        return Err(refuse(400, "chunked request bodies are not supported"));
    }
    if let Some(len) = head.headers.get(hyper::header::CONTENT_LENGTH) {
        // hyper has checked it is a number.
        if len.to_str().ok().and_then(|l| l.parse::<usize>().ok()) > Some(MAX_BODY) {
            return Err(refuse(
                413,
                &format!("request body larger than {MAX_BODY} bytes"),
            ));
        }
    }
    let body = match timeout_at(deadline, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => return Err(refuse(408, "the request body did not arrive in time")),
        Ok(Ok(b)) => b.to_bytes().to_vec(),
        Ok(Err(e)) => match e.downcast::<hyper::Error>() {
            Ok(e) => return Err(ReadError::Io(*e)),
            Err(_) => {
                return Err(refuse(
                    413,
                    &format!("request body larger than {MAX_BODY} bytes"),
                ))
            }
        },
    };
    Ok(Request {
        method: head.method.as_str().to_string(),
        path: head.uri.path().to_string(),
        query: url::form_urlencoded::parse(head.uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hyper_req(
        target: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> hyper::Request<Full<Bytes>> {
        let mut r = hyper::Request::builder().method("POST").uri(target);
        for (n, v) in headers {
            r = r.header(*n, *v);
        }
        r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
    }

    async fn read(req: hyper::Request<Full<Bytes>>) -> Result<Request, ReadError> {
        // `Full` never fails; the signature wants hyper's error type.
        let req = req.map(|b| b.map_err(|never| match never {}));
        read_request(req, Instant::now() + std::time::Duration::from_secs(5)).await
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn decodes_queries() {
        let r = rt()
            .block_on(read(hyper_req(
                "/v1/policies/flask?version=3&wait=500ms&a=a%20b+c%2&r=%5Erollgate",
                &[],
                "{}",
            )))
            .unwrap();
        assert_eq!(r.path, "/v1/policies/flask");
        assert_eq!(r.param("version"), Some("3"));
        assert_eq!(r.param("wait"), Some("500ms"));
        assert_eq!(r.param("a"), Some("a b c%2"));
        assert_eq!(r.param("r"), Some("^rollgate"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn bodies_are_bounded() {
        let status = |r: Result<Request, ReadError>| match r {
            Err(ReadError::Refuse(resp)) => resp.status,
            other => panic!("{other:?}"),
        };
        let big = "x".repeat(MAX_BODY + 1);
        // Declared too large: refused before it is read.
        let declared = (MAX_BODY + 1).to_string();
        let r = rt().block_on(read(hyper_req("/", &[("content-length", &declared)], "")));
        assert_eq!(status(r), 413);
        let r = rt().block_on(read(hyper_req("/", &[], &big)));
        assert_eq!(status(r), 413);
        let r = rt().block_on(read(hyper_req(
            "/",
            &[("transfer-encoding", "chunked")],
            "",
        )));
        assert_eq!(status(r), 400);
    }

    #[test]
    fn responses_keep_their_headers() {
        let r = Response::new(304, "text/plain", "")
            .with_header("x-rollgate-version", "4")
            .into_hyper();
        assert_eq!(r.status(), 304);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["x-rollgate-version"], "4");
    }
}
