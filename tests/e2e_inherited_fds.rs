//! fds the master inherits from whatever started it must not reach its workers (issue 10,
//! item 4): a supervisor's pipe held by every worker never sees EOF.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;

/// The fd number the pipe is given in hapmaster, as `exec 9>...` in a shell would.
const INHERITED: i32 = 9;

fn pipe_inode(fd: i32) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    let text = link.to_string_lossy();
    text.strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or_else(|| panic!("fd {fd} is not a pipe: {text}"))
        .parse()
        .unwrap()
}

/// Inodes of the pipes `pid` has open.
fn pipe_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let t = std::fs::read_link(e.path()).ok()?;
                    let t = t.to_string_lossy().into_owned();
                    t.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_inherited_pipe_does_not_reach_the_workers() {
    let dir = TestDir::new();
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, http_config(&[format!("127.0.0.1:{port}")])).unwrap();
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let inode = pipe_inode(write_end.as_raw_fd());
    let raw = write_end.as_raw_fd();
    let mut cmd = hapmaster_command(&dir.join("rt"), &["-V"], &cfg);
    cmd.stdout(Stdio::null()).stderr(stderr);
    // SAFETY: only dup2 between fork and exec (async-signal-safe); dup2 leaves fd 9 inheritable,
    // as a shell's `exec 9>` would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, INHERITED) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    drop(write_end);
    let master = child.id();
    poll_until(EVENT, || http_get(format!("127.0.0.1:{port}")).ok()).expect("not serving");
    let worker = poll_until(EVENT, || live_children(master).first().copied())
        .expect("the master has no worker");
    assert!(
        pipe_inodes(master).contains(&inode),
        "the master should still hold what it inherited (only the workers must not)"
    );
    assert!(
        !pipe_inodes(worker).contains(&inode),
        "worker {worker} inherited the master's fd {INHERITED}:\n{}",
        fd_listing(worker)
    );
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("fds inherited from the parent process")
                && l.contains(&format!("{INHERITED} (pipe:[{inode}])"))),
        "-V should name fd {INHERITED}:\n{log}"
    );
    // An upgrade in place keeps it in the master (as the first image held it), still not in
    // the workers. The binary is the same file: re-executing it is what counts.
    kill(master, SIGURG).unwrap();
    let took_over = poll_until(EVENT, || {
        let log = std::fs::read_to_string(&stderr_path).ok()?;
        log.contains("took over after an upgrade in place")
            .then_some(())
    });
    assert!(took_over.is_some(), "no upgrade in place after SIGURG");
    assert!(
        pipe_inodes(master).contains(&inode),
        "the master lost its inherited fd in the upgrade in place:\n{}",
        fd_listing(master)
    );
    let old = worker;
    kill(master, SIGUSR2).unwrap();
    // Once it runs haproxy: between fork and exec a child still has every fd of the master.
    let worker = poll_until(EVENT, || {
        live_children(master)
            .into_iter()
            .find(|p| *p != old && proc_stat(*p).is_some_and(|s| s.comm == "haproxy"))
    })
    .expect("no new worker after a reload");
    assert!(
        !pipe_inodes(worker).contains(&inode),
        "worker {worker}, started after the upgrade, inherited fd {INHERITED}"
    );
    let status = child.stop(EVENT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Nobody holds the write end any more: the reader sees EOF, not "would block".
    nix::fcntl::fcntl(
        &read_end,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let mut buf = [0u8; 1];
    let n = nix::unistd::read(&read_end, &mut buf);
    assert_eq!(n, Ok(0), "the pipe's write end is still held by someone");
}
