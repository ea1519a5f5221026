//! What hapmaster refuses before a worker runs it (issue 11): `master-worker` in the
//! configuration (real haproxy, which accepts the keyword and would fork a worker of its own)
//! and `program` sections (issue 13: haproxy runs them only from its own master), at start, with
//! `-c`, and arriving with a reload; and a haproxy older than 1.8 (a script that answers `-v` as
//! haproxy 1.7 does: a fault the installed haproxy cannot produce).
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
    refused_at_start(
        port,
        &config_with_global_line(port, "master-worker"),
        |cfg| format!("{}:2: `master-worker`", cfg.display()),
        &["hapmaster is the master", "remove the keyword"],
    );
}

/// `http_config` with a `program` section after it, and that section's line number.
fn config_with_program(port: u16) -> (String, usize) {
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let line = config.lines().count() + 2;
    (
        format!("{config}\nprogram api\n    command sleep 300\n"),
        line,
    )
}

/// What hapmaster says instead of haproxy's "Can't use a 'program' section without master
/// worker mode", which its workers (run without -W) would say.
const PROGRAM_WHY: &[&str] = &[
    "hapmaster does not run haproxy programs",
    "systemd unit",
    "remove the section",
];

#[test]
fn program_section_is_refused_at_start() {
    let port = free_port();
    let (config, line) = config_with_program(port);
    refused_at_start(
        port,
        &config,
        |cfg| format!("{}:{line}: `program api`", cfg.display()),
        PROGRAM_WHY,
    );
}

/// The master, started on `config`, exits 1 before any worker with `expected(config path)`
/// and each of `why` in its log.
fn refused_at_start(port: u16, config: &str, expected: impl Fn(&Path) -> String, why: &[&str]) {
    let mut hm = Hapmaster::start(config, &[]);
    let log = assert_refused_before_any_worker(&mut hm, port);
    let expected = format!("refusing to start: {}", expected(&hm.cfg_path));
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    for why in why {
        assert!(log.contains(why), "expected {why:?} in:\n{log}");
    }
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
fn program_section_is_refused_by_the_configuration_check() {
    let dir = TestDir::new();
    let port = free_port();
    let (config, line) = config_with_program(port);
    let cfg = dir.join("haproxy.cfg");
    fs::write(&cfg, config).unwrap();
    let out = hapmaster_command(&dir.join("rt"), &["-c"], &cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let expected = format!("{}:{line}: `program api`", cfg.display());
    assert!(err.contains(&expected), "expected {expected:?} in:\n{err}");
    for why in PROGRAM_WHY {
        assert!(err.contains(why), "expected {why:?} in:\n{err}");
    }
}

#[test]
fn master_worker_arriving_by_reload_fails_it_and_the_old_worker_serves() {
    let port = free_port();
    refused_by_reload(
        port,
        &config_with_global_line(port, "master-worker"),
        |cfg| format!("{}:2: `master-worker`", cfg.display()),
        &["hapmaster is the master"],
    );
}

#[test]
fn program_section_arriving_by_reload_fails_it_and_the_old_worker_serves() {
    let port = free_port();
    let (config, line) = config_with_program(port);
    refused_by_reload(
        port,
        &config,
        |cfg| format!("{}:{line}: `program api`", cfg.display()),
        PROGRAM_WHY,
    );
}

/// A reload onto `refused` fails (`Success=0`, `expected(config path)` and each of `why` in its
/// answer) with no worker started, the old one serving; the files fixed, a reload serves them.
fn refused_by_reload(port: u16, refused: &str, expected: impl Fn(&Path) -> String, why: &[&str]) {
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    let old = hm.current_worker_pid().unwrap();
    let inodes = tcp_listen_inodes(port);

    hm.write_config(refused);
    let answer = hm.cli("reload");
    let expected = expected(&hm.cfg_path);
    assert!(answer.starts_with("Success=0\n"), "{answer}");
    assert!(
        answer.contains(&expected),
        "expected {expected:?} in:\n{answer}"
    );
    for why in why {
        assert!(answer.contains(why), "expected {why:?} in:\n{answer}");
    }

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
fn haproxy_older_than_1_5_is_refused_before_any_worker() {
    let dir = TestDir::new();
    let started = dir.join("worker-started");
    let old = script(
        &dir.join("haproxy-1.4"),
        &format!(
            "case \"$1\" in -v|-vv) echo 'HA-Proxy version 1.4.27 2016/01/01'; \
             echo 'Copyright 2000-2016 Willy Tarreau <willy@haproxy.org>'; exit 0;; esac\n\
             echo \"$@\" >> {}\nexit 1",
            started.display()
        ),
    );
    let port = free_port();
    let config = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_in(dir, config.as_str(), &["--haproxy", old.to_str().unwrap()]);
    let log = assert_refused_before_any_worker(&mut hm, port);
    let expected = format!("refusing to start: {} is haproxy 1.4.27", old.display());
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
    assert!(log.contains("supports haproxy 1.5 and later"), "{log}");
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
