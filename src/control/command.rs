//! The control socket's command language, parsed: pure, no I/O.
//!
//! A line is read as haproxy's master CLI reads it (src/cli.c: `pcli_parse_request`): commands
//! end at an unescaped `;`, a backslash keeps the byte after it (`\;`, `\\`, `\ `), and a
//! command keeps its bytes, backslashes included: one sent to a worker (`@1 <command>`,
//! `@!<pid> <command>`) reaches it as typed, and the worker's own parser unescapes it. The
//! master's own commands are unescaped as haproxy's CLI parser does (`\x` → `x`). `@`, `@0`,
//! `@master` name the master; a prefix alone makes its process the session's default target.

use crate::control::answer::{CANNOT_CONNECT, TARGET_NOT_FOUND};
use crate::control::levels::SessionLevel;

/// haproxy's `MAX_CLI_ARGS`: words past it are not split (their tabs stay tabs when forwarded).
const MAX_CLI_ARGS: usize = 64;

/// One request, as the master acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `show proc`; `debug`: `show proc debug` (haproxy 3.1+: the fd columns).
    ShowProc {
        debug: bool,
    },
    Reload,
    HardReload,
    /// `await-reload`: the outcome of the reload a signal asked for (see the event loop).
    AwaitReload,
    ShowListeners,
    /// `show metrics`: hapmaster's counters in Prometheus' text format.
    ShowMetrics,
    Getsocks,
    /// `prompt <args>`: its words after `prompt` (`timed`, 3.2's `i`, `p`), which the
    /// session's dialect reads (`control::prompt::apply_prompt`).
    Prompt {
        args: Vec<String>,
    },
    Quit,
    /// `@<target>` alone: the session's commands go there from now on (haproxy's
    /// `pcli_next_pid`); `word` is the prefix as sent.
    SetTarget {
        target: Target,
        word: String,
    },
    /// Sent as is (escapes kept) to a worker's stats socket, its answer relayed. `prefix`: the
    /// `@` word that named the worker; None when it is the session's default target.
    Forward {
        target: Target,
        prefix: Option<String>,
        command: String,
    },
    /// `@@<prefix> [command]` (haproxy 3.2+): a two-way session with a worker's CLI; `target`
    /// is what `@<prefix>` names (None: nothing), `command` the rest of the command, blanks
    /// after the prefix skipped (it and what follows go to the worker as sent).
    Relay {
        target: Option<Target>,
        word: String,
        command: String,
    },
    /// An `@` word that names no process: haproxy's line, [`bad_prefix_text`].
    BadPrefix(String),
    /// Any other command for the master: its words, unescaped, for haproxy's keyword table
    /// (`crate::control::keywords`), which answers per haproxy version and session level.
    Keyword(Vec<String>),
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
            | Request::Relay { .. }
            | Request::Getsocks => true,
            Request::Keyword(_)
            | Request::ShowProc { .. }
            | Request::ShowListeners
            | Request::ShowMetrics
            | Request::Prompt { .. }
            | Request::Quit
            | Request::SetTarget { .. }
            | Request::BadPrefix(_) => false,
        }
    }
}

/// Splits one input line (without its newline) into commands, as [`next_command`] does.
pub fn split_line(line: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut at = 0;
    while let Some((command, next)) = next_command(line, at) {
        commands.push(command);
        at = next;
    }
    commands
}

/// The next command of `line` from byte `at` on, and where the one after it starts; None when
/// no command is left. A command ends at the first `;` not escaped by a backslash (a backslash
/// and the byte after it are skipped together, so `\\;` is an escaped backslash and then the
/// end); its bytes are kept as they are, untrimmed. Empty commands count, as in haproxy (an
/// empty line, `a;;b`, `a;` are answered as unknown commands). Lets the master take a line's
/// commands one at a time (a line of 64 KiB can hold 32 000 of them).
pub fn next_command(line: &str, at: usize) -> Option<(String, usize)> {
    if at > line.len() {
        return None;
    }
    let bytes = line.as_bytes();
    let mut i = at;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            // `;` is ASCII: never inside a multi-byte character, so `i` is a char boundary.
            b';' => return Some((line[at..i].to_string(), i + 1)),
            _ => i += 1,
        }
    }
    Some((line[at..].to_string(), line.len() + 1))
}

