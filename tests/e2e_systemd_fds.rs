//! systemd's side of the sockets, without systemd: the fd store messages follow the held set,
//! and sockets passed with LISTEN_FDS (a .socket unit, or the fd store after a restart) are
//! adopted by the first worker, the unused ones closed. (tests/systemd/run.sh checks the same
//! under a real systemd.)
mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn stored_names(history: &[String], key: &str) -> BTreeSet<String> {
    history
        .iter()
        .filter(|d| has_line(d, key))
        .filter_map(|d| notify_field(d, "FDNAME").map(str::to_string))
        .collect()
}

#[test]
fn fd_store_follows_the_held_set() {
    let (a, b) = (free_port(), free_port());
    let both = http_config(&[format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")]);
    let mut hm = Hapmaster::start_ready(both.as_str(), &[]);
    let ino_a = *tcp4_listen_inodes(a).iter().next().unwrap();
    let ino_b = *tcp4_listen_inodes(b).iter().next().unwrap();
    let want: BTreeSet<String> = [format!("sock-{ino_a}"), format!("sock-{ino_b}")].into();
    let stored = poll_until(EVENT, || {
        let s = stored_names(hm.history(), "FDSTORE=1");
        (s == want).then_some(s)
    });
    assert!(
        stored.is_some(),
        "stored {:?}, want {want:?}",
        stored_names(hm.history(), "FDSTORE=1")
    );

    // A reload that keeps both stores nothing new; one that drops B removes it from the store.
    let old = hm.current_worker_pid().unwrap();
    hm.signal(SIGUSR2);
    hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(old), EVENT);
    assert_eq!(
        hm.history()
            .iter()
            .filter(|d| has_line(d, "FDSTORE=1"))
            .count(),
        2
    );
    hm.write_config(&http_config(&[format!("127.0.0.1:{a}")]));
    let old = hm.current_worker_pid().unwrap();
    hm.signal(SIGUSR2);
    hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(old), EVENT);
    let removed = poll_until(EVENT, || {
        let r = stored_names(hm.history(), "FDSTOREREMOVE=1");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        removed,
        Some([format!("sock-{ino_b}")].into()),
        "{}",
        hm.history_text()
    );
    assert!(hm.stop().success());
}

#[test]
fn listen_fds_are_adopted_and_unused_ones_closed() {
    listen_fds_adopted_by(
        &haproxy_path(),
        |port| http_config(&[format!("127.0.0.1:{port}")]),
        HELLO,
    );
}

/// haproxy before 1.8 has no `-x`: the preload library hands it systemd's socket at its bind().
#[test]
fn listen_fds_are_adopted_by_haproxy_1_5_to_1_7() {
    for version in ["1.5.19", "1.6.16", "1.7.14"] {
        let Some(haproxy) = old_haproxy(version) else {
            return;
        };
        listen_fds_adopted_by(&haproxy, old_http_config, MONITOR_BODY);
    }
}

/// hapmaster started as systemd starts it with two sockets, one of which the configuration
/// (`config(port)`) binds: its worker serves (answering with `body`) on that very socket, and
/// the other is closed.
fn listen_fds_adopted_by(haproxy: &Path, config: impl Fn(u16) -> String, body: &str) {
    let dir = TestDir::new();
    let used = TcpListener::bind("127.0.0.1:0").unwrap();
    let unused = TcpListener::bind("127.0.0.1:0").unwrap();
    let (p_used, p_unused) = (
        used.local_addr().unwrap().port(),
        unused.local_addr().unwrap().port(),
    );
    let inode = *tcp4_listen_inodes(p_used).iter().next().unwrap();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config(p_used)).unwrap();
    let (fd_used, fd_unused) = (used.as_raw_fd(), unused.as_raw_fd());
    // sh execs hapmaster, so LISTEN_PID=$$ is hapmaster's pid, as systemd sets it.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES=web:extra exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_hapmaster"))
        .arg("--haproxy")
        .arg(haproxy)
        .arg("--runtime-dir")
        .arg(dir.join("rt"))
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only fcntl and dup2 between fork and exec (async-signal-safe); dup2 leaves the
    // copies at 3 and 4 inheritable, as systemd passes them.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first: either listener may itself be fd 3 or 4.
            let a = libc::fcntl(fd_used, libc::F_DUPFD_CLOEXEC, 100);
            let b = libc::fcntl(fd_unused, libc::F_DUPFD_CLOEXEC, 100);
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ChildGuard(cmd.spawn().unwrap());
    drop((used, unused));
    let served = poll_until(EVENT, || http_get(format!("127.0.0.1:{p_used}")).ok());
    assert!(
        served.as_deref().is_some_and(|b| b.contains(body)),
        "{}: {served:?}",
        haproxy.display()
    );
    // The worker took the passed socket: still the one listening socket on that port.
    let adopted = poll_until(EVENT, || {
        (tcp4_listen_inodes(p_used) == BTreeSet::from([inode])).then_some(())
    });
    assert!(
        adopted.is_some(),
        "{:?} vs {inode}",
        tcp4_listen_inodes(p_used)
    );
    // The socket no listener of the config uses is closed, not left accepting into a void.
    let closed = poll_until(EVENT, || {
        tcp4_listen_inodes(p_unused).is_empty().then_some(())
    });
    assert!(closed.is_some(), "unused passed socket still listening");
    let status = child.stop(EVENT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
