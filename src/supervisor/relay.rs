//! A two-way session with a worker's CLI (`@@1`, `@@!<pid>`, haproxy 3.2+), as a task of the
//! client's session: what the client sends goes to the worker as it is, what the worker says
//! goes back, until the worker closes (then the client is the master's again) or the client
//! leaves. Bounded both ways like a forward (`forward.rs`): the client is read only while less
//! than [`RELAY_MARK`] waits for the worker, the worker only up to the room the session has for
//! output; and nothing may stand still longer than the idle timeout (`--cli-timeout`) while
//! either side could move.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::socket::{self, Shutdown};

use super::forward::read_up_to;
use super::state::Pid;
use crate::control::answer::CANNOT_REACH_WORKER;
use crate::unix_stream::{connect_nonblocking, send_nosignal};

/// Bytes from the client waiting for the worker at which the client is no longer read.
pub const RELAY_MARK: usize = 64 * 1024;

pub struct Relay {
    stream: UnixStream,
    /// `Cannot reach worker pid <pid>: <path>`, for a failure's line.
    who: String,
    /// From the client, not yet written to the worker.
    to_worker: Vec<u8>,
    /// The client closed its side: the worker's write side is shut once `to_worker` is out.
    client_closed: bool,
    shut: bool,
    idle: Duration,
    deadline: Instant,
}

pub enum RelayProgress {
    /// Still open; these bytes of the worker's (maybe none) go to the client now.
    Open(Vec<u8>),
    /// The worker closed (or failed: then a line says so): the last bytes to relay.
    Closed(Vec<u8>),
    /// Nothing moved for the idle timeout.
    Idle,
}

