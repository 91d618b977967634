//! What can go wrong in the host.

use std::path::PathBuf;

use super::{LogEntry, LogLevel};

/// A trap in the guest: the VM is failed from then on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the plugin trapped in {callback} (worker {worker}, context {context_id}): {message}")]
pub struct TrapError {
    /// The worker whose VM trapped.
    pub worker: usize,
    /// The context called.
    pub context_id: u32,
    /// The export that trapped (`proxy_on_request_headers`, …).
    pub callback: &'static str,
    /// The guest's panic message when it printed one (SDK panic hook or stderr), else the
    /// trap.
    pub message: String,
    /// The trap as wasmtime reports it.
    pub trap: String,
}

fn summary(logs: &[LogEntry]) -> String {
    let lines: Vec<&str> = logs
        .iter()
        .filter(|l| l.level >= LogLevel::Warn)
        .map(|l| l.message.as_str())
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!(": {}", lines.join("; "))
    }
}

/// Everything that can go wrong in the host.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A file could not be read.
    #[error("reading {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The bytes are not a valid module.
    #[error("compiling the module: {0}")]
    Compile(String),
    /// Instantiation failed (a missing import, no ABI marker, no allocator…).
    #[error("instantiating the module on worker {worker}: {message}")]
    Instantiate {
        /// The worker.
        worker: usize,
        /// Why.
        message: String,
    },
    /// `proxy_on_vm_start` returned false.
    #[error("proxy_on_vm_start returned false on worker {worker}{}", summary(logs))]
    VmStartFailed {
        /// The worker.
        worker: usize,
        /// That VM's log so far.
        logs: Vec<LogEntry>,
    },
    /// `proxy_on_configure` returned false: Envoy rejects the configuration.
    #[error(
        "proxy_on_configure returned false on worker {worker}{}",
        summary(logs)
    )]
    ConfigureFailed {
        /// The worker.
        worker: usize,
        /// That VM's log so far (the plugin's reason is usually an Error line).
        logs: Vec<LogEntry>,
    },
    /// The guest trapped.
    #[error(transparent)]
    Trap(#[from] TrapError),
    /// No such worker.
    #[error("no worker {worker}: the plugin has {workers}")]
    NoSuchWorker {
        /// Asked for.
        worker: usize,
        /// Available.
        workers: usize,
    },
    /// No pending HTTP call with that token on that worker.
    #[error("no pending http call {token} on worker {worker}")]
    NoSuchCall {
        /// The worker.
        worker: usize,
        /// The token.
        token: u32,
    },
    /// No open connection with that context id on that worker.
    #[error("no open connection {context_id} on worker {worker}")]
    NoSuchConnection {
        /// The worker.
        worker: usize,
        /// The connection's context id.
        context_id: u32,
    },
    /// wasmtime refused the host functions (a bug in this host).
    #[error("setting up host functions: {0}")]
    Linker(String),
}
