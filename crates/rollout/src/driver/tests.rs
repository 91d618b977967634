//! The driver over a store in memory: what a pass commits, when it starts over, what it
//! refuses, and what it does only after the status is stored. The two real stores (the
//! sidecar's directory, the controller's API) have their own tests with the real parts.

use std::sync::Mutex;

use super::*;
use crate::testdata::{seed, with_strategy};
use crate::Phase;

#[derive(Default)]
struct Mem {
    plan: Option<Arc<Plan>>,
    status: RolloutStatus,
    served: Option<Rendered>,
    generation: u64,
    /// Changes the status under the next commit (another pass got there first), once.
    meddle: Option<Event>,
    /// Something changes the rollout under every commit.
    churn: bool,
    commits: Vec<(RolloutStatus, bool)>,
    stale: usize,
    refused: Vec<String>,
    /// What happened, in order: "commit", "publish: …", "log: …".
    trail: Vec<String>,
}

#[derive(Clone, Default)]
struct MemStore(Arc<Mutex<Mem>>);

impl MemStore {
    fn new(plan: Plan) -> MemStore {
        let store = MemStore::default();
        store.mem().plan = Some(Arc::new(plan));
        store
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.0.lock().unwrap()
    }
}

impl Store for MemStore {
    type Token = u64;
    type Error = String;

    async fn load(&self) -> Result<Option<Loaded<u64>>, String> {
        let m = self.mem();
        Ok(m.plan.clone().map(|plan| Loaded {
            plan,
            status: m.status.clone(),
            id: "mem".into(),
            token: m.generation,
        }))
    }

    fn serves(&self, _: &Loaded<u64>, policy: &Rendered) -> bool {
        self.mem().served.as_ref() == Some(policy)
    }

    async fn refuse(&self, loaded: Loaded<u64>, why: String) -> Result<(), CommitError<String>> {
        let mut m = self.mem();
        if m.generation != loaded.token {
            return Err(CommitError::Stale);
        }
        m.refused.push(why);
        Ok(())
    }

    async fn commit(
        &self,
        loaded: Loaded<u64>,
        status: RolloutStatus,
        push: Option<Push>,
    ) -> Result<RolloutStatus, CommitError<String>> {
        let mut m = self.mem();
        if let Some(event) = m.meddle.take() {
            let plan = m.plan.clone().unwrap();
            m.status = step(&plan, &m.status, event, Timestamp(0)).unwrap().status;
            m.generation += 1;
        }
        if m.churn {
            m.generation += 1;
        }
        if m.generation != loaded.token {
            m.stale += 1;
            return Err(CommitError::Stale);
        }
        m.commits.push((status.clone(), push.is_some()));
        if let Some(p) = push {
            m.served = Some(p.policy);
        }
        m.status = status.clone();
        m.generation += 1;
        m.trail.push("commit".into());
        Ok(status)
    }

    async fn publish(&self, _: &Plan, _: &RolloutStatus, notes: Vec<String>) -> Result<(), String> {
        self.mem()
            .trail
            .push(format!("publish: {}", notes.join("; ")));
        Ok(())
    }

    fn log(&self, _: &str, _: &RolloutStatus, line: &str) {
        self.mem().trail.push(format!("log: {line}"));
    }
}

const T0: Timestamp = Timestamp(1_800_000_000_000);

fn pass(
    driver: &Driver,
    store: &MemStore,
    event: Event,
) -> Result<Option<RolloutStatus>, PassError<String>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(driver.pass(store, event, None, T0))
}

#[test]
fn a_pass_numbers_and_pushes_only_a_policy_that_changed() {
    let (driver, store) = (Driver::default(), MemStore::new(seed()));
    let first = pass(&driver, &store, Event::SpecChanged).unwrap().unwrap();
    assert_eq!((first.phase, first.policy_version), (Phase::Paused, 1));
    assert_eq!(first.notified, Some(Told::of(&first)));
    // The clock again: same policy, not pushed, not renumbered.
    let again = pass(&driver, &store, Event::Tick).unwrap().unwrap();
    assert_eq!(again.policy_version, 1);
    let promoted = pass(&driver, &store, Event::Promote).unwrap().unwrap();
    assert_eq!(promoted.policy_version, 2);
    let m = store.mem();
    let pushed: Vec<bool> = m.commits.iter().map(|(_, p)| *p).collect();
    assert_eq!(pushed, [true, false, true]);
    assert_eq!(
        m.served.as_ref(),
        Some(&render_both(m.plan.as_ref().unwrap(), &promoted))
    );
}

