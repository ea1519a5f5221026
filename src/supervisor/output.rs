//! A worker's stderr, forwarded line by line to the master's own stderr (through
//! `crate::stderr_buffer`, which never waits for a reader: a worker's pipe is always read, and
//! what stderr cannot take is dropped and counted there), with what a starting worker says kept
//! aside for the `reload` command's answer. Each worker's record holds its own.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::state::Pid;

/// A line longer than this is forwarded in pieces rather than buffered without bound.
const MAX_LINE: usize = 64 * 1024;
/// How much of a worker's start-up output a `reload` answer carries.
const MAX_STARTUP: usize = 64 * 1024;

struct Stream {
    pipe: File,
    partial: Vec<u8>,
}

/// One worker's stderr pipe (until it reaches EOF), and what it said while starting.
pub struct Output {
    stream: Option<Stream>,
    /// What the worker has written while starting, until `take_startup`.
    startup: Option<Vec<u8>>,
}

impl Output {
    /// A new worker's stderr: forwarded, and recorded until `take_startup`.
    pub fn starting(pipe: OwnedFd) -> Output {
        Output {
            startup: Some(Vec::new()),
            ..Output::running(pipe)
        }
    }

    /// A running worker's stderr (taken over in an upgrade in place): forwarded only.
    pub fn running(pipe: OwnedFd) -> Output {
        let stream = Stream {
            pipe: File::from(pipe),
            partial: Vec::new(),
        };
        Output {
            stream: Some(stream),
            startup: None,
        }
    }

    /// A worker whose pipe the master does not hold (lost in an upgrade in place).
    pub fn none() -> Output {
        Output {
            stream: None,
            startup: None,
        }
    }

    /// The pipe to poll, until EOF.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.stream.as_ref().map(|s| s.pipe.as_fd())
    }

    /// Reads what the worker wrote and forwards complete lines; closes the pipe at EOF.
    pub fn drain(&mut self, pid: Pid) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match stream.pipe.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("reading the stderr of worker pid {pid}: {e}");
                    0
                }
            };
            if let Some(startup) = self.startup.as_mut() {
                let room = MAX_STARTUP.saturating_sub(startup.len());
                startup.extend_from_slice(&buf[..n.min(room)]);
            }
            stream.forward(&buf[..n], n == 0);
            if n == 0 {
                self.stream = None;
                return;
            }
        }
    }

    /// The start-up output of a worker, taken once: it is ready, or it failed.
    pub fn take_startup(&mut self, pid: Pid) -> Vec<u8> {
        self.drain(pid);
        self.startup.take().unwrap_or_default()
    }

    /// The worker is reaped: forward what is left and close its pipe.
    pub fn finish(&mut self, pid: Pid) {
        self.drain(pid);
        self.stream = None;
        self.startup = None;
    }
}

impl Stream {
    fn forward(&mut self, data: &[u8], eof: bool) {
        self.partial.extend_from_slice(data);
        let cut = if eof || self.partial.len() >= MAX_LINE {
            self.partial.len()
        } else {
            match self.partial.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => return,
            }
        };
        if cut == 0 {
            return;
        }
        let mut out: Vec<u8> = self.partial.drain(..cut).collect();
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        // Whole lines, so they do not interleave with the master's own lines; never waits.
        crate::stderr_buffer::write(&out, crate::stderr_buffer::Origin::Worker);
    }
}
