//! Who gets a session on a `-S` socket. Of its [`MAX_SESSIONS`] slots, users other than root and
//! the master's uid may take [`OTHERS`] together and [`PER_UID`] each, so root and the master's
//! user always get in, and one other user cannot keep the rest out. A client refused is told so
//! in one line and closed; the log says so once per uid until that uid gets a session again.

use std::collections::HashMap;

use super::sessions::MAX_SESSIONS;

/// Slots of a `-S` socket only root and the master's uid may take.
pub const RESERVED: usize = 4;
/// Slots of a `-S` socket users other than root and the master's uid may take together.
pub const OTHERS: usize = MAX_SESSIONS - RESERVED;
/// Slots of a `-S` socket one user other than root and the master's uid may take.
pub const PER_UID: usize = 8;

/// Whether a client of `uid` gets a session, given the sessions the socket serves: `others` of
/// users other than root and the master's uid, `of_uid` of this uid. Err: the line to tell it.
/// Root and the master's uid (`privileged`) are limited only by [`MAX_SESSIONS`], which the
/// loop enforces by not accepting beyond it.
pub fn admit(privileged: bool, uid: u32, others: usize, of_uid: usize) -> Result<(), String> {
    if privileged {
        return Ok(());
    }
    if of_uid >= PER_UID {
        return Err(format!(
            "Too many sessions: uid {uid} has {of_uid}, the most one user other than root and \
             the master's may have on this socket; try again when one ends\n"
        ));
    }
    if others >= OTHERS {
        return Err(format!(
            "Too many sessions: users other than root and the master's have all {OTHERS} this \
             socket gives them; try again when one ends\n"
        ));
    }
    Ok(())
}

/// Uids whose refusals one socket counts at once.
const MAX_UIDS: usize = 1024;

/// Refusals of one socket, logged once per uid and burst: the first is logged, the rest are
/// counted and the count logged when that uid gets a session again. Holds one entry per uid
/// refused since.
#[derive(Default)]
pub struct Refusals {
    counts: HashMap<u32, u64>,
}

impl Refusals {
    /// A client of `uid` was refused: the line to log, for the first of a burst only.
    pub fn refused(&mut self, uid: u32, pid: i32, why: &str) -> Option<String> {
        // Bounded: beyond this many uids refused at once (only root can make that many), a new
        // one is neither counted nor logged.
        if self.counts.len() >= MAX_UIDS && !self.counts.contains_key(&uid) {
            return None;
        }
        let count = self.counts.entry(uid).or_insert(0);
        *count += 1;
        (*count == 1).then(|| {
            format!(
                "refused a session to pid {pid} (uid {uid}): {}; further refusals of uid {uid} \
                 are counted, not logged, until it gets a session again",
                why.trim_end().trim_end_matches("; try again when one ends")
            )
        })
    }

    /// A client of `uid` got a session: the line to log if it had been refused since.
    pub fn admitted(&mut self, uid: u32) -> Option<String> {
        let count = self.counts.remove(&uid)?;
        Some(format!(
            "uid {uid} got a session again after {count} refused connection{}",
            if count == 1 { "" } else { "s" }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_masters_uid_are_never_refused_here() {
        assert!(admit(true, 0, MAX_SESSIONS, MAX_SESSIONS).is_ok());
    }

    #[test]
    fn other_users_leave_slots_for_root_and_for_each_other() {
        assert!(admit(false, 65534, PER_UID - 1, PER_UID - 1).is_ok());
        let one = admit(false, 65534, PER_UID, PER_UID).unwrap_err();
        assert!(one.contains("uid 65534 has 8"), "{one}");
        assert!(admit(false, 1000, PER_UID, 0).is_ok());
        let all = admit(false, 1000, OTHERS, 4).unwrap_err();
        assert!(all.contains("all 12"), "{all}");
        assert!(all.ends_with('\n') && all.lines().count() == 1, "{all}");
    }

    #[test]
    fn refusals_are_logged_once_per_uid_and_burst() {
        let mut r = Refusals::default();
        assert!(r.refused(7, 100, "full\n").is_some());
        assert!(r.refused(7, 101, "full\n").is_none());
        assert!(r.refused(8, 102, "full\n").is_some());
        assert_eq!(
            r.admitted(7).as_deref(),
            Some("uid 7 got a session again after 2 refused connections")
        );
        assert!(r.admitted(7).is_none());
        assert!(r.refused(7, 103, "full\n").is_some());
    }
}
