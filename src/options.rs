//! haproxy-compatible command line: what the master consumes, what passes through to workers.
//!
//! `hapmaster` must be a drop-in for `haproxy -Ws` in an existing `ExecStart=` line, so it accepts
//! haproxy 2.6's argv (`init()` in `src/haproxy.c`) and only adds a few `--long` options, which
//! haproxy never had and therefore cannot collide with.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::haproxy_version::{ListenerHandoff, Version};

/// Used when `--ready-timeout` is not given: a large config with many certificates can take a while.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Used when `haproxy` is not on `$PATH` (systemd's default `PATH` for services has `/usr/sbin`,
/// but a container entrypoint may not).
pub const FALLBACK_HAPROXY: &str = "/usr/sbin/haproxy";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub haproxy: PathBuf,
    pub config_files: Vec<OsString>,
    pub pidfile: Option<PathBuf>,
    pub master_worker: bool,
    pub systemd: bool,
    pub daemon: bool,
    pub quiet: bool,
    pub verbose: bool,
    pub master_sockets: Vec<String>,
    pub ready_timeout: Duration,
    pub runtime_dir: Option<PathBuf>,
    pub worker_args: Vec<OsString>,
    pub notices: Vec<String>,
    /// `--exit-on-failure`: a dying current worker stops the master, exiting with the worker's
    /// status (haproxy's own master-worker semantics), instead of being replaced.
    pub exit_on_failure: bool,
    /// `--max-old-workers N`: beyond N draining workers, the oldest gets SIGTERM.
    pub max_old_workers: usize,
    /// `--drain-timeout DUR`: a draining worker still alive this long after its soft stop gets
    /// SIGTERM, then SIGKILL after a grace period. None: haproxy's `hard-stop-after` applies.
    pub drain_timeout: Option<Duration>,
    /// `--cli-timeout DUR`: a master CLI client idle this long, or whose command line has not
    /// been answered (from its first byte until its answer is written) this long, is
    /// disconnected (haproxy's `stats timeout`, 10 s by default).
    pub cli_timeout: Duration,
    /// `--metrics-bind ADDR:PORT`: serve `GET /metrics` there (off by default).
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// `--on-sigterm soft`: SIGTERM soft-stops the workers (SIGUSR1's meaning), which is what a
    /// container runtime's stop expects; false: a hard stop, as haproxy's own master.
    pub soft_stop_on_sigterm: bool,
    /// `--watch [--watch-delay DUR]`: reload when what the `-f` arguments name changes, this
    /// long after the first change seen (`DEFAULT_WATCH_DELAY`). None: off.
    pub watch: Option<Duration>,
    /// What `haproxy -v` printed before the master's loop started (never from the command line):
    /// how workers take the held sockets (`listener_handoff`), and the master CLI's dialect
    /// until a worker tells its version.
    /// None: not told (a wrapper, a custom build).
    pub binary_version: Option<Version>,
}

impl Options {
    /// How workers take the held listening sockets: by the binary's version; `-x PATH` when it
    /// did not tell.
    pub fn listener_handoff(&self) -> ListenerHandoff {
        ListenerHandoff::of(self.binary_version.as_ref())
    }

    /// haproxy's `-C DIR` among the flags passed to workers (the last one wins, as in haproxy):
    /// the directory a worker changes to before it opens relative `-f` paths.
    pub fn change_dir(&self) -> Option<&OsStr> {
        let mut found = None;
        let mut args = self.worker_args.iter();
        while let Some(arg) = args.next() {
            let takes_value = PASS_THROUGH_WITH_VALUE
                .iter()
                .any(|(name, _)| name.as_bytes() == arg.as_bytes());
            if takes_value {
                let value = args.next();
                if arg == "-C" {
                    found = value.map(OsString::as_os_str);
                }
            }
        }
        found
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Options),
    /// `-c`: run haproxy's own configuration check with these options and exit with its status.
    Check(Options),
    Help,
    /// `-v`, `-vv` or `--version`: run `<haproxy> -v` (or `-vv` when `build_options`), then print
    /// hapmaster's own version.
    Version {
        haproxy: PathBuf,
        build_options: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionsError {
    /// A flag that needs a value was the last argument.
    MissingArgument {
        flag: String,
        expected: &'static str,
    },
    /// A value was given but is unusable.
    InvalidValue {
        flag: String,
        value: String,
        expected: String,
    },
    /// `--help=x` and the like.
    UnexpectedValue {
        flag: String,
    },
    /// A `--long` option hapmaster does not know (haproxy has none).
    UnknownLongOption {
        option: String,
    },
    /// A word that is neither a flag nor a flag's value (haproxy rejects these too).
    UnexpectedArgument {
        arg: String,
    },
    NoConfigFile,
    InvalidDuration {
        input: String,
        reason: &'static str,
    },
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingArgument { flag, expected } => {
                write!(f, "option {flag} needs an argument: {expected}")
            }
            Self::InvalidValue {
                flag,
                value,
                expected,
            } => write!(f, "invalid value \"{value}\" for {flag}: {expected}"),
            Self::UnexpectedValue { flag } => write!(f, "option {flag} takes no value"),
            Self::UnknownLongOption { option } => write!(
                f,
                "unknown option {option}: hapmaster's own options are --haproxy, \
                 --ready-timeout, --runtime-dir, --exit-on-failure, --max-old-workers, \
                 --drain-timeout, --on-sigterm, --cli-timeout, --metrics-bind, --watch, \
                 --watch-delay, --help and --version (see --help)"
            ),
            Self::UnexpectedArgument { arg } => write!(
                f,
                "unexpected argument \"{arg}\": configuration files are given with -f FILE \
                 or after --"
            ),
            Self::NoConfigFile => write!(f, "no configuration file given (-f FILE)"),
            Self::InvalidDuration { input, reason } => write!(
                f,
                "invalid duration \"{input}\": {reason}; expected a whole number with an \
                 optional unit us, ms, s, m, h or d (no unit means ms), e.g. 60s"
            ),
        }
    }
}

