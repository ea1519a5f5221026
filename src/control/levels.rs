//! A master CLI session's access level and modes, as haproxy's master CLI proxy keeps them
//! (src/cli.c: `pcli_find_and_exec_kw`, `pcli_parse_request`): `operator` and `user` lower the
//! level, `expert-mode`, `experimental-mode`, `mcli-debug-mode` set or clear a mode, and a
//! command sent to a worker is preceded by what the worker must know of them.

use std::fmt;

/// haproxy's CLI access levels (`ACCESS_LVL_*`), lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    User,
    Operator,
    #[default]
    Admin,
}

impl Level {
    /// A `level` value of a `-S` argument (haproxy's bind keyword: `user`, `operator`, `admin`).
    pub fn parse(word: &str) -> Option<Level> {
        match word {
            "user" => Some(Level::User),
            "operator" => Some(Level::Operator),
            "admin" => Some(Level::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::User => "user",
            Level::Operator => "operator",
            Level::Admin => "admin",
        })
    }
}

/// What haproxy's master proxy answers when a session may not raise its level or set a mode.
/// No blank line after it: the proxy, not a CLI, says it.
pub const PERMISSION_DENIED: &str = "Permission denied!\n";

/// A session's level and modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionLevel {
    pub level: Level,
    pub expert: bool,
    pub experimental: bool,
    pub mcli_debug: bool,
    /// `set severity-output string` / `number` (haproxy 3.0+): both may be on.
    pub severity_string: bool,
    pub severity_number: bool,
}

/// haproxy's answer to `set severity-output` without one of its values (a proxy error, as
/// [`PERMISSION_DENIED`]).
pub const SEVERITY_USAGE: &str = "one of 'none', 'number', 'string' is a required argument\n";

/// What a session keyword did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Taken: nothing to answer.
    Done,
    /// Refused: [`PERMISSION_DENIED`].
    Denied,
}

impl SessionLevel {
    /// A session on a socket of `level`.
    pub fn new(level: Level) -> SessionLevel {
        SessionLevel {
            level,
            ..SessionLevel::default()
        }
    }

    /// Runs `words` if they are one of the keywords the master's proxy takes for the session
    /// itself (`operator`, `user`, the three modes); None for any other command. A level can
    /// only go down; a mode needs admin; `<mode> on` sets it and anything else, even no
    /// argument, clears it.
    pub fn apply(&mut self, words: &[&str]) -> Option<Applied> {
        let (&first, rest) = words.split_first()?;
        let lower = |to: Level, s: &mut SessionLevel| {
            if s.level < to {
                Applied::Denied
            } else {
                s.level = to;
                Applied::Done
            }
        };
        let mode = match first {
            "operator" => return Some(lower(Level::Operator, self)),
            "user" => return Some(lower(Level::User, self)),
            "expert-mode" => &mut self.expert,
            "experimental-mode" => &mut self.experimental,
            "mcli-debug-mode" => &mut self.mcli_debug,
            _ => return None,
        };
        if self.level < Level::Admin {
            return Some(Applied::Denied);
        }
        *mode = rest.first() == Some(&"on");
        Some(Applied::Done)
    }

