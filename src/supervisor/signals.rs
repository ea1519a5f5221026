//! Signals as events: handlers only set a flag and write a byte to a self-pipe; the event loop
//! polls the pipe and does the work (no work in signal context, no signal-handling thread).

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libc::c_int;

/// The signals the master acts on, in the order a burst of them is handled: reaping first, so
/// decisions see which workers are gone; stop requests before reload requests. SIGURG asks for
/// an upgrade in place: haproxy gives SIGUSR2 and SIGHUP to reloads, and SIGURG is never sent
/// by a terminal or by the kernel to a process that did not ask for it (F_SETOWN).
pub const HANDLED: [c_int; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGHUP,
    libc::SIGURG,
];

fn handled_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for sig in HANDLED {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            set.add(sig);
        }
    }
    set
}

/// Blocks the handled signals. The mask survives exec, so a signal that arrives while the new
/// image has no handler yet stays pending instead of killing the master (SIGTERM's default).
pub fn block_handled() -> io::Result<()> {
    handled_set().thread_block().map_err(io::Error::from)
}

/// Unblocks them once handlers are installed; pending ones are delivered then.
pub fn unblock_handled() -> io::Result<()> {
    handled_set().thread_unblock().map_err(io::Error::from)
}

pub struct Signals {
    rx: UnixStream,
    flags: Vec<(c_int, Arc<AtomicBool>)>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let mut flags = Vec::with_capacity(HANDLED.len());
        for sig in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            // The flag is set before the byte is written, so a wake-up always finds its flag.
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
            flags.push((sig, flag));
        }
        Ok(Signals { rx, flags })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }

    /// Empties the pipe and returns each signal received since the last call, once, however
    /// many times it came: a storm of SIGUSR2 is one reload request.
    pub fn take(&self) -> Vec<c_int> {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(sig, _)| *sig)
            .collect()
    }
}
