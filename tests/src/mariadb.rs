//! [`MariaDb`]: a real MariaDB server (Debian's `mariadb-server`, `make mariadb`) on its own temp
//! datadir and a loopback port, started and stopped by one test, and the `mariadb` client.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const MARIADBD: &str = "/usr/sbin/mariadbd";

/// A running server; killed and its datadir removed on drop.
pub struct MariaDb {
    child: Child,
    dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl MariaDb {
    /// Initialises a datadir and starts the server on a free loopback port (without grant
    /// tables: any user connects without a password, which keeps the test about connections).
    pub fn start() -> MariaDb {
        assert!(
            std::path::Path::new(MARIADBD).exists(),
            "{MARIADBD} missing: run `make mariadb`"
        );
        let dir = std::env::temp_dir().join(format!(
            "rollgate-mariadb-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("datadir");
        let data = dir.join("data");
        // Its own temp dir: two bootstraps sharing /tmp collided on the names of their
        // temporary tables ("Could not remove temporary table '/tmp/#sql-temptable-…'").
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).expect("tmpdir");
        let out = Command::new("mariadb-install-db")
            .args(["--no-defaults", "--user=root", "--skip-test-db"])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let child = Command::new(MARIADBD)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-grant-tables",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--max-connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = MariaDb { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while query(port, "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd not ready in 30 s: {}",
                fs::read_to_string(db.dir.join("err.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(100));
        }
        db
    }

    /// The server's own port (not through Envoy).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A global status variable, read on a connection of its own.
    pub fn status(&self, name: &str) -> u64 {
        let out = query(self.port, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .unwrap_or_else(|e| panic!("SHOW STATUS: {e}"));
        out.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The `mariadb` client on `127.0.0.1:port` running `sql` (one connection).
pub fn mariadb_client(port: u16, sql: &str) -> Command {
    let mut c = Command::new("mariadb");
    c.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "-N", "-B"])
        .arg(format!("--port={port}"))
        .args(["--connect-timeout=10", "-e", sql]);
    c
}

/// Runs `sql` with [`mariadb_client`]: its output, or its error text.
pub fn query(port: u16, sql: &str) -> Result<String, String> {
    let out: Output = mariadb_client(port, sql)
        .output()
        .map_err(|e| format!("run mariadb: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
