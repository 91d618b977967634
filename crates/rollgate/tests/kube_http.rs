//! The controller's HTTP server (`serve --kubernetes --listen ADDR`, shared with `rollgate
//! dashboard --kubernetes`) against a mock API server: the exact requests each endpoint
//! sends, the page, the refusals (a command without the token, a page of another origin, a
//! non-loopback listen without a token), Rollouts named across namespaces, and a policy
//! that is exactly what the controller writes into the WasmPlugin, read by the rate-limit
//! service's own policy reader.

#[path = "../../controller/tests/kube_support/mod.rs"]
mod kube_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use kube::Client;
use kube_support::{api_server, failure, paused_rollout, Reply, Seen};
use rollgate::args::ServeArgs;
use rollgate::cli::cluster_http::{Bound, Scope};
use rollgate::cli::{controller_listen, controller_scope, CliError};
use rollgate::kube::controller::{self, Context};
use rollgate::rollout::client::{self, HttpResponse};
use rollgate::rollout::{Rollout, RolloutStatus};
use rollgate::serve::auth::Token;
use serde_json::{json, Value};

const TOKEN: &str = "0123456789abcdef";

fn token() -> Option<Token> {
    Some(Token::new(TOKEN, "test").unwrap())
}

/// Serves `scope` of `client` on a loopback port; returns its base URL.
fn serve(client: &Client, scope: Scope) -> String {
    let bound = Bound::bind("127.0.0.1:0", token(), None).unwrap();
    let base = format!("http://{}", bound.addr());
    tokio::spawn(bound.serve(client.clone(), scope));
    base
}

async fn call(method: &str, url: String, headers: &[(&str, &str)]) -> HttpResponse {
    let method = method.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        client::request_with(&method, &url, &h, None, Duration::from_secs(10), None).unwrap()
    })
    .await
    .unwrap()
}

fn json_of(r: &HttpResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn list_of(items: &[Rollout]) -> Value {
    json!({"apiVersion": "rollgate.dev/v1alpha1", "kind": "RolloutList",
           "metadata": {"resourceVersion": "5"}, "items": items})
}

/// `flask` paused in `shop` and in `dev`, and `api` in `dev`.
fn two_namespaces() -> Vec<Rollout> {
    let shop = paused_rollout("3");
    let mut dev = paused_rollout("4");
    dev.metadata.namespace = Some("dev".into());
    let mut api = dev.clone();
    api.metadata.name = Some("api".into());
    vec![shop, dev, api]
}

/// Answers lists with `items`, gets with the matching one (404 else), status patches with
/// the Rollout carrying the status sent.
fn cluster(items: Vec<Rollout>) -> impl FnMut(&Seen) -> Reply + Send + 'static {
    move |s: &Seen| {
        let parts: Vec<&str> = s.path.trim_matches('/').split('/').collect();
        match (s.method.as_str(), parts.as_slice()) {
            ("GET", [.., "rollouts"]) => Reply::Json(200, list_of(&items)),
            ("GET", [.., "namespaces", ns, "rollouts", name]) => items
                .iter()
                .find(|r| {
                    r.metadata.namespace.as_deref() == Some(ns)
                        && r.metadata.name.as_deref() == Some(name)
                })
                .map_or_else(
                    || Reply::Json(404, failure(404, "NotFound")),
                    |r| Reply::Json(200, serde_json::to_value(r).unwrap()),
                ),
            ("PATCH", [.., "namespaces", ns, "rollouts", name, "status"]) => {
                let mut ro = items
                    .iter()
                    .find(|r| {
                        r.metadata.namespace.as_deref() == Some(ns)
                            && r.metadata.name.as_deref() == Some(name)
                    })
                    .map(|r| serde_json::to_value(r).unwrap())
                    .unwrap();
                ro["status"] = s.body["status"].clone();
                Reply::Json(200, ro)
            }
            _ => Reply::Json(404, failure(404, "NotFound")),
        }
    }
}

