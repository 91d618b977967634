//! How `rollgate status` shows a rollout: a summary line and details, plus progress bars
//! when standard output is a terminal.

use std::fmt::Write as _;

use crate::rollout::view::RolloutView;
use crate::rollout::{Phase, RolloutStatus};

/// Width of the progress bars, in cells.
const BAR: usize = 24;

/// `Paused, step 2/6: pause (until promoted), canary 0%, header route on, policy v2`.
pub fn summary(v: &RolloutView) -> String {
    let s = &v.status;
    let total = v.steps.len();
    let step = match (s.phase, v.steps.get(s.current_step as usize)) {
        (Phase::Promoted, _) | (_, None) => format!("all {total} steps done"),
        (_, Some(d)) => format!("step {}/{total}: {d}", s.current_step + 1),
    };
    let header = if s.header_route.is_some() {
        "on"
    } else {
        "off"
    };
    let mut line = format!(
        "{}, {step}, canary {}%, header route {header}",
        s.phase, s.canary_weight
    );
    if v.serving {
        let _ = write!(line, ", policy v{}", s.policy_version);
    } else {
        line.push_str(", no policy served");
    }
    line
}

fn bar(done: f64) -> String {
    let filled = ((done.clamp(0.0, 1.0) * BAR as f64).round()) as usize;
    format!("[{}{}]", "█".repeat(filled), "░".repeat(BAR - filled))
}

/// The whole block for one rollout; `tty` adds progress bars.
pub fn block(v: &RolloutView, tty: bool) -> String {
    let s = &v.status;
    let mut out = format!("{}: {}\n", v.name, summary(v));
    if tty && !v.steps.is_empty() {
        let done = match s.phase {
            Phase::Promoted => v.steps.len(),
            _ => s.current_step as usize,
        };
        let _ = writeln!(
            out,
            "  steps     {} {done}/{}",
            bar(done as f64 / v.steps.len() as f64),
            v.steps.len()
        );
        let _ = writeln!(
            out,
            "  canary    {} {}%",
            bar(s.canary_weight / 100.0),
            s.canary_weight
        );
    }
    if let Some(rule) = &s.header_route {
        let _ = writeln!(out, "  header    {rule} → canary");
    }
    if s.mirror_percent > 0.0 {
        let _ = writeln!(
            out,
            "  mirror    {}% of requests copied to the canary (answers compared, discarded)",
            s.mirror_percent
        );
    }
    if !s.message.is_empty() {
        let _ = writeln!(out, "  message   {}", s.message);
    }
    gateways(&mut out, s);
    if let Some(a) = &s.analysis {
        let _ = writeln!(
            out,
            "  analysis  {} at {} ({} failed so far): {}",
            a.verdict,
            a.at,
            s.failed_analyses,
            a.summary()
        );
    }
    if let Some(e) = &v.error {
        let _ = writeln!(out, "  error     {e}");
    }
    out
}

/// The gateways and the version each serves, under a line saying how many serve the
/// status's version (the one a waiting step waits for).
fn gateways(out: &mut String, s: &RolloutStatus) {
    if s.gateways.is_empty() {
        return;
    }
    let v = s.policy_version;
    let on = s.gateways.iter().filter(|g| g.serves(v)).count();
    let waiting = if s.awaiting_gateways.is_some() {
        ", the step waits for the rest"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "  gateways  {on}/{} on v{v}{waiting}",
        s.gateways.len()
    );
    for g in &s.gateways {
        let behind = if g.serves(v) { "" } else { "  (behind)" };
        let _ = writeln!(out, "            {g}{behind}");
    }
}

