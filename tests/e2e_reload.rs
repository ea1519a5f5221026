//! End-to-end: the real hapmaster binary supervising the real haproxy, on loopback.
mod common;

use common::soak::{settled_fd_count, wait_only_child};
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;

/// Waits for the next `RELOADING=1`, then the next `READY=1`, which must be `Serving` a worker other
/// than `old`; returns that worker's pid.
fn wait_reload_ok(hm: &mut Hapmaster, old: u32, what: &str) -> u32 {
    let r = hm.wait_notify(is_reloading, EVENT);
    assert!(
        notify_field(&r, "MONOTONIC_USEC").is_some(),
        "{what}: RELOADING=1 without MONOTONIC_USEC= in the same datagram: {r:?}"
    );
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "{what}: reload did not succeed: {d:?}");
    let new = worker_pid_in(&d).unwrap();
    assert_ne!(new, old, "{what}: still serving the old worker: {d:?}");
    new
}

/// Names in the runtime dir that start with `worker-`.
fn worker_files(rt: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(rt)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("worker-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reload_30_times_under_load() {
    let dir = TestDir::new();
    let ports = free_ports(2);
    let (p4, p6) = (ports[0], ports[1]);
    let fe = dir.join("fe.sock");
    // `v6only`: haproxy 2.6.12's `-x` does not reuse a `[::1]:P` socket bound without it (it binds a
    // fresh one next to it, SO_REUSEPORT), even from a plain haproxy: reproduced without hapmaster.
    let cfg = http_config(&[
        format!("127.0.0.1:{p4}"),
        format!("[::1]:{p6} v6only"),
        format!("unix@{}", fe.display()),
    ]);
    let mut hm = Hapmaster::start_in(dir, cfg, &[]);
    let mut worker = hm.wait_serving(EVENT);
    let master = hm.pid();

    let inodes = || {
        (
            tcp4_listen_inodes(p4),
            tcp6_listen_inodes(p6),
            unix_listen_inodes(&fe),
        )
    };
    let base = inodes();
    assert!(
        base.0.len() == 1 && base.1.len() == 1 && base.2.len() == 1,
        "expected one listener each on 127.0.0.1:{p4}, [::1]:{p6}, {}: {base:?}",
        fe.display()
    );
    let pidfile = poll_until(EVENT, || hm.pidfile_pid()).expect("no pid in the pidfile");
    assert_eq!(pidfile, master, "pidfile");
    let base_fds = settled_fd_count(master);
    let base_fd_listing = fd_listing(master);

    let targets: Vec<Target> = vec![
        format!("127.0.0.1:{p4}").into(),
        format!("[::1]:{p6}").into(),
        fe.clone().into(),
    ];
    for t in &targets {
        assert_eq!(
            http_get(t.clone()).unwrap(),
            HELLO,
            "GET {t} before the reloads"
        );
    }
    let load = Load::start(&targets, 20);
    poll_until(EVENT, || (load.ok_so_far() >= 100).then_some(()))
        .expect("the load generator got no answers before the reloads");

    let mut seen = BTreeSet::from([worker]);
    for i in 1..=30 {
        hm.signal(SIGUSR2);
        let new = wait_reload_ok(&mut hm, worker, &format!("reload {i}/30"));
        assert!(
            seen.insert(new),
            "reload {i}: worker pid {new} was already used"
        );
        worker = new;
        assert_eq!(inodes(), base, "reload {i}: listening sockets changed");
        assert!(pid_alive(master), "reload {i}: master died");
    }
    let report = load.stop();
    eprintln!("load during 30 reloads: {report}");
    assert_eq!(report.failed, 0, "requests failed during reloads: {report}");
    assert!(report.ok >= 1000, "too few requests served: {report}");
    for t in &targets {
        let name = t.to_string();
        let n = report
            .ok_by_target
            .iter()
            .find(|(t, _)| *t == name)
            .map(|x| x.1);
        assert!(
            n.unwrap_or(0) > 0,
            "no successful request to {name}: {report}"
        );
    }

    assert_eq!(hm.pid(), master);
    assert_eq!(hm.pidfile_pid(), Some(master), "pidfile after the reloads");
    assert_eq!(inodes(), base, "listening sockets changed");
    // Old workers drain and exit; the master reaps them.
    wait_only_child(master, worker, EVENT);
    assert_eq!(hm.current_worker_pid(), Some(worker));
    // Their runtime files go with them: one worker-<G>.sock and one worker-<G>.cfg remain.
    let files = poll_until(EVENT, || {
        let f = worker_files(&hm.runtime_dir);
        (f.len() <= 2).then_some(f)
    });
    assert!(
        files.as_ref().is_some_and(|f| f.len() == 2),
        "runtime dir should hold one worker-<G>.sock and one worker-<G>.cfg: {:?}",
        worker_files(&hm.runtime_dir)
    );
    // No fd leaked per reload.
    let fds = poll_until(EVENT, || {
        let n = fd_count(master)?;
        (n == base_fds).then_some(n)
    });
    assert!(
        fds.is_some(),
        "master fd count {:?}, was {base_fds} before the reloads\nbefore:\n{base_fd_listing}\nnow:\n{}",
        fd_count(master),
        fd_listing(master)
    );
    for t in &targets {
        assert_eq!(
            http_get(t.clone()).unwrap(),
            HELLO,
            "GET {t} after the reloads"
        );
    }
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}

#[test]
fn broken_config_reload_keeps_old_worker() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    let master = hm.pid();
    let old = hm.current_worker_pid().unwrap();
    let inode = tcp4_listen_inodes(port);
    assert_eq!(inode.len(), 1, "listener on 127.0.0.1:{port}");
    let target = format!("127.0.0.1:{port}");

    hm.write_config(&format!("{good}    this_is_not_a_keyword 42\n"));
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected STATUS=Reload failed: {d:?}");
    assert_eq!(
        worker_pid_in(&d),
        Some(old),
        "the failure status should name the worker still serving: {d:?}"
    );
    // The failed worker is reaped; the old one is untouched.
    wait_only_child(master, old, EVENT);
    assert!(pid_alive(old));
    assert_eq!(tcp4_listen_inodes(port), inode, "listening socket changed");
    assert_eq!(http_get(target.as_str()).unwrap(), HELLO);

    hm.write_config(&good);
    hm.signal(SIGUSR2);
    let new = wait_reload_ok(&mut hm, old, "reload after restoring the config");
    assert_eq!(http_get(target.as_str()).unwrap(), HELLO);
    wait_only_child(master, new, EVENT);
    assert_eq!(tcp4_listen_inodes(port), inode, "listening socket changed");
    assert!(hm.stop().success());
}

