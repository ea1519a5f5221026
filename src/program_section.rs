//! `program` sections, which hapmaster refuses.
//!
//! haproxy 1.9 to 3.2 run a `program` section's command from their own master only: a worker
//! started without `-W` (as hapmaster starts them) refuses the whole configuration ("Can't use a
//! 'program' section without master worker mode"). Supervising the commands in hapmaster would
//! be a second supervisor (user and group, `start-on-reload`, SIGUSR1 to the old ones, their
//! lifetime across an upgrade in place) for a feature haproxy deprecated in 3.1 as unreliable
//! and removed in 3.3, telling its users to run such commands from their init system. So the
//! files are read before each worker starts (`config_scan`) and a `program` line is refused,
//! named, while no worker runs it, with that advice.

use crate::config_scan::{Found, Line};

/// A `program` section line, wherever it is (it is a section keyword at any level).
pub fn is_section(line: &Line) -> bool {
    line.word == b"program"
}

/// Why the line is refused, and what to do.
pub fn refusal(found: &Found) -> String {
    found.refusal(
        ": hapmaster does not run haproxy programs (haproxy starts them only from its own master; \
         the section was deprecated in haproxy 3.1 and removed in 3.3): run the command as a \
         service of its own, e.g. a systemd unit with PartOf= and After= this one's (or a \
         container of its own), and remove the section",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_scan::find_in;

    fn found(text: &str) -> Option<(usize, String)> {
        find_in(text.as_bytes(), |l| is_section(l).then_some(())).map(|((), n, t, _)| (n, t))
    }

    #[test]
    fn program_sections_anywhere() {
        let text = "global\n  maxconn 10\n\nprogram api\n  command dataplaneapi -f /x\n";
        assert_eq!(found(text), Some((4, "program api".into())));
        assert_eq!(
            found("frontend fe\n  bind :80\n'program' \"x y\"\n").map(|f| f.0),
            Some(3)
        );
        assert_eq!(found("global\n  # program api\n  programs\n"), None);
        assert_eq!(found("backend b\n  server program 127.0.0.1:1\n"), None);
    }

    #[test]
    fn the_refusal_says_why_and_what_instead() {
        let f = Found {
            file: "/etc/haproxy/haproxy.cfg".into(),
            line: 12,
            text: "program api".into(),
            inside_if: Some(10),
        };
        let text = refusal(&f);
        assert!(
            text.starts_with("/etc/haproxy/haproxy.cfg:12: `program api`: hapmaster does not"),
            "{text}"
        );
        assert!(text.contains("systemd unit"), "{text}");
        assert!(text.contains("remove the section"), "{text}");
        assert!(text.contains("`.if` block of line 10"), "{text}");
    }
}
