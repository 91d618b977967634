//! `serve --kubernetes` options: the leader-election identity and namespace from the
//! downward API or flags, and the analysis source (moved from the lease tests, which now live
//! with the controller: this one needs the binary's argument parser).

#[test]
fn options_come_from_the_downward_api_and_flags() {
    use clap::Parser;
    let parse_options = |args: &[String], env: &dyn Fn(&str) -> Option<String>| {
        let argv = std::iter::once("serve").chain(args.iter().map(String::as_str));
        rollgate::args::ServeArgs::try_parse_from(argv)
            .map(|a| rollgate::cli::kube_options(&a, env))
            .map_err(|e| e.to_string())
    };
    let env = |k: &str| match k {
        "POD_NAMESPACE" => Some("ops".to_string()),
        "POD_NAME" => Some("rollgate-7f".to_string()),
        _ => None,
    };
    let o = parse_options(&["--kubernetes".to_string()], &env).unwrap();
    assert_eq!(
        (o.lease_namespace.as_str(), o.identity.as_str()),
        ("ops", "rollgate-7f")
    );
    let args = ["--kubernetes", "--identity", "me"].map(String::from);
    assert_eq!(parse_options(&args, &env).unwrap().identity, "me");
    let prom = ["--kubernetes", "--prometheus", "http://p:9090"].map(String::from);
    let o = parse_options(&prom, &env).unwrap();
    assert_eq!(
        o.source(),
        rollgate::kube::analysis::Source::Prometheus("http://p:9090".into())
    );
    let bad = [
        "--kubernetes",
        "--prometheus",
        "http://p",
        "--envoy-admin",
        "http://e",
    ]
    .map(String::from);
    assert!(parse_options(&bad, &env).is_err());
}
