//! hapmaster running haproxy 1.5, 1.6 and 1.7 (issue 16): releases without `-x`, `expose-fd
//! listeners` or `_getsocks`. Each worker loads hapmaster's preload library, which hands it the
//! master's held socket at each listener's bind(), so reloads are seamless as from 1.8 on. The
//! binaries are built by `tests/old-haproxy/build.sh`; `HAPMASTER_TEST_OLD_HAPROXY` names the
//! directory holding them (`target/old-haproxy`, one `<version>/haproxy` each). Without it each
//! test prints a `skipped` line and passes.
//!
//! What is checked, for each of 1.5.19, 1.6.16 and 1.7.14 (the kernel's word: the inodes in
//! `/proc/net/tcp` and `/proc/net/unix`, and in each process's fd table):
//! - reloads under load: 20 reloads paced 100 ms apart under 20 clients fail no request, and each
//!   new worker listens on the socket the master holds (one inode throughout, so no
//!   `SO_REUSEPORT` double bind); a broken configuration's reload fails and the old worker keeps
//!   serving; a SIGKILLed worker is replaced with no connect refused; a stop exits 0 and
//!   removes the runtime directory, the preload library with it;
//! - a port added at a reload is held (it outlives a worker SIGKILL), and a port removed is
//!   closed once the old worker is gone;
//! - a unix socket keeps its inode and its mode 600 across reloads, and no `*.tmp` is left;
//! - a haproxy that does not load the library (LD_PRELOAD unset by a wrapper script) is refused:
//!   at the start hapmaster exits with an error; at a reload the reload fails, the old worker
//!   keeps serving, and the second socket the refused worker bound goes with it;
//! - (1.7.14 only) an upgrade in place that finds the binary switched from the system haproxy
//!   (1.8+, `-x`) to 1.7 and back: each next worker takes over the same socket, by either
//!   mechanism, under load.
//!
//! Workers started through a wrapper script (`#!/bin/sh` + `exec haproxy`) load the library
//! too: the shell loads it first, and `LD_PRELOAD` and the channel stay for its exec until the
//! image that binds the first listener (haproxy) takes them out of its environment.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::soak::{assert_only_cut_in_flight, reload_once, wait_only_child};
use common::*;

const CLIENTS: usize = 20;
const RELOADS: u32 = 20;
const PACE: Duration = Duration::from_millis(100);

/// [`old_http_config`] with these `bind` lines.
fn old_http_config_binds(binds: &[String]) -> String {
    let mut c = String::from(
        "global\n    maxconn 100\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
         timeout server 10s\n\n\
         frontend fe\n",
    );
    for b in binds {
        c.push_str(&format!("    bind {b}\n"));
    }
    c.push_str("    monitor-uri /\n");
    c
}