impl std::error::Error for OptionsError {}

/// Parses haproxy's time syntax (`parse_time_err()`): a whole number and an optional unit, where
/// no unit means milliseconds, so that values can be copied from a haproxy config.
pub fn parse_duration(s: &str) -> Result<Duration, OptionsError> {
    let invalid = |reason| OptionsError::InvalidDuration {
        input: s.to_string(),
        reason,
    };
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid("it does not start with a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| invalid("the number is too large"))?;
    let micros_per_unit: u64 = match unit {
        "us" => 1,
        "" | "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60 * 1_000_000,
        "h" => 3_600 * 1_000_000,
        "d" => 86_400 * 1_000_000,
        _ => return Err(invalid("unknown unit")),
    };
    n.checked_mul(micros_per_unit)
        .map(Duration::from_micros)
        .ok_or_else(|| invalid("the duration is too large"))
}

/// What the parser has seen so far; `finish` turns it into a `Command`.
#[derive(Debug, Default)]
struct Parsed {
    haproxy: Option<PathBuf>,
    config_files: Vec<OsString>,
    pidfile: Option<PathBuf>,
    master_worker: bool,
    systemd: bool,
    daemon: bool,
    quiet: bool,
    verbose: bool,
    master_sockets: Vec<String>,
    ready_timeout: Option<Duration>,
    runtime_dir: Option<PathBuf>,
    worker_args: Vec<OsString>,
    notices: Vec<String>,
    check: bool,
    version: Option<bool>,
    exit_on_failure: bool,
    max_old_workers: Option<usize>,
    drain_timeout: Option<Duration>,
    cli_timeout: Option<Duration>,
    metrics_bind: Option<std::net::SocketAddr>,
    soft_stop_on_sigterm: bool,
    watch: bool,
    watch_delay: Option<Duration>,
}

/// Default of `--cli-timeout`, as haproxy's `stats timeout`.
pub const DEFAULT_CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `--watch-delay`: an editor's save or the kubelet's swap is over well within it, and
/// a person waiting for the reload hardly notices it.
pub const DEFAULT_WATCH_DELAY: Duration = Duration::from_millis(500);

/// Default of `--max-old-workers`.
pub const DEFAULT_MAX_OLD_WORKERS: usize = 50;

/// haproxy flags that take the next argument as their value; passed through to workers with it.
const PASS_THROUGH_WITH_VALUE: &[(&str, &str)] = &[
    ("-n", "a global maxconn (number)"),
    ("-N", "a default per-proxy maxconn (number)"),
    ("-L", "a local peer name"),
    ("-m", "a memory limit in megabytes"),
    (
        "-C",
        "a directory to change to before loading the configuration",
    ),
    ("-cc", "a condition expression"),
];

const NOTICE_X: &str = "-x is not needed with hapmaster (it hands the listening sockets to each \
                        new worker itself): ignored";
const NOTICE_SF_ST: &str = "-sf/-st ignored: hapmaster stops the previous worker itself once the \
                            new one is ready";

/// Parses the arguments after argv[0]. `-h`/`--help` wins over everything, even errors after it.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, OptionsError> {
    parse_with(args, default_haproxy)
}

/// `parse` with the default haproxy lookup injected, so tests do not depend on `$PATH`.
pub fn parse_with<I, F>(args: I, default_haproxy: F) -> Result<Command, OptionsError>
where
    I: IntoIterator<Item = OsString>,
    F: FnOnce() -> PathBuf,
{
    let mut args = args.into_iter().peekable();
    let mut p = Parsed::default();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            p.config_files.extend(args.by_ref());
        } else if bytes.starts_with(b"--") {
            if parse_long(&arg, &mut args, &mut p)? {
                return Ok(Command::Help);
            }
        } else if bytes.starts_with(b"-") && bytes.len() > 1 {
            if parse_short(arg, &mut args, &mut p)? {
                return Ok(Command::Help);
            }
        } else {
            return Err(OptionsError::UnexpectedArgument { arg: lossy(&arg) });
        }
    }
    finish(p, default_haproxy)
}

