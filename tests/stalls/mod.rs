//! What the stall tests of issue 12 in tests/e2e_stalls.rs share: a peer that stalls, and how
//! long the master then takes to answer someone else. (Cases 3 and 4 are e2e_stderr_stall.rs
//! and e2e_notify_stall.rs, on their own.)
//!
//! Here a bound on time IS the requirement ("`show proc` answers within 100 ms while ..."), so the
//! tests measure the latency of the very operation, never a sleep, and every precondition is an
//! event the kernel shows (a process in state `T`, a connection waiting in a listener's queue, a
//! pipe a write would block on, a peer that closed). A master that blocks on the stalled peer
//! takes seconds; one that does not takes about a millisecond: [`LIMIT`] sits between the two
//! with room for a busy machine on both sides, and a slow attempt is retried only while the stall
//! still holds afterwards (so the master was not merely waiting for it to end).
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Conn, Target, EVENT};

/// The bound on an answer from a master that one peer stalls.
pub const LIMIT: Duration = Duration::from_millis(100);
/// An attempt still unanswered after this is a block, not a busy machine: no retry.
pub const BOUND: Duration = Duration::from_secs(2);
const ATTEMPTS: usize = 3;

pub const NOBODY: (u32, u32) = (65534, 65534);

/// One `show proc` on `socket`: connect, send, read the answer to its end. How long it took, or
/// why there was no answer within [`BOUND`].
pub fn show_proc_latency(socket: &Path) -> Result<Duration, String> {
    let (took, answer) = show_proc(socket, BOUND)?;
    if !answer.contains(" master ") {
        return Err(format!("not a show proc answer: {answer:?}"));
    }
    Ok(took)
}

/// One `show proc` on `socket`: its answer and how long it took, or why there was none within
/// `timeout`.
pub fn show_proc(socket: &Path, timeout: Duration) -> Result<(Duration, String), String> {
    let start = Instant::now();
    let target = Target::Unix(socket.to_path_buf());
    let mut c = Conn::connect(&target, timeout)
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    c.write_all(b"show proc\n")
        .map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    // As `socat` sends a piped line: the master answers every line until the client closes.
    if let Conn::Unix(s) = &c {
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| format!("shutting down the write side: {e}"))?;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!("no complete answer within {timeout:?}"));
        }
        c.set_timeouts(left).map_err(|e| e.to_string())?;
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no complete answer within {timeout:?}"))
            }
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    }
    Ok((
        start.elapsed(),
        String::from_utf8_lossy(&answer).into_owned(),
    ))
}

/// The attempts at one measured operation.
pub struct Measured {
    what: String,
    attempts: Vec<Attempt>,
}

enum Attempt {
    Took { took: Duration, stall_held: bool },
    Failed(String),
}

impl Measured {
    /// The last attempt answered within [`LIMIT`].
    pub fn ok(&self) -> bool {
        matches!(self.attempts.last(), Some(Attempt::Took { took, .. }) if *took < LIMIT)
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.what)?;
        for a in &self.attempts {
            match a {
                Attempt::Took { took, stall_held } => write!(
                    f,
                    " {took:.1?}{}",
                    if *stall_held || *took < LIMIT {
                        ""
                    } else {
                        " (the stall had ended by then)"
                    }
                )?,
                Attempt::Failed(why) => write!(f, " {why}")?,
            }
        }
        Ok(())
    }
}

/// Measures `op` while `stalled` holds (it says why not when it does not). Up to 3 attempts: a
/// slower one than [`LIMIT`] is retried only if it answered within [`BOUND`] and the stall still
/// holds after it. Panics if the stall does not hold at the start: the test set it up wrong.
pub fn during_stall(
    what: &str,
    stalled: &dyn Fn() -> Result<(), String>,
    mut op: impl FnMut() -> Result<Duration, String>,
) -> Measured {
    if let Err(why) = stalled() {
        panic!("{what}: the stall does not hold before measuring: {why}");
    }
    let mut attempts = Vec::new();
    for _ in 0..ATTEMPTS {
        match op() {
            Ok(took) if took < LIMIT => {
                attempts.push(Attempt::Took {
                    took,
                    stall_held: true,
                });
                break;
            }
            Ok(took) => {
                let stall_held = stalled().is_ok();
                attempts.push(Attempt::Took { took, stall_held });
                if !stall_held || took >= BOUND {
                    break;
                }
            }
            Err(why) => {
                attempts.push(Attempt::Failed(why));
                break;
            }
        }
    }
    Measured {
        what: what.to_string(),
        attempts,
    }
}