impl Relay {
    /// Connects to worker `pid`'s CLI at `path`; `first`: what the client sent after the `@@`
    /// prefix (or the `prompt` line standing for it). Err: the text to answer at once.
    pub fn start(
        path: &Path,
        pid: Pid,
        first: Vec<u8>,
        now: Instant,
        idle: Duration,
    ) -> Result<Relay, String> {
        let who = format!("{CANNOT_REACH_WORKER} {pid}: {}", path.display());
        let stream = connect_nonblocking(path).map_err(|e| format!("{who}: {e}\n"))?;
        Ok(Relay {
            stream,
            who,
            to_worker: first,
            client_closed: false,
            shut: false,
            idle,
            deadline: now + idle,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// What to poll the worker's stream for: room to write what the client sent, and its
    /// answer (the session does not poll it while it has no room: `Session::relay_stalled`).
    pub fn interest(&self) -> PollFlags {
        let mut flags = PollFlags::POLLIN;
        if !self.to_worker.is_empty() || (self.client_closed && !self.shut) {
            flags |= PollFlags::POLLOUT;
        }
        flags
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the client should be read (backpressure: not while the worker lags).
    pub fn wants_client(&self) -> bool {
        !self.client_closed && self.to_worker.len() < RELAY_MARK
    }

    pub fn from_client(&mut self, bytes: &[u8], now: Instant) {
        self.to_worker.extend_from_slice(bytes);
        self.deadline = now + self.idle;
    }

    /// The client closed its side: so will the worker's, once what it sent is written (the
    /// worker's CLI then ends the session, as haproxy's master has it).
    pub fn client_closed(&mut self) {
        self.client_closed = true;
    }

    /// Does what the worker's stream allows now, reading at most `room` bytes; safe to call
    /// without readiness. With no room the worker waits on the client: its clock restarts.
    pub fn step(&mut self, now: Instant, room: usize) -> RelayProgress {
        let mut relay = Vec::new();
        let outcome = self.advance(room, &mut relay);
        if !relay.is_empty() || room == 0 {
            self.deadline = now + self.idle;
        }
        match outcome {
            Ok(true) => RelayProgress::Closed(relay),
            Ok(false) if now < self.deadline => RelayProgress::Open(relay),
            Ok(false) => RelayProgress::Idle,
            Err(e) => {
                if !relay.is_empty() && !relay.ends_with(b"\n") {
                    relay.push(b'\n');
                }
                relay.extend_from_slice(format!("{}: {e}\n", self.who).as_bytes());
                RelayProgress::Closed(relay)
            }
        }
    }

    /// Writes what the client sent, then appends what the worker said, up to `room` bytes.
    /// Ok(true): the worker closed.
    fn advance(&mut self, room: usize, relay: &mut Vec<u8>) -> io::Result<bool> {
        while !self.to_worker.is_empty() {
            match send_nosignal(self.stream.as_fd(), &self.to_worker) {
                Ok(n) => {
                    self.to_worker.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.client_closed && !self.shut && self.to_worker.is_empty() {
            self.shut = true;
            socket::shutdown(self.stream.as_raw_fd(), Shutdown::Write)?;
        }
        read_up_to(&self.stream, room, relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// Steps until `want` bytes came from the worker, or it closed.
    fn relay_until(r: &mut Relay, want: usize) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        loop {
            let mut fds = [nix::poll::PollFd::new(r.fd(), r.interest())];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            match r.step(Instant::now(), usize::MAX / 2) {
                RelayProgress::Open(part) => got.extend_from_slice(&part),
                RelayProgress::Closed(last) => {
                    got.extend_from_slice(&last);
                    return (got, true);
                }
                RelayProgress::Idle => panic!("idle"),
            }
            if got.len() >= want {
                return (got, false);
            }
            assert!(Instant::now() < deadline, "relay never got {want} bytes");
        }
    }

    /// An interactive worker CLI: answers each line with `<line>!\n` until `quit`.
    fn echo_worker(path: &Path) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut lines = Vec::new();
            let mut reader = BufReader::new(&s);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return lines;
                }
                let line = line.trim_end().to_string();
                lines.push(line.clone());
                if line == "quit" {
                    return lines;
                }
                (&s).write_all(format!("{line}!\n").as_bytes()).unwrap();
            }
        })
    }

    #[test]
    fn both_ways_until_the_worker_closes() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let worker = echo_worker(&path);
        let idle = Duration::from_secs(60);
        let mut r = Relay::start(&path, 42, b"prompt i\n".to_vec(), Instant::now(), idle).unwrap();
        assert_eq!(relay_until(&mut r, 10), (b"prompt i!\n".to_vec(), false));
        r.from_client(b"show info\n", Instant::now());
        assert_eq!(relay_until(&mut r, 11), (b"show info!\n".to_vec(), false));
        r.from_client(b"quit\n", Instant::now());
        assert_eq!(relay_until(&mut r, usize::MAX), (Vec::new(), true));
        assert_eq!(worker.join().unwrap(), ["prompt i", "show info", "quit"]);
    }

    #[test]
    fn the_clients_close_reaches_the_worker() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let worker = echo_worker(&path);
        let idle = Duration::from_secs(60);
        let mut r = Relay::start(&path, 42, b"a\n".to_vec(), Instant::now(), idle).unwrap();
        r.client_closed();
        assert!(!r.wants_client());
        assert_eq!(relay_until(&mut r, usize::MAX), (b"a!\n".to_vec(), true));
        assert_eq!(worker.join().unwrap(), ["a"]);
    }

    #[test]
    fn the_client_is_not_read_while_the_worker_lags() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        // Accepted, never read: the worker's socket buffer fills, then ours.
        let listener = UnixListener::bind(&path).unwrap();
        let idle = Duration::from_secs(60);
        let mut r = Relay::start(&path, 42, Vec::new(), Instant::now(), idle).unwrap();
        let _accepted = listener.accept().unwrap();
        let chunk = vec![b'x'; 16 * 1024];
        let mut sent = 0;
        while r.wants_client() {
            r.from_client(&chunk, Instant::now());
            sent += chunk.len();
            let _ = r.step(Instant::now(), usize::MAX);
            assert!(
                sent < 64 * 1024 * 1024,
                "the client is read whatever the worker does"
            );
        }
        assert!(r.to_worker.len() >= RELAY_MARK);
    }

    #[test]
    fn a_still_relay_ends_at_its_idle_deadline() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("w.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let idle = Duration::from_secs(5);
        let mut r = Relay::start(&path, 42, b"x\n".to_vec(), start, idle).unwrap();
        assert!(matches!(r.step(start, usize::MAX), RelayProgress::Open(_)));
        assert!(matches!(
            r.step(start + idle, usize::MAX),
            RelayProgress::Idle
        ));
        // Without room, the wait is the client's: not the relay's to end.
        let mut r = Relay::start(&path, 42, Vec::new(), start, idle).unwrap();
        assert!(matches!(r.step(start + idle, 0), RelayProgress::Open(_)));
    }
}
