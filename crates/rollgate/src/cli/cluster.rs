//! `rollgate promote|abort|retry|status --kubernetes [--namespace NS]`: the CLI's commands
//! against the cluster (kubeconfig, like kubectl) instead of the sidecar, through
//! [`crate::kube::commands`]; `status --watch` is [`super::watch`].

use kube::Client;

use super::backend::{Answer, Backend, Request};
use super::CliError;
use crate::kube::commands::{command_expecting, get, list, CommandError};
use crate::kube::controller::Error;
use crate::rollout::view::Expect;
use crate::rollout::view::RolloutView;
use crate::rollout::Event;

/// The Rollouts of one namespace of the cluster as a [`Backend`].
pub struct Cluster {
    client: Client,
    ns: String,
}

impl Cluster {
    /// Connects through kubeconfig (or the pod's service account), as kubectl does;
    /// `namespace` absent: the kubeconfig's.
    pub async fn connect(namespace: Option<String>) -> Result<Cluster, CliError> {
        let client = Client::try_default()
            .await
            .map_err(|e| CliError::Cluster(format!("connecting to Kubernetes: {e}")))?;
        let ns = namespace.unwrap_or_else(|| client.default_namespace().to_string());
        Ok(Cluster { client, ns })
    }

    /// Namespace `ns` through `client` (the tests' mock API server).
    pub fn new(client: Client, ns: &str) -> Cluster {
        Cluster {
            client,
            ns: ns.to_string(),
        }
    }

    fn answer<T>(outcome: Result<T, CommandError>) -> Answer<T> {
        match outcome {
            Ok(v) => Ok(Ok(v)),
            Err(CommandError::Refused(why)) => Ok(Err(why)),
            Err(CommandError::Kube(Error::Kube(kube::Error::Api(s)))) if s.code == 404 => {
                Ok(Err(s.message))
            }
            Err(e) => Err(CliError::Cluster(e.to_string())),
        }
    }
}

impl Backend for Cluster {
    async fn get(&mut self, name: &str) -> Answer<RolloutView> {
        Cluster::answer(get(&self.client, &self.ns, name).await)
    }

    async fn list(&mut self) -> Answer<Vec<RolloutView>> {
        Cluster::answer(list(&self.client, &self.ns).await)
    }

    async fn command(&mut self, name: &str, event: Event, expect: &Expect) -> Answer<RolloutView> {
        Cluster::answer(command_expecting(&self.client, &self.ns, name, event, expect).await)
    }

    async fn follow(
        &mut self,
        name: Option<&str>,
        tty: bool,
        out: &mut dyn std::io::Write,
        err: &mut dyn std::io::Write,
    ) -> Result<u8, CliError> {
        super::watch::follow(&self.client, &self.ns, name, tty, out, err).await
    }
}

/// `cmd` on a given client (the tests' mock API server), as the CLI runs it
/// ([`super::backend::run`]); standard output is taken for no terminal.
pub async fn cli_with(
    client: &Client,
    ns: &str,
    cmd: &'static str,
    event: Option<Event>,
    name: Option<&String>,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    cli_with_step(client, ns, cmd, event, name, None, out, err).await
}

/// [`cli_with`] for `promote --from-step N`.
#[allow(clippy::too_many_arguments)]
pub async fn cli_with_step(
    client: &Client,
    ns: &str,
    cmd: &'static str,
    event: Option<Event>,
    name: Option<&String>,
    from_step: Option<u32>,
    out: &mut dyn std::io::Write,
    err: &mut dyn std::io::Write,
) -> Result<u8, CliError> {
    let req = Request {
        cmd,
        event,
        name: name.cloned(),
        from_step,
        watch: false,
    };
    super::backend::run(&mut Cluster::new(client.clone(), ns), &req, false, out, err).await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::args::{Cli, Command};

    fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(["rollgate"].iter().chain(argv)).map(|c| c.command)
    }

    #[test]
    fn status_takes_watch_a_namespace_and_an_optional_name() {
        let Ok(Command::Status(st)) =
            parse(&["status", "--kubernetes", "-n", "shop", "flask", "--watch"])
        else {
            panic!("not status")
        };
        assert_eq!(
            (
                st.conn.kubernetes,
                st.conn.namespace.as_deref(),
                st.name.as_deref(),
                st.watch
            ),
            (true, Some("shop"), Some("flask"), true)
        );
        let Ok(Command::Status(st)) = parse(&["status", "--kubernetes", "-w"]) else {
            panic!("not status")
        };
        assert_eq!((st.name, st.watch), (None, true));
    }

    #[test]
    fn commands_refuse_watch_and_need_one_name() {
        for bad in [
            &["promote", "--kubernetes", "flask", "--watch"][..],
            &["abort", "--kubernetes"],
            &["status", "--kubernetes", "a", "b"],
            &["promote", "--kubernetes", "flask", "--from-step", "0"],
            &["promote", "--kubernetes", "flask", "--from-step"],
            &["abort", "--kubernetes", "flask", "--from-step", "2"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse(&["retry", "--kubernetes", "flask"]),
            Ok(Command::Retry(_))
        ));
        let Ok(Command::Promote(p)) =
            parse(&["promote", "--kubernetes", "flask", "--from-step", "4"])
        else {
            panic!("not promote")
        };
        assert_eq!(p.from_step, Some(4));
    }
}