#[test]
fn sigkill_worker_is_replaced_ports_stay_open() {
    let dir = TestDir::new();
    let port = free_port();
    let fe = dir.join("fe.sock");
    let cfg = http_config(&[
        format!("127.0.0.1:{port}"),
        format!("unix@{}", fe.display()),
    ]);
    let mut hm = Hapmaster::start_in(dir, cfg, &[]);
    let old = hm.wait_serving(EVENT);
    let master = hm.pid();
    let tcp_inode = tcp4_listen_inodes(port);
    let unix_inode = unix_listen_inodes(&fe);
    assert_eq!((tcp_inode.len(), unix_inode.len()), (1, 1));
    let target = Target::parse(&format!("127.0.0.1:{port}"));

    kill(old, SIGKILL).unwrap();
    // Once it is a zombie (or reaped) its fds are closed: only the master's copy holds the port.
    poll_until(EVENT, || (!pid_alive(old)).then_some(())).expect("SIGKILLed worker still alive");
    let replaced_already = live_children(master);
    let conn = Conn::connect(&target, REQUEST_TIMEOUT).unwrap_or_else(|e| {
        panic!("connect to 127.0.0.1:{port} right after the worker died failed: {e} (the master should hold the socket)")
    });
    eprintln!("connected while the master's live children were {replaced_already:?}");
    // The request waits in the held socket's backlog until the replacement accepts it.
    conn.set_timeouts(EVENT).unwrap();
    assert_eq!(
        conn.get()
            .expect("request queued during the replacement")
            .body,
        HELLO
    );

    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(old), EVENT);
    let new = worker_pid_in(&d).unwrap();
    assert_eq!(tcp4_listen_inodes(port), tcp_inode, "TCP listener changed");
    assert_eq!(unix_listen_inodes(&fe), unix_inode, "unix listener changed");
    assert_eq!(http_get(target).unwrap(), HELLO);
    assert_eq!(http_get(fe.as_path()).unwrap(), HELLO);
    wait_only_child(master, new, EVENT);
    assert!(hm.stop().success());
}

