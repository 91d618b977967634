//! Rollout YAML → a [`Plan`], or every problem found, each naming its field
//! (`spec.strategy.steps[2].setWeight: must be between 0 and 100, got 150`).
//!
//! The policy parts are checked by the filter's own compiler on a rendered policy, so the
//! sidecar accepts exactly what the filter will; its errors are mapped back from policy
//! paths (`circuit_breakers[0].check_period`) to Rollout paths
//! (`spec.circuitBreakers[0].checkPeriod`).

use std::fmt;

use rollgate_policy::policy::Policy;

use super::excerpt::{bounded, excerpt, MAX_MESSAGE, MAX_PROBLEMS};
use super::parts::RuleSyntax;
use super::plan::{fingerprint, AckPlan, AnalysisPlan, MetricKind, MetricPlan, Plan, PlanStep};
use super::render::{render, render_tcp};
use super::status::RolloutStatus;
use super::time::parse_ms;
use super::types::{Acknowledge, Analysis, Rollout, RolloutSpec, Threshold, API_VERSION, KIND};
use super::url::HttpUrl;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Default analysis interval.
pub const DEFAULT_INTERVAL: &str = "30s";
/// Default webhook timeout.
pub const DEFAULT_WEBHOOK_TIMEOUT: &str = "30s";

/// One problem at a field path (empty for the document as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where, e.g. `spec.strategy.steps[0].pause.duration`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a Rollout (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RolloutErrors(pub Vec<FieldError>);

/// At most [`MAX_PROBLEMS`] problems of at most [`MAX_MESSAGE`] characters each (escaped,
/// cut with `…`), then how many more there are: the report goes to the log, the status file
/// and the API.
impl fmt::Display for RolloutErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().take(MAX_PROBLEMS).enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&bounded(&e.to_string(), MAX_MESSAGE))?;
        }
        if self.0.len() > MAX_PROBLEMS {
            write!(f, "; and {} more problems", self.0.len() - MAX_PROBLEMS)?;
        }
        Ok(())
    }
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// A Rollout file as written: [`Rollout`] (kube's derive) has no `apiVersion`/`kind` fields
/// and accepts unknown top-level fields, so files are read through this strict twin.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RolloutSpec,
    #[serde(default)]
    status: Option<RolloutStatus>,
}

/// The YAML budget of a Rollout file: far above what a Rollout needs (the seed nests 6 deep
/// in about 120 nodes, with no alias) and far below what costs (serde_yaml took 35 s on
/// 100,000 nested levels; nothing here recurses deeper than `max_depth`). The file itself is
/// at most [`MAX_POLICY_BYTES`](rollgate_policy::limits::MAX_POLICY_BYTES).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: 64,
            flow_nesting_limit: 64,
            max_nodes: 100_000,
            max_events: 300_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_documents: 1,
            max_total_scalar_bytes: rollgate_policy::limits::MAX_POLICY_BYTES,
        },
        // A snippet would quote the file's lines into the error.
        with_snippet: false,
    }
}

/// What went wrong at the YAML level, with its line and column, quoting no value: a type
/// error says which type it met, not the text (the file may hold anything).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    let e = e.without_snippet();
    let kind = |unexpected: &str| {
        // serde's `string "…"`, `integer `5``: the words before the value.
        let end = unexpected
            .find(['"', '`', '\''])
            .unwrap_or(unexpected.len());
        unexpected[..end].trim().to_string()
    };
    let message = match e {
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => format!("invalid type: {}, expected {expected}", kind(unexpected)),
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => format!("invalid value: {}, expected {expected}", kind(unexpected)),
        E::SerdeUnknownField {
            field, expected, ..
        } => format!(
            "unknown field `{}`, expected one of {}",
            excerpt(field),
            expected.join(", ")
        ),
        // The rest describe structure, not values; most place themselves.
        other => other.to_string(),
    };
    match e.location() {
        Some(l) if l.line() > 0 && !message.contains(" at line ") => {
            format!("{message} at line {}, column {}", l.line(), l.column())
        }
        _ => message,
    }
}