fn requests(seen: &Arc<Mutex<Vec<Seen>>>) -> Vec<String> {
    let mut s = seen.lock().unwrap();
    let out = s
        .iter()
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    s.clear();
    out
}

const ALL: &str = "/apis/rollgate.dev/v1alpha1/rollouts?";
const SHOP: &str = "/apis/rollgate.dev/v1alpha1/namespaces/shop/rollouts";
const DEV: &str = "/apis/rollgate.dev/v1alpha1/namespaces/dev/rollouts";

#[tokio::test]
async fn every_namespace_is_served_with_its_rollouts_named_ns_slash_name() {
    let (client, seen) = api_server("default", cluster(two_namespaces()));
    let base = serve(&client, Scope::All);
    let get = |path: &str| call("GET", format!("{base}{path}"), &[]);

    let list = get("/v1/rollouts").await;
    assert_eq!(list.status, 200, "{}", list.text());
    let names: Vec<Value> = json_of(&list)["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("shop/flask"), json!("dev/flask"), json!("dev/api")]
    );
    assert_eq!(requests(&seen), [format!("GET {ALL}")]);

    // A name in one namespace only is found by a list; one in two is ambiguous.
    let api = get("/v1/rollouts/api").await;
    assert_eq!(api.status, 200, "{}", api.text());
    assert_eq!(json_of(&api)["name"], "dev/api");
    assert_eq!(
        requests(&seen),
        [format!("GET {ALL}"), format!("GET {DEV}/api")]
    );
    let flask = get("/v1/rollouts/flask").await;
    assert_eq!(flask.status, 409, "{}", flask.text());
    assert!(flask.text().contains("shop, dev"), "{}", flask.text());
    assert_eq!(requests(&seen), [format!("GET {ALL}")]);
    // Named with its namespace, as a path or as the page encodes it: one read.
    for path in ["/v1/rollouts/shop/flask", "/v1/rollouts/shop%2Fflask"] {
        let r = get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(json_of(&r)["name"], "shop/flask");
        assert_eq!(requests(&seen), [format!("GET {SHOP}/flask")]);
    }
    let missing = get("/v1/rollouts/shop/gone").await;
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(get("/v1/rollouts/nowhere").await.status, 404);
    requests(&seen);

    // A command from the page's encoding: read, then the status patched as `promote
    // --kubernetes` does (server-side apply guarded by the resourceVersion read).
    let auth = [("authorization", "Bearer 0123456789abcdef")];
    let url = format!("{base}/v1/rollouts/dev%2Fflask/promote");
    let promoted = call("POST", url, &auth).await;
    assert_eq!(promoted.status, 200, "{}", promoted.text());
    assert_eq!(json_of(&promoted)["name"], "dev/flask");
    let patch = seen.lock().unwrap().last().unwrap().body.clone();
    assert_eq!(
        patch["metadata"],
        json!({"name": "flask", "resourceVersion": "4"})
    );
    // The engine's step: past the pause at step 1, as the response says.
    assert!(patch["status"]["currentStep"].as_u64() > Some(1), "{patch}");
    assert_eq!(patch["status"], json_of(&promoted)["status"]);
    assert_eq!(
        requests(&seen),
        [
            format!("GET {DEV}/flask"),
            format!("PATCH {DEV}/flask/status?&force=true&fieldManager=rollgate"),
        ]
    );
}

