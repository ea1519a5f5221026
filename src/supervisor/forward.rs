//! A master CLI command forwarded to a worker (`@1 show info`, `@!pid ...`), as a task of the
//! client's session: a non-blocking connection to the worker's stats socket that writes the
//! command, reads the answer until the worker closes, and ends with the text to relay. Bounded
//! in time (its deadline feeds the loop's poll timeout) and in bytes, so that a stopped or
//! chatty worker delays only the client that asked.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{self, AddressFamily, Shutdown, SockFlag, SockType, UnixAddr};

use super::state::Pid;
use crate::control::answer::CANNOT_REACH_WORKER;
use crate::unix_stream::send_nosignal;

/// Bound on one forwarded command, from connect to the worker's last byte.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer relayed; a worker saying more is cut off with a note.
pub const MAX_FORWARD_ANSWER: usize = 16 * 1024 * 1024;

pub struct Forward {
    stream: UnixStream,
    pid: Pid,
    path: PathBuf,
    request: Vec<u8>,
    written: usize,
    answer: Vec<u8>,
    deadline: Instant,
}

pub enum Progress {
    Waiting,
    /// The text to relay to the client: the worker's answer, or why there is none.
    Done(String),
}

impl Forward {
    /// Connects to worker `pid`'s stats socket at `path`. Err: the text to answer at once.
    pub fn start(path: &Path, pid: Pid, command: &str, now: Instant) -> Result<Forward, String> {
        let stream =
            connect_nonblocking(path).map_err(|e| unreachable_text(pid, path, &e.to_string()))?;
        let mut request = command.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
        request.push(b'\n');
        Ok(Forward {
            stream,
            pid,
            path: path.to_path_buf(),
            request,
            written: 0,
            answer: Vec::new(),
            deadline: now + FORWARD_TIMEOUT,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// What to poll for: room for the command, then the answer.
    pub fn interest(&self) -> PollFlags {
        if self.written < self.request.len() {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Does what the socket allows now; safe to call without readiness.
    pub fn step(&mut self, now: Instant) -> Progress {
        match self.advance() {
            Ok(Some(text)) => Progress::Done(text),
            Ok(None) if now >= self.deadline => Progress::Done(unreachable_text(
                self.pid,
                &self.path,
                &format!("no complete answer within {FORWARD_TIMEOUT:?}"),
            )),
            Ok(None) => Progress::Waiting,
            Err(e) => Progress::Done(unreachable_text(self.pid, &self.path, &e.to_string())),
        }
    }

    /// Ok(Some): the whole answer; Ok(None): waiting for the worker.
    fn advance(&mut self) -> io::Result<Option<String>> {
        while self.written < self.request.len() {
            match send_nosignal(self.stream.as_fd(), &self.request[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == self.request.len() {
                        // haproxy's CLI answers one line and closes once it sees the end.
                        socket::shutdown(self.stream.as_raw_fd(), Shutdown::Write)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => return Ok(Some(String::from_utf8_lossy(&self.answer).into_owned())),
                Ok(n) => {
                    let room = MAX_FORWARD_ANSWER - self.answer.len();
                    if n > room {
                        self.answer.extend_from_slice(&buf[..room]);
                        let mut text = String::from_utf8_lossy(&self.answer).into_owned();
                        text.push_str(&format!(
                            "\n(answer of worker pid {} cut at {MAX_FORWARD_ANSWER} bytes)\n",
                            self.pid
                        ));
                        return Ok(Some(text));
                    }
                    self.answer.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn unreachable_text(pid: Pid, path: &Path, why: &str) -> String {
    format!("{CANNOT_REACH_WORKER} {pid}: {}: {why}\n", path.display())
}

/// A unix stream connect that never waits: the connection is queued on the listener at once, or
/// the listener's queue is full (EAGAIN), which is reported.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    loop {
        match socket::connect(fd.as_raw_fd(), &addr) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "its stats socket's accept queue is full (the worker is not accepting)",
                ))
            }
            Err(errno) => return Err(errno.into()),
            Ok(()) => return Ok(UnixStream::from(fd)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn run(f: &mut Forward) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut fds = [nix::poll::PollFd::new(f.fd(), f.interest())];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            if let Progress::Done(text) = f.step(Instant::now()) {
                return text;
            }
            assert!(Instant::now() < deadline, "forward never ended");
        }
    }

    #[test]
    fn relays_the_answer_until_the_worker_closes() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            s.write_all(b"Name: HAProxy\n\n").unwrap();
            got
        });
        let mut f = Forward::start(&path, 42, "show info", Instant::now()).unwrap();
        assert_eq!(run(&mut f), "Name: HAProxy\n\n");
        assert_eq!(server.join().unwrap(), "show info\n");
    }

    #[test]
    fn a_silent_worker_ends_at_the_deadline() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        // Never accepted: the connection waits in the queue, as with a stopped worker.
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let mut f = Forward::start(&path, 42, "show info", start).unwrap();
        assert!(matches!(f.step(start), Progress::Waiting));
        match f.step(start + FORWARD_TIMEOUT) {
            Progress::Done(text) => {
                assert!(
                    text.starts_with(&format!("{CANNOT_REACH_WORKER} 42:")),
                    "{text}"
                )
            }
            Progress::Waiting => panic!("still waiting past the deadline"),
        }
    }

    #[test]
    fn no_listener_is_answered_at_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let err = Forward::start(
            &dir.path().join("none.sock"),
            42,
            "show info",
            Instant::now(),
        )
        .err()
        .unwrap();
        assert!(
            err.starts_with(&format!("{CANNOT_REACH_WORKER} 42:")),
            "{err}"
        );
    }
}
