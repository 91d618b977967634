//! What rollgate asks of the API server, as RBAC rules: the one list that
//! `manifests/controller/rbac.yaml` is checked against (`crates/rollgate/tests/manifests.rs`), and that
//! is itself checked against the requests the code really sends (`crates/rollgate/tests/kube_rbac.rs`
//! runs the controller and every cluster command against a recording API server and derives
//! each request's verb as the API server's authorizer does). A verb granted here and never
//! used, or used and not granted, fails that test.

use std::collections::BTreeSet;

/// One permission: API group, resource (with subresource), verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource, e.g. `rollouts/status`.
    pub resource: &'static str,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// `rollgate serve --kubernetes`, cluster-wide (ClusterRole `rollgate-controller`, bound to
/// the controller's service account).
pub const CONTROLLER: &[Permission] = &[
    // The controller's watcher over every namespace: a list, then a watch. Its HTTP server
    // (`--listen`) lists them too, and reads one (get) for a rollout's page, a command and a
    // policy; the reconciles read Rollouts only from the watch.
    Permission {
        group: "rollgate.dev",
        resource: "rollouts",
        verbs: &["get", "list", "watch"],
    },
    // The status, by server-side apply (a PATCH of the status subresource): the reconciles,
    // and the HTTP server's commands (as `promote --kubernetes` writes it).
    Permission {
        group: "rollgate.dev",
        resource: "rollouts/status",
        verbs: &["patch"],
    },
    // The rendered policy into `pluginConfig`, by server-side apply; never read.
    Permission {
        group: "extensions.istio.io",
        resource: "wasmplugins",
        verbs: &["patch"],
    },
    // Or into an Envoy Gateway EnvoyExtensionPolicy's `wasm` entry: read to find the entry,
    // then a JSON patch of its `config`.
    Permission {
        group: "gateway.envoyproxy.io",
        resource: "envoyextensionpolicies",
        verbs: &["get", "patch"],
    },
    // kube's event Recorder creates an Event, and patches it when the same one repeats.
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// The controller in its own namespace: the leader-election Lease (Role
/// `rollgate-leader-election`).
pub const LEADER_ELECTION: &[Permission] = &[Permission {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["create", "get", "update"],
}];

/// `rollgate promote|abort|retry|status [--watch] --kubernetes`, run by people and pipelines
/// with their own credentials (ClusterRole `rollgate-cli`, bound per namespace with a
/// RoleBinding; not granted to the controller).
pub const CLI: &[Permission] = &[
    // `status NAME` and the commands read one (get); `status` lists; `--watch` lists and
    // watches.
    Permission {
        group: "rollgate.dev",
        resource: "rollouts",
        verbs: &["get", "list", "watch"],
    },
    // A command's step of the status, by server-side apply.
    Permission {
        group: "rollgate.dev",
        resource: "rollouts/status",
        verbs: &["patch"],
    },
];

/// The permissions as (group, resource, verb) triples, the form RBAC rules expand to.
pub fn triples(perms: &[Permission]) -> BTreeSet<(String, String, String)> {
    perms
        .iter()
        .flat_map(|p| {
            p.verbs
                .iter()
                .map(|v| (p.group.to_string(), p.resource.to_string(), v.to_string()))
        })
        .collect()
}
