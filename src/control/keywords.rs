//! The master's own commands per haproxy version, found and answered as haproxy's master CLI
//! does (src/cli.c: `cli_find_kw`, `cli_parse_request`, `cli_gen_usage_msg`; the keyword tables
//! of cli.c, mworker.c and errors.c), so that `help` and `Unknown command` answers, with their
//! fuzzy suggestions, are haproxy's byte for byte for the haproxy version the workers run.
//!
//! haproxy's master serves a keyword when it has `ACCESS_MASTER` or `ACCESS_MASTER_ONLY`; the
//! table below holds those, in haproxy's order (keyword lists of cli.c, mworker.c, errors.c, in
//! the order the binary registers them: the order matters for equally good suggestions), each
//! with the version that made it a master command. hapmaster's own commands (`show listeners`,
//! `show metrics`, `await-reload`, `_getsocks`) are not in it: they are found before it, and suggesting them
//! would change haproxy's answers.

use crate::control::levels::Level;

/// haproxy's `CLI_PREFIX_KW_NB`: a keyword has at most this many words, and only this many
/// words of a command are compared with them.
const PREFIX_KW_NB: usize = 5;
/// haproxy's `CLI_MAX_MATCHES`: at most this many suggestions.
const MAX_MATCHES: usize = 5;

/// What a master keyword does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kw {
    Help,
    Echo,
    Prompt,
    Quit,
    /// `expert-mode`, `experimental-mode`, `mcli-debug-mode`: taken by the session before the
    /// table is looked at; listed for the word matching only.
    Mode,
    ShowEnv,
    ShowCliSockets,
    ShowCliLevel,
    ShowVersion,
    /// `operator`, `user`: as [`Kw::Mode`].
    Level,
    /// `@<relative pid>`, `@!<pid>`, `@master`: usage lines only (prefixes are taken before).
    Prefix,
    ShowProc,
    Reload,
    HardReload,
    LoadStatus,
    ShowStartupLogs,
    /// One of hapmaster's own commands (found before the table): listed by `help` only.
    Hapmaster,
}

struct Keyword {
    words: &'static [&'static str],
    usage: Option<&'static str>,
    /// The first haproxy version where the master serves it.
    since: (u32, u32),
    kw: Kw,
}

const fn k(
    words: &'static [&'static str],
    usage: Option<&'static str>,
    since: (u32, u32),
    kw: Kw,
) -> Keyword {
    Keyword {
        words,
        usage,
        since,
        kw,
    }
}

const ALWAYS: (u32, u32) = (0, 0);

