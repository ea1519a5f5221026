//! A master CLI command forwarded to a worker (`@1 show info`, `@!pid ...`), as a task of the
//! client's session: a non-blocking connection to the worker's stats socket that writes the
//! command and relays the answer as it comes, until the worker closes. It reads no more than the
//! session has room for (backpressure: a client that does not read its answer holds the worker's
//! answer in the worker's socket, not in the master), and the worker may stay silent at most
//! [`FORWARD_TIMEOUT`] (its deadline feeds the loop's poll timeout), so that a stopped or chatty
//! worker delays only the client that asked.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{self, Shutdown};

use super::state::Pid;
use crate::control::answer::CANNOT_REACH_WORKER;
use crate::unix_stream::{connect_nonblocking, send_nosignal};

/// How long the worker may keep the master waiting: for the connection and the command, then
/// between two parts of its answer. Time the client takes to read is not counted.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Forward {
    stream: UnixStream,
    pid: Pid,
    path: PathBuf,
    request: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// The bytes of the payload sent after the command (0: none).
    payload: usize,
    /// Whether the worker said anything yet.
    answered: bool,
}

pub enum Progress {
    /// More to come; these bytes of the answer (maybe none) are to be relayed now.
    Waiting(Vec<u8>),
    /// The last bytes to relay: the end of the worker's answer, or why there is no (more).
    Done(Vec<u8>),
}

