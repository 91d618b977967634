//! `make demo`: the release story, told on a real Envoy running the real filter, with what it
//! measures rather than what it assumes.

use std::collections::HashMap;
use std::io::Write;
use std::time::Instant;

use rollgate_e2e::{Client, Stack, SEED_POLICY};

fn served_by(client: &mut Client, host: &str, headers: &[(&str, &[u8])]) -> String {
    let r = client.get(host, "/", headers);
    r.header_str("x-upstream")
        .unwrap_or_else(|| format!("(status {})", r.status))
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}. {title}\x1b[0m");
}

/// Sends one request per user `demo-user-0..n`; returns who served each user.
fn place(client: &mut Client, n: u32, host: &str, extra: &[(&str, &[u8])]) -> Vec<String> {
    let mut placement = Vec::with_capacity(n as usize);
    for i in 0..n {
        let user = format!("demo-user-{i}");
        let mut headers = extra.to_vec();
        headers.push(("x-user-id", user.as_bytes()));
        placement.push(served_by(client, host, &headers));
        if i % 200 == 199 {
            print!(".");
            let _ = std::io::stdout().flush();
        }
    }
    placement
}

fn count(placement: &[String]) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for p in placement {
        *counts.entry(p.clone()).or_insert(0) += 1;
    }
    counts
}

fn show(counts: &HashMap<String, u32>) -> String {
    let mut v: Vec<_> = counts.iter().collect();
    v.sort();
    v.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn with_weight(w: u32) -> String {
    SEED_POLICY.replace(r#""weight": 50"#, &format!(r#""weight": {w}"#))
}

fn main() {
    let started = Instant::now();
    println!(
        "rollgate demo: Envoy 1.40 + the rollgate filter + three upstreams (stable, canary, dev)"
    );
    let stack = Stack::start(SEED_POLICY);
    let mut c = stack.client();
    println!(
        "Envoy is listening on 127.0.0.1:{} with the seed policy (examples/policy.json)",
        stack.envoy.port()
    );

    step(1, "Host: dev.coding reaches the dev environment");
    println!("   served by {}", served_by(&mut c, "dev.coding", &[]));

    step(
        2,
        "A/B test: `location: shenzhen` goes to canary, everyone else to stable or the split",
    );
    let ab = count(&place(
        &mut c,
        200,
        "pro.coding",
        &[("location", b"shenzhen")],
    ));
    println!("\n   200 users from shenzhen -> {}", show(&ab));

    step(
        3,
        "Canary at 50 %: distinct users, the observed split, and stickiness",
    );
    let first = place(&mut c, 2000, "pro.coding", &[]);
    let split = count(&first);
    let canary = split.get("k8s-flask-canary").copied().unwrap_or(0);
    println!(
        "\n   2000 users -> {} ({:.1} % canary)",
        show(&split),
        f64::from(canary) / 20.0
    );
    let again = place(&mut c, 2000, "pro.coding", &[]);
    let moved = first.iter().zip(&again).filter(|(a, b)| a != b).count();
    println!("\n   the same 2000 users again: {moved} changed side");

    step(
        4,
        "Raise the canary to 80 %: users already on canary stay there",
    );
    let mut before = HashMap::new();
    for i in 0..1000 {
        let u = format!("demo-user-{i}");
        before.insert(
            u.clone(),
            served_by(&mut c, "pro.coding", &[("x-user-id", u.as_bytes())]),
        );
    }
    drop(stack);
    let stack = Stack::start(&with_weight(80));
    let mut c = stack.client();
    let (mut stayed, mut was_canary, mut now_canary) = (0, 0, 0);
    for (u, side) in &before {
        let now = served_by(&mut c, "pro.coding", &[("x-user-id", u.as_bytes())]);
        if side.contains("canary") {
            was_canary += 1;
            stayed += u32::from(now.contains("canary"));
        }
        now_canary += u32::from(now.contains("canary"));
    }
    println!("   {was_canary} of 1000 users were on canary; {stayed} still are; {now_canary} are now ({:.1} %)", f64::from(now_canary) / 10.0);

    step(5, "Full promotion: 100 % canary");
    drop(stack);
    let stack = Stack::start(&with_weight(100));
    let mut c = stack.client();
    println!(
        "   1000 users -> {}",
        show(&count(&place(&mut c, 1000, "pro.coding", &[])))
    );

    step(
        6,
        "Clients cannot steer: forged internal headers are stripped",
    );
    let forged = served_by(
        &mut c,
        "dev.coding",
        &[
            ("x-rollgate-cluster", b"k8s-flask-canary"),
            ("x-rollgate-variant", b"canary"),
        ],
    );
    println!("   dev.coding with x-rollgate-cluster: k8s-flask-canary -> served by {forged}");
    drop(stack);

    println!(
        "\nDone in {:.1} s; nothing left running.",
        started.elapsed().as_secs_f64()
    );
    println!("Next: README.md (policy reference, rule syntax, Envoy and Istio set-up), examples/policy.json");
}
