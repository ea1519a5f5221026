//! The control socket's command language, parsed: pure, no I/O.
//!
//! Words and shapes follow haproxy's master CLI: commands separated by `;` (`\;` for a literal
//! one), `@1 <command>` for the current worker, `@!<pid> <command>` for any live worker, `@` /
//! `@0` / `@master` for the master itself.

use crate::control::answer::{MISSING_COMMAND, NO_CURRENT_WORKER, ONE_PREFIX, TARGET_NOT_FOUND};

/// One request, as the master acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    ShowProc,
    Reload,
    HardReload,
    /// `await-reload`: the outcome of the reload a signal asked for (see the event loop).
    AwaitReload,
    ShowListeners,
    Getsocks,
    Prompt,
    Quit,
    /// Sent as is to a worker's stats socket, its answer relayed.
    Forward {
        target: Target,
        command: String,
    },
    /// Any other command for the master: its words, for haproxy's keyword table
    /// (`crate::control::keywords`), which answers per haproxy version and session level.
    Keyword(Vec<String>),
    /// Not a command: the complete answer to send (ends with a newline; the CLI's blank line
    /// that ends every answer is not included).
    Unknown(String),
}

/// Which process an `@` prefix names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `@`, `@0`, `@master`.
    Master,
    /// `@1`: the current worker.
    Current,
    /// `@!<pid>`: any live worker.
    Pid(i32),
}

impl Request {
    /// Whether running it changes the master or a worker, or hands out sockets: such requests
    /// are only for peers allowed to administer (root and the master's own uid by default).
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Reload
            | Request::HardReload
            | Request::AwaitReload
            | Request::Forward { .. }
            | Request::Getsocks => true,
            Request::Keyword(_)
            | Request::ShowProc
            | Request::ShowListeners
            | Request::Prompt
            | Request::Quit
            | Request::Unknown(_) => false,
        }
    }
}

/// Splits one input line into commands: `;` separates them, `\;` stands for a literal `;`.
/// Each command is trimmed; empty ones are dropped. Other backslashes are kept as they are.
pub fn split_line(line: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut at = 0;
    while let Some((command, next)) = next_command(line, at) {
        commands.push(command);
        at = next;
    }
    commands
}

/// The next command of `line` from byte `at` on, as [`split_line`] splits it, and where the one
/// after it starts; None when no command is left. Lets the master take a line's commands one
/// at a time (a line of 64 KiB can hold 32 000 of them).
pub fn next_command(line: &str, mut at: usize) -> Option<(String, usize)> {
    while at < line.len() {
        let mut current = String::new();
        let mut end = line.len();
        let mut chars = line[at..].char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' if chars.peek().map(|&(_, c)| c) == Some(';') => {
                    current.push(';');
                    chars.next();
                }
                ';' => {
                    end = at + i + 1;
                    break;
                }
                _ => current.push(c),
            }
        }
        let trimmed = current.trim();
        if !trimmed.is_empty() {
            return Some((trimmed.to_string(), end));
        }
        at = end;
    }
    None
}

/// Parses one command (one element of [`split_line`]'s result).
pub fn parse_request(cmd: &str) -> Request {
    let cmd = cmd.trim();
    let (prefix, rest) = match cmd.strip_prefix('@') {
        None => return parse_master_command(cmd),
        Some(_) => cmd
            .split_once(char::is_whitespace)
            .map_or((cmd, ""), |(p, r)| (p, r.trim())),
    };
    let target = match parse_prefix(prefix) {
        Some(t) => t,
        None => return Request::Unknown(target_not_found_text(prefix)),
    };
    if rest.is_empty() {
        return Request::Unknown(format!(
            "{MISSING_COMMAND} '{}': e.g. '{} show info'\n",
            shorten(prefix),
            shorten(prefix)
        ));
    }
    match target {
        Target::Master if rest.starts_with('@') => {
            Request::Unknown(format!("{ONE_PREFIX}: '{}'\n", shorten(cmd)))
        }
        Target::Master => parse_master_command(rest),
        target => Request::Forward {
            target,
            command: rest.to_string(),
        },
    }
}

