//! Issue 12, case 3: the master's stderr is a pipe nobody reads (`hapmaster ... 2>&1 | (sleep
//! 40)`, a container runtime's blocking log driver) while the workers log traffic to their
//! stderr. The master still answers `show proc` within 100 ms and handles SIGTERM within 1 s.
mod common;
mod stalls;

use common::*;
use stalls::*;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A pipe: (read end, write end), close-on-exec, holding one page.
fn small_pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds, which are owned at once.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETPIPE_SZ on a pipe we own; the kernel rounds up to a page.
    assert!(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) } > 0);
    (r, w)
}

/// The pipe is full: a one-byte write would block. Writes through its own open file description
/// (non-blocking) so that the master's stays as it is; a newline, harmless between log lines.
fn pipe_full(probe: &mut File) -> bool {
    match probe.write_all(b"\n") {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}

fn wait_datagram(
    rx: &UnixDatagram,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        rx.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        if let Ok(n) = rx.recv(&mut buf) {
            if pred(&String::from_utf8_lossy(&buf[..n])) {
                return Some(Instant::now());
            }
        }
    }
    None
}

#[test]
#[ignore = "issue 12: fails until the executor rebuild"]
fn unread_stderr_under_traffic_logs_stalls_nothing() {
    let dir = TestDir::new();
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 4000\n    log stderr format raw local0\n\n\
             defaults\n    mode http\n    log global\n    option httplog\n    timeout connect 5s\n    \
             timeout client 10s\n    timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    \
             http-request return status 200 content-type text/plain string \"hello from haproxy\\n\"\n"
        ),
    )
    .unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let (read_end, write_end) = small_pipe();
    let mut probe = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write_end.as_raw_fd()))
        .expect("opening the pipe's write end again");
    let rt = dir.join("rt");
    let mut master = ChildGuard(
        hapmaster_command(&rt, &["-Ws"], &cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("FDSTORE")
            .stdout(Stdio::null())
            .stderr(Stdio::from(write_end))
            .spawn()
            .expect("spawning hapmaster"),
    );
    assert!(
        wait_datagram(&notify, is_serving, EVENT).is_some(),
        "hapmaster did not become ready"
    );
    let load = Load::start(&[Target::parse(&format!("127.0.0.1:{port}"))], 4);
    // Traffic logs fill the pipe nobody reads.
    poll_until(EVENT, || pipe_full(&mut probe).then_some(()))
        .expect("the workers' traffic logs did not fill the master's stderr pipe");
    let master_sock = master_sock(&rt);
    let stalled = || -> Result<(), String> {
        let mut p = probe.try_clone().unwrap();
        if pipe_full(&mut p) {
            Ok(())
        } else {
            Err("the stderr pipe has room again".into())
        }
    };
    let show = during_stall("show proc with stderr unread", &stalled, || {
        show_proc_latency(&master_sock)
    });
    let sent = Instant::now();
    kill(master.id(), SIGTERM).unwrap();
    let bound = Duration::from_secs(5);
    let stopping = wait_datagram(&notify, |d| has_line(d, "STOPPING=1"), bound)
        .map(|at| at.duration_since(sent));
    let exited = poll_until(bound.saturating_sub(sent.elapsed()), || {
        master.0.try_wait().ok().flatten()
    })
    .map(|_| sent.elapsed());
    let figures = format!(
        "{show}; SIGTERM: STOPPING=1 {}, exit {}",
        stopping.map_or(format!("not within {bound:?}"), |t| format!(
            "after {t:.1?}"
        )),
        exited.map_or(format!("not within {bound:?}"), |t| format!(
            "after {t:.1?}"
        )),
    );
    eprintln!("figures: {figures}");
    // The reader goes away: a master blocked on it gets EPIPE and can stop.
    drop(read_end);
    drop(probe);
    load.stop();
    assert!(show.ok(), "{figures}");
    assert!(
        exited.is_some_and(|t| t < Duration::from_secs(1)),
        "{figures}"
    );
    let _ = master.stop(EVENT);
}