/// Parses Rollout YAML within [`yaml_options`]' budget; an error names the field path, the
/// line and the column.
pub fn parse(yaml: &str) -> Result<Rollout, RolloutErrors> {
    let mut path = String::new();
    let parsed =
        serde_saphyr::with_deserializer_from_str_with_options(yaml, yaml_options(), |de| {
            serde_path_to_error::deserialize::<_, Document>(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        });
    let doc = parsed.map_err(|e| {
        // serde_path_to_error's root is `.`, an unknown place `?`.
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        RolloutErrors(vec![FieldError {
            path: excerpt(&path),
            message: yaml_message(&e),
        }])
    })?;
    let mut errs = Errors(Vec::new());
    if doc.api_version != API_VERSION {
        errs.push(
            "apiVersion",
            format!("must be {API_VERSION}, got '{}'", excerpt(&doc.api_version)),
        );
    }
    if doc.kind != KIND {
        errs.push(
            "kind",
            format!("must be {KIND}, got '{}'", excerpt(&doc.kind)),
        );
    }
    if !errs.0.is_empty() {
        return Err(RolloutErrors(errs.0));
    }
    Ok(Rollout {
        metadata: doc.metadata,
        spec: doc.spec,
        status: doc.status,
    })
}

/// Parses and validates Rollout YAML.
pub fn load(yaml: &str) -> Result<Plan, RolloutErrors> {
    plan(&parse(yaml)?)
}

/// A Kubernetes-style name: a DNS label, so it is also a safe URL segment and stat name.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Validates a parsed Rollout into a [`Plan`].
pub fn plan(r: &Rollout) -> Result<Plan, RolloutErrors> {
    let mut errs = Errors(Vec::new());
    let name = &r.metadata.name.clone().unwrap_or_default();
    if !valid_name(name) {
        errs.push(
            "metadata.name",
            format!(
                "must be 1-63 lower-case letters, digits or '-', not starting or ending \
                 with '-' (got '{}')",
                excerpt(name)
            ),
        );
    }
    let spec = &r.spec;
    let known = || spec.variants.keys().cloned().collect::<Vec<_>>().join(", ");
    for (field, v) in [
        ("stableVariant", &spec.stable_variant),
        ("canaryVariant", &spec.canary_variant),
    ] {
        if !spec.variants.contains_key(v) {
            errs.push(
                format!("spec.{field}"),
                format!(
                    "unknown variant '{}' (known: {})",
                    excerpt(v),
                    excerpt(&known())
                ),
            );
        }
    }
    if spec.stable_variant == spec.canary_variant {
        errs.push("spec.canaryVariant", "must differ from stableVariant");
    }
    for (i, n) in spec.notify.iter().enumerate() {
        if let Err(e) = HttpUrl::parse(&n.url) {
            errs.push(format!("spec.notify[{i}].url"), e);
        }
        for (j, ev) in n.events.iter().flatten().enumerate() {
            if crate::notify::NoticeKind::parse(ev).is_none() {
                errs.push(
                    format!("spec.notify[{i}].events[{j}]"),
                    format!(
                        "unknown event '{}' (known: {})",
                        excerpt(ev),
                        crate::notify::NoticeKind::NAMES.join(", ")
                    ),
                );
            }
        }
    }
    if spec.notify.len() > crate::notify::MAX_RECEIVERS {
        errs.push(
            "spec.notify",
            format!("at most {} receivers", crate::notify::MAX_RECEIVERS),
        );
    }
    if spec.wasm_plugin.is_some() && spec.envoy_extension_policy.is_some() {
        errs.push(
            "spec.envoyExtensionPolicy",
            "give wasmPlugin (Istio) or envoyExtensionPolicy (Envoy Gateway), not both",
        );
    }
    if let Some(rule) = &spec.rule {
        if let Err(e) = compile_rule(rule, spec.rule_syntax) {
            errs.push("spec.match", e.to_string());
        }
    }
    let steps = plan_steps(spec, &mut errs);
    let analysis = spec
        .strategy
        .analysis
        .as_ref()
        .and_then(|a| plan_analysis(a, &mut errs));
    let acknowledge = spec
        .acknowledge
        .as_ref()
        .map(|a| plan_acknowledge(a, &mut errs))
        .unwrap_or_default();
    // The policy parts, as the filter will see them.
    let policy = render(name, spec, &RolloutStatus::default());
    if let Err(pe) = Policy::compile(policy) {
        for e in pe.0 {
            let path = policy_path(&e.path, spec.routes.len());
            // The rule and the variants the rollout's own routes use were checked above;
            // report them once, in the Rollout's words.
            let checked = path == "spec.match"
                || path == "spec.stableVariant"
                || path.starts_with("spec (the canary split)");
            if !checked {
                errs.push(path, e.message);
            }
        }
    }
    // The connection limits, by the filter's own compiler on the TCP policy as it is served:
    // `tcp.in_flight.per_source` is reported as `spec.tcp.inFlight.perSource`.
    if let Some(tcp) = render_tcp(name, spec) {
        if spec.envoy_extension_policy.is_some() {
            errs.push(
                "spec.tcp",
                "not with envoyExtensionPolicy: Envoy Gateway runs Wasm as an HTTP filter \
                 only, and connection limits need a network filter (Istio's WasmPlugin with \
                 type NETWORK, or serve --dir)",
            );
        }
        if let Err(pe) = Policy::compile(tcp) {
            for e in pe.0 {
                errs.push(policy_path(&e.path, spec.routes.len()), e.message);
            }
        }
    }
    // A header route joins `spec.match` to its step's rule (`and_rules`) and adds a route:
    // the joined rule has its own length, nesting and matcher count. Each is checked as the
    // sidecar will render it, so no step of a Rollout that validates has a policy the filter
    // refuses (the fuzz target's step property: a 3,000-term match and a 1,500-term header rule
    // validated, then the sidecar refused step 1's policy, "more than 4096 matchers").
    if errs.0.is_empty() {
        for (i, s) in spec.strategy.steps.iter().enumerate() {
            let Some(rule) = s.set_header_route.as_ref().and_then(|h| h.rule.clone()) else {
                continue;
            };
            let status = RolloutStatus {
                header_route: Some(rule),
                ..RolloutStatus::default()
            };
            if let Err(pe) = Policy::compile(render(name, spec, &status)) {
                for e in pe.0 {
                    errs.push(
                        format!("spec.strategy.steps[{i}].setHeaderRoute.match"),
                        format!("the policy with this header route is refused: {e}"),
                    );
                }
            }
        }
    }
    if !errs.0.is_empty() {
        return Err(RolloutErrors(errs.0));
    }
    let cluster = |v: &str| spec.variants.get(v).cloned().unwrap_or_default();
    let identity = serde_json::json!({
        "stable": cluster(&spec.stable_variant),
        "canary": cluster(&spec.canary_variant),
        "steps": spec.strategy.steps,
    });
    Ok(Plan {
        name: name.clone(),
        spec: spec.clone(),
        steps,
        analysis,
        revision: fingerprint(identity.to_string().as_bytes()),
        acknowledge,
        canary_breakers: spec
            .circuit_breakers
            .iter()
            .filter(|b| b.variant.as_deref() == Some(spec.canary_variant.as_str()))
            .map(|b| b.name.clone())
            .collect(),
    })
}

/// A rule in the rollout's `ruleSyntax` (guessed when it has none), as the filter reads it.
fn compile_rule(
    rule: &str,
    syntax: Option<RuleSyntax>,
) -> Result<rollgate_policy::rule::Matcher, rollgate_policy::rule::ParseError> {
    let syntax = syntax.map(|s| match s {
        RuleSyntax::V3 => rollgate_policy::rule::Syntax::V3,
        RuleSyntax::V2 => rollgate_policy::rule::Syntax::V2,
    });
    let mut regexes = rollgate_policy::limits::MAX_REGEXES;
    rollgate_policy::rule::compile_with(rule, syntax, &mut regexes)
}

fn plan_steps(spec: &RolloutSpec, errs: &mut Errors) -> Vec<PlanStep> {
    let (steps, syntax) = (&spec.strategy.steps, spec.rule_syntax);
    let mut out = Vec::with_capacity(steps.len());
    for (i, s) in steps.iter().enumerate() {
        let at = format!("spec.strategy.steps[{i}]");
        let set = [
            s.set_weight.is_some(),
            s.pause.is_some(),
            s.set_header_route.is_some(),
            s.set_mirror.is_some(),
            s.webhook.is_some(),
        ];
        match set.iter().filter(|b| **b).count() {
            0 => {
                errs.push(
                    at,
                    "needs one of setWeight, pause, setHeaderRoute, setMirror, webhook",
                );
                continue;
            }
            1 => {}
            _ => {
                errs.push(
                    at,
                    "has more than one of setWeight, pause, setHeaderRoute, setMirror, webhook: \
                     a step does one thing",
                );
                continue;
            }
        }
        if let Some(w) = s.set_weight {
            if !(0.0..=100.0).contains(&w) {
                errs.push(
                    format!("{at}.setWeight"),
                    format!("must be between 0 and 100, got {w}"),
                );
            } else if ((w * 100.0).round() - w * 100.0).abs() > 1e-6 {
                errs.push(
                    format!("{at}.setWeight"),
                    format!("at most two decimals, got {w}"),
                );
            }
            out.push(PlanStep::SetWeight(w));
        } else if let Some(p) = &s.pause {
            let ms = p.duration.as_deref().map(parse_ms).transpose();
            match ms {
                Ok(ms) => out.push(PlanStep::Pause(ms)),
                Err(e) => errs.push(format!("{at}.pause.duration"), e),
            }
        } else if let Some(h) = &s.set_header_route {
            if let Some(rule) = &h.rule {
                let alone = compile_rule(rule, syntax);
                // The filter gets `match && rule` as one rule (render::and_rules): a pair that
                // is valid only in different syntaxes would be refused when the step runs.
                let joined = match (&alone, &spec.rule) {
                    (Ok(_), Some(r)) if compile_rule(r, syntax).is_ok() => {
                        compile_rule(&super::render::and_rules(Some(r), rule), syntax).err()
                    }
                    _ => None,
                };
                if let Err(e) = alone {
                    errs.push(format!("{at}.setHeaderRoute.match"), e.to_string());
                } else if let Some(e) = joined {
                    errs.push(
                        format!("{at}.setHeaderRoute.match"),
                        format!(
                            "joined with spec.match, as the filter gets it: {e} (where the two \
                             are in different rule syntaxes, set spec.ruleSyntax and write both \
                             in it)"
                        ),
                    );
                }
            }
            out.push(PlanStep::SetHeaderRoute(h.rule.clone()));
        } else if let Some(m) = &s.set_mirror {
            let p = m.percent;
            if !(0.0..=100.0).contains(&p) {
                errs.push(
                    format!("{at}.setMirror.percent"),
                    format!("must be between 0 and 100, got {p}"),
                );
            } else if ((p * 100.0).round() - p * 100.0).abs() > 1e-6 {
                errs.push(
                    format!("{at}.setMirror.percent"),
                    format!("at most two decimals, got {p}"),
                );
            }
            let compare = m.compare_body.unwrap_or(0);
            if compare > rollgate_policy::limits::MAX_MIRROR_BODY {
                errs.push(
                    format!("{at}.setMirror.compareBody"),
                    format!(
                        "may be at most {} bytes, got {compare}",
                        rollgate_policy::limits::MAX_MIRROR_BODY
                    ),
                );
            }
            out.push(PlanStep::SetMirror(p, compare));
        } else if let Some(w) = &s.webhook {
            if let Err(e) = HttpUrl::parse(&w.url) {
                errs.push(format!("{at}.webhook.url"), e);
            }
            let timeout = w.timeout.as_deref().unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
            match parse_ms(timeout) {
                Ok(0) => errs.push(format!("{at}.webhook.timeout"), "must be positive"),
                Ok(timeout_ms) => out.push(PlanStep::Webhook {
                    url: w.url.clone(),
                    timeout_ms,
                }),
                Err(e) => errs.push(format!("{at}.webhook.timeout"), e),
            }
        }
    }
    out
}

/// `spec.acknowledge`: a deadline of at least a second (gateways apply a pushed policy within
/// one), and `abort` only with a deadline to pass.
fn plan_acknowledge(a: &Acknowledge, errs: &mut Errors) -> AckPlan {
    let deadline_ms = match a.deadline.as_deref().map(parse_ms) {
        None => None,
        Some(Ok(ms)) if ms >= 1_000 => Some(ms),
        Some(Ok(_)) => {
            errs.push("spec.acknowledge.deadline", "must be at least 1s");
            None
        }
        Some(Err(e)) => {
            errs.push("spec.acknowledge.deadline", e);
            None
        }
    };
    let abort = match a.on_deadline.as_deref() {
        None | Some("wait") => false,
        Some("abort") if a.deadline.is_none() => {
            errs.push(
                "spec.acknowledge.onDeadline",
                "abort needs a deadline (spec.acknowledge.deadline)",
            );
            false
        }
        Some("abort") => true,
        Some(other) => {
            errs.push(
                "spec.acknowledge.onDeadline",
                format!("must be wait or abort (got '{}')", excerpt(other)),
            );
            false
        }
    };
    AckPlan { deadline_ms, abort }
}

fn plan_analysis(a: &Analysis, errs: &mut Errors) -> Option<AnalysisPlan> {
    let before = errs.0.len();
    let interval = a.interval.as_deref().unwrap_or(DEFAULT_INTERVAL);
    let interval_ms = match parse_ms(interval) {
        Ok(ms) if ms >= 100 => ms,
        Ok(_) => {
            errs.push("spec.strategy.analysis.interval", "must be at least 100ms");
            0
        }
        Err(e) => {
            errs.push("spec.strategy.analysis.interval", e);
            0
        }
    };
    if a.metrics.is_empty() {
        errs.push(
            "spec.strategy.analysis.metrics",
            "needs at least one metric",
        );
    }
    if a.min_requests == Some(0) {
        errs.push("spec.strategy.analysis.minRequests", "must be at least 1");
    }
    let mut metrics = Vec::new();
    for (i, m) in a.metrics.iter().enumerate() {
        let at = format!("spec.strategy.analysis.metrics[{i}]");
        let kind = match MetricKind::parse(&m.name) {
            Ok(k) => k,
            Err(e) => {
                errs.push(format!("{at}.name"), e);
                continue;
            }
        };
        if m.min.is_none() && m.max.is_none() {
            errs.push(at.clone(), "needs min, max or both");
        }
        let mut bound = |field: &str, t: &Option<Threshold>| -> Option<f64> {
            let t = t.as_ref()?;
            let path = format!("{at}.{field}");
            match (kind.is_latency(), t) {
                (true, Threshold::Number(n)) if *n >= 0.0 => Some(*n),
                (true, Threshold::Text(d)) => match parse_ms(d) {
                    Ok(ms) => Some(ms as f64),
                    Err(e) => {
                        errs.push(path, e);
                        None
                    }
                },
                (false, Threshold::Number(n)) if (0.0..=1.0).contains(n) => Some(*n),
                (true, _) => {
                    errs.push(path, "must be a duration such as 500ms (or milliseconds)");
                    None
                }
                (false, _) => {
                    errs.push(path, "must be a ratio between 0 and 1, such as 0.99");
                    None
                }
            }
        };
        let (min, max) = (bound("min", &m.min), bound("max", &m.max));
        metrics.push(MetricPlan {
            name: m.name.clone(),
            kind,
            min,
            max,
        });
    }
    (errs.0.len() == before).then(|| AnalysisPlan {
        interval_ms,
        failure_limit: a.failure_limit,
        min_requests: a.min_requests.unwrap_or(1),
        metrics,
    })
}

/// `check_period` → `checkPeriod`, segment by segment.
fn camel(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper && c.is_ascii_alphabetic() => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => {
                if upper {
                    out.push('_');
                    upper = false;
                }
                out.push(c);
            }
        }
    }
    out
}

