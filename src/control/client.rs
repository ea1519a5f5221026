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

use crate::options::parse_duration;
use crate::runtime_dir::{RuntimeDir, MASTER_SOCKET};

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
    /// `-h` / `--help` after a subcommand: print [`client_usage`].
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

/// Usage of the client subcommands.
pub fn client_usage() -> String {
    format!(
        "usage:\n  \
         hapmaster reload [-S PATH] [--timeout DUR] [--await]\n      \
         reload and wait for the result; exit 0 on Success=1, 1 on Success=0, 2 when the master \
         cannot be reached. --await starts no reload: it waits for the one a signal started \
         (or the next one), e.g. as ExecReload= of a Type=notify-reload unit\n  \
         hapmaster cli [-S PATH] [--timeout DUR] COMMAND...\n      \
         send one command line (e.g. 'show proc', '@1 show info') and print the answer\n  \
         hapmaster getsocks PATH [--json] [--timeout DUR]\n      \
         take the listening sockets of a haproxy stats socket with 'expose-fd listeners' (or of \
         a hapmaster control socket), print them and close them\n\n\
         -S PATH defaults to {} (the master's runtime directory).\n\
         DUR is a number with an optional unit: us, ms (default), s, m, h, d. Default timeouts: \
         reload {}s, cli {}s, getsocks {}s.\n",
        default_socket().display(),
        DEFAULT_RELOAD_TIMEOUT.as_secs(),
        DEFAULT_CLI_TIMEOUT.as_secs(),
        DEFAULT_GETSOCKS_TIMEOUT.as_secs()
    )
}

/// Whether `first` (argv\[1\]) names a client subcommand rather than haproxy-style options.
pub fn is_subcommand(first: &OsString) -> bool {
    matches!(first.to_str(), Some("reload" | "cli" | "getsocks"))
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
    /// Neither `Success=1` nor `Success=0`: not a master that does synchronous reloads.
    Unrecognised,
}

impl ReloadOutcome {
    /// `hapmaster reload`'s exit status: 0, 1, or 2 (as for a connection error).
    pub fn exit_code(self) -> u8 {
        match self {
            ReloadOutcome::Success => 0,
            ReloadOutcome::Failure => 1,
            ReloadOutcome::Unrecognised => 2,
        }
    }
}

pub fn reload_outcome(answer: &str) -> ReloadOutcome {
    match answer.lines().next().map(str::trim_end) {
        Some("Success=1") => ReloadOutcome::Success,
        Some("Success=0") => ReloadOutcome::Failure,
        _ => ReloadOutcome::Unrecognised,
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// ENOENT or ECONNREFUSED: nothing listens there.
    NotRunning {
        path: PathBuf,
        source: io::Error,
    },
    PermissionDenied {
        path: PathBuf,
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
            PermissionDenied { path } => write!(
                f,
                "permission denied on {}: run as root or as the master's user",
                path.display()
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
        crate::handoff::fetch::connect_unix(path, timeout).map_err(|e| connect_error(path, e))?;
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

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn connect_error(path: &Path, source: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR) => {
            ClientError::NotRunning { path, source }
        }
        Some(libc::EACCES) | Some(libc::EPERM) => ClientError::PermissionDenied { path },
        _ => ClientError::Connect { path, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(ReloadOutcome::Success.exit_code(), 0);
        assert_eq!(ReloadOutcome::Failure.exit_code(), 1);
        assert_eq!(ReloadOutcome::Unrecognised.exit_code(), 2);
    }

    use crate::test_dir::TempDir;

    #[test]
    fn exchange_reads_until_close() {
        let dir = TempDir::new("ex");
        let path = dir.0.join("m.sock");
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
        let dir = TempDir::new("err");
        let missing = dir.0.join("none.sock");
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
        let stale = dir.0.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let e = exchange(&stale, "reload", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");

        // A server that never answers: the timeout, with what arrived.
        let slow = dir.0.join("slow.sock");
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

    #[test]
    fn eacces_is_permission_denied() {
        // connect(2) needs write permission on the socket file (tests/cli_getsocks.rs checks it
        // for real as nobody); here the classification of the errno alone.
        let e = connect_error(
            Path::new("/run/hm/master.sock"),
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(
            e.to_string(),
            "permission denied on /run/hm/master.sock: run as root or as the master's user"
        );
    }
}
