//! [`Redis`]: a real Redis server (Debian's `redis-server`, `make redis`) on a loopback port with
//! its own temp dir and no persistence, started, stopped and restarted by one test, and
//! [`Redis::command`] to read its counters.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A running server (or one stopped by [`Redis::stop`]); killed and its dir removed on drop.
pub struct Redis {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl Redis {
    /// Starts a server on a free loopback port and waits until it answers PING.
    pub fn start() -> Redis {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} missing: run `make redis`"
        );
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("rollgate-redis-{}-{port}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Redis {
            child: None,
            dir,
            port,
        };
        r.restart();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (its counters are gone with it: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (after [`Redis::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(REDIS_SERVER)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(&["PING"]).as_deref() != Ok("+PONG") {
            assert!(Instant::now() < deadline, "redis-server not ready in 10 s");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command; the reply as one line of text (`+OK`, `:12`, a bulk string's
    /// contents, or an array's items joined by newlines).
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    fn try_command(&self, args: &[&str]) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        read_reply(&mut r)
    }
}

fn read_line(r: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    Ok(line.trim_end().to_string())
}

fn read_reply(r: &mut impl BufRead) -> Result<String, String> {
    let line = read_line(r)?;
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: i64 = line[1..].parse().map_err(|_| line.clone())?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            buf.truncate(n as usize);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Some(b'*') => {
            let n: i64 = line[1..].parse().map_err(|_| line.clone())?;
            let items = (0..n.max(0))
                .map(|_| read_reply(r))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(items.join("\n"))
        }
        Some(b'-') => Err(line),
        Some(_) => Ok(line),
        None => Err("connection closed".to_string()),
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