#[tokio::test]
async fn commands_are_guarded_as_the_sidecars_and_the_page_is_served() {
    let (client, seen) = api_server("default", cluster(two_namespaces()));
    let base = serve(&client, Scope::Namespace("shop".into()));
    let promote = format!("{base}/v1/rollouts/flask/promote");
    // No token: 401, and the API is not asked.
    let r = call("POST", promote.clone(), &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = call(
        "POST",
        promote.clone(),
        &[("authorization", "Bearer 0123456789abcdeX")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    // A page of another origin, even with the token.
    let evil = [
        ("authorization", "Bearer 0123456789abcdef"),
        ("origin", "http://evil.example"),
    ];
    let r = call("POST", promote.clone(), &evil).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(requests(&seen), Vec::<String>::new());

    // The page and its files, health, the empty traffic charts: no API call.
    let page = call("GET", format!("{base}/"), &[]).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/dashboard/app.js"), "{}", page.text());
    assert!(page.header("content-security-policy").is_some());
    assert_eq!(
        call("GET", format!("{base}/dashboard/app.js"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        call("GET", format!("{base}/healthz"), &[]).await.text(),
        "ok\n"
    );
    let traffic = call("GET", format!("{base}/v1/traffic"), &[]).await;
    assert_eq!(json_of(&traffic), json!({"rollouts": {}}));
    assert_eq!(requests(&seen), Vec::<String>::new());

    // One namespace: names as they are, one list of that namespace, another refused.
    let list = call("GET", format!("{base}/v1/rollouts"), &[]).await;
    assert_eq!(json_of(&list)["rollouts"][0]["name"], "flask");
    assert_eq!(requests(&seen), [format!("GET {SHOP}?")]);
    let other = call("GET", format!("{base}/v1/rollouts/dev/flask"), &[]).await;
    assert_eq!(other.status, 404, "{}", other.text());
    assert_eq!(requests(&seen), Vec::<String>::new());

    // With the token: applied.
    let ok = call(
        "POST",
        promote,
        &[("authorization", "Bearer 0123456789abcdef")],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        requests(&seen),
        [
            format!("GET {SHOP}/flask"),
            format!("PATCH {SHOP}/flask/status?&force=true&fieldManager=rollgate"),
        ]
    );
    // Not at the step it says: refused as the sidecar refuses (409).
    let stale = format!("{base}/v1/rollouts/flask/promote");
    let body_headers = [
        ("authorization", "Bearer 0123456789abcdef"),
        ("content-type", "application/json"),
    ];
    let stale = tokio::task::spawn_blocking(move || {
        client::request_with(
            "POST",
            &stale,
            &body_headers,
            Some(br#"{"expect": {"step": 5}}"#),
            Duration::from_secs(10),
            None,
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(stale.status, 409, "{}", stale.text());
}

#[test]
fn a_listen_beyond_loopback_needs_a_token_and_no_listen_serves_nothing() {
    let e = Bound::bind("0.0.0.0:0", None, None).err().unwrap();
    assert!(matches!(e, CliError::Serve(_)), "{e}");
    assert!(e.to_string().contains("no token"), "{e}");
    assert!(Bound::bind("0.0.0.0:0", token(), None).is_ok());
    let args = |a: &[&str]| {
        ServeArgs::try_parse_from(["serve", "--kubernetes"].iter().chain(a).copied()).unwrap()
    };
    let no_env = |_: &str| None;
    // As the controller's Deployment runs it: the token from the environment.
    let env = |k: &str| (k == "ROLLGATE_TOKEN").then(|| TOKEN.to_string());
    assert!(controller_listen(&args(&[]), env).unwrap().is_none());
    let e = controller_listen(&args(&["--listen", "0.0.0.0:0"]), no_env)
        .err()
        .unwrap();
    assert!(e.to_string().contains("no token"), "{e}");
    let bound = controller_listen(&args(&["--listen", "0.0.0.0:0"]), env).unwrap();
    assert!(bound.is_some());
    assert!(
        controller_listen(&args(&["--listen", "127.0.0.1:0"]), no_env)
            .unwrap()
            .is_some()
    );
    assert_eq!(
        controller_scope(&args(&["--listen", "127.0.0.1:0"])),
        Scope::All
    );
    assert_eq!(
        controller_scope(&args(&["--listen", "127.0.0.1:0", "-n", "shop"])),
        Scope::Namespace("shop".into())
    );
    // --namespace only means something to the server.
    assert!(ServeArgs::try_parse_from(["serve", "--kubernetes", "-n", "shop"]).is_err());
    assert!(ServeArgs::try_parse_from(["serve", "--dir", "d", "-n", "shop"]).is_err());
}

/// A Rollout with one global limit, as the rate-limit service reads it.
fn with_global_limit(mut ro: Rollout) -> Rollout {
    let limit = json!({
        "name": "api", "scope": "global", "average": 180, "period": "3s",
        "service": {
            "cluster": "outbound|8081||rollgate-ratelimit.rollgate-system.svc.cluster.local",
            "domain": "shop"
        }
    });
    ro.spec
        .rate_limits
        .push(serde_json::from_value(limit).unwrap());
    ro
}

#[tokio::test]
async fn the_policy_served_is_what_the_controller_writes_into_the_wasmplugin() {
    // The controller's first reconcile of the Rollout: its WasmPlugin patch and its status.
    let ro = with_global_limit(kube_support::rollout("7"));
    let answered = ro.clone();
    let (writer, written) = api_server("default", move |s: &Seen| {
        let mut body = s.body.clone();
        if s.path.ends_with("/status") {
            body = serde_json::to_value(&answered).unwrap();
            body["status"] = s.body["status"].clone();
        }
        Reply::Json(200, body)
    });
    controller::reconcile(Arc::new(ro.clone()), Context::new(writer, None))
        .await
        .unwrap();
    let written = written.lock().unwrap().clone();
    let plugin = written
        .iter()
        .find(|s| s.path.contains("/wasmplugins/"))
        .expect("the WasmPlugin patch");
    let config = plugin.body["spec"]["pluginConfig"].clone();
    let status_patch = written
        .iter()
        .find(|s| s.path.ends_with("/status"))
        .expect("the status patch");
    let status: RolloutStatus =
        serde_json::from_value(status_patch.body["status"].clone()).unwrap();
    assert_eq!(status.policy_version, 1);

    // The stored Rollout, served by the controller's HTTP server.
    let mut stored = ro.clone();
    stored.status = Some(status.clone());
    let (client, seen) = api_server("default", cluster(vec![stored.clone()]));
    let base = serve(&client, Scope::All);
    let r = call("GET", format!("{base}/v1/policies/shop/flask"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r), config, "served ≠ written");
    assert_eq!(r.header("x-rollgate-version"), Some("1"));
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(requests(&seen), [format!("GET {SHOP}/flask")]);
    // A gateway that has it: 304 at once, as the sidecar answers when its wait is over.
    let r = call("GET", format!("{base}/v1/policies/flask?version=1"), &[]).await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("x-rollgate-version"), Some("1"));
    assert_eq!(
        requests(&seen),
        [format!("GET {ALL}"), format!("GET {SHOP}/flask")]
    );

    // The rate-limit service's own reader (`rollgate ratelimit --policy URL`) finds the
    // Rollout's global limit there.
    let source =
        rollgate_ratelimit::PolicySource::parse(&format!("{base}/v1/policies/shop/flask")).unwrap();
    let limits = source.limits().await.unwrap();
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert_eq!(
        (
            limits[0].domain.as_str(),
            limits[0].name.as_str(),
            limits[0].max,
            limits[0].window_secs
        ),
        ("shop", "api", 180, 3)
    );

    // A command changed the status since: the policy the controller writes next, numbered
    // as it will number it.
    let mut promoted = stored;
    let st = promoted.status.as_mut().unwrap();
    st.canary_weight = 40.0;
    let (client, _) = api_server("default", cluster(vec![promoted]));
    let base = serve(&client, Scope::All);
    let r = call("GET", format!("{base}/v1/policies/shop/flask"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-rollgate-version"), Some("2"));
    assert_ne!(json_of(&r), config);

    // Never rendered (no status yet): no policy, as the sidecar answers an unknown one.
    let (client, _) = api_server("default", cluster(vec![kube_support::rollout("1")]));
    let base = serve(&client, Scope::All);
    let r = call("GET", format!("{base}/v1/policies/shop/flask"), &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// Requests through `envoy` until `stop`: every other one from Shenzhen, the header route's
/// canary users at the paused step, so both variants carry traffic.
fn traffic(
    envoy: &rollgate_e2e::Envoy,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let mut c = envoy.client();
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let user = format!("u{}", i % 50);
            let mut h: Vec<(&str, &[u8])> = vec![("x-user-id", user.as_bytes())];
            if i.is_multiple_of(2) {
                h.push(("location", b"shenzhen"));
            }
            assert_eq!(c.get("pro.coding", "/", &h).status, 200);
            i += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        i
    })
}

/// The controller page's charts (`GET /v1/traffic`) from a real Envoy's stats under
/// traffic: the Envoy runs exactly the policy the controller renders for the paused Rollout,
/// the server reads Envoy's admin endpoint as the analysis does (`--envoy-admin`), and the
/// page gets points for both variants, keyed as it names the Rollout.
#[test]
fn the_controllers_charts_come_from_the_gateways_stats() {
    use rollgate::kube::analysis::Source;
    use rollgate_e2e::{Envoy, EnvoyOptions, Upstream, CANARY, DEV, STABLE};

    let _serial = rollgate_e2e::timing_lock();
    let mut ro = paused_rollout("3");
    // At the pause after `setHeaderRoute`, the engine's status carries the route.
    if let Some(s) = ro.status.as_mut() {
        s.header_route = Some("Headers(`location`, `shenzhen`)".into());
    }
    let policy = rollgate::kube::commands::rendered_policy(&ro).unwrap().json;
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let mut opts = EnvoyOptions::new(policy);
    for u in &upstreams {
        opts = opts.cluster(u.name(), u.port());
    }
    let envoy = Envoy::start(&opts).unwrap();
    let admin = format!("http://127.0.0.1:{}", envoy.admin_port());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = traffic(&envoy, stop.clone());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (series, seen) = rt.block_on(async {
        let (client, seen) = api_server("default", cluster(vec![ro.clone()]));
        let bound = Bound::bind("127.0.0.1:0", token(), None)
            .unwrap()
            .charts(Source::EnvoyAdmin(vec![admin]));
        let base = format!("http://{}", bound.addr());
        tokio::spawn(bound.serve(client, Scope::Namespace("shop".into())));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = call("GET", format!("{base}/v1/traffic"), &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let series = json_of(&r)["rollouts"]["flask"].clone();
            let fed = series["points"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    ["stable", "canary"]
                        .iter()
                        .all(|v| p["variants"][v]["rps"].as_f64().is_some_and(|x| x > 0.0))
                })
            });
            if fed || std::time::Instant::now() > deadline {
                return (series, requests(&seen));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sender.join().unwrap();
    assert!(sent > 20, "{sent} requests sent");
    let points = series["points"].as_array().cloned().unwrap_or_default();
    let fed: Vec<&Value> = points
        .iter()
        .filter(|p| p["variants"]["stable"]["rps"].as_f64() > Some(0.0))
        .filter(|p| p["variants"]["canary"]["rps"].as_f64() > Some(0.0))
        .collect();
    assert!(!fed.is_empty(), "no point with both variants: {series}");
    for p in &fed {
        // The upstreams answer 200 only.
        assert_eq!(p["variants"]["stable"]["success"], 1.0, "{p}");
        assert_eq!(p["variants"]["canary"]["success"], 1.0, "{p}");
    }
    // The recorder lists the served namespace's Rollouts, nothing else.
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|s| s.starts_with(&format!("GET {SHOP}"))),
        "{seen:?}"
    );
}
