//! Readiness of a starting worker: its private stats socket answers `show info` with its own
//! `Pid:`. Driven by the event loop without blocking it: connect attempts back off while the
//! socket does not exist yet, and once connected the reply is awaited by poll, not by retries.
//! It tries until it is dropped: how long a worker may take is the state's `Timer::Ready`.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::state::Pid;
use crate::unix_stream::{connect_nonblocking, send_nosignal};

/// First retry delay; doubled up to `MAX_RETRY`. Short, because haproxy often binds within
/// milliseconds and the probe's delay adds to every reload.
const FIRST_RETRY: Duration = Duration::from_millis(1);
const MAX_RETRY: Duration = Duration::from_millis(10);
/// After [`Probe::hurry`]: attempts at `FIRST_RETRY` this many times before backing off again.
/// haproxy binds its stats socket within milliseconds of taking the sockets (measured: 1-3 ms at
/// 1 000 listeners, ~40 ms at 19 000), so a backed-off probe would add up to `MAX_RETRY` to every
/// reload; 200 failed connects cost the master well under a millisecond of CPU.
const HURRIED_ATTEMPTS: u32 = 200;
/// `show info` is a few KiB; anything beyond this is not haproxy's answer.
const MAX_REPLY: usize = 256 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting,
    Ready,
}

pub struct Probe {
    pub pid: Pid,
    socket: PathBuf,
    next_attempt: Instant,
    retry: Duration,
    /// Attempts left at `FIRST_RETRY` (see `hurry`).
    hurried: u32,
    conn: Option<(UnixStream, Vec<u8>)>,
    last_error: Option<String>,
    /// haproxy's `Version:` from the answer that made the worker ready.
    version: Option<String>,
}

impl Probe {
    /// The first attempt is due at once.
    pub fn new(pid: Pid, socket: PathBuf, now: Instant) -> Probe {
        Probe {
            pid,
            socket,
            next_attempt: now,
            retry: FIRST_RETRY,
            hurried: 0,
            conn: None,
            last_error: None,
            version: None,
        }
    }

