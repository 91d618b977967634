//! How a plugin is started: Envoy's plugin and VM configuration, plus the test doubles that
//! stand in for the rest of Envoy (callout clusters, foreign functions, the upstream).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::maps::Headers;
use super::{
    CalloutReply, GrpcCall, GrpcReply, GrpcStreamCall, GrpcStreamHandler, HttpCall, LogLevel,
    Response, Status,
};

/// What Envoy does with a plugin's streams once its VM failed (`failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Every stream gets a local 503 (`wasm_fail_stream`) without reaching the plugin.
    #[default]
    FailClosed,
    /// Streams bypass the plugin.
    FailOpen,
    /// The next stream on that worker gets a fresh VM (new instance, on_vm_start,
    /// on_configure).
    FailReload,
}

/// Answers unary gRPC calls to one cluster.
pub type GrpcHandler = Arc<dyn Fn(&GrpcCall) -> GrpcReply + Send + Sync>;

/// Opens the server side of each gRPC stream to one cluster.
pub type GrpcStreamOpener =
    Arc<dyn Fn(&GrpcStreamCall) -> Box<dyn GrpcStreamHandler> + Send + Sync>;

/// Answers HTTP callouts to one cluster.
pub type CalloutHandler = Arc<dyn Fn(&HttpCall) -> CalloutReply + Send + Sync>;
/// A foreign function the plugin can call with `proxy_call_foreign_function`.
pub type ForeignFunction = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;
/// The upstream: answers a request the filter let through (headers as forwarded, body).
pub type UpstreamHandler = Arc<dyn Fn(&Headers, &[u8]) -> Response + Send + Sync>;

/// How a plugin is started: Envoy's `PluginConfig` and `VmConfig`, plus the test doubles
/// (callout clusters, foreign functions, upstream).
#[derive(Clone)]
pub struct PluginConfig {
    pub(crate) name: String,
    pub(crate) root_id: String,
    pub(crate) vm_id: String,
    pub(crate) configuration: Vec<u8>,
    pub(crate) vm_configuration: Vec<u8>,
    pub(crate) workers: usize,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) properties: Vec<(Vec<u8>, Vec<u8>)>,
    pub(crate) destination: String,
    pub(crate) use_remote_address: bool,
    pub(crate) log_level: LogLevel,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) clusters: BTreeMap<String, CalloutHandler>,
    pub(crate) grpc_clusters: BTreeMap<String, GrpcHandler>,
    pub(crate) grpc_stream_clusters: BTreeMap<String, GrpcStreamOpener>,
    pub(crate) foreign_functions: BTreeMap<String, ForeignFunction>,
    pub(crate) upstream: Option<UpstreamHandler>,
    pub(crate) seed: u64,
    pub(crate) call_timeout: Option<Duration>,
    pub(crate) max_memory: Option<usize>,
}

