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
//! The files are read as haproxy reads them (`config_scan`); a line in a `.if` block counts
//! whatever the condition: the keyword is wrong under hapmaster either way.

use crate::config_scan::{Found, Line};

/// A `master-worker` line in a `global` section (elsewhere haproxy refuses it itself).
pub fn is_keyword(line: &Line) -> bool {
    line.section == Some(b"global".as_slice()) && line.word == b"master-worker"
}

/// Why the line is refused, and what to do.
pub fn refusal(found: &Found) -> String {
    found.refusal(
        " in the global section makes each worker a master of its own, whose child serves out of \
         hapmaster's reach; hapmaster is the master: remove the keyword (-W and -Ws are not \
         needed either)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_scan::find_in;
    use crate::test_dir::temp_dir;
    use std::ffi::OsString;
    use std::fs;

    fn found(text: &str) -> Option<(usize, String, Option<usize>)> {
        find_in(text.as_bytes(), |l| is_keyword(l).then_some(()))
            .map(|((), line, text, inside_if)| (line, text, inside_if))
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
        let f = crate::refused_config::find(&args, None).unwrap();
        assert_eq!(
            (f.found().file.clone(), f.found().line),
            (conf.join("10-a.cfg"), 2)
        );
        let text = f.to_string();
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
        assert_eq!(crate::refused_config::find(&missing, None), None);
        assert_eq!(crate::refused_config::find(&[main.into()], None), None);
    }
}