/// Maps a path in the rendered policy (with `fixed` fixed routes, no header route) to the
/// Rollout field it came from.
fn policy_path(path: &str, fixed: usize) -> String {
    let head_end = path.find(['.', '[']).unwrap_or(path.len());
    let (head, mut rest) = path.split_at(head_end);
    let mut index = None;
    if let Some(r) = rest.strip_prefix('[') {
        if let Some((n, tail)) = r.split_once(']') {
            index = n.parse::<usize>().ok();
            rest = tail;
        }
    }
    let indexed = |field: &str| match index {
        Some(i) => format!("spec.{field}[{i}]{}", camel(rest)),
        None => format!("spec.{field}{}", camel(rest)),
    };
    match head {
        "" => "spec".to_string(),
        "name" => "metadata.name".to_string(),
        "default" => "spec.stableVariant".to_string(),
        "variants" => format!("spec.variants{rest}"),
        "routes" if index.is_some_and(|i| i < fixed) => indexed("routes"),
        // The split route: its rule and key are the spec's own.
        "routes" if rest == ".match" => "spec.match".to_string(),
        "routes" if rest.starts_with(".sticky") => format!("spec{}", camel(rest)),
        "routes" => format!("spec (the canary split){rest}"),
        "rate_limits" => indexed("rateLimits"),
        "circuit_breakers" => indexed("circuitBreakers"),
        _ => format!("spec.{}", camel(path)),
    }
}

#[cfg(test)]
mod tests;
