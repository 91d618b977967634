//! [`Envoy`]: a real Envoy process running the rollgate filter, owned by one test.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Client, Response};
use crate::config::{self, EnvoyOptions};
use crate::{envoy_bin, wasm_path};

/// How long Envoy may take to become ready (or to refuse its config).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Distinguishes the Envoys one test process starts (temp dirs, base ids).
static STARTED: AtomicU32 = AtomicU32::new(0);

/// Why [`Envoy::start`] failed, with Envoy's log. `Debug` prints the text as is, so
/// `.unwrap()` on a start result shows a readable log.
pub struct StartError(pub String);

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running Envoy, listening on `127.0.0.1:`[`port`](Envoy::port), with its admin endpoint on
/// [`admin_port`](Envoy::admin_port). Killed on drop; its temp dir is removed unless the
/// thread is panicking, in which case the log's tail is printed and the dir kept.
pub struct Envoy {
    child: Child,
    files: Files,
    port: u16,
    admin_port: u16,
}

/// The per-instance files under a fresh temp dir.
struct Files {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    stderr: PathBuf,
    admin_address: PathBuf,
}

impl Files {
    fn log_text(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        if stderr.trim().is_empty() {
            log
        } else {
            format!("{log}\n--- envoy stderr ---\n{stderr}")
        }
    }
}

/// How a start attempt ended.
enum Outcome {
    Ready { port: u16, admin_port: u16 },
    Exited(ExitStatus),
    TimedOut,
}

impl Envoy {
    /// Starts Envoy with `opts` and waits until admin `/ready` answers 200. If Envoy exits
    /// first (e.g. the filter rejected the policy) or does not get ready within 30 s, returns
    /// an error carrying its log.
    pub fn start(opts: &EnvoyOptions) -> Result<Envoy, StartError> {
        Envoy::start_yaml(&config::render(opts, &wasm_path()), opts.concurrency)
    }

    /// Like [`start`](Envoy::start), with a bootstrap of the test's own (a shipped config
    /// adapted to loopback ports and temp paths), on `concurrency` workers. The harness learns
    /// the listener's port from the admin endpoint, so the config should bind port 0 and
    /// have one listener.
    pub fn start_yaml(yaml: &str, concurrency: u32) -> Result<Envoy, StartError> {
        let (mut child, files) = spawn(yaml, concurrency);
        match wait_ready(&mut child, &files) {
            Outcome::Ready { port, admin_port } => Ok(Envoy {
                child,
                files,
                port,
                admin_port,
            }),
            Outcome::Exited(status) => {
                let log = files.log_text();
                let _ = fs::remove_dir_all(&files.dir);
                Err(StartError(format!(
                    "envoy exited ({status}) before becoming ready\n--- envoy log ---\n{log}"
                )))
            }
            Outcome::TimedOut => {
                let _ = child.kill();
                let _ = child.wait();
                let log = files.log_text();
                Err(StartError(format!(
                    "envoy not ready after {START_TIMEOUT:?} (files kept in {})\n\
                     --- envoy log ---\n{log}",
                    files.dir.display()
                )))
            }
        }
    }

    /// Starts Envoy with `opts`, expecting it to refuse the configuration: returns its log
    /// once it exits with a failure status. Panics if it becomes ready, exits successfully,
    /// or neither exits nor gets ready within 30 s.
    pub fn start_expect_failure(opts: &EnvoyOptions) -> String {
        let (mut child, files) = spawn(&config::render(opts, &wasm_path()), opts.concurrency);
        let outcome = wait_ready(&mut child, &files);
        let log = files.log_text();
        match outcome {
            Outcome::Exited(status) if !status.success() => {
                let _ = fs::remove_dir_all(&files.dir);
                log
            }
            Outcome::Exited(status) => {
                panic!("envoy exited with {status} instead of refusing its config\n{log}")
            }
            Outcome::Ready { .. } => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("envoy accepted a config it should have refused\n--- envoy log ---\n{log}")
            }
            Outcome::TimedOut => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("envoy neither refused nor accepted its config in {START_TIMEOUT:?}\n{log}")
            }
        }
    }

    /// The HTTP listener's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The admin endpoint's port on 127.0.0.1.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// A new keep-alive client for the listener.
    pub fn client(&self) -> Client {
        Client::new(self.port)
    }

    /// The bootstrap YAML this Envoy runs.
    pub fn config_path(&self) -> &Path {
        &self.files.config
    }

    /// Envoy's log so far (`--log-path`, flushed every 50 ms), followed by anything it wrote
    /// to stderr.
    pub fn log(&self) -> String {
        self.files.log_text()
    }

    /// Polls [`log`](Envoy::log) until it contains `needle` or `timeout` passes; returns
    /// whether it was found.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET <path>` on the admin endpoint. Panics on I/O errors.
    pub fn admin(&self, path: &str) -> Response {
        Client::new(self.admin_port).get("127.0.0.1", path, &[])
    }

    /// The Envoy process's id (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The admin `/stats` text (`name: value` lines).
    pub fn stats(&self) -> String {
        self.admin("/stats").body_str()
    }

    /// The value of counter or gauge `name` from `/stats`, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let stats = self.admin(&format!("/stats?filter=^{name}$")).body_str();
        stats.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            if n == name {
                v.trim().parse().ok()
            } else {
                None
            }
        })
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.files.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- envoy log tail (full files kept in {}) ---",
                self.files.dir.display()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        } else {
            let _ = fs::remove_dir_all(&self.files.dir);
        }
    }
}

