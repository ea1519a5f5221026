//! A master started with a low soft open-file limit (systemd's default is 1024) still reloads a
//! config with more listeners than that limit allows it to hold twice: it raises its own limit.
mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const LISTENERS: usize = 300;

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
    // SAFETY: only setrlimit between fork and exec. 256 < 2 × 300 held + received sockets.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = 256;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
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
