//! Rendering of the Envoy bootstrap YAML the harness runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What to run Envoy with: the policy, the clusters it may route to, and how.
#[derive(Clone, Debug)]
pub struct EnvoyOptions {
    /// The filter's policy JSON, passed verbatim as the plugin `configuration` StringValue.
    pub policy: String,
    /// `(cluster name, port on 127.0.0.1)` for every cluster, usually one per variant.
    pub clusters: Vec<(String, u16)>,
    /// Envoy worker threads (`--concurrency`); 2 by default.
    pub concurrency: u32,
    /// Cluster for requests the filter left without `x-rollgate-cluster`; `None` answers them
    /// with a direct `404 no variant`.
    pub fallback_cluster: Option<String>,
    /// Read the filter's configuration from this file by ECDS (Envoy's extension config
    /// discovery, as Istio delivers a WasmPlugin) instead of inline: [`write_ecds`] changes
    /// it while Envoy runs. `policy` is ignored then.
    pub ecds: Option<PathBuf>,
}

impl EnvoyOptions {
    /// Options with `policy`, no clusters, concurrency 2 and no fallback cluster.
    pub fn new(policy: impl Into<String>) -> EnvoyOptions {
        EnvoyOptions {
            policy: policy.into(),
            clusters: Vec::new(),
            concurrency: 2,
            fallback_cluster: None,
            ecds: None,
        }
    }

    /// Takes the filter's configuration from the ECDS file `path` (see [`write_ecds`]).
    pub fn ecds(mut self, path: &Path) -> EnvoyOptions {
        self.ecds = Some(path.to_path_buf());
        self
    }

    /// Adds cluster `name` with one endpoint at `127.0.0.1:port`.
    pub fn cluster(mut self, name: &str, port: u16) -> EnvoyOptions {
        self.clusters.push((name.to_string(), port));
        self
    }

    /// Sets the number of worker threads.
    pub fn concurrency(mut self, workers: u32) -> EnvoyOptions {
        self.concurrency = workers;
        self
    }

    /// Routes requests without `x-rollgate-cluster` to cluster `name`.
    pub fn fallback_cluster(mut self, name: &str) -> EnvoyOptions {
        self.fallback_cluster = Some(name.to_string());
        self
    }
}

/// Appends a STATIC cluster `name` (YAML, quoted if it must be) of one endpoint, 127.0.0.1:`port`; `http2` for a gRPC
/// service.
pub fn static_cluster(y: &mut String, name: &str, port: u16, http2: bool) {
    let protocol = if http2 {
        r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
"#
    } else {
        ""
    };
    let _ = write!(
        y,
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
{protocol}    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: 127.0.0.1, port_value: {port} }}
"#
    );
}

