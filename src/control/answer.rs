//! What an answer of a master CLI or a haproxy stats socket says: done, failed, or refused.
//!
//! Recognised only by the sentences haproxy (src/cli.c, src/mworker.c) and hapmaster's master put
//! at the start of a command's answer, never by words further inside it: an answer is data (a
//! dump may quote anything); only its first line is the verdict.

/// haproxy's refusal: "Permission denied" from a stats socket below the command's `level`
/// (`cli_has_level`), "Permission denied!" from its master CLI; hapmaster's master answers
/// [`permission_denied_text`].
pub const PERMISSION_DENIED: &str = "Permission denied";
/// haproxy: "Unknown command, but maybe one of the following ones is a better match:" or
/// "Unknown command. Please enter ..." (2.6), "Unknown command: '<word>'..." (2.7 and later);
/// hapmaster answers as the haproxy version its workers run (`crate::control::keywords`).
pub const UNKNOWN_COMMAND: &str = "Unknown command";
/// haproxy's and hapmaster's master CLIs, for an `@` prefix that names no process.
pub const TARGET_NOT_FOUND: &str = "Can't find the target PID matching the prefix";
/// A reload that failed (haproxy 2.7+ and hapmaster).
pub const RELOAD_FAILED: &str = "Success=0";
/// hapmaster's master: `@1` while no worker serves.
pub const NO_CURRENT_WORKER: &str = "No current worker to send the command to";
/// hapmaster's master: a forwarded command whose worker did not answer.
pub const CANNOT_REACH_WORKER: &str = "Cannot reach worker pid";
/// haproxy's and hapmaster's master CLIs: the worker an `@` alone chose is gone.
pub const CANNOT_CONNECT: &str = "Can't connect to the target CLI!";
/// Older hapmaster masters (before issue 13): an `@` prefix alone.
pub const MISSING_COMMAND: &str = "Missing command after";
/// Older hapmaster masters (before issue 13): `@ @1 ...`.
pub const ONE_PREFIX: &str = "Only one @ prefix per command";

/// First lines that say the command failed.
const FAILURES: &[&str] = &[
    UNKNOWN_COMMAND,
    TARGET_NOT_FOUND,
    CANNOT_CONNECT,
    NO_CURRENT_WORKER,
    CANNOT_REACH_WORKER,
    MISSING_COMMAND,
    ONE_PREFIX,
];

/// Who refused, which decides what gives access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// hapmaster's master: only root and its own user (`uid`, when the answer names it) may run
    /// commands that change something or hand sockets out, whatever socket they come through.
    Master { uid: Option<u32> },
    /// haproxy: the socket's `level` is below the command's.
    Level,
}

/// What one answer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    Done,
    /// The first line of the first answer that reports a failure.
    Failed(&'a str),
    Refused(Refusal),
}

/// hapmaster's master's answer to a command the peer's uid may not run.
pub fn permission_denied_text(command: &str, master_uid: u32, peer_uid: u32) -> String {
    format!(
        "{PERMISSION_DENIED}: '{command}' needs root or the master's user (uid {master_uid}); \
         this client is uid {peer_uid}.\n"
    )
}

/// [`permission_denied_text`] for a client without credentials (an inet `-S fd@<n>`
/// socket's): it has no uid, so it runs the read-only commands only.
pub fn no_credentials_text(command: &str, master_uid: u32) -> String {
    format!(
        "{PERMISSION_DENIED}: '{command}' needs root or the master's user (uid {master_uid}); \
         this client came through a socket without peer credentials (not a unix socket), so \
         it runs read-only commands only.\n"
    )
}

/// The refusal a command's answer starts with, if it is one.
pub fn refusal(answer: &str) -> Option<Refusal> {
    let first = first_line(answer);
    match first.strip_prefix(PERMISSION_DENIED)? {
        "" | "!" => Some(Refusal::Level),
        rest if rest.starts_with(": '") => Some(Refusal::Master {
            uid: master_uid_in(rest),
        }),
        _ => None,
    }
}

/// The uid in "... the master's user (uid N); ...".
fn master_uid_in(text: &str) -> Option<u32> {
    let (_, after) = text.split_once("the master's user (uid ")?;
    let (digits, _) = after.split_once(')')?;
    digits.parse().ok()
}

