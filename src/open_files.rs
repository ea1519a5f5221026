//! The open file limit (RLIMIT_NOFILE) a master needs: one copy of every listening socket it
//! holds, one batch of a new worker's copies on top during a reload (a copy of a held socket is
//! closed as its batch arrives), and its own few fds. Below that the kernel drops the copies it
//! cannot install (MSG_CTRUNC) and the reload fails.

use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};

use crate::handoff::wire::MAX_FDS_ACCEPTED_PER_MESSAGE;

/// The master's own fds besides the listening sockets, with room to spare: at rest about 16
/// (signals, notify and control sockets, lock, pidfds, stderr pipes), plus a few per CLI
/// session and per draining worker.
pub const SLACK: usize = 64;

/// What a reload with `listeners` sockets (those the master holds, or the new worker's, whichever
/// is more) needs.
pub fn needed(listeners: usize) -> u64 {
    (listeners + MAX_FDS_ACCEPTED_PER_MESSAGE + SLACK) as u64
}

/// Why a reload with `held` sockets held and `announced` sent by the new worker ran out of fds,
/// and how to give it enough.
pub fn advice(held: usize, announced: usize) -> String {
    let listeners = held.max(announced);
    let need = needed(listeners);
    let (limit, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => (
            format!("is {} (hard {})", show(soft), show(hard)),
            hard.max(need),
        ),
        Err(e) => (format!("cannot be read ({e})"), need),
    };
    format!(
        "the open file limit {limit} and a reload with {listeners} listening sockets needs \
         about {need} ({listeners} + {MAX_FDS_ACCEPTED_PER_MESSAGE} + {SLACK}): set \
         LimitNOFILE={need} or more in the unit (or ulimit -n {need} before starting hapmaster), \
         or raise it live with prlimit --pid {} --nofile={need}:{}",
        std::process::id(),
        show(hard)
    )
}

/// The advice, when the soft limit is below what the next reload with `held` sockets needs.
pub fn shortfall(held: usize) -> Option<String> {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) if soft < needed(held) => Some(advice(held, held)),
        _ => None,
    }
}

fn show(limit: u64) -> String {
    if limit == RLIM_INFINITY {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_names_the_limit_to_set() {
        let text = advice(9_000, 9_001);
        let need = 9_001 + MAX_FDS_ACCEPTED_PER_MESSAGE + SLACK;
        assert!(text.contains(&format!("LimitNOFILE={need} ")), "{text}");
        assert!(text.contains(&format!("ulimit -n {need} ")), "{text}");
        assert!(text.contains(&format!("--nofile={need}:")), "{text}");
    }
}
