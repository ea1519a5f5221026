//! haproxy's CLI payloads (`add map F <<`, then lines up to an empty one), as haproxy's master
//! reads them (src/cli.c: `pcli_parse_request`): whether a command opens one, which line ends
//! it, and the payload gathered up to a bound.
//!
//! Up to haproxy 2.8 a command opens a payload when the first `<<` in it is its last two bytes,
//! and an empty line ends it. From 2.9 on (08f1e2bea) its last word must start with `<<`, and
//! what follows (at most 7 bytes, 64 from 3.4, else no payload) is the line that ends it:
//! `<<EOF`.

use super::command::words;
use super::keywords::Dialect;

const PATTERN: &str = "<<";

/// The longest end tag the master of `dialect` takes (`pcli_payload_pat`, its NUL included: 8
/// bytes from 2.9, 65 from 3.4, 80776da29), None before 2.9 (no tag).
fn max_tag(dialect: Dialect) -> Option<usize> {
    if dialect.at_least((3, 4)) {
        Some(64)
    } else if dialect.at_least((2, 9)) {
        Some(7)
    } else {
        None
    }
}
/// Most bytes of a command and its payload the master gathers for one command. haproxy's CLI
/// takes what fits its buffer (tune.bufsize, 16384 bytes by default: more is dropped by the
/// worker); the master's bound leaves room for a raised tune.bufsize and keeps a session's
/// memory bounded.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The line that ends the payload `command` opens ("": an empty line), or None when it opens
/// none, for the master of `dialect`.
pub fn opened_by(command: &str, dialect: Dialect) -> Option<String> {
    let Some(max_tag) = max_tag(dialect) else {
        let first = command.find(PATTERN)?;
        return (first + PATTERN.len() == command.len()).then(String::new);
    };
    let &(start, end) = words(command).last()?;
    let tag = command[start..end].strip_prefix(PATTERN)?;
    (tag.len() <= max_tag).then(|| tag.to_string())
}

/// `command` without its last word when that word is the payload pattern `<<<end>`: what the
/// master's own CLI runs (it takes the pattern as the start of the payload, not as an
/// argument). A pattern glued to a word (`x<<`, haproxy before 2.9) stays.
pub fn without_pattern<'a>(command: &'a str, end: &str) -> &'a str {
    match words(command).last() {
        Some(&(start, stop)) if command[start..stop] == format!("{PATTERN}{end}") => {
            &command[..start]
        }
        _ => command,
    }
}

/// What one more line did to a payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Gathered {
    More,
    /// It was the end line: the payload is whole.
    Ended,
    /// The command and its payload would exceed [`MAX_PAYLOAD`].
    TooLarge,
}

/// A payload being gathered: its lines as sent (each with its newline), the end line included,
/// which is what the worker's CLI is sent after the command.
#[derive(Clone, Debug)]
pub struct Payload {
    end: String,
    lines: Vec<u8>,
    /// Bytes left under [`MAX_PAYLOAD`].
    room: usize,
}

impl Payload {
    /// For a command of `command_len` bytes (its newline not counted) ending with `end`'s pattern.
    pub fn new(end: String, command_len: usize) -> Payload {
        Payload {
            end,
            lines: Vec::new(),
            room: MAX_PAYLOAD.saturating_sub(command_len + 1),
        }
    }

    /// One line, without its newline. haproxy's master compares it with the end tag byte for
    /// byte: a `\r` left in it is part of the line.
    pub fn take(&mut self, line: &[u8]) -> Gathered {
        if line.len() + 1 > self.room {
            return Gathered::TooLarge;
        }
        self.room -= line.len() + 1;
        self.lines.extend_from_slice(line);
        self.lines.push(b'\n');
        if line == self.end.as_bytes() {
            Gathered::Ended
        } else {
            Gathered::More
        }
    }

    pub fn lines(&self) -> &[u8] {
        &self.lines
    }
}

/// The answer when a command and its payload exceed [`MAX_PAYLOAD`]; the connection closes
/// after it (the rest of the payload would be taken for commands).
pub fn too_large_text(command: &str) -> String {
    format!(
        "Payload too large: '{}' and its payload exceed {MAX_PAYLOAD} bytes; nothing was run. \
         haproxy's CLI takes a payload up to its buffer size (tune.bufsize, 16384 bytes by \
         default): send it in parts.\n",
        super::command::shorten(command)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Dialect = Dialect((2, 6));
    const TAGGED: Dialect = Dialect((3, 0));

    #[test]
    fn before_2_9_the_first_pattern_must_end_the_command() {
        assert_eq!(opened_by("@1 add map F <<", OLD), Some(String::new()));
        // Glued to a word: still a payload (haproxy's strstr).
        assert_eq!(opened_by("add map F x<<", OLD), Some(String::new()));
        assert_eq!(opened_by("add map F << ", OLD), None);
        assert_eq!(opened_by("set var a <<b <<", OLD), None);
        assert_eq!(opened_by("add map F <<EOF", OLD), None);
        assert_eq!(opened_by("show version", OLD), None);
    }

    #[test]
    fn from_2_9_the_last_word_starts_with_the_pattern_and_a_short_tag() {
        assert_eq!(opened_by("@1 add map F <<", TAGGED), Some(String::new()));
        assert_eq!(opened_by("add map F <<EOF ", TAGGED), Some("EOF".into()));
        assert_eq!(
            opened_by("add map F <<1234567", TAGGED),
            Some("1234567".into())
        );
        assert_eq!(opened_by("add map F <<12345678", TAGGED), None);
        assert_eq!(opened_by("add map F x<<", TAGGED), None);
        assert_eq!(opened_by("", TAGGED), None);
        // 3.4 takes up to 64 bytes.
        let long = format!("add map F <<{}", "x".repeat(64));
        assert_eq!(opened_by(&long, TAGGED), None);
        assert_eq!(opened_by(&long, Dialect((3, 4))), Some("x".repeat(64)));
        assert_eq!(opened_by(&format!("{long}x"), Dialect::NEWEST), None);
    }

    #[test]
    fn the_pattern_word_is_not_an_argument_of_a_master_command() {
        assert_eq!(without_pattern("show version <<", ""), "show version ");
        assert_eq!(
            without_pattern("show version <<EOF", "EOF"),
            "show version "
        );
        assert_eq!(without_pattern("show version x<<", ""), "show version x<<");
    }

    #[test]
    fn gathers_up_to_the_end_line_as_sent() {
        let mut p = Payload::new("EOF".into(), 10);
        assert_eq!(p.take(b"k1 v;1"), Gathered::More);
        assert_eq!(p.take(b""), Gathered::More);
        assert_eq!(p.take(b"EOF\r"), Gathered::More);
        assert_eq!(p.take(b"EOF"), Gathered::Ended);
        assert_eq!(p.lines(), b"k1 v;1\n\nEOF\r\nEOF\n");
    }

    #[test]
    fn refuses_past_the_bound() {
        let command = "add map F <<";
        let mut p = Payload::new(String::new(), command.len());
        let line = vec![b'a'; 1023];
        let fits = (MAX_PAYLOAD - command.len() - 1) / 1024;
        for _ in 0..fits {
            assert_eq!(p.take(&line), Gathered::More);
        }
        assert_eq!(p.take(&line), Gathered::TooLarge);
    }
}