/// Writes the config into a fresh temp dir and launches Envoy on it.
fn spawn(yaml: &str, concurrency: u32) -> (Child, Files) {
    let envoy = envoy_bin();
    let n = STARTED.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("rollgate-e2e-{pid}-{n}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let files = Files {
        config: dir.join("envoy.yaml"),
        log: dir.join("envoy.log"),
        stderr: dir.join("stderr.log"),
        admin_address: dir.join("admin-address"),
        dir,
    };
    fs::write(&files.config, yaml)
        .unwrap_or_else(|e| panic!("write {}: {e}", files.config.display()));
    let stderr = File::create(&files.stderr).expect("create stderr file");
    let stdout = stderr.try_clone().expect("clone stderr file");
    // Hot restart is disabled so concurrent Envoys never share memory or domain sockets; the
    // base id is unique per process and instance all the same.
    let base_id = (pid % 100_000) * 1000 + n % 1000;
    let child = Command::new(&envoy)
        .arg("-c")
        .arg(&files.config)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--base-id")
        .arg(base_id.to_string())
        .arg("--disable-hot-restart")
        .arg("--admin-address-path")
        .arg(&files.admin_address)
        .arg("--log-path")
        .arg(&files.log)
        .arg("--file-flush-interval-msec")
        .arg("50")
        .arg("-l")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", envoy.display()));
    (child, files)
}

/// Polls until the admin endpoint reports ready, the process exits, or the timeout passes.
fn wait_ready(child: &mut Child, files: &Files) -> Outcome {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Outcome::Exited(status);
        }
        if let Some(admin_port) = read_admin_port(&files.admin_address) {
            if let Some(port) = ready_listener_port(admin_port) {
                return Outcome::Ready { port, admin_port };
            }
        }
        if Instant::now() >= deadline {
            return Outcome::TimedOut;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The admin port from the `--admin-address-path` file (`127.0.0.1:PORT`), once written.
fn read_admin_port(path: &Path) -> Option<u16> {
    let text = fs::read_to_string(path).ok()?;
    text.trim().rsplit_once(':')?.1.parse().ok()
}

/// If `/ready` answers 200, the listener's port from `/listeners?format=json`.
fn ready_listener_port(admin_port: u16) -> Option<u16> {
    let mut admin = Client::new(admin_port);
    let ready = admin.request("GET", "127.0.0.1", "/ready", &[], b"").ok()?;
    if ready.status != 200 {
        return None;
    }
    let listeners = admin
        .request("GET", "127.0.0.1", "/listeners?format=json", &[], b"")
        .ok()?;
    parse_port_value(&listeners.body_str())
}

/// The first `"port_value": N` in admin JSON (the harness config has one listener).
fn parse_port_value(json: &str) -> Option<u16> {
    let at = json.find("\"port_value\"")?;
    let rest = json[at + "\"port_value\"".len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listener_port() {
        let json = r#"{"listener_statuses":[{"name":"rollgate","local_address":
            {"socket_address":{"address":"127.0.0.1","port_value": 45629}}}]}"#;
        assert_eq!(parse_port_value(json), Some(45629));
        assert_eq!(parse_port_value(r#"{"port_value":0}"#), None);
    }
}
