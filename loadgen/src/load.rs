//! N client threads looping `GET /` against targets (client i on target i % len), a new connection
//! per request or keep-alive. Bounded by a duration, a request count and a per-request timeout.
//! Live counters for waiting on progress; at the end every failure with its time, kind and target,
//! successes per 100 ms (for plots), per target, and the first time each served pid (`X-Pid`) answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::request::{get_once, FailKind, KeepAlive, RequestError};
use crate::target::Target;

pub const BUCKET_MS: u64 = 100;

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub targets: Vec<Target>,
    pub clients: usize,
    pub keepalive: bool,
    pub duration: Duration,
    pub max_requests: u64,
    pub timeout: Duration,
}

/// A failure, when it happened (ms since the load started) and on which target (index in
/// [`LoadSpec::targets`]).
#[derive(Clone, Debug)]
pub struct FailEvent {
    pub ms: u64,
    pub target: usize,
    pub failure: RequestError,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    /// Successful responses, of every client (also those still stuck in a request).
    pub ok: u64,
    /// In time order.
    pub failures: Vec<FailEvent>,
    /// Clients still in a request when [`Load::finish`] stopped waiting (left behind).
    pub stuck: usize,
    /// Successful responses per 100 ms, of the clients that finished.
    pub buckets: Vec<u64>,
    /// Successful responses per target (index in [`LoadSpec::targets`]), of the clients that finished.
    pub ok_by_target: Vec<u64>,
    pub elapsed: Duration,
    /// Each haproxy pid seen in X-Pid, with the time (ms) of its first response.
    pub pid_first_ms: BTreeMap<u32, u64>,
}

impl LoadResult {
    pub fn count(&self, kind: FailKind) -> usize {
        self.failures
            .iter()
            .filter(|f| f.failure.kind == kind)
            .count()
    }
    pub fn retryable(&self) -> usize {
        self.failures.iter().filter(|f| f.failure.retryable).count()
    }
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
    /// Failures per 100 ms bucket.
    pub fn fail_buckets(&self) -> Vec<u64> {
        let mut b = vec![0; self.buckets.len()];
        for f in &self.failures {
            let i = usize::try_from(f.ms / BUCKET_MS).unwrap_or(usize::MAX);
            if let Some(slot) = b.get_mut(i) {
                *slot += 1;
            } else if let Some(last) = b.last_mut() {
                *last += 1;
            }
        }
        b
    }
    /// Up to `n` distinct failure texts with their kinds, for the report.
    pub fn sample_errors(&self, n: usize) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for f in &self.failures {
            let t = format!(
                "{} at {} ms: {}",
                f.failure.kind.name(),
                f.ms,
                f.failure.text
            );
            if seen.len() < n && !seen.iter().any(|s| s.ends_with(&f.failure.text)) {
                seen.push(t);
            }
        }
        seen
    }
}

/// What the clients share while running: read live by the owner of the [`Load`].
#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    /// Requests each client has finished (served or failed), by client index.
    finished: Vec<AtomicUsize>,
    /// Kept here rather than per thread so that a client left stuck still has its failures counted.
    failures: Mutex<Vec<FailEvent>>,
}

impl Shared {
    fn failures(&self) -> std::sync::MutexGuard<'_, Vec<FailEvent>> {
        // A client that panicked holding the lock left a valid Vec behind.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What one client saw, sent when it ends.
#[derive(Default)]
struct ClientOut {
    target: usize,
    ok: u64,
    buckets: Vec<u64>,
    pid_first_ms: BTreeMap<u32, u64>,
}

/// A running load. [`Load::finish`] stops it and collects the result; dropping it only tells the
/// clients to stop (never blocks a panicking test on them).
pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    done: mpsc::Receiver<ClientOut>,
    clients: usize,
    targets: usize,
}

