//! A real headless Chromium (Debian's, from `make chromium`; or `$ROLLGATE_CHROMIUM`) driven
//! over the DevTools protocol: one page, its console errors and uncaught exceptions collected,
//! scripts evaluated, screenshots taken. The process and its profile directory go on drop,
//! whatever path the test takes.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The browser binary: `$ROLLGATE_CHROMIUM`, else Debian's `/usr/bin/chromium`. Missing, the
/// test fails (never skips) and says how to install it.
pub fn chromium_path() -> PathBuf {
    let path = std::env::var_os("ROLLGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.is_file(),
        "\n\n*** Chromium not found at {}: run `make chromium` (Debian's chromium), or set \
         ROLLGATE_CHROMIUM ***\n",
        path.display()
    );
    path
}

/// A console error or an uncaught exception the page produced.
#[derive(Debug, Clone)]
pub struct PageError(pub String);

/// A running Chromium with one page under control.
pub struct Browser {
    child: Child,
    profile: PathBuf,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Errors seen so far (console `error`, uncaught exceptions, failed loads).
    pub errors: Vec<PageError>,
}

impl Browser {
    /// Starts Chromium headless on a free DevTools port with a fresh profile and attaches to
    /// its page.
    pub fn start() -> Browser {
        // A Chromium that exits or stays silent at start (seen once in a CI run: no
        // DevToolsActivePort in 30 s, its stderr gone) is started once more with a fresh
        // profile; what it wrote is printed either way, and a second failure fails the test.
        let (child, profile, port) = match launch() {
            Ok(started) => started,
            Err(why) => {
                eprintln!("chromium did not start, starting it again: {why}");
                launch().unwrap_or_else(|why| panic!("chromium did not start twice: {why}"))
            }
        };
        let starting = Starting(Some(child), profile.clone());
        let ws_url = page_socket(port);
        let (ws, _) =
            tungstenite::connect(ws_url.as_str()).expect("connect to the page's DevTools");
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut b = Browser {
            child: starting.disarm(),
            profile,
            ws,
            next_id: 1,
            errors: Vec::new(),
        };
        for m in ["Runtime.enable", "Log.enable", "Page.enable"] {
            b.call(m, json!({}));
        }
        b
    }

    /// Sends a command and returns its result, keeping the events that arrive meanwhile.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to DevTools");
        loop {
            let m = self.ws.read().expect("read from DevTools");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
            self.event(&v);
        }
    }

    fn event(&mut self, v: &Value) {
        let p = &v["params"];
        let error = match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => Some(p["exceptionDetails"].to_string()),
            Some("Runtime.consoleAPICalled") if p["type"] == "error" => Some(p["args"].to_string()),
            Some("Log.entryAdded") if p["entry"]["level"] == "error" => {
                Some(format!("{} {}", p["entry"]["text"], p["entry"]["url"]))
            }
            _ => None,
        };
        if let Some(e) = error {
            self.errors.push(PageError(e));
        }
    }

    /// Opens `url` and waits for its load event.
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        self.wait_for("the page to load", Duration::from_secs(10), |b| {
            b.eval("document.readyState") == "complete"
        });
    }

    /// The value of `expression` (a promise is awaited); panics on a script error.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `f` every 100 ms (events keep flowing) until it holds; how long it took.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&mut Browser) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if f(self) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A viewport of `width` × `height` CSS pixels, as a phone (touch, mobile layout).
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        );
    }

    /// Saves a PNG of the whole page at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Asked to close, Chromium ends its renderers and reaps them itself; killed at once,
        // they would outlive it as zombies of an init that may not reap. Killed after 5 s.
        let close = json!({"id": 0, "method": "Browser.close"}).to_string();
        let _ = self.ws.send(Message::text(close));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Kills a Chromium that never became a [`Browser`].
struct Starting(Option<Child>, PathBuf);

impl Starting {
    fn disarm(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

/// Starts one Chromium headless with a fresh profile and reads its DevTools port; on failure
/// it is killed and the answer says why, with the end of what it wrote on stderr.
fn launch() -> Result<(Child, PathBuf, u16), String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let profile = std::env::temp_dir().join(format!(
        "rollgate-chromium-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    // Beside the profile, which is removed when the browser ends.
    let log_path = profile.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    // Root in a container: no sandbox. Port 0: Chromium picks one and writes it to
    // DevToolsActivePort in the profile, so parallel runs never collide.
    let child = Command::new(chromium_path())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start chromium");
    // From here on, `Starting` kills it if anything below fails or panics.
    let mut starting = Starting(Some(child), profile.clone());
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(45);
    let failed = |why: String| {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(format!("{why}; its stderr ends:\n{}", tail.join("\n")))
    };
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Some(Ok(port)) = text.lines().next().map(str::parse) {
                let _ = std::fs::remove_file(&log_path);
                return Ok((starting.disarm(), profile, port));
            }
        }
        if let Some(c) = starting.0.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                drop(starting);
                return failed(format!("chromium exited at start ({status})"));
            }
        }
        if Instant::now() >= deadline {
            drop(starting);
            return failed(format!(
                "chromium wrote no DevTools port in 45 s ({})",
                file.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The WebSocket URL of the browser's first page.
fn page_socket(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/json/list");
    let r = rollgate::rollout::client::request("GET", &url, None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let targets: Value = serde_json::from_slice(&r.body).unwrap();
    targets
        .as_array()
        .and_then(|t| t.iter().find(|t| t["type"] == "page"))
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .unwrap_or_else(|| panic!("no page among {targets}"))
        .to_string()
}
