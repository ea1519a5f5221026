//! The master's stderr, written without ever waiting for whoever reads it.
//!
//! Everything the master prints goes through here: its own log lines (`crate::logging`) and its
//! workers' lines (`supervisor::output`). A reader that stops reading (`hapmaster ... 2>&1 |
//! (sleep 40)`, a container runtime's blocking log driver, a terminal paused with ^S) must not
//! stop the master: lines wait in a buffer of at most [`CAPACITY`] bytes, which the event loop
//! writes out whenever stderr has room (it polls stderr for POLLOUT only while the buffer holds
//! something). When the buffer is full, lines are dropped and counted until it has drained
//! completely; then one line, where the gap is, says how many went: "N lines of worker output
//! dropped: stderr is not being read".
//!
//! fd 2 shares its open file description with our parent and whoever else holds the same pipe
//! or terminal: setting O_NONBLOCK on it would make *their* writes fail with EAGAIN. So how a
//! write is kept from waiting depends on what stderr is:
//! - a pipe, FIFO or terminal is opened again through /proc/self/fd/2, which gives a description
//!   of our own (of the same pipe), made O_NONBLOCK;
//! - a socket (journald's stream, `JOURNAL_STREAM`) takes `send(MSG_DONTWAIT)`, a per-call flag;
//! - a regular file or /dev/null never waits for a reader: written as is;
//! - a pipe or terminal that cannot be opened again (no /proc, or a pipe of another user's) is
//!   written only when poll(2) says it has room, at most PIPE_BUF bytes at a time, which a pipe
//!   with room takes at once. Another writer filling the pipe in between, or a terminal stopped
//!   in between, could still make that one write wait: the only case left, and it is logged
//!   (debug) when it applies.
//!
//! A chunk written to a pipe ends at a newline and is at most PIPE_BUF bytes long, which the
//! kernel writes whole, so the master's lines do not interleave with other writers of the same
//! pipe (workers' `log stdout` under `2>&1`).
//!
//! Until [`make_nonblocking`] is called (client subcommands, `-c`, the watchdog) lines are written
//! blocking, as any command-line tool writes them.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

/// The most the master holds back for a stderr that is not being read.
pub const CAPACITY: usize = 1 << 20;
/// How long an exiting master (or one executing itself again) waits for stderr to take what
/// waits: a reader that is slow gets the last lines, one that is stuck costs this much.
pub const LAST_WORDS: Duration = Duration::from_millis(200);
/// Largest single write when lines need not be whole for the kernel (sockets, terminals, files).
const MAX_CHUNK: usize = 64 * 1024;

/// Who wrote a line, for the count of dropped lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Master,
    Worker,
}

/// Formats the master's own warning line (the drop notice) as the logger does.
pub type NoticeFormat = Box<dyn Fn(&str) -> Vec<u8> + Send>;

/// How bytes reach stderr without waiting.
enum Out {
    /// Our own open file description of the pipe or terminal, O_NONBLOCK.
    Own { file: File, pipe: bool },
    /// A socket: `send(MSG_DONTWAIT)` on a copy of fd 2.
    Socket(OwnedFd),
    /// A regular file, /dev/null, a device: a write does not wait for a reader.
    NeverWaits(OwnedFd),
    /// A pipe or terminal we could not open again: written only while poll says it has room.
    Polled(OwnedFd),
}

