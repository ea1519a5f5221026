//! The client side: `hapmaster reload`, `hapmaster cli`, `hapmaster getsocks`.
//!
//! Argument parsing and answer interpretation are pure; [`exchange`] is the one function that
//! talks to a control socket.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::control::access::{connect_refusal_hint, getsocks_connect_refusal, refusal_message};
use crate::control::answer::{refusal, verdict, Refusal, Verdict};
use crate::control::command::{parse_request, shorten, split_line, Request, Target};
use crate::handoff::fetch::FetchError;
use crate::options::parse_duration;
use crate::runtime_dir::{RuntimeDir, MASTER_SOCKET};
use crate::unix_stream::{connect_unix, is_timeout};

/// How long `hapmaster reload` waits for the whole answer by default: a reload waits for the new
/// worker to be ready, which the master bounds by its own --ready-timeout.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `hapmaster cli` waits by default.
pub const DEFAULT_CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `hapmaster getsocks` waits by default.
pub const DEFAULT_GETSOCKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers longer than this are cut off with an error: nothing the master says is that long.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The master's always-on control socket: `master.sock` in the runtime directory this user's
/// master would choose (`$RUNTIME_DIRECTORY/master.sock` under systemd).
pub fn default_socket() -> PathBuf {
    RuntimeDir::choose(None).join(MASTER_SOCKET)
}

/// A client subcommand, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    Reload {
        socket: PathBuf,
        timeout: Duration,
        /// `--await`: start nothing; wait for the reload a signal started (`await-reload`).
        await_signal: bool,
    },
    Cli {
        socket: PathBuf,
        timeout: Duration,
        line: String,
    },
    Getsocks {
        path: PathBuf,
        json: bool,
        timeout: Duration,
    },
    /// `-h` / `--help` after a subcommand: print its [`usage`].
    Help,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientArgsError {
    MissingValue { subcommand: String, option: String },
    UnknownOption { subcommand: String, option: String },
    BadTimeout { subcommand: String, reason: String },
    NonUtf8 { subcommand: String },
    MissingPath { subcommand: String },
    MissingCommand { subcommand: String },
    Unexpected { subcommand: String, arg: String },
}

impl fmt::Display for ClientArgsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ClientArgsError::*;
        match self {
            MissingValue { subcommand, option } => {
                write!(f, "{subcommand}: {option} needs a value")
            }
            UnknownOption { subcommand, option } => {
                write!(f, "{subcommand}: unknown option {option}")
            }
            BadTimeout { subcommand, reason } => write!(f, "{subcommand}: --timeout: {reason}"),
            NonUtf8 { subcommand } => {
                write!(f, "{subcommand}: arguments must be valid UTF-8")
            }
            MissingPath { subcommand } => write!(
                f,
                "{subcommand}: give the socket path, e.g. hapmaster {subcommand} /run/haproxy/admin.sock"
            ),
            MissingCommand { subcommand } => write!(
                f,
                "{subcommand}: give the command to send, e.g. hapmaster {subcommand} show proc"
            ),
            Unexpected { subcommand, arg } => {
                write!(f, "{subcommand}: unexpected argument {arg}")
            }
        }
    }
}

impl std::error::Error for ClientArgsError {}

/// Exit statuses of the client subcommands (the README's table).
pub mod exit {
    /// Done: `Success=1`, an answer without an error, the sockets listed.
    pub const OK: u8 = 0;
    /// The answer reports a failure: `Success=0`, `Unknown command`, ...; nothing to hand over.
    pub const FAILED: u8 = 1;
    /// A usage error, nothing listening, no complete answer in time, or another protocol.
    pub const UNREACHABLE: u8 = 2;
    /// Permission denied, by the socket file's permissions or by the server.
    pub const REFUSED: u8 = 3;
}

/// The client subcommands' words, in the order help lists them.
pub const SUBCOMMANDS: [&str; 3] = ["reload", "cli", "getsocks"];

