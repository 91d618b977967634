//! What the controller asks of the API server, as RBAC rules: the one list the controller's
//! calls are written against and `manifests/controller/rbac.yaml` is checked against
//! (`host/tests/manifests.rs`), so the ClusterRole grants exactly this.

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

/// Cluster-wide: the Rollouts watched, their status, the WasmPlugins written, the Events.
pub const CLUSTER: &[Permission] = &[
    // watcher: list + watch; the CLI backend: get.
    Permission {
        group: "rollgate.dev",
        resource: "rollouts",
        verbs: &["get", "list", "watch"],
    },
    // Status by server-side apply (a PATCH); get for `rollgate status`.
    Permission {
        group: "rollgate.dev",
        resource: "rollouts/status",
        verbs: &["get", "patch"],
    },
    // The rendered policy into `pluginConfig` by server-side apply.
    Permission {
        group: "extensions.istio.io",
        resource: "wasmplugins",
        verbs: &["get", "list", "patch", "watch"],
    },
    // kube's event Recorder creates an Event, and patches it when the same one repeats.
    Permission {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// In the controller's own namespace: the leader-election Lease.
pub const NAMESPACED: &[Permission] = &[Permission {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["create", "get", "update"],
}];
