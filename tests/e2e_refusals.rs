//! What hapmaster refuses before a worker runs it (issue 11): `master-worker` in the
//! configuration (real haproxy, which accepts the keyword and would fork a worker of its own),
//! at start, with `-c`, and arriving with a reload; and a haproxy older than 1.8 (a script that
//! answers `-v` as haproxy 1.7 does: a fault the installed haproxy cannot produce).
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `http_config` with `line` added to its global section (second line of the file).
fn config_with_global_line(port: u16, line: &str) -> String {
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let (global, rest) = config.split_once('\n').unwrap();
    assert_eq!(global, "global");
    format!("global\n    {line}\n{rest}")
}

/// An executable `#!/bin/sh` script.
fn script(path: &Path, body: &str) -> PathBuf {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// The master exited 1 before starting any worker: no worker line in its log, no runtime
/// directory made, nothing listening on `port`, no process left naming the test's files.
fn assert_refused_before_any_worker(hm: &mut Hapmaster, port: u16) -> String {
    let status = hm
        .wait_exit(EVENT)
        .unwrap_or_else(|| panic!("hapmaster did not exit within {EVENT:?}"));
    let log = hm.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        !log.contains("starting worker"),
        "a worker was started:\n{log}"
    );
    assert!(
        !hm.runtime_dir.exists(),
        "the runtime directory was made before the refusal:\n{log}"
    );
    assert!(
        tcp_listen_inodes(port).is_empty(),
        "something listens on {port}"
    );
    let left = pids_with_cmdline_containing(hm.dir());
    assert!(left.is_empty(), "processes left: {left:?}\n{log}");
    let failed = hm
        .history()
        .iter()
        .find(|d| notify_field(d, "STATUS").is_some_and(|s| s.starts_with("Failed to start: ")))
        .cloned();
    assert!(
        failed.is_some(),
        "no STATUS=Failed to start:\n{}",
        hm.history_text()
    );
    log
}

#[test]
fn master_worker_in_global_is_refused_at_start() {
    let port = free_port();
    let config = config_with_global_line(port, "master-worker");
    let mut hm = Hapmaster::start(config.as_str(), &[]);
    let log = assert_refused_before_any_worker(&mut hm, port);
    let expected = format!(
        "refusing to start: {}:2: `master-worker`",
        hm.cfg_path.display()
    );
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    assert!(log.contains("hapmaster is the master"), "{log}");
    assert!(log.contains("remove the keyword"), "{log}");
}

#[test]
fn master_worker_is_refused_by_the_configuration_check() {
    let dir = TestDir::new();
    let conf = dir.join("conf.d");
    fs::create_dir(&conf).unwrap();
    let port = free_port();
    fs::write(
        conf.join("10-main.cfg"),
        http_config(&[format!("127.0.0.1:{port}")]),
    )
    .unwrap();
    let late = conf.join("20-late.cfg");
    fs::write(&late, "global\n  master-worker no-exit-on-failure\n").unwrap();
    let out = hapmaster_command(&dir.join("rt"), &["-c"], &conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = format!("{}:2: `master-worker no-exit-on-failure`", late.display());
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");

    // Without it, the check is haproxy's and passes.
    fs::remove_file(&late).unwrap();
    let out = hapmaster_command(&dir.join("rt"), &["-c"], &conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn master_worker_arriving_by_reload_fails_it_and_the_old_worker_serves() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    let old = hm.current_worker_pid().unwrap();
    let inodes = tcp_listen_inodes(port);

    hm.write_config(&config_with_global_line(port, "master-worker"));
    let answer = hm.cli("reload");
    let expected = format!("{}:2: `master-worker`", hm.cfg_path.display());
    assert!(answer.starts_with("Success=0\n"), "{answer}");
    assert!(
        answer.contains(&expected),
        "expected {expected:?} in:\n{answer}"
    );
    assert!(answer.contains("hapmaster is the master"), "{answer}");

    hm.wait_notify(is_reloading, EVENT);
    let status = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&status), "{status}");
    assert!(status.contains(&expected), "{status}");
    assert_eq!(worker_pid_in(&status), Some(old), "{status}");

    // No process ever ran the refused files: the old worker is the master's only child, it
    // still serves, and the listening sockets are the same.
    let log = hm.stderr();
    assert!(!log.contains("starting worker generation 2"), "{log}");
    assert!(!log.contains("(generation 2) started"), "{log}");
    assert!(
        log.contains(&format!("reload failed: worker generation 2: {expected}")),
        "{log}"
    );
    let kids: Vec<u32> = children_of(hm.pid()).iter().map(|k| k.pid).collect();
    assert_eq!(kids, [old], "{log}");
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert_eq!(tcp_listen_inodes(port), inodes);
    let proc = hm.cli("show proc");
    assert!(proc.contains(&format!("\n{old} ")), "{proc}");

    // The files fixed, a reload serves them.
    hm.write_config(&good);
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1\n"), "{answer}");
    let new = hm.wait_serving(EVENT);
    assert_ne!(new, old);
    hm.stop();
}

#[test]
fn haproxy_older_than_1_8_is_refused_before_any_worker() {
    let dir = TestDir::new();
    let started = dir.join("worker-started");
    let old = script(
        &dir.join("haproxy-1.7"),
        &format!(
            "case \"$1\" in -v|-vv) echo 'HA-Proxy version 1.7.14 2021/03/31'; \
             echo 'Copyright 2000-2021 Willy Tarreau <willy@haproxy.org>'; exit 0;; esac\n\
             echo \"$@\" >> {}\nexit 1",
            started.display()
        ),
    );
    let port = free_port();
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_in(dir, config.as_str(), &["--haproxy", old.to_str().unwrap()]);
    let log = assert_refused_before_any_worker(&mut hm, port);
    let expected = format!("refusing to start: {} is haproxy 1.7.14", old.display());
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    assert!(log.contains("supports haproxy 1.8 and later"), "{log}");
    assert!(
        !started.exists(),
        "the old haproxy was started as a worker:\n{log}"
    );
}

#[test]
fn an_unreadable_version_is_a_warning_only() {
    let dir = TestDir::new();
    let custom = script(
        &dir.join("haproxy-custom"),
        &format!(
            "case \"$1\" in -v) echo 'custom proxy build'; exit 0;; esac\nexec {} \"$@\"",
            haproxy_path().display()
        ),
    );
    let port = free_port();
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_in(
        dir,
        config.as_str(),
        &["--haproxy", custom.to_str().unwrap()],
    );
    hm.wait_serving(EVENT);
    let log = hm.stderr();
    let expected = format!(
        "cannot tell which haproxy version {} is (`-v` printed \"custom proxy build\")",
        custom.display()
    );
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    hm.stop();
}