fn serves_target(target: impl Into<Target>) -> Result<String, String> {
    match http_get(target) {
        Ok(body) if body.contains(MONITOR_BODY) => Ok(body),
        Ok(body) => Err(format!("unexpected body {body:?}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn serves(port: u16) -> Result<String, String> {
    serves_target(format!("127.0.0.1:{port}"))
}

/// Panics unless 127.0.0.1:`port` answers.
fn assert_serves(port: u16, what: &str) {
    assert_eq!(serves(port).map(|_| ()), Ok(()), "{what}: port {port}");
}

/// Panics unless `show proc` lists worker `pid` with `version`.
fn assert_proc_version(hm: &Hapmaster, pid: u32, version: &str) {
    let line = proc_line(hm, pid).unwrap_or_else(|| panic!("{}", hm.cli("show proc")));
    assert!(
        line.split_whitespace().any(|w| w == version),
        "show proc should name {version} for worker {pid}: {line:?}"
    );
}

/// Waits until `pid` is the only worker hapmaster reported that still runs.
fn wait_only_worker(hm: &Hapmaster, pid: u32) {
    let only = poll_until(EVENT, || {
        (hm.live_reported_workers() == [pid]).then_some(())
    });
    assert!(
        only.is_some(),
        "worker {pid} should be the only one left; live: {:?}",
        hm.live_reported_workers()
    );
}

/// The one inode listening on 127.0.0.1:`port`, which `holders` all hold.
fn held_listener(port: u16, holders: &[u32], what: &str) -> u64 {
    let inodes = tcp4_listen_inodes(port);
    assert_eq!(
        inodes.len(),
        1,
        "{what}: one socket should listen on {port}: {inodes:?}"
    );
    let inode = *inodes.first().unwrap();
    for pid in holders {
        assert!(
            socket_inodes(*pid).contains(&inode),
            "{what}: pid {pid} should hold socket {inode} listening on {port}; holders among \
             {holders:?}: {:?}",
            listen_holders(port, holders)
        );
    }
    inode
}

/// Whether `pid` has hapmaster's preload library mapped (the wrapper scripts exec haproxy in
/// the process hapmaster started, which loaded the library first).
fn maps_preload(pid: u32) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .any(|l| l.contains("/preload-") && l.ends_with(".so"))
}

/// `path`: a script that runs `haproxy` without hapmaster's preload library, as a loader that
/// ignores LD_PRELOAD (setuid, file capabilities, a static build) would.
fn point_wrapper_without_preload(path: &Path, haproxy: &Path) {
    point_wrapper_with(path, "unset LD_PRELOAD\n", haproxy);
}

/// 20 reloads under load, a broken configuration's reload, a SIGKILL under load, a stop.
fn reloads_and_crash_under_load(version: &str) {
    let Some(haproxy) = old_haproxy(version) else {
        return;
    };
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let config = old_http_config(port);
    let mut hm = Hapmaster::start(config.as_str(), &["--haproxy", haproxy.to_str().unwrap()]);
    let master = hm.pid();
    let mut worker = hm.wait_serving(EVENT);
    assert_serves(port, "first worker");
    assert_proc_version(&hm, worker, version);
    // The master CLI forwards to the worker's stats socket (`show info` exists since 1.5).
    let info = hm.cli("@1 show info");
    assert!(info.contains(&format!("Pid: {worker}\n")), "{info}");
    // The first worker bound the socket itself and reported it: the master holds it.
    assert_eq!(
        listen_holders(port, &[master, worker]),
        [master, worker],
        "the master should hold the first worker's socket"
    );
    let base = held_listener(port, &[master, worker], "first worker");

    let load = Load::start(std::slice::from_ref(&target), CLIENTS);
    poll_until(EVENT, || (load.ok_so_far() >= 100).then_some(()))
        .expect("the load generator got no answers before the reloads");
    let paced_from = Instant::now();
    for i in 1..=RELOADS {
        // Whatever comes before the next mark is no reload's datagram.
        let mark = paced_from + PACE * (i - 1);
        let between = hm.collect_notify(mark.saturating_duration_since(Instant::now()));
        assert!(
            !between
                .iter()
                .any(|d| is_reloading(d) || has_line(d, "READY=1")),
            "reload {i}: unexpected datagrams between reloads: {between:?}"
        );
        let new = reload_once(&mut hm, worker, &format!("reload {i}/{RELOADS}"));
        // A new worker that bound its own socket (SO_REUSEPORT) would show as a second inode.
        assert_eq!(
            held_listener(port, &[master, new], &format!("reload {i}")),
            base,
            "reload {i}: the listening socket changed"
        );
        worker = new;
    }
    let reloads_took = paced_from.elapsed();
    load.wait_every_client_moved_on();
    assert_eq!(
        load.failed_so_far(),
        0,
        "requests failed during the reloads ({} served)",
        load.ok_so_far()
    );
    let served_by_reloads = load.ok_so_far();

    // A configuration haproxy refuses: the reload fails, the old worker keeps serving.
    hm.write_config(&format!("{config}    this_is_not_a_keyword 42\n"));
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected STATUS=Reload failed: {d:?}");
    assert_eq!(worker_pid_in(&d), Some(worker), "{d:?}");
    wait_only_worker(&hm, worker);
    assert_serves(port, "old worker after the failed reload");
    assert_proc_version(&hm, worker, version);
    assert_eq!(
        held_listener(port, &[master, worker], "after the failed reload"),
        base
    );
    hm.write_config(&config);
    load.wait_every_client_moved_on();
    assert_eq!(
        load.failed_so_far(),
        0,
        "requests failed at the failed reload"
    );

    // A crashed worker is replaced; connections wait in the master's copy of the socket meanwhile.
    let ok_before = load.ok_so_far();
    kill(worker, SIGKILL).unwrap();
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(worker), EVENT);
    let replacement = worker_pid_in(&d).unwrap();
    assert_eq!(
        held_listener(port, &[master, replacement], "replacement"),
        base,
        "the listening socket changed at the crash"
    );
    load.wait_every_client_moved_on();
    assert!(
        load.ok_so_far() > ok_before,
        "the replacement worker {replacement} served nothing"
    );
    let report = load.stop();
    eprintln!(
        "haproxy {version}: {RELOADS} reloads paced {PACE:?} took {reloads_took:.1?}, \
         {served_by_reloads} requests served and 0 failed until the crash; load in all: {report}"
    );
    assert_only_cut_in_flight(&report);
    assert!(
        report.failed <= CLIENTS,
        "more failures than requests in flight at the kill: {report}"
    );
    assert_serves(port, "replacement");
    wait_only_child(master, replacement, EVENT);

    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
    // The preload library goes with the master's other runtime files, and so the directory
    // hapmaster made.
    assert!(
        !hm.runtime_dir.exists(),
        "{} is left: {:?}",
        hm.runtime_dir.display(),
        std::fs::read_dir(&hm.runtime_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

#[test]
fn haproxy_1_5_19_reloads_and_crash_under_load() {
    reloads_and_crash_under_load("1.5.19");
}

#[test]
fn haproxy_1_6_16_reloads_and_crash_under_load() {
    reloads_and_crash_under_load("1.6.16");
}

#[test]
fn haproxy_1_7_14_reloads_and_crash_under_load() {
    reloads_and_crash_under_load("1.7.14");
}

/// A port added at a reload is held by the master; a port removed is closed once the old worker
/// is gone (the master lets go of it at the commit).
fn bind_added_and_removed(version: &str) {
    let Some(haproxy) = old_haproxy(version) else {
        return;
    };
    let ports = free_ports(2);
    let (a, b) = (ports[0], ports[1]);
    let only_a = old_http_config(a);
    let mut hm = Hapmaster::start(only_a.as_str(), &["--haproxy", haproxy.to_str().unwrap()]);
    let master = hm.pid();
    let first = hm.wait_serving(EVENT);
    let inode_a = held_listener(a, &[master, first], "first worker");
    assert!(
        tcp4_listen_inodes(b).is_empty(),
        "nothing listens on {b} yet"
    );

    hm.write_config(&old_http_config_binds(&[
        format!("127.0.0.1:{a}"),
        format!("127.0.0.1:{b}"),
    ]));
    let second = reload_once(&mut hm, first, "adding port B");
    assert_eq!(held_listener(a, &[master, second], "port A"), inode_a);
    assert_eq!(
        listen_holders(b, &[master, second]),
        [master, second],
        "the master should hold the added port {b}"
    );
    let inode_b = held_listener(b, &[master, second], "added port B");
    assert_serves(b, "added port B");

    // The added port outlives its worker: the replacement takes the master's copy.
    kill(second, SIGKILL).unwrap();
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(second), EVENT);
    let third = worker_pid_in(&d).unwrap();
    assert_serves(b, "replacement on port B");
    assert_eq!(held_listener(b, &[master, third], "port B"), inode_b);
    assert_eq!(held_listener(a, &[master, third], "port A"), inode_a);

    hm.write_config(&only_a);
    let fourth = reload_once(&mut hm, third, "removing port B");
    wait_only_worker(&hm, fourth);
    assert_eq!(held_listener(a, &[master, fourth], "port A"), inode_a);
    assert_eq!(
        tcp4_listen_inodes(b),
        Default::default(),
        "port {b} was removed: nothing should listen on it"
    );
    match std::net::TcpStream::connect(("127.0.0.1", b)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("connecting to the removed port {b}: {other:?}"),
    }
    assert_serves(a, "port A");
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}

#[test]
fn haproxy_1_5_19_bind_added_and_removed() {
    bind_added_and_removed("1.5.19");
}

#[test]
fn haproxy_1_6_16_bind_added_and_removed() {
    bind_added_and_removed("1.6.16");
}

#[test]
fn haproxy_1_7_14_bind_added_and_removed() {
    bind_added_and_removed("1.7.14");
}

/// `bind <path> mode 600`: the socket file keeps its inode and its mode across reloads (haproxy
/// before 1.8 would bind `<path>.<pid>.tmp` and rename it over the path), and no `*.tmp` file is
/// left behind.
fn unix_bind_keeps_inode_and_mode(version: &str) {
    use std::os::unix::fs::PermissionsExt;
    let Some(haproxy) = old_haproxy(version) else {
        return;
    };
    let dir = TestDir::new();
    let sock = dir.join("fe.sock");
    let port = free_port();
    let config = old_http_config_binds(&[
        format!("127.0.0.1:{port}"),
        format!("{} mode 600", sock.display()),
    ]);
    let mut hm = Hapmaster::start_in(dir, config, &["--haproxy", haproxy.to_str().unwrap()]);
    let master = hm.pid();
    let mut worker = hm.wait_serving(EVENT);
    let base = unix_listen_inodes(&sock);
    assert_eq!(base.len(), 1, "one socket listening at {}", sock.display());
    let check = |hm: &Hapmaster, worker: u32, what: &str| {
        assert_eq!(
            unix_listen_inodes(&sock),
            base,
            "{what}: the socket at {} changed",
            sock.display()
        );
        let held = base.first().unwrap();
        for pid in [master, worker] {
            assert!(
                socket_inodes(pid).contains(held),
                "{what}: {pid} holds {held}"
            );
        }
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{what}: mode of {}: {mode:o}", sock.display());
        assert_eq!(
            serves_target(sock.as_path()).map(|_| ()),
            Ok(()),
            "{what}: request over {}",
            sock.display()
        );
        let tmp: Vec<String> = std::fs::read_dir(hm.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(tmp.is_empty(), "{what}: left in {:?}: {tmp:?}", hm.dir());
    };
    check(&hm, worker, "first worker");
    for i in 1..=3 {
        let what = format!("reload {i}/3");
        worker = reload_once(&mut hm, worker, &what);
        check(&hm, worker, &what);
    }
    wait_only_worker(&hm, worker);
    check(&hm, worker, "after the old workers left");
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}

#[test]
fn haproxy_1_5_19_unix_bind_keeps_inode_and_mode() {
    unix_bind_keeps_inode_and_mode("1.5.19");
}

#[test]
fn haproxy_1_6_16_unix_bind_keeps_inode_and_mode() {
    unix_bind_keeps_inode_and_mode("1.6.16");
}

#[test]
fn haproxy_1_7_14_unix_bind_keeps_inode_and_mode() {
    unix_bind_keeps_inode_and_mode("1.7.14");
}

const NO_PRELOAD: &str = "did not load hapmaster's preload library";

/// A first worker that did not load the preload library: hapmaster exits with an error saying
/// so, and leaves nothing listening.
fn start_without_preload_fails(old: &Path) {
    let dir = TestDir::new();
    let wrapper = dir.join("haproxy");
    point_wrapper_without_preload(&wrapper, old);
    let port = free_port();
    let mut hm = Hapmaster::start_in(
        dir,
        old_http_config(port),
        &["--haproxy", wrapper.to_str().unwrap()],
    );
    let status = hm
        .wait_exit(EVENT)
        .unwrap_or_else(|| panic!("hapmaster should exit: {}", hm.stderr()));
    assert!(!status.success(), "{status}: {}", hm.stderr());
    assert!(hm.stderr().contains(NO_PRELOAD), "{}", hm.stderr());
    assert_eq!(
        tcp4_listen_inodes(port),
        Default::default(),
        "nothing should listen on {port} once hapmaster exited"
    );
}

/// A worker that did not load the preload library bound its ports next to the held ones: its
/// reload fails with a message saying why, and its sockets go with it.
fn without_preload_is_refused(version: &str) {
    let Some(old) = old_haproxy(version) else {
        return;
    };
    start_without_preload_fails(&old);
    let dir = TestDir::new();
    let wrapper = dir.join("haproxy");
    point_wrapper(&wrapper, &old);
    let port = free_port();
    let mut hm = Hapmaster::start_in(
        dir,
        old_http_config(port),
        &["--haproxy", wrapper.to_str().unwrap()],
    );
    let master = hm.pid();
    let worker = hm.wait_serving(EVENT);
    assert_serves(port, "first worker");
    assert!(maps_preload(worker), "worker {worker} runs the library");
    let base = held_listener(port, &[master, worker], "first worker");

    point_wrapper_without_preload(&wrapper, &old);
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected STATUS=Reload failed: {d:?}");
    assert_eq!(worker_pid_in(&d), Some(worker), "{d:?}");
    let said = poll_until(EVENT, || hm.stderr().contains(NO_PRELOAD).then_some(()));
    assert!(said.is_some(), "{}", hm.stderr());
    // Once the refused worker is gone, its own socket is gone with it. (Until then its socket,
    // bound next to the held one with SO_REUSEPORT, takes a share of the new connections, and
    // those are reset when it is killed: what the refusal keeps from lasting.)
    wait_only_child(master, worker, EVENT);
    assert_eq!(
        held_listener(port, &[master, worker], "after the refused reload"),
        base
    );
    assert_eq!(listen_holders(port, &[master, worker]), [master, worker]);
    assert_serves(port, "old worker");
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}

#[test]
fn haproxy_1_5_19_without_preload_is_refused() {
    without_preload_is_refused("1.5.19");
}

#[test]
fn haproxy_1_6_16_without_preload_is_refused() {
    without_preload_is_refused("1.6.16");
}

#[test]
fn haproxy_1_7_14_without_preload_is_refused() {
    without_preload_is_refused("1.7.14");
}

/// An upgrade in place finds the binary switched from the system haproxy (1.8+: `-x`) to 1.7.14
/// (the preload library) and back: after each, the next worker takes over the same socket the
/// master holds, and no request fails.
#[test]
fn an_upgrade_in_place_switching_to_1_7_and_back_keeps_the_socket() {
    let Some(mut on) = start_on_wrapper() else {
        return;
    };
    let mut worker = on.hm.wait_serving(EVENT);
    let load = on.load(CLIENTS);
    let OnWrapper {
        mut hm,
        wrapper,
        old,
        system,
        system_version,
        port,
        ..
    } = on;
    let master = hm.pid();
    assert_proc_version(&hm, worker, &system_version);
    let base = held_listener(port, &[master, worker], "first worker");

    for (binary, version) in [(&old, "1.7.14"), (&system, system_version.as_str())] {
        point_wrapper(&wrapper, binary);
        hm.signal(SIGURG);
        hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
        let what = format!("reload onto {version}");
        worker = reload_once(&mut hm, worker, &what);
        assert_proc_version(&hm, worker, version);
        assert_eq!(
            maps_preload(worker),
            binary == &old,
            "{what}: whether worker {worker} runs the preload library"
        );
        assert_eq!(
            held_listener(port, &[master, worker], &what),
            base,
            "{what}: the listening socket changed"
        );
        wait_only_worker(&hm, worker);
        assert_eq!(held_listener(port, &[master, worker], &what), base);
    }
    load.wait_every_client_moved_on();
    let report = load.stop();
    eprintln!("upgrades in place to 1.7.14 and back to {system_version}: {report}");
    assert_eq!(report.failed, 0, "requests failed: {report}");
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}
