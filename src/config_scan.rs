//! Reading haproxy's configuration files as haproxy splits them, for the lines hapmaster refuses
//! before any worker runs them (`refused_config`): the files haproxy reads for the `-f`
//! arguments (`config_copy::expand`), each line's first word tokenized as haproxy does (leading
//! blanks, `#` comments, quotes, backslash escapes), the section it is in, and the `.if` block.
//! A line in a `.if` block counts whatever the condition: hapmaster does not evaluate
//! conditions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config_copy::{self, LIMITS};

/// Every section keyword of haproxy 1.8 to 3.4: each ends a `global` section.
const SECTIONS: &[&[u8]] = &[
    b"acme",
    b"backend",
    b"cache",
    b"crt-store",
    b"defaults",
    b"fcgi-app",
    b"frontend",
    b"healthcheck",
    b"http-errors",
    b"listen",
    b"log-forward",
    b"log-profile",
    b"mailers",
    b"namespace_list",
    b"peers",
    b"program",
    b"resolvers",
    b"ring",
    b"spoe-agent",
    b"spoe-group",
    b"spoe-message",
    b"traces",
    b"userlist",
];

/// One line with a first word.
#[derive(Clone, Copy, Debug)]
pub struct Line<'a> {
    /// The first word, unquoted and unescaped.
    pub word: &'a [u8],
    /// The section keyword the line is in (its own, for a section line); none before the
    /// first one: haproxy starts every file outside any section.
    pub section: Option<&'a [u8]>,
}

/// Where a refused line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub file: PathBuf,
    /// 1-based, as haproxy counts.
    pub line: usize,
    /// The line, trimmed.
    pub text: String,
    /// The line of the innermost `.if` it is in.
    pub inside_if: Option<usize>,
}

impl Found {
    /// `FILE:LINE: `the line`` then `why`, and where a `.if` block holds the line, that
    /// hapmaster does not evaluate its condition.
    pub fn refusal(&self, why: &str) -> String {
        let mut text = format!(
            "{}:{}: `{}`{why}",
            self.file.display(),
            self.line,
            self.text
        );
        if let Some(at) = self.inside_if {
            text.push_str(&format!(
                " (it is inside the `.if` block of line {at}: hapmaster does not evaluate \
                 conditions)"
            ));
        }
        text
    }
}

/// The first line `wanted` picks in what haproxy reads for these `-f` arguments, with the tag
/// `wanted` gave it. A file or directory that cannot be read is skipped: haproxy reports it
/// better.
pub fn find<T>(
    args: &[OsString],
    change_dir: Option<&Path>,
    wanted: impl Fn(&Line) -> Option<T>,
) -> Option<(T, Found)> {
    let files = config_copy::expand(args, change_dir, LIMITS).ok()?;
    find_in_files(&files, wanted)
}

/// [`find`] over these files, read within `config_copy`'s limits.
pub fn find_in_files<T>(
    files: &[PathBuf],
    wanted: impl Fn(&Line) -> Option<T>,
) -> Option<(T, Found)> {
    let mut budget = LIMITS.max_bytes;
    for file in files {
        let Ok(bytes) = config_copy::read_bounded(file, budget, LIMITS.max_bytes) else {
            continue;
        };
        budget -= bytes.len() as u64;
        if let Some((tag, line, text, inside_if)) = find_in(&bytes, &wanted) {
            return Some((
                tag,
                Found {
                    file: file.clone(),
                    line,
                    text,
                    inside_if,
                },
            ));
        }
    }
    None
}

/// (tag, line, trimmed text, innermost `.if` line) of the first line `wanted` picks in one file.
pub fn find_in<T>(
    text: &[u8],
    wanted: impl Fn(&Line) -> Option<T>,
) -> Option<(T, usize, String, Option<usize>)> {
    let mut section: Option<Vec<u8>> = None;
    let mut ifs: Vec<usize> = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let Some(word) = first_word(line) else {
            continue;
        };
        match word.as_slice() {
            b".if" => ifs.push(i + 1),
            b".endif" => {
                ifs.pop();
            }
            w if w == b"global" || SECTIONS.contains(&w) => section = Some(w.to_vec()),
            _ => {}
        }
        let seen = Line {
            word: &word,
            section: section.as_deref(),
        };
        if let Some(tag) = wanted(&seen) {
            let text = String::from_utf8_lossy(line).trim().to_string();
            return Some((tag, i + 1, text, ifs.last().copied()));
        }
    }
    None
}

