use super::*;
use crate::testdata::{seed, with_strategy, SEED_YAML};

/// The seed with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(SEED_YAML.contains(from), "seed has no {from:?}");
    SEED_YAML.replacen(from, to, 1)
}

fn errors(yaml: &str) -> Vec<String> {
    load(yaml)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[track_caller]
fn assert_error(yaml: &str, expected: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "expected an error containing {expected:?}, got {errs:#?}"
    );
}

#[test]
fn the_seed_plans() {
    let p = seed();
    assert_eq!(p.name, "flask");
    assert_eq!(
        p.steps,
        vec![
            PlanStep::SetHeaderRoute(Some("Headers(`location`, `shenzhen`)".into())),
            PlanStep::Pause(None),
            PlanStep::SetWeight(50.0),
            PlanStep::Pause(None),
            PlanStep::SetWeight(100.0),
            PlanStep::Pause(None),
        ]
    );
    let a = p.analysis.unwrap();
    assert_eq!(
        (a.interval_ms, a.failure_limit, a.min_requests),
        (10_000, 2, 20)
    );
    assert_eq!(a.metrics[0].kind, MetricKind::SuccessRate);
    assert_eq!(a.metrics[0].min, Some(0.99));
    assert_eq!(a.metrics[1].kind, MetricKind::Latency(0.99));
    assert_eq!(a.metrics[1].max, Some(500.0));
    assert_eq!(p.revision.len(), 16);
    assert_eq!(p.canary_breakers, vec!["canary-latency".to_string()]);
}