pub struct Sink {
    out: Out,
    /// `buf[start..]` waits to be written.
    buf: Vec<u8>,
    start: usize,
    /// Full: dropping every line until the buffer has drained.
    dropping: bool,
    dropped_master: u64,
    dropped_worker: u64,
    notice: NoticeFormat,
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

fn global() -> std::sync::MutexGuard<'static, Option<Sink>> {
    SINK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// From now on stderr is written without blocking (the master, from its start to its exit).
/// Returns what the master should know about how (a fallback), for its debug log.
pub fn make_nonblocking(notice: NoticeFormat) -> Option<String> {
    let (sink, note) = Sink::new(io::stderr().as_fd(), notice);
    *global() = Some(sink);
    note
}

/// One or more whole lines for stderr. Never waits once [`make_nonblocking`] was called.
pub fn write(bytes: &[u8], origin: Origin) {
    let mut sink = global();
    match sink.as_mut() {
        Some(sink) => sink.push(bytes, origin),
        None => {
            drop(sink);
            // A failed write to stderr has nowhere to be reported.
            let _ = io::stderr().lock().write_all(bytes);
        }
    }
}

/// True while lines wait for room: the event loop then polls stderr for POLLOUT.
pub fn wants_writable() -> bool {
    global().as_ref().is_some_and(Sink::is_pending)
}

/// stderr has room (POLLOUT), or is gone (POLLERR/POLLHUP): write what waits.
pub fn flush() {
    if let Some(sink) = global().as_mut() {
        sink.flush();
    }
}

/// Before the master exits or executes itself again: a bounded wait for stderr to take what
/// waits. What does not go by then is lost.
pub fn drain_for(limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let mut sink = global();
        let Some(s) = sink.as_mut() else {
            return;
        };
        s.flush();
        if !s.is_pending() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // Waited for without holding the lock: nothing else runs in the master, but a lock
        // held across a wait is a trap for whoever adds a thread.
        let fd = match s.out.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return,
        };
        drop(sink);
        let ms = left.as_millis().clamp(1, 60_000) as u16;
        let _ = poll(
            &mut [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)],
            PollTimeout::from(ms),
        );
    }
}

/// fd 2 now names something else (`-D` points it at /dev/null): what waits is written if it
/// can go at once, and from now on the new fd 2 is written. The old description is closed, so
/// the caller's pipe sees its end.
pub fn reattach() {
    if let Some(sink) = global().as_mut() {
        sink.flush();
        let (out, _) = classify(io::stderr().as_fd());
        sink.out = out;
        sink.buf = Vec::new();
        sink.start = 0;
        sink.dropping = false;
        sink.dropped_master = 0;
        sink.dropped_worker = 0;
    }
}

/// How `fd` (stderr) is written without waiting; a note when only the weakest way is left.
fn classify(fd: BorrowedFd<'_>) -> (Out, Option<String>) {
    // A copy shares fd 2's description and its flags, which are left alone.
    let copy = || fd.try_clone_to_owned();
    let kind = nix::sys::stat::fstat(fd).map(|st| st.st_mode & libc::S_IFMT);
    let pipe = kind == Ok(libc::S_IFIFO);
    let reopen = pipe || (kind == Ok(libc::S_IFCHR) && nix::unistd::isatty(fd).unwrap_or(false));
    if reopen {
        // O_NOCTTY: a terminal opened again must not become the controlling terminal of a
        // master that has none (`-D` called setsid).
        let opened = File::options()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        match opened {
            Ok(file) => return (Out::Own { file, pipe }, None),
            Err(e) => {
                if let Ok(copy) = copy() {
                    let note = format!(
                        "stderr ({}) cannot be opened again through /proc/self/fd/2 ({e}): it \
                         is written only when poll says it has room",
                        if pipe { "a pipe" } else { "a terminal" }
                    );
                    return (Out::Polled(copy), Some(note));
                }
            }
        }
    }
    match copy() {
        Ok(copy) if kind == Ok(libc::S_IFSOCK) => (Out::Socket(copy), None),
        Ok(copy) => (Out::NeverWaits(copy), None),
        // fd 2 is not open: every write fails and is discarded. The master opens /dev/null on
        // a closed fd 2 before anything else, so this is for completeness.
        Err(e) => {
            let null = File::options()
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from);
            match null {
                Ok(null) => (
                    Out::NeverWaits(null),
                    Some(format!("stderr cannot be used ({e}): discarded")),
                ),
                Err(_) => panic!("neither stderr nor /dev/null can be opened: {e}"),
            }
        }
    }
}

