//! The pass-through half of the argv contract, checked against the real haproxy: what
//! `options::parse` leaves in `worker_args` must be an argv haproxy itself accepts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use hapmaster::options::{parse, Command};

const HAPROXY: &str = "/usr/sbin/haproxy";

fn temp_config(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("hm-opts-{tag}-{}.cfg", std::process::id()));
    std::fs::write(
        &path,
        "defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    \
         timeout connect 1s\nfrontend f\n    bind 127.0.0.1:65000\n",
    )
    .unwrap();
    path
}

/// Runs `haproxy -c` with the worker args and config files of a parsed hapmaster command line.
fn haproxy_check(args: &[&str]) -> std::process::Output {
    let parsed = parse(args.iter().map(OsString::from)).unwrap();
    let Command::Run(o) = parsed else {
        panic!("expected Run, got {parsed:?}");
    };
    let mut cmd = Process::new(HAPROXY);
    cmd.arg("-c").arg("-db").args(&o.worker_args);
    for f in &o.config_files {
        cmd.arg("-f").arg(f);
    }
    cmd.output().unwrap()
}

#[test]
fn passed_through_flags_are_valid_haproxy_argv() {
    if !Path::new(HAPROXY).exists() {
        return;
    }
    let cfg = temp_config("pass");
    let cfg_s = cfg.to_str().unwrap();
    let out = haproxy_check(&[
        "-Ws",
        "-D",
        "-x",
        "/run/old.sock",
        "-sf",
        "1",
        "2",
        "-p",
        "/nonexistent/pid",
        "-S",
        "/run/m.sock",
        "-q",
        "-n",
        "100",
        "-N",
        "10",
        "-L",
        "peer1",
        "-m",
        "64",
        "-dW",
        "-dr",
        "-f",
        cfg_s,
    ]);
    std::fs::remove_file(&cfg).unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn config_after_double_dash_reaches_haproxy() {
    if !Path::new(HAPROXY).exists() {
        return;
    }
    let cfg = temp_config("dashdash");
    let out = haproxy_check(&["-Ws", "-V", "--", cfg.to_str().unwrap()]);
    std::fs::remove_file(&cfg).unwrap();
    assert!(out.status.success(), "{out:?}");
}
