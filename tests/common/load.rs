//! The tests' view of the load generator (`hapmaster-loadgen`, shared with the benchmark): new
//! connections with [`REQUEST_TIMEOUT`], waits bounded by [`EVENT`], a report to assert on.

use std::fmt;
use std::time::Duration;

use hapmaster_loadgen::LoadSpec;

use super::*;

/// Result of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    /// Failures counted by kind (with `Stuck` for clients that did not end when stopped).
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
/// against the targets, client i on target i % len. Bounded by [`Load::stop`] and by a maximum
/// duration; each request by [`REQUEST_TIMEOUT`]. Dropping it tells the clients to stop.
pub struct Load {
    inner: hapmaster_loadgen::Load,
    targets: Vec<Target>,
}

impl Load {
    pub const DEFAULT_MAX: Duration = Duration::from_secs(180);

    pub fn start(targets: &[Target], concurrency: usize) -> Load {
        Load::start_max(targets, concurrency, Load::DEFAULT_MAX)
    }

    pub fn start_max(targets: &[Target], concurrency: usize, max: Duration) -> Load {
        let spec = LoadSpec {
            targets: targets.to_vec(),
            clients: concurrency,
            keepalive: false,
            duration: max,
            max_requests: u64::MAX,
            timeout: REQUEST_TIMEOUT,
        };
        Load {
            inner: hapmaster_loadgen::Load::start(&spec).expect("starting the load"),
            targets: spec.targets,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok_so_far(&self) -> usize {
        usize::try_from(self.inner.ok_so_far()).unwrap_or(usize::MAX)
    }

    /// Failures so far.
    pub fn failed_so_far(&self) -> usize {
        self.inner.failed_so_far()
    }

    /// Requests each client has finished so far (served or failed), by client.
    pub fn finished_by_client(&self) -> Vec<usize> {
        self.inner.finished_by_client()
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

    /// Stops the clients and waits (up to [`EVENT`], longer than one request may take) for them to
    /// finish their current request. A client that does not finish in time is counted as a
    /// `Stuck` failure and left behind.
    pub fn stop(self) -> LoadReport {
        let r = self.inner.finish(EVENT);
        let mut by_kind: Vec<(FailKind, usize)> = Vec::new();
        for f in &r.failures {
            match by_kind.iter_mut().find(|(k, _)| *k == f.failure.kind) {
                Some((_, n)) => *n += 1,
                None => by_kind.push((f.failure.kind, 1)),
            }
        }
        if r.stuck > 0 {
            by_kind.push((FailKind::Stuck, r.stuck));
        }
        by_kind.sort();
        let first_errors = r
            .failures
            .iter()
            .take(10)
            .map(|f| format!("{}: {}", self.targets[f.target], f.failure))
            .collect();
        let ok_by_target = self
            .targets
            .iter()
            .zip(&r.ok_by_target)
            .map(|(t, n)| (t.to_string(), usize::try_from(*n).unwrap_or(usize::MAX)))
            .collect();
        LoadReport {
            ok: usize::try_from(r.ok).unwrap_or(usize::MAX),
            failed: by_kind.iter().map(|(_, n)| n).sum(),
            by_kind,
            first_errors,
            ok_by_target,
            elapsed: r.elapsed,
        }
    }
}
