//! The web dashboard in a real browser: headless Chromium (DevTools protocol) on the page a
//! real sidecar serves, while a real Envoy running the filter carries traffic to both
//! variants. The page loads without console errors, shows the rollout with its charts fed,
//! refuses a wrong token, promotes with the right one (seen on the page within 10 s), fits a
//! 390-pixel phone, and shows an abort's reason. Screenshots go to `target/`.

mod browser_support;
mod rollout_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use browser_support::Browser;
use rollgate::serve::auth::Token;
use rollgate_e2e::{Envoy, EnvoyOptions, Upstream, CANARY, DEV, STABLE};
use rollout_support::{seed_fast, wait_until, Sidecar, TempDir};

const TOKEN: &str = "dashboard-test-token-0123456789";
const SOURCE: &str =
    r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"20s"}}"#;

/// Requests through Envoy until dropped: every other one from Shenzhen (the header route's
/// canary users), so both variants have traffic from the first step on.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(envoy: &Envoy) -> Traffic {
        let mut c = envoy.client();
        let (stop, sent) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (flag, count) = (stop.clone(), sent.clone());
        let thread = thread::spawn(move || {
            let mut i = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let user = format!("u{}", i % 50);
                let mut h: Vec<(&str, &[u8])> = vec![("x-user-id", user.as_bytes())];
                if i.is_multiple_of(2) {
                    h.push(("location", b"shenzhen"));
                }
                let r = c.get("pro.coding", "/", &h);
                assert!(r.status < 500, "status {}", r.status);
                count.fetch_add(1, Ordering::SeqCst);
                i += 1;
                thread::sleep(Duration::from_millis(10));
            }
        });
        Traffic {
            stop,
            sent,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn card(b: &mut Browser, what: &str) -> String {
    let v = b.eval(&format!(
        "(() => {{ const c = document.querySelector('[data-rollout=\"flask\"]'); \
         const e = c && c.querySelector('{what}'); return e ? e.textContent : ''; }})()"
    ));
    v.as_str().unwrap_or_default().to_string()
}

fn click(b: &mut Browser, cmd: &str) {
    b.eval(&format!(
        "document.querySelector('[data-rollout=\"flask\"] button[data-cmd=\"{cmd}\"]').click()"
    ));
}

fn set_token(b: &mut Browser, token: &str) {
    b.eval(&format!(
        "document.getElementById('token').value = '{token}'; \
         document.querySelector('#token-form button[type=submit]').click()"
    ));
}

/// Points in each chart (requests, success, latency).
fn chart_points(b: &mut Browser) -> Vec<u64> {
    let v = b.eval(
        "[...document.querySelectorAll('[data-rollout=\"flask\"] svg.chart')]\
         .map(s => Number(s.dataset.points))",
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect()
}

#[test]
fn the_dashboard_shows_the_rollout_live_and_drives_it_in_a_real_browser() {
    let _serial = rollgate_e2e::timing_lock();
    let dir = TempDir::new("dashboard");
    let sidecar = Sidecar::start_with(&dir.0, &[], |c| {
        c.token = Some(Token::new(TOKEN, "test").unwrap());
    });
    let upstreams: Vec<Upstream> = [STABLE, CANARY, DEV]
        .iter()
        .map(|n| Upstream::start(n))
        .collect();
    let mut opts = EnvoyOptions::new(SOURCE).cluster("rollgate", sidecar.server.addr().port());
    for u in &upstreams {
        opts = opts.cluster(u.name(), u.port());
    }
    let envoy = Envoy::start(&opts).unwrap();
    sidecar
        .server
        .set_envoy_admin(vec![format!("http://127.0.0.1:{}", envoy.admin_port())])
        .unwrap();
    dir.write("flask.yaml", &seed_fast());
    wait_until("the rollout", Duration::from_secs(5), || {
        sidecar.get("/v1/rollouts/flask").status == 200
    });
    let traffic = Traffic::start(&envoy);

    // The page's own headers: scripts from its files only, no sniffing.
    let page = sidecar.get("/dashboard");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(!page.text().contains(TOKEN));

    let mut b = Browser::start();
    let loaded = Instant::now();
    b.open(&format!("{}/dashboard", sidecar.url()));
    let shown = b.wait_for("the rollout on the page", Duration::from_secs(10), |b| {
        card(b, ".phase") == "Paused" && card(b, "li.current").contains("pause")
    });
    println!(
        "rollout shown {shown:?} after the page opened ({:?} in all)",
        loaded.elapsed()
    );
    // Both variants' lines in every chart, 20 points at least in each (two seconds of
    // readings at 200 ms).
    let fed = b.wait_for("charts with data", Duration::from_secs(15), |b| {
        chart_points(b).iter().all(|&n| n >= 20) && card(b, ".legend").contains("canary")
    });
    let points = chart_points(&mut b);
    println!("charts fed {fed:?} later: {points:?} points (requests, success, latency)");
    let legend = card(&mut b, ".legend");
    assert!(
        legend.contains("stable") && legend.contains("canary"),
        "{legend}"
    );
    b.wait_for("a passed analysis", Duration::from_secs(10), |b| {
        card(b, ".analyses").contains("Passed")
    });
    println!("analyses: {}", card(&mut b, ".analyses"));
    assert!(
        b.errors.is_empty(),
        "console errors while loading: {:?}",
        b.errors
    );
    assert_eq!(card(&mut b, ".step"), "2/6");
    let breakers = card(&mut b, ".breakers");
    assert!(breakers.contains("canary_latency: closed"), "{breakers}");
    // A status that lists its gateways (the acknowledgement work adds them) renders each
    // with its fields; this sidecar's status has none yet, so the page's own function is fed.
    let gateways = b.eval(
        "gateways({gateways: [{name: 'gw-a', policyVersion: 7}, {name: 'gw-b', policyVersion: 6}]})\
         .textContent",
    );
    let gateways = gateways.as_str().unwrap_or_default();
    assert!(
        gateways.contains("name: gw-a, policyVersion: 7") && gateways.contains("gw-b"),
        "{gateways}"
    );

    // A wrong token: the API refuses (401), the page says so, nothing moves.
    set_token(&mut b, "not-the-right-token-at-all");
    click(&mut b, "promote");
    b.wait_for("the refusal", Duration::from_secs(5), |b| {
        b.eval("document.getElementById('notice').textContent")
            .as_str()
            .is_some_and(|t| t.contains("401"))
    });
    assert_eq!(sidecar.rollout("flask")["status"]["currentStep"], 1);
    // The browser logs the 401 as a failed load; that one was wanted.
    let refused: Vec<_> = b.errors.drain(..).collect();
    assert!(refused.iter().all(|e| e.0.contains("401")), "{refused:?}");

    // The right token: Promote moves the rollout to the 50 % step; the page shows it.
    set_token(&mut b, TOKEN);
    let clicked = Instant::now();
    click(&mut b, "promote");
    // Step 3 sets the weight to 50 and goes on at once to the pause of step 4.
    let seen = b.wait_for("step 4 at 50 % on the page", Duration::from_secs(10), |b| {
        card(b, ".step") == "4/6" && card(b, ".weight") == "50 %"
    });
    println!("promote clicked: step 4/6 at 50 % on the page after {seen:?}");
    assert_eq!(sidecar.rollout("flask")["status"]["currentStep"], 3);
    assert!(card(&mut b, "li.current").contains("pause"));
    assert!(clicked.elapsed() < Duration::from_secs(10));
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
    b.wait_for("the latency chart to go on", Duration::from_secs(5), |b| {
        chart_points(b)[2] > points[2]
    });
    let traffic_json = sidecar.get("/v1/traffic").text();
    let last_point: serde_json::Value = serde_json::from_str::<serde_json::Value>(&traffic_json)
        .unwrap()["rollouts"]["flask"]["points"]
        .as_array()
        .and_then(|p| p.last().cloned())
        .unwrap();
    println!("last traffic point: {last_point}");
    b.screenshot(&screenshot_path("dashboard.png"));

    // A phone: nothing wider than 390 px.
    b.viewport(390, 844, true);
    thread::sleep(Duration::from_millis(500));
    let width = b
        .eval("document.documentElement.scrollWidth")
        .as_u64()
        .unwrap();
    println!("scrollWidth at a 390-px viewport: {width}");
    assert!(width <= 390, "the page overflows: scrollWidth {width}");
    b.screenshot(&screenshot_path("dashboard-390.png"));

    // Abort takes a second click to confirm; the page shows the reason.
    click(&mut b, "abort");
    b.wait_for("the abort button to ask", Duration::from_secs(2), |b| {
        card(b, "button[data-cmd=\"abort\"]") == "Confirm abort"
    });
    assert_eq!(sidecar.rollout("flask")["status"]["phase"], "Paused");
    click(&mut b, "abort");
    let aborted = b.wait_for("the abort on the page", Duration::from_secs(10), |b| {
        card(b, ".phase") == "Aborted" && card(b, ".message").contains("rollgate abort")
    });
    println!(
        "aborted, shown after {aborted:?}: {}",
        card(&mut b, ".message")
    );
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
    let sent = traffic.sent.load(Ordering::SeqCst);
    drop(traffic);
    println!("{sent} requests through Envoy during the test");
    drop(b);
    drop(envoy);
}

fn screenshot_path(name: &str) -> std::path::PathBuf {
    // CARGO_TARGET_TMPDIR is inside target/ (crates/../target/tmp).
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// `rollgate dashboard` in front of a sidecar: the same page from a loopback port of its own,
/// reads passed through, commands only from its own origin with the token it holds.
#[test]
fn rollgate_dashboard_serves_the_page_in_front_of_a_sidecar() {
    let _serial = rollgate_e2e::timing_lock();
    let dir = TempDir::new("dashboard-cli");
    let sidecar = Sidecar::start_with(&dir.0, &[], |c| {
        c.token = Some(Token::new(TOKEN, "test").unwrap());
    });
    dir.write("flask.yaml", &seed_fast());
    wait_until("the rollout", Duration::from_secs(5), || {
        sidecar.get("/v1/rollouts/flask").status == 200
    });
    let token_dir = TempDir::new("dashboard-token");
    token_dir.write("token", TOKEN);
    let proxy = rollgate::cli::dashboard::start(&rollgate::args::DashboardArgs {
        listen: "127.0.0.1:0".into(),
        server: sidecar.url(),
        token_file: Some(token_dir.path("token").display().to_string()),
        ca: None,
        timeout: Duration::from_secs(5),
        kubernetes: false,
        namespace: None,
    })
    .unwrap();
    let url = format!("http://{}", proxy.addr);
    let post = |headers: &[(&str, &str)]| {
        rollgate::rollout::client::request_with(
            "POST",
            &format!("{url}/v1/rollouts/flask/promote"),
            headers,
            None,
            Duration::from_secs(5),
            None,
        )
        .unwrap()
    };
    let bearer = format!("Bearer {TOKEN}");
    // Another site's page, even with the token; this origin without it.
    let r = post(&[
        ("authorization", &bearer),
        ("origin", "http://evil.example"),
    ]);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post(&[("origin", &url)]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains(TOKEN));
    assert_eq!(sidecar.rollout("flask")["status"]["currentStep"], 1);
    let traffic = rollgate::rollout::client::request(
        "GET",
        &format!("{url}/v1/traffic"),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(traffic.status, 200, "{}", traffic.text());

    let mut b = Browser::start();
    b.open(&format!("{url}/"));
    b.wait_for("the rollout on the page", Duration::from_secs(10), |b| {
        card(b, ".phase") == "Paused" && card(b, ".step") == "2/6"
    });
    set_token(&mut b, TOKEN);
    click(&mut b, "promote");
    let seen = b.wait_for("step 4 at 50 % on the page", Duration::from_secs(10), |b| {
        card(b, ".step") == "4/6" && card(b, ".weight") == "50 %"
    });
    println!("through rollgate dashboard: promote shown after {seen:?}");
    assert_eq!(sidecar.rollout("flask")["status"]["currentStep"], 3);
    assert!(b.errors.is_empty(), "console errors: {:?}", b.errors);
    drop(b);
    drop(proxy);
}
