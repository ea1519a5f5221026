//! Upgrade in place: the hapmaster binary is replaced on disk (as a package upgrade does), and
//! SIGURG makes the master re-execute it: same pid, same workers, same listening sockets, and
//! no failed request under load.
mod common;

use common::soak::{settled_fd_count, wait_fd_count};
use common::*;
use std::fs;
use std::path::Path;

/// These tests write executables: a concurrent test's fork could inherit the write fd for an
/// instant and make the exec fail with ETXTBSY. One at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Replaces `binary` the way dpkg does: a new file renamed over the old one (a new inode).
fn replace_binary(binary: &Path) {
    let new = binary.with_extension("new");
    fs::copy(env!("CARGO_BIN_EXE_hapmaster"), &new).unwrap();
    fs::rename(&new, binary).unwrap();
}

fn exe_link(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn upgrade_in_place_under_load() {
    let _serial = serial();
    let dir = TestDir::new();
    let binary = dir.join("hapmaster");
    fs::copy(env!("CARGO_BIN_EXE_hapmaster"), &binary).unwrap();
    let port = free_port();
    let fe = dir.join("fe.sock");
    let cfg = http_config(&[
        format!("127.0.0.1:{port}"),
        format!("unix@{}", fe.display()),
    ]);
    let mut hm = Hapmaster::start_binary_in(&binary, dir, cfg, &[]);
    let worker = hm.wait_serving(EVENT);
    let master = hm.pid();
    let watchdog = watchdog_pid_in(&hm.stderr()).expect("no `watchdog pid N` in the log");
    let inodes = || (tcp4_listen_inodes(port), unix_listen_inodes(&fe));
    let base = inodes();
    assert_eq!((base.0.len(), base.1.len()), (1, 1), "{base:?}");
    let targets: Vec<Target> = vec![format!("127.0.0.1:{port}").into(), fe.clone().into()];
    let load = Load::start(&targets, 20);
    poll_until(EVENT, || (load.ok_so_far() >= 100).then_some(()))
        .expect("no answers before the upgrade");
    let fds_before = settled_fd_count(master);
    let listing_before = fd_listing(master);

    replace_binary(&binary);
    assert!(
        exe_link(master).ends_with("(deleted)"),
        "{}",
        exe_link(master)
    );
    hm.signal(SIGURG);
    let d = hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
    assert!(has_line(&d, "READY=1"), "{d:?}");
    assert_eq!(
        worker_pid_in(&d),
        Some(worker),
        "the same worker serves: {d:?}"
    );
    assert!(pid_alive(master), "master died in the upgrade");
    assert_eq!(hm.pid(), master);
    assert!(
        !exe_link(master).ends_with("(deleted)"),
        "the master still runs the old binary: {}",
        exe_link(master)
    );
    assert_eq!(inodes(), base, "listening sockets changed in the upgrade");
    assert_eq!(
        children_of(master)
            .iter()
            .map(|c| c.pid)
            .collect::<Vec<_>>(),
        vec![worker],
        "the worker should still be the master's only child"
    );
    wait_fd_count(master, fds_before, &listing_before, EVENT);
    // The exec kept the process, so neither the worker's parent-death signal nor the watchdog
    // (which watches the process, not the image) took it for a death.
    assert!(
        is_watchdog_of(watchdog, master),
        "watchdog {watchdog} gone after the upgrade"
    );
    assert!(!hm.stderr().contains("died"), "{}", hm.stderr());

    // The new image reloads with the sockets it took over.
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "reload after the upgrade failed: {d:?}");
    assert_ne!(worker_pid_in(&d), Some(worker));
    assert_eq!(inodes(), base, "listening sockets changed in the reload");

    let report = load.stop();
    eprintln!("load during the upgrade in place and a reload: {report}");
    assert_eq!(report.failed, 0, "requests failed: {report}");
    assert!(hm.stop().success());
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
    poll_until(EVENT, || (!pid_alive(watchdog)).then_some(()))
        .expect("the watchdog outlived its stopped master");
}

/// A binary that cannot be executed leaves the master running as it was.
#[test]
fn failed_upgrade_keeps_running() {
    let _serial = serial();
    let dir = TestDir::new();
    let binary = dir.join("hapmaster");
    fs::copy(env!("CARGO_BIN_EXE_hapmaster"), &binary).unwrap();
    let port = free_port();
    let mut hm = Hapmaster::start_binary_in(
        &binary,
        dir,
        http_config(&[format!("127.0.0.1:{port}")]),
        &[],
    );
    let worker = hm.wait_serving(EVENT);
    let master = hm.pid();
    let fds_before = settled_fd_count(master);
    let listing_before = fd_listing(master);
    fs::remove_file(&binary).unwrap();
    hm.signal(SIGURG);
    let d = hm.wait_notify(|d| d.contains("upgrade in place failed"), EVENT);
    assert_eq!(worker_pid_in(&d), Some(worker), "{d:?}");
    assert!(pid_alive(master));
    wait_fd_count(master, fds_before, &listing_before, EVENT);
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    // Signals still work after the failed exec restored the mask.
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "{d:?}");
    assert!(hm.stop().success());
}