/// Whether `first` (argv\[1\]) names a client subcommand rather than haproxy-style options.
pub fn is_subcommand(first: &OsString) -> bool {
    first.to_str().is_some_and(|w| SUBCOMMANDS.contains(&w))
}

/// Parses the arguments after the subcommand word `subcommand` (one of [`is_subcommand`]'s).
/// `default_socket` is used when `-S` is absent.
pub fn parse_client_args(
    subcommand: &str,
    args: &[OsString],
    default_socket: PathBuf,
) -> Result<ClientCommand, ClientArgsError> {
    let sub = || subcommand.to_string();
    let mut strings = Vec::with_capacity(args.len());
    for a in args {
        strings.push(
            a.to_str()
                .ok_or_else(|| ClientArgsError::NonUtf8 { subcommand: sub() })?,
        );
    }
    let mut socket: Option<PathBuf> = None;
    let mut timeout: Option<Duration> = None;
    let mut json = false;
    let mut await_signal = false;
    let mut positional: Vec<String> = Vec::new();
    let mut it = strings.into_iter();
    while let Some(arg) = it.next() {
        // Everything from the first word of a cli command on is the command.
        if subcommand == "cli" && !positional.is_empty() {
            positional.push(arg.to_string());
            continue;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let mut value = |option: &str| -> Result<String, ClientArgsError> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => {
                    it.next()
                        .map(str::to_string)
                        .ok_or_else(|| ClientArgsError::MissingValue {
                            subcommand: sub(),
                            option: option.to_string(),
                        })
                }
            }
        };
        match name {
            "-h" | "--help" => return Ok(ClientCommand::Help),
            "--" => {
                positional.extend(it.by_ref().map(str::to_string));
            }
            "-S" | "--socket" if subcommand != "getsocks" => {
                let v = value(name)?;
                let path = v.strip_prefix("unix@").unwrap_or(&v);
                socket = Some(PathBuf::from(path));
            }
            "--timeout" => {
                let v = value(name)?;
                timeout = Some(parse_duration(&v).map_err(|e| ClientArgsError::BadTimeout {
                    subcommand: sub(),
                    reason: e.to_string(),
                })?);
            }
            "--json" if subcommand == "getsocks" => json = true,
            "--await" if subcommand == "reload" && inline.is_none() => await_signal = true,
            _ if name.starts_with('-') && name.len() > 1 => {
                return Err(ClientArgsError::UnknownOption {
                    subcommand: sub(),
                    option: arg.to_string(),
                })
            }
            _ => positional.push(arg.to_string()),
        }
    }
    match subcommand {
        "reload" => match positional.first() {
            Some(arg) => Err(ClientArgsError::Unexpected {
                subcommand: sub(),
                arg: arg.clone(),
            }),
            None => Ok(ClientCommand::Reload {
                socket: socket.unwrap_or(default_socket),
                timeout: timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT),
                await_signal,
            }),
        },
        "cli" => {
            if positional.is_empty() {
                return Err(ClientArgsError::MissingCommand { subcommand: sub() });
            }
            Ok(ClientCommand::Cli {
                socket: socket.unwrap_or(default_socket),
                timeout: timeout.unwrap_or(DEFAULT_CLI_TIMEOUT),
                line: positional.join(" "),
            })
        }
        _ => {
            let mut positional = positional.into_iter();
            let path = positional
                .next()
                .ok_or_else(|| ClientArgsError::MissingPath { subcommand: sub() })?;
            if let Some(arg) = positional.next() {
                return Err(ClientArgsError::Unexpected {
                    subcommand: sub(),
                    arg,
                });
            }
            let path = path.strip_prefix("unix@").unwrap_or(&path).to_string();
            Ok(ClientCommand::Getsocks {
                path: PathBuf::from(path),
                json,
                timeout: timeout.unwrap_or(DEFAULT_GETSOCKS_TIMEOUT),
            })
        }
    }
}