#[test]
fn every_step_kind_plans() {
    let p = with_strategy(
        "    steps:
      - setWeight: 12.5
      - pause: { duration: 90s }
      - setHeaderRoute: {}
      - webhook: { url: \"http://127.0.0.1:9/migrate\", timeout: 5s }
      - webhook: { url: \"http://jobs/x\" }
",
    );
    assert_eq!(
        p.steps,
        vec![
            PlanStep::SetWeight(12.5),
            PlanStep::Pause(Some(90_000)),
            PlanStep::SetHeaderRoute(None),
            PlanStep::Webhook {
                url: "http://127.0.0.1:9/migrate".into(),
                timeout_ms: 5000
            },
            PlanStep::Webhook {
                url: "http://jobs/x".into(),
                timeout_ms: 30_000
            },
        ]
    );
    assert_eq!(p.analysis, None);
}

#[test]
fn yaml_errors_name_the_field_and_line() {
    let errs = errors(&edit("- setWeight: 50", "- setWieght: 50"));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("unknown field `setWieght`"), "{errs:?}");
    assert!(errs[0].contains("line"), "{errs:?}");
    assert_error(&edit("average: 500", "average: lots"), "average");
    assert_error("", "");
}

#[test]
fn document_errors() {
    assert_error(
        &edit("rollgate.dev/v1alpha1", "rollgate.dev/v1"),
        "apiVersion: must be rollgate.dev/v1alpha1, got 'rollgate.dev/v1'",
    );
    assert_error(
        &edit("kind: Rollout", "kind: Deployment"),
        "kind: must be Rollout",
    );
    assert_error(
        &edit("name: flask", "name: Flask_1"),
        "metadata.name: must be 1-63",
    );
}

#[test]
fn variant_errors() {
    assert_error(
        &edit("stableVariant: stable", "stableVariant: blue"),
        "spec.stableVariant: unknown variant 'blue' (known: canary, dev, stable)",
    );
    assert_error(
        &edit("canaryVariant: canary", "canaryVariant: stable"),
        "spec.canaryVariant: must differ from stableVariant",
    );
    let errs = errors(&edit("canaryVariant: canary", "canaryVariant: green"));
    assert_eq!(
        errs,
        vec!["spec.canaryVariant: unknown variant 'green' (known: canary, dev, stable)"],
        "reported once, not again for the split it renders into"
    );
}

#[test]
fn step_errors() {
    assert_error(
        &edit("- setWeight: 50", "- { setWeight: 50, pause: {} }"),
        "spec.strategy.steps[2]: has more than one of",
    );
    assert_error(
        &edit("- setWeight: 50", "- {}"),
        "spec.strategy.steps[2]: needs one of",
    );
    assert_error(
        &edit("- setWeight: 50", "- setWeight: 150"),
        "spec.strategy.steps[2].setWeight: must be between 0 and 100, got 150",
    );
    assert_error(
        &edit("- setWeight: 50", "- setWeight: 12.345"),
        "spec.strategy.steps[2].setWeight: at most two decimals",
    );
    assert_error(
        &edit(
            "- pause: {}\n      - setWeight: 50",
            "- pause: { duration: 5 }\n      - setWeight: 50",
        ),
        "spec.strategy.steps[1].pause.duration: invalid duration '5': missing unit",
    );
    assert_error(
        &edit("Headers(`location`, `shenzhen`)", "Headers(`location`"),
        "spec.strategy.steps[0].setHeaderRoute.match: column",
    );
    // https:// webhooks are called over TLS (issue #12); another scheme is refused.
    assert_error(
        &edit(
            "- pause: {}\n      - setWeight: 50",
            "- webhook: { url: \"ftp://x/\" }\n      - setWeight: 50",
        ),
        "spec.strategy.steps[1].webhook.url: 'ftp://x/': expected http://",
    );
    assert!(load(&edit(
        "- pause: {}\n      - setWeight: 50",
        "- webhook: { url: \"https://x/\" }\n      - setWeight: 50",
    ))
    .is_ok());
    assert_error(
        &edit(
            "- pause: {}\n      - setWeight: 50",
            "- webhook: { url: \"http://x/\", timeout: 0s }\n      - setWeight: 50",
        ),
        "spec.strategy.steps[1].webhook.timeout: must be positive",
    );
    assert_error(
        &edit("- setWeight: 50", "- setMirror: { percent: 101 }"),
        "spec.strategy.steps[2].setMirror.percent: must be between 0 and 100, got 101",
    );
    assert_error(
        &edit("- setWeight: 50", "- setMirror: { percent: 1.005 }"),
        "spec.strategy.steps[2].setMirror.percent: at most two decimals",
    );
    assert_error(
        &edit(
            "- setWeight: 50",
            "- setMirror: { percent: 5, variant: canary }",
        ),
        "unknown field `variant`",
    );
    assert_error(
        &edit("- setWeight: 50", "- { setMirror: { percent: 5 }, setWeight: 50 }"),
        "spec.strategy.steps[2]: has more than one of setWeight, pause, setHeaderRoute, setMirror, webhook",
    );
}

#[test]
fn analysis_errors() {
    assert_error(
        &edit("interval: 10s", "interval: 10ms"),
        "spec.strategy.analysis.interval: must be at least 100ms",
    );
    assert_error(
        &edit("name: success-rate", "name: succes-rate"),
        "spec.strategy.analysis.metrics[0].name: unknown metric 'succes-rate'",
    );
    assert_error(
        &edit("min: 0.99", "min: 99"),
        "spec.strategy.analysis.metrics[0].min: must be a ratio between 0 and 1",
    );
    assert_error(
        &edit("max: 500ms", "max: fast"),
        "spec.strategy.analysis.metrics[1].max: invalid duration 'fast'",
    );
    assert_error(
        &edit("          min: 0.99\n", ""),
        "spec.strategy.analysis.metrics[0]: needs min, max or both",
    );
    assert_error(
        &edit("minRequests: 20", "minRequests: 0"),
        "spec.strategy.analysis.minRequests: must be at least 1",
    );
    // A bare number is milliseconds for latencies.
    let p = load(&edit("max: 500ms", "max: 250")).unwrap();
    assert_eq!(p.analysis.unwrap().metrics[1].max, Some(250.0));
}

#[test]
fn acknowledge_errors() {
    let with = |ack: &str| format!("{SEED_YAML}  acknowledge: {ack}\n");
    assert_error(
        &with("{ deadline: soon }"),
        "spec.acknowledge.deadline: invalid duration 'soon'",
    );
    assert_error(
        &with("{ deadline: 500ms }"),
        "spec.acknowledge.deadline: must be at least 1s",
    );
    assert_error(
        &with("{ onDeadline: abort }"),
        "spec.acknowledge.onDeadline: abort needs a deadline (spec.acknowledge.deadline)",
    );
    assert_error(
        &with("{ deadline: 30s, onDeadline: rollback }"),
        "spec.acknowledge.onDeadline: must be wait or abort (got 'rollback')",
    );
    assert_error(&with("{ timeout: 30s }"), "timeout");
    let p = load(&with("{ deadline: 2m, onDeadline: abort }")).unwrap();
    assert_eq!(
        p.acknowledge,
        AckPlan {
            deadline_ms: Some(120_000),
            abort: true
        }
    );
    assert_eq!(
        seed().acknowledge,
        AckPlan::default(),
        "absent: wait, no deadline"
    );
    let wait = load(&with("{ deadline: 30s, onDeadline: wait }")).unwrap();
    assert!(!wait.acknowledge.abort);
    // An edit, not a new release.
    assert_eq!(wait.revision, seed().revision);
}

#[test]
fn policy_errors_map_to_rollout_fields() {
    assert_error(
        &edit(
            "match: \"Host(`pro.coding`)\"",
            "match: \"Host(`pro.coding`\"",
        ),
        "spec.match: column",
    );
    assert_error(
        &edit("period: 1s", "period: 1x"),
        "spec.rateLimits[0].period: ",
    );
    assert_error(
        &edit(
            "LatencyAtQuantileMS(50.0) > 100",
            "LatencyAtQuantileMS(50.0) >",
        ),
        "spec.circuitBreakers[0].expression: column",
    );
    assert_error(
        &edit("fallbackVariant: stable", "fallbackVariant: blue"),
        "spec.circuitBreakers[0].fallbackVariant: unknown variant 'blue'",
    );
    assert_error(
        &edit("window: 5s", "window: 5s\n      checkPeriod: 0s"),
        "spec.circuitBreakers[0].checkPeriod",
    );
    assert_error(
        &edit("variant: dev", "variant: qa"),
        "spec.routes[0].variant: unknown variant 'qa'",
    );
    assert_error(
        &edit("header: x-user-id", "header: x-user-id\n    cookie: uid"),
        "spec.sticky",
    );
}

#[test]
fn policy_paths() {
    assert_eq!(policy_path("routes[0].match", 1), "spec.routes[0].match");
    assert_eq!(policy_path("routes[1].match", 1), "spec.match");
    assert_eq!(
        policy_path("routes[1].sticky.source_ip", 1),
        "spec.sticky.sourceIp"
    );
    assert_eq!(
        policy_path("circuit_breakers[2].fallback_variant", 0),
        "spec.circuitBreakers[2].fallbackVariant"
    );
    assert_eq!(
        policy_path("rate_limits[0].source.client_ip.xff_depth", 0),
        "spec.rateLimits[0].source.clientIp.xffDepth"
    );
    assert_eq!(policy_path("variants.my_v", 0), "spec.variants.my_v");
    assert_eq!(policy_path("default", 0), "spec.stableVariant");
    assert_eq!(policy_path("cluster_header", 0), "spec.clusterHeader");
    assert_eq!(policy_path("", 0), "spec");
}

#[test]
fn revision_tracks_the_release_not_the_edits() {
    let base = seed().revision;
    let limits = load(&edit("average: 500", "average: 50")).unwrap();
    assert_eq!(limits.revision, base, "a limit change is an edit");
    let bounds = load(&edit("min: 0.99", "min: 0.9")).unwrap();
    assert_eq!(bounds.revision, base, "an analysis change is an edit");
    let canary = load(&edit("canary: k8s-flask-canary", "canary: k8s-flask-v3")).unwrap();
    assert_ne!(canary.revision, base, "a new canary is a new release");
    let steps = load(&edit("- setWeight: 50", "- setWeight: 25")).unwrap();
    assert_ne!(steps.revision, base, "new steps start over");
}

/// serde_yaml read Rollout files until issue 11; serde-saphyr reads them now. Every Rollout
/// the repository has (the seed, the step kinds the tests use) and the YAML forms a user may
/// write (quoted and bare numbers, flow and block style, anchors, comments, `yes`) mean the
/// same under both.
#[test]
fn every_rollout_parses_as_serde_yaml_read_it() {
    let strategies = [
        "    steps:
      - setWeight: 12.5
      - pause: { duration: 90s }
      - setHeaderRoute: {}
      - setHeaderRoute: { match: \"Headers(`a`, `b`)\" }
      - webhook: { url: \"http://127.0.0.1:9/migrate\", timeout: 5s }
      - webhook: { url: \"http://jobs/x\" }
",
        "    steps: [ { setWeight: 20 }, { pause: {} } ]\n",
        "    steps:
      - &w { setWeight: 10 }
      - *w
      - pause: { duration: '1s' }
    analysis:
      interval: \"1s\"
      failureLimit: 1
      minRequests: 5
      metrics:
        - { name: error-rate, max: 0.01 }
        - { name: latency-p99.9, min: 1, max: \"2s\" }
        - { name: success-rate, min: 1 }
",
    ];
    let head = SEED_YAML.split("  strategy:\n").next().unwrap();
    let mut docs = vec![
        SEED_YAML.to_string(),
        SEED_YAML.replace("average: 500", "average: 500.0"),
        SEED_YAML.replace("name: flask", "name: flask\n  labels: { a: \"yes\", b: x }"),
    ];
    docs.extend(strategies.iter().map(|s| format!("{head}  strategy:\n{s}")));
    for doc in &docs {
        let ours = parse(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
        let theirs: Document = serde_yaml::from_str(doc).unwrap();
        assert_eq!(ours.metadata, theirs.metadata, "{doc}");
        assert_eq!(ours.spec, theirs.spec, "{doc}");
        assert_eq!(ours.status, theirs.status, "{doc}");
    }
}

/// 100,000 nested flow sequences (200 KB) took serde_yaml 35 s, with the sidecar's lock held.
/// Under a field whose content is skipped (`metadata` ignores fields it does not know, as
/// Kubernetes does) nothing stops early: the budget refuses them at depth 64, with the field,
/// the line and the column, at once. Block nesting and alias bombs are bounded the same way.
#[test]
fn deep_yaml_is_refused_quickly_with_its_place() {
    let head = "apiVersion: rollgate.dev/v1alpha1\nkind: Rollout\nmetadata:\n  name: deep\n";
    let flow = format!(
        "{head}  x: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let maps = format!(
        "{head}  x: {}{}\n",
        "{a: ".repeat(100_000),
        "}".repeat(100_000)
    );
    let block: String = (0..200)
        .map(|i| format!("{}- \n", "  ".repeat(i + 2)))
        .collect();
    let block = format!("{head}  x:\n{block}");
    let mut bomb = String::from(head);
    bomb.push_str("  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    for (doc, expected) in [
        (
            &flow,
            "metadata.x: recursion limit exceeded at line 5, column 70",
        ),
        (&maps, "Depth"),
        (&block, "Depth"),
        (&bomb, "budget breached"),
    ] {
        let start = std::time::Instant::now();
        let errs = errors(doc);
        let took = start.elapsed();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains(expected), "{errs:?}");
        assert!(errs[0].starts_with("metadata"), "{errs:?}");
        assert!(errs[0].contains("line "), "{errs:?}");
        // Coarse: the machine is shared; these take milliseconds.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }
}

/// Errors quote no value beyond a short escaped excerpt, and a report is bounded: a file
/// holding a secret (a token pasted by mistake) does not reappear in the error.
#[test]
fn errors_never_echo_the_file() {
    let secret = "AKIAZ7Q3X9K2M4N8P0RT:wJalrXUtnFEMI/K7MDENG/bPxRfiCYz9Q8w7e6r5t";
    for doc in [
        secret.to_string(),
        format!("{secret}\n"),
        format!("- {secret}\n"),
        edit("average: 500", &format!("average: \"{secret}\"")),
        edit("minRequests: 20", &format!("minRequests: {secret}")),
        edit("failureLimit: 2", &format!("failureLimit: [{secret}]")),
    ] {
        let report = load(&doc).unwrap_err().to_string();
        assert!(!report.contains("wJalrXUtnFEMI"), "{report}");
    }
    // A long value is quoted in part, escaped.
    let long = format!("Deploy\\nment{}", "x".repeat(10_000));
    let report = load(&edit("kind: Rollout", &format!("kind: \"{long}\""))).unwrap_err();
    let report = report.to_string();
    assert!(
        report.starts_with("kind: must be Rollout, got 'Deploy\\nment"),
        "{report}"
    );
    assert!(report.chars().count() <= MAX_MESSAGE, "{report}");
    // Many problems: 20 listed, the rest counted.
    let steps: String = (0..30).map(|_| "      - setWeight: 150\n").collect();
    let head = SEED_YAML.split("  strategy:\n").next().unwrap();
    let report = load(&format!("{head}  strategy:\n    steps:\n{steps}"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        report.matches("must be between 0 and 100").count(),
        20,
        "{report}"
    );
    assert!(report.ends_with("; and 10 more problems"), "{report}");
}

/// A webhook URL is sent as the request line and the `Host` header: CR, LF, spaces, other
/// control characters or non-ASCII in it (`http://evil\r\nX-Injected:80/x` was accepted, its
/// host written into the `Host` header) are refused with the field path and the position.
#[test]
fn webhook_urls_are_visible_ascii() {
    for (url, position) in [
        ("http://evil\\r\\nX-Injected:80/x", 12),
        ("http://a b/x", 9),
        ("http://jobs/x\\ty", 14),
        ("http://jöbs/x", 9),
        ("http://jobs/x\\u007f", 14),
    ] {
        let doc = edit(
            "- setWeight: 50",
            &format!("- webhook: {{ url: \"{url}\" }}\n      - setWeight: 50"),
        );
        assert_error(
            &doc,
            &format!("spec.strategy.steps[2].webhook.url: character {position}"),
        );
        let report = load(&doc).unwrap_err().to_string();
        assert!(!report.contains('\r') && !report.contains('\n'), "{report}");
    }
}

#[test]
fn rule_syntax_is_carried_and_checked() {
    // Issue 13: `ruleSyntax` (Traefik's router option) on the Rollout, its routes and limits.
    let v2 = load(&edit(
        "  match: \"Host(`pro.coding`)\"",
        "  match: \"Host(`pro.coding`)\"\n  ruleSyntax: v2",
    ))
    .unwrap();
    let policy = render("flask", &v2.spec, &RolloutStatus::default());
    assert_eq!(policy.rule_syntax.as_deref(), Some("v2"));
    // Stated v3, the seed's header route (v2 `Headers`) is refused where it is written.
    assert_error(
        &edit(
            "  match: \"Host(`pro.coding`)\"",
            "  match: \"Host(`pro.coding`)\"\n  ruleSyntax: v3",
        ),
        "spec.strategy.steps[0].setHeaderRoute.match: column 1: unknown matcher 'Headers' in \
         rule syntax v3 (a v2 matcher)",
    );
    assert_error(
        &edit(
            "    - match: \"Host(`dev.coding`)\"",
            "    - match: \"Host(`dev.coding`)\"\n      ruleSyntax: v4",
        ),
        "spec.routes[0].ruleSyntax",
    );
}

#[test]
fn header_route_and_match_must_share_a_syntax() {
    // The seed's v2 header route beside a v3-only match: a one-pair Headers reads as v3's
    // Header, so the joined rule loads (it did before issue 13 too).
    let ok = edit(
        "  match: \"Host(`pro.coding`)\"",
        "  match: \"PathRegexp(`^/`)\"",
    );
    let plan = load(&ok).unwrap();
    let header = plan.steps.iter().find_map(|s| match s {
        PlanStep::SetHeaderRoute(r) => r.clone(),
        _ => None,
    });
    let status = RolloutStatus {
        header_route: header,
        ..RolloutStatus::default()
    };
    assert!(super::super::render::accept_rendered(&render("flask", &plan.spec, &status)).is_ok());
    // A pair no syntax reads together is refused when validated, not when the step runs.
    assert_error(
        &edit(
            "match: \"Headers(`location`, `shenzhen`)\"",
            "match: \"HostHeader(`pro.coding`)\"",
        )
        .replacen(
            "  match: \"Host(`pro.coding`)\"",
            "  match: \"PathRegexp(`^/`)\"",
            1,
        ),
        "spec.strategy.steps[0].setHeaderRoute.match: joined with spec.match, as the filter gets it",
    );
}

#[test]
fn one_gateway_resource_at_most() {
    assert_error(
        &edit(
            "canaryVariant: canary",
            "canaryVariant: canary\n  wasmPlugin: flask\n  envoyExtensionPolicy: flask",
        ),
        "spec.envoyExtensionPolicy: give wasmPlugin (Istio) or envoyExtensionPolicy (Envoy Gateway), not both",
    );
}

#[test]
fn tcp_limits_are_checked_by_the_policys_compiler_at_their_rollout_paths() {
    let with = |tcp: &str| edit("  strategy:\n", &format!("  tcp: {tcp}\n  strategy:\n"));
    let p = load(&with("{inFlight: {perSource: 3}, allow: [127.0.0.0/8]}")).unwrap();
    assert_eq!(
        p.spec
            .tcp
            .as_ref()
            .unwrap()
            .in_flight
            .as_ref()
            .unwrap()
            .per_source,
        Some(3)
    );
    // The revision follows the steps, not the limits (changing them renders a new TCP
    // policy, the rollout keeps its place).
    assert_eq!(p.revision, seed().revision);
    load(&with("{}")).unwrap();
    assert_error(
        &with("{inFlight: {perSource: 0}}"),
        "spec.tcp.inFlight.perSource: must be at least 1",
    );
    assert_error(
        &with("{inFlight: {}}"),
        "spec.tcp.inFlight: give 'per_source', 'total' or both",
    );
    assert_error(
        &with("{allow: [10.0.0.1/8]}"),
        "spec.tcp.allow[0]: '10.0.0.1/8' has host bits set below /8",
    );
    assert_error(
        &with("{allow: [nowhere]}"),
        "spec.tcp.allow[0]: 'nowhere' is not an IP address",
    );
    assert_error(
        &with("{rate: {average: 5, period: 1x}}"),
        "spec.tcp.rate.period:",
    );
    assert_error(&with("{inflight: {total: 2}}"), "unknown field `inflight`");
    assert_error(
        &edit(
            "  strategy:\n",
            "  tcp: {inFlight: {total: 2}}\n  envoyExtensionPolicy: eep\n  strategy:\n",
        ),
        "spec.tcp: not with envoyExtensionPolicy",
    );
}