/// The master's keywords, in haproxy's order. Usage strings are haproxy's, padding included.
const TABLE: &[Keyword] = &[
    // src/cli.c
    k(&["help"], None, ALWAYS, Kw::Help),
    // dc1c0a169 (v3.1-dev11)
    k(
        &["echo"],
        Some("echo <text>                             : print text to the output"),
        (3, 1),
        Kw::Echo,
    ),
    k(&["prompt"], None, ALWAYS, Kw::Prompt),
    k(&["quit"], None, ALWAYS, Kw::Quit),
    k(&["expert-mode"], None, ALWAYS, Kw::Mode),
    k(&["experimental-mode"], None, ALWAYS, Kw::Mode),
    k(&["mcli-debug-mode"], None, ALWAYS, Kw::Mode),
    // d58a8d1f6 (v3.1-dev14)
    k(
        &["show", "env"],
        Some("show env [var]                          : dump environment variables known to the process"),
        (3, 1),
        Kw::ShowEnv,
    ),
    k(
        &["show", "cli", "sockets"],
        Some("show cli sockets                        : dump list of cli sockets"),
        ALWAYS,
        Kw::ShowCliSockets,
    ),
    k(
        &["show", "cli", "level"],
        Some("show cli level                          : display the level of the current CLI session"),
        ALWAYS,
        Kw::ShowCliLevel,
    ),
    k(
        &["show", "version"],
        Some("show version                            : show version of the current process"),
        ALWAYS,
        Kw::ShowVersion,
    ),
    k(
        &["operator"],
        Some("operator                                : lower the level of the current CLI session to operator"),
        ALWAYS,
        Kw::Level,
    ),
    k(
        &["user"],
        Some("user                                    : lower the level of the current CLI session to user"),
        ALWAYS,
        Kw::Level,
    ),
    // src/mworker.c
    k(
        &["@<relative pid>"],
        Some("@<relative pid>                         : send a command to the <relative pid> process"),
        ALWAYS,
        Kw::Prefix,
    ),
    k(
        &["@!<pid>"],
        Some("@!<pid>                                 : send a command to the <pid> process"),
        ALWAYS,
        Kw::Prefix,
    ),
    k(
        &["@master"],
        Some("@master                                 : send a command to the master process"),
        ALWAYS,
        Kw::Prefix,
    ),
    k(
        &["show", "proc"],
        Some("show proc                               : show processes status"),
        ALWAYS,
        Kw::ShowProc,
    ),
    // Up to 2.8; 2.9 says what kind of reload it is.
    k(
        &["reload"],
        Some("reload                                  : reload haproxy"),
        ALWAYS,
        Kw::Reload,
    ),
    // 3dd55fa13 (v2.9-dev12)
    k(
        &["hard-reload"],
        Some("hard-reload                             : achieve a hard-reload (-st) of haproxy"),
        (2, 9),
        Kw::HardReload,
    ),
    // 0a0512f76 (v2.7-dev7)
    k(&["_loadstatus"], None, (2, 7), Kw::LoadStatus),
    // src/errors.c, eba6a54cd (v2.7-dev8)
    k(
        &["show", "startup-logs"],
        Some("show startup-logs                       : report logs emitted during HAProxy startup"),
        (2, 7),
        Kw::ShowStartupLogs,
    ),
];

/// hapmaster's own commands, for `help` (after haproxy's, in the same shape). Never suggested
/// for an unknown command: those answers stay haproxy's.
const HAPMASTER: &[Keyword] = &[
    k(
        &["await-reload"],
        Some("await-reload                            : wait for the reload a signal started (or the next one), answer as reload"),
        ALWAYS,
        Kw::Hapmaster,
    ),
    k(
        &["show", "listeners"],
        Some("show listeners                          : show the listening sockets the master holds"),
        ALWAYS,
        Kw::Hapmaster,
    ),
    k(
        &["show", "metrics"],
        Some("show metrics                            : show the master's metrics (Prometheus text format)"),
        ALWAYS,
        Kw::Hapmaster,
    ),
    k(
        &["_getsocks"],
        Some("_getsocks                               : hand the listening sockets over (what haproxy -x asks)"),
        ALWAYS,
        Kw::Hapmaster,
    ),
];

/// `reload`'s usage from 2.9 on (3dd55fa13 added hard-reload and reworded it).
const RELOAD_USAGE_2_9: &str =
    "reload                                  : achieve a soft-reload (-sf) of haproxy";

/// The haproxy version whose master CLI is spoken: its (major, minor). Unknown (no worker has
/// said yet): the newest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialect(pub (u32, u32));

impl Dialect {
    pub const NEWEST: Dialect = Dialect((u32::MAX, 0));

    pub fn at_least(self, v: (u32, u32)) -> bool {
        self.0 >= v
    }

    fn serves(self, k: &Keyword) -> bool {
        self.at_least(k.since)
    }

