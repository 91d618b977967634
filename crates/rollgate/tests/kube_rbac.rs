//! Least privilege, derived from the code: the controller (`run`: leader election, the
//! watcher, reconciles, Events) and every cluster command (`promote`, `abort`, `retry`,
//! `status`, `status --watch`), and the controller's HTTP server (`serve --kubernetes
//! --listen`: its reads, commands and policies), run against a recording API server, each
//! request is turned
//! into the (group, resource, verb) the API server's authorizer checks, and the sets must
//! equal [`rollgate::kube::rbac`] — which `manifests.rs` checks `rbac.yaml` against. A new
//! API call without its permission, or a permission no call needs, fails here.

#[path = "../../controller/tests/kube_support/mod.rs"]
mod kube_support;

use std::collections::BTreeSet;
use std::time::Duration;

use kube_support::{api_server, failure, paused_rollout, rollout, Reply, Seen};
use rollgate::cli::cluster::cli_with;
use rollgate::cli::cluster_http::{Bound, Scope};
use rollgate::cli::watch::follow;
use rollgate::kube::controller::Error;
use rollgate::kube::rbac::{triples, CLI, CONTROLLER, LEADER_ELECTION};
use rollgate::kube::run::{run, Options};
use rollgate::rollout::{client, Event};
use rollgate::serve::auth::Token;
use serde_json::{json, Value};

/// What RBAC authorizes for one request: group, resource (`/subresource`), verb, namespace
/// (`None`: cluster-wide), derived as the API server's request-info resolver does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Authz {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
}

fn authz(s: &Seen) -> Authz {
    let parts: Vec<&str> = s.path.split('/').filter(|p| !p.is_empty()).collect();
    let (group, mut rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => panic!("not an API path: {}", s.path),
    };
    let mut namespace = None;
    if let ["namespaces", ns, tail @ ..] = rest {
        if !tail.is_empty() {
            namespace = Some(ns.to_string());
            rest = tail;
        }
    }
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, sub] => (*r, Some(*n), Some(*sub)),
        _ => panic!("unexpected path {}", s.path),
    };
    let verb = match (s.method.as_str(), name) {
        ("GET", _) if s.has("watch", "true") || s.has("watch", "1") => "watch",
        ("GET", Some(_)) => "get",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        (m, _) => panic!("unexpected method {m}"),
    };
    Authz {
        group: group.into(),
        resource: sub.map_or(resource.to_string(), |s| format!("{resource}/{s}")),
        verb: verb.into(),
        namespace,
    }
}

fn verbs<'a>(calls: impl IntoIterator<Item = &'a Authz>) -> BTreeSet<(String, String, String)> {
    calls
        .into_iter()
        .map(|a| (a.group.clone(), a.resource.clone(), a.verb.clone()))
        .collect()
}

/// The rollout answered for status patches: the example with the status sent.
fn with_status(body: &Value) -> Value {
    let mut ro = serde_json::to_value(rollout("8")).unwrap();
    ro["status"] = body["status"].clone();
    ro
}

/// The controller's API server: a Lease to win, renew, then lose to another replica once
/// the controller has both renewed it and repeated an Event (so every call has been made);
/// one Rollout, whose watch stays open.
fn controller_api() -> impl FnMut(&Seen) -> Reply + Send + 'static {
    let mut lease: Option<Value> = None;
    let (mut renewed, mut repeated) = (false, false);
    move |s: &Seen| {
        let a = authz(s);
        match (a.resource.as_str(), a.verb.as_str()) {
            ("leases", "get") => match &lease {
                None => Reply::Json(404, failure(404, "NotFound")),
                Some(_) if renewed && repeated => {
                    let mut other = lease.clone().unwrap();
                    other["spec"]["holderIdentity"] = json!("rollgate-1");
                    other["spec"]["renewTime"] = json!("2999-01-01T00:00:00.000000Z");
                    Reply::Json(200, other)
                }
                Some(l) => Reply::Json(200, l.clone()),
            },
            ("leases", "create" | "update") => {
                renewed |= a.verb == "update";
                let mut l = s.body.clone();
                l["metadata"]["resourceVersion"] = json!("1");
                lease = Some(l.clone());
                Reply::Json(200, l)
            }
            ("rollouts", "list") => {
                // A second Rollout writes into an Envoy Gateway EnvoyExtensionPolicy.
                let mut eg = rollout("7");
                eg.metadata.name = Some("flask-eg".into());
                eg.metadata.uid = Some("0b5c0a6e-1111-2222-3333-444455556667".into());
                eg.spec.envoy_extension_policy = Some("flask".into());
                Reply::Json(
                    200,
                    json!({"apiVersion": "rollgate.dev/v1alpha1", "kind": "RolloutList",
                           "metadata": {"resourceVersion": "7"}, "items": [rollout("7"), eg]}),
                )
            }
            // The HTTP server's reads of one Rollout.
            ("rollouts", "get") => {
                Reply::Json(200, serde_json::to_value(paused_rollout("9")).unwrap())
            }
            ("envoyextensionpolicies", _) => Reply::Json(200, kube_support::eep("flask")),
            ("rollouts", "watch") => Reply::Hold,
            ("rollouts/status", _) => Reply::Json(200, with_status(&s.body)),
            ("events", verb) => {
                repeated |= verb == "patch";
                Reply::Json(200, s.body.clone())
            }
            _ => Reply::Json(200, s.body.clone()),
        }
    }
}

