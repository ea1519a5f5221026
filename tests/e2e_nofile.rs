//! Open-file limits: a master started with a low soft limit (systemd's default is 1024) raises
//! it; a reload holds the listeners once plus one batch of received copies, so a config of N
//! listeners reloads under a limit a little above N; and a limit too low for that makes the
//! reload fail with the number it needs.
mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const LISTENERS: usize = 300;

/// `http_config` with a small `maxconn`: haproxy 2.6 and later exit at start (strict-limits)
/// when their own fd need (listeners + 2 × maxconn + ...) is above the hard limit they inherit.
fn small_config(binds: &[String], maxconn: usize) -> String {
    let cfg = http_config(binds);
    assert!(cfg.contains("maxconn 4000"), "{cfg}");
    cfg.replace("maxconn 4000", &format!("maxconn {maxconn}"))
}

/// Sets hapmaster's soft RLIMIT_NOFILE to `soft` between fork and exec.
fn limit_soft_nofile(cmd: &mut Command, soft: u64) {
    // SAFETY: only getrlimit/setrlimit between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = soft;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets the RLIMIT_NOFILE of the running process `pid` to `soft` (and `hard`, when given).
fn set_nofile(pid: u32, soft: u64, hard: Option<u64>) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit only reads the old one into `old`.
    let got = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    assert_eq!(got, 0, "{}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard.unwrap_or(old.rlim_max),
    };
    // SAFETY: both pointers are valid for the call.
    let set = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn low_soft_nofile_limit_does_not_break_reloads() {
    let dir = TestDir::new();
    let ports = free_ports(LISTENERS);
    let binds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, http_config(&binds)).unwrap();
    let rt = dir.join("rt");
    let mut cmd = hapmaster_command(&rt, &[], &cfg);
    cmd.stderr(Stdio::null());
    // 256 < 300 held sockets.
    limit_soft_nofile(&mut cmd, 256);
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let master = child.id();
    let last = format!("127.0.0.1:{}", ports[LISTENERS - 1]);
    assert!(
        poll_until(EVENT, || http_get(last.as_str()).ok()).is_some(),
        "not serving"
    );
    let limits = std::fs::read_to_string(format!("/proc/{master}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft limit not raised to the hard one: {line}");
    let inode = tcp4_listen_inodes(ports[0]);
    let out = Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args(["reload", "-S"])
        .arg(rt.join("master.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reload with {LISTENERS} listeners: {text}"
    );
    assert_eq!(tcp4_listen_inodes(ports[0]), inode, "listener changed");
    assert_eq!(http_get(last.as_str()).unwrap(), HELLO);
    let status = child.stop(EVENT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// 9 000 listeners under a limit of 10 000 (soft and hard, as `LimitNOFILE=10000`): holding
/// them twice during a reload (the held copies and the new worker's) cannot fit; holding them
/// once plus a batch does.
#[test]
fn reload_of_9000_listeners_fits_under_a_limit_of_10000() {
    const MANY: usize = 9_000;
    const LIMIT: u64 = 10_000;
    let ports = free_ports(MANY);
    let binds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut hm = Hapmaster::start_ready(small_config(&binds, 20), &[]);
    let first = hm.current_worker_pid().unwrap();
    set_nofile(hm.pid(), LIMIT, Some(LIMIT));
    let inodes = [ports[0], ports[MANY - 1]].map(tcp4_listen_inodes);
    let second = soak::reload_once(&mut hm, first, "9000 listeners under 10000");
    // The new worker took every socket over: same listeners, and it answers on them.
    assert_eq!([ports[0], ports[MANY - 1]].map(tcp4_listen_inodes), inodes);
    for port in [ports[0], ports[MANY / 2], ports[MANY - 1]] {
        assert_eq!(
            http_get(format!("127.0.0.1:{port}").as_str()).unwrap(),
            HELLO
        );
    }
    assert!(pid_alive(second));
    hm.stop();
}

/// A soft limit too low for a reload: the reload fails with the limit the master needs, and
/// that limit, set live, is enough for the next reload.
#[test]
fn a_limit_too_low_for_a_reload_names_the_limit_it_needs() {
    const SOME: usize = 600;
    let ports = free_ports(SOME);
    let binds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut hm = Hapmaster::start_ready(small_config(&binds, 10), &[]);
    // Room for the held sockets, not for a batch of the new worker's copies on top.
    let low = (SOME + 100) as u64;
    set_nofile(hm.pid(), low, None);
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=0"), "{answer}");
    let needed: u64 = answer
        .split("LimitNOFILE=")
        .skip(1)
        .find_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no LimitNOFILE=<number> in the answer: {answer}"));
    assert!(
        needed > low && needed > SOME as u64,
        "asks for {needed} with {SOME} listeners under {low}: {answer}"
    );
    assert!(answer.contains("ulimit -n"), "{answer}");
    assert_eq!(
        http_get(format!("127.0.0.1:{}", ports[0]).as_str()).unwrap(),
        HELLO
    );
    set_nofile(hm.pid(), needed, None);
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    hm.stop();
}
