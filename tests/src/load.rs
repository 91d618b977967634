//! Open-loop background load: each of N connections sends one request every `interval`,
//! whatever the latency (as long as it stays under the interval), so the arrival rate does
//! not drop when the upstream slows down. Every response is kept with the time it was sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Client;

/// One response of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the request was sent, from the start of the load.
    pub sent: Duration,
    /// The status.
    pub status: u16,
    /// The `x-upstream` header (which upstream served it), if any.
    pub upstream: Option<String>,
}

/// A running load; [`Load::stop`] ends it and returns every sample.
pub struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `conns` connections to `port`, each sending `GET path` with `Host: host` and
    /// header `x-user-id: load-<conn>-<n>` every `interval`.
    pub fn start(port: u16, host: &str, path: &str, conns: u32, interval: Duration) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..conns)
            .map(|c| {
                let (stop, samples) = (stop.clone(), samples.clone());
                let (host, path) = (host.to_string(), path.to_string());
                thread::spawn(move || {
                    let mut client = Client::new(port);
                    let mut next = start + interval.mul_f64(f64::from(c) / f64::from(conns));
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        let user = format!("load-{c}-{n}");
                        let sent = start.elapsed();
                        let sample = match client.request(
                            "GET",
                            &host,
                            &path,
                            &[("x-user-id", user.as_bytes())],
                            b"",
                        ) {
                            Ok(r) => Sample {
                                sent,
                                status: r.status,
                                upstream: r.header_str("x-upstream"),
                            },
                            Err(_) => Sample {
                                sent,
                                status: 0,
                                upstream: None,
                            },
                        };
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(sample);
                        next += interval;
                        n += 1;
                    }
                })
            })
            .collect();
        Load {
            start,
            stop,
            samples,
            threads,
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Samples so far, in completion order.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the load and returns every sample, sorted by send time.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut all = self.samples();
        all.sort_by_key(|s| s.sent);
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
