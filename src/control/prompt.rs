//! The prompt of an interactive master CLI session (`prompt`), in haproxy's shape
//! (src/cli.c: `pcli_write_prompt`): who the session's commands go to, `[ReloadFailed]` after a
//! failed reload, the session's modes, then `> `; with `prompt timed` (haproxy 2.8+), an
//! uptime stamp first.

use std::time::Duration;

use crate::control::levels::SessionLevel;

/// The stamp `prompt timed` puts first: the uptime of the process the session's commands go to
/// (the master's, or the default target worker's), `[gone] ` once that worker has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    Up(Duration),
    Gone,
}

impl Stamp {
    /// `[d:hh:mm:ss] ` (haproxy's `pcli_write_prompt`), or `[gone] `.
    fn text(self) -> String {
        match self {
            Stamp::Gone => "[gone] ".to_string(),
            Stamp::Up(up) => {
                let up = up.as_secs();
                format!(
                    "[{}:{:02}:{:02}:{:02}] ",
                    up / 86400,
                    (up / 3600) % 24,
                    (up / 60) % 60,
                    up % 60
                )
            }
        }
    }
}

/// `master> `, `master[ReloadFailed]> ` (the last reload failed: haproxy's `failedreloads`,
/// reset by a successful one), `<pid>> ` when an `@` alone made worker `pid` the default
/// target; the session's modes as `(xed)` before the `> ` ([`SessionLevel::prompt_flags`]);
/// `stamp` first in `prompt timed` mode.
pub fn prompt(
    default_pid: Option<i32>,
    reload_failed: bool,
    stamp: Option<Stamp>,
    level: &SessionLevel,
) -> String {
    let who = match default_pid {
        None if reload_failed => "master[ReloadFailed]".to_string(),
        None => "master".to_string(),
        Some(pid) => pid.to_string(),
    };
    let stamp = stamp.map(Stamp::text).unwrap_or_default();
    format!("{stamp}{who}{}> ", level.prompt_flags())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prompts of tests/transcripts/2.6.12-1+deb12u4/prompt_modes.steps and
    /// prompt_reload_failed.steps.
    #[test]
    fn as_haproxy_writes_it() {
        let none = SessionLevel::default();
        let m = |experimental, expert, mcli_debug| SessionLevel {
            experimental,
            expert,
            mcli_debug,
            ..SessionLevel::default()
        };
        assert_eq!(prompt(None, false, None, &none), "master> ");
        assert_eq!(prompt(None, true, None, &none), "master[ReloadFailed]> ");
        assert_eq!(
            prompt(None, false, None, &m(false, true, false)),
            "master(e)> "
        );
        assert_eq!(
            prompt(None, false, None, &m(true, true, false)),
            "master(xe)> "
        );
        assert_eq!(
            prompt(Some(24484), false, None, &m(true, true, false)),
            "24484(xe)> "
        );
        assert_eq!(
            prompt(None, false, None, &m(true, false, true)),
            "master(xd)> "
        );
        assert_eq!(
            prompt(None, false, None, &m(false, false, true)),
            "master(d)> "
        );
        assert_eq!(
            prompt(None, true, None, &m(false, true, false)),
            "master[ReloadFailed](e)> "
        );
        // A worker as the target: its pid, whatever the reloads did.
        assert_eq!(
            prompt(Some(25255), true, None, &m(false, true, false)),
            "25255(e)> "
        );
        assert_eq!(prompt(Some(7), false, None, &none), "7> ");
    }

    /// tests/transcripts/3.0.11-1+deb13u4/prompt_timed.steps: `[0:00:00:09] master> `.
    #[test]
    fn timed() {
        let none = SessionLevel::default();
        let up = |s| Some(Stamp::Up(Duration::from_secs(s)));
        assert_eq!(prompt(None, false, up(9), &none), "[0:00:00:09] master> ");
        assert_eq!(
            prompt(Some(5009), false, up(10), &none),
            "[0:00:00:10] 5009> "
        );
        let long = 2 * 86400 + 3 * 3600 + 4 * 60 + 5;
        assert_eq!(
            prompt(None, true, up(long), &none),
            "[2:03:04:05] master[ReloadFailed]> "
        );
        assert_eq!(
            prompt(Some(7), false, Some(Stamp::Gone), &none),
            "[gone] 7> "
        );
    }
}
