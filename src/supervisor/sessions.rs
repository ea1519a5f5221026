//! Control-socket clients as the event loop sees them: a non-blocking stream, input taken a line
//! at a time, output buffered up to a mark (backpressure both ways: a client that does not read
//! its answers is not read either), a deadline per command line, and who is on the other end.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::forward::Forward;
use super::relay::Relay;
use super::state::Generation;
use crate::control::command::{next_command, Request};
use crate::control::levels::SessionLevel;
use crate::control::payload::Payload;
use crate::handoff::listeners::HeldSet;
use crate::handoff::serve::ServeTask;

/// Longest command line accepted; a client sending more without a newline is cut off.
pub const MAX_LINE: usize = 64 * 1024;
/// Control clients served at once per socket; beyond, the listener is not polled until one
/// leaves. On a `-S` socket, `admission` keeps some for root and the master's uid.
pub const MAX_SESSIONS: usize = 16;
/// Unwritten output at which a session's next command waits for the client to read (and the
/// client is not read meanwhile). One answer may go past it, so a session holds at most this
/// and one answer: well under 1 MiB for the master's own answers, which are small enough to be
/// made whole. A forwarded worker's answer, which can be any size, is streamed: read only up to
/// the mark (`room`).
pub const OUTPUT_MARK: usize = 64 * 1024;

pub enum Input {
    /// Read what there was, up to a complete line (maybe none yet).
    Lines,
    /// The client closed its side; the lines it sent are still answered.
    Closed,
    /// A line exceeded MAX_LINE, or the stream failed.
    Broken(String),
}

/// An exchange a session's command started with another peer; the session runs its next
/// command when it ends.
pub enum Task {
    /// `@1 ...`, `@!pid ...`: the worker's answer is relayed.
    Forward(Forward),
    /// `@@1`, `@@!pid` (haproxy 3.2+): the client and the worker's CLI, both ways, until the
    /// worker closes.
    Relay(Relay),
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
            Task::Relay(r) => r.deadline(),
            Task::Getsocks { serve, .. } => serve.wakeup(),
        }
    }

    /// Its own fd; None: the session's stream.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Task::Forward(f) => Some(f.fd()),
            Task::Relay(r) => Some(r.fd()),
            Task::Getsocks { .. } => None,
        }
    }

    pub fn interest(&self) -> PollFlags {
        match self {
            Task::Forward(f) => f.interest(),
            Task::Relay(r) => r.interest(),
            Task::Getsocks { wants, .. } => *wants,
        }
    }
}

/// A command that opened a payload (`... <<`), run once the payload's end line comes.
pub struct PendingPayload {
    /// As sent (for answers that quote it).
    pub command: String,
    /// What runs: for a worker, the command with its pattern (the worker's CLI gathers the
    /// payload again); for the master, without it.
    pub request: Request,
    pub payload: Payload,
}

pub struct Session {
    pub stream: UnixStream,
    pub peer_pid: i32,
    pub peer_uid: u32,
    /// May run commands that change state or hand out sockets.
    pub privileged: bool,
    /// Which listener it came through (index into the loop's listeners).
    pub listener: usize,
    /// `prompt` mode: every command's answer is followed by a prompt (`control::prompt`).
    /// Without it the session answers line after line all the same, until the client closes.
    pub interactive: bool,
    /// `prompt timed` (haproxy 2.8+): the prompt starts with an uptime stamp.
    pub timed: bool,
    /// Where commands without an `@` prefix go: None, the master; else the worker pid an `@`
    /// alone named when it was sent (haproxy's `pcli_next_pid`: a pid, so it names that worker
    /// even after a reload, and fails once it is gone).
    pub default_target: Option<i32>,
    /// Its access level and modes (haproxy's: `operator`, `expert-mode on`, ...), from its
    /// socket's `level` at first.
    pub level: SessionLevel,
    /// Waiting for the first reload of a generation above this one to finish.
    pub awaiting_reload: Option<Generation>,
    /// A command in progress with another peer (not bound by the session's deadline: it has its
    /// own).
    pub task: Option<Task>,
    /// A command whose payload is being read: the lines that come are its payload, not
    /// commands, until its end line. It is the client's time (the session's deadline applies).
    pub payload: Option<PendingPayload>,
    /// Nothing more will be read; close once the output is written.
    pub closing: bool,
    /// When the session is cut off (not while it awaits a reload or a task): `--cli-timeout`
    /// after it was accepted, after its last answer was written, or after the first byte of a
    /// command line that came while it had nothing to do. So an idle client gets the idle
    /// timeout, and a command line gets that long in all, from its first byte until its answer is
    /// written: a client trickling a byte at a time, or not reading its answer, is cut off.
    pub deadline: Instant,
    /// `--cli-timeout`.
    timeout: Duration,
    /// Bytes received and not yet taken as a line. Reading stops once it holds a complete line,
    /// so it holds at most one line and one read.
    inbuf: Vec<u8>,
    /// Where the first newline of `inbuf` is, if it has one.
    newline: Option<usize>,
    /// The line being run, and where its next command starts; None between lines.
    line: Option<(String, usize)>,
    outbuf: Vec<u8>,
}