impl Load {
    pub fn start(spec: &LoadSpec) -> Result<Load, String> {
        if spec.targets.is_empty() || spec.clients == 0 {
            return Err(format!(
                "a load needs a target and a client ({} targets, {} clients)",
                spec.targets.len(),
                spec.clients
            ));
        }
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            finished: (0..spec.clients).map(|_| AtomicUsize::new(0)).collect(),
            ..Shared::default()
        });
        let (done_tx, done) = mpsc::channel();
        let deadline = started + spec.duration;
        for i in 0..spec.clients {
            let client = Client {
                index: i,
                target: i % spec.targets.len(),
                spec: spec.clone(),
                started,
                deadline,
                stop: stop.clone(),
                issued: issued.clone(),
                shared: shared.clone(),
            };
            let done_tx = done_tx.clone();
            thread::Builder::new()
                .name(format!("client-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    let _ = done_tx.send(client.run());
                })
                .map_err(|e| {
                    stop.store(true, Ordering::Relaxed);
                    format!("spawning load client thread {i}: {e}")
                })?;
        }
        Ok(Load {
            started,
            stop,
            shared,
            done,
            clients: spec.clients,
            targets: spec.targets.len(),
        })
    }

    pub fn ms_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Requests that succeeded so far.
    pub fn ok_so_far(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Requests that failed so far.
    pub fn failed_so_far(&self) -> usize {
        self.shared.failures().len()
    }

    /// Requests each client has finished so far (served or failed), by client.
    pub fn finished_by_client(&self) -> Vec<usize> {
        self.shared
            .finished
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops the clients and waits up to `wait` for each to finish its request (bounded by the
    /// request timeout per step); a client still in one then is counted in [`LoadResult::stuck`]
    /// and left behind.
    pub fn finish(self, wait: Duration) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut r = LoadResult {
            elapsed,
            ok_by_target: vec![0; self.targets],
            ..LoadResult::default()
        };
        let deadline = Instant::now() + wait;
        let mut finished = 0;
        while finished < self.clients {
            // Disconnected: every client has ended (a panicked one sends nothing).
            let Ok(out) = self
                .done
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            else {
                break;
            };
            finished += 1;
            r.ok_by_target[out.target] += out.ok;
            if r.buckets.len() < out.buckets.len() {
                r.buckets.resize(out.buckets.len(), 0);
            }
            for (i, n) in out.buckets.iter().enumerate() {
                r.buckets[i] += n;
            }
            for (pid, ms) in out.pid_first_ms {
                let e = r.pid_first_ms.entry(pid).or_insert(ms);
                *e = (*e).min(ms);
            }
        }
        r.stuck = self.clients - finished;
        r.ok = self.ok_so_far();
        r.failures = std::mem::take(&mut *self.shared.failures());
        r.failures.sort_by_key(|f| f.ms);
        r
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One client thread.
struct Client {
    index: usize,
    target: usize,
    spec: LoadSpec,
    started: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    issued: Arc<AtomicU64>,
    shared: Arc<Shared>,
}

impl Client {
    fn run(&self) -> ClientOut {
        let mut out = ClientOut {
            target: self.target,
            ..ClientOut::default()
        };
        let target = &self.spec.targets[self.target];
        let mut conn = None;
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline {
            if self.issued.fetch_add(1, Ordering::Relaxed) >= self.spec.max_requests {
                break;
            }
            let r = if self.spec.keepalive {
                KeepAlive::get(&mut conn, target, self.spec.timeout)
            } else {
                get_once(target, self.spec.timeout)
            };
            let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match r {
                Ok(resp) => {
                    out.ok += 1;
                    self.shared.ok.fetch_add(1, Ordering::Relaxed);
                    let b = usize::try_from(now / BUCKET_MS).unwrap_or(0);
                    if out.buckets.len() <= b {
                        out.buckets.resize(b + 1, 0);
                    }
                    out.buckets[b] += 1;
                    if let Some(pid) = resp.pid {
                        out.pid_first_ms.entry(pid).or_insert(now);
                    }
                    self.shared.finished[self.index].fetch_add(1, Ordering::Relaxed);
                }
                Err(failure) => {
                    self.shared.failures().push(FailEvent {
                        ms: now,
                        target: self.target,
                        failure,
                    });
                    self.shared.finished[self.index].fetch_add(1, Ordering::Relaxed);
                    // A refused connect returns at once: do not spin on it.
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
        out
    }
}