    fn usage(self, k: &Keyword) -> Option<&'static str> {
        match k.kw {
            Kw::Reload if self.at_least((2, 9)) => Some(RELOAD_USAGE_2_9),
            _ => k.usage,
        }
    }

    /// The three lines that end every `help` and `Unknown command` answer.
    fn fixed_lines(self) -> &'static str {
        if self.at_least((3, 2)) {
            // e5c255c4e, c347cb73f (v3.2-dev13)
            "  help [<command>]                        : list matching or all commands\n  \
             prompt [help | n | i | p | timed ]*     : toggle interactive mode with prompt\n  \
             quit                                    : disconnect\n"
        } else if self.at_least((2, 8)) {
            // 225555711 (v2.8-dev12)
            "  help [<command>]                        : list matching or all commands\n  \
             prompt [timed]                          : toggle interactive mode with prompt\n  \
             quit                                    : disconnect\n"
        } else {
            "  help [<command>]                        : list matching or all commands\n  \
             prompt                                  : toggle interactive mode with prompt\n  \
             quit                                    : disconnect\n"
        }
    }
}

/// The keyword `words` (unescaped, as haproxy's CLI parser splits them) start with, among those
/// the master of `dialect` serves: Ok with what it is, or Err with haproxy's `Unknown command`
/// answer. An empty command is Err too (haproxy before 2.7 answers it so; later versions
/// answer nothing, see [`empty_command`]).
pub fn find(words: &[&str], dialect: Dialect) -> Result<Kw, String> {
    let found = TABLE
        .iter()
        .find(|k| k.words.len() <= words.len() && k.words.iter().zip(words).all(|(a, b)| a == b));
    match found {
        Some(k) if dialect.serves(k) => Ok(k.kw),
        _ => Err(usage_message(words, dialect, false)),
    }
}

/// haproxy's answer to an empty command on the master: its full usage text before 2.7 (where
/// the CLI parser ran the keyword search on no word), nothing later. Verified on 2.6.12 and
/// 3.0.11 (`empty_line`).
pub fn empty_command(dialect: Dialect) -> String {
    if dialect.at_least((2, 7)) {
        String::new()
    } else {
        usage_message(&[], dialect, false)
    }
}

/// haproxy's `Unknown command` answer to `words`, whatever they are.
pub fn unknown(words: &[&str], dialect: Dialect) -> String {
    usage_message(words, dialect, false)
}

/// `help [words]`.
pub fn help(words: &[&str], dialect: Dialect) -> String {
    usage_message(words, dialect, true)
}