/// What a session runs next.
pub enum Next {
    Command(String),
    /// The line's commands have all run.
    EndOfLine,
    /// No complete line is waiting.
    Nothing,
}

impl Session {
    pub fn new(
        stream: UnixStream,
        peer_pid: i32,
        peer_uid: u32,
        privileged: bool,
        listener: usize,
        timeout: Duration,
    ) -> io::Result<Session> {
        stream.set_nonblocking(true)?;
        Ok(Session {
            stream,
            peer_pid,
            peer_uid,
            privileged,
            listener,
            interactive: false,
            timed: false,
            default_target: None,
            level: SessionLevel::default(),
            awaiting_reload: None,
            task: None,
            payload: None,
            closing: false,
            deadline: Instant::now() + timeout,
            timeout,
            inbuf: Vec::new(),
            newline: None,
            line: None,
            outbuf: Vec::new(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub fn wants_output(&self) -> bool {
        !self.outbuf.is_empty()
    }

    /// Backpressure: whether the client should be read. Not while it has a line to run, waits
    /// for a reload or a task, or has not read [`OUTPUT_MARK`] of answers: what it sends
    /// meanwhile waits in the kernel's socket buffer, not in the master.
    pub fn wants_input(&self) -> bool {
        if let Some(Task::Relay(r)) = &self.task {
            // What it sends goes to the worker: read while the worker keeps up.
            return !self.closing && r.wants_client();
        }
        !self.closing && !self.busy() && self.outbuf.len() < OUTPUT_MARK
    }

    /// Whether what the client sends goes to a worker (`Task::Relay`).
    pub fn relaying(&self) -> bool {
        matches!(self.task, Some(Task::Relay(_)))
    }

    /// Whether it has a command to run now (the loop runs it without waiting for an fd).
    pub fn runnable(&self) -> bool {
        self.awaiting_reload.is_none()
            && self.task.is_none()
            && self.outbuf.len() < OUTPUT_MARK
            && (self.line.is_some() || self.newline.is_some())
    }

    /// Whether the next command must wait: too much of the client's output is unwritten.
    pub fn output_full(&self) -> bool {
        self.outbuf.len() >= OUTPUT_MARK
    }

    /// How much more output may be buffered for a streamed answer.
    pub fn room(&self) -> usize {
        OUTPUT_MARK.saturating_sub(self.outbuf.len())
    }

    /// A forwarded answer waits for the client to read: that wait is the client's, bound by the
    /// session's deadline, not the worker's.
    pub fn relay_stalled(&self) -> bool {
        matches!(self.task, Some(Task::Forward(_) | Task::Relay(_))) && self.output_full()
    }

    /// Whether the session's deadline applies now: not while the master waits for a reload or
    /// for another peer on the session's behalf.
    pub fn on_its_own_time(&self) -> bool {
        self.awaiting_reload.is_none() && (self.task.is_none() || self.relay_stalled())
    }

    /// A line to run, a reload or a task to wait for.
    fn busy(&self) -> bool {
        self.awaiting_reload.is_some()
            || self.task.is_some()
            || self.line.is_some()
            || self.newline.is_some()
    }

    /// Whether the session is done: closing with everything written.
    pub fn finished(&self) -> bool {
        self.closing && self.outbuf.is_empty() && !self.busy()
    }

    /// A wait (reload, task) ended: what remains of the line, and writing its answer, get
    /// `--cli-timeout` from now.
    pub fn restart_deadline(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Reads until a complete line is in (or nothing more is available). A line is never read
    /// beyond while it waits to run: backpressure for a client sending faster than it reads.
    pub fn read(&mut self) -> Input {
        let mut buf = [0u8; 16 * 1024];
        while self.newline.is_none() {
            // A payload's lines are part of its command's time.
            let at_rest = self.inbuf.is_empty()
                && self.outbuf.is_empty()
                && !self.busy()
                && self.payload.is_none();
            match (&self.stream).read(&mut buf) {
                Ok(0) => {
                    // A last command without its newline still counts when the client closes
                    // after it.
                    if !self.inbuf.is_empty() {
                        self.newline = Some(self.inbuf.len());
                        self.inbuf.push(b'\n');
                    }
                    return Input::Closed;
                }
                Ok(n) => {
                    // The first byte of a command line starts its time.
                    if at_rest {
                        self.restart_deadline();
                    }
                    let from = self.inbuf.len();
                    self.inbuf.extend_from_slice(&buf[..n]);
                    self.newline = buf[..n].iter().position(|&b| b == b'\n').map(|i| from + i);
                    if self.newline.unwrap_or(self.inbuf.len()) > MAX_LINE {
                        return Input::Broken(format!("command line longer than {MAX_LINE} bytes"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Lines,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Input::Broken(e.to_string()),
            }
        }
        Input::Lines
    }

    /// The next command to run: of the line being run, else of the next complete line.
    pub fn next_command(&mut self) -> Next {
        if let Some((line, at)) = &mut self.line {
            return match next_command(line, *at) {
                Some((command, next)) => {
                    *at = next;
                    Next::Command(command)
                }
                None => {
                    self.line = None;
                    Next::EndOfLine
                }
            };
        }
        let Some(end) = self.newline else {
            return Next::Nothing;
        };
        let text = line_text(&self.inbuf[..end]);
        self.inbuf.drain(..=end);
        self.newline = self.inbuf.iter().position(|&b| b == b'\n');
        self.line = Some((text, 0));
        self.next_command()
    }

    /// Reads what the client sent for the worker of its relay, up to the relay's mark.
    pub fn read_for_relay(&mut self) -> Input {
        let Some(Task::Relay(relay)) = &mut self.task else {
            return Input::Lines;
        };
        let mut buf = [0u8; 16 * 1024];
        while relay.wants_client() {
            match (&self.stream).read(&mut buf) {
                Ok(0) => {
                    relay.client_closed();
                    return Input::Closed;
                }
                Ok(n) => {
                    let now = Instant::now();
                    relay.from_client(&buf[..n], now);
                    self.deadline = now + self.timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Lines,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Input::Broken(e.to_string()),
            }
        }
        Input::Lines
    }

    /// What follows the command being run on its line (after its `;`), taken: None when it
    /// was the line's last.
    pub fn take_rest_of_line(&mut self) -> Option<String> {
        let (line, at) = self.line.take()?;
        line.get(at..).map(str::to_string)
    }

    /// The bytes received after the current line, taken (a relay sends them on).
    pub fn take_pending_input(&mut self) -> Vec<u8> {
        self.newline = None;
        std::mem::take(&mut self.inbuf)
    }

    /// The next line of a payload, as sent (without its newline): the rest of the line being
    /// run (haproxy's master takes what follows the `;` after the command that opened the
    /// payload as its first line), else the next complete line. None: none has come yet.
    pub fn next_payload_line(&mut self) -> Option<Vec<u8>> {
        if let Some((line, at)) = self.line.take() {
            if let Some(rest) = line.as_bytes().get(at..) {
                return Some(rest.to_vec());
            }
        }
        let end = self.newline?;
        let mut raw: Vec<u8> = self.inbuf.drain(..=end).collect();
        raw.pop();
        self.newline = self.inbuf.iter().position(|&b| b == b'\n');
        Some(raw)
    }

    /// Forgets what the client sent and was not run yet.
    pub fn discard_input(&mut self) {
        self.inbuf = Vec::new();
        self.newline = None;
        self.line = None;
        self.payload = None;
    }

    /// Output is bounded by backpressure, not here: a command runs only while less than
    /// [`OUTPUT_MARK`] is unwritten, so this holds at most that and one answer.
    pub fn write(&mut self, text: &[u8]) {
        self.outbuf.extend_from_slice(text);
    }

    /// Writes what the socket takes now. Err: the client is gone.
    pub fn flush(&mut self) -> io::Result<()> {
        let had_output = !self.outbuf.is_empty();
        let mut written = 0;
        let result = loop {
            if written == self.outbuf.len() {
                break Ok(());
            }
            match (&self.stream).write(&self.outbuf[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.outbuf.drain(..written);
        if had_output && self.outbuf.is_empty() {
            // Its answers are written: the next command line gets its time afresh. A buffer
            // grown by a large answer is given back.
            self.restart_deadline();
            if self.outbuf.capacity() > OUTPUT_MARK {
                self.outbuf = Vec::new();
            }
        }
        result
    }
}

fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end_matches(['\n', '\r'])
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let s = Session::new(ours, 1, 0, true, 0, Duration::from_secs(10)).unwrap();
        (s, theirs)
    }

    fn commands(s: &mut Session) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match s.next_command() {
                Next::Command(c) => out.push(c),
                Next::EndOfLine => out.push("<end>".into()),
                Next::Nothing => return out,
            }
        }
    }

    #[test]
    fn reading_stops_at_a_complete_line_until_it_has_run() {
        let (mut s, mut client) = pair();
        client.write_all(b"help;show proc\nhelp\n").unwrap();
        assert!(matches!(s.read(), Input::Lines));
        assert!(!s.wants_input() && s.runnable());
        assert_eq!(
            commands(&mut s),
            ["help", "show proc", "<end>", "help", "<end>"]
        );
        assert!(s.wants_input() && !s.runnable());
    }

    #[test]
    fn unread_output_stops_commands_and_reading() {
        let (mut s, mut client) = pair();
        s.write(&vec![b'x'; OUTPUT_MARK]);
        client.write_all(b"help\n").unwrap();
        assert!(s.output_full() && !s.wants_input());
        assert!(matches!(s.read(), Input::Lines));
        assert!(
            !s.runnable(),
            "a command runs while its client does not read"
        );
        // The client reads: what the socket took is gone, and the line may run.
        s.flush().unwrap();
        let mut buf = vec![0u8; 2 * OUTPUT_MARK];
        client.set_nonblocking(true).unwrap();
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            s.flush().unwrap();
        }
        assert!(!s.wants_output() && s.runnable());
    }

    #[test]
    fn a_trickled_line_gets_no_more_time_per_byte() {
        let (mut s, mut client) = pair();
        client.write_all(b"sh").unwrap();
        assert!(matches!(s.read(), Input::Lines));
        let started = s.deadline;
        client.write_all(b"ow").unwrap();
        assert!(matches!(s.read(), Input::Lines));
        assert_eq!(
            s.deadline, started,
            "a byte of the same line moved the deadline"
        );
    }

    #[test]
    fn payload_lines_are_taken_whole_the_first_after_the_command() {
        let (mut s, mut client) = pair();
        client
            .write_all(b"add map F <<;k1 v;1\r\nk2 v2\n\nshow proc\n")
            .unwrap();
        assert!(matches!(s.read(), Input::Lines));
        assert_eq!(commands_until_payload(&mut s), "add map F <<");
        let mut lines = Vec::new();
        while let Some(line) = s.next_payload_line() {
            lines.push(String::from_utf8(line).unwrap());
            if lines.len() == 3 {
                break;
            }
            let _ = s.read();
        }
        // The rest of the command's line as run (its `\r` trimmed), then lines as sent.
        assert_eq!(lines, ["k1 v;1", "k2 v2", ""]);
        let _ = s.read();
        assert_eq!(commands(&mut s), ["show proc", "<end>"]);
    }

    fn commands_until_payload(s: &mut Session) -> String {
        match s.next_command() {
            Next::Command(c) => c,
            _ => panic!("no command"),
        }
    }

    #[test]
    fn a_last_line_without_newline_runs_at_close() {
        let (mut s, mut client) = pair();
        client.write_all(b"show proc").unwrap();
        drop(client);
        assert!(matches!(s.read(), Input::Closed));
        assert_eq!(commands(&mut s), ["show proc", "<end>"]);
    }

    #[test]
    fn a_line_too_long_is_refused() {
        let (mut s, client) = pair();
        let writer = std::thread::spawn(move || {
            let _ = (&client).write_all(&vec![b'a'; MAX_LINE + 1]);
            client
        });
        let broken = loop {
            match s.read() {
                Input::Broken(why) => break why,
                Input::Lines => std::thread::yield_now(),
                Input::Closed => panic!("closed"),
            }
        };
        assert!(broken.contains("longer than"), "{broken}");
        drop(writer.join());
    }
}
