//! The prompt of an interactive master CLI session (`prompt`), in haproxy's shape
//! (src/cli.c: `pcli_write_prompt`): who the session's commands go to, `[ReloadFailed]` after a
//! failed reload, the session's modes, then `> `; with `prompt timed` (haproxy 2.8+), an
//! uptime stamp first.

use std::time::Duration;

use crate::control::keywords::Dialect;
use crate::control::levels::SessionLevel;

/// A session's prompt settings: a prompt after each answer, and the uptime stamp in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptMode {
    pub prompt: bool,
    pub timed: bool,
}

/// haproxy 3.2+'s answer to a `prompt` argument its master does not take (cli.c,
/// `pcli_find_and_exec_kw`; `n` is its workers' only).
pub const PROMPT_USAGE: &str = "Usage: prompt [help | i | p | timed]*\n\
Changes the default prompt and interactive mode. Available options:\n  \
help    display this help\n  \
i       set to interactive mode only (no prompt, multi-command)\n  \
p       set to prompt+interactive mode (prompt + multi-command)\n  \
timed   toggle displaying the current date in the prompt\n\
Without any argument, toggles between i<->p.\n";

/// `prompt <args>` (the words after `prompt`) on the master of `dialect`: the session's new
/// settings, or Err with [`PROMPT_USAGE`] (haproxy 3.2+, the settings unchanged).
/// - before 2.8: prompt mode toggled, the arguments ignored;
/// - 2.8 to 3.1 (ea07715cc): `timed` first turns prompt mode on and toggles the stamp;
///   anything else toggles prompt mode;
/// - 3.2+ (c347cb73f): `i` (no prompt), `p` (prompt) set the mode, `timed` toggles the stamp
///   and sets `p` unless `i` is given; no argument toggles prompt mode.
///   The master's sessions always take one command after another, so `i` is only "no prompt".
pub fn apply_prompt(
    mode: PromptMode,
    args: &[&str],
    dialect: Dialect,
) -> Result<PromptMode, &'static str> {
    let mut next = mode;
    if !dialect.at_least((2, 8)) {
        next.prompt = !mode.prompt;
    } else if !dialect.at_least((3, 2)) {
        if args.first() == Some(&"timed") {
            next.prompt = true;
            next.timed = !mode.timed;
        } else {
            next.prompt = !mode.prompt;
        }
    } else {
        let (mut set, mut timed) = (None, false);
        for &arg in args {
            match arg {
                "i" => set = Some(false),
                "p" => set = Some(true),
                "timed" => timed = true,
                _ => return Err(PROMPT_USAGE),
            }
        }
        if timed {
            next.timed = !mode.timed;
            set = set.or(Some(true));
        }
        next.prompt = set.unwrap_or(!mode.prompt);
    }
    Ok(next)
}

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

    /// `prompt` with arguments per version (2.6 and 3.0: tests/transcripts/*/prompt_i_p.steps,
    /// prompt_timed.steps; 3.4: prompt_n_bad.steps).
    #[test]
    fn prompt_arguments() {
        let off = PromptMode::default();
        let on = PromptMode {
            prompt: true,
            timed: false,
        };
        let timed = PromptMode {
            prompt: true,
            timed: true,
        };
        let v = |d: (u32, u32), mode, args: &[&str]| apply_prompt(mode, args, Dialect(d));
        for d in [(2, 6), (3, 0), (3, 2), (3, 4)] {
            assert_eq!(v(d, off, &[]), Ok(on), "{d:?}");
            assert_eq!(v(d, on, &[]), Ok(off), "{d:?}");
        }
        // Before 3.2 every argument but `timed` toggles; 2.6 ignores `timed` too.
        assert_eq!(v((2, 6), on, &["p"]), Ok(off));
        assert_eq!(v((2, 6), off, &["timed"]), Ok(on));
        assert_eq!(v((3, 0), on, &["p"]), Ok(off));
        assert_eq!(v((3, 0), off, &["timed"]), Ok(timed));
        assert_eq!(v((3, 0), timed, &["timed"]), Ok(on));
        // 3.2+: i and p set, timed toggles the stamp (and means p unless i is given).
        let d = (3, 4);
        assert_eq!(v(d, on, &["p"]), Ok(on));
        assert_eq!(v(d, off, &["i"]), Ok(off));
        assert_eq!(v(d, on, &["i"]), Ok(off));
        assert_eq!(v(d, off, &["timed"]), Ok(timed));
        assert_eq!(v(d, timed, &["timed"]), Ok(on));
        assert_eq!(
            v(d, off, &["timed", "i"]),
            Ok(PromptMode {
                prompt: false,
                timed: true
            })
        );
        for bad in [&["n"][..], &["x"], &["help"], &["p", "n"]] {
            assert_eq!(v(d, on, bad), Err(PROMPT_USAGE), "{bad:?}");
        }
        assert!(PROMPT_USAGE.ends_with("toggles between i<->p.\n"));
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