/// haproxy's `cli_gen_usage_msg`: `help`'s list, or the `Unknown command` answer with the
/// commands closest to `args` (or all of them).
fn usage_message(args: &[&str], dialect: Dialect, is_help: bool) -> String {
    let visible: Vec<&Keyword> = TABLE.iter().filter(|k| dialect.serves(k)).collect();
    // How many leading words some keyword matches exactly.
    let arg = |i: usize| args.get(i).copied().filter(|a| !a.is_empty());
    let matching = |k: &Keyword, upto: usize| {
        (0..upto)
            .take_while(|&i| k.words.get(i).is_some() && arg(i) == k.words.get(i).copied())
            .count()
    };
    let length = visible
        .iter()
        .map(|k| matching(k, PREFIX_KW_NB))
        .max()
        .unwrap_or(0);

    let mut out = String::new();
    if is_help {
        out.push_str("The following commands are valid at this level:\n");
    } else {
        let nothing = length == 0 && arg(0).is_none();
        let quoted = if dialect.at_least((2, 7)) {
            format!(": '{}'", args.first().copied().unwrap_or(""))
        } else {
            String::new()
        };
        // 3.0 quotes the first word (it came with 2.7's CLI rework; 2.6.12 does not).
        out.push_str("Unknown command");
        out.push_str(&quoted);
        out.push_str(if nothing {
            ". Please enter one of the following commands only:\n"
        } else {
            ", but maybe one of the following ones is a better match:\n"
        });
    }

    // The best matches on the words after the exactly matching ones, best first; among equals
    // the first found stays first (haproxy's insertion keeps the order).
    let mut matches: Vec<(&Keyword, u32)> = Vec::new();
    if arg(length).is_some() {
        for k in &visible {
            let Some(_) = dialect.usage(k) else { continue };
            if matching(k, length) != length {
                continue;
            }
            let rest_args: Vec<&str> = (length..PREFIX_KW_NB).map_while(arg).collect();
            let rest_kw: Vec<&str> = k.words.iter().skip(length).copied().collect();
            let totlen: usize = rest_args.iter().chain(&rest_kw).map(|w| w.len()).sum();
            let dist = crate::control::fuzzy::fingerprint(rest_args.iter().copied())
                .distance(&crate::control::fuzzy::fingerprint(rest_kw.iter().copied()));
            let worst = if matches.len() == MAX_MATCHES {
                matches[MAX_MATCHES - 1].1
            } else {
                u32::MAX
            };
            if (dist as usize) < 5 * totlen / 2 && dist < worst {
                if matches.len() == MAX_MATCHES {
                    matches.pop();
                }
                let at = matches.partition_point(|&(_, d)| d <= dist);
                matches.insert(at, (k, dist));
            }
        }
    }
    let mut entries: Vec<&'static str> = Vec::new();
    if let Some(&(_, best)) = matches.first() {
        for &(k, dist) in &matches {
            if dist > 5 * best / 2 {
                break;
            }
            entries.extend(dialect.usage(k));
        }
    } else {
        for k in &visible {
            if matching(k, length) == length {
                entries.extend(dialect.usage(k));
            }
        }
    }
    entries.sort_unstable();
    if is_help && matches.is_empty() {
        // hapmaster runs `hard-reload` for every haproxy version (haproxy's master has it from
        // 2.9): listed with its own commands before.
        let hard = TABLE
            .iter()
            .filter(|k| k.kw == Kw::HardReload && !dialect.serves(k));
        let ours = hard
            .chain(HAPMASTER)
            .filter(|k| matching(k, length) == length);
        entries.extend(ours.filter_map(|k| k.usage));
    }
    for e in entries {
        out.push_str("  ");
        out.push_str(e);
        out.push('\n');
    }
    out.push_str(dialect.fixed_lines());
    out
}

/// The level a master keyword needs (haproxy's `cli_has_level` in its parser); below it the
/// answer is [`LEVEL_DENIED`].
pub fn needs(kw: Kw, dialect: Dialect) -> Level {
    match kw {
        Kw::Reload | Kw::HardReload | Kw::ShowEnv | Kw::ShowStartupLogs | Kw::LoadStatus => {
            Level::Operator
        }
        // 84640aaa2 (v3.1-dev, with `show proc debug`).
        Kw::ShowProc if dialect.at_least((3, 1)) => Level::Operator,
        _ => Level::User,
    }
}

/// haproxy's `cli_permission_denied_msg`: what its CLI answers a command above the session's
/// level (an ordinary answer: the blank line follows).
pub const LEVEL_DENIED: &str = "Permission denied\n";

/// `echo <words>`: the words joined by one space.
pub fn echo(words: &[&str]) -> String {
    format!("{}\n", words.get(1..).unwrap_or(&[]).join(" "))
}

