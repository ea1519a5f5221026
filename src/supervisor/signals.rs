//! Signals as events: handlers only record the signal (and who sent it) and write a byte to a
//! self-pipe; the event loop polls the pipe and does the work (no work in signal context, no
//! signal-handling thread).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

use libc::c_int;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::WithRawSiginfo;

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

/// Who sent a signal, when a process did (`kill`, `sigqueue`): the kernel's own signals (a
/// terminal hang-up, a child's exit) have none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub pid: i32,
    pub uid: u32,
}

/// One signal, however many times it came since the last look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub signal: c_int,
    /// The sender of the last one.
    pub sender: Option<Sender>,
    /// More than once: the requests were coalesced into this one.
    pub coalesced: bool,
}

impl std::fmt::Display for Received {
    /// `SIGUSR2 from pid 4242 (uid 0)`, or `SIGUSR2 several times, the last from pid 4242 (uid
    /// 0)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(signal_name(self.signal))?;
        if self.coalesced {
            f.write_str(" several times")?;
        }
        match (self.sender, self.coalesced) {
            (Some(s), false) => write!(f, " from pid {} (uid {})", s.pid, s.uid),
            (Some(s), true) => write!(f, ", the last from pid {} (uid {})", s.pid, s.uid),
            (None, _) => Ok(()),
        }
    }
}

fn signal_name(sig: c_int) -> &'static str {
    nix::sys::signal::Signal::try_from(sig).map_or("signal", |s| s.as_str())
}

fn sender_of(info: &libc::siginfo_t) -> Option<Sender> {
    // si_code <= 0 (SI_USER, SI_QUEUE, SI_TKILL...) is a signal a process sent; only then do
    // si_pid and si_uid name it.
    if info.si_code > 0 {
        return None;
    }
    // SAFETY: for a signal a process sent, the kernel fills the `kill` member of the union
    // these read.
    let (pid, uid) = unsafe { (info.si_pid(), info.si_uid()) };
    Some(Sender { pid, uid })
}

pub struct Signals {
    /// The handlers store each signal's siginfo (a few per signal, in fixed slots: no
    /// allocation in signal context) and write a byte to the pipe whose read end this holds.
    delivery: SignalDelivery<UnixStream, WithRawSiginfo>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        Signals::install_for(&HANDLED)
    }

    fn install_for(signals: &[c_int]) -> io::Result<Signals> {
        let (rx, tx) = UnixStream::pair()?;
        rx.set_nonblocking(true)?;
        tx.set_nonblocking(true)?;
        let delivery = SignalDelivery::with_pipe(rx, tx, WithRawSiginfo, signals)?;
        Ok(Signals { delivery })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.delivery.get_read().as_fd()
    }

    /// Empties the pipe and returns each signal received since the last call, once, however
    /// many times it came (a storm of SIGUSR2 is one reload request), in `HANDLED` order.
    pub fn take(&mut self) -> Vec<Received> {
        let mut out: Vec<Received> = Vec::new();
        for info in self.delivery.pending() {
            let sender = sender_of(&info);
            match out.iter_mut().find(|r| r.signal == info.si_signo) {
                Some(r) => {
                    r.sender = sender;
                    r.coalesced = true;
                }
                None => out.push(Received {
                    signal: info.si_signo,
                    sender,
                    coalesced: false,
                }),
            }
        }
        out.sort_by_key(|r| HANDLED.iter().position(|s| *s == r.signal));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIGURG to this very thread: delivered before the call returns, whatever the test
    /// harness's other threads do.
    fn raise_urg() {
        // SAFETY: pthread_self is this thread, alive; SIGURG is handled (or ignored by default).
        assert_eq!(
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGURG) },
            0
        );
    }

    #[test]
    fn a_signal_sent_by_a_process_names_it() {
        // Only SIGURG, whose default is to ignore it: the other tests of this process keep
        // their signals as they were.
        let mut signals = Signals::install_for(&[libc::SIGURG]).unwrap();
        let me = Sender {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
        };
        raise_urg();
        let got = signals.take();
        let urg = got.iter().find(|r| r.signal == libc::SIGURG);
        assert_eq!(
            urg.copied(),
            Some(Received {
                signal: libc::SIGURG,
                sender: Some(me),
                coalesced: false
            })
        );
        assert_eq!(
            urg.unwrap().to_string(),
            format!("SIGURG from pid {} (uid {})", me.pid, me.uid)
        );
        raise_urg();
        raise_urg();
        let got = signals.take();
        let urg = got.iter().find(|r| r.signal == libc::SIGURG).unwrap();
        assert!(urg.coalesced, "{got:?}");
        assert_eq!(
            urg.to_string(),
            format!(
                "SIGURG several times, the last from pid {} (uid {})",
                me.pid, me.uid
            )
        );
        assert!(signals.take().iter().all(|r| r.signal != libc::SIGURG));
    }
}
