//! Properties that hold only once work in flight elsewhere lands on main. Each is checked when
//! its switch is on; turning one on is the test that the work landed. Kept in one place so the
//! report and the next person can see what is not yet enforced.

/// The sidecar's HTTP reader refuses an over-long head as the bytes arrive, not when a line
/// ends (issue 11: a 300 MB request line without a newline grew memory without bound). Landed
/// in the hand-written reader; since issue 12, hyper's read buffer cap (`max_buf_size`).
pub const HEAD_LIMIT_AS_BYTES_ARRIVE: bool = true;

/// A client's `?version=` only compares: no request moves the served version backwards, wraps
/// it, or lifts it far above the one served (issue 11: `version=18446744073709551614` moved it
/// to 2^64−1). Work of the "server" change to the registry's renumbering.
pub const VERSIONS_ONLY_COMPARED: bool = true;

/// A request a browser would send for another site (a foreign `Origin`, `Sec-Fetch-Site:
/// cross-site`, or a form content type) never acts: a mutating endpoint answers it with a
/// 4xx (issue 11: a form post from any web page aborted a release). Work of the "server"
/// change (token, CSRF checks).
pub const BROWSER_REQUESTS_REFUSED: bool = true;

/// Rollout YAML errors carry a field path or a line and column, and echo at most a short
/// excerpt of the file (issue 11: serde_yaml's messages quoted whole values, and a symlinked
/// `/etc/passwd` came back in full). Work of the "rolldir" change to serde-saphyr.
pub const ROLLOUT_ERRORS_LOCATED_AND_SHORT: bool = true;
