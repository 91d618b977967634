//! A real Envoy fetching its policy from the sidecar over TLS: the filter's long-poll goes
//! through an Envoy cluster with an `UpstreamTlsContext` trusting the sidecar's CA (the
//! deployment README "Security" describes), and a CA that did not sign the sidecar gets
//! nothing.

mod rollout_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rollgate_e2e::{render_config, EnvoyOptions};
use rollout_support::{wait_until, TempDir, SEED};

const SOURCE: &str =
    r#"{"source":{"cluster":"rollgate","path":"/v1/policies/flask","poll":"200ms","wait":"20s"}}"#;
const VERSION: &str = "wasmcustom.rollgate.flask.policy.version";
const FETCH_ERRORS: &str = "wasmcustom.rollgate.flask.policy.fetch_errors";

fn tls_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/rollout_support/tls")
        .join(name)
}

fn required(var: &str) -> PathBuf {
    let p = PathBuf::from(
        std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run through `make test`")),
    );
    assert!(
        p.exists(),
        "{var}={} does not exist: run `make envoy wasm`",
        p.display()
    );
    p
}

struct RunningEnvoy {
    child: Child,
    admin: PathBuf,
}

impl RunningEnvoy {
    /// Envoy (`$ROLLGATE_ENVOY`) with the harness's bootstrap whose `rollgate` cluster
    /// (the sidecar at `port`) speaks TLS, trusting `ca`, checking the name `127.0.0.1`.
    fn start(dir: &TempDir, tag: &str, port: u16, ca: &Path) -> RunningEnvoy {
        let wasm = required("ROLLGATE_WASM");
        let envoy = required("ROLLGATE_ENVOY");
        let yaml = render_config(&EnvoyOptions::new(SOURCE).cluster("rollgate", port), &wasm);
        let endpoint = format!("socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n");
        assert!(yaml.contains(&endpoint), "{yaml}");
        // Envoy's UpstreamTlsContext (api/envoy/extensions/transport_sockets/tls/v3/tls.proto):
        // the CA in validation_context, the SAN matched as an IP address.
        let tls = format!(
            "{endpoint}    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          validation_context:
            trusted_ca: {{ filename: {} }}
            match_typed_subject_alt_names:
            - san_type: IP_ADDRESS
              matcher: {{ exact: \"127.0.0.1\" }}
",
            rollgate_e2e::yaml_quote(&ca.to_string_lossy())
        );
        let config = dir.path(&format!("envoy-{tag}.yaml"));
        std::fs::write(&config, yaml.replace(&endpoint, &tls)).unwrap();
        let admin = dir.path(&format!("admin-{tag}"));
        let base_id = (std::process::id() % 100_000) * 1000 + 900 + u32::from(tag == "other");
        let child = Command::new(&envoy)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "info"])
            .arg("--base-id")
            .arg(base_id.to_string())
            .arg("--admin-address-path")
            .arg(&admin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path(&format!("envoy-{tag}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", envoy.display()));
        let e = RunningEnvoy { child, admin };
        wait_until("Envoy's admin address", Duration::from_secs(30), || {
            std::fs::read_to_string(&e.admin).is_ok_and(|a| a.contains(':'))
        });
        e
    }

    /// A stat's value, if Envoy has it.
    fn stat(&self, name: &str) -> Option<u64> {
        let addr = std::fs::read_to_string(&self.admin).ok()?;
        let mut s = TcpStream::connect(addr.trim()).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(
            format!(
                "GET /stats?filter={name} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn envoy_fetches_the_policy_over_tls_and_only_from_the_trusted_sidecar() {
    let dir = TempDir::new("tls-envoy");
    std::fs::create_dir_all(dir.path("rollouts")).unwrap();
    std::fs::write(dir.path("rollouts").join("flask.yaml"), SEED).unwrap();
    let mut config = rollgate::serve::Config::new(dir.path("rollouts"));
    config.listen = "127.0.0.1:0".into();
    config.log = Some(Arc::new(|_: &str| {}));
    config.tls = Some((tls_file("cert.pem"), tls_file("key.pem")));
    let server = rollgate::serve::start(config).unwrap();
    let port = server.addr().port();

    let trusted = RunningEnvoy::start(&dir, "trusted", port, &tls_file("ca.pem"));
    let start = std::time::Instant::now();
    while trusted.stat(VERSION).is_none_or(|v| v < 1) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Envoy did not apply policy v1 over TLS within 30 s; its log:\n{}",
            std::fs::read_to_string(dir.path("envoy-trusted.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Another CA: the handshake fails, no policy is ever applied, the fetch counts errors.
    let other = RunningEnvoy::start(&dir, "other", port, &tls_file("other-ca.pem"));
    wait_until(
        "fetch errors against an untrusted sidecar",
        Duration::from_secs(30),
        || other.stat(FETCH_ERRORS).is_some_and(|v| v >= 1),
    );
    assert_eq!(other.stat(VERSION).unwrap_or(0), 0);
}
