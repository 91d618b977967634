//! Every bound a policy must stay within, in one place (the README's "Limits" table lists
//! them).
//!
//! A policy arrives from outside the gateway (the filter's configuration, or fetched from the
//! sidecar), so every parser and compiler it passes through must run in bounded stack, memory
//! and time. The filter runs in a wasm VM with a 1 MiB shadow stack (Rust's wasm32 default)
//! and, under `rollgate try`, wasmtime's 512 KiB native stack; recursion depth is what can trap
//! it, so nesting is bounded tightly while lengths and counts are bounded generously (they only
//! cost time and memory linear in the input, itself bounded by [`MAX_POLICY_BYTES`]).
//!
//! The values are far above anything a real policy needs (the seed policy nests JSON 4 deep,
//! its rules not at all, and has 3 routes) and far below what overflows: the deepest rule and
//! JSON allowed parse, compile, match and drop on a 128 KiB native stack (see the tests).

/// Bytes in a policy or filter configuration document.
pub const MAX_POLICY_BYTES: usize = 1 << 20;

/// Nesting of JSON arrays and objects (the policy's schema nests 4 deep).
pub const MAX_JSON_DEPTH: usize = 32;

/// Bytes in any one JSON string (after escapes): rules and expressions are the longest.
pub const MAX_STRING_BYTES: usize = 64 << 10;

/// Bytes in a name the filter puts into stat names, shared-data keys or headers: the policy's
/// `name`, variant names and their clusters, rate-limit and breaker names, header, cookie and
/// query parameter names, salts.
pub const MAX_NAME_BYTES: usize = 256;

/// Bytes in one rule (`match`) or breaker `expression`.
pub const MAX_RULE_BYTES: usize = 64 << 10;

/// Nesting of parentheses and `!` in a rule or breaker expression. Parsing, compiling,
/// matching and dropping recurse once per level, so this is the bound on their stack.
pub const MAX_RULE_DEPTH: usize = 32;

/// Matchers (`Host(…)`, …) or comparisons in one rule or expression. `a || b || …` is kept as
/// one flat list, so terms cost time and memory, never stack.
pub const MAX_RULE_TERMS: usize = 4096;

/// Arguments of one matcher (`Host(`a`, `b`, …)`).
pub const MAX_RULE_ARGS: usize = 1024;

/// Regular expressions (`…Regexp` matchers and v2 `{templates}`) in one policy: each costs
/// memory in every worker for as long as the policy runs.
pub const MAX_REGEXES: usize = 256;

/// Compiled size of one regular expression, in bytes (regex-lite's NFA; its own default is
/// 10 MiB, which [`MAX_REGEXES`] of them would turn into gigabytes).
pub const MAX_REGEX_BYTES: usize = 32 << 10;

/// Entries of `routes`.
pub const MAX_ROUTES: usize = 1024;

/// Entries of `variants`, and of one route's `split`.
pub const MAX_VARIANTS: usize = 256;

/// Entries of `rate_limits`: each is looked up on every request.
pub const MAX_RATE_LIMITS: usize = 64;

/// Entries of `circuit_breakers`: each is checked on every worker's tick.
pub const MAX_BREAKERS: usize = 64;

/// Bytes of request body one mirror copy may hold (`routes[].mirror.max_body`): each copy in
/// flight holds its body in the worker's memory until it is sent.
pub const MAX_MIRROR_BODY: u32 = 1 << 20;

/// Mirror copies one worker may keep in flight (`routes[].mirror.max_in_flight`).
pub const MAX_MIRROR_IN_FLIGHT: u32 = 1000;

/// Bytes of request bodies one worker's copies in flight may hold in all (`max_body ×
/// max_in_flight`).
pub const MAX_MIRROR_BYTES: u64 = 64 << 20;

/// The longest a mirror copy may take (`routes[].mirror.timeout`): its state is held until then.
pub const MAX_MIRROR_TIMEOUT_NS: u64 = 60 * 1_000_000_000;

/// Problems reported for one document; the rest are counted in a last line. Bounds the memory
/// of an error answer to a hostile document.
pub const MAX_ERRORS: usize = 100;

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
