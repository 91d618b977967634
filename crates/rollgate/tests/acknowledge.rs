//! Pushes every gateway acknowledges, with real parts: three Envoy processes running the
//! filter (the replicas), each long-polling one in-process `rollgate serve --dir` that reads
//! their admin stats. One replica is paused with SIGSTOP (its policy fetch and its admin
//! stop): the step that changed the policy does not complete and the status names that
//! gateway; resumed with SIGCONT, the step completes; with `onDeadline: abort` and the
//! deadline passed, the rollout aborts naming it.

#[path = "../../controller/tests/kube_support/mod.rs"]
mod kube_support;
mod rollout_support;

use std::process::Command;
use std::time::{Duration, Instant};

use rollgate_e2e::{Envoy, EnvoyOptions, Upstream, CANARY, DEV, STABLE};
use rollout_support::{seed_with_strategy, wait_until, Sidecar, TempDir};
use serde_json::Value;

const SOURCE: &str =
    r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"20s"}}"#;
const VERSION_STAT: &str = "wasmcustom.rollgate.flask.policy.version";
const STEPS: &str = "    steps:
      - pause: {}
      - setWeight: 50
      - pause: {}
      - setWeight: 100
      - pause: {}
";

struct Fleet {
    // Field order is drop order: the Envoys first (killed even while stopped), then the
    // sidecar and the upstreams.
    gateways: Vec<Envoy>,
    sidecar: Sidecar,
    _upstreams: Vec<Upstream>,
    dir: TempDir,
}

impl Fleet {
    /// The sidecar, the upstreams and three Envoys polling the sidecar, whose admin
    /// endpoints the sidecar reads.
    fn start() -> Fleet {
        let dir = TempDir::new("ack");
        let sidecar = Sidecar::start(&dir.0, &[]);
        let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
            .iter()
            .map(|n| Upstream::start(n))
            .collect();
        let mut opts = EnvoyOptions::new(SOURCE).cluster("rollgate", sidecar.server.addr().port());
        for u in &upstreams {
            opts = opts.cluster(u.name(), u.port());
        }
        let gateways: Vec<Envoy> = (0..3).map(|_| Envoy::start(&opts).unwrap()).collect();
        let admins = gateways
            .iter()
            .map(|e| format!("http://127.0.0.1:{}", e.admin_port()))
            .collect();
        sidecar.server.set_envoy_admin(admins).unwrap();
        Fleet {
            gateways,
            sidecar,
            _upstreams: upstreams,
            dir,
        }
    }

