//! End-to-end, under faults: a storm of reload signals while clients are served. Reload requests
//! coalesce (one reload running, at most one queued), nothing is refused or dropped, and the master
//! ends where it started: same fds, same memory, one worker, no zombie.
mod common;

use common::soak::*;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const CLIENTS: usize = 20;
/// At least this many signals, and until at least [`MIN_RELOADS`] reloads have started.
const SIGNALS: usize = 1000;
const MIN_RELOADS: usize = 3;
/// Pause between two signals: 1000 of them take about a second on an idle machine.
const PAUSE: Duration = Duration::from_micros(900);
/// The storm gives up after this many signals (a master that never reloads).
const MAX_SIGNALS: usize = 100_000;

#[test]
fn signal_storm_coalesces() {
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();
    let master_start = proc_stat(master).expect("master in /proc").starttime;
    let mut worker = hm.current_worker_pid().unwrap();

    let load = Load::start_max(std::slice::from_ref(&target), CLIENTS, 180 * SEC);
    poll_until(EVENT, || (load.ok_so_far() >= 200).then_some(()))
        .expect("the load generator got no answers before the storm");
    // Warm-up: a few reloads so that the baseline includes what the first reloads allocate once
    // (the held set, probe buffers, the allocator's arenas growing to their working size).
    for i in 1..=3 {
        worker = reload_once(&mut hm, worker, &format!("warm-up reload {i}"));
    }
    wait_only_child(master, worker, EVENT);
    let base_fds = settled_fd_count(master);
    let base_listing = fd_listing(master);
    let base_rss = vm_rss_kib(master).expect("VmRSS of the master");
    let first = hm.history().len();

    // The storm comes from another thread, so that this one reads the notify datagrams as they
    // come (the master blocks on sd_notify when the receiver's queue of 10 datagrams is full).
    // It lasts until this thread has seen MIN_RELOADS reloads start, however slow the machine:
    // the signals then overlap running reloads, which is what coalescing is about.
    let reloads_seen = Arc::new(AtomicUsize::new(0));
    let seen = reloads_seen.clone();
    let sender = thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        while sent < MAX_SIGNALS && (sent < SIGNALS || seen.load(Ordering::Relaxed) < MIN_RELOADS) {
            if !kill_if_same(master, master_start, SIGUSR2) {
                break;
            }
            sent += 1;
            thread::sleep(PAUSE);
        }
        (sent, start.elapsed(), monotonic_usec())
    });
    let deadline = Instant::now() + 180 * SEC;
    while !sender.is_finished() {
        // Reading keeps the notify queue drained; the window is no synchronisation.
        hm.collect_notify(Duration::from_millis(100));
        let started = hm.history()[first..]
            .iter()
            .filter(|d| is_reloading(d))
            .count();
        reloads_seen.store(started, Ordering::Relaxed);
        assert!(
            Instant::now() < deadline,
            "the storm did not end within 180 s:\n{}",
            hm.history_text()
        );
    }
    let (sent, storm_took, last_signal_usec) = sender.join().expect("signal sender thread");
    assert!(
        sent >= SIGNALS,
        "the master went away during the storm after {sent} signals"
    );
    // Every signal has been acted on and no reload runs or waits once this returns.
    hm.settle_reloads();
    let datagrams = hm.history()[first..].to_vec();
    let reloads = assert_reloads_alternate(&datagrams);
    let reload_usecs: Vec<u64> = datagrams
        .iter()
        .filter(|d| is_reloading(d))
        .map(|d| notify_field(d, "MONOTONIC_USEC").unwrap().parse().unwrap())
        .collect();
    let after_last_signal = reload_usecs
        .iter()
        .filter(|u| **u > last_signal_usec)
        .count();
    let shortest_gap = reload_usecs.windows(2).map(|w| w[1] - w[0]).min();
    worker = hm.current_worker_pid().unwrap();

    let report = load.stop();
    let settle = wait_only_child(master, worker, EVENT);
    wait_fd_count(master, base_fds, &base_listing, EVENT);
    let rss = vm_rss_kib(master).expect("VmRSS of the master");
    eprintln!(
        "storm: {sent} SIGUSR2 in {storm_took:.2?} -> {reloads} reloads ({after_last_signal} \
         started after the last signal; shortest interval between two starts {:?} us); \
         old workers gone {settle:.0?} after the load stopped",
        shortest_gap
    );
    eprintln!("master fds {base_fds} -> {}", fd_count(master).unwrap());
    eprintln!("master VmRSS {base_rss} KiB -> {rss} KiB");
    eprintln!("load during the storm: {report}");

    assert!(
        reloads - after_last_signal >= MIN_RELOADS,
        "{sent} SIGUSR2 in {storm_took:?} overlapped only {} reloads",
        reloads - after_last_signal
    );
    // Coalescing, whatever the machine's speed: when the last signal is sent, at most one reload
    // may run and one be queued. A signal handled in two `take()` calls (one before, one after
    // the last kill) can make the running one start just after that instant, hence 2 and not 1;
    // a master queueing each request would still have hundreds of reloads to go.
    assert!(
        after_last_signal <= 2,
        "{after_last_signal} reloads started after the last signal: a backlog was queued"
    );
    assert_eq!(
        report.failed, 0,
        "requests failed during the storm: {report}"
    );
    assert!(zombie_children(master).is_empty(), "zombie children");
    assert_eq!(
        other_processes_of(hm.dir(), &[master, worker]),
        Vec::<u32>::new(),
        "processes of this test other than the master and the current worker {worker}"
    );
    assert_rss_within_10_percent("after the storm", base_rss, rss);
    assert_eq!(http_get(target).unwrap(), HELLO);
    assert!(hm.stop().success());
}