#[test]
fn notify_sequence() {
    let port = free_port();
    let mut hm = Hapmaster::start(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();

    let ready = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(
        is_serving(&ready),
        "first READY=1 should say Serving: {ready:?}"
    );
    assert_eq!(
        notify_field(&ready, "MAINPID"),
        Some(master.to_string().as_str()),
        "MAINPID in {ready:?}"
    );
    let w1 = worker_pid_in(&ready).unwrap();
    let g1 = generation_in(&ready).expect("generation in STATUS");
    assert!(
        !hm.history()
            .iter()
            .any(|d| has_line(d, "STOPPING=1") || is_reloading(d)),
        "unexpected datagram before the first reload:\n{}",
        hm.history_text()
    );

    // SIGHUP reloads like SIGUSR2.
    let before = monotonic_usec();
    hm.signal(SIGHUP);
    let r = hm.wait_notify(is_reloading, EVENT);
    let after = monotonic_usec();
    let usec: u64 = notify_field(&r, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= with RELOADING=1: {r:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC not a number ({e}): {r:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} not CLOCK_MONOTONIC between signal ({before}) and receipt ({after})"
    );
    assert!(
        notify_field(&r, "STATUS").is_some_and(|s| s.starts_with("Reloading")),
        "STATUS=Reloading... in the RELOADING datagram: {r:?}"
    );
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(
        is_serving(&d),
        "READY=1 after the reload should say Serving: {d:?}"
    );
    let w2 = worker_pid_in(&d).unwrap();
    assert_ne!(w1, w2);
    let g2 = generation_in(&d).expect("generation in STATUS");
    assert!(g2 > g1, "generation {g2} after the reload, {g1} before");

    hm.signal(SIGTERM);
    let s = hm.wait_notify(|d| has_line(d, "STOPPING=1"), EVENT);
    assert!(
        notify_field(&s, "STATUS").is_some(),
        "STOPPING=1 without STATUS=: {s:?}"
    );
    let status = hm.wait_exit(EVENT).expect("no exit after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn sigterm_leaves_nothing_behind() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();
    let w1 = hm.current_worker_pid().unwrap();
    hm.signal(SIGUSR2);
    let w2 = wait_reload_ok(&mut hm, w1, "reload");
    assert_eq!(hm.current_worker_pid(), Some(w2));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);

    let meta = fs::metadata(&hm.runtime_dir).expect("runtime dir should exist while running");
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "runtime dir mode");
    let g = hm
        .history()
        .iter()
        .rev()
        .find(|d| is_serving(d))
        .and_then(|d| generation_in(d))
        .expect("generation in the last Serving status");
    for f in [format!("worker-{g}.sock"), format!("worker-{g}.cfg")] {
        assert!(
            hm.runtime_dir.join(&f).exists(),
            "{f} missing from the runtime dir"
        );
    }
    assert_eq!(
        poll_until(EVENT, || hm.pidfile_pid()),
        Some(master),
        "pidfile"
    );

    let status = hm.stop();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        hm.live_reported_workers().is_empty(),
        "workers alive after the master exited: {:?}",
        hm.live_reported_workers()
    );
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
    assert!(
        tcp4_listen_inodes(port).is_empty(),
        "127.0.0.1:{port} still listening"
    );
}

#[test]
fn first_worker_failure_exits_nonzero() {
    let port = free_port();
    let broken = format!(
        "{}    this_is_not_a_keyword 42\n",
        http_config(&[format!("127.0.0.1:{port}")])
    );
    let mut hm = Hapmaster::start(broken, &[]);
    let status = hm
        .wait_exit(EVENT)
        .unwrap_or_else(|| panic!("hapmaster still running 30 s after its first worker failed"));
    assert!(!status.success(), "exit status {status}");
    let err = hm.stderr();
    assert!(
        err.contains("[ALERT]"),
        "haproxy's [ALERT] lines should be on stderr:\n{err}"
    );
    // The master's own lines start lowercase, and say plainly that nothing was left to stop.
    let own = format!("({}) : ", hm.pid());
    let capitalised: Vec<&str> = err
        .lines()
        .filter(|l| {
            l.split_once(own.as_str())
                .is_some_and(|(_, text)| text.starts_with(|c: char| c.is_uppercase()))
        })
        .collect();
    assert!(capitalised.is_empty(), "{capitalised:?} in:\n{err}");
    assert!(
        err.contains("stopping: no worker left to signal"),
        "no `stopping: no worker left to signal` in:\n{err}"
    );
    assert!(
        !hm.history().iter().any(|d| has_line(d, "READY=1")),
        "READY=1 sent although no worker ever served:\n{}",
        hm.history_text()
    );
    assert!(hm.live_reported_workers().is_empty());
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
    assert!(tcp4_listen_inodes(port).is_empty());
}