fn finish<F: FnOnce() -> PathBuf>(p: Parsed, default_haproxy: F) -> Result<Command, OptionsError> {
    let haproxy = p.haproxy.unwrap_or_else(default_haproxy);
    if let Some(build_options) = p.version {
        return Ok(Command::Version {
            haproxy,
            build_options,
        });
    }
    if p.config_files.is_empty() {
        return Err(OptionsError::NoConfigFile);
    }
    if let (false, Some(delay)) = (p.watch, p.watch_delay) {
        return Err(OptionsError::InvalidValue {
            flag: "--watch-delay".into(),
            value: format!("{}ms", delay.as_millis()),
            expected: "--watch as well (it is the delay of --watch)".into(),
        });
    }
    let options = Options {
        haproxy,
        config_files: p.config_files,
        pidfile: p.pidfile,
        master_worker: p.master_worker,
        systemd: p.systemd,
        daemon: p.daemon,
        quiet: p.quiet,
        verbose: p.verbose,
        master_sockets: p.master_sockets,
        ready_timeout: p.ready_timeout.unwrap_or(DEFAULT_READY_TIMEOUT),
        runtime_dir: p.runtime_dir,
        worker_args: p.worker_args,
        notices: p.notices,
        exit_on_failure: p.exit_on_failure,
        max_old_workers: p.max_old_workers.unwrap_or(DEFAULT_MAX_OLD_WORKERS),
        drain_timeout: p.drain_timeout,
        cli_timeout: p.cli_timeout.unwrap_or(DEFAULT_CLI_TIMEOUT),
        metrics_bind: p.metrics_bind,
        soft_stop_on_sigterm: p.soft_stop_on_sigterm,
        watch: p
            .watch
            .then(|| p.watch_delay.unwrap_or(DEFAULT_WATCH_DELAY)),
        binary_version: None,
    };
    Ok(if p.check {
        Command::Check(options)
    } else {
        Command::Run(options)
    })
}

/// Handles one `--long[=value]` option; returns true for `--help`.
fn parse_long<I: Iterator<Item = OsString>>(
    arg: &OsStr,
    rest: &mut I,
    p: &mut Parsed,
) -> Result<bool, OptionsError> {
    let bytes = arg.as_bytes();
    let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
        Some(i) => (&bytes[..i], Some(OsStr::from_bytes(&bytes[i + 1..]))),
        None => (bytes, None),
    };
    let name_str = String::from_utf8_lossy(name).into_owned();
    match name {
        b"--help" | b"--version" => {
            if inline.is_some() {
                return Err(OptionsError::UnexpectedValue { flag: name_str });
            }
            if name == b"--help" {
                return Ok(true);
            }
            p.version.get_or_insert(false);
        }
        b"--haproxy" => {
            let v = long_value(&name_str, inline, rest, "the path of the haproxy binary")?;
            p.haproxy = Some(PathBuf::from(v));
        }
        b"--runtime-dir" => {
            let v = long_value(&name_str, inline, rest, "a directory")?;
            p.runtime_dir = Some(PathBuf::from(v));
        }
        b"--ready-timeout" => {
            let v = long_value(&name_str, inline, rest, "a duration such as 60s")?;
            p.ready_timeout = Some(parse_positive_duration(&name_str, &v)?);
        }
        b"--cli-timeout" => {
            let v = long_value(&name_str, inline, rest, "a duration such as 10s")?;
            p.cli_timeout = Some(parse_positive_duration(&name_str, &v)?);
        }
        b"--metrics-bind" => {
            const EXPECTED: &str = "an address and port such as 127.0.0.1:9101 or [::1]:9101";
            let v = long_value(&name_str, inline, rest, EXPECTED)?;
            let addr = v.to_str().and_then(|t| t.parse().ok());
            p.metrics_bind = Some(addr.ok_or_else(|| OptionsError::InvalidValue {
                flag: name_str.clone(),
                value: v.to_string_lossy().into_owned(),
                expected: EXPECTED.into(),
            })?);
        }
        b"--on-sigterm" => {
            const EXPECTED: &str = "soft (finish the connections) or hard (stop now)";
            let v = long_value(&name_str, inline, rest, EXPECTED)?;
            p.soft_stop_on_sigterm = match v.as_bytes() {
                b"soft" => true,
                b"hard" => false,
                _ => {
                    return Err(OptionsError::InvalidValue {
                        flag: name_str.clone(),
                        value: lossy(&v),
                        expected: EXPECTED.to_string(),
                    })
                }
            };
        }
        b"--drain-timeout" => {
            let v = long_value(&name_str, inline, rest, "a duration such as 5m")?;
            p.drain_timeout = Some(parse_positive_duration(&name_str, &v)?);
        }
        b"--max-old-workers" => {
            const EXPECTED: &str = "a number of workers, 0 or more";
            let v = long_value(&name_str, inline, rest, EXPECTED)?;
            let n = v
                .to_str()
                .and_then(|t| t.parse::<usize>().ok())
                .ok_or_else(|| OptionsError::InvalidValue {
                    flag: name_str.clone(),
                    value: lossy(&v),
                    expected: EXPECTED.to_string(),
                })?;
            p.max_old_workers = Some(n);
        }
        b"--exit-on-failure" | b"--watch" => {
            if inline.is_some() {
                return Err(OptionsError::UnexpectedValue { flag: name_str });
            }
            if name == b"--watch" {
                p.watch = true;
            } else {
                p.exit_on_failure = true;
            }
        }
        b"--watch-delay" => {
            let v = long_value(&name_str, inline, rest, "a duration such as 500ms")?;
            p.watch_delay = Some(parse_positive_duration(&name_str, &v)?);
        }
        _ => return Err(OptionsError::UnknownLongOption { option: name_str }),
    }
    Ok(false)
}

