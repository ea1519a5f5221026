//! What `show metrics` says: the master's reload and crash counters, kept as the loop carries out
//! the state's actions, and the families rendered from them and from the master's state.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::exposition::{Exposition, Kind};

/// How the last reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastReload {
    pub success: bool,
    /// From the request (the first of those joined into it) to READY or the failure.
    pub duration: Duration,
    /// When it ended.
    pub at: SystemTime,
}

/// What of the counters crosses an upgrade in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub worker_restarts: u64,
    pub last_reload: Option<LastReload>,
}

/// The counters; they start at zero with the master and cross an upgrade in place.
#[derive(Debug, Default)]
pub struct Counters {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Workers started to replace one that died (crash replacements).
    pub worker_restarts: u64,
    pub last_reload: Option<LastReload>,
    /// When the master started (its first image, across upgrades in place).
    pub start_time: Option<SystemTime>,
    /// The earliest reload request not yet started.
    requested: Option<Instant>,
    /// The reload starting: its generation and when it was asked for.
    began: Option<(u64, Instant)>,
}

impl Counters {
    pub fn totals(&self) -> Totals {
        Totals {
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            worker_restarts: self.worker_restarts,
            last_reload: self.last_reload,
        }
    }

    /// Goes on from what the previous image counted (no reload runs across the exec).
    pub fn resume(&mut self, t: Totals) {
        self.reloads_ok = t.reloads_ok;
        self.reloads_failed = t.reloads_failed;
        self.worker_restarts = t.worker_restarts;
        self.last_reload = t.last_reload;
    }

    /// A reload was asked for (it may join one already queued: the earliest request counts).
    pub fn reload_requested(&mut self, now: Instant) {
        self.requested.get_or_insert(now);
    }

    /// Reload generation `generation` starts now.
    pub fn reload_started(&mut self, generation: u64, now: Instant) {
        let since = self.requested.take().unwrap_or(now);
        self.began = Some((generation, since));
    }

    /// A worker starts in place of one that died.
    pub fn worker_replaced(&mut self) {
        self.worker_restarts += 1;
    }

