//! End-to-end, under faults: a storm of reload signals while clients are served. Reload requests
//! coalesce (one reload running, at most one queued), nothing is refused or dropped, and the master
//! ends where it started: same fds, same memory, one worker, no zombie.
mod common;

use common::soak::*;
use common::*;
use std::thread;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const CLIENTS: usize = 20;
const SIGNALS: usize = 1000;
/// Pause between two signals: 1000 of them take about a second.
const PAUSE: Duration = Duration::from_micros(900);
/// The storm is over once no reload has started for this long.
const QUIET: Duration = Duration::from_secs(2);

#[test]
fn signal_storm_coalesces() {
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();
    let master_start = proc_stat(master).expect("master in /proc").starttime;
    let mut worker = hm.current_worker_pid().unwrap();

    let load = Load::start_max(std::slice::from_ref(&target), CLIENTS, 120 * SEC);
    poll_until(10 * SEC, || (load.ok_so_far() >= 200).then_some(()))
        .expect("the load generator got no answers before the storm");
    // Warm-up: a few reloads so that the baseline includes what the first reloads allocate once
    // (the held set, probe buffers, the allocator's arenas growing to their working size).
    for i in 1..=3 {
        worker = reload_once(&mut hm, worker, &format!("warm-up reload {i}"));
    }
    wait_only_child(master, worker, 10 * SEC);
    let base_fds = settled_fd_count(master);
    let base_listing = fd_listing(master);
    let base_rss = vm_rss_kib(master).expect("VmRSS of the master");
    let first = hm.history().len();

    // The storm comes from another thread, so that this one reads the notify datagrams as they
    // come (the master blocks on sd_notify when the receiver's queue of 10 datagrams is full).
    let mut sender = Some(thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0;
        for _ in 0..SIGNALS {
            if !kill_if_same(master, master_start, SIGUSR2) {
                break;
            }
            sent += 1;
            thread::sleep(PAUSE);
        }
        (sent, start.elapsed(), monotonic_usec())
    }));
    let deadline = Instant::now() + 60 * SEC;
    let mut last_reload_seen = Instant::now();
    let mut storm_end = None;
    loop {
        let got = hm.collect_notify(Duration::from_millis(200));
        if got.iter().any(|d| is_reloading(d)) {
            last_reload_seen = Instant::now();
        }
        if sender.as_ref().is_some_and(|s| s.is_finished()) {
            let s = sender.take().unwrap();
            storm_end = Some(s.join().expect("signal sender thread"));
        }
        let in_reload = hm.history()[first..]
            .iter()
            .rev()
            .find(|d| is_reloading(d) || has_line(d, "READY=1"))
            .is_some_and(|d| is_reloading(d));
        if storm_end.is_some() && !in_reload && last_reload_seen.elapsed() >= QUIET {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the storm did not settle within 60 s:\n{}",
            hm.history_text()
        );
    }
    let (sent, storm_took, last_signal_usec) = storm_end.unwrap();
    assert_eq!(sent, SIGNALS, "the master went away during the storm");
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
    let settle = wait_only_child(master, worker, 10 * SEC);
    wait_fd_count(master, base_fds, &base_listing, 10 * SEC);
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
        storm_took < 3 * SEC,
        "sending {SIGNALS} signals took {storm_took:?}: the storm was not a storm"
    );
    assert!(reloads >= 1, "{SIGNALS} SIGUSR2 started no reload");
    // Every reload starts a haproxy (tens of ms at least), and they run one at a time (checked by
    // assert_reloads_alternate), so a storm of about a second leaves few of them; far fewer than
    // the signals, which a master queueing each request would turn into 1000 reloads.
    assert!(
        reloads <= SIGNALS / 10,
        "{reloads} reloads for {SIGNALS} signals in {storm_took:?}: requests are not coalesced"
    );
    // When the last signal is sent, at most one reload may run and one be queued. A signal handled
    // in two `take()` calls (one before, one after the last kill) can make the running one start
    // just after that instant, hence 2 and not 1; a queue of requests would give many more.
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
