//! `master-worker` in a configuration's `global` section, which hapmaster refuses.
//!
//! haproxy 1.8 to 3.4 take the keyword as `-W`: the process becomes a master and forks the
//! worker that serves. Started by hapmaster, such a worker would be a master under a master: its
//! stats socket answers with its child's pid, hapmaster waits for an answer that never comes,
//! and meanwhile the grandchild serves on the handed sockets out of hapmaster's reach. Nothing
//! turns the keyword off for one process (`no master-worker` is refused, no flag clears it; 3.5
//! refuses the keyword itself), so the master reads the files before each worker starts and
//! refuses them, naming the line, while no worker runs them.
//!
//! The files are the ones haproxy reads (`config_copy::expand`), tokenized as haproxy does for
//! the first word of a line (leading blanks, `#` comments, quotes, backslash escapes). A line in
//! a `.if` block counts whatever the condition: hapmaster does not evaluate conditions, and the
//! keyword is wrong under hapmaster either way.

use std::ffi::OsString;
use std::fmt;
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

/// A `master-worker` line.
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

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}` in the global section makes each worker a master of its own, whose \
             child serves out of hapmaster's reach; hapmaster is the master: remove the keyword \
             (-W and -Ws are not needed either)",
            self.file.display(),
            self.line,
            self.text
        )?;
        if let Some(at) = self.inside_if {
            write!(
                f,
                " (it is inside the `.if` block of line {at}: hapmaster does not evaluate \
                 conditions)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for Found {}

/// The first `master-worker` line in what haproxy reads for these `-f` arguments. A file or
/// directory that cannot be read is skipped: haproxy reports it better.
pub fn find(args: &[OsString], change_dir: Option<&Path>) -> Option<Found> {
    let files = config_copy::expand(args, change_dir, LIMITS).ok()?;
    find_in_files(&files)
}

/// The first `master-worker` line in these files, read within `config_copy`'s limits.
pub fn find_in_files(files: &[PathBuf]) -> Option<Found> {
    let mut budget = LIMITS.max_bytes;
    for file in files {
        let Ok(bytes) = config_copy::read_bounded(file, budget, LIMITS.max_bytes) else {
            continue;
        };
        budget -= bytes.len() as u64;
        if let Some((line, text, inside_if)) = find_in(&bytes) {
            return Some(Found {
                file: file.clone(),
                line,
                text,
                inside_if,
            });
        }
    }
    None
}

/// (line, trimmed text, innermost `.if` line) of the first `master-worker` in a `global`
/// section of one file. haproxy starts every file outside any section.
fn find_in(text: &[u8]) -> Option<(usize, String, Option<usize>)> {
    let mut in_global = false;
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
            b"global" => in_global = true,
            b"master-worker" if in_global => {
                let text = String::from_utf8_lossy(line).trim().to_string();
                return Some((i + 1, text, ifs.last().copied()));
            }
            w if SECTIONS.contains(&w) => in_global = false,
            _ => {}
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
    use crate::test_dir::temp_dir;
    use std::fs;

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

    fn found(text: &str) -> Option<(usize, String, Option<usize>)> {
        find_in(text.as_bytes())
    }

    #[test]
    fn only_in_a_global_section() {
        assert_eq!(
            found("global\n    maxconn 10\n    master-worker\n"),
            Some((3, "master-worker".into(), None))
        );
        assert_eq!(
            found("global\n  master-worker no-exit-on-failure # why\n").map(|f| f.1),
            Some("master-worker no-exit-on-failure # why".into())
        );
        // Out of any section, or in another one: haproxy refuses those lines itself.
        assert_eq!(found("master-worker\nglobal\n"), None);
        assert_eq!(found("global\ndefaults\n  master-worker\n"), None);
        assert_eq!(found("global\nfrontend fe\n  master-worker\n"), None);
        // A later global section counts again.
        assert_eq!(
            found("global\nbackend b\nglobal\n  master-worker\n").map(|f| f.0),
            Some(4)
        );
        // Words that are not the keyword.
        assert_eq!(found("global\n  # master-worker\n  master-workers\n"), None);
        assert_eq!(found("global\n  stats socket /x # master-worker\n"), None);
        assert_eq!(found("global\n  no master-worker\n"), None);
        assert_eq!(found("global\n  \"master-worker\"\n").map(|f| f.0), Some(2));
    }

    #[test]
    fn conditional_blocks_count_and_are_named() {
        let text = "global\n.if defined(X)\n  .if streq(a,b)\n  .endif\n  master-worker\n.endif\n";
        assert_eq!(found(text), Some((5, "master-worker".into(), Some(2))));
        let text = "global\n.if defined(X)\n.endif\nmaster-worker\n";
        assert_eq!(found(text).and_then(|f| f.2), None);
    }

    #[test]
    fn files_and_directories_in_haproxys_order() {
        let t = temp_dir("mworker");
        let main = t.path().join("haproxy.cfg");
        fs::write(&main, "global\n  maxconn 10\n").unwrap();
        let conf = t.path().join("conf.d");
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("20-b.cfg"), "global\n\n  master-worker\n").unwrap();
        fs::write(conf.join("10-a.cfg"), "global\n  master-worker\n").unwrap();
        fs::write(conf.join("00-skip.cfg.bak"), "global\nmaster-worker\n").unwrap();
        let args: Vec<OsString> = vec![main.clone().into(), conf.clone().into()];
        let f = find(&args, None).unwrap();
        assert_eq!((f.file, f.line), (conf.join("10-a.cfg"), 2));
        let text = find(&args, None).unwrap().to_string();
        assert!(
            text.starts_with(&format!(
                "{}:2: `master-worker`",
                conf.join("10-a.cfg").display()
            )),
            "{text}"
        );
        assert!(text.contains("hapmaster is the master"), "{text}");
        assert!(text.contains("remove the keyword"), "{text}");
        assert!(!text.contains(".if"), "{text}");

        // A file haproxy cannot read is haproxy's to report.
        let missing: Vec<OsString> = vec![t.path().join("missing.cfg").into(), main.clone().into()];
        assert_eq!(find(&missing, None), None);
        assert_eq!(find(&[main.into()], None), None);
    }
}
