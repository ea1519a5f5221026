//! Upgrade in place: the hapmaster binary is replaced on disk (as a package upgrade does), and
//! SIGURG makes the master re-execute it: same pid, same workers, same listening sockets, and
//! no failed request under load.
mod common;

use common::soak::{settled_fd_count, wait_fd_count};
use common::*;
use std::fs;
use std::path::{Path, PathBuf};

/// These tests write executables: a concurrent test's fork could inherit the write fd for an
/// instant and make the exec fail with ETXTBSY. One at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A copy of the hapmaster binary in a fresh dir, for a test to replace, with the lock that
/// keeps the other tests of this file from forking meanwhile.
fn binary_copy() -> (std::sync::MutexGuard<'static, ()>, TestDir, PathBuf) {
    let serial = serial();
    let dir = TestDir::new();
    let binary = dir.join("hapmaster");
    fs::copy(env!("CARGO_BIN_EXE_hapmaster"), &binary).unwrap();
    (serial, dir, binary)
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
    let (_serial, dir, binary) = binary_copy();
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
    let (_serial, dir, binary) = binary_copy();
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

/// One process row of `show proc`.
#[derive(Debug)]
struct ProcRow {
    pid: u32,
    /// `3 [failed: 1]` for the master, `1` for a worker.
    reloads: String,
    uptime_secs: u64,
    version: String,
}

/// haproxy's `0d00h01m02s`.
fn uptime_secs(text: &str) -> Option<u64> {
    let mut total = 0;
    let mut number = 0;
    for c in text.chars() {
        match c {
            '0'..='9' => number = number * 10 + u64::from(c.to_digit(10)?),
            'd' | 'h' | 'm' | 's' => {
                let unit = match c {
                    'd' => 86_400,
                    'h' => 3_600,
                    'm' => 60,
                    _ => 1,
                };
                total += number * unit;
                number = 0;
            }
            _ => return None,
        }
    }
    Some(total)
}

/// The rows of a `show proc` answer, the master's first.
fn proc_rows(show_proc: &str) -> Vec<ProcRow> {
    show_proc
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // The master's reloads column is `N [failed: M]`: three words.
            let n = if cols.get(1) == Some(&"master") { 3 } else { 1 };
            let parsed = (|| {
                Some(ProcRow {
                    pid: cols.first()?.parse().ok()?,
                    reloads: cols.get(2..2 + n)?.join(" "),
                    uptime_secs: uptime_secs(cols.get(2 + n)?)?,
                    version: cols.get(3 + n).copied().unwrap_or_default().to_string(),
                })
            })();
            parsed.unwrap_or_else(|| panic!("unexpected show proc row {line:?} in:\n{show_proc}"))
        })
        .collect()
}

/// What `show proc` says survives the re-exec: the reload and failure counts, the workers'
/// versions, and uptimes that go on counting.
#[test]
fn show_proc_survives_an_upgrade_in_place() {
    let (_serial, dir, binary) = binary_copy();
    let port = free_port();
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_binary_in(&binary, dir, config.clone(), &[]);
    let master = hm.pid();
    hm.wait_serving(EVENT);
    for _ in 0..2 {
        let answer = hm.cli("reload");
        assert!(answer.starts_with("Success=1"), "{answer}");
    }
    hm.write_config(&format!("{config}    this_is_not_a_keyword 42\n"));
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=0"), "{answer}");
    hm.write_config(&config);
    // Each reload notified before it answered: the last `Serving` names the current worker.
    hm.history();
    let worker = hm.current_worker_pid().unwrap();
    // An uptime of 0 s could not show a reset: wait until every row counts at least 1 s.
    let before = poll_until(EVENT, || {
        let text = hm.cli("show proc");
        let rows = proc_rows(&text);
        rows.iter().all(|r| r.uptime_secs >= 1).then_some(text)
    })
    .expect("show proc never showed uptimes of 1 s");
    let rows_before = proc_rows(&before);
    assert_eq!(rows_before[0].pid, master, "{before}");
    // Every attempt counts, as haproxy counts them; the failure is the last one, in a row.
    assert_eq!(rows_before[0].reloads, "3 [failed: 1]", "{before}");
    let current = rows_before.iter().find(|r| r.pid == worker);
    assert!(
        current.is_some_and(|w| !w.version.is_empty()),
        "no version for the current worker {worker}:\n{before}"
    );

    replace_binary(&binary);
    hm.signal(SIGURG);
    hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
    assert!(
        !exe_link(master).ends_with("(deleted)"),
        "the master still runs the old binary: {}",
        exe_link(master)
    );
    let after = hm.cli("show proc");
    let rows_after = proc_rows(&after);
    let both = format!("before:\n{before}\nafter:\n{after}");
    assert_eq!(rows_after[0].pid, master, "{both}");
    assert_eq!(rows_after[0].reloads, rows_before[0].reloads, "{both}");
    assert!(rows_after.iter().any(|r| r.pid == worker), "{both}");
    // Old workers may finish draining in between: every row still there compares.
    for b in &rows_before {
        let Some(a) = rows_after.iter().find(|a| a.pid == b.pid) else {
            continue;
        };
        assert_eq!(a.reloads, b.reloads, "pid {}: {both}", b.pid);
        assert_eq!(a.version, b.version, "pid {}: {both}", b.pid);
        assert!(
            a.uptime_secs >= b.uptime_secs,
            "pid {}: uptime went back: {both}",
            b.pid
        );
    }
    assert!(hm.stop().success());
}