/// The verdict on the whole answer to a line of `commands` commands (`;`-separated): each
/// command's answer ends with an empty line, so with several commands every line after an empty
/// one may start an answer; with one, only the first line does. A refusal anywhere wins over a
/// failure.
pub fn verdict(answer: &str, commands: usize) -> Verdict<'_> {
    let mut failed = None;
    for start in answer_starts(answer, commands) {
        if let Some(r) = refusal(start) {
            return Verdict::Refused(r);
        }
        let first = first_line(start);
        if failed.is_none()
            && (first == RELOAD_FAILED || FAILURES.iter().any(|f| first.starts_with(f)))
        {
            failed = Some(first);
        }
    }
    failed.map_or(Verdict::Done, Verdict::Failed)
}

/// The text from each place an answer may start.
fn answer_starts(answer: &str, commands: usize) -> impl Iterator<Item = &str> {
    let later = (commands > 1).then(|| {
        answer
            .match_indices("\n\n")
            .map(move |(i, _)| &answer[i + 2..])
            .filter(|rest| !rest.is_empty())
    });
    std::iter::once(answer).chain(later.into_iter().flatten())
}

fn first_line(text: &str) -> &str {
    text.split('\n').next().unwrap_or("").trim_end_matches('\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_and_hapmaster_refusals() {
        assert_eq!(refusal("Permission denied\n\n"), Some(Refusal::Level));
        assert_eq!(refusal("Permission denied!\n"), Some(Refusal::Level));
        assert_eq!(refusal("Permission denied\r\n"), Some(Refusal::Level));
        let ours = permission_denied_text("reload", 1000, 65534);
        assert_eq!(
            ours,
            "Permission denied: 'reload' needs root or the master's user (uid 1000); this \
             client is uid 65534.\n"
        );
        assert_eq!(refusal(&ours), Some(Refusal::Master { uid: Some(1000) }));
        // An older master's sentence: still ours, without the uid.
        assert_eq!(
            refusal("Permission denied: 'reload' needs root or the master's uid.\n"),
            Some(Refusal::Master { uid: None })
        );
        for not in [
            "",
            "Permission",
            "Permission denied by policy",
            " Permission denied",
            "permission denied",
            "Success=1\n--\nPermission denied\n",
        ] {
            assert_eq!(refusal(not), None, "{not:?}");
        }
    }

    #[test]
    fn failures_by_first_line() {
        for failed in [
            "Unknown command, but maybe one of the following ones is a better match:\n  x\n\n",
            "Unknown command. Please enter one of the following commands only:\n",
            "Unknown command: 'frob'. Please enter one of the following commands only:\n",
            "Unknown command 'frob'. Please enter one of the following commands only:\n",
            "Can't find the target PID matching the prefix '@7'\n",
            "Can't connect to the target CLI!\n",
            "Success=0\n--\nReload failed: x\n",
            "Missing command after '@1': e.g. '@1 show info'\n",
            "No current worker to send the command to (see 'show proc')\n",
            "Cannot reach worker pid 42: timed out\n",
        ] {
            assert_eq!(
                verdict(failed, 1),
                Verdict::Failed(failed.lines().next().unwrap()),
                "{failed:?}"
            );
        }
        assert_eq!(
            verdict("Permission denied\n\n", 1),
            Verdict::Refused(Refusal::Level)
        );
    }

    #[test]
    fn words_inside_data_are_data() {
        let info = "Name: HAProxy\nDescription: Unknown command\n\nPermission denied\n\n";
        assert_eq!(verdict(info, 1), Verdict::Done);
        assert_eq!(
            verdict("Success=1\n--\nUnknown command\n", 1),
            Verdict::Done
        );
        assert_eq!(verdict("", 1), Verdict::Done);
        assert_eq!(verdict("Success=0x\n", 1), Verdict::Done);
        assert_eq!(verdict(" Unknown command\n", 1), Verdict::Done);
    }

    #[test]
    fn several_commands_each_start_an_answer() {
        let two = "#<PID> type\n1 master\n\nUnknown command 'x'. Please enter ...\n\n";
        assert_eq!(verdict(two, 1), Verdict::Done);
        assert_eq!(
            verdict(two, 2),
            Verdict::Failed("Unknown command 'x'. Please enter ...")
        );
        let refused_second = "Unknown command 'x'.\n\nPermission denied: 'reload' needs root \
                              or the master's user (uid 0); this client is uid 1.\n\n";
        assert_eq!(
            verdict(refused_second, 2),
            Verdict::Refused(Refusal::Master { uid: Some(0) })
        );
        assert_eq!(verdict("a\n\nb\n\n", 2), Verdict::Done);
    }
}