    /// The name the status gives gateway `i`.
    fn name(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.gateways[i].admin_port())
    }

    /// The rollout's status (`null` until the sidecar has loaded the file).
    fn status(&self) -> Value {
        let r = self.sidecar.get("/v1/rollouts/flask");
        let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
        v["status"].clone()
    }

    /// `[(gateway, version)]` as the status lists them.
    fn listed(&self) -> Vec<(String, Option<u64>)> {
        let st = self.status();
        st["gateways"]
            .as_array()
            .map(|gs| {
                gs.iter()
                    .map(|g| {
                        (
                            g["gateway"].as_str().unwrap().to_string(),
                            g["version"].as_u64(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the status lists every gateway, each on `version`.
    fn all_on(&self, version: u64) -> bool {
        let listed = self.listed();
        listed.len() == 3 && listed.iter().all(|(_, v)| *v == Some(version))
    }

    fn promote(&self) {
        let r = self.sidecar.post("/v1/rollouts/flask/promote");
        assert_eq!(r.status, 200, "{}", r.text());
    }

    /// `rollgate status flask` as a user runs it.
    fn cli_status(&self) -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["status", "flask", "--server", &self.sidecar.url()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }
}

/// A gateway's Envoy stopped with SIGSTOP until this is dropped (on every path, a failed
/// assertion included), which continues it with SIGCONT.
struct Stopped(u32);

impl Stopped {
    fn new(envoy: &Envoy) -> Stopped {
        signal(envoy.pid(), libc::SIGSTOP);
        Stopped(envoy.pid())
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: kill(2) with a child's pid the test owns (the Envoy is killed and reaped only
    // when dropped, after this guard); it touches no memory.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn a_step_completes_only_once_every_gateway_serves_it() {
    let _serial = rollgate_e2e::timing_lock();
    let f = Fleet::start();
    f.dir.write("flask.yaml", &seed_with_strategy(STEPS));
    // The first step is a pause: v1 (weight 0) is served, and every gateway reports it.
    wait_until("every gateway listed on v1", WAIT, || f.all_on(1));
    assert_eq!(f.status()["phase"], "Paused");

    // Gateway 3 stops; the promote pushes v2 (weight 50).
    let stopped = Stopped::new(&f.gateways[2]);
    let promoted = Instant::now();
    f.promote();
    let lag = format!("2/3 gateways on v2; {} unreachable", f.name(2));
    wait_until("the status to name the stopped gateway", WAIT, || {
        f.status()["message"]
            .as_str()
            .is_some_and(|m| m.contains(&lag))
    });
    for g in &f.gateways[..2] {
        assert_eq!(g.stat(VERSION_STAT), Some(2), "the others serve v2");
    }
    // It stays at the step (setWeight 50, not the pause after it) for as long as gateway 3
    // is stopped: several readings of the gateways later, nothing moved.
    std::thread::sleep(Duration::from_secs(4));
    let st = f.status();
    assert_eq!(
        (st["phase"].as_str(), st["currentStep"].as_u64()),
        (Some("Progressing"), Some(1)),
        "{st}"
    );
    assert!(st["awaitingGateways"]["since"].is_string(), "{st}");
    assert_eq!(st["message"], format!("step 2/5: {lag}"));
    let shown = f.cli_status();
    println!("{shown}");
    assert!(
        shown.contains("  gateways  2/3 on v2, the step waits for the rest\n")
            && shown.contains(&format!("{} unreachable  (behind)\n", f.name(2))),
        "{shown}"
    );
    println!("waited {:?} with gateway 3 stopped", promoted.elapsed());

    // Continued: it fetches v2, reports it, and the step completes.
    let resumed = Instant::now();
    drop(stopped);
    let took = wait_until("the step to complete", WAIT, || {
        f.status()["phase"] == "Paused"
    });
    println!("step completed {took:?} after gateway 3 was continued");
    let st = f.status();
    assert_eq!(st["currentStep"], 2, "{st}");
    assert!(st["awaitingGateways"].is_null(), "{st}");
    assert!(f.all_on(2), "{:?}", f.listed());
    assert!(f
        .sidecar
        .logged("flask: step 2/5 applied: all 3 gateways on v2"));
    assert_eq!(f.gateways[2].stat(VERSION_STAT), Some(2));
    assert!(resumed.elapsed() < Duration::from_secs(10));
}

#[test]
fn past_the_deadline_the_rollout_aborts_naming_the_gateway() {
    let _serial = rollgate_e2e::timing_lock();
    let f = Fleet::start();
    let rollout = format!(
        "{}  acknowledge: {{ deadline: 2s, onDeadline: abort }}\n",
        seed_with_strategy(STEPS)
    );
    f.dir.write("flask.yaml", &rollout);
    wait_until("every gateway listed on v1", WAIT, || f.all_on(1));

    let stopped = Stopped::new(&f.gateways[2]);
    let promoted = Instant::now();
    f.promote();
    wait_until("the abort", WAIT, || f.status()["phase"] == "Aborted");
    let took = promoted.elapsed();
    println!("aborted {took:?} after the promote (deadline 2s)");
    assert!(took >= Duration::from_secs(2), "not before the deadline");
    let st = f.status();
    assert_eq!(
        st["message"],
        format!(
            "aborted at step 2/5: the gateways did not serve v2 within 2s: 2/3 gateways on v2; \
             {} unreachable; all traffic is back on stable",
            f.name(2)
        )
    );
    assert_eq!(st["canaryWeight"], 0.0);

    // Continued, gateway 3 catches up with the abort's policy (v3) like the others.
    drop(stopped);
    // Longer than WAIT: a fetch that failed around the pause backs off (1, 2, 4 … 30 s, see
    // crates/policy/src/fetch.rs), and on a loaded machine the paused gateway's fetches fail
    // before the pause is noticed; only the catching up is asserted here, not its time.
    wait_until(
        "every gateway on the abort's v3",
        Duration::from_secs(45),
        || f.all_on(3),
    );
    assert_eq!(f.status()["phase"], "Aborted");
}

/// Under `serve --kubernetes` the gateways get the policy as Istio delivers a WasmPlugin: by
/// ECDS (here from files, which the test rewrites with the `pluginConfig` the controller
/// wrote, gateway by gateway, as Istio's agents would), and report the `version` the
/// controller numbered it with. The controller (its reconcile against a mock API server,
/// reading the two Envoys' admin endpoints as `--envoy-admin` does) holds the step until both
/// serve it, names the one that lags, and past the deadline aborts naming it. A Rollout
/// without `acknowledge` gets the policy it always got, unnumbered (a filter before `version`
/// keeps loading it).
#[test]
fn the_controller_waits_for_every_gateway_istio_delivers_to() {
    let _serial = rollgate_e2e::timing_lock();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(controller_waits_for_every_gateway());
}

async fn controller_waits_for_every_gateway() {
    use std::sync::{Arc, Mutex};

    use kube_support::{api_server, Reply, Seen};
    use rollgate::kube::analysis::Source;
    use rollgate::kube::controller::{self, Context};
    use rollgate::rollout::{step, validate, Event, Rollout, Timestamp};

    let dir = TempDir::new("ctl-ack");
    let parse = |yaml: &str| {
        let mut ro: Rollout = validate::parse(yaml).unwrap();
        ro.metadata.namespace = Some("shop".into());
        ro.metadata.uid = Some("0b5c0a6e-1111-2222-3333-444455556666".into());
        ro.metadata.resource_version = Some("1".into());
        ro
    };
    let plain = parse(&seed_with_strategy(STEPS));
    let acked = parse(&format!(
        "{}  acknowledge: {{ deadline: 3s, onDeadline: abort }}\n",
        seed_with_strategy(STEPS)
    ));

    // The stand-in API server keeps the Rollout's status and the WasmPlugin's last config.
    #[derive(Default)]
    struct Cluster {
        status: Option<Value>,
        plugin: Option<Value>,
    }
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let seen_by = cluster.clone();
    let answered = serde_json::to_value(&acked).unwrap();
    let (client, _) = api_server("shop", move |s: &Seen| {
        let mut c = seen_by.lock().unwrap();
        if s.path.ends_with("/status") {
            c.status = Some(s.body["status"].clone());
            let mut ro = answered.clone();
            ro["status"] = s.body["status"].clone();
            return Reply::Json(200, ro);
        } else if s.path.contains("/wasmplugins/") {
            c.plugin = Some(s.body["spec"]["pluginConfig"].clone());
        }
        Reply::Json(200, s.body.clone())
    });

    // Without `acknowledge`: the policy as before, no `version` in it.
    let ctx = Context::new(client.clone(), None);
    controller::reconcile(Arc::new(plain.clone()), ctx)
        .await
        .unwrap();
    let first = cluster
        .lock()
        .unwrap()
        .plugin
        .take()
        .expect("a WasmPlugin patch");
    assert!(first.get("version").is_none(), "{first}");
    assert_eq!(first["name"], "flask");

    // Two gateways reading their filter's configuration by ECDS, on a policy of no version.
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let files: Vec<std::path::PathBuf> = (0..2)
        .map(|i| {
            let d = dir.path(&format!("gw{i}"));
            std::fs::create_dir_all(&d).unwrap();
            d.join("ecds.yaml")
        })
        .collect();
    let wasm = rollgate_e2e::wasm_path();
    let gateways: Vec<Envoy> = files
        .iter()
        .map(|f| {
            rollgate_e2e::write_ecds(f, &first.to_string(), &wasm).unwrap();
            let mut opts = EnvoyOptions::new("").ecds(f);
            for u in &upstreams {
                opts = opts.cluster(u.name(), u.port());
            }
            Envoy::start(&opts).unwrap()
        })
        .collect();
    let name = |i: usize| format!("127.0.0.1:{}", gateways[i].admin_port());
    let admins = (0..2)
        .map(|i| format!("http://{}", name(i)))
        .collect::<Vec<_>>();
    assert_eq!(gateways[0].client().get("pro.coding", "/", &[]).status, 200);
    assert_eq!(gateways[0].stat(VERSION_STAT), None, "no version, no gauge");

    let ctx = Context::with_analysis(client.clone(), None, Source::EnvoyAdmin(admins));
    let plan = validate::plan(&acked).unwrap();
    let status = || -> rollgate::rollout::RolloutStatus {
        serde_json::from_value(cluster.lock().unwrap().status.clone().unwrap()).unwrap()
    };
    let reconcile = |ro: &Rollout| {
        let mut ro = ro.clone();
        ro.status = cluster
            .lock()
            .unwrap()
            .status
            .clone()
            .map(|s| serde_json::from_value(s).unwrap());
        controller::reconcile(Arc::new(ro), ctx.clone())
    };
    // What Istio's agent on gateway `i` does with the WasmPlugin: serves its config.
    let deliver = |i: usize| {
        let config = cluster.lock().unwrap().plugin.clone().unwrap();
        let v = config["version"].as_u64().expect("a numbered policy");
        rollgate_e2e::write_ecds(&files[i], &config.to_string(), &wasm).unwrap();
        wait_until("the gateway to serve the new config", WAIT, || {
            gateways[i].stat(VERSION_STAT) == Some(v)
        });
    };
    let promote = || {
        let st = status();
        let next = step(&plan, &st, Event::Promote, Timestamp::now()).unwrap();
        cluster.lock().unwrap().status = Some(serde_json::to_value(next.status).unwrap());
    };

    // The first step (a pause): v1, numbered in the WasmPlugin; no gateway reports it yet.
    cluster.lock().unwrap().status = None;
    reconcile(&acked).await.unwrap();
    let st = status();
    assert_eq!(
        (st.policy_version, st.phase.to_string().as_str()),
        (1, "Paused")
    );
    assert_eq!(
        cluster.lock().unwrap().plugin.as_ref().unwrap()["version"],
        1
    );
    deliver(0);
    deliver(1);
    reconcile(&acked).await.unwrap();
    let listed = |st: &rollgate::rollout::RolloutStatus| -> Vec<String> {
        st.gateways.iter().map(ToString::to_string).collect()
    };
    assert_eq!(
        listed(&status()),
        [format!("{} on v1", name(0)), format!("{} on v1", name(1))]
    );

    // Promoted to `setWeight: 50`: v2 written; the gateways still on v1 do not count.
    promote();
    reconcile(&acked).await.unwrap();
    let st = status();
    assert_eq!((st.policy_version, st.current_step), (2, 1), "{st:?}");
    assert!(st.awaiting_gateways.is_some(), "{st:?}");
    reconcile(&acked).await.unwrap();
    assert!(status().awaiting_gateways.is_some(), "v1 is not v2");
    // Gateway 0 gets it; gateway 1 lags, and the status names it.
    deliver(0);
    reconcile(&acked).await.unwrap();
    let st = status();
    assert_eq!(
        st.message,
        format!("step 2/5: 1/2 gateways on v2; {} still on v1", name(1))
    );
    assert_eq!(st.current_step, 1);
    // Both serve it: the step completes, the rollout stops at the next pause.
    deliver(1);
    reconcile(&acked).await.unwrap();
    let st = status();
    assert_eq!(
        (
            st.phase.to_string().as_str(),
            st.current_step,
            st.awaiting_gateways
        ),
        ("Paused", 2, None),
        "{st:?}"
    );
    assert_eq!(gateways[1].stat(VERSION_STAT), Some(2));

    // Promoted to `setWeight: 100` (v3), which gateway 1 never gets: past the 3 s deadline
    // the rollout aborts naming it, and the abort's policy (v4) is written.
    promote();
    reconcile(&acked).await.unwrap();
    assert_eq!(status().policy_version, 3);
    deliver(0);
    let waited = Instant::now();
    loop {
        reconcile(&acked).await.unwrap();
        let st = status();
        if st.phase.to_string() == "Aborted" {
            assert!(waited.elapsed() >= Duration::from_secs(2), "{st:?}");
            assert_eq!(
                st.message,
                format!(
                    "aborted at step 4/5: the gateways did not serve v3 within 3s: 1/2 gateways \
                     on v3; {} still on v2; all traffic is back on stable",
                    name(1)
                )
            );
            assert_eq!(st.policy_version, 4);
            break;
        }
        assert!(waited.elapsed() < WAIT, "no abort: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let config = cluster.lock().unwrap().plugin.clone().unwrap();
    assert_eq!(config["version"], 4);
}
