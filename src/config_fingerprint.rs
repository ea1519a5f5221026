//! What haproxy would read for the `-f` arguments, reduced to something to compare: `--watch`
//! reloads only when this differs from what the last load read, so that an event that changes
//! nothing haproxy reads (a touch, a chmod, an editor's swap file, the kubelet's update of
//! another key) makes no reload, and one save or one ConfigMap update makes exactly one.
//!
//! The files are the ones `config_copy::expand` lists (haproxy's order), read within
//! `config_copy::LIMITS`. What cannot be read counts too, as its error: a file that turns
//! unreadable is a change (the reload fails, as haproxy would), and so is its repair.

use std::collections::hash_map::DefaultHasher;
use std::ffi::OsString;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use crate::config_copy::{self, LIMITS};

/// One file's content: a 64-bit SipHash and the length, or why it could not be read. Not
/// cryptographic: whoever can write the files can reload anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Content {
    Bytes { hash: u64, len: usize },
    Unreadable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// The files in haproxy's order, or why the list cannot be made (a `-f` path missing, a
    /// dangling `.cfg` symlink in a `-f` directory, too many files).
    files: Result<Vec<(PathBuf, Content)>, String>,
}

impl Fingerprint {
    /// What haproxy would read now for these `-f` arguments (`-C` resolved as haproxy does).
    pub fn of_args(args: &[OsString], change_dir: Option<&Path>) -> Fingerprint {
        match config_copy::expand(args, change_dir, LIMITS) {
            Ok(files) => Fingerprint::of_files(&files),
            Err(e) => Fingerprint {
                files: Err(e.to_string()),
            },
        }
    }

    /// These files, read in this order (a worker's configuration copy, after an upgrade in
    /// place: what that worker was started from).
    pub fn of_files(files: &[PathBuf]) -> Fingerprint {
        let mut budget = LIMITS.max_bytes;
        let entries = files
            .iter()
            .map(|path| {
                let content = match config_copy::read_bounded(path, budget, LIMITS.max_bytes) {
                    Ok(bytes) => {
                        budget -= bytes.len() as u64;
                        let mut h = DefaultHasher::new();
                        h.write(&bytes);
                        Content::Bytes {
                            hash: h.finish(),
                            len: bytes.len(),
                        }
                    }
                    Err(e) => Content::Unreadable(e.to_string()),
                };
                (path.clone(), content)
            })
            .collect();
        Fingerprint { files: Ok(entries) }
    }

    /// Whether haproxy would read the same: the same contents in the same order. Names alone do
    /// not count (a copy has other names than the files it copies).
    pub fn same_as(&self, other: &Fingerprint) -> bool {
        match (&self.files, &other.files) {
            (Ok(a), Ok(b)) => a.len() == b.len() && a.iter().zip(b).all(|((_, x), (_, y))| x == y),
            (a, b) => a == b,
        }
    }

    /// What differs in `newer`, for the log: the paths added, removed or changed, or why the
    /// files cannot be listed. Empty when `same_as`.
    pub fn changes_in(&self, newer: &Fingerprint) -> Vec<String> {
        if self.same_as(newer) {
            return Vec::new();
        }
        let (old, new) = match (&self.files, &newer.files) {
            (_, Err(e)) => return vec![format!("({e})")],
            (Err(_), Ok(_)) => return vec!["(the files can be listed again)".into()],
            (Ok(old), Ok(new)) => (old, new),
        };
        let find = |list: &[(PathBuf, Content)], p: &Path| {
            list.iter().find(|(q, _)| q == p).map(|(_, c)| c.clone())
        };
        let mut out = Vec::new();
        for (path, content) in new {
            match find(old, path) {
                None => out.push(format!("{} (new)", path.display())),
                Some(c) if c != *content => out.push(match content {
                    Content::Unreadable(e) => format!("{} ({e})", path.display()),
                    Content::Bytes { .. } => path.display().to_string(),
                }),
                Some(_) => {}
            }
        }
        for (path, _) in old {
            if find(new, path).is_none() {
                out.push(format!("{} (gone)", path.display()));
            }
        }
        if out.is_empty() {
            // Same names and contents, another order; or the old one is a copy.
            out.push("(the files haproxy reads, or their order)".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_touch_is_no_change_a_write_is() {
        let dir = crate::test_dir::temp_dir("fingerprint");
        let cfg = dir.path().join("haproxy.cfg");
        fs::write(&cfg, "global\n").unwrap();
        let args = vec![cfg.clone().into_os_string()];
        let before = Fingerprint::of_args(&args, None);
        // Same bytes written again, mode changed: haproxy reads the same.
        fs::write(&cfg, "global\n").unwrap();
        let same = Fingerprint::of_args(&args, None);
        assert!(before.same_as(&same));
        assert!(before.changes_in(&same).is_empty());
        fs::write(&cfg, "global\n  maxconn 10\n").unwrap();
        let after = Fingerprint::of_args(&args, None);
        assert!(!before.same_as(&after));
        assert_eq!(before.changes_in(&after), vec![cfg.display().to_string()]);
    }

    #[test]
    fn a_directory_gaining_and_losing_cfg_files() {
        let dir = crate::test_dir::temp_dir("fingerprint");
        fs::write(dir.path().join("a.cfg"), "a\n").unwrap();
        let args = vec![dir.path().as_os_str().to_os_string()];
        let one = Fingerprint::of_args(&args, None);
        // Files haproxy skips are not a change.
        fs::write(dir.path().join(".a.cfg.swp"), "x").unwrap();
        fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(one.same_as(&Fingerprint::of_args(&args, None)));
        fs::write(dir.path().join("b.cfg"), "b\n").unwrap();
        let two = Fingerprint::of_args(&args, None);
        let b = dir.path().join("b.cfg").display().to_string();
        assert_eq!(one.changes_in(&two), vec![format!("{b} (new)")]);
        fs::remove_file(dir.path().join("b.cfg")).unwrap();
        let back = Fingerprint::of_args(&args, None);
        assert!(one.same_as(&back));
        assert_eq!(two.changes_in(&back), vec![format!("{b} (gone)")]);
    }

    #[test]
    fn a_copy_with_other_names_and_the_same_bytes_is_the_same() {
        let dir = crate::test_dir::temp_dir("fingerprint");
        let (a, b) = (dir.path().join("a.cfg"), dir.path().join("0001-a.cfg"));
        fs::write(&a, "same\n").unwrap();
        fs::write(&b, "same\n").unwrap();
        assert!(
            Fingerprint::of_files(std::slice::from_ref(&a)).same_as(&Fingerprint::of_files(&[b]))
        );
        // A missing -f path is a state of its own, and so is its return.
        let missing = vec![dir.path().join("nope.cfg").into_os_string()];
        let gone = Fingerprint::of_args(&missing, None);
        assert!(!gone.same_as(&Fingerprint::of_files(&[a])));
        assert!(gone.same_as(&Fingerprint::of_args(&missing, None)));
    }
}