/// What the first line of a `reload` answer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Success,
    Failure,
    Refused(Refusal),
    /// None of the above: not a master that does synchronous reloads.
    Unrecognised,
}

impl ReloadOutcome {
    /// `hapmaster reload`'s exit status.
    pub fn exit_code(self) -> u8 {
        match self {
            ReloadOutcome::Success => exit::OK,
            ReloadOutcome::Failure => exit::FAILED,
            ReloadOutcome::Refused(_) => exit::REFUSED,
            ReloadOutcome::Unrecognised => exit::UNREACHABLE,
        }
    }

    /// What to say on stderr besides the answer, if anything.
    pub fn message(self, socket: &Path) -> Option<String> {
        match self {
            ReloadOutcome::Success | ReloadOutcome::Failure => None,
            ReloadOutcome::Refused(r) => Some(refusal_message(r, socket)),
            ReloadOutcome::Unrecognised => Some(format!(
                "{} answered without Success=1 or Success=0; is it a hapmaster control socket?",
                socket.display()
            )),
        }
    }
}

pub fn reload_outcome(answer: &str) -> ReloadOutcome {
    match answer.lines().next().map(str::trim_end) {
        Some("Success=1") => ReloadOutcome::Success,
        Some("Success=0") => ReloadOutcome::Failure,
        _ => refusal(answer).map_or(ReloadOutcome::Unrecognised, ReloadOutcome::Refused),
    }
}

/// `hapmaster cli`'s exit status for `answer` to `line` from `socket`, and what to say on
/// stderr besides the answer.
pub fn cli_outcome(socket: &Path, line: &str, answer: &str) -> (u8, Option<String>) {
    let commands = split_line(line).len().max(1);
    match verdict(answer, commands) {
        Verdict::Done => (exit::OK, None),
        Verdict::Failed(first) => (
            exit::FAILED,
            Some(format!(
                "{} answered with an error: {}",
                socket.display(),
                shorten(first)
            )),
        ),
        Verdict::Refused(r) => (exit::REFUSED, Some(refusal_message(r, socket))),
    }
}

/// `hapmaster getsocks`'s exit status for a failed fetch from `path`, and what to say.
pub fn getsocks_failure(path: &Path, e: &FetchError) -> (u8, String) {
    match e {
        FetchError::NothingExported { .. } => (
            exit::FAILED,
            format!(
                "{e}\n(a haproxy `stats socket` hands sockets out only with `expose-fd \
                 listeners`; a hapmaster control socket only to root and the master's user)"
            ),
        ),
        FetchError::Connect { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
        {
            (exit::REFUSED, getsocks_connect_refusal(path))
        }
        FetchError::TextAnswer { text, .. } => match refusal(text) {
            Some(r) => (exit::REFUSED, refusal_message(r, path)),
            None => (exit::UNREACHABLE, e.to_string()),
        },
        _ => (exit::UNREACHABLE, e.to_string()),
    }
}

/// Whether the master runs any command of `line` only for root and its own user (a command
/// after an `@<worker>` alone goes to that worker).
fn is_privileged(line: &str) -> bool {
    let mut default = Target::Master;
    split_line(line).iter().any(|c| {
        // `set severity-output` as a worker's command (haproxy before 3.0): the stricter guess.
        let request = parse_request(c, default, false);
        if let Request::SetTarget { target, .. } = request {
            default = target;
        }
        request.changes_state()
    })
}

#[derive(Debug)]
pub enum ClientError {
    /// ENOENT or ECONNREFUSED: nothing listens there.
    NotRunning {
        path: PathBuf,
        source: io::Error,
    },
    /// connect(2) said EACCES; `privileged`: the line needs root or the master's user anyway.
    PermissionDenied {
        path: PathBuf,
        privileged: bool,
    },
    Connect {
        path: PathBuf,
        source: io::Error,
    },
    Send {
        path: PathBuf,
        source: io::Error,
    },
    Receive {
        path: PathBuf,
        source: io::Error,
    },
    /// The answer did not end within the timeout; `partial` is what arrived.
    Timeout {
        path: PathBuf,
        timeout: Duration,
        partial: String,
    },
    TooLong {
        path: PathBuf,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ClientError::*;
        match self {
            NotRunning { path, source } => write!(
                f,
                "no hapmaster is listening on {}: is it running (with -S {})? ({source})",
                path.display(),
                path.display()
            ),
            PermissionDenied { path, privileged } => write!(
                f,
                "permission denied on {}: {}",
                path.display(),
                connect_refusal_hint(*privileged)
            ),
            Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())
            }
            Send { path, source } => write!(
                f,
                "cannot send the command to {}: {source}; the master closed the connection",
                path.display()
            ),
            Receive { path, source } => {
                write!(
                    f,
                    "cannot read the answer from {}: {source}",
                    path.display()
                )
            }
            Timeout {
                path,
                timeout,
                partial,
            } => {
                write!(
                    f,
                    "no complete answer from {} within {timeout:?}; raise --timeout if the master \
                     is busy",
                    path.display()
                )?;
                if !partial.is_empty() {
                    write!(f, "; received so far:\n{partial}")?;
                }
                Ok(())
            }
            TooLong { path } => write!(
                f,
                "the answer from {} exceeds {MAX_ANSWER} bytes; is this a hapmaster control \
                 socket?",
                path.display()
            ),
        }
    }
}