impl Forward {
    /// Connects to worker `pid`'s stats socket at `path` to send `command`, then `payload` (the
    /// lines of a payload the command opened, its end line included; empty: none). Err: the
    /// text to answer at once.
    pub fn start(
        path: &Path,
        pid: Pid,
        command: &str,
        payload: &[u8],
        now: Instant,
    ) -> Result<Forward, String> {
        let stream =
            connect_nonblocking(path).map_err(|e| unreachable_text(pid, path, &e.to_string()))?;
        let mut request = command.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
        request.push(b'\n');
        request.extend_from_slice(payload);
        Ok(Forward {
            stream,
            pid,
            path: path.to_path_buf(),
            request,
            written: 0,
            deadline: now + FORWARD_TIMEOUT,
            payload: payload.len(),
            answered: false,
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

    /// Does what the socket allows now, reading at most `room` bytes of the answer; safe to call
    /// without readiness. With no room the worker waits on the client: its clock restarts.
    pub fn step(&mut self, now: Instant, room: usize) -> Progress {
        let mut relay = Vec::new();
        let outcome = self.advance(room, &mut relay);
        if !relay.is_empty() || (room == 0 && self.written == self.request.len()) {
            self.deadline = now + FORWARD_TIMEOUT;
        }
        self.answered |= !relay.is_empty();
        // haproxy's CLI closes without a word on a command and payload past its buffer (or
        // resets the connection when more is still unread): say so rather than nothing.
        if self.payload > 0 && !self.answered && matches!(outcome, Ok(true) | Err(_)) {
            let mut text = dropped_payload_text(self.pid, self.payload).into_bytes();
            text.push(b'\n');
            return Progress::Done(text);
        }
        let why = match outcome {
            Ok(true) => return Progress::Done(relay),
            Ok(false) if now < self.deadline => return Progress::Waiting(relay),
            Ok(false) => format!("no complete answer within {FORWARD_TIMEOUT:?}"),
            Err(e) => e.to_string(),
        };
        if !relay.is_empty() && !relay.ends_with(b"\n") {
            relay.push(b'\n');
        }
        relay.extend_from_slice(unreachable_text(self.pid, &self.path, &why).as_bytes());
        // The worker's CLI did not end its answer: the blank line that ends every answer is
        // the master's here.
        relay.push(b'\n');
        Progress::Done(relay)
    }

    /// Sends the command, then appends to `relay` what the worker said, up to `room` bytes.
    /// Ok(true): the worker closed (the answer is complete).
    fn advance(&mut self, room: usize, relay: &mut Vec<u8>) -> io::Result<bool> {
        while self.written < self.request.len() {
            match send_nosignal(self.stream.as_fd(), &self.request[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == self.request.len() {
                        // haproxy's CLI answers one line and closes once it sees the end.
                        socket::shutdown(self.stream.as_raw_fd(), Shutdown::Write)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        read_up_to(&self.stream, room, relay)
    }
}

/// Appends to `relay` what the worker's non-blocking `stream` has, until `relay` holds `room`
/// bytes. Ok(true): the worker closed.
pub(super) fn read_up_to(
    stream: &UnixStream,
    room: usize,
    relay: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut buf = [0u8; 16 * 1024];
    while relay.len() < room {
        let want = (room - relay.len()).min(buf.len());
        match (&*stream).read(&mut buf[..want]) {
            Ok(0) => return Ok(true),
            Ok(n) => relay.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

fn dropped_payload_text(pid: Pid, bytes: usize) -> String {
    format!(
        "Worker {pid} closed without answering a command with a payload of {bytes} bytes: \
         haproxy's CLI drops a command and payload larger than its buffer (tune.bufsize, 16384 \
         bytes by default). Send the payload in parts.\n"
    )
}

fn unreachable_text(pid: Pid, path: &Path, why: &str) -> String {
    format!("{CANNOT_REACH_WORKER} {pid}: {}: {why}\n", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn run(f: &mut Forward) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut answer = Vec::new();
        loop {
            let mut fds = [nix::poll::PollFd::new(f.fd(), f.interest())];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            match f.step(Instant::now(), usize::MAX) {
                Progress::Waiting(part) => answer.extend_from_slice(&part),
                Progress::Done(last) => {
                    answer.extend_from_slice(&last);
                    return String::from_utf8(answer).unwrap();
                }
            }
            assert!(Instant::now() < deadline, "forward never ended");
        }
    }

    /// Forwards `command` and `payload` to a worker that reads all of it, then writes `answer`
    /// and closes: what the master relayed, and what the worker got.
    fn exchange(command: &str, payload: &[u8], answer: &'static [u8]) -> (String, String) {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            s.write_all(answer).unwrap();
            got
        });
        let mut f = Forward::start(&path, 42, command, payload, Instant::now()).unwrap();
        let relayed = run(&mut f);
        (relayed, server.join().unwrap())
    }

    #[test]
    fn relays_the_answer_until_the_worker_closes() {
        let (relayed, got) = exchange("show info", b"", b"Name: HAProxy\n\n");
        assert_eq!(relayed, "Name: HAProxy\n\n");
        assert_eq!(got, "show info\n");
    }

    #[test]
    fn sends_the_payload_after_the_command() {
        let (relayed, got) = exchange("add map F <<", b"k1 v;1\n\n", b"\n");
        assert_eq!(relayed, "\n");
        assert_eq!(got, "add map F <<\nk1 v;1\n\n");
    }

    #[test]
    fn a_payload_closed_on_without_a_word_is_explained() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let worker = worker_saying(&path, Vec::new());
        let mut f = Forward::start(&path, 42, "add map F <<", b"k v\n\n", Instant::now()).unwrap();
        let text = run(&mut f);
        assert!(
            text.starts_with("Worker 42 closed without answering") && text.ends_with("\n\n"),
            "{text:?}"
        );
        worker.join().unwrap();
    }

    /// A worker at `path` that reads the command, writes `answer` and closes.
    fn worker_saying(path: &Path, answer: Vec<u8>) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            let _ = s.write_all(&answer);
        })
    }

    /// Steps until the command is sent and `want` bytes are read (or the end is seen).
    fn step_until(f: &mut Forward, room: usize, now: Instant) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        loop {
            let mut fds = [nix::poll::PollFd::new(f.fd(), f.interest())];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            match f.step(now, room - got.len()) {
                Progress::Waiting(part) => got.extend_from_slice(&part),
                Progress::Done(last) => {
                    got.extend_from_slice(&last);
                    return (got, true);
                }
            }
            if got.len() == room {
                return (got, false);
            }
            assert!(Instant::now() < deadline, "forward never got {room} bytes");
        }
    }

    #[test]
    fn reads_no_more_of_the_answer_than_it_has_room_for() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let answer: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let worker = worker_saying(&path, answer.clone());
        let start = Instant::now();
        let mut f = Forward::start(&path, 42, "show map big", b"", start).unwrap();
        let (first, ended) = step_until(&mut f, 1000, start);
        assert_eq!((first.len(), ended), (1000, false));
        // No room: nothing is read, however long the client takes, and the worker is not
        // blamed for that time.
        let later = start + 3 * FORWARD_TIMEOUT;
        match f.step(later, 0) {
            Progress::Waiting(part) => assert!(part.is_empty()),
            Progress::Done(_) => panic!("ended while the client had no room"),
        }
        let (rest, ended) = step_until(&mut f, usize::MAX / 2, later);
        assert!(ended);
        assert_eq!([first, rest].concat(), answer);
        worker.join().unwrap();
    }

    #[test]
    fn a_silent_worker_ends_at_the_deadline() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        // Never accepted: the connection waits in the queue, as with a stopped worker.
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let mut f = Forward::start(&path, 42, "show info", b"", start).unwrap();
        assert!(matches!(f.step(start, usize::MAX), Progress::Waiting(_)));
        match f.step(start + FORWARD_TIMEOUT, usize::MAX) {
            Progress::Done(text) => {
                let text = String::from_utf8(text).unwrap();
                assert!(
                    text.starts_with(&format!("{CANNOT_REACH_WORKER} 42:"))
                        && text.ends_with("\n\n"),
                    "{text:?}"
                )
            }
            Progress::Waiting(_) => panic!("still waiting past the deadline"),
        }
    }

    #[test]
    fn no_listener_is_answered_at_once() {
        let dir = tempfile::TempDir::new().unwrap();
        let err = Forward::start(
            &dir.path().join("none.sock"),
            42,
            "show info",
            b"",
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