/// The first word of a line as haproxy's `parse_line` makes it: after leading blanks, up to an
/// unquoted blank, `#` or the end of the line (`\r` too); `"..."` and `'...'` quote, and outside
/// single quotes a backslash escapes a blank, `\`, `#`, a quote, `t`, `n`, `r`, `xHH`, and `$`
/// within double quotes. Environment variables are not expanded: a keyword hidden in one is not
/// found. None for a blank or comment line.
fn first_word(line: &[u8]) -> Option<Vec<u8>> {
    let start = line.iter().position(|b| !is_blank(*b))?;
    let line = &line[start..];
    let (mut squote, mut dquote) = (false, false);
    let mut word = Vec::new();
    let mut i = 0;
    while let Some(&c) = line.get(i) {
        i += 1;
        match c {
            b'\r' | 0 => break,
            b'#' if !squote && !dquote => break,
            b'"' if !squote => dquote = !dquote,
            b'\'' if !dquote => squote = !squote,
            b'\\' if !squote => {
                let (byte, used) = escape(&line[i..], dquote);
                word.push(byte);
                i += used;
            }
            c if is_blank(c) && !squote && !dquote => break,
            c => word.push(c),
        }
    }
    (!word.is_empty()).then_some(word)
}

/// The byte a backslash followed by `rest` stands for, and how many bytes of `rest` it used.
fn escape(rest: &[u8], dquote: bool) -> (u8, usize) {
    match rest {
        [c @ (b' ' | b'\\' | b'#' | b'\'' | b'"'), ..] => (*c, 1),
        [b'$', ..] if dquote => (b'$', 1),
        [b't', ..] => (b'\t', 1),
        [b'n', ..] => (b'\n', 1),
        [b'r', ..] => (b'\r', 1),
        [b'x', h, l, ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
            let hex = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
            ((hex(*h) << 4) | hex(*l), 3)
        }
        _ => (b'\\', 0),
    }
}

/// C's `isspace`, which haproxy uses, minus the line ends already split off.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | 0x0b | 0x0c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(s: &str) -> Option<String> {
        first_word(s.as_bytes()).map(|w| String::from_utf8(w).unwrap())
    }

    #[test]
    fn first_words_as_haproxy_reads_them() {
        assert_eq!(word("  master-worker"), Some("master-worker".into()));
        assert_eq!(
            word("\tmaster-worker\tno-exit-on-failure"),
            Some("master-worker".into())
        );
        assert_eq!(
            word("master-worker# a comment"),
            Some("master-worker".into())
        );
        assert_eq!(word("master-worker\r"), Some("master-worker".into()));
        assert_eq!(word("\"master-worker\""), Some("master-worker".into()));
        assert_eq!(word("'master'-\"worker\""), Some("master-worker".into()));
        assert_eq!(word("master\\x2dworker"), Some("master-worker".into()));
        assert_eq!(word("\"master worker\""), Some("master worker".into()));
        assert_eq!(word("master\\ worker"), Some("master worker".into()));
        assert_eq!(word("'a\\b'"), Some("a\\b".into()));
        assert_eq!(word("\\master"), Some("\\master".into()));
        assert_eq!(word("a\\#b"), Some("a#b".into()));
        assert_eq!(word("# master-worker"), None);
        assert_eq!(word("   "), None);
        assert_eq!(word(""), None);
        assert_eq!(word("  #"), None);
    }

    #[test]
    fn sections_and_ifs_as_haproxy_reads_them() {
        let program = |l: &Line| (l.word == b"program").then_some(());
        let text = "global\n.if defined(X)\n  .if streq(a,b)\n  .endif\n  program p\n.endif\n";
        assert_eq!(
            find_in(text.as_bytes(), program),
            Some(((), 5, "program p".into(), Some(2)))
        );
        let in_section = |l: &Line| {
            (l.word == b"x")
                .then(|| String::from_utf8_lossy(l.section.unwrap_or(b"-")).into_owned())
        };
        assert_eq!(find_in(b"x\n", in_section).map(|f| f.0), Some("-".into()));
        assert_eq!(
            find_in(b"global\nbackend b\n  x\n", in_section).map(|f| f.0),
            Some("backend".into())
        );
    }
}