    /// `set severity-output none|string|number`, which haproxy 3.0's master proxy takes for the
    /// session (and passes on to the worker with each command); None for any other command.
    /// `string` and `number` add to what is set, `none` clears both; anything else is refused
    /// with [`SEVERITY_USAGE`].
    pub fn apply_severity(&mut self, words: &[&str]) -> Option<Result<(), &'static str>> {
        let ["set", "severity-output", rest @ ..] = words else {
            return None;
        };
        match rest.first() {
            Some(&"none") => (self.severity_string, self.severity_number) = (false, false),
            Some(&"string") => self.severity_string = true,
            Some(&"number") => self.severity_number = true,
            _ => return Some(Err(SEVERITY_USAGE)),
        }
        Some(Ok(()))
    }

    /// Whether `word` is one of the keywords [`SessionLevel::apply`] takes: the master's proxy
    /// takes them whatever the session's default target is.
    pub fn is_session_keyword(word: &str) -> bool {
        matches!(
            word,
            "operator" | "user" | "expert-mode" | "experimental-mode" | "mcli-debug-mode"
        )
    }

    /// What goes before a command sent to a worker so that it runs it at the session's level
    /// and in its modes, haproxy's way (`operator -;expert-mode on -;`: the `-` keeps the
    /// worker from answering those). The level comes first: a worker's `operator` clears its
    /// modes. Modes are only sent at admin level (the only level that can set them; a worker
    /// refuses them below it, and would answer `Permission denied` instead of the command), and
    /// `mcli-debug-mode` never (it is the master's).
    pub fn forward_prefix(&self) -> String {
        let mut p = self.level_prefix().to_string();
        // haproxy inserts each at the front: the last inserted (number) comes first.
        if self.severity_number {
            p.push_str("set severity-output number -;");
        }
        if self.severity_string {
            p.push_str("set severity-output string -;");
        }
        if self.level == Level::Admin {
            if self.expert {
                p.push_str("expert-mode on -;");
            }
            if self.experimental {
                p.push_str("experimental-mode on -;");
            }
        }
        p
    }

    /// What lowers a worker's CLI session to this level (`operator -;`, `user -;`; nothing at
    /// admin, the level of the worker's socket).
    pub fn level_prefix(&self) -> &'static str {
        match self.level {
            Level::User => "user -;",
            Level::Operator => "operator -;",
            Level::Admin => "",
        }
    }

    /// The prompt's mode flags: `(xed)` for experimental, expert, mcli-debug (haproxy's
    /// `pcli_write_prompt`), empty without a mode.
    pub fn prompt_flags(&self) -> String {
        let flags: String = [
            (self.experimental, 'x'),
            (self.expert, 'e'),
            (self.mcli_debug, 'd'),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, c)| *c)
        .collect();
        if flags.is_empty() {
            flags
        } else {
            format!("({flags})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_only_go_down() {
        let mut s = SessionLevel::default();
        assert_eq!(s.apply(&["operator"]), Some(Applied::Done));
        assert_eq!(s.level, Level::Operator);
        assert_eq!(s.apply(&["user"]), Some(Applied::Done));
        assert_eq!(s.apply(&["operator"]), Some(Applied::Denied));
        assert_eq!(s.level, Level::User);
        assert_eq!(s.apply(&["user"]), Some(Applied::Done));
        assert_eq!(s.apply(&["show", "proc"]), None);
        assert_eq!(s.apply(&[]), None);
    }

    #[test]
    fn modes() {
        let mut s = SessionLevel::default();
        assert_eq!(s.apply(&["expert-mode", "on"]), Some(Applied::Done));
        assert_eq!(s.apply(&["experimental-mode", "on"]), Some(Applied::Done));
        assert_eq!(s.prompt_flags(), "(xe)");
        assert_eq!(
            s.forward_prefix(),
            "expert-mode on -;experimental-mode on -;"
        );
        // Anything but `on` clears, even nothing.
        s.apply(&["expert-mode"]);
        assert_eq!(s.prompt_flags(), "(x)");
        s.apply(&["mcli-debug-mode", "on"]);
        assert_eq!(s.prompt_flags(), "(xd)");
        assert_eq!(s.forward_prefix(), "experimental-mode on -;");
        s.apply(&["experimental-mode", "yes"]);
        s.apply(&["mcli-debug-mode", "off"]);
        assert_eq!(s.prompt_flags(), "");
        assert_eq!(s.forward_prefix(), "");
        s.apply(&["expert-mode", "on"]);
        s.apply(&["operator"]);
        assert_eq!(s.forward_prefix(), "operator -;");
        assert_eq!(s.apply(&["expert-mode", "off"]), Some(Applied::Denied));
        assert!(s.expert, "a refused mode command changes nothing");
        let user = SessionLevel::new(Level::User);
        assert_eq!(user.forward_prefix(), "user -;");
    }

    #[test]
    fn severity_output() {
        let mut s = SessionLevel::new(Level::Operator);
        assert_eq!(
            s.apply_severity(&["set", "severity-output", "string"]),
            Some(Ok(()))
        );
        assert_eq!(
            s.forward_prefix(),
            "operator -;set severity-output string -;"
        );
        s.apply_severity(&["set", "severity-output", "number"]);
        assert_eq!(
            s.forward_prefix(),
            "operator -;set severity-output number -;set severity-output string -;"
        );
        assert_eq!(
            s.apply_severity(&["set", "severity-output"]),
            Some(Err(SEVERITY_USAGE))
        );
        s.apply_severity(&["set", "severity-output", "none"]);
        assert_eq!(s.forward_prefix(), "operator -;");
        assert_eq!(s.apply_severity(&["set", "server", "x"]), None);
        assert_eq!(s.apply_severity(&["set"]), None);
    }

    #[test]
    fn parse() {
        assert_eq!(Level::parse("operator"), Some(Level::Operator));
        assert_eq!(Level::parse("Admin"), None);
        assert_eq!(Level::Operator.to_string(), "operator");
    }
}
