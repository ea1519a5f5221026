//! Load generator.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

#[derive(Default)]
struct LoadShared {
    ok: AtomicUsize,
    /// Requests each client has finished (served or failed), by client index.
    finished: Vec<AtomicUsize>,
    failures: Mutex<Vec<(FailKind, usize)>>,
    first_errors: Mutex<Vec<String>>,
    ok_by_target: Mutex<Vec<(String, usize)>>,
}

impl LoadShared {
    fn fail(&self, target: &Target, e: &RequestError) {
        {
            let mut f = self.failures.lock().unwrap();
            match f.iter_mut().find(|(k, _)| *k == e.kind) {
                Some((_, n)) => *n += 1,
                None => f.push((e.kind, 1)),
            }
        }
        let mut fe = self.first_errors.lock().unwrap();
        if fe.len() < 10 {
            fe.push(format!("{target}: {e}"));
        }
    }
}

/// Result of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    /// Failures counted by kind.
    pub by_kind: Vec<(FailKind, usize)>,
    /// Text of the first few failures (`target: Kind: error`).
    pub first_errors: Vec<String>,
    /// Successes per target (of the clients that finished).
    pub ok_by_target: Vec<(String, usize)>,
    pub elapsed: Duration,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok {:?}, {} failed {:?} in {:.1?} ({:.0} req/s)",
            self.ok,
            self.ok_by_target,
            self.failed,
            self.by_kind,
            self.elapsed,
            self.ok as f64 / self.elapsed.as_secs_f64().max(0.001)
        )?;
        for e in &self.first_errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Concurrent clients, each looping non-keep-alive `GET /` requests (a new connection per request)
/// against the targets, thread i on target i % len. Bounded by [`Load::stop`] and by a maximum
/// duration; each request by [`REQUEST_TIMEOUT`].
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<LoadShared>,
    done_rx: mpsc::Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
    started: Instant,
    stopped: bool,
}

impl Load {
    pub const DEFAULT_MAX: Duration = Duration::from_secs(180);

    pub fn start(targets: &[Target], concurrency: usize) -> Load {
        Load::start_max(targets, concurrency, Load::DEFAULT_MAX)
    }

    pub fn start_max(targets: &[Target], concurrency: usize, max: Duration) -> Load {
        assert!(!targets.is_empty() && concurrency > 0);
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(LoadShared {
            finished: (0..concurrency).map(|_| AtomicUsize::new(0)).collect(),
            ..LoadShared::default()
        });
        let (done_tx, done_rx) = mpsc::channel();
        let started = Instant::now();
        let deadline = started + max;
        let threads = (0..concurrency)
            .map(|i| {
                let target = targets[i % targets.len()].clone();
                let stop = stop.clone();
                let shared = shared.clone();
                let done_tx = done_tx.clone();
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        let mut ok = 0;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            match http_get(target.clone()) {
                                Ok(_) => {
                                    ok += 1;
                                    shared.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => shared.fail(&target, &e),
                            }
                            shared.finished[i].fetch_add(1, Ordering::Relaxed);
                        }
                        {
                            let name = target.to_string();
                            let mut by = shared.ok_by_target.lock().unwrap();
                            match by.iter_mut().find(|(t, _)| *t == name) {
                                Some((_, n)) => *n += ok,
                                None => by.push((name, ok)),
                            }
                        }
                        let _ = done_tx.send(());
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        Load {
            stop,
            shared,
            done_rx,
            threads,
            started,
            stopped: false,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok_so_far(&self) -> usize {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Requests each client has finished so far (served or failed), by client.
    pub fn finished_by_client(&self) -> Vec<usize> {
        self.shared
            .finished
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every client has finished two more requests than it had at this call: the one
    /// it was in then (whatever its fate, now counted) and one started after the call. So every
    /// failure of a request in flight at the call has been counted when this returns. Panics after
    /// [`EVENT`].
    pub fn wait_every_client_moved_on(&self) {
        let from = self.finished_by_client();
        let moved = poll_until(EVENT, || {
            let now = self.finished_by_client();
            now.iter()
                .zip(&from)
                .all(|(n, f)| *n >= f + 2)
                .then_some(())
        });
        assert!(
            moved.is_some(),
            "within {EVENT:?} not every client finished two more requests: {from:?} -> {:?}",
            self.finished_by_client()
        );
    }

    /// Failures so far.
    pub fn failed_so_far(&self) -> usize {
        self.shared
            .failures
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// Stops the clients and waits (up to [`EVENT`], longer than one request may take) for them to
    /// finish their current request. A client that does not finish in time is counted as a
    /// `Stuck` failure and left behind.
    pub fn stop(mut self) -> LoadReport {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> LoadReport {
        self.stopped = true;
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + EVENT;
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let stuck = self.threads.len() - finished;
        if stuck == 0 {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        let mut by_kind = self.shared.failures.lock().unwrap().clone();
        if stuck > 0 {
            by_kind.push((FailKind::Stuck, stuck));
        }
        by_kind.sort();
        LoadReport {
            ok: self.shared.ok.load(Ordering::Relaxed),
            failed: by_kind.iter().map(|(_, n)| n).sum(),
            by_kind,
            first_errors: self.shared.first_errors.lock().unwrap().clone(),
            ok_by_target: self.shared.ok_by_target.lock().unwrap().clone(),
            elapsed,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Never block a panicking test on its clients: tell them to stop and leave.
        self.stop.store(true, Ordering::Relaxed);
    }
}
