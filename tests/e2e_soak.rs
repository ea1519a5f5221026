//! End-to-end soak: 500 reloads in a row under load. Whatever a reload leaks (an fd, a child, a
//! file, a few bytes of memory) adds up 500 times and shows at the end.
mod common;

use common::soak::*;
use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
/// The load is there so that requests are in flight at every switch (about 2,700 per reload at
/// the ~27,000 req/s that 4 clients get here), not to saturate the CPU: with 20 clients the 2 cores
/// are saturated and each haproxy start takes about twice as long (measured: 500 reloads in 92 s
/// with 20 clients, 49 s with 4).
const CLIENTS: usize = 4;
const RELOADS: usize = 500;
const WARM_UP: usize = 10;

#[test]
fn five_hundred_reloads_leak_nothing() {
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();
    let mut worker = hm.current_worker_pid().unwrap();
    let listener = tcp4_listen_inodes(port);
    assert_eq!(listener.len(), 1, "one listener on 127.0.0.1:{port}");

    // Bounded well above what the run takes (measured under a minute on 2 cores).
    let load = Load::start_max(std::slice::from_ref(&target), CLIENTS, 600 * SEC);
    poll_until(EVENT, || (load.ok_so_far() >= 200).then_some(()))
        .expect("the load generator got no answers before the reloads");

    // The baseline is taken after some reloads, not before the first: the first reloads make the
    // master allocate what it then reuses (the held set and handoff buffers, the probe's reply
    // buffer, the allocator's arenas growing to their working size). A leak of even 1 KiB per
    // reload still adds 500 KiB over the run, about 20 % of the master's ~2.5 MiB: caught.
    for i in 1..=WARM_UP {
        worker = reload_once(&mut hm, worker, &format!("warm-up reload {i}"));
    }
    wait_only_child(master, worker, EVENT);
    let base_fds = settled_fd_count(master);
    let base_listing = fd_listing(master);
    let base_rss = vm_rss_kib(master).expect("VmRSS of the master");
    let ok_before = load.ok_so_far();

    let mut seen = BTreeSet::from([worker]);
    let mut max_children = 0;
    let started = Instant::now();
    for i in 1..=RELOADS {
        let new = reload_once(&mut hm, worker, &format!("reload {i}/{RELOADS}"));
        assert!(
            seen.insert(new),
            "reload {i}: worker pid {new} served before"
        );
        worker = new;
        if i % 50 == 0 {
            let kids = children_of(master);
            max_children = max_children.max(kids.len());
            assert_eq!(
                tcp4_listen_inodes(port),
                listener,
                "reload {i}: the listening socket changed"
            );
            assert!(pid_alive(master), "reload {i}: the master died");
            eprintln!(
                "{i} reloads in {:.1?}; master: {} fds, {} KiB, {} children",
                started.elapsed(),
                fd_count(master).unwrap_or(0),
                vm_rss_kib(master).unwrap_or(0),
                kids.len()
            );
        }
    }
    let took = started.elapsed();
    let served = load.ok_so_far() - ok_before;
    let report = load.stop();

    let settle = wait_only_child(master, worker, EVENT);
    wait_fd_count(master, base_fds, &base_listing, EVENT);
    let rss = vm_rss_kib(master).expect("VmRSS of the master");
    let g = current_generation(&mut hm);
    let expected = expected_runtime_names(g);
    let files = poll_until(EVENT, || {
        let names = dir_names(&hm.runtime_dir);
        (names == expected).then_some(names)
    });
    eprintln!(
        "{RELOADS} reloads in {took:.1?} ({:.1} reloads/s), {served} requests served meanwhile; \
         old workers gone {settle:.0?} after the load stopped; at most {max_children} children \
         seen at a check",
        RELOADS as f64 / took.as_secs_f64()
    );
    eprintln!("master fds {base_fds} -> {}", fd_count(master).unwrap());
    eprintln!("master VmRSS {base_rss} KiB -> {rss} KiB");
    eprintln!("load: {report}");

    assert_eq!(
        report.failed, 0,
        "requests failed during the reloads: {report}"
    );
    assert!(
        served >= RELOADS,
        "only {served} requests served during {RELOADS} reloads"
    );
    assert!(
        files.is_some(),
        "runtime dir should hold exactly {expected:?}, holds {:?}",
        dir_names(&hm.runtime_dir)
    );
    assert!(zombie_children(master).is_empty(), "zombie children");
    assert_eq!(
        other_processes_of(hm.dir(), &[master, worker]),
        Vec::<u32>::new(),
        "processes of this test other than the master and the current worker {worker}"
    );
    assert_rss_within_10_percent("after 500 reloads", base_rss, rss);
    assert_eq!(
        tcp4_listen_inodes(port),
        listener,
        "listening socket changed"
    );
    assert_eq!(http_get(target).unwrap(), HELLO);
    assert!(hm.stop().success());
}
