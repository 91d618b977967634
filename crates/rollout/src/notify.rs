//! Notifications: what a transition is worth telling (`spec.notify`), as pure functions of
//! the event and the statuses before and after it, and their delivery (a JSON `POST` with a
//! `text` field, retried with back-off). The sidecar and the controller run [`deliver`] in
//! the background after storing the status: a slow or dead receiver never holds a rollout.

use std::time::Duration;

use serde_json::json;

use crate::types::Notify;
use crate::{client, Event, Phase, RolloutStatus, Verdict};

/// Receivers a Rollout may name.
pub const MAX_RECEIVERS: usize = 8;
/// Attempts per notice, and the wait before the first retry (doubling).
pub const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    Promoted,
    Paused,
    Aborted,
    AnalysisFailed,
    BreakerTripped,
}

impl NoticeKind {
    /// The names `spec.notify[].events` takes.
    pub const NAMES: [&'static str; 5] = [
        "promoted",
        "paused",
        "aborted",
        "analysisFailed",
        "breakerTripped",
    ];
    const ALL: [NoticeKind; 5] = [
        NoticeKind::Promoted,
        NoticeKind::Paused,
        NoticeKind::Aborted,
        NoticeKind::AnalysisFailed,
        NoticeKind::BreakerTripped,
    ];

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<NoticeKind> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        let i = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::NAMES[i]
    }
}

/// One thing to tell.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: NoticeKind,
    /// One line for people.
    pub text: String,
}

/// What `event`, taking rollout `name` from `old` to `new`, is worth telling.
pub fn notices(name: &str, old: &RolloutStatus, new: &RolloutStatus, event: &Event) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut push = |kind, text: String| out.push(Notice { kind, text });
    if let Event::BreakerTripped { breaker, .. } = event {
        if new.attempt == old.attempt && old.phase.is_active() {
            push(
                NoticeKind::BreakerTripped,
                format!("{name}: circuit breaker '{breaker}' on the canary opened"),
            );
        }
    }
    if new.attempt == old.attempt && new.failed_analyses > old.failed_analyses {
        let figures = new
            .analysis
            .as_ref()
            .filter(|a| a.verdict == Verdict::Failed)
            .map_or_else(String::new, |a| format!(": {}", a.summary()));
        push(
            NoticeKind::AnalysisFailed,
            format!(
                "{name}: analysis failed ({} in this attempt){figures}",
                new.failed_analyses
            ),
        );
    }
    let moved = new.phase != old.phase || new.current_step != old.current_step;
    match new.phase {
        Phase::Promoted if old.phase != Phase::Promoted => push(
            NoticeKind::Promoted,
            format!("{name}: promoted, the canary serves everyone"),
        ),
        Phase::Paused if moved => push(NoticeKind::Paused, format!("{name}: {}", new.message)),
        Phase::Aborted if old.phase != Phase::Aborted => push(
            NoticeKind::Aborted,
            format!("{name}: aborted: {}", new.message),
        ),
        _ => {}
    }
    out
}

/// Whether `receiver` wants `kind`.
pub fn wants(receiver: &Notify, kind: NoticeKind) -> bool {
    receiver
        .events
        .as_ref()
        .is_none_or(|evs| evs.iter().any(|e| e == kind.name()))
}

/// The JSON body of `notice` for rollout `name` at `status`.
pub fn body(name: &str, notice: &Notice, status: &RolloutStatus) -> serde_json::Value {
    json!({
        "text": notice.text,
        "rollout": name,
        "event": notice.kind.name(),
        "phase": status.phase,
        "step": status.current_step,
        "canaryWeight": status.canary_weight,
        "message": status.message,
    })
}

/// POSTs `body` to `url` until a 2xx answer, at most [`ATTEMPTS`] times with doubling waits;
/// the last failure when none succeeded.
pub async fn deliver(url: &str, body: &serde_json::Value) -> Result<u16, String> {
    let text = body.to_string();
    let mut wait = FIRST_RETRY;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client::fetch("POST", url, Some(text.as_bytes()), ATTEMPT_TIMEOUT).await {
            Ok(r) if (200..300).contains(&r.status) => return Ok(r.status),
            Ok(r) => last = format!("answered {}", r.status),
            Err(e) => last = e.to_string(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(phase: Phase, step: u32) -> RolloutStatus {
        RolloutStatus {
            phase,
            current_step: step,
            attempt: 1,
            message: format!("at step {step}"),
            ..RolloutStatus::default()
        }
    }

    fn kinds(n: &[Notice]) -> Vec<NoticeKind> {
        n.iter().map(|n| n.kind).collect()
    }

    #[test]
    fn transitions_become_notices() {
        let paused = st(Phase::Paused, 1);
        let next = st(Phase::Paused, 3);
        assert_eq!(
            kinds(&notices("f", &paused, &next, &Event::Promote)),
            [NoticeKind::Paused]
        );
        // Nothing moved: nothing to tell.
        assert!(notices("f", &paused, &paused, &Event::Tick).is_empty());
        let done = st(Phase::Promoted, 7);
        assert_eq!(
            kinds(&notices("f", &next, &done, &Event::Promote)),
            [NoticeKind::Promoted]
        );
        let mut aborted = st(Phase::Aborted, 3);
        aborted.message = "circuit breaker 'lat' on the canary opened (1 trip)".into();
        let trip = Event::BreakerTripped {
            attempt: 1,
            breaker: "lat".into(),
            trips: 1,
        };
        let n = notices("f", &next, &aborted, &trip);
        assert_eq!(kinds(&n), [NoticeKind::BreakerTripped, NoticeKind::Aborted]);
        assert!(
            n[1].text.contains("aborted: circuit breaker 'lat'"),
            "{n:?}"
        );
        let mut failed = next.clone();
        failed.failed_analyses = 1;
        assert_eq!(
            kinds(&notices("f", &next, &failed, &Event::Tick)),
            [NoticeKind::AnalysisFailed]
        );
    }

    #[test]
    fn receivers_choose_events() {
        let all = Notify {
            url: "http://x/".into(),
            events: None,
        };
        let some = Notify {
            url: "http://x/".into(),
            events: Some(vec!["aborted".into()]),
        };
        assert!(wants(&all, NoticeKind::Paused));
        assert!(!wants(&some, NoticeKind::Paused));
        assert!(wants(&some, NoticeKind::Aborted));
        assert_eq!(
            NoticeKind::parse("analysisFailed"),
            Some(NoticeKind::AnalysisFailed)
        );
        assert_eq!(NoticeKind::parse("nope"), None);
    }
}