    /// Reload `generation` ended (READY, or a failure).
    pub fn reload_done(&mut self, generation: u64, success: bool, now: Instant, wall: SystemTime) {
        if success {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        let since = match self.began.take() {
            Some((g, since)) if g == generation => since,
            _ => now,
        };
        self.last_reload = Some(LastReload {
            success,
            duration: now.saturating_duration_since(since),
            at: wall,
        });
    }
}

/// What the master is now, besides its counters.
#[derive(Debug, Default)]
pub struct Now {
    pub current: usize,
    /// Soft-stopped, failed or terminating workers still alive: on their way out.
    pub draining: usize,
    pub starting: usize,
    pub held_listeners: usize,
    /// What the newest worker said (`show version`), if any has.
    pub haproxy_version: Option<String>,
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The text of `show metrics` (and of `GET /metrics`).
pub fn render(c: &Counters, now: &Now) -> String {
    let mut e = Exposition::default();
    let version = now.haproxy_version.as_deref().unwrap_or("");
    e.family(
        "hapmaster_info",
        "hapmaster's version and the haproxy version its newest worker runs, as labels.",
        Kind::Gauge,
        &[(
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("haproxy_version", version),
            ],
            1.0,
        )],
    );
    e.family(
        "hapmaster_start_time_seconds",
        "When the master started, in seconds since the epoch.",
        Kind::Gauge,
        &c.start_time
            .map(|t| (&[][..], seconds(t)))
            .into_iter()
            .collect::<Vec<_>>(),
    );
    e.family(
        "hapmaster_reloads_total",
        "Reloads that ended, by result.",
        Kind::Counter,
        &[
            (&[("result", "success")], c.reloads_ok as f64),
            (&[("result", "failure")], c.reloads_failed as f64),
        ],
    );
    let last: Vec<_> = c.last_reload.into_iter().collect();
    let one = |f: fn(&LastReload) -> f64| -> Vec<(&[(&str, &str)], f64)> {
        last.iter().map(|l| (&[][..], f(l))).collect()
    };
    e.family(
        "hapmaster_last_reload_success",
        "Whether the last reload succeeded (1) or failed (0); absent before the first.",
        Kind::Gauge,
        &one(|l| if l.success { 1.0 } else { 0.0 }),
    );
    e.family(
        "hapmaster_last_reload_duration_seconds",
        "How long the last reload took, from its request to READY or its failure.",
        Kind::Gauge,
        &one(|l| l.duration.as_secs_f64()),
    );
    e.family(
        "hapmaster_last_reload_timestamp_seconds",
        "When the last reload ended, in seconds since the epoch.",
        Kind::Gauge,
        &one(|l| seconds(l.at)),
    );
    e.family(
        "hapmaster_worker_restarts_total",
        "Workers started to replace one that died.",
        Kind::Counter,
        &[(&[], c.worker_restarts as f64)],
    );
    e.family(
        "hapmaster_workers",
        "Live workers by role: current (serving), draining (on their way out), starting.",
        Kind::Gauge,
        &[
            (&[("role", "current")], now.current as f64),
            (&[("role", "draining")], now.draining as f64),
            (&[("role", "starting")], now.starting as f64),
        ],
    );
    e.family(
        "hapmaster_held_listeners",
        "Listening sockets the master holds for the next worker.",
        Kind::Gauge,
        &[(&[], now.held_listeners as f64)],
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn fresh_master() {
        let c = Counters {
            start_time: Some(at(1_700_000_000)),
            ..Counters::default()
        };
        let now = Now {
            current: 1,
            held_listeners: 2,
            haproxy_version: Some("2.6.12-1+deb12u1".into()),
            ..Now::default()
        };
        let text = render(&c, &now);
        let expected = format!(
            "# HELP hapmaster_info hapmaster's version and the haproxy version its newest worker runs, as labels.\n\
             # TYPE hapmaster_info gauge\n\
             hapmaster_info{{version=\"{}\",haproxy_version=\"2.6.12-1+deb12u1\"}} 1\n\
             # HELP hapmaster_start_time_seconds When the master started, in seconds since the epoch.\n\
             # TYPE hapmaster_start_time_seconds gauge\n\
             hapmaster_start_time_seconds 1700000000\n\
             # HELP hapmaster_reloads_total Reloads that ended, by result.\n\
             # TYPE hapmaster_reloads_total counter\n\
             hapmaster_reloads_total{{result=\"success\"}} 0\n\
             hapmaster_reloads_total{{result=\"failure\"}} 0\n\
             # HELP hapmaster_worker_restarts_total Workers started to replace one that died.\n\
             # TYPE hapmaster_worker_restarts_total counter\n\
             hapmaster_worker_restarts_total 0\n\
             # HELP hapmaster_workers Live workers by role: current (serving), draining (on their way out), starting.\n\
             # TYPE hapmaster_workers gauge\n\
             hapmaster_workers{{role=\"current\"}} 1\n\
             hapmaster_workers{{role=\"draining\"}} 0\n\
             hapmaster_workers{{role=\"starting\"}} 0\n\
             # HELP hapmaster_held_listeners Listening sockets the master holds for the next worker.\n\
             # TYPE hapmaster_held_listeners gauge\n\
             hapmaster_held_listeners 2\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn reloads_and_restarts() {
        let t0 = Instant::now();
        let mut c = Counters::default();
        // Two requests joined into one reload: timed from the first.
        c.reload_requested(t0);
        c.reload_requested(t0 + Duration::from_millis(100));
        c.reload_started(2, t0 + Duration::from_millis(200));
        c.reload_done(2, true, t0 + Duration::from_millis(1500), at(1_700_000_010));
        assert_eq!(
            c.last_reload,
            Some(LastReload {
                success: true,
                duration: Duration::from_millis(1500),
                at: at(1_700_000_010),
            })
        );
        // A reload that started with no request seen (a queued one) is timed from its start.
        c.reload_started(3, t0 + Duration::from_secs(2));
        c.reload_done(
            3,
            false,
            t0 + Duration::from_millis(2250),
            at(1_700_000_012),
        );
        c.worker_replaced();
        let text = render(&c, &Now::default());
        for line in [
            "hapmaster_reloads_total{result=\"success\"} 1\n",
            "hapmaster_reloads_total{result=\"failure\"} 1\n",
            "hapmaster_last_reload_success 0\n",
            "hapmaster_last_reload_duration_seconds 0.25\n",
            "hapmaster_last_reload_timestamp_seconds 1700000012\n",
            "hapmaster_worker_restarts_total 1\n",
            "hapmaster_info{version=\"",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        // No worker has said its version yet: the label is empty, not missing.
        assert!(text.contains(",haproxy_version=\"\"} 1\n"), "{text}");
        assert!(!text.contains("hapmaster_start_time_seconds"), "{text}");
    }
}