/// Every rollout's block, or `no rollouts`: `rollgate status` without a NAME.
pub fn list(views: &[RolloutView], tty: bool) -> String {
    if views.is_empty() {
        return "no rollouts\n".to_string();
    }
    views
        .iter()
        .map(|v| block(v, tty))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Where `status --watch` stops: 0 once promoted, 1 once aborted, `None` while the rollout
/// moves.
pub fn watch_exit(phase: Phase) -> Option<u8> {
    match phase {
        Phase::Promoted => Some(0),
        Phase::Aborted => Some(1),
        Phase::Progressing | Phase::Paused => None,
    }
}

/// `status --watch`'s output: each new text once, redrawn in place on a terminal (home,
/// clear screen), else after a blank line; an unchanged text is not repeated.
#[derive(Debug, Default)]
pub struct Redraw {
    tty: bool,
    last: String,
}

impl Redraw {
    /// Output to a terminal (`tty`) or not.
    pub fn new(tty: bool) -> Redraw {
        Redraw {
            tty,
            last: String::new(),
        }
    }

    /// Shows `text` if it differs from the last one shown.
    pub fn show(&mut self, out: &mut dyn std::io::Write, text: String) {
        if text == self.last {
            return;
        }
        if self.tty {
            let _ = write!(out, "\x1b[H\x1b[2J");
        } else if !self.last.is_empty() {
            let _ = writeln!(out);
        }
        let _ = write!(out, "{text}");
        let _ = out.flush();
        self.last = text;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{AckWait, AnalysisStatus, Figure, GatewayStatus, Timestamp, Verdict};

    fn view() -> RolloutView {
        RolloutView {
            name: "flask".into(),
            file: "/r/flask.yaml".into(),
            error: None,
            steps: vec![
                "setHeaderRoute Headers(`location`, `shenzhen`)".into(),
                "pause (until promoted)".into(),
                "setWeight 50".into(),
                "pause (until promoted)".into(),
            ],
            status: RolloutStatus {
                phase: Phase::Paused,
                current_step: 3,
                canary_weight: 50.0,
                header_route: Some("Headers(`location`, `shenzhen`)".into()),
                policy_version: 4,
                message: "paused at step 4/4: run `rollgate promote flask` to go on".into(),
                analysis: Some(AnalysisStatus {
                    at: Timestamp(0),
                    verdict: Verdict::Passed,
                    requests: 120,
                    figures: vec![Figure {
                        metric: "success-rate".into(),
                        value: Some(1.0),
                        min: Some(0.99),
                        max: None,
                        passed: true,
                    }],
                }),
                ..RolloutStatus::default()
            },
            serving: true,
        }
    }

    #[test]
    fn plain_block() {
        assert_eq!(
            block(&view(), false),
            "flask: Paused, step 4/4: pause (until promoted), canary 50%, header route on, \
             policy v4\n\
             \x20 header    Headers(`location`, `shenzhen`) → canary\n\
             \x20 message   paused at step 4/4: run `rollgate promote flask` to go on\n\
             \x20 analysis  passed at 1970-01-01T00:00:00.000Z (0 failed so far): \
             success-rate 1 (min 0.99) (120 canary responses)\n"
        );
    }

    #[test]
    fn gateways_are_listed_with_their_versions() {
        let mut v = view();
        assert!(!block(&v, false).contains("gateways"));
        let gw = |name: &str, version: Option<u64>, unreachable: bool| GatewayStatus {
            gateway: name.into(),
            version,
            unreachable,
        };
        v.status.gateways = vec![
            gw("127.0.0.1:9901", Some(4), false),
            gw("127.0.0.1:9902", Some(3), false),
            gw("127.0.0.1:9903", None, true),
        ];
        v.status.awaiting_gateways = Some(AckWait {
            since: Timestamp(0),
            overdue: false,
        });
        assert!(
            block(&v, false).contains(
                "\n  gateways  1/3 on v4, the step waits for the rest\n\
                 \x20           127.0.0.1:9901 on v4\n\
                 \x20           127.0.0.1:9902 on v3  (behind)\n\
                 \x20           127.0.0.1:9903 unreachable  (behind)\n"
            ),
            "{}",
            block(&v, false)
        );
    }

    #[test]
    fn a_mirror_is_shown_while_on() {
        let mut v = view();
        v.status.mirror_percent = 12.5;
        assert!(block(&v, false).contains(
            "\n  mirror    12.5% of requests copied to the canary (answers compared, discarded)\n"
        ));
        v.status.mirror_percent = 0.0;
        assert!(!block(&v, false).contains("mirror"));
    }

    #[test]
    fn terminal_block_has_bars() {
        let b = block(&view(), true);
        assert!(b.contains(&format!(
            "  steps     [{}{}] 3/4",
            "█".repeat(18),
            "░".repeat(6)
        )));
        assert!(b.contains(&format!(
            "  canary    [{}{}] 50%",
            "█".repeat(12),
            "░".repeat(12)
        )));
    }

    #[test]
    fn redraw_shows_each_change_once() {
        let mut out = Vec::new();
        let mut r = Redraw::new(false);
        for t in ["a\n", "a\n", "b\n"] {
            r.show(&mut out, t.to_string());
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a\n\nb\n");
        let mut out = Vec::new();
        let mut r = Redraw::new(true);
        r.show(&mut out, "a\n".to_string());
        assert_eq!(String::from_utf8(out).unwrap(), "\x1b[H\x1b[2Ja\n");
    }

    #[test]
    fn promoted_invalid_and_unserved() {
        let mut v = view();
        v.status.phase = Phase::Promoted;
        v.status.current_step = 4;
        v.status.canary_weight = 100.0;
        v.error = Some("spec.strategy.steps[0]: needs one of …".into());
        v.serving = false;
        let b = block(&v, false);
        assert!(b.starts_with(
            "flask: Promoted, all 4 steps done, canary 100%, header route on, no policy served\n"
        ));
        assert!(b.contains("  error     spec.strategy.steps[0]"));
    }
}
