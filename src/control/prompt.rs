//! The prompt of an interactive master CLI session (`prompt`), in haproxy's shape
//! (src/cli.c: `pcli_write_prompt`): who the session's commands go to, `[ReloadFailed]` after a
//! failed reload, the session's modes, then `> `.

use crate::control::levels::SessionLevel;

/// `master> `, `master[ReloadFailed]> ` (the last reload failed: haproxy's `failedreloads`,
/// reset by a successful one), `<pid>> ` when an `@` alone made worker `pid` the default
/// target; the session's modes as `(xed)` before the `> ` ([`SessionLevel::prompt_flags`]).
pub fn prompt(default_pid: Option<i32>, reload_failed: bool, level: &SessionLevel) -> String {
    let who = match default_pid {
        None if reload_failed => "master[ReloadFailed]".to_string(),
        None => "master".to_string(),
        Some(pid) => pid.to_string(),
    };
    format!("{who}{}> ", level.prompt_flags())
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
        assert_eq!(prompt(None, false, &none), "master> ");
        assert_eq!(prompt(None, true, &none), "master[ReloadFailed]> ");
        assert_eq!(prompt(None, false, &m(false, true, false)), "master(e)> ");
        assert_eq!(prompt(None, false, &m(true, true, false)), "master(xe)> ");
        assert_eq!(
            prompt(Some(24484), false, &m(true, true, false)),
            "24484(xe)> "
        );
        assert_eq!(prompt(None, false, &m(true, false, true)), "master(xd)> ");
        assert_eq!(prompt(None, false, &m(false, false, true)), "master(d)> ");
        assert_eq!(
            prompt(None, true, &m(false, true, false)),
            "master[ReloadFailed](e)> "
        );
        // A worker as the target: its pid, whatever the reloads did.
        assert_eq!(
            prompt(Some(25255), true, &m(false, true, false)),
            "25255(e)> "
        );
        assert_eq!(prompt(Some(7), false, &none), "7> ");
    }
}