/// The value of a `--long` option, from `--opt=VALUE` or the next argument; never empty.
fn long_value<I: Iterator<Item = OsString>>(
    flag: &str,
    inline: Option<&OsStr>,
    rest: &mut I,
    expected: &'static str,
) -> Result<OsString, OptionsError> {
    let value = match inline {
        Some(v) => v.to_os_string(),
        None => rest.next().ok_or_else(|| OptionsError::MissingArgument {
            flag: flag.to_string(),
            expected,
        })?,
    };
    if value.is_empty() {
        return Err(OptionsError::MissingArgument {
            flag: flag.to_string(),
            expected,
        });
    }
    Ok(value)
}

fn parse_positive_duration(flag: &str, value: &OsStr) -> Result<Duration, OptionsError> {
    let text = value.to_str().ok_or_else(|| OptionsError::InvalidValue {
        flag: flag.to_string(),
        value: lossy(value),
        expected: "a duration such as 60s".to_string(),
    })?;
    let d = parse_duration(text).map_err(|e| OptionsError::InvalidValue {
        flag: flag.to_string(),
        value: text.to_string(),
        expected: e.to_string(),
    })?;
    if d.is_zero() {
        // A zero timeout would fail every reload before the new worker could answer.
        return Err(OptionsError::InvalidValue {
            flag: flag.to_string(),
            value: text.to_string(),
            expected: "a duration greater than zero, e.g. 60s".to_string(),
        });
    }
    Ok(d)
}

/// Handles one haproxy-style `-flag`; returns true for `-h`.
fn parse_short<I: Iterator<Item = OsString>>(
    arg: OsString,
    rest: &mut std::iter::Peekable<I>,
    p: &mut Parsed,
) -> Result<bool, OptionsError> {
    let flag = lossy(&arg);
    match arg.as_bytes() {
        b"-h" => return Ok(true),
        b"-v" => p.version = Some(p.version.unwrap_or(false)),
        b"-vv" => p.version = Some(true),
        b"-W" => p.master_worker = true,
        b"-Ws" => {
            p.master_worker = true;
            p.systemd = true;
        }
        b"-D" => p.daemon = true,
        // Workers always run with -db under the master; asking for it changes nothing.
        b"-db" => {}
        b"-c" => p.check = true,
        b"-q" => {
            p.quiet = true;
            p.worker_args.push(arg);
        }
        b"-V" => {
            p.verbose = true;
            p.worker_args.push(arg);
        }
        b"-f" => p.config_files.push(next_value(
            &flag,
            rest,
            "a configuration file or directory",
        )?),
        b"-p" => p.pidfile = Some(next_value(&flag, rest, "a pid file path")?.into()),
        b"-S" => {
            let v = next_value(&flag, rest, "a master socket address")?;
            let v = v.into_string().map_err(|v| OptionsError::InvalidValue {
                flag: flag.clone(),
                value: lossy(&v),
                expected: "valid UTF-8".to_string(),
            })?;
            p.master_sockets.push(v);
        }
        b"-x" => {
            next_value(&flag, rest, "a unix socket path")?;
            push_notice(p, NOTICE_X);
        }
        b"-sf" | b"-st" => {
            // haproxy 2.6 takes every following argument not starting with '-'; we stop at the
            // first non-number so that nothing else is swallowed by accident.
            while rest.next_if(|a| is_pid(a)).is_some() {}
            push_notice(p, NOTICE_SF_ST);
        }
        other => {
            let with_value = PASS_THROUGH_WITH_VALUE
                .iter()
                .find(|(name, _)| name.as_bytes() == other);
            p.worker_args.push(arg);
            if let Some((_, expected)) = with_value {
                let v = next_value(&flag, rest, expected)?;
                p.worker_args.push(v);
            }
        }
    }
    Ok(false)
}

fn next_value<I: Iterator<Item = OsString>>(
    flag: &str,
    rest: &mut I,
    expected: &'static str,
) -> Result<OsString, OptionsError> {
    rest.next().ok_or_else(|| OptionsError::MissingArgument {
        flag: flag.to_string(),
        expected,
    })
}

fn push_notice(p: &mut Parsed, notice: &str) {
    if !p.notices.iter().any(|n| n == notice) {
        p.notices.push(notice.to_string());
    }
}