impl fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConfig")
            .field("name", &self.name)
            .field("root_id", &self.root_id)
            .field("vm_id", &self.vm_id)
            .field("workers", &self.workers)
            .field("clusters", &self.clusters.keys().collect::<Vec<_>>())
            .field(
                "grpc_clusters",
                &self.grpc_clusters.keys().collect::<Vec<_>>(),
            )
            .field(
                "grpc_stream_clusters",
                &self.grpc_stream_clusters.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PluginConfig {
    /// A plugin named `rollgate` (root id too), vm_id `""` (Istio's), one worker,
    /// fail-closed, log level Info, with this plugin `configuration`.
    pub fn new(configuration: impl Into<Vec<u8>>) -> PluginConfig {
        PluginConfig {
            name: "rollgate".into(),
            root_id: "rollgate".into(),
            vm_id: String::new(),
            configuration: configuration.into(),
            vm_configuration: Vec::new(),
            workers: 1,
            env: Vec::new(),
            properties: Vec::new(),
            destination: "127.0.0.1:10000".into(),
            use_remote_address: false,
            log_level: LogLevel::Info,
            failure_policy: FailurePolicy::FailClosed,
            clusters: BTreeMap::new(),
            grpc_clusters: BTreeMap::new(),
            grpc_stream_clusters: BTreeMap::new(),
            foreign_functions: BTreeMap::new(),
            upstream: None,
            seed: 0x5eed,
            call_timeout: None,
            max_memory: None,
        }
    }

    /// Bounds each call into the guest to about `timeout` (rounded up to [`super::EPOCH_TICK`]):
    /// a call running longer traps (`wasm trap: interrupt`) and fails its VM. Needs a module
    /// from [`super::Wasm::interruptible_from_bytes`]; others ignore it.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Bounds each VM's linear memory to `bytes`: growing past it traps and fails the VM
    /// (wasmtime's `StoreLimits`, trapping on a failed grow so the cause is named).
    pub fn max_memory(mut self, bytes: usize) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    /// The plugin name (`plugin_name` property).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// The root id (`plugin_root_id` property).
    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.into();
        self
    }

    /// The vm_id: the shared-data and queue namespace.
    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.into();
        self
    }

    /// The VM configuration (`on_vm_start`'s buffer).
    pub fn vm_configuration(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.vm_configuration = bytes.into();
        self
    }

    /// Number of worker VMs (Envoy's `--concurrency`); at least 1.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// An environment variable (`vm_config.environment_variables`), seen through WASI.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// A property at `path` (e.g. `["xds", "cluster_name"]`), raw bytes as Envoy would
    /// encode them. Checked before the host's own properties.
    pub fn property(mut self, path: &[&str], value: impl Into<Vec<u8>>) -> Self {
        let joined: Vec<&[u8]> = path.iter().map(|p| p.as_bytes()).collect();
        self.properties.push((joined.join(&0u8), value.into()));
        self
    }

    /// The listener address (`destination.address`); default `127.0.0.1:10000`.
    pub fn destination(mut self, addr: &str) -> Self {
        self.destination = addr.into();
        self
    }

    /// Envoy's connection-manager `use_remote_address`. Off (Envoy's default, and the e2e
    /// harness's), the downstream address the plugin sees as `source.address` is the last
    /// `X-Forwarded-For` entry when there is one; on, always the connection's peer
    /// ([`HttpRequest::source`]).
    pub fn use_remote_address(mut self, on: bool) -> Self {
        self.use_remote_address = on;
        self
    }

    /// What `proxy_get_log_level` reports (logs are captured at every level regardless).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.log_level = level;
        self
    }

    /// What happens to streams once a VM failed.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Declares upstream cluster `name` for `proxy_http_call`, answered by `handler`. Calls to
    /// undeclared clusters get BadArgument, as in Envoy. Handlers (like the upstream and
    /// foreign functions) run while the plugin is busy: they must not call back into the
    /// [`Plugin`] or the [`Host`].
    pub fn cluster(
        mut self,
        name: &str,
        handler: impl Fn(&HttpCall) -> CalloutReply + Send + Sync + 'static,
    ) -> Self {
        self.clusters.insert(name.into(), Arc::new(handler));
        self
    }

    /// Declares cluster `name` for `proxy_grpc_call`, answered by `handler` right after the
    /// callback that made the call. Calls to clusters declared by neither this nor
    /// [`PluginConfig::cluster`] get ParseFailure, as in Envoy 1.40; a gRPC call to a cluster
    /// declared only for HTTP gets [`GrpcReply::refused`].
    pub fn grpc_cluster(
        mut self,
        name: impl Into<String>,
        handler: impl Fn(&GrpcCall) -> GrpcReply + Send + Sync + 'static,
    ) -> PluginConfig {
        self.grpc_clusters.insert(name.into(), Arc::new(handler));
        self
    }

    /// Declares cluster `name` for gRPC streams (`proxy_grpc_stream`): `open` makes the server
    /// side of each stream, a [`GrpcStreamHandler`] (any `FnMut(&[GrpcStreamSent]) ->
    /// Vec<GrpcStreamReply> + Send`), asked right after each callback in which the plugin
    /// opened the stream or acted on it. Streams to clusters declared by none of this,
    /// [`PluginConfig::grpc_cluster`] and [`PluginConfig::cluster`] get ParseFailure, as in
    /// Envoy 1.40; a stream to a cluster declared only by those two gets
    /// [`GrpcStreamReply::refused`](super::GrpcStreamReply::refused).
    pub fn grpc_stream_cluster<H>(
        mut self,
        name: impl Into<String>,
        open: impl Fn(&GrpcStreamCall) -> H + Send + Sync + 'static,
    ) -> PluginConfig
    where
        H: GrpcStreamHandler + 'static,
    {
        self.grpc_stream_clusters.insert(
            name.into(),
            Arc::new(move |call: &GrpcStreamCall| -> Box<dyn GrpcStreamHandler> {
                Box::new(open(call))
            }),
        );
        self
    }

    /// Registers a foreign function (`clear_route_cache` is built in).
    pub fn foreign_function(
        mut self,
        name: &str,
        f: impl Fn(&[u8]) -> Result<Vec<u8>, Status> + Send + Sync + 'static,
    ) -> Self {
        self.foreign_functions.insert(name.into(), Arc::new(f));
        self
    }

    /// The upstream answering requests the filter lets through (default: `200`, empty body),
    /// unless the request carries its own [`HttpRequest::response`].
    pub fn upstream(
        mut self,
        f: impl Fn(&Headers, &[u8]) -> Response + Send + Sync + 'static,
    ) -> Self {
        self.upstream = Some(Arc::new(f));
        self
    }

    /// Seed of the VMs' `random_get` (deterministic by default, so runs reproduce).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}
