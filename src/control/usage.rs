//! The client subcommands' usages: one per subcommand (`hapmaster reload --help`, `hapmaster
//! help reload`), and one line each for `hapmaster --help`.

use std::time::Duration;

use crate::control::access::PRIVILEGED_COMMANDS;
use crate::control::client::{
    default_socket, exit, DEFAULT_CLI_TIMEOUT, DEFAULT_GETSOCKS_TIMEOUT, DEFAULT_RELOAD_TIMEOUT,
    SUBCOMMANDS,
};

/// The first line of a subcommand's usage.
fn synopsis(subcommand: &str) -> &'static str {
    match subcommand {
        "reload" => "hapmaster reload [-S PATH] [--timeout DUR] [--await]",
        "cli" => "hapmaster cli [-S PATH] [--timeout DUR] COMMAND...",
        _ => "hapmaster getsocks PATH [--json] [--timeout DUR]",
    }
}

/// One line per subcommand, for `hapmaster --help`.
pub fn subcommands_summary() -> String {
    let about = |sub| match sub {
        "reload" => "reload through the master CLI and wait for the result",
        "cli" => "send one command line to the master CLI and print the answer",
        _ => "list (and close) the listening sockets a stats socket hands over",
    };
    let mut out = String::new();
    for sub in SUBCOMMANDS {
        out.push_str(&format!("  {}\n{:21}{}\n", synopsis(sub), "", about(sub)));
    }
    out
}

/// `-S PATH` of `reload` and `cli`.
fn socket_option() -> (&'static str, String) {
    (
        "-S PATH",
        format!(
            "the master's control socket (default {}); unix@PATH works too",
            default_socket().display()
        ),
    )
}

fn timeout_option(default: Duration) -> (&'static str, String) {
    (
        "--timeout DUR",
        format!(
            "how long the whole exchange may take (default {}s)",
            default.as_secs()
        ),
    )
}

/// The usage of one subcommand (one of [`SUBCOMMANDS`]), for `--help` and `hapmaster help`.
pub fn usage(subcommand: &str) -> String {
    let cli_refused = format!(
        "connecting needs write permission on the socket; {PRIVILEGED_COMMANDS} need root or \
         the master's user"
    );
    let (about, options, statuses): (&str, Vec<(&str, String)>, [&str; 3]) = match subcommand {
        "reload" => (
            "Asks the master to reload (its CLI's `reload`) and waits until the new worker \
             serves, or the reload failed and the old worker serves on. Prints the master's \
             answer: Success=1 or Success=0, `--`, then the new worker's start-up output. For \
             systemd: ExecReload=hapmaster reload.",
            vec![
                socket_option(),
                timeout_option(DEFAULT_RELOAD_TIMEOUT),
                (
                    "--await",
                    "start no reload: wait for the one a signal started (or the next one), e.g. \
                     as ExecReload= of a Type=notify-reload unit"
                        .to_string(),
                ),
            ],
            [
                "reloaded: the new worker serves (Success=1)",
                "the reload failed (Success=0); the old worker serves on",
                "only root and the master's user may reload",
            ],
        ),
        "cli" => (
            "Sends one command line to the master CLI (or to a haproxy stats socket) and prints \
             the answer. The words from the first non-option on form the line, e.g. `show proc`, \
             `@1 show info`, `show proc; @1 show stat` (`;` separates commands); `--` ends the \
             options.",
            vec![socket_option(), timeout_option(DEFAULT_CLI_TIMEOUT)],
            [
                "the server answered",
                "an answer starts with one of haproxy's error sentences: Unknown command, \
                 Can't find the target PID, Success=0 (other error texts are only printed)",
                &cli_refused,
            ],
        ),
        _ => (
            "Takes the listening sockets of PATH, a haproxy `stats socket ... expose-fd \
             listeners` (or a hapmaster control socket), with haproxy's _getsocks protocol, \
             prints them and closes them; the server keeps listening undisturbed.",
            vec![
                (
                    "--json",
                    "print one JSON object instead of the table".to_string(),
                ),
                timeout_option(DEFAULT_GETSOCKS_TIMEOUT),
            ],
            [
                "the sockets were listed",
                "PATH hands nothing out (a stats socket without `expose-fd listeners`)",
                "by the socket file's permissions, or by a hapmaster master (only root and its \
                 user may take its sockets)",
            ],
        ),
    };
    let mut out = format!("usage: {}\n\n", synopsis(subcommand));
    out.push_str(&wrap(about, 0));
    out.push_str("\nOptions:\n");
    for (flag, what) in options
        .iter()
        .map(|(f, w)| (*f, w.as_str()))
        .chain([("-h, --help", "show this text")])
    {
        out.push_str(&format!("  {flag:<15}{}", wrap(what, 17).trim_start()));
    }
    out.push_str("\nExit status:\n");
    let [ok, failed, refused] = statuses;
    for (code, what) in [
        (exit::OK, ok),
        (exit::FAILED, failed),
        (
            exit::UNREACHABLE,
            "a usage error, nothing listening, no complete answer within the timeout, or an \
             answer in another protocol",
        ),
        (exit::REFUSED, &format!("permission denied: {refused}")),
    ] {
        out.push_str(&format!("  {code}  {}", wrap(what, 5).trim_start()));
    }
    out.push_str("\nDUR: a number with an optional unit: us, ms (default), s, m, h, d.\n");
    out
}

/// `text` in lines of at most 96 columns, each indented by `indent` spaces.
fn wrap(text: &str, indent: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > 96 {
            out.push_str(&format!("{:indent$}{line}\n", ""));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&format!("{:indent$}{line}\n", ""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usages() {
        for sub in SUBCOMMANDS {
            let u = usage(sub);
            assert!(u.starts_with(&format!("usage: {}\n", synopsis(sub))), "{u}");
            for code in 0..=3 {
                assert!(
                    u.contains(&format!("\n  {code}  ")),
                    "{sub}: exit {code}: {u}"
                );
            }
            for line in u.lines() {
                assert!(line.len() <= 96, "{sub}: {line:?}");
            }
            assert!(subcommands_summary().contains(synopsis(sub)));
        }
        assert!(usage("reload").contains("  --timeout DUR  "));
        assert!(usage("getsocks").contains("  --json  "));
        assert!(!usage("getsocks").contains("-S PATH"));
    }
}