/// The words of `cmd` as haproxy's master CLI finds them (byte ranges, escapes kept): split on
/// spaces and tabs, a backslash keeping the byte after it in the word; at most
/// [`MAX_CLI_ARGS`].
pub(crate) fn words(cmd: &str) -> Vec<(usize, usize)> {
    let bytes = cmd.as_bytes();
    let blank = |b: u8| b == b' ' || b == b'\t';
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < MAX_CLI_ARGS {
        while i < bytes.len() && blank(bytes[i]) {
            i += 1;
        }
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && !blank(bytes[i]) {
            i += if bytes[i] == b'\\' { 2 } else { 1 };
        }
        let end = i.min(bytes.len());
        out.push((start, end));
        // haproxy ends the word with a NUL over the byte after it.
        i = end + 1;
    }
    out
}

/// What haproxy forwards of `cmd` from word `from` on (from the start of `cmd` when 0): the
/// bytes as sent, except that the one blank ending each split word becomes a space (haproxy
/// ends words with NULs, then turns every NUL into a space).
fn forwarded(cmd: &str, words: &[(usize, usize)], from: usize) -> String {
    let start = if from == 0 { 0 } else { words[from].0 };
    let mut out = cmd.as_bytes().to_vec();
    for &(_, end) in &words[from..] {
        if out.get(end) == Some(&b'\t') {
            out[end] = b' ';
        }
    }
    // Only ASCII tabs were replaced: still UTF-8.
    String::from_utf8(out.split_off(start)).expect("a tab replaced by a space keeps UTF-8")
}

/// The words of a command for the master itself, unescaped as haproxy's CLI parser does
/// (`cli_parse_request`): `\\` is a backslash, `\x` is `x`.
fn unescaped_words(cmd: &str) -> Vec<String> {
    words(cmd)
        .into_iter()
        .map(|(start, end)| {
            let mut word = String::new();
            let mut chars = cmd[start..end].chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => word.extend(chars.next()),
                    c => word.push(c),
                }
            }
            word
        })
        .collect()
}

/// Parses one command (one element of [`split_line`]'s result); `default` is where a command
/// without an `@` prefix goes (the master, or the worker an `@` alone chose). `severity_output`:
/// the master's proxy takes `set severity-output` for the session (haproxy 3.0 and later).
pub fn parse_request(cmd: &str, default: Target, severity_output: bool) -> Request {
    let words = words(cmd);
    let first = words.first().map(|&(s, e)| &cmd[s..e]);
    let second = words.get(1).map(|&(s, e)| &cmd[s..e]);
    match first {
        // haproxy's `pcli_find_bidir_prefix`: `@@` then what `@` takes; the command is not
        // split into words (it is the worker's).
        Some(word) if word.starts_with("@@") => Request::Relay {
            target: parse_prefix(&word[1..]),
            word: word.to_string(),
            command: cmd[words[0].1..]
                .trim_start_matches([' ', '\t', '\r', '\n'])
                .to_string(),
        },
        Some(word) if word.starts_with('@') => {
            let Some(target) = parse_prefix(word) else {
                return Request::BadPrefix(word.to_string());
            };
            if words.len() == 1 {
                return Request::SetTarget {
                    target,
                    word: word.to_string(),
                };
            }
            let rest = forwarded(cmd, &words, 1);
            match target {
                Target::Master => parse_master_command(&rest),
                target => Request::Forward {
                    target,
                    prefix: Some(word.to_string()),
                    command: rest,
                },
            }
        }
        // Taken by the master whatever the target (haproxy's `pcli_find_and_exec_kw`).
        Some("prompt") => Request::Prompt {
            args: words[1..]
                .iter()
                .map(|&(s, e)| cmd[s..e].to_string())
                .collect(),
        },
        Some("quit") => Request::Quit,
        // So are the session's level and modes (`pcli_find_and_exec_kw`), but only without a
        // prefix: `@1 expert-mode` asks the worker.
        Some(word) if SessionLevel::is_session_keyword(word) => parse_master_command(cmd),
        Some("set") if severity_output && second == Some("severity-output") => {
            parse_master_command(cmd)
        }
        _ => match default {
            Target::Master => parse_master_command(cmd),
            target => Request::Forward {
                target,
                prefix: None,
                command: forwarded(cmd, &words, 0),
            },
        },
    }
}