/// `@`, `@0`, `@master`, `@1`, `@!<pid>`; `None` for anything else.
fn parse_prefix(prefix: &str) -> Option<Target> {
    match prefix {
        "@" | "@0" | "@master" => Some(Target::Master),
        "@1" => Some(Target::Current),
        _ => {
            let digits = prefix.strip_prefix("@!")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            match digits.parse::<i32>() {
                Ok(pid) if pid > 0 => Some(Target::Pid(pid)),
                _ => None,
            }
        }
    }
}

/// The answer when an `@` prefix names no process: haproxy's sentence, and what exists here.
pub fn target_not_found_text(prefix: &str) -> String {
    format!(
        "{TARGET_NOT_FOUND} '{}': hapmaster has one current worker, \
         @1; any live worker is @!<pid> (see 'show proc'); the master is @\n",
        shorten(prefix)
    )
}

/// The answer when a `@!<pid>` names a pid that is not a live worker; for the session, which
/// knows the workers.
pub fn no_such_worker_text(target: Target) -> String {
    match target {
        Target::Pid(pid) => target_not_found_text(&format!("@!{pid}")),
        Target::Current => format!("{NO_CURRENT_WORKER} (see 'show proc')\n"),
        Target::Master => target_not_found_text("@"),
    }
}

fn parse_master_command(cmd: &str) -> Request {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    match words.as_slice() {
        ["show", "proc"] => Request::ShowProc,
        ["show", "listeners"] => Request::ShowListeners,
        ["reload"] => Request::Reload,
        ["hard-reload"] => Request::HardReload,
        ["await-reload"] => Request::AwaitReload,
        ["_getsocks"] => Request::Getsocks,
        ["prompt"] => Request::Prompt,
        ["quit"] => Request::Quit,
        _ => Request::Keyword(words.iter().map(|w| w.to_string()).collect()),
    }
}

