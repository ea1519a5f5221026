//! Workers' stderr, forwarded line by line to the master's own stderr (through
//! `crate::stderr_buffer`, which never waits for a reader: a worker's pipe is always read, and
//! what stderr cannot take is dropped and counted there), with what a starting worker says kept
//! aside for the `reload` command's answer.

use std::collections::HashMap;
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

#[derive(Default)]
pub struct Outputs {
    streams: HashMap<Pid, Stream>,
    /// What each worker still starting has written so far.
    startup: HashMap<Pid, Vec<u8>>,
}

impl Outputs {
    /// A new worker's stderr: forwarded, and recorded until `take_startup`.
    pub fn add(&mut self, pid: Pid, pipe: OwnedFd) {
        self.adopt(pid, pipe);
        self.startup.insert(pid, Vec::new());
    }

    /// A running worker's stderr (taken over in an upgrade in place): forwarded only.
    pub fn adopt(&mut self, pid: Pid, pipe: OwnedFd) {
        let stream = Stream {
            pipe: File::from(pipe),
            partial: Vec::new(),
        };
        self.streams.insert(pid, stream);
    }

    pub fn fds(&self) -> impl Iterator<Item = (Pid, BorrowedFd<'_>)> {
        self.streams.iter().map(|(pid, s)| (*pid, s.pipe.as_fd()))
    }

    /// Reads what the worker wrote and forwards complete lines; closes the pipe at EOF.
    pub fn drain(&mut self, pid: Pid) {
        let Some(stream) = self.streams.get_mut(&pid) else {
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
            if let Some(startup) = self.startup.get_mut(&pid) {
                let room = MAX_STARTUP.saturating_sub(startup.len());
                startup.extend_from_slice(&buf[..n.min(room)]);
            }
            stream.forward(&buf[..n], n == 0);
            if n == 0 {
                self.streams.remove(&pid);
                return;
            }
        }
    }

    /// The start-up output of a worker, taken once: it is ready, or it failed.
    pub fn take_startup(&mut self, pid: Pid) -> Vec<u8> {
        self.drain(pid);
        self.startup.remove(&pid).unwrap_or_default()
    }

    /// The worker is reaped: forward what is left and close its pipe.
    pub fn forget(&mut self, pid: Pid) {
        self.drain(pid);
        self.streams.remove(&pid);
        self.startup.remove(&pid);
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