    /// The fd to poll for readability while a reply is awaited.
    pub fn poll_fd(&self) -> Option<BorrowedFd<'_>> {
        self.conn.as_ref().map(|(s, _)| s.as_fd())
    }

    /// When the loop must call `step` again at the latest; while a reply is awaited, its
    /// readiness wakes the loop.
    pub fn wakeup(&self) -> Option<Instant> {
        self.conn.is_none().then_some(self.next_attempt)
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn step(&mut self, now: Instant) -> Progress {
        if self.conn.is_some() {
            match self.read_reply() {
                Ok(None) => {}
                Ok(Some(reply)) => {
                    if reply_pid(&reply) == Some(self.pid) {
                        self.version = reply_field(&reply, "Version");
                        return Progress::Ready;
                    }
                    self.last_error = Some(match reply_pid(&reply) {
                        Some(other) => format!("stats socket answered with Pid: {other}"),
                        None => "stats socket answered without a Pid: line".to_string(),
                    });
                    self.retry_later(now);
                }
                Err(e) => {
                    self.last_error = Some(format!("reading show info: {e}"));
                    self.retry_later(now);
                }
            }
        } else if now >= self.next_attempt {
            match self.connect() {
                Ok(()) => return self.step(now),
                Err(e) => {
                    self.last_error = Some(format!("{}: {e}", self.socket.display()));
                    self.retry_later(now);
                }
            }
        }
        Progress::Waiting
    }

    /// The worker has just taken its listening sockets (`_getsocks`): it binds the rest, its
    /// stats socket among them, and answers within milliseconds. Try now, then every
    /// `FIRST_RETRY` for a while instead of backing off.
    pub fn hurry(&mut self, now: Instant) {
        self.hurried = HURRIED_ATTEMPTS;
        self.retry = FIRST_RETRY;
        if self.conn.is_none() {
            self.next_attempt = self.next_attempt.min(now);
        }
    }

    fn retry_later(&mut self, now: Instant) {
        self.conn = None;
        self.next_attempt = now + self.retry;
        if self.hurried > 0 {
            self.hurried -= 1;
        } else {
            self.retry = (self.retry * 2).min(MAX_RETRY);
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        // A worker whose stats socket backlog is full is tried again later, not waited for.
        let stream = connect_nonblocking(&self.socket)?;
        // Ten bytes into an empty socket buffer go at once, or the worker is gone.
        let command = b"show info\n";
        if send_nosignal(stream.as_fd(), command)? != command.len() {
            return Err(io::Error::other(
                "the command did not fit in an empty socket buffer",
            ));
        }
        self.conn = Some((stream, Vec::new()));
        Ok(())
    }

    /// Some(reply) once haproxy has closed the connection (it does after one command).
    fn read_reply(&mut self) -> io::Result<Option<Vec<u8>>> {
        let Some((stream, buf)) = self.conn.as_mut() else {
            return Ok(None);
        };
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(self.conn.take().map(|(_, b)| b)),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > MAX_REPLY {
                        return Err(io::Error::other("reply too large"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The `Pid:` of a `show info` reply.
pub fn reply_pid(reply: &[u8]) -> Option<Pid> {
    reply_field(reply, "Pid").and_then(|v| v.parse().ok())
}

/// The value of a `Name: value` line of a `show info` reply.
pub fn reply_field(reply: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(reply).lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_pid_line() {
        let reply = b"Name: HAProxy\nVersion: 2.6.12\nPid: 4242\nProcess_num: 1\n";
        assert_eq!(reply_pid(reply), Some(4242));
        assert_eq!(reply_field(reply, "Version").as_deref(), Some("2.6.12"));
        assert_eq!(reply_field(reply, "Pi"), None);
        assert_eq!(reply_pid(b"Unknown command\n"), None);
    }

    fn temp_sock(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hm-probe-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn waits_for_socket_then_matching_pid() {
        let path = temp_sock("match");
        let t = Instant::now();
        let mut p = Probe::new(77, path.clone(), t);
        assert_eq!(p.step(t), Progress::Waiting);
        assert!(p.poll_fd().is_none());
        let wakeup = p.wakeup().unwrap();
        assert!(wakeup > t, "backs off after a failed connect");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut cmd = [0u8; 10];
            s.read_exact(&mut cmd).unwrap();
            assert_eq!(&cmd, b"show info\n");
            s.write_all(b"Name: HAProxy\nPid: 77\n").unwrap();
        });
        assert_eq!(p.step(wakeup), Progress::Waiting);
        server.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match p.step(Instant::now()) {
                Progress::Ready => break,
                Progress::Waiting if Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("probe did not become ready: {other:?} {:?}", p.last_error()),
            }
        }
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn hurry_tries_at_once_then_keeps_the_first_retry() {
        let path = temp_sock("hurry");
        let t = Instant::now();
        let mut p = Probe::new(77, path.clone(), t);
        let mut at = t;
        for _ in 0..6 {
            assert_eq!(p.step(at), Progress::Waiting);
            at = p.wakeup().unwrap();
        }
        assert!(
            at - t > Duration::from_millis(20),
            "backed off: {:?}",
            at - t
        );
        // The worker took its sockets: the next attempt is now, not at the backed-off time.
        let handed = t + Duration::from_millis(21);
        p.hurry(handed);
        assert_eq!(p.wakeup(), Some(handed));
        let mut at = handed;
        for _ in 0..HURRIED_ATTEMPTS {
            assert_eq!(p.step(at), Progress::Waiting);
            let next = p.wakeup().unwrap();
            assert_eq!(next - at, FIRST_RETRY);
            at = next;
        }
        // Then it backs off again.
        assert_eq!(p.step(at), Progress::Waiting);
        let next = p.wakeup().unwrap();
        assert_eq!(p.step(next), Progress::Waiting);
        assert_eq!(p.wakeup().unwrap() - next, FIRST_RETRY * 2);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn wrong_pid_is_not_ready() {
        let path = temp_sock("wrong");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Read first: closing with unread data would reset the connection.
            s.read_exact(&mut [0u8; 10]).unwrap();
            s.write_all(b"Pid: 1\n").unwrap();
        });
        let t = Instant::now();
        let mut p = Probe::new(77, path.clone(), t);
        let answered = "stats socket answered with Pid: 1";
        while p.last_error() != Some(answered) {
            assert!(
                Instant::now() < t + Duration::from_secs(60),
                "{:?}",
                p.last_error()
            );
            assert_eq!(p.step(Instant::now()), Progress::Waiting);
            std::thread::yield_now();
        }
        server.join().unwrap();
        // Answered, but not by the worker: it goes on trying.
        assert!(p.wakeup().is_some());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
