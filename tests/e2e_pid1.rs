//! As PID 1 of a container, the master is the parent of every orphan and must reap it.
//! Runs hapmaster as PID 1 of a fresh PID namespace (`unshare --pid --fork`, needs root) with a
//! haproxy wrapper that leaves an orphan behind: a fault a real haproxy does not produce on demand.
mod common;

use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

#[test]
fn pid1_reaps_orphans() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (unshare --pid)");
        return;
    }
    let dir = TestDir::new();
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    fs::write(&cfg, http_config(&[format!("127.0.0.1:{port}")])).unwrap();
    // The subshell exits at once, so its `sleep` is re-parented to PID 1: the master. It sleeps
    // until the test ends it, so the test finds it however long the start took.
    let wrapper = dir.join("haproxy-orphaning");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n(sleep 3600 &)\nexec {} \"$@\"\n",
            haproxy_path().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut unshare = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_hapmaster"))
        .arg("--haproxy")
        .arg(&wrapper)
        .arg("--runtime-dir")
        .arg(dir.join("rt"))
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare (util-linux) is needed");
    let guard = KillOnDrop(unshare.id());
    let master = poll_until(EVENT, || children_of(unshare.id()).first().map(|p| p.pid))
        .expect("hapmaster did not start under unshare");
    poll_until(EVENT, || http_get(format!("127.0.0.1:{port}")).ok()).expect("not serving");
    let orphan = poll_until(EVENT, || {
        children_of(master).into_iter().find(|p| p.comm == "sleep")
    })
    .expect("the orphan should have been re-parented to the master (PID 1)");
    // When it exits, the master must reap it, not leave a zombie.
    kill(orphan.pid, SIGTERM).unwrap();
    let reaped = poll_until(EVENT, || {
        (!children_of(master).iter().any(|p| p.pid == orphan.pid)).then_some(())
    });
    assert!(
        reaped.is_some(),
        "orphan {} not reaped by the master: {:?}",
        orphan.pid,
        children_of(master)
    );
    assert_eq!(
        http_get(format!("127.0.0.1:{port}")).unwrap(),
        HELLO,
        "still serving"
    );
    unsafe { libc::kill(master as i32, libc::SIGTERM) };
    let status = poll_until(EVENT, || unshare.try_wait().ok().flatten())
        .expect("hapmaster did not stop on SIGTERM");
    // Reaped: its pid may be reused from now on, so the guard must not fire.
    std::mem::forget(guard);
    assert!(status.success(), "exit status {status}");
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only while unshare is unreaped. --kill-child: SIGKILL to unshare takes the whole
        // namespace with it.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}
