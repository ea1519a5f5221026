//! Helpers for the robustness tests (crash under load, signal storm, soak): what the master holds
//! (fds, memory, children, runtime files) and how to drive and time its reloads.
//!
//! Same rules as the rest of the harness: every wait has a deadline, only processes this test
//! started (or that hapmaster reported as its workers) are ever signalled, by pid.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// `VmRSS` of `pid` in KiB, from /proc/PID/status.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The fd count of `pid` once it has been the same for 5 looks in a row (bounded to 3 s).
pub fn settled_fd_count(pid: u32) -> usize {
    let mut last = fd_count(pid).expect("reading /proc/PID/fd");
    let mut same = 0;
    for _ in 0..150 {
        thread::sleep(POLL);
        let n = fd_count(pid).expect("reading /proc/PID/fd");
        if n == last {
            same += 1;
            if same == 5 {
                break;
            }
        } else {
            (last, same) = (n, 0);
        }
    }
    last
}

/// Polls (up to `timeout`) until the master has exactly one child, `worker`, alive, and no zombie.
/// Returns how long that took.
pub fn wait_only_child(master: u32, worker: u32, timeout: Duration) -> Duration {
    let start = Instant::now();
    let ok = poll_until(timeout, || {
        let kids = children_of(master);
        (kids.len() == 1 && kids[0].pid == worker && kids[0].state != 'Z').then_some(())
    });
    assert!(
        ok.is_some(),
        "after {timeout:?} the master {master} should have exactly one child, worker {worker}; it has {:?}",
        children_of(master)
    );
    start.elapsed()
}

/// Polls (up to `timeout`) until the master's fd count is `want`; panics with both listings if not.
pub fn wait_fd_count(master: u32, want: usize, want_listing: &str, timeout: Duration) {
    let ok = poll_until(timeout, || (fd_count(master)? == want).then_some(()));
    assert!(
        ok.is_some(),
        "master fd count {:?}, baseline {want}\nbaseline fds:\n{want_listing}\nnow:\n{}",
        fd_count(master),
        fd_listing(master)
    );
}

/// Asserts that `now` KiB is within 10 % of `base` KiB (above or below).
pub fn assert_rss_within_10_percent(what: &str, base: u64, now: u64) {
    let limit = base + base / 10;
    let floor = base - base / 10;
    assert!(
        (floor..=limit).contains(&now),
        "{what}: master VmRSS {now} KiB, baseline {base} KiB (allowed {floor}..={limit})"
    );
}

/// Names of the entries of `dir`.
pub fn dir_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What the runtime dir holds while worker generation `g` is the only one, and the last one that
/// became ready: the lock, the master's handoff socket, and that worker's stats socket, config
/// fragment and the copy of its configuration (`config-<g>`, a directory).
pub fn expected_runtime_names(g: u64) -> BTreeSet<String> {
    [
        "hapmaster.lock".to_string(),
        "master.sock".to_string(),
        format!("worker-{g}.sock"),
        format!("worker-{g}.cfg"),
        format!("config-{g}"),
    ]
    .into_iter()
    .collect()
}

/// Generation of the worker named in the last `Serving` datagram received.
pub fn current_generation(hm: &mut Hapmaster) -> u64 {
    hm.history()
        .iter()
        .rev()
        .find(|d| is_serving(d))
        .and_then(|d| generation_in(d))
        .expect("generation in the last Serving status")
}

/// Asserts that the datagrams strictly alternate `RELOADING=1`, `READY=1`, `RELOADING=1`, ...
/// (every reload started after the previous one finished) and that each `READY=1` serves a worker
/// not seen before; other datagrams (plain `STATUS=`) may come in between. Returns the number of
/// reloads.
pub fn assert_reloads_alternate(datagrams: &[String]) -> usize {
    let mut reloads = 0;
    let mut in_reload = false;
    let mut workers = BTreeSet::new();
    for (i, d) in datagrams.iter().enumerate() {
        if is_reloading(d) {
            assert!(
                !in_reload,
                "datagram #{i}: RELOADING=1 while reload {reloads} had not answered READY=1: {d:?}"
            );
            in_reload = true;
            reloads += 1;
        } else if has_line(d, "READY=1") {
            assert!(
                in_reload,
                "datagram #{i}: READY=1 without a reload running: {d:?}"
            );
            assert!(is_serving(d), "datagram #{i}: reload failed: {d:?}");
            let pid = worker_pid_in(d).unwrap();
            assert!(
                workers.insert(pid),
                "datagram #{i}: worker pid {pid} served twice: {d:?}"
            );
            in_reload = false;
        }
    }
    assert!(!in_reload, "the last reload never answered READY=1");
    reloads
}

/// Sends SIGUSR2 and waits for the `RELOADING=1` and then the `READY=1` of that reload, which must
/// be `Serving` a worker other than `old`; returns the new worker's pid. The waits block on the
/// notify socket (no polling), so a reload costs what the master takes and nothing more.
pub fn reload_once(hm: &mut Hapmaster, old: u32, what: &str) -> u32 {
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "{what}: reload did not succeed: {d:?}");
    let new = worker_pid_in(&d).unwrap();
    assert_ne!(new, old, "{what}: still serving the old worker: {d:?}");
    new
}

/// Live processes whose command line names a file in `dir` (the master and the haproxy workers
/// started for this test: their `-f` arguments are in its dir), except those in `keep`.
pub fn other_processes_of(dir: &Path, keep: &[u32]) -> Vec<u32> {
    pids_with_cmdline_containing(dir)
        .into_iter()
        .filter(|p| !keep.contains(p))
        .collect()
}

/// Sends `sig` to `pid` only while it is still the live process first seen with `starttime` and
/// a child of this test process: a reaped pid may already belong to someone else.
pub fn kill_if_same(pid: u32, starttime: u64, sig: i32) -> bool {
    let me = std::process::id();
    match proc_stat(pid) {
        Some(s) if s.starttime == starttime && s.ppid == me && s.state != 'Z' => {
            kill(pid, sig).is_ok()
        }
        _ => false,
    }
}

/// Sums failure counts by kind.
pub fn count_kind(by_kind: &[(FailKind, usize)], kind: FailKind) -> usize {
    by_kind
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, n)| n)
        .sum()
}

/// Panics unless every failure in `report` is a request a SIGKILLed worker cut in flight (reset,
/// or closed before the response was complete): no connect refused, since the master holds the
/// socket, and no timeout or bad answer, since the replacement serves what queued meanwhile.
pub fn assert_only_cut_in_flight(report: &LoadReport) {
    assert_eq!(
        count_kind(&report.by_kind, FailKind::Refused),
        0,
        "connections were refused although the master holds the socket: {report}"
    );
    let in_flight = count_kind(&report.by_kind, FailKind::Reset)
        + count_kind(&report.by_kind, FailKind::ShortResponse);
    assert_eq!(
        report.failed, in_flight,
        "failures other than in-flight requests cut by the kill: {report}"
    );
}