/// Quotes `s` as a YAML double-quoted scalar. YAML's double-quoted style accepts JSON string
/// escapes, so JSON escaping is safe for any input (policy JSON included).
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bootstrap YAML for `opts`, loading the filter from `wasm`. Listener and admin bind
/// `127.0.0.1:0`; the harness learns the ports from the admin endpoint.
///
/// Routing: route 1 matches any path when `x-rollgate-cluster` is present and sends the
/// request to the cluster that header names (`cluster_header`); route 2 catches the rest
/// (fallback cluster or `404 no variant`). The Wasm filter runs before the router; Envoy
/// re-matches the route after the filter sets the header, so route 1 sees it.
pub fn render(opts: &EnvoyOptions, wasm: &Path) -> String {
    let fallback = match &opts.fallback_cluster {
        Some(cluster) => format!("route: {{ cluster: {} }}", yaml_quote(cluster)),
        None => {
            "direct_response: { status: 404, body: { inline_string: \"no variant\" } }".to_string()
        }
    };
    let mut y = format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
# Histograms reach /stats/prometheus on each flush: keep analysis in tests quick.
stats_flush_interval: 1s
static_resources:
  listeners:
  - name: rollgate
    address:
      socket_address: {{ address: 127.0.0.1, port_value: 0 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: rollgate
          route_config:
            name: rollgate
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  headers:
                  - name: x-rollgate-cluster
                    present_match: true
                route:
                  cluster_header: x-rollgate-cluster
              - match: {{ prefix: "/" }}
                {fallback}
          http_filters:
{filter}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
"#,
        filter = match &opts.ecds {
            Some(path) => ecds_filter(path),
            None => wasm_filter(&opts.policy, wasm, 10),
        },
    );
    for (name, port) in &opts.clusters {
        static_cluster(&mut y, &yaml_quote(name), *port, false);
    }
    if opts.ecds.is_some() {
        // Envoy requires a node identity of any configuration it discovers.
        y.push_str("node: { id: rollgate-test, cluster: rollgate-test }\n");
    }
    if opts.clusters.is_empty() {
        // `clusters:` with no items is a null list, which Envoy accepts, but be explicit.
        y = y.replace("  clusters:\n", "  clusters: []\n");
    }
    y
}

/// Type URL of the Wasm HTTP filter's configuration.
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// `text` with every line indented by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The Wasm filter's `typed_config` running `wasm` with `policy` (at indent 0).
fn wasm_config(policy: &str, wasm: &Path) -> String {
    format!(
        r#""@type": {WASM_TYPE}
config:
  name: rollgate
  root_id: rollgate
  configuration:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {policy}
  vm_config:
    runtime: envoy.wasm.runtime.v8
    code:
      local:
        filename: {wasm}
  failure_policy: FAIL_CLOSED
"#,
        policy = yaml_quote(policy),
        wasm = yaml_quote(&wasm.to_string_lossy()),
    )
}

/// The Wasm HTTP filter running `wasm` with `policy`, indented by `n` spaces.
fn wasm_filter(policy: &str, wasm: &Path, n: usize) -> String {
    let f = format!(
        "- name: envoy.filters.http.wasm\n  typed_config:\n{}",
        indent(&wasm_config(policy, wasm), 4)
    );
    indent(&f, n)
}

/// The filter slot whose configuration comes from the ECDS file `path` (reloaded when a file
/// is moved into its directory, as [`write_ecds`] does).
fn ecds_filter(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("/"));
    format!(
        r#"          - name: rollgate
            config_discovery:
              config_source:
                path_config_source:
                  path: {path}
                  watched_directory: {{ path: {dir} }}
              type_urls: [{WASM_TYPE}]
"#,
        path = yaml_quote(&path.to_string_lossy()),
        dir = yaml_quote(&dir.to_string_lossy()),
    )
}

/// Writes the ECDS file `path`: the Wasm filter running `wasm` with `policy`, as Istio's
/// agent serves a WasmPlugin's `pluginConfig`. Written beside and moved into place, so Envoy
/// never reads half a file and its directory watch sees the move.
pub fn write_ecds(path: &Path, policy: &str, wasm: &Path) -> std::io::Result<()> {
    // A discovery response whose one resource is named as the filter slot.
    let body = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: rollgate\n  typed_config:\n{}",
        indent(&wasm_config(policy, wasm), 4)
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_json_for_yaml() {
        assert_eq!(yaml_quote(r#"{"a":"b\"c"}"#), r#""{\"a\":\"b\\\"c\"}""#);
        assert_eq!(yaml_quote("x\ny\u{1}"), r#""x\ny\u0001""#);
    }

    #[test]
    fn renders_fallback_and_clusters() {
        let opts = EnvoyOptions::new("{}")
            .cluster("a", 1)
            .fallback_cluster("a");
        let y = render(&opts, Path::new("/x.wasm"));
        assert!(y.contains("route: { cluster: \"a\" }"));
        assert!(y.contains("port_value: 1 }"));
        assert!(y.contains("filename: \"/x.wasm\""));
        let y = render(&EnvoyOptions::new("{}"), Path::new("/x.wasm"));
        assert!(y.contains("inline_string: \"no variant\""));
        assert!(y.contains("clusters: []"));
    }
}