/// `show env [VAR]`: `NAME=value` lines of `environ`, or the one variable asked for.
pub fn show_env(words: &[&str], environ: &[(String, String)]) -> String {
    match words.get(2).filter(|w| !w.is_empty()) {
        None => environ
            .iter()
            .map(|(name, value)| format!("{name}={value}\n"))
            .collect(),
        Some(var) => environ.iter().find(|(name, _)| name == var).map_or_else(
            || "Variable not found\n".to_string(),
            |(name, value)| format!("{name}={value}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_6: Dialect = Dialect((2, 6));
    const V3_0: Dialect = Dialect((3, 0));

    #[test]
    fn finds_by_leading_words() {
        assert_eq!(find(&["show", "proc", "debug"], V2_6), Ok(Kw::ShowProc));
        assert_eq!(find(&["reload", "now"], V3_0), Ok(Kw::Reload));
        assert_eq!(find(&["show", "version"], V2_6), Ok(Kw::ShowVersion));
        assert!(find(&["hard-reload"], V2_6).is_err());
        assert_eq!(find(&["hard-reload"], V3_0), Ok(Kw::HardReload));
        assert!(find(&["show", "startup-logs"], V2_6).is_err());
        assert_eq!(
            find(&["show", "startup-logs"], V3_0),
            Ok(Kw::ShowStartupLogs)
        );
        assert!(find(&["echo", "x"], V3_0).is_err());
        assert_eq!(find(&["echo", "x"], Dialect((3, 1))), Ok(Kw::Echo));
        assert_eq!(find(&["show", "env"], Dialect::NEWEST), Ok(Kw::ShowEnv));
    }

    #[test]
    fn echo_and_env() {
        assert_eq!(echo(&["echo", "hello world", "a;b"]), "hello world a;b\n");
        assert_eq!(echo(&["echo"]), "\n");
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("AB".into(), "2".into()),
        ];
        assert_eq!(show_env(&["show", "env"], &env), "A=1\nAB=2\n");
        assert_eq!(show_env(&["show", "env", "AB"], &env), "AB=2\n");
        assert_eq!(
            show_env(&["show", "env", "B"], &env),
            "Variable not found\n"
        );
    }

    /// Every `Unknown command` and `help` answer of the master in the committed transcripts,
    /// reproduced from the command alone.
    #[test]
    fn transcripts() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
        let mut checked = 0;
        for (version, dialect) in [("2.6.12-1+deb12u4", V2_6), ("3.0.11-1+deb13u4", V3_0)] {
            for (name, cmd) in [
                ("unknown_command", "no-such-command"),
                ("show_env", "show env"),
                ("show_env_var", "show env PATH"),
                ("escape_master_show_version", "show version"),
                ("help", "help"),
                ("help_user_socket", "help"),
                ("hard_reload", "hard-reload"),
                ("show_startup_logs", "show startup-logs"),
                ("empty_line", ""),
            ] {
                let Ok(expected) =
                    std::fs::read_to_string(dir.join(version).join(format!("{name}.txt")))
                else {
                    panic!("{version}/{name}.txt missing");
                };
                // `show\ version` is one word for the master's parser.
                let words: Vec<&str> = if name == "escape_master_show_version" {
                    vec!["show version"]
                } else {
                    cmd.split_whitespace().collect()
                };
                let answer = if words.first() == Some(&"help") {
                    // haproxy's lines, in order, then hapmaster's own before the fixed ones.
                    let h = help(&words[1..], dialect);
                    let hard = TABLE
                        .iter()
                        .filter(|k| k.kw == Kw::HardReload && !dialect.serves(k));
                    let ours: Vec<String> = hard
                        .chain(HAPMASTER)
                        .map(|k| format!("  {}\n", k.usage.unwrap()))
                        .collect();
                    let fixed = h.find("  help [<command>]").unwrap();
                    assert!(h[..fixed].ends_with(&ours.concat()), "{h}");
                    ours.iter()
                        .fold(h.clone(), |h, line| h.replacen(line.as_str(), "", 1))
                } else if words.is_empty() {
                    empty_command(dialect)
                } else {
                    match find(&words, dialect) {
                        Ok(_) => continue,
                        Err(text) => text,
                    }
                };
                assert_eq!(format!("{answer}\n"), expected, "{version} {name}");
                checked += 1;
            }
            let echo = std::fs::read_to_string(dir.join(version).join("echo.txt")).unwrap();
            let a = find(&["echo", "hello world"], dialect).unwrap_err();
            let b = find(&["echo", "a;b"], dialect).unwrap_err();
            assert_eq!(format!("{a}\n{b}\n"), echo, "{version} echo");
        }
        assert!(checked >= 14, "{checked}");
    }
}