/// At most 80 characters of `s`, printable, for quoting client input back in an answer.
pub(crate) fn shorten(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(80).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(target: Target, command: &str) -> Request {
        Request::Forward {
            target,
            command: command.to_string(),
        }
    }

    #[test]
    fn split() {
        assert_eq!(split_line("show proc"), vec!["show proc"]);
        assert_eq!(
            split_line(" show proc ; help;reload "),
            vec!["show proc", "help", "reload"]
        );
        assert!(split_line("").is_empty());
        assert!(split_line("   \t ").is_empty());
        assert!(split_line(";;").is_empty());
        assert!(split_line(" ; ; ").is_empty());
        assert_eq!(split_line("a;;b"), vec!["a", "b"]);
        assert_eq!(
            split_line(r"@1 set var x a\;b; help"),
            vec!["@1 set var x a;b", "help"]
        );
        assert_eq!(split_line(r"\;"), vec![";"]);
        // A backslash not before ';' stays, and does not escape what follows it.
        assert_eq!(split_line(r"a\b;c\\"), vec![r"a\b", r"c\\"]);
        assert_eq!(split_line(r"a\\;b"), vec![r"a\;b"]);
        assert_eq!(split_line("trailing\\"), vec!["trailing\\"]);
        assert_eq!(split_line("héllo;wörld"), vec!["héllo", "wörld"]);
    }

    #[test]
    fn master_commands() {
        assert_eq!(parse_request("help"), keyword(&["help"]));
        assert_eq!(parse_request("help reload"), keyword(&["help", "reload"]));
        assert_eq!(
            parse_request("show  version"),
            keyword(&["show", "version"])
        );
        assert_eq!(parse_request("show proc"), Request::ShowProc);
        assert_eq!(parse_request("  show \t proc  "), Request::ShowProc);
        assert_eq!(parse_request("show listeners"), Request::ShowListeners);
        assert_eq!(parse_request("reload"), Request::Reload);
        assert_eq!(parse_request("hard-reload"), Request::HardReload);
        assert_eq!(parse_request("_getsocks"), Request::Getsocks);
        assert_eq!(parse_request("prompt"), Request::Prompt);
        assert_eq!(parse_request("quit"), Request::Quit);
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse_request("@1 show info"),
            fwd(Target::Current, "show info")
        );
        assert_eq!(
            parse_request("@!1234 show stat"),
            fwd(Target::Pid(1234), "show stat")
        );
        assert_eq!(
            parse_request("@!1234   show  stat "),
            fwd(Target::Pid(1234), "show  stat")
        );
        assert_eq!(parse_request("@ help"), keyword(&["help"]));
        assert_eq!(parse_request("@0 show proc"), Request::ShowProc);
        assert_eq!(parse_request("@master reload"), Request::Reload);
        assert_eq!(parse_request("@\tshow proc"), Request::ShowProc);
    }

    fn keyword(words: &[&str]) -> Request {
        Request::Keyword(words.iter().map(|w| w.to_string()).collect())
    }

    fn unknown(r: Request) -> String {
        match r {
            Request::Unknown(text) => {
                assert!(text.ends_with('\n'), "{text:?}");
                text
            }
            other => panic!("expected Unknown, got {other:?}"),
        }
    }

    #[test]
    fn bad_prefixes() {
        let t = unknown(parse_request("@2 show info"));
        assert!(
            t.starts_with("Can't find the target PID matching the prefix '@2'"),
            "{t}"
        );
        assert!(t.contains("@1") && t.contains("@!<pid>"), "{t}");
        for bad in [
            "@!abc show info",
            "@! show info",
            "@!",
            "@!-5 x",
            "@!0 x",
            "@!99999999999 x",
            "@!12a x",
            "@x help",
            "@01 x",
        ] {
            let t = unknown(parse_request(bad));
            assert!(t.starts_with("Can't find the target PID"), "{bad}: {t}");
        }
        let t = unknown(parse_request("@1"));
        assert!(
            t.starts_with("Missing command after '@1': e.g. '@1 show info'"),
            "{t}"
        );
        let t = unknown(parse_request("@!42"));
        assert!(t.starts_with("Missing command after '@!42'"), "{t}");
        let t = unknown(parse_request("@"));
        assert!(t.starts_with("Missing command after '@'"), "{t}");
        let t = unknown(parse_request("@ @1 show info"));
        assert!(
            t.starts_with("Only one @ prefix per command: '@ @1 show info'"),
            "{t}"
        );
    }

    #[test]
    fn other_commands_go_to_the_keyword_table() {
        for (cmd, words) in [
            ("", &[][..]),
            ("foo", &["foo"][..]),
            ("show", &["show"]),
            ("show proc extra", &["show", "proc", "extra"]),
            ("reload now", &["reload", "now"]),
            ("RELOAD", &["RELOAD"]),
            ("_getsocks x", &["_getsocks", "x"]),
            ("expert-mode on", &["expert-mode", "on"]),
        ] {
            assert_eq!(parse_request(cmd), keyword(words), "{cmd:?}");
        }
    }

    #[test]
    fn very_long_lines() {
        let many = "help;".repeat(100_000);
        assert_eq!(split_line(&many).len(), 100_000);
        let prefixes = "@ ".repeat(100_000);
        assert!(matches!(parse_request(&prefixes), Request::Unknown(_)));
        let t = unknown(parse_request(&format!("@!{}", "9".repeat(100_000))));
        assert!(t.len() < 4096);
    }

    #[test]
    fn state_changes() {
        for r in [
            Request::Reload,
            Request::HardReload,
            Request::Getsocks,
            fwd(Target::Current, "show info"),
            fwd(Target::Pid(3), "disable server b/s"),
        ] {
            assert!(r.changes_state(), "{r:?}");
        }
        for r in [
            keyword(&["help"]),
            Request::ShowProc,
            Request::ShowListeners,
            Request::Prompt,
            Request::Quit,
            Request::Unknown("x\n".into()),
        ] {
            assert!(!r.changes_state(), "{r:?}");
        }
    }

    #[test]
    fn not_found_texts() {
        assert!(no_such_worker_text(Target::Pid(77))
            .starts_with("Can't find the target PID matching the prefix '@!77'"));
        assert!(no_such_worker_text(Target::Current).contains("No current worker"));
    }
}