impl Out {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Out::Own { file, .. } => file.as_fd(),
            Out::Socket(fd) | Out::NeverWaits(fd) | Out::Polled(fd) => fd.as_fd(),
        }
    }

    /// Chunks that must stay whole: at most PIPE_BUF bytes, which a pipe takes in one piece.
    fn max_chunk(&self) -> usize {
        match self {
            Out::Own { pipe: true, .. } | Out::Polled(_) => libc::PIPE_BUF,
            _ => MAX_CHUNK,
        }
    }

    fn write(&self, chunk: &[u8]) -> io::Result<usize> {
        match self {
            Out::Own { file, .. } => (&*file).write(chunk),
            Out::Socket(fd) => send(
                fd.as_raw_fd(),
                chunk,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .map_err(io::Error::from),
            Out::NeverWaits(fd) => nix::unistd::write(fd, chunk).map_err(io::Error::from),
            Out::Polled(fd) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
                match poll(&mut fds, PollTimeout::ZERO) {
                    Ok(n) if n > 0 => nix::unistd::write(fd, chunk).map_err(io::Error::from),
                    Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// How much of `pending` to write at once: all of it if it fits in `max`, else up to the last
/// newline within `max` bytes, else (one line longer than `max`) `max` bytes.
fn chunk_len(pending: &[u8], max: usize) -> usize {
    if pending.len() <= max {
        return pending.len();
    }
    match pending[..max].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => max,
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    (bytes.iter().filter(|&&b| b == b'\n').count() as u64).max(1)
}

impl Sink {
    /// A sink writing to `fd` (stderr) without waiting, and a note for the log when only the
    /// weakest way (poll before each write) is left.
    pub fn new(fd: BorrowedFd<'_>, notice: NoticeFormat) -> (Sink, Option<String>) {
        let (out, note) = classify(fd);
        let sink = Sink {
            out,
            buf: Vec::new(),
            start: 0,
            dropping: false,
            dropped_master: 0,
            dropped_worker: 0,
            notice,
        };
        (sink, note)
    }

    pub fn is_pending(&self) -> bool {
        self.start < self.buf.len()
    }

    /// Queues whole lines and writes what stderr takes now.
    pub fn push(&mut self, bytes: &[u8], origin: Origin) {
        if bytes.is_empty() {
            return;
        }
        let over = |s: &Sink| s.buf.len() - s.start + bytes.len() > CAPACITY;
        if !self.dropping && over(self) {
            self.flush();
        }
        if self.dropping || over(self) {
            self.dropping = true;
            match origin {
                Origin::Master => self.dropped_master += count_lines(bytes),
                Origin::Worker => self.dropped_worker += count_lines(bytes),
            }
            return;
        }
        self.buf.extend_from_slice(bytes);
        self.flush();
    }

    /// Writes what waits until stderr takes no more; once all is written after a gap, says how
    /// many lines the gap holds.
    pub fn flush(&mut self) {
        loop {
            while self.is_pending() {
                let pending = &self.buf[self.start..];
                let len = chunk_len(pending, self.out.max_chunk());
                match self.out.write(&pending[..len]) {
                    Ok(0) => return,
                    Ok(n) => self.start += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.compact();
                        return;
                    }
                    // EPIPE, EIO: nobody can read what waits, nor a notice about it.
                    Err(_) => {
                        self.buf = Vec::new();
                        self.start = 0;
                        self.dropping = false;
                        self.dropped_master = 0;
                        self.dropped_worker = 0;
                        return;
                    }
                }
            }
            // All written: a large buffer's memory goes back.
            if self.buf.capacity() > MAX_CHUNK {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
            self.start = 0;
            if !self.dropping {
                return;
            }
            self.dropping = false;
            let text = self.drop_notice();
            self.buf.extend_from_slice(&(self.notice)(&text));
        }
    }

    fn drop_notice(&mut self) -> String {
        let (worker, master) = (self.dropped_worker, self.dropped_master);
        self.dropped_worker = 0;
        self.dropped_master = 0;
        let what = match master {
            0 => format!("{worker} lines of worker output"),
            _ => format!("{worker} lines of worker output and {master} of hapmaster's own"),
        };
        format!("{what} dropped: stderr is not being read")
    }

    /// Moves what waits to the front once the written part is the larger one.
    fn compact(&mut self) {
        if self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn notice() -> NoticeFormat {
        Box::new(|text| format!("NOTICE {text}\n").into_bytes())
    }

    fn pipe() -> (File, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (File::from(r), w)
    }

    fn nonblocking(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
    }

    /// Reads what the pipe holds now, without waiting.
    fn read_now(r: &mut File) -> Vec<u8> {
        let fl = nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(r.as_fd(), nix::fcntl::FcntlArg::F_SETFL(fl)).unwrap();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn line(n: usize, len: usize) -> Vec<u8> {
        let mut l = format!("line {n:06} ").into_bytes();
        l.resize(len - 1, b'x');
        l.push(b'\n');
        l
    }

    #[test]
    fn chunks_end_at_a_newline() {
        assert_eq!(chunk_len(b"ab\ncd\n", 10), 6);
        assert_eq!(chunk_len(b"ab\ncd\nef", 7), 6);
        assert_eq!(chunk_len(b"ab\ncd\nef", 5), 3);
        assert_eq!(chunk_len(b"abcdefgh", 5), 5);
        assert_eq!(chunk_len(b"", 5), 0);
    }

    #[test]
    fn a_pipe_nobody_reads_fills_the_buffer_then_drops_and_says_so() {
        let (mut r, w) = pipe();
        let (mut sink, note) = Sink::new(w.as_fd(), notice());
        assert!(note.is_none(), "{note:?}");
        assert!(matches!(sink.out, Out::Own { pipe: true, .. }));
        // The pipe's own description is untouched: whoever shares it still writes blocking.
        assert!(!nonblocking(w.as_fd()));

        // More than the pipe and the buffer hold together: none of these calls waits.
        let len = 1000;
        let total = (CAPACITY + (1 << 20)) / len;
        for n in 0..total {
            sink.push(&line(n, len), Origin::Worker);
        }
        sink.push(b"a master line\n", Origin::Master);
        assert!(sink.is_pending() && sink.dropping);
        assert!(sink.buf.len() - sink.start <= CAPACITY);

        // Read, flush, until the notice comes: lines in order up to the gap, then the notice.
        let mut text = Vec::new();
        for _ in 0..10_000 {
            text.extend(read_now(&mut r));
            sink.flush();
            if !sink.is_pending() {
                break;
            }
        }
        text.extend(read_now(&mut r));
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines.len() - 1;
        for (n, l) in lines[..kept].iter().enumerate() {
            assert!(l.starts_with(&format!("line {n:06} ")), "line {n}: {l:.20}");
        }
        assert_eq!(
            lines[kept],
            format!(
                "NOTICE {} lines of worker output and 1 of hapmaster's own dropped: stderr is \
                 not being read",
                total - kept
            )
        );
        // Then writing goes on as before.
        sink.push(b"after\n", Origin::Worker);
        assert_eq!(read_now(&mut r), b"after\n");
        assert!(!sink.is_pending());
    }

    #[test]
    fn a_short_stall_loses_nothing() {
        let (mut r, w) = pipe();
        let (mut sink, _) = Sink::new(w.as_fd(), notice());
        let mut sent = Vec::new();
        for n in 0..200 {
            let l = line(n, 1000);
            sent.extend_from_slice(&l);
            sink.push(&l, Origin::Worker);
        }
        assert!(sink.is_pending(), "200 kB fit in a 64 kB pipe?");
        let mut got = Vec::new();
        while sink.is_pending() {
            got.extend(read_now(&mut r));
            sink.flush();
        }
        got.extend(read_now(&mut r));
        assert_eq!(got, sent);
    }

    #[test]
    fn a_socket_is_sent_to_without_waiting() {
        use std::os::unix::net::UnixStream;
        let (mut reader, writer) = UnixStream::pair().unwrap();
        let (mut sink, _) = Sink::new(writer.as_fd(), notice());
        assert!(matches!(sink.out, Out::Socket(_)));
        for n in 0..2000 {
            sink.push(&line(n, 1000), Origin::Worker);
        }
        assert!(sink.is_pending());
        assert!(!nonblocking(writer.as_fd()));
        reader.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    sink.flush();
                    if !sink.is_pending() && got.ends_with(b"read\n") {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        let text = String::from_utf8(got).unwrap();
        assert!(text.starts_with("line 000000 "));
        assert!(text.ends_with(" lines of worker output dropped: stderr is not being read\n"));
    }

    #[test]
    fn a_regular_file_is_written_at_once() {
        let dir = crate::test_dir::temp_dir("stderr-buffer");
        let path = dir.path().join("log");
        let file = File::create(&path).unwrap();
        let (mut sink, _) = Sink::new(file.as_fd(), notice());
        assert!(matches!(sink.out, Out::NeverWaits(_)));
        sink.push(b"one\n", Origin::Master);
        sink.push(b"two\n", Origin::Worker);
        assert!(!sink.is_pending());
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
    }

    #[test]
    fn a_reader_gone_discards_and_goes_on() {
        let (r, w) = pipe();
        let (mut sink, _) = Sink::new(w.as_fd(), notice());
        drop(r);
        sink.push(b"lost\n", Origin::Master);
        assert!(!sink.is_pending());
    }
}
