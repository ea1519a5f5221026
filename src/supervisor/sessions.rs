//! Control-socket clients as the event loop sees them: a non-blocking stream, bounded input
//! split into lines, buffered output, a deadline, and who is on the other end.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::forward::Forward;
use super::state::Generation;
use crate::handoff::listeners::HeldSet;
use crate::handoff::serve::ServeTask;

/// Longest command line accepted; a client sending more without a newline is cut off.
pub const MAX_LINE: usize = 64 * 1024;
/// Control clients served at once; beyond, the listeners are not polled until one leaves.
pub const MAX_SESSIONS: usize = 16;
/// Output a client has not read beyond this is dropped with the client.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

pub enum Input {
    /// Complete lines were queued (maybe none yet).
    Lines,
    /// The client closed its side; queued lines are still answered.
    Closed,
    /// A line exceeded MAX_LINE, or the stream failed.
    Broken(String),
}

/// An exchange a session's command started with another peer; the session runs its next
/// command when it ends.
pub enum Task {
    /// `@1 ...`, `@!pid ...`: the worker's answer is relayed.
    Forward(Forward),
    /// `_getsocks` on the session's own stream: the sockets of `held` (kept open until the
    /// conversation ends, even if the master holds another set by then). Ends the session.
    Getsocks {
        serve: ServeTask,
        held: Rc<HeldSet>,
        /// What the stream waits for next.
        wants: PollFlags,
    },
}

impl Task {
    /// When to step it even if its fd says nothing.
    pub fn wakeup(&self) -> Instant {
        match self {
            Task::Forward(f) => f.deadline(),
            Task::Getsocks { serve, .. } => serve.wakeup(),
        }
    }

    /// Its own fd; None: the session's stream.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Task::Forward(f) => Some(f.fd()),
            Task::Getsocks { .. } => None,
        }
    }

    pub fn interest(&self) -> PollFlags {
        match self {
            Task::Forward(f) => f.interest(),
            Task::Getsocks { wants, .. } => *wants,
        }
    }
}

pub struct Session {
    pub stream: UnixStream,
    pub peer_pid: i32,
    pub peer_uid: u32,
    /// May run commands that change state or hand out sockets.
    pub privileged: bool,
    /// Which listener it came through (index into the loop's listeners).
    pub listener: usize,
    /// `prompt` mode: answers are followed by a prompt and the connection stays open.
    pub interactive: bool,
    /// Waiting for the first reload of a generation above this one to finish.
    pub awaiting_reload: Option<Generation>,
    /// A command in progress with another peer (not bound by the idle deadline: it has its own).
    pub task: Option<Task>,
    /// Lines received but not yet run (those behind a reload wait for it).
    pub queued: VecDeque<String>,
    /// The commands of the line being run; None marks the end of that line.
    pub commands: VecDeque<Option<String>>,
    /// Nothing more will be read; close once the output is written.
    pub closing: bool,
    pub deadline: Instant,
    /// A client idle this long is disconnected (not while it awaits a reload): `--cli-timeout`.
    idle_timeout: Duration,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

impl Session {
    pub fn new(
        stream: UnixStream,
        peer_pid: i32,
        peer_uid: u32,
        privileged: bool,
        listener: usize,
        idle_timeout: Duration,
    ) -> io::Result<Session> {
        stream.set_nonblocking(true)?;
        Ok(Session {
            stream,
            peer_pid,
            peer_uid,
            privileged,
            listener,
            interactive: false,
            awaiting_reload: None,
            task: None,
            queued: VecDeque::new(),
            commands: VecDeque::new(),
            closing: false,
            deadline: Instant::now() + idle_timeout,
            idle_timeout,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn wants_output(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Whether the session is done: closing with everything written.
    pub fn finished(&self) -> bool {
        self.closing
            && self.outbuf.is_empty()
            && self.awaiting_reload.is_none()
            && self.task.is_none()
            && self.queued.is_empty()
            && self.commands.is_empty()
    }

    /// Reads what is available and queues complete lines.
    pub fn read(&mut self) -> Input {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match (&self.stream).read(&mut buf) {
                Ok(0) => {
                    self.split_lines(true);
                    return Input::Closed;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.deadline = Instant::now() + self.idle_timeout;
                    self.split_lines(false);
                    let too_long = self.queued.iter().any(|l| l.len() > MAX_LINE);
                    if too_long || self.inbuf.len() > MAX_LINE {
                        return Input::Broken(format!("command line longer than {MAX_LINE} bytes"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Lines,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Input::Broken(e.to_string()),
            }
        }
    }

    fn split_lines(&mut self, eof: bool) {
        while let Some(i) = self.inbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.inbuf.drain(..=i).collect();
            self.queued.push_back(line_text(&line));
        }
        // A last command without its newline still counts when the client closes after it.
        if eof && !self.inbuf.is_empty() {
            let line = std::mem::take(&mut self.inbuf);
            self.queued.push_back(line_text(&line));
        }
    }

    pub fn write(&mut self, text: &[u8]) {
        if self.outbuf.len() + text.len() > MAX_OUTPUT {
            self.closing = true;
            return;
        }
        self.outbuf.extend_from_slice(text);
    }

    /// Writes what the socket takes now. Err: the client is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            match (&self.stream).write(&self.outbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbuf.drain(..n);
                    self.deadline = Instant::now() + self.idle_timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}
