//! [`Stack`]: the usual fixture, one [`Upstream`] per cluster behind one [`Envoy`].

use crate::client::Client;
use crate::config::EnvoyOptions;
use crate::envoy::{Envoy, StartError};
use crate::upstream::Upstream;

/// Cluster of the seed policy's `stable` variant.
pub const STABLE: &str = "k8s-flask";
/// Cluster of the seed policy's `canary` variant.
pub const CANARY: &str = "k8s-flask-canary";
/// Cluster of the seed policy's `dev` variant.
pub const DEV: &str = "k8s-flask-dev";
/// The seed policy's clusters.
pub const SEED_CLUSTERS: [&str; 3] = [STABLE, CANARY, DEV];

/// The seed policy (the one shipped in `manifests/envoy/envoy.yaml`).
pub const SEED_POLICY: &str = r#"{
  "name": "flask",
  "variants": { "stable": "k8s-flask", "canary": "k8s-flask-canary", "dev": "k8s-flask-dev" },
  "default": "stable",
  "routes": [
    { "match": "Host(`dev.coding`)", "variant": "dev" },
    { "match": "Host(`pro.coding`) && Headers(`location`, `shenzhen`)", "variant": "canary" },
    { "match": "Host(`pro.coding`)", "split": [ { "variant": "canary", "weight": 50 } ],
      "sticky": { "header": "x-user-id" } }
  ],
  "cluster_header": "x-rollgate-cluster",
  "variant_header": "x-rollgate-variant"
}"#;

/// One upstream per cluster (each named after its cluster, so a response body names the
/// cluster that served it) and an Envoy routing to them.
pub struct Stack {
    /// The Envoy in front of the upstreams (declared first: it stops first on drop).
    pub envoy: Envoy,
    /// The upstreams, in the order their clusters were given (fallback last if added).
    pub upstreams: Vec<Upstream>,
}

impl Stack {
    /// Upstreams for the seed clusters behind an Envoy running `policy`; requests the filter
    /// does not route get `404 no variant`. Panics (with Envoy's log) if Envoy does not start.
    pub fn start(policy: &str) -> Stack {
        Stack::try_start(policy, &SEED_CLUSTERS, None).unwrap()
    }

    /// Upstreams for `clusters` (plus `fallback` if not among them) behind an Envoy running
    /// `policy`, sending unrouted requests to `fallback` when given.
    pub fn try_start(
        policy: &str,
        clusters: &[&str],
        fallback: Option<&str>,
    ) -> Result<Stack, StartError> {
        let mut names: Vec<&str> = clusters.to_vec();
        if let Some(f) = fallback {
            if !names.contains(&f) {
                names.push(f);
            }
        }
        let upstreams: Vec<Upstream> = names.iter().map(|n| Upstream::start(n)).collect();
        let mut opts = EnvoyOptions::new(policy);
        for u in &upstreams {
            opts = opts.cluster(u.name(), u.port());
        }
        if let Some(f) = fallback {
            opts = opts.fallback_cluster(f);
        }
        let envoy = Envoy::start(&opts)?;
        Ok(Stack { envoy, upstreams })
    }

    /// A new keep-alive client for Envoy's listener.
    pub fn client(&self) -> Client {
        self.envoy.client()
    }

    /// The upstream serving cluster `name`. Panics if there is none.
    pub fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams
            .iter()
            .find(|u| u.name() == name)
            .unwrap_or_else(|| panic!("no upstream for cluster {name}"))
    }
}
