//! The acknowledgement rule of the step engine: a step that changed the policy waits until
//! every known gateway serves the version pushed for it ([`Event::Gateways`](super::Event)).

use super::Run;
use crate::status::{ack_summary, AckWait, Phase};
use crate::time::human_ms;

impl Run<'_> {
    /// After a step changed the policy: with gateways known, the step waits for them to
    /// serve it (the sidecar bumps the version when it stores this status, so the version
    /// to wait for is the one the status holds from then on).
    pub(super) fn await_gateways(&mut self) -> bool {
        if self.st.gateways.is_empty() {
            return false;
        }
        let (n, total) = (self.st.current_step + 1, self.plan.steps.len());
        self.st.awaiting_gateways = Some(AckWait {
            since: self.now,
            overdue: false,
        });
        self.st.phase = Phase::Progressing;
        self.st.message = format!(
            "step {n}/{total}: waiting for {} gateways to serve the new policy",
            self.st.gateways.len()
        );
        true
    }

    /// A waiting step: goes on once every gateway serves the status's version, else says who
    /// lags and, past the deadline, waits on or aborts.
    pub(super) fn check_ack(&mut self) {
        let Some(wait) = self.st.awaiting_gateways else {
            return;
        };
        let (n, total) = (self.st.current_step + 1, self.plan.steps.len());
        let version = self.st.policy_version;
        let count = self.st.gateways.len();
        if self.st.gateways.iter().all(|g| g.serves(version)) {
            self.st.awaiting_gateways = None;
            if count > 0 {
                self.note(format!(
                    "step {n}/{total} applied: all {count} gateways on v{version}"
                ));
            }
            // The next step (a timed pause, the analysis) counts from now.
            self.next();
            self.enter();
            return;
        }
        let summary = ack_summary(&self.st.gateways, version);
        let ack = self.plan.acknowledge;
        match ack.deadline_ms {
            Some(d) if self.now.since(wait.since) >= d && ack.abort => {
                self.st.awaiting_gateways = None;
                self.abort(format!(
                    "the gateways did not serve v{version} within {}: {summary}",
                    human_ms(d)
                ));
            }
            Some(d) if self.now.since(wait.since) >= d => {
                self.st.message = format!(
                    "step {n}/{total}: {summary} (past the {} deadline, waiting on)",
                    human_ms(d)
                );
                if !wait.overdue {
                    self.st.awaiting_gateways = Some(AckWait {
                        overdue: true,
                        ..wait
                    });
                    self.note(self.st.message.clone());
                }
            }
            _ => self.st.message = format!("step {n}/{total}: {summary}"),
        }
    }
}