#[test]
fn a_commit_onto_a_changed_rollout_starts_the_pass_over_on_the_fresh_state() {
    let (driver, store) = (Driver::default(), MemStore::new(seed()));
    let paused = pass(&driver, &store, Event::SpecChanged).unwrap().unwrap();
    let promoted = step(&seed(), &paused, Event::Promote, T0).unwrap().status;
    assert_ne!(promoted.current_step, paused.current_step);
    // A promote lands between this pass's load and its commit.
    store.mem().meddle = Some(Event::Promote);
    let stored = pass(&driver, &store, Event::Tick).unwrap().unwrap();
    let m = store.mem();
    assert_eq!(m.stale, 1);
    assert_eq!(
        stored.current_step, promoted.current_step,
        "the promote is kept, not overwritten"
    );
    assert_eq!(m.status, stored);
}

#[test]
fn a_pass_gives_up_on_a_rollout_that_keeps_changing_and_says_so() {
    let (driver, store) = (Driver::default(), MemStore::new(seed()));
    store.mem().churn = true;
    let given_up = pass(&driver, &store, Event::SpecChanged);
    assert!(
        matches!(given_up, Err(PassError::Moved(ref why)) if why.contains("changed 64 times")),
        "{given_up:?}"
    );
    let m = store.mem();
    assert_eq!((m.stale, m.commits.len()), (MAX_TRIES, 0));
}

#[test]
fn commands_that_do_not_apply_store_nothing() {
    let (driver, store) = (Driver::default(), MemStore::new(seed()));
    pass(&driver, &store, Event::SpecChanged).unwrap();
    let commits = store.mem().commits.len();
    assert!(matches!(
        pass(&driver, &store, Event::Retry),
        Err(PassError::Refused(_))
    ));
    let expect = Expect {
        step: Some(3),
        attempt: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let moved = runtime.block_on(driver.pass(&store, Event::Promote, Some(("flask", &expect)), T0));
    assert!(matches!(moved, Err(PassError::Moved(ref why)) if why.contains("not at step 3")));
    assert_eq!(store.mem().commits.len(), commits);
}

#[test]
fn a_policy_the_filter_refuses_is_not_committed() {
    let mut plan = seed();
    // The first step routes by header under the spec's rule: nested past the filter's limit.
    plan.spec.rule = Some(format!("{}Host(`a`){}", "(".repeat(40), ")".repeat(40)));
    let (driver, store) = (Driver::default(), MemStore::new(plan));
    assert_eq!(pass(&driver, &store, Event::SpecChanged).unwrap(), None);
    let m = store.mem();
    assert!(m.commits.is_empty());
    assert_eq!(m.status, RolloutStatus::default());
    assert_eq!(m.refused.len(), 1);
    assert!(
        m.refused[0].starts_with("rendered policy refused by the filter: ")
            && m.refused[0].contains("nesting deeper than 32"),
        "{}",
        m.refused[0]
    );
}

/// A local endpoint answering 200 to each request, counting them.
async fn answering() -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/migrate", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            *counted.lock().unwrap() += 1;
            let mut buf = vec![0; 65536];
            let _ = conn.read(&mut buf).await;
            let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = conn.write_all(ok.as_bytes()).await;
        }
    });
    (url, calls)
}

#[test]
fn a_webhook_is_called_once_after_the_commit_and_its_answer_moves_a_later_pass() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (url, calls) = answering().await;
        let plan = with_strategy(&format!(
            "    steps:\n      - webhook: {{ url: \"{url}\", timeout: 5s }}\n      - pause: {{}}\n"
        ));
        let (driver, store) = (Driver::default(), MemStore::new(plan));
        let first = driver.pass(&store, Event::SpecChanged, None, T0).await;
        assert_eq!(first.unwrap().unwrap().current_step, 0);
        // Passes while the call is out ask for it again: it is made once.
        for _ in 0..3 {
            driver.pass(&store, Event::Tick, None, T0).await.unwrap();
        }
        let mut moved = None;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let s = driver.pass(&store, Event::Tick, None, T0).await.unwrap();
            if s.as_ref().is_some_and(|s| s.current_step == 1) {
                moved = s;
                break;
            }
        }
        assert_eq!(
            moved.expect("the answer moves the rollout").phase,
            Phase::Paused
        );
        assert_eq!(*calls.lock().unwrap(), 1);
        let trail = store.mem().trail.clone();
        let call = trail
            .iter()
            .position(|l| l.starts_with("log: calling webhook"))
            .unwrap();
        assert_eq!(
            trail[..call],
            ["commit".to_string()],
            "called after the commit"
        );
        assert!(trail[call + 1].starts_with("publish: "), "{trail:?}");
        assert!(trail[call].ends_with("(step 1)"), "{}", trail[call]);
    });
}
