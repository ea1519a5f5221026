//! Issue 12, case 3: the master's stderr is a pipe nobody reads (`hapmaster ... 2>&1 | (sleep
//! 40)`, a container runtime's blocking log driver) while the worker writes traffic logs to it
//! (`log stderr`). The master must go on answering its CLI and handling signals, drop what does
//! not fit in its buffer, and say how much it dropped once stderr is read again.
//!
//! No waiting for "30 s unread": the test fills the pipe itself until a write would block (a
//! kernel fact), then sends traffic, and waits until the master has read everything the worker
//! wrote (the worker's stderr pipe is empty: another fact). From then on, a master that writes
//! its stderr blocking is stuck in that write.
mod common;

use common::*;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Each request's log line carries its URI: this long, so that a few hundred requests make
/// megabytes of log.
const URI_LEN: usize = 8000;

fn config(port: u16) -> String {
    format!(
        "global\n    maxconn 100\n    tune.http.logurilen {len}\n    log stderr len 16384 format raw local0 info\n\n\
         defaults\n    mode http\n    log global\n    option httplog\n    timeout connect 5s\n    \
         timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"hello\\n\"\n",
        len = URI_LEN + 100
    )
}

/// One request whose URI is `URI_LEN` bytes long; the worker logs it on its stderr.
fn long_request(port: u16, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the frontend");
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    let uri = format!("/{n:08}{}", "x".repeat(URI_LEN - 9));
    s.write_all(format!("GET {uri} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .expect("sending a request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("reading an answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "request {n}: {answer:?}"
    );
}

/// A write end of the same pipe with an open file description of its own, non-blocking: filling
/// the pipe through it changes nothing in how the master's own fd 2 behaves.
fn nonblocking_writer(write_end: &OwnedFd) -> File {
    File::options()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{}", write_end.as_raw_fd()))
        .expect("reopening the pipe's write end")
}

/// Writes through `filler` until the pipe takes not one more byte.
fn fill(filler: &mut File) -> usize {
    let mut written = 0;
    for chunk in [
        &b"filler line written by the test to fill the pipe\n"[..],
        b"\n",
    ] {
        loop {
            match filler.write(chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the pipe: {e}"),
            }
        }
    }
    written
}

/// Bytes waiting in the pipe behind `fd` (FIONREAD).
fn queued(fd: &impl AsRawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
    n as usize
}

/// Waits until the master has read everything worker `pid` wrote on its stderr: the worker's
/// stderr pipe (opened through /proc, never read from here) is empty. A master that writes its
/// stderr blocking is stuck in that write by then, or never gets there.
fn wait_worker_output_taken(worker: u32, master_sock: &std::path::Path) {
    let pipe = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{worker}/fd/2"))
        .expect("opening the worker's stderr pipe");
    if poll_until(EVENT, || (queued(&pipe) == 0).then_some(())).is_none() {
        panic!(
            "the master stopped reading worker pid {worker}'s stderr ({} bytes wait in the \
             pipe) while its own stderr is full; show proc: {:?}",
            queued(&pipe),
            timed_show_proc(master_sock, ANSWER_LIMIT)
        );
    }
}

/// `show proc` on master.sock, timed; `Err` if no complete answer within `limit`.
fn timed_show_proc(master_sock: &std::path::Path, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let answer = cli_within(master_sock, "show proc", limit)?;
    let took = start.elapsed();
    if !answer.contains("worker") {
        return Err(format!("unexpected answer: {answer:?}"));
    }
    Ok(took)
}

fn wait_ready(notify: &UnixDatagram) -> u32 {
    let deadline = Instant::now() + EVENT;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            let d = String::from_utf8_lossy(&buf[..n]).into_owned();
            if is_serving(&d) {
                return worker_pid_in(&d).unwrap();
            }
        }
    }
    panic!("no READY=1 within {EVENT:?}");
}

/// Reads the pipe until a line containing `needle` arrives; returns everything read.
fn read_until(read_end: &mut File, needle: &str) -> String {
    let deadline = Instant::now() + EVENT;
    let mut text = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match read_end.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
            }
            Err(e) => panic!("reading the master's stderr: {e}"),
        }
        if String::from_utf8_lossy(&text).contains(needle) || Instant::now() >= deadline {
            break;
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// `show proc` answers of the stuck master: each within this (a master blocked in its stderr
/// never answers), and their median within the 100 ms.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
const ANSWER_MEDIAN: Duration = Duration::from_millis(100);
/// SIGTERM to exit, the figure (haproxy -Ws: within 2 s).
const STOP_LIMIT: Duration = Duration::from_secs(1);

#[test]
fn unread_stderr_under_traffic_logs_stalls_nothing() {
    let dir = TestDir::new();
    let port = free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config(port)).unwrap();
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let rt = dir.join("rt");
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut filler = nonblocking_writer(&write_end);
    let mut cmd = hapmaster_command(&rt, &[], &cfg);
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::from(write_end));
    let mut master = ChildGuard(cmd.spawn().expect("spawning hapmaster"));
    // Declared after the guard, dropped before it: a master stuck writing to this pipe (the
    // failure this test is about) gets EPIPE and can then be stopped.
    let mut read_end = File::from(read_end);
    let worker = wait_ready(&notify);
    let master_sock = rt.join("master.sock");

    // Stuck: the pipe is full, and the master has read what the worker logged since.
    let filled = fill(&mut filler);
    for n in 0..512 {
        long_request(port, n);
    }
    wait_worker_output_taken(worker, &master_sock);
    let mut answers = Vec::new();
    for _ in 0..5 {
        match timed_show_proc(&master_sock, ANSWER_LIMIT) {
            Ok(t) => answers.push(t),
            Err(e) => panic!(
                "show proc while the master's stderr is full ({filled} bytes written by the \
                 test, then 512 requests logged): {e}"
            ),
        }
    }
    answers.sort();
    eprintln!("show proc with stderr unread: {answers:?}");
    assert!(
        answers[2] < ANSWER_MEDIAN,
        "show proc answered in {answers:?}: median over {ANSWER_MEDIAN:?}"
    );

    // Read again: what was dropped is said, once, where the gap is.
    nix::fcntl::fcntl(
        read_end.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let text = read_until(&mut read_end, "lines of worker output dropped");
    let notice = text
        .lines()
        .find(|l| l.contains("lines of worker output dropped"))
        .unwrap_or_else(|| {
            panic!(
                "no drop notice once stderr was read again; the last lines read:\n{}",
                text.lines().rev().take(5).collect::<Vec<_>>().join("\n")
            )
        });
    assert!(
        notice.contains("[WARNING]") && notice.contains(": stderr is not being read"),
        "{notice}"
    );
    let dropped: u64 = notice
        .split(" : ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {notice:?}"));
    assert!(dropped > 0, "{notice}");
    eprintln!("{notice}");

    // Stuck again, then SIGTERM: handled at once.
    fill(&mut filler);
    for n in 0..8 {
        long_request(port, n);
    }
    wait_worker_output_taken(worker, &master_sock);
    let sent = Instant::now();
    let exit = master.stop(ANSWER_LIMIT);
    let took = sent.elapsed();
    eprintln!("SIGTERM to exit with stderr unread: {took:?}");
    assert!(
        exit.is_some(),
        "the master did not exit within {ANSWER_LIMIT:?} of SIGTERM while its stderr is unread"
    );
    assert!(took < STOP_LIMIT, "SIGTERM to exit took {took:?}");
    assert!(
        !pid_alive(worker),
        "worker pid {worker} outlived its master"
    );
}