impl ClientError {
    /// The client's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::PermissionDenied { .. } => exit::REFUSED,
            _ => exit::UNREACHABLE,
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use ClientError::*;
        match self {
            NotRunning { source, .. }
            | Connect { source, .. }
            | Send { source, .. }
            | Receive { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Sends one command line to the control socket at `path` and returns the whole answer (read
/// until the master closes). `timeout` bounds everything, connect included.
///
/// After the line the client shuts down its writing side, as `socat` does: the master (like
/// haproxy's) answers every command of the line, then closes.
pub fn exchange(path: &Path, line: &str, timeout: Duration) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream =
        connect_unix(path, timeout).map_err(|e| connect_error(path, e, is_privileged(line)))?;
    let mut request = line.trim_end_matches(['\r', '\n']).to_string();
    request.push('\n');
    let send_error = |source| ClientError::Send {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_write_timeout(Some(left(deadline)))
        .map_err(send_error)?;
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.shutdown(Shutdown::Write))
        .map_err(|source| {
            if is_timeout(&source) {
                ClientError::Timeout {
                    path: path.to_path_buf(),
                    timeout,
                    partial: String::new(),
                }
            } else {
                send_error(source)
            }
        })?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout {
                path: path.to_path_buf(),
                timeout,
                partial: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        stream
            .set_read_timeout(Some(left(deadline)))
            .map_err(|source| ClientError::Receive {
                path: path.to_path_buf(),
                source,
            })?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if answer.len() + n > MAX_ANSWER {
                    return Err(ClientError::TooLong {
                        path: path.to_path_buf(),
                    });
                }
                answer.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {}
            // The master may close with unread input (e.g. after `quit`): what came is the answer.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(source) => {
                return Err(ClientError::Receive {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Time left until `deadline`, never zero (a zero socket timeout means "forever").
fn left(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn connect_error(path: &Path, source: io::Error, privileged: bool) -> ClientError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR) => {
            ClientError::NotRunning { path, source }
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            ClientError::PermissionDenied { path, privileged }
        }
        _ => ClientError::Connect { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::answer::permission_denied_text;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn parse(sub: &str, v: &[&str]) -> Result<ClientCommand, ClientArgsError> {
        parse_client_args(sub, &args(v), PathBuf::from("/run/hm/master.sock"))
    }

    #[test]
    fn reload_args() {
        assert_eq!(
            parse("reload", &[]).unwrap(),
            ClientCommand::Reload {
                socket: "/run/hm/master.sock".into(),
                timeout: DEFAULT_RELOAD_TIMEOUT,
                await_signal: false,
            }
        );
        assert_eq!(
            parse("reload", &["--await"]).unwrap(),
            ClientCommand::Reload {
                socket: "/run/hm/master.sock".into(),
                timeout: DEFAULT_RELOAD_TIMEOUT,
                await_signal: true,
            }
        );
        assert_eq!(
            parse("reload", &["-S", "unix@/x.sock", "--timeout", "5s"]).unwrap(),
            ClientCommand::Reload {
                socket: "/x.sock".into(),
                timeout: Duration::from_secs(5),
                await_signal: false,
            }
        );
        assert_eq!(
            parse("reload", &["--timeout=250ms"]).unwrap(),
            ClientCommand::Reload {
                socket: "/run/hm/master.sock".into(),
                timeout: Duration::from_millis(250),
                await_signal: false,
            }
        );
        assert_eq!(parse("reload", &["--help"]).unwrap(), ClientCommand::Help);
        let e = parse("reload", &["-S"]).unwrap_err();
        assert_eq!(e.to_string(), "reload: -S needs a value");
        let e = parse("reload", &["--timeout", "soon"]).unwrap_err();
        assert!(e.to_string().starts_with("reload: --timeout: "), "{e}");
        let e = parse("reload", &["now"]).unwrap_err();
        assert_eq!(e.to_string(), "reload: unexpected argument now");
        let e = parse("reload", &["--await=yes"]).unwrap_err();
        assert_eq!(e.to_string(), "reload: unknown option --await=yes");
        let e = parse("reload", &["--json"]).unwrap_err();
        assert_eq!(e.to_string(), "reload: unknown option --json");
    }

    #[test]
    fn cli_args() {
        assert_eq!(
            parse("cli", &["-S", "/m.sock", "@1", "show", "info"]).unwrap(),
            ClientCommand::Cli {
                socket: "/m.sock".into(),
                timeout: DEFAULT_CLI_TIMEOUT,
                line: "@1 show info".into()
            }
        );
        // Options after the first word belong to the command.
        assert_eq!(
            parse("cli", &["show", "proc", "--timeout", "1"]).unwrap(),
            ClientCommand::Cli {
                socket: "/run/hm/master.sock".into(),
                timeout: DEFAULT_CLI_TIMEOUT,
                line: "show proc --timeout 1".into()
            }
        );
        assert_eq!(
            parse("cli", &["--", "-weird"]).unwrap(),
            ClientCommand::Cli {
                socket: "/run/hm/master.sock".into(),
                timeout: DEFAULT_CLI_TIMEOUT,
                line: "-weird".into()
            }
        );
        assert_eq!(
            parse("cli", &[]).unwrap_err().to_string(),
            "cli: give the command to send, e.g. hapmaster cli show proc"
        );
    }

    #[test]
    fn getsocks_args() {
        assert_eq!(
            parse("getsocks", &["/run/haproxy/admin.sock", "--json"]).unwrap(),
            ClientCommand::Getsocks {
                path: "/run/haproxy/admin.sock".into(),
                json: true,
                timeout: DEFAULT_GETSOCKS_TIMEOUT
            }
        );
        assert_eq!(
            parse("getsocks", &["--timeout", "2s", "unix@/a"]).unwrap(),
            ClientCommand::Getsocks {
                path: "/a".into(),
                json: false,
                timeout: Duration::from_secs(2)
            }
        );
        assert!(matches!(
            parse("getsocks", &[]),
            Err(ClientArgsError::MissingPath { .. })
        ));
        assert!(matches!(
            parse("getsocks", &["/a", "/b"]),
            Err(ClientArgsError::Unexpected { .. })
        ));
        assert!(matches!(
            parse("getsocks", &["-S", "/a"]),
            Err(ClientArgsError::UnknownOption { .. })
        ));
    }

    #[test]
    fn subcommand_words() {
        for w in ["reload", "cli", "getsocks"] {
            assert!(is_subcommand(&OsString::from(w)));
        }
        for w in ["-f", "--help", "Reload", ""] {
            assert!(!is_subcommand(&OsString::from(w)));
        }
    }

    #[test]
    fn reload_outcomes() {
        assert_eq!(
            reload_outcome("Success=1\n--\nok\n"),
            ReloadOutcome::Success
        );
        assert_eq!(reload_outcome("Success=1\r\n"), ReloadOutcome::Success);
        assert_eq!(
            reload_outcome("Success=0\n--\nbad\n"),
            ReloadOutcome::Failure
        );
        assert_eq!(reload_outcome(""), ReloadOutcome::Unrecognised);
        assert_eq!(
            reload_outcome("Unknown command"),
            ReloadOutcome::Unrecognised
        );
        assert_eq!(reload_outcome("\nSuccess=1"), ReloadOutcome::Unrecognised);
        let refused = reload_outcome(&permission_denied_text("reload", 0, 65534));
        assert_eq!(
            refused,
            ReloadOutcome::Refused(Refusal::Master { uid: Some(0) })
        );
        assert_eq!(
            reload_outcome("Permission denied\n\n"),
            ReloadOutcome::Refused(Refusal::Level)
        );
        assert_eq!(ReloadOutcome::Success.exit_code(), 0);
        assert_eq!(ReloadOutcome::Failure.exit_code(), 1);
        assert_eq!(ReloadOutcome::Unrecognised.exit_code(), 2);
        assert_eq!(refused.exit_code(), 3);
        let socket = Path::new("/run/hm/cli.sock");
        assert_eq!(ReloadOutcome::Success.message(socket), None);
        assert_eq!(ReloadOutcome::Failure.message(socket), None);
        let m = refused.message(socket).unwrap();
        assert!(
            m.starts_with("permission denied by the master on /run/hm/cli.sock: it runs reload,"),
            "{m}"
        );
        assert!(
            m.ends_with("run this as root or as the master's user (uid 0, root)"),
            "{m}"
        );
        assert!(ReloadOutcome::Unrecognised
            .message(socket)
            .unwrap()
            .contains("without Success=1 or Success=0"));
    }

    #[test]
    fn cli_outcomes() {
        let socket = Path::new("/s");
        assert_eq!(
            cli_outcome(socket, "show proc", "#<PID>\n1 master\n\n"),
            (0, None)
        );
        assert_eq!(
            cli_outcome(
                socket,
                "frob",
                "Unknown command 'frob'. Please enter\n  help\n\n"
            ),
            (
                1,
                Some("/s answered with an error: Unknown command 'frob'. Please enter".into())
            )
        );
        // Control characters a server echoes back do not reach the terminal raw.
        let (code, m) = cli_outcome(socket, "x", "Unknown command: 'x\u{1b}[2J'\n\n");
        assert_eq!(code, 1);
        assert!(m.unwrap().ends_with("Unknown command: 'x?[2J'"));
        // The second command's answer starts after the first one's empty line.
        let two = "#<PID>\n\nUnknown command 'frob'.\n\n";
        assert_eq!(cli_outcome(socket, "show proc", two).0, 0);
        assert_eq!(cli_outcome(socket, "show proc; frob", two).0, 1);
        let (code, m) = cli_outcome(socket, "disable frontend fe", "Permission denied\n\n");
        assert_eq!(code, 3);
        let m = m.unwrap();
        assert!(m.starts_with("permission denied by /s: "), "{m}");
        assert!(m.contains("`level admin`"), "{m}");
    }

    #[test]
    fn getsocks_failures() {
        use crate::unix_stream::Endpoint;
        let path = Path::new("/run/haproxy/admin.sock");
        let peer = Endpoint::path(path);
        let (code, m) = getsocks_failure(path, &FetchError::NothingExported { peer: peer.clone() });
        assert_eq!(code, 1);
        assert!(m.contains("expose-fd listeners"), "{m}");
        let connect = |errno| FetchError::Connect {
            path: path.into(),
            source: io::Error::from_raw_os_error(errno),
        };
        let (code, m) = getsocks_failure(path, &connect(libc::EACCES));
        assert_eq!(code, 3);
        assert!(
            m.starts_with(
                "permission denied on /run/haproxy/admin.sock: connecting needs write permission"
            ),
            "{m}"
        );
        assert_eq!(getsocks_failure(path, &connect(libc::ENOENT)).0, 2);
        let (code, m) = getsocks_failure(
            path,
            &FetchError::TextAnswer {
                peer: peer.clone(),
                text: permission_denied_text("_getsocks", 0, 65534),
            },
        );
        assert_eq!(code, 3);
        assert!(m.starts_with("permission denied by the master on "), "{m}");
        let (code, m) = getsocks_failure(
            path,
            &FetchError::TextAnswer {
                peer,
                text: "Unknown command, but maybe\n\n".into(),
            },
        );
        assert_eq!(code, 2);
        assert!(m.contains("\"Unknown command, but maybe\""), "{m}");
    }

    use crate::test_dir::temp_dir;

    #[test]
    fn exchange_reads_until_close() {
        let dir = temp_dir("ex");
        let path = dir.path().join("m.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            // The client half-closes: read_to_string ends.
            s.read_to_string(&mut got).unwrap();
            s.write_all(b"Success=1\n--\n").unwrap();
            s.write_all(b"more\n").unwrap();
            got
        });
        let answer = exchange(&path, "reload", Duration::from_secs(5)).unwrap();
        assert_eq!(answer, "Success=1\n--\nmore\n");
        assert_eq!(server.join().unwrap(), "reload\n");
    }

    #[test]
    fn exchange_errors() {
        let dir = temp_dir("err");
        let missing = dir.path().join("none.sock");
        let e = exchange(&missing, "reload", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
        assert!(e.to_string().starts_with(&format!(
            "no hapmaster is listening on {}",
            missing.display()
        )));
        assert!(
            e.to_string()
                .contains(&format!(": is it running (with -S {})?", missing.display())),
            "{e}"
        );

        // A socket file nobody listens on.
        let stale = dir.path().join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let e = exchange(&stale, "reload", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");

        // A server that never answers: the timeout, with what arrived.
        let slow = dir.path().join("slow.sock");
        let listener = UnixListener::bind(&slow).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"Success=").unwrap();
            // Hold the connection open until the client has given up.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        let e = exchange(&slow, "reload", Duration::from_millis(200)).unwrap_err();
        done_tx.send(()).unwrap();
        match &e {
            ClientError::Timeout { partial, .. } => assert_eq!(partial, "Success="),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("raise --timeout"), "{e}");
        server.join().unwrap();
    }

    fn exchange_error_for(path: &str, errno: i32, line: &str) -> ClientError {
        connect_error(
            Path::new(path),
            io::Error::from_raw_os_error(errno),
            is_privileged(line),
        )
    }

    #[test]
    fn eacces_is_permission_denied() {
        // connect(2) needs write permission on the socket file (tests/cli_getsocks.rs checks it
        // for real as nobody); here the classification of the errno alone.
        let denied = |line| exchange_error_for("/run/hm/master.sock", libc::EACCES, line);
        let e = denied("reload");
        assert_eq!(e.exit_code(), 3);
        let m = e.to_string();
        assert!(
            m.starts_with(
                "permission denied on /run/hm/master.sock: connecting needs write permission on \
                 the socket file"
            ),
            "{m}"
        );
        assert!(
            m.ends_with("run this as root or as the master's user"),
            "{m}"
        );
        // A read-only line: a -S socket's permissions would let the user in.
        let m = denied("show proc").to_string();
        assert!(m.contains("-S PATH,mode,660,group,GROUP"), "{m}");
        let m = denied("show proc; @1 show info").to_string();
        assert!(!m.contains("-S PATH,mode"), "{m}");
        assert_eq!(
            exchange_error_for("/x", libc::ECONNREFUSED, "reload").exit_code(),
            2
        );
    }
}