#[tokio::test]
async fn the_controller_calls_exactly_what_its_roles_grant() {
    let (client, seen) = api_server("default", controller_api());
    let server = client.clone();
    let opts = Options {
        lease_namespace: "rollgate-system".into(),
        identity: "rollgate-0".into(),
        lease_ttl: Duration::from_secs(3),
        envoy_admin: Vec::new(),
        prometheus: None,
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), run(client, opts))
        .await
        .expect("the controller ran every call and lost the lease within 30 s");
    assert!(matches!(outcome, Err(Error::LostLease)), "{outcome:?}");
    // Its HTTP server, on every replica: each endpoint that reaches the API.
    let token = Token::new("0123456789abcdef", "test").unwrap();
    let bound = Bound::bind("127.0.0.1:0", Some(token), None).unwrap();
    let base = format!("http://{}", bound.addr());
    tokio::spawn(bound.serve(server, Scope::All));
    for (method, path) in [
        ("GET", "/v1/rollouts"),
        ("GET", "/v1/rollouts/flask"),
        ("GET", "/v1/rollouts/shop/flask"),
        ("GET", "/v1/policies/shop/flask"),
        ("POST", "/v1/rollouts/shop/flask/promote"),
    ] {
        let url = format!("{base}{path}");
        let resp = tokio::task::spawn_blocking(move || {
            let auth = [("authorization", "Bearer 0123456789abcdef")];
            client::request_with(method, &url, &auth, None, Duration::from_secs(10), None)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status, 200, "{method} {path}: {}", resp.text());
    }
    let calls: Vec<Authz> = seen.lock().unwrap().iter().map(authz).collect();
    // The Role covers the controller's own namespace; everything else needs the
    // ClusterRole (the Rollouts are watched in every namespace, and read in theirs).
    let (own, cluster): (Vec<&Authz>, Vec<&Authz>) = calls
        .iter()
        .partition(|a| a.namespace.as_deref() == Some("rollgate-system"));
    assert_eq!(verbs(own), triples(LEADER_ELECTION), "{calls:#?}");
    assert_eq!(verbs(cluster.clone()), triples(CONTROLLER), "{calls:#?}");
    assert!(cluster
        .iter()
        .filter(|a| a.resource == "rollouts" && a.verb != "get")
        .all(|a| a.namespace.is_none()));
}

/// The CLI's API server: one paused Rollout in `shop`, whose watch promotes it.
fn cli_api(s: &Seen) -> Reply {
    let ro = paused_rollout("1");
    let a = authz(s);
    match (a.resource.as_str(), a.verb.as_str()) {
        ("rollouts", "get") => Reply::Json(200, serde_json::to_value(&ro).unwrap()),
        ("rollouts", "list") => Reply::Json(
            200,
            json!({"apiVersion": "rollgate.dev/v1alpha1", "kind": "RolloutList",
                   "metadata": {"resourceVersion": "1"}, "items": [ro]}),
        ),
        ("rollouts", "watch") if s.query.contains("fieldSelector") => {
            let mut done = serde_json::to_value(&ro).unwrap();
            done["status"]["phase"] = json!("Promoted");
            done["metadata"]["resourceVersion"] = json!("2");
            Reply::Events(vec![json!({"type": "MODIFIED", "object": done})])
        }
        ("rollouts", "watch") => Reply::Hold,
        ("rollouts/status", _) => Reply::Json(200, with_status(&s.body)),
        _ => Reply::Json(404, failure(404, "NotFound")),
    }
}

#[tokio::test]
async fn the_cli_calls_exactly_what_its_role_grants() {
    let (client, seen) = api_server("shop", cli_api);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let name = "flask".to_string();
    let commands = [
        ("status", None, None),
        ("status", None, Some(&name)),
        ("promote", Some(Event::Promote), Some(&name)),
        ("abort", Some(Event::Abort), Some(&name)),
        ("retry", Some(Event::Retry), Some(&name)),
    ];
    for (cmd, event, n) in commands {
        cli_with(&client, "shop", cmd, event, n, &mut out, &mut err)
            .await
            .unwrap();
    }
    let watched = follow(&client, "shop", Some("flask"), false, &mut out, &mut err).await;
    assert_eq!(watched.unwrap(), 0);
    let all = follow(&client, "shop", None, false, &mut out, &mut err);
    assert!(tokio::time::timeout(Duration::from_millis(300), all)
        .await
        .is_err());
    let calls: Vec<Authz> = seen.lock().unwrap().iter().map(authz).collect();
    assert_eq!(verbs(&calls), triples(CLI), "{calls:#?}");
    assert!(calls.iter().all(|a| a.namespace.as_deref() == Some("shop")));
}