#[test]
fn reload_signals_coalesce() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let master = hm.pid();
    let w0 = hm.current_worker_pid().unwrap();
    let start = hm.history().len();

    for _ in 0..5 {
        hm.signal(SIGUSR2);
    }
    wait_reload_ok(&mut hm, w0, "first reload of the storm");
    // The master has acted on all five signals once this returns: at most one more reload,
    // queued while the first ran.
    hm.settle_reloads();
    let worker = hm.current_worker_pid().unwrap();
    let reloads = hm.history()[start..]
        .iter()
        .filter(|d| is_reloading(d))
        .count();
    assert!(
        hm.history()[start..]
            .iter()
            .filter(|d| has_line(d, "READY=1"))
            .all(|d| is_serving(d)),
        "a reload of the storm failed:\n{}",
        hm.history_text()
    );
    assert!(
        (1..=2).contains(&reloads),
        "5 quick SIGUSR2 gave {reloads} reloads (want 1 or 2):\n{}",
        hm.history_text()
    );
    assert_eq!(hm.current_worker_pid(), Some(worker));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    wait_only_child(master, worker, EVENT);
    assert!(hm.stop().success());
}

/// haproxy (2.3+, seen with 2.6.12) does not take over a `[::1]:P` socket bound without `v6only`:
/// it binds a new one. The master cannot change that, but must say so, with the fix.
#[test]
fn rebound_ipv6_listener_is_reported_with_its_fix() {
    let port = free_port();
    let cfg = http_config(&[format!("[::1]:{port}")]);
    let mut hm = Hapmaster::start_ready(cfg.as_str(), &[]);
    let old = hm.current_worker_pid().unwrap();
    hm.signal(SIGUSR2);
    wait_reload_ok(&mut hm, old, "reload");
    let wanted = format!("bound a new socket for [::1]:{port}");
    let stderr = poll_until(EVENT, || {
        let s = hm.stderr();
        s.contains(&wanted).then_some(s)
    })
    .unwrap_or_else(|| panic!("no warning {wanted:?} in stderr:\n{}", hm.stderr()));
    assert!(
        stderr.contains("v6only"),
        "the warning should name the fix:\n{stderr}"
    );
    assert_eq!(
        http_get(format!("[::1]:{port}")).unwrap(),
        HELLO,
        "still served after the reload"
    );
    assert!(hm.stop().success());
}

/// SIGUSR1 is haproxy's soft stop: workers finish their connections, then the master exits 0.
#[test]
fn sigusr1_soft_stops_then_exits() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let worker = hm.current_worker_pid().unwrap();
    // An idle keep-alive-less connection that is open when the soft stop starts.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    hm.signal(SIGUSR1);
    let d = hm.wait_notify(|d| has_line(d, "STOPPING=1"), EVENT);
    assert!(notify_field(&d, "STATUS").is_some(), "{d:?}");
    // The connection accepted before the soft stop is still served.
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.ends_with(HELLO), "reply after soft stop: {reply:?}");
    let status = hm
        .wait_exit(EVENT)
        .expect("master did not exit after SIGUSR1");
    assert!(status.success(), "exit status after SIGUSR1: {status}");
    assert!(!pid_alive(worker), "worker {worker} still alive");
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
}

/// Every reload says in the log who asked for it: the CLI client (pid, uid, socket), or the
/// signal and the process that sent it.
#[test]
fn reload_log_names_who_asked() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
    let me = std::process::id();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    // `cli` connects from this very process.
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    let by_cli = format!(
        "reload requested by master CLI client pid {me} (uid {uid}) on {}",
        hm.runtime_dir.join("master.sock").display()
    );
    assert!(
        hm.stderr().contains(&by_cli),
        "no {by_cli:?} in:\n{}",
        hm.stderr()
    );
    // The reload notified before it answered: this consumes its datagrams.
    let old = hm.wait_serving(EVENT);
    hm.signal(SIGUSR2);
    wait_reload_ok(&mut hm, old, "reload by SIGUSR2");
    let by_signal = format!("reload requested by SIGUSR2 from pid {me} (uid {uid})");
    assert!(
        hm.stderr().contains(&by_signal),
        "no {by_signal:?} in:\n{}",
        hm.stderr()
    );
    assert!(hm.stop().success());
}
