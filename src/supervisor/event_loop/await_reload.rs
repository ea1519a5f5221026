//! `await-reload`: the outcome of the reload a signal asked for, for a client that did not start it.
//!
//! systemd's `Type=notify-reload` sends the reload signal and then runs `ExecReload=`; with
//! `ExecReload=hapmaster reload --await` that command's exit status is what `systemctl reload`
//! reports. The signal is queued before the client even exists, and its handler runs before this
//! thread reads anything more, so the client's command finds the signal in the self-pipe at the
//! latest; signals are taken first. Then the reload the signal asked for is still to come or
//! running (wait for it), or it has ended (answer with its outcome, once, and only to a child of
//! the signal's sender: systemd runs `ExecReload=` as its own child, a shell runs `kill` and then
//! the client), or no signal is outstanding (wait for the next reload, however asked for). So a
//! client whose signal was sent by nobody it descends from never gets an old outcome.

use super::Master;
use crate::supervisor::state::Generation;

/// The reloads asked for by a signal, as `await-reload` needs them.
#[derive(Default)]
pub(super) struct SignalReloads {
    /// The last reload signal's reload has not ended: it is the first to end with a generation
    /// above this one (as a `reload` command waits).
    outstanding: Option<Generation>,
    /// Who sent the last reload signal (None: the kernel, or unknown).
    sender: Option<i32>,
    /// The answer of the last signal's reload, until one `await-reload` takes it.
    ended: Option<String>,
}

impl SignalReloads {
    /// A reload signal from `sender` came now; `last` is the newest generation started so far.
    /// A later signal replaces an earlier one's claim: its reload is the later one, which a
    /// client awaits.
    pub(super) fn requested(&mut self, last: Generation, sender: Option<i32>) {
        self.outstanding = Some(last);
        self.sender = sender;
        self.ended = None;
    }

    /// A reload of `generation` ended with this answer.
    pub(super) fn reload_ended(&mut self, generation: Generation, answer: &str) {
        if self.outstanding.is_some_and(|after| after < generation) {
            self.outstanding = None;
            self.ended = Some(answer.to_string());
        }
    }

    /// What a client whose parent is `parent` gets now; `last` is the newest generation started.
    fn claim(&mut self, parent: Option<i32>, last: Generation) -> Awaited {
        if let Some(after) = self.outstanding {
            return Awaited::After(after);
        }
        if self.sender.is_some() && self.sender == parent {
            if let Some(answer) = self.ended.take() {
                return Awaited::Ended(answer);
            }
        }
        Awaited::After(last)
    }
}

/// What an `await-reload` client gets.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Awaited {
    /// The answer now.
    Ended(String),
    /// Wait, as a `reload` client does, for the first reload above this generation to end.
    After(Generation),
}

impl Master<'_> {
    pub(super) fn await_reload(&mut self, peer: i32) -> Awaited {
        // The signal that belongs to this client is in the pipe by now, if it was ever sent.
        self.handle_signals();
        let parent = crate::proc_stat::Stat::of(peer).map(|s| s.ppid);
        let awaited = self
            .signal_reloads
            .claim(parent, self.state.last_generation());
        match &awaited {
            Awaited::Ended(_) => {
                log::info!("await-reload from pid {peer}: answered with the ended signal reload")
            }
            Awaited::After(g) => log::info!(
                "await-reload from pid {peer}: waiting for the first reload after generation {g}"
            ),
        }
        awaited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEMD: Option<i32> = Some(1);

    #[test]
    fn a_signal_reload_is_awaited_once() {
        let mut r = SignalReloads::default();
        r.requested(3, SYSTEMD);
        assert_eq!(r.claim(SYSTEMD, 3), Awaited::After(3));
        // A reload that began before the signal does not answer it.
        r.reload_ended(3, "Success=1\n--\nold\n");
        assert_eq!(r.outstanding, Some(3));
        assert_eq!(r.ended, None);
        r.reload_ended(4, "Success=0\n--\nbad\n");
        assert_eq!(r.outstanding, None);
        // Not for a client that is not the sender's child: it waits for the next reload.
        assert_eq!(r.claim(Some(4242), 4), Awaited::After(4));
        assert_eq!(r.claim(None, 4), Awaited::After(4));
        assert_eq!(
            r.claim(SYSTEMD, 4),
            Awaited::Ended("Success=0\n--\nbad\n".into())
        );
        assert_eq!(r.claim(SYSTEMD, 4), Awaited::After(4), "taken once");
        // Later reloads, asked for otherwise, are nobody's signal reload.
        r.reload_ended(5, "Success=1\n--\n");
        assert_eq!(r.ended, None);
    }

    #[test]
    fn a_signal_from_the_kernel_is_nobodys_to_claim_once_over() {
        let mut r = SignalReloads::default();
        r.requested(2, None);
        r.reload_ended(3, "Success=1\n--\n");
        assert_eq!(r.claim(None, 3), Awaited::After(3));
    }

    #[test]
    fn a_later_signal_replaces_the_claim() {
        let mut r = SignalReloads::default();
        r.requested(3, SYSTEMD);
        r.reload_ended(4, "Success=1\n--\nfirst\n");
        r.requested(4, SYSTEMD);
        assert_eq!(
            r.ended, None,
            "the earlier outcome is not the later signal's"
        );
        r.reload_ended(5, "Success=1\n--\nsecond\n");
        assert_eq!(r.ended.as_deref(), Some("Success=1\n--\nsecond\n"));
    }
}
