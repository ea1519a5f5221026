//! The six scenarios of issue 6. Each returns its markdown section, its plot, and the figures
//! the targets table is built from.

mod ab;
mod crash;
mod footprint;
mod handoff;
mod latency;
mod overhead;
mod storm;

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use hapmaster_loadgen::{FailKind, Load, LoadResult};

use crate::methods::Method;
use crate::procfs;

/// Durations and counts of one run (full or `--quick`).
pub struct Plan {
    pub quick: bool,
    /// The methods compared (all three unless `--method` narrows them).
    pub methods: Vec<Method>,
    pub storm_secs: f64,
    pub storm_clients: Vec<usize>,
    pub ab_secs: u64,
    pub latency_ports: Vec<usize>,
    pub latency_reloads: usize,
    pub handoff_sockets: Vec<usize>,
    pub handoff_iters: usize,
    pub crash_secs: f64,
    pub footprint_reloads: usize,
    pub idle_secs: f64,
    pub overhead_secs: f64,
    pub overhead_rounds: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            methods: Method::ALL.to_vec(),
            storm_secs: 60.0,
            storm_clients: vec![20, 200],
            ab_secs: 10,
            latency_ports: vec![1, 100, 1000, 10_000, 50_000],
            latency_reloads: 50,
            handoff_sockets: vec![1000, 10000],
            handoff_iters: 10,
            crash_secs: 10.0,
            footprint_reloads: 1000,
            idle_secs: 10.0,
            overhead_secs: 10.0,
            overhead_rounds: 3,
        }
    }
    /// Those of `methods` that this run compares.
    pub fn only(&self, methods: &[Method]) -> Vec<Method> {
        methods
            .iter()
            .copied()
            .filter(|m| self.methods.contains(m))
            .collect()
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            methods: Method::ALL.to_vec(),
            storm_secs: 1.0,
            storm_clients: vec![20],
            ab_secs: 1,
            latency_ports: vec![1, 100],
            latency_reloads: 2,
            handoff_sockets: vec![100, 1000],
            handoff_iters: 2,
            crash_secs: 1.5,
            footprint_reloads: 10,
            idle_secs: 1.0,
            overhead_secs: 1.0,
            overhead_rounds: 1,
        }
    }
}

/// One target line: what, the measured figure, met or not.
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

pub struct Section {
    /// Errors of single runs: reported in the markdown, and make the benchmark exit non-zero.
    pub errors: Vec<String>,
    pub markdown: String,
    pub svg: Option<(String, String)>,
    pub targets: Vec<Target>,
}

const REQ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopped load may take to end the requests in flight (each step of one is bounded by
/// [`REQ_TIMEOUT`]).
const FINISH_WAIT: Duration = Duration::from_secs(60);

/// Stops `load` and collects its result. A client still in a request after [`FINISH_WAIT`] (or one
/// that panicked) makes the run an error of the benchmark, not a figure.
fn finish(load: Load) -> Result<LoadResult, String> {
    let r = load.finish(FINISH_WAIT);
    if r.stuck > 0 {
        return Err(format!(
            "{} load clients did not end within {FINISH_WAIT:?} of the stop",
            r.stuck
        ));
    }
    Ok(r)
}

/// Prefix of a reload the method itself reported as failed: a result, not a benchmark error.
const RELOAD_FAILED: &str = "reload failed";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn load_header(md: &mut String) {
    let _ = writeln!(md, "_load average at start: {}_\n", procfs::loadavg());
}

fn load_footer(md: &mut String) {
    let _ = writeln!(md, "\n_load average at end: {}_\n", procfs::loadavg());
}

fn kinds_cells(r: &LoadResult) -> String {
    FailKind::ALL
        .iter()
        .map(|k| r.count(*k).to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn kinds_header() -> String {
    FailKind::ALL
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(" | ")
}

pub use ab::ab_crosscheck;
pub use crash::worker_crash;
pub use footprint::footprint;
pub use handoff::handoff_cost;
pub use latency::reload_latency;
pub use overhead::overhead;
pub use storm::reload_storm;