fn is_pid(arg: &OsStr) -> bool {
    let b = arg.as_bytes();
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

fn lossy(s: &OsStr) -> String {
    s.to_string_lossy().into_owned()
}

/// `haproxy` on `$PATH`, else `/usr/sbin/haproxy`.
pub fn default_haproxy() -> PathBuf {
    find_haproxy(std::env::var_os("PATH").as_deref())
}

/// Pure except for the `stat` of each candidate: the first executable `haproxy` in `path_var`.
pub fn find_haproxy(path_var: Option<&OsStr>) -> PathBuf {
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        // An empty $PATH entry means the current directory; a master must not pick that up.
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join("haproxy"))
        .find(|candidate| is_executable_file(candidate))
        .unwrap_or_else(|| PathBuf::from(FALLBACK_HAPROXY))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The `--help` text.
pub fn usage() -> String {
    format!(
        "\
hapmaster {version}: a master process for HAProxy that keeps the listening sockets open across
reloads. It replaces `haproxy -Ws` (or `haproxy -W`) on the same command line and runs haproxy
workers in the foreground.

Usage: hapmaster [-Ws|-W] [-D] [-q] [-V] [-p PIDFILE] [-S SOCKET[,OPTS]]... -f FILE|DIR...
                 [haproxy flags...] [--haproxy PATH] [--ready-timeout DUR] [--runtime-dir DIR]
                 [-- FILE|DIR...]
       hapmaster -c -f FILE...        check the configuration with haproxy and exit with its status
       hapmaster -v | -vv | --version print haproxy's version, then hapmaster's
       hapmaster -h | --help          show this text
       hapmaster help [SUBCOMMAND]    show this text, or the usage of a client subcommand
       hapmaster reload|cli|getsocks ...
                                      client subcommands: talk to a running master (below)

Used by the master:
  -f FILE|DIR        configuration file or directory; repeatable, order kept. Every argument
                     after `--` is a configuration file too.
  -p FILE            write the master's pid to FILE (atomically; removed at exit)
  -W, -Ws            master-worker mode; accepted for compatibility (hapmaster always is one).
                     -Ws also means systemd: readiness and reloads are reported with sd_notify
                     (Type=notify or Type=notify-reload) when NOTIFY_SOCKET is set.
  -D                 daemon mode: the master detaches from the terminal
  -S PATH[,OPTS]     an extra master CLI socket (unix only; OPTS: mode,OCTAL uid,N gid,N
                     user,NAME group,NAME; default mode 600); repeatable. Its clients run
                     read-only commands; reload, @-forwarding and _getsocks need root or the
                     master's uid. <runtime dir>/master.sock always serves the CLI too.
                     -S fd@N: a listening socket passed as fd N (no OPTS; an inet one's
                     clients run read-only commands only).
  -c                 only check the configuration (runs `haproxy -c`) and exit with its status
  -q                 quiet: the master logs warnings and alerts only; passed to the workers too
  -V                 verbose: the master logs debug messages; passed to the workers too
  -db                accepted and ignored: workers always run in the foreground (-db)
  -v, -vv            show haproxy's version (-vv: and build options), then hapmaster's

hapmaster's own options (haproxy has no --long options, so these never collide):
  --haproxy PATH         haproxy binary (default: `haproxy` on $PATH, else {fallback})
  --ready-timeout DUR    how long a new worker may take to become ready before the reload
                         is declared failed (default 60s). Units: us, ms, s, m, h, d; a bare
                         number is milliseconds, as in haproxy.
  --runtime-dir DIR      private directory for the workers' stats sockets and config fragments
                         (default: $RUNTIME_DIRECTORY, else /run/hapmaster as root, else
                         $XDG_RUNTIME_DIR/hapmaster, else /tmp/hapmaster-UID)
  --exit-on-failure      when the current worker dies, stop everything and exit with its
                         status (haproxy's own semantics, for systemd's Restart=) instead of
                         replacing it on the held sockets (the default, with a backoff)
  --max-old-workers N    at most N old workers draining at once; beyond, the oldest gets
                         SIGTERM (default 50)
  --cli-timeout DUR      a master CLI client idle this long, or whose command line is not
                         answered this long after its first byte, is disconnected (default 10s)
  --drain-timeout DUR    an old worker still draining DUR after its soft stop gets SIGTERM,
                         then SIGKILL 5s later; a soft stop of the master (SIGUSR1) still
                         waiting DUR after it began becomes a hard stop, exit status 0
                         (default: none; haproxy's hard-stop-after applies)
  --on-sigterm soft|hard what SIGTERM does: hard stops now (default, as haproxy's master);
                         soft finishes the connections first, as SIGUSR1, for a container
                         runtime's or Kubernetes' stop (bound it with --drain-timeout)
  --metrics-bind ADDR:PORT
                         serve GET /metrics (Prometheus text format, as `show metrics`) over
                         HTTP on ADDR:PORT (default: off)
  --watch                reload when a -f file or directory changes (a write, an editor's
                         rename, a Kubernetes ConfigMap update, a .cfg file added to or
                         removed from a -f directory); a change that leaves what haproxy
                         reads the same (touch, chmod) does not reload
  --watch-delay DUR      how long --watch waits after the first change it sees, so that one
                         save or update makes one reload (default 500ms; later changes extend
                         it up to 4 times DUR in all)
  Both `--opt VALUE` and `--opt=VALUE` are accepted.

Accepted and ignored (hapmaster does these itself), with a notice:
  -x PATH            hapmaster hands the listening sockets to each new worker
  -sf PID..., -st PID...
                     hapmaster stops the previous worker once the new one is ready

Passed through to every worker unchanged and in order: every other haproxy flag, e.g.
  -n MAXCONN, -N MAXPCONN, -L PEERNAME, -m MEGS, -C DIR, -cc EXPR (with their argument),
  -dW, -dD, -dr, -dV, -dM[...], -dK..., -de, -dp, -dS, -dG, -dR, -d

Signals to the master:
  SIGUSR2, SIGHUP    reload: start a new worker with the current configuration; once it is
                     ready, the old one is soft-stopped. If it fails, the old one keeps running.
  SIGUSR1            soft stop: workers finish their connections, then everything exits
  SIGTERM, SIGINT    stop now (SIGTERM: a soft stop with --on-sigterm soft)
  SIGURG             upgrade in place: re-execute the hapmaster binary found on disk (after a
                     package upgrade), keeping the pid, the workers and the listening sockets

Client subcommands (`hapmaster help SUBCOMMAND` for each one's options and exit statuses):
{subcommands}",
        version = env!("CARGO_PKG_VERSION"),
        fallback = FALLBACK_HAPROXY,
        subcommands = crate::control::usage::subcommands_summary(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn p(args: &[&str]) -> Result<Command, OptionsError> {
        parse_with(os(args), || PathBuf::from("/default/haproxy"))
    }

    fn run(args: &[&str]) -> Options {
        match p(args) {
            Ok(Command::Run(o)) => o,
            other => panic!("expected Run for {args:?}, got {other:?}"),
        }
    }

    #[test]
    fn debian_exec_start_line() {
        let o = run(&[
            "-Ws",
            "-f",
            "/etc/haproxy/haproxy.cfg",
            "-p",
            "/run/haproxy.pid",
            "-S",
            "/run/haproxy-master.sock",
        ]);
        assert!(o.master_worker && o.systemd && !o.daemon);
        assert_eq!(o.config_files, os(&["/etc/haproxy/haproxy.cfg"]));
        assert_eq!(o.pidfile, Some(PathBuf::from("/run/haproxy.pid")));
        assert_eq!(o.master_sockets, vec!["/run/haproxy-master.sock"]);
        assert_eq!(o.haproxy, PathBuf::from("/default/haproxy"));
        assert_eq!(o.ready_timeout, DEFAULT_READY_TIMEOUT);
        assert!(o.worker_args.is_empty());
        assert!(o.notices.is_empty());
    }

    #[test]
    fn config_files_keep_order_including_after_double_dash() {
        let o = run(&[
            "-f", "a.cfg", "-q", "-f", "conf.d", "--", "-odd.cfg", "--help",
        ]);
        assert_eq!(
            o.config_files,
            os(&["a.cfg", "conf.d", "-odd.cfg", "--help"])
        );
        assert_eq!(o.worker_args, os(&["-q"]));
    }

    #[test]
    fn pass_through_keeps_values_attached_and_order() {
        let o = run(&[
            "-n",
            "1000",
            "-f",
            "x.cfg",
            "-dW",
            "-L",
            "peer1",
            "-N",
            "50",
            "-m",
            "256",
            "-C",
            "/etc",
            "-cc",
            "defined(X)",
            "-dMfail",
            "-V",
            "-de",
        ]);
        assert_eq!(
            o.worker_args,
            os(&[
                "-n",
                "1000",
                "-dW",
                "-L",
                "peer1",
                "-N",
                "50",
                "-m",
                "256",
                "-C",
                "/etc",
                "-cc",
                "defined(X)",
                "-dMfail",
                "-V",
                "-de"
            ])
        );
        assert!(o.verbose && !o.quiet);
        assert_eq!(o.config_files, os(&["x.cfg"]));
    }

    #[test]
    fn change_dir_is_the_last_dash_c_value() {
        assert_eq!(run(&["-f", "x.cfg"]).change_dir(), None);
        let o = run(&["-C", "/a", "-L", "-C", "-f", "x.cfg", "-C", "rel"]);
        assert_eq!(o.change_dir(), Some(OsStr::new("rel")));
        // `-C` as another flag's value is that flag's value.
        let o = run(&["-L", "-C", "-f", "x.cfg"]);
        assert_eq!(o.change_dir(), None);
    }

    #[test]
    fn consumed_flags_do_not_reach_workers() {
        let o = run(&[
            "-W",
            "-D",
            "-db",
            "-p",
            "pid",
            "-S",
            "a",
            "-S",
            "b,mode,600",
            "-f",
            "c",
        ]);
        assert!(o.master_worker && !o.systemd && o.daemon);
        assert!(o.worker_args.is_empty());
        assert_eq!(o.master_sockets, vec!["a", "b,mode,600"]);
    }

    #[test]
    fn x_sf_st_are_ignored_with_notices() {
        let o = run(&[
            "-f",
            "c",
            "-x",
            "/run/old.sock",
            "-sf",
            "12",
            "34",
            "-q",
            "-st",
            "5",
        ]);
        assert_eq!(o.worker_args, os(&["-q"]));
        assert_eq!(
            o.notices,
            vec![NOTICE_X.to_string(), NOTICE_SF_ST.to_string()]
        );
        assert!(o.notices[0].starts_with("-x is not needed with hapmaster"));
        assert!(o.notices[1].starts_with("-sf/-st ignored"));
    }

    #[test]
    fn sf_without_pids_and_followed_by_non_number() {
        let o = run(&["-sf", "-f", "c"]);
        assert_eq!(o.config_files, os(&["c"]));
        assert!(matches!(
            p(&["-f", "c", "-sf", "12", "oops"]),
            Err(OptionsError::UnexpectedArgument { arg }) if arg == "oops"
        ));
    }

    #[test]
    fn long_options_both_forms() {
        let o = run(&[
            "--haproxy",
            "/opt/haproxy",
            "--ready-timeout=90s",
            "--runtime-dir=/run/x",
            "-f",
            "c",
        ]);
        assert_eq!(o.haproxy, PathBuf::from("/opt/haproxy"));
        assert_eq!(o.ready_timeout, Duration::from_secs(90));
        assert_eq!(o.runtime_dir, Some(PathBuf::from("/run/x")));
        let o = run(&[
            "--haproxy=/h",
            "--ready-timeout",
            "1500",
            "--runtime-dir",
            "d",
            "-f",
            "c",
        ]);
        assert_eq!(o.haproxy, PathBuf::from("/h"));
        assert_eq!(o.ready_timeout, Duration::from_millis(1500));
        assert_eq!(o.runtime_dir, Some(PathBuf::from("d")));
        assert!(!o.exit_on_failure);
        assert_eq!(o.max_old_workers, DEFAULT_MAX_OLD_WORKERS);
        assert_eq!(o.drain_timeout, None);
    }

    #[test]
    fn failure_and_draining_options() {
        let o = run(&[
            "--exit-on-failure",
            "--max-old-workers=3",
            "--drain-timeout",
            "2m",
            "-f",
            "c",
        ]);
        assert!(o.exit_on_failure);
        assert_eq!(o.max_old_workers, 3);
        assert_eq!(o.drain_timeout, Some(Duration::from_secs(120)));
        assert!(o.worker_args.is_empty(), "{:?}", o.worker_args);
        let o = run(&["--max-old-workers", "0", "--drain-timeout=1500", "-f", "c"]);
        assert_eq!(o.max_old_workers, 0);
        assert_eq!(o.drain_timeout, Some(Duration::from_millis(1500)));
        for bad in [
            &["--max-old-workers", "-1", "-f", "c"][..],
            &["--max-old-workers=many", "-f", "c"],
            &["--drain-timeout", "0", "-f", "c"],
            &["--drain-timeout", "5 parsecs", "-f", "c"],
            &["--exit-on-failure=yes", "-f", "c"],
        ] {
            let e = p(bad).unwrap_err();
            assert!(
                e.to_string().contains(bad[0].split('=').next().unwrap()),
                "{e}"
            );
        }
    }

    #[test]
    fn on_sigterm() {
        assert!(!run(&["-f", "c"]).soft_stop_on_sigterm);
        assert!(run(&["--on-sigterm", "soft", "-f", "c"]).soft_stop_on_sigterm);
        assert!(!run(&["--on-sigterm=hard", "-f", "c"]).soft_stop_on_sigterm);
        let e = p(&["--on-sigterm", "graceful", "-f", "c"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"graceful\" for --on-sigterm: soft (finish the connections) or hard \
             (stop now)"
        );
    }

    #[test]
    fn metrics_bind() {
        assert_eq!(run(&["-f", "c"]).metrics_bind, None);
        let o = run(&["--metrics-bind", "127.0.0.1:9101", "-f", "c"]);
        assert_eq!(o.metrics_bind, Some("127.0.0.1:9101".parse().unwrap()));
        let o = run(&["--metrics-bind=[::1]:9101", "-f", "c"]);
        assert_eq!(o.metrics_bind, Some("[::1]:9101".parse().unwrap()));
        for bad in ["localhost:9101", "127.0.0.1", ":9101", "::1:9101"] {
            let e = p(&["--metrics-bind", bad, "-f", "c"]).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid value \"{bad}\" for --metrics-bind: an address and port such as \
                     127.0.0.1:9101 or [::1]:9101"
                )
            );
        }
    }

    #[test]
    fn watch_and_its_delay() {
        assert_eq!(run(&["-f", "c"]).watch, None);
        assert_eq!(
            run(&["--watch", "-f", "c"]).watch,
            Some(DEFAULT_WATCH_DELAY)
        );
        let o = run(&["--watch", "--watch-delay", "2s", "-f", "c"]);
        assert_eq!(o.watch, Some(Duration::from_secs(2)));
        let o = run(&["--watch-delay=150", "--watch", "-f", "c"]);
        assert_eq!(o.watch, Some(Duration::from_millis(150)));
        assert_eq!(
            p(&["--watch=yes", "-f", "c"]),
            Err(OptionsError::UnexpectedValue {
                flag: "--watch".into()
            })
        );
        let e = p(&["--watch-delay", "1s", "-f", "c"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value \"1000ms\" for --watch-delay: --watch as well (it is the delay of \
             --watch)"
        );
        assert!(p(&["--watch", "--watch-delay", "0", "-f", "c"]).is_err());
        assert!(p(&["--watch", "--watch-delay", "soon", "-f", "c"]).is_err());
    }

    #[test]
    fn missing_arguments_name_the_flag() {
        for flag in [
            "-f",
            "-p",
            "-S",
            "-x",
            "-n",
            "-N",
            "-L",
            "-m",
            "-C",
            "-cc",
            "--haproxy",
            "--ready-timeout",
            "--runtime-dir",
            "--max-old-workers",
            "--drain-timeout",
        ] {
            match p(&["-f", "c", flag]) {
                Err(e @ OptionsError::MissingArgument { .. }) => {
                    assert!(e.to_string().contains(flag), "{e}")
                }
                other => panic!("{flag}: {other:?}"),
            }
        }
        assert!(matches!(
            p(&["--haproxy=", "-f", "c"]),
            Err(OptionsError::MissingArgument { .. })
        ));
    }

    #[test]
    fn bad_values_and_unknowns() {
        let e = p(&["--ready-timeout", "10x", "-f", "c"]).unwrap_err();
        assert!(e.to_string().contains("--ready-timeout") && e.to_string().contains("10x"));
        assert!(matches!(
            p(&["--ready-timeout=0", "-f", "c"]),
            Err(OptionsError::InvalidValue { .. })
        ));
        let e = p(&["--daemon", "-f", "c"]).unwrap_err();
        assert_eq!(
            e,
            OptionsError::UnknownLongOption {
                option: "--daemon".into()
            }
        );
        assert!(matches!(
            p(&["--help=yes"]),
            Err(OptionsError::UnexpectedValue { .. })
        ));
        assert!(matches!(
            p(&["haproxy.cfg"]),
            Err(OptionsError::UnexpectedArgument { .. })
        ));
    }

    #[test]
    fn no_config_file() {
        let e = p(&["-Ws"]).unwrap_err();
        assert_eq!(e, OptionsError::NoConfigFile);
        assert_eq!(e.to_string(), "no configuration file given (-f FILE)");
        assert_eq!(p(&["-c"]).unwrap_err(), OptionsError::NoConfigFile);
        assert_eq!(p(&["--",]).unwrap_err(), OptionsError::NoConfigFile);
    }

    #[test]
    fn check_help_version() {
        assert!(matches!(p(&["-c", "-f", "c", "-q"]), Ok(Command::Check(o)) if o.quiet));
        assert_eq!(p(&["-h"]), Ok(Command::Help));
        assert_eq!(p(&["-f", "c", "--help", "--bogus"]), Ok(Command::Help));
        assert_eq!(
            p(&["-v"]),
            Ok(Command::Version {
                haproxy: "/default/haproxy".into(),
                build_options: false
            })
        );
        assert_eq!(
            p(&["-vv", "--haproxy", "/h"]),
            Ok(Command::Version {
                haproxy: "/h".into(),
                build_options: true
            })
        );
        assert!(matches!(
            p(&["--version"]),
            Ok(Command::Version {
                build_options: false,
                ..
            })
        ));
    }

    #[test]
    fn unknown_short_flags_pass_through_as_one_arg() {
        let o = run(&["-f", "c", "-dD", "-Zq", "-dKacl"]);
        assert_eq!(o.worker_args, os(&["-dD", "-Zq", "-dKacl"]));
        // "acl" is not a value of -dK (haproxy 2.6 wants it attached: -dKacl).
        assert!(p(&["-f", "c", "-dK", "acl"]).is_err());
    }

    #[test]
    fn non_utf8_arguments_survive() {
        use std::os::unix::ffi::OsStringExt;
        let file = OsString::from_vec(vec![b'c', 0xff]);
        let flag = OsString::from_vec(vec![b'-', b'd', 0xfe]);
        let args = vec![OsString::from("-f"), file.clone(), flag.clone()];
        match parse_with(args, || "/h".into()) {
            Ok(Command::Run(o)) => {
                assert_eq!(o.config_files, vec![file]);
                assert_eq!(o.worker_args, vec![flag]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("100"), Duration::from_millis(100));
        assert_eq!(ok("100ms"), Duration::from_millis(100));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1d"), Duration::from_secs(86400));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in [
            "",
            "s",
            "-1s",
            "1.5s",
            "10S",
            "10 s",
            " 10s",
            "1m30s",
            "99999999999999999999",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("\"{bad}\"")), "{e}");
        }
        assert!(parse_duration("999999999999999d").is_err());
    }

    #[test]
    fn haproxy_lookup_prefers_path_then_fallback() {
        let tmp = crate::test_dir::temp_dir("opt");
        let dir = tmp.path();
        let bin = dir.join("haproxy");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path_var = OsString::from(format!("/nonexistent:{}", dir.display()));
        assert_eq!(
            find_haproxy(Some(&path_var)),
            PathBuf::from(FALLBACK_HAPROXY)
        );
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_haproxy(Some(&path_var)), bin);
        assert_eq!(find_haproxy(None), PathBuf::from(FALLBACK_HAPROXY));
    }

    #[test]
    fn usage_mentions_everything() {
        let u = usage();
        for word in [
            "-f FILE",
            "-p FILE",
            "-Ws",
            "-D",
            "-S PATH",
            "-c",
            "-q",
            "-V",
            "-db",
            "-vv",
            "--haproxy",
            "--ready-timeout",
            "--runtime-dir",
            "--exit-on-failure",
            "--max-old-workers",
            "--drain-timeout",
            "--cli-timeout",
            "--metrics-bind",
            "--watch",
            "--watch-delay",
            "-x PATH",
            "-sf",
            "-st",
            "SIGUSR2",
            "SIGHUP",
            "SIGUSR1",
            "SIGTERM",
            "SIGINT",
            "--opt=VALUE",
            "-n MAXCONN",
            "hapmaster help [SUBCOMMAND]",
            "hapmaster reload [-S PATH]",
            "hapmaster cli [-S PATH]",
            "hapmaster getsocks PATH",
        ] {
            assert!(u.contains(word), "usage lacks {word}");
        }
    }
}