/// `@`, `@0`, `@master`, `@1`, `@!<pid>`; `None` for anything else (haproxy 2.5 and later know
/// no other relative pid; `@@<pid>` is haproxy 3.2's, unknown before).
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

/// haproxy's answer when an `@` prefix names no process, byte for byte (no blank line after
/// it: the master's proxy, not its CLI, says it).
pub fn bad_prefix_text(word: &str) -> String {
    format!("{TARGET_NOT_FOUND} '{word}'\n")
}

/// haproxy's answer when the session's default target (a worker's pid) is gone; the
/// connection closes after it.
pub fn cannot_connect_text() -> String {
    format!("{CANNOT_CONNECT}\n")
}

fn parse_master_command(cmd: &str) -> Request {
    let words = unescaped_words(cmd);
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["show", "proc"] => Request::ShowProc { debug: false },
        ["show", "listeners"] => Request::ShowListeners,
        ["show", "metrics"] => Request::ShowMetrics,
        ["reload"] => Request::Reload,
        ["hard-reload"] => Request::HardReload,
        ["await-reload"] => Request::AwaitReload,
        ["_getsocks"] => Request::Getsocks,
        ["prompt", rest @ ..] => Request::Prompt {
            args: rest.iter().map(|w| w.to_string()).collect(),
        },
        ["quit", ..] => Request::Quit,
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

    fn fwd(target: Target, prefix: &str, command: &str) -> Request {
        Request::Forward {
            target,
            prefix: Some(prefix.to_string()),
            command: command.to_string(),
        }
    }

    fn parse(cmd: &str) -> Request {
        parse_request(cmd, Target::Master, true)
    }

    const SHOW_PROC: Request = Request::ShowProc { debug: false };

    fn prompt(args: &[&str]) -> Request {
        Request::Prompt {
            args: args.iter().map(|w| w.to_string()).collect(),
        }
    }

    fn keyword(words: &[&str]) -> Request {
        Request::Keyword(words.iter().map(|w| w.to_string()).collect())
    }

    #[test]
    fn split() {
        assert_eq!(split_line("show proc"), vec!["show proc"]);
        assert_eq!(
            split_line(" show proc ; help;reload "),
            vec![" show proc ", " help", "reload "]
        );
        // Empty commands are commands, as in haproxy (answered as unknown).
        assert_eq!(split_line(""), vec![""]);
        assert_eq!(split_line(";;"), vec!["", "", ""]);
        assert_eq!(split_line("a;"), vec!["a", ""]);
        assert_eq!(split_line("a;;b"), vec!["a", "", "b"]);
        // Escapes are kept: the worker unescapes what it is sent.
        assert_eq!(
            split_line(r"@1 set var x a\;b; help"),
            vec![r"@1 set var x a\;b", " help"]
        );
        assert_eq!(split_line(r"\;"), vec![r"\;"]);
        assert_eq!(split_line(r"a\b;c\\"), vec![r"a\b", r"c\\"]);
        // An escaped backslash, then the end of the command (haproxy's reading).
        assert_eq!(split_line(r"a\\;b"), vec![r"a\\", "b"]);
        assert_eq!(split_line(r"a\\\;b"), vec![r"a\\\;b"]);
        assert_eq!(split_line("trailing\\"), vec!["trailing\\"]);
        assert_eq!(split_line("héllo;wörld"), vec!["héllo", "wörld"]);
        assert_eq!(split_line("\\é;x"), vec!["\\é", "x"]);
    }

    /// The transcripts' escaped lines (tests/transcripts/*/escape_*.in, tab_after_prefix.in):
    /// what reaches the worker is what haproxy's master sends it.
    #[test]
    fn escapes_reach_the_worker_as_sent() {
        let line = r"@1 add acl F Mon\ User\ Agent\;;@1 show acl F";
        let commands: Vec<Request> = split_line(line).iter().map(|c| parse(c)).collect();
        assert_eq!(
            commands,
            vec![
                fwd(Target::Current, "@1", r"add acl F Mon\ User\ Agent\;"),
                fwd(Target::Current, "@1", "show acl F"),
            ]
        );
        let line = "@1 add acl F a\\\\b\\\tc;@1 show acl F";
        assert_eq!(
            parse(&split_line(line)[0]),
            fwd(Target::Current, "@1", "add acl F a\\\\b\\\tc")
        );
        // A tab ending a word becomes a space, as haproxy sends it; an escaped one stays.
        assert_eq!(
            parse("@1\tshow\tversion"),
            fwd(Target::Current, "@1", "show version")
        );
        assert_eq!(
            parse("@1  show \t version  "),
            fwd(Target::Current, "@1", "show \t version  ")
        );
        assert_eq!(
            parse_request("\tshow\tinfo", Target::Pid(7), true),
            Request::Forward {
                target: Target::Pid(7),
                prefix: None,
                // The blank before the first word is not a word's end: kept.
                command: "\tshow info".into()
            }
        );
    }

    #[test]
    fn words_keep_escapes_and_master_words_lose_them() {
        let cmd = r"a\ b c\\ d\";
        let w: Vec<&str> = words(cmd).iter().map(|&(s, e)| &cmd[s..e]).collect();
        assert_eq!(w, vec![r"a\ b", r"c\\", r"d\"]);
        assert_eq!(unescaped_words(cmd), vec!["a b", r"c\", "d"]);
        assert_eq!(unescaped_words(r"show\ version"), vec!["show version"]);
        // `show\ version` is one word on the master: unknown, as on haproxy's.
        assert_eq!(parse(r"show\ version"), keyword(&["show version"]));
        assert_eq!(parse(r"show pr\oc"), SHOW_PROC);
        let many = "w ".repeat(100);
        assert_eq!(words(&many).len(), MAX_CLI_ARGS);
    }

    #[test]
    fn master_commands() {
        assert_eq!(parse("help"), keyword(&["help"]));
        assert_eq!(parse("help reload"), keyword(&["help", "reload"]));
        assert_eq!(parse("show  version"), keyword(&["show", "version"]));
        assert_eq!(parse("show proc"), SHOW_PROC);
        assert_eq!(parse("  show \t proc  "), SHOW_PROC);
        assert_eq!(parse("show listeners"), Request::ShowListeners);
        assert_eq!(parse("show metrics"), Request::ShowMetrics);
        assert_eq!(parse("reload"), Request::Reload);
        assert_eq!(parse("hard-reload"), Request::HardReload);
        assert_eq!(parse("_getsocks"), Request::Getsocks);
        assert_eq!(parse("prompt"), prompt(&[]));
        assert_eq!(parse("prompt timed"), prompt(&["timed"]));
        assert_eq!(parse("@ prompt timed"), prompt(&["timed"]));
        assert_eq!(parse("prompt i"), prompt(&["i"]));
        assert_eq!(parse("prompt  p\ttimed"), prompt(&["p", "timed"]));
        assert_eq!(parse("quit"), Request::Quit);
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            parse("@1 show info"),
            fwd(Target::Current, "@1", "show info")
        );
        assert_eq!(
            parse("@!1234 show stat"),
            fwd(Target::Pid(1234), "@!1234", "show stat")
        );
        assert_eq!(
            parse("@!1234   show  stat "),
            fwd(Target::Pid(1234), "@!1234", "show  stat ")
        );
        assert_eq!(parse("@ help"), keyword(&["help"]));
        assert_eq!(parse("@0 show proc"), SHOW_PROC);
        assert_eq!(parse("@master reload"), Request::Reload);
        assert_eq!(parse("@\tshow proc"), SHOW_PROC);
        // On the master, a second prefix is a word of an unknown command.
        assert_eq!(parse("@ @1 show info"), keyword(&["@1", "show", "info"]));
    }

    #[test]
    fn a_prefix_alone_sets_the_default_target() {
        for (word, target) in [
            ("@1", Target::Current),
            ("@", Target::Master),
            ("@0", Target::Master),
            ("@master", Target::Master),
            ("@!42", Target::Pid(42)),
        ] {
            for cmd in [word.to_string(), format!(" {word}\t ")] {
                assert_eq!(
                    parse(&cmd),
                    Request::SetTarget {
                        target,
                        word: word.into()
                    }
                );
            }
        }
        // Then what has no prefix goes there, `prompt`, `quit` and the session's level and modes
        // excepted; a prefix still wins.
        let default = Target::Pid(42);
        assert_eq!(
            parse_request(" show version", default, true),
            Request::Forward {
                target: default,
                prefix: None,
                command: " show version".into()
            }
        );
        assert!(matches!(
            parse_request("reload", default, true),
            Request::Forward { .. }
        ));
        assert_eq!(
            parse_request("prompt timed", default, true),
            prompt(&["timed"])
        );
        assert_eq!(parse_request("quit", default, true), Request::Quit);
        assert_eq!(parse_request("@master show proc", default, true), SHOW_PROC);
        for (cmd, words) in [
            ("expert-mode on", &["expert-mode", "on"][..]),
            (" operator", &["operator"]),
            ("user", &["user"]),
            ("mcli-debug-mode", &["mcli-debug-mode"]),
            (
                "set severity-output number",
                &["set", "severity-output", "number"],
            ),
        ] {
            assert_eq!(parse_request(cmd, default, true), keyword(words), "{cmd}");
        }
        // Before haproxy 3.0, `set severity-output` is the worker's.
        assert!(matches!(
            parse_request("set severity-output number", default, false),
            Request::Forward { .. }
        ));
        // With a prefix, they are the worker's.
        assert!(matches!(
            parse_request("@1 expert-mode", default, true),
            Request::Forward { .. }
        ));
    }

    #[test]
    fn bad_prefixes() {
        for bad in [
            "@2",
            "@2 show info",
            "@!abc",
            "@!",
            "@!-5",
            "@!0",
            "@!99999999999",
            "@!12a",
            "@x",
            "@01",
            "@-1",
        ] {
            let word = bad.split(' ').next().unwrap();
            assert_eq!(parse(bad), Request::BadPrefix(word.into()), "{bad}");
        }
        assert_eq!(
            bad_prefix_text("@2"),
            "Can't find the target PID matching the prefix '@2'\n"
        );
        // The word as sent, escapes and all.
        assert_eq!(parse(r"@\1 x"), Request::BadPrefix(r"@\1".into()));
    }

    #[test]
    fn two_way_prefixes() {
        let relay = |target, word: &str, command: &str| Request::Relay {
            target,
            word: word.into(),
            command: command.into(),
        };
        assert_eq!(parse("@@1"), relay(Some(Target::Current), "@@1", ""));
        assert_eq!(
            parse(" @@1 \t show  info "),
            relay(Some(Target::Current), "@@1", "show  info ")
        );
        assert_eq!(
            parse(r"@@!42 add acl F a\;b"),
            relay(Some(Target::Pid(42)), "@@!42", r"add acl F a\;b")
        );
        assert_eq!(
            parse("@@master x"),
            relay(Some(Target::Master), "@@master", "x")
        );
        assert_eq!(parse("@@ x"), relay(Some(Target::Master), "@@", "x"));
        for bad in ["@@2", "@@!", "@@x y", "@@@1"] {
            let word = bad.split(' ').next().unwrap();
            assert!(
                matches!(parse(bad), Request::Relay { target: None, word: w, .. } if w == word),
                "{bad}"
            );
        }
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
            assert_eq!(parse(cmd), keyword(words), "{cmd:?}");
        }
    }

    #[test]
    fn very_long_lines() {
        let many = "help;".repeat(100_000);
        assert_eq!(split_line(&many).len(), 100_001);
        let prefixes = "@ ".repeat(100_000);
        assert!(matches!(parse(&prefixes), Request::Keyword(_)));
        assert!(matches!(
            parse(&format!("@!{}", "9".repeat(100_000))),
            Request::BadPrefix(_)
        ));
    }

    #[test]
    fn state_changes() {
        for r in [
            Request::Reload,
            Request::HardReload,
            Request::Getsocks,
            fwd(Target::Current, "@1", "show info"),
            fwd(Target::Pid(3), "@!3", "disable server b/s"),
        ] {
            assert!(r.changes_state(), "{r:?}");
        }
        for r in [
            keyword(&["help"]),
            SHOW_PROC,
            Request::ShowListeners,
            Request::ShowMetrics,
            prompt(&[]),
            Request::Quit,
            Request::SetTarget {
                target: Target::Current,
                word: "@1".into(),
            },
            Request::BadPrefix("@2".into()),
        ] {
            assert!(!r.changes_state(), "{r:?}");
        }
    }
}