/// Connections to unix listeners whose path starts with `prefix` that no process has accepted
/// yet: /proc/net/unix lists such an embryo with its listener's path and inode 0.
pub fn unaccepted_connections(prefix: &Path) -> usize {
    let prefix = prefix.to_string_lossy().into_owned();
    let text = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter(|line| {
            // Num RefCount Protocol Flags Type St Inode Path
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f
                .get(3)
                .and_then(|x| u32::from_str_radix(x, 16).ok())
                .is_some_and(|flags| flags & 0x0001_0000 != 0);
            f.len() >= 8 && !listening && f[6] == "0" && f[7].starts_with(&prefix)
        })
        .count()
}

/// True once the other end of `s` has closed (unix sockets report it even while unread data is
/// still queued).
pub fn peer_closed(s: &impl AsFd) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_fd().as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// A stall made of client sessions holds while the master closes none of those open now.
pub fn none_closed_from_now(sessions: &[UnixStream]) -> impl Fn() -> Result<(), String> + '_ {
    let open = move || sessions.iter().filter(|s| !peer_closed(*s)).count();
    let kept = open();
    move || match open() {
        n if n == kept => Ok(()),
        n => Err(format!("the master closed {} of {kept} sessions", kept - n)),
    }
}

/// `n` connections to `path` made as `uid`/`gid` (SO_PEERCRED says so to the master). Made on a
/// thread of their own that switches only its own ids (the raw system calls, unlike the libc
/// wrappers, do not change the process's other threads) and ends once they are made.
pub fn connect_as((uid, gid): (u32, u32), path: &Path, n: usize) -> Vec<UnixStream> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: setresgid/setresuid on the calling thread only; -1 keeps an id as it is.
        let switched = unsafe {
            libc::syscall(libc::SYS_setresgid, -1i32, gid, -1i32) == 0
                && libc::syscall(libc::SYS_setresuid, -1i32, uid, -1i32) == 0
        };
        assert!(
            switched,
            "switching a thread to uid {uid}: {}",
            io::Error::last_os_error()
        );
        (0..n)
            .map(|_| {
                UnixStream::connect(&path).unwrap_or_else(|e| {
                    panic!("connecting to {} as uid {uid}: {e}", path.display())
                })
            })
            .collect()
    })
    .join()
    .expect("the connecting thread failed")
}

/// Reads from `s` until what came ends with `suffix` ([`EVENT`] deadline); `None` if the peer
/// closed first.
pub fn read_until_suffix(s: &mut UnixStream, suffix: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + EVENT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(suffix) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {:?} within {EVENT:?}; got {:?}",
            String::from_utf8_lossy(suffix),
            String::from_utf8_lossy(&got)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading: {e}"),
        }
    }
    Some(got)
}

/// A master CLI session in prompt mode, its first prompt read: the master has accepted it and
/// runs its commands. `None` if the master closed it instead (refused it).
pub fn try_prompt_session(mut s: UnixStream) -> Option<UnixStream> {
    s.write_all(b"prompt\n").ok()?;
    read_until_suffix(&mut s, b"master> ")?;
    Some(s)
}

/// [`try_prompt_session`] that must succeed.
pub fn prompt_session(s: UnixStream) -> UnixStream {
    try_prompt_session(s).expect("the master closed a prompt session before its first prompt")
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `<runtime dir>/master.sock`.
pub fn master_sock(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("master.sock")
}
