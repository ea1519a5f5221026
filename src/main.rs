//! `hapmaster`: argv -> options, logging, then the master loop (or a one-shot haproxy command).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, ExitCode};

use hapmaster::control::client::{self, ClientCommand, ClientError};
use hapmaster::control::format::{getsocks_json, getsocks_table, SocketRow};
use hapmaster::control::usage;
use hapmaster::daemon::Detached;
use hapmaster::handoff::fetch::fetch_sockets;
use hapmaster::handoff::listeners::SocketInfo;
use hapmaster::haproxy_version::Version;
use hapmaster::notify::Notifier;
use hapmaster::options::{self, Options};
use hapmaster::pidfile::{PidFile, PidPath};
use hapmaster::runtime_dir::RuntimeDir;
use hapmaster::supervisor::upgrade::{self, Launch, Snapshot};
use hapmaster::{inherited_fds, logging, supervisor};

fn main() -> ExitCode {
    // Client subcommands come first: `hapmaster reload`, `cli`, `getsocks`. haproxy-style
    // invocations always start with an option, so they never collide.
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(first) = args.first() {
        // First of all: the watchdog's fds 3 and 4 must stay as the master placed them.
        if first == hapmaster::watchdog::SUBCOMMAND {
            return hapmaster::watchdog::watch::main(&args[1..]);
        }
        // haproxy-style argv never starts with a bare word either.
        if first == "help" {
            return help(&args[1..]);
        }
        if client::is_subcommand(first) {
            return run_client(first.to_string_lossy().as_ref(), &args[1..]);
        }
    }
    let command = match options::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hapmaster: {e}\nTry 'hapmaster --help'.");
            return ExitCode::from(2);
        }
    };
    match command {
        options::Command::Help => {
            // A closed pipe (`hapmaster --help | head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(options::usage().as_bytes());
            ExitCode::SUCCESS
        }
        options::Command::Version {
            haproxy,
            build_options,
        } => {
            let flag = if build_options { "-vv" } else { "-v" };
            let status = run_haproxy(&haproxy, &[flag.into()]);
            let _ = writeln!(
                std::io::stdout(),
                "hapmaster version {}",
                env!("CARGO_PKG_VERSION")
            );
            status
        }
        options::Command::Check(opts) => {
            logging::init(logging::level_for(opts.quiet, opts.verbose));
            if let Err(e) = refuse_before_start(&opts) {
                log::error!("{e}");
                return ExitCode::from(1);
            }
            let mut args: Vec<OsString> = opts.worker_args.clone();
            args.push("-c".into());
            for f in &opts.config_files {
                args.push("-f".into());
                args.push(f.clone());
            }
            run_haproxy(&opts.haproxy, &args)
        }
        options::Command::Run(opts) => {
            let code = run_master(opts);
            // A bounded wait for a slow reader to take the last lines; a stuck one loses them.
            hapmaster::stderr_buffer::drain_for(hapmaster::stderr_buffer::LAST_WORDS);
            code
        }
    }
}

/// `hapmaster help [SUBCOMMAND]`: the usage of everything, or of one client subcommand.
fn help(args: &[OsString]) -> ExitCode {
    let text = match args {
        [] => options::usage(),
        [sub] if client::is_subcommand(sub) => usage::usage(&sub.to_string_lossy()),
        _ => {
            eprintln!(
                "hapmaster help: give nothing, or one of {}\nTry 'hapmaster --help'.",
                client::SUBCOMMANDS.join(", ")
            );
            return ExitCode::from(client::exit::UNREACHABLE);
        }
    };
    // A closed pipe (`hapmaster help | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// `hapmaster reload|cli|getsocks ...`, with the exit statuses of [`client::exit`].
fn run_client(subcommand: &str, args: &[OsString]) -> ExitCode {
    let command = match client::parse_client_args(subcommand, args, client::default_socket()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hapmaster {e}\nTry 'hapmaster {subcommand} --help'.");
            return ExitCode::from(client::exit::UNREACHABLE);
        }
    };
    match command {
        ClientCommand::Help => {
            let _ = std::io::stdout().write_all(usage::usage(subcommand).as_bytes());
            ExitCode::SUCCESS
        }
        ClientCommand::Reload {
            socket,
            timeout,
            await_signal,
        } => {
            let line = if await_signal {
                "await-reload"
            } else {
                "reload"
            };
            let answer = match client::exchange(&socket, line, timeout) {
                Ok(a) => a,
                Err(e) => return client_failure(subcommand, &e),
            };
            let _ = std::io::stdout().write_all(answer.as_bytes());
            let outcome = client::reload_outcome(&answer);
            if let Some(message) = outcome.message(&socket) {
                eprintln!("hapmaster reload: {message}");
            }
            ExitCode::from(outcome.exit_code())
        }
        ClientCommand::Cli {
            socket,
            timeout,
            line,
        } => match client::exchange(&socket, &line, timeout) {
            Ok(answer) => {
                let _ = std::io::stdout().write_all(answer.as_bytes());
                let (code, message) = client::cli_outcome(&socket, &line, &answer);
                if let Some(message) = message {
                    eprintln!("hapmaster cli: {message}");
                }
                ExitCode::from(code)
            }
            Err(e) => client_failure(subcommand, &e),
        },
        ClientCommand::Getsocks {
            path,
            json,
            timeout,
        } => getsocks(&path, json, timeout),
    }
}

fn client_failure(subcommand: &str, e: &ClientError) -> ExitCode {
    eprintln!("hapmaster {subcommand}: {e}");
    ExitCode::from(e.exit_code())
}

/// Takes the sockets, describes them, prints them, and closes them (dropping them).
fn getsocks(path: &std::path::Path, json: bool, timeout: std::time::Duration) -> ExitCode {
    let sockets = match fetch_sockets(path, timeout) {
        Ok(s) => s,
        Err(e) => {
            let (code, message) = client::getsocks_failure(path, &e);
            eprintln!("hapmaster getsocks: {message}");
            return ExitCode::from(code);
        }
    };
    let mut rows = Vec::with_capacity(sockets.len());
    for (index, socket) in sockets.iter().enumerate() {
        use std::os::fd::AsFd;
        match SocketInfo::of(socket.fd.as_fd()) {
            Ok(info) => rows.push(SocketRow::new(index, &info, &socket.record)),
            Err(e) => {
                eprintln!(
                    "hapmaster getsocks: cannot describe socket {index} from {}: {e}",
                    path.display()
                );
                return ExitCode::from(client::exit::UNREACHABLE);
            }
        }
    }
    drop(sockets);
    let text = if json {
        getsocks_json(&rows)
    } else {
        getsocks_table(&rows)
    };
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// Runs haproxy in the foreground for a one-shot command and exits with its status.
fn run_haproxy(haproxy: &std::path::Path, args: &[OsString]) -> ExitCode {
    match Command::new(haproxy).args(args).status() {
        Ok(s) => ExitCode::from(s.code().map_or(1, |c| c.clamp(0, 255) as u8)),
        Err(e) => {
            eprintln!(
                "hapmaster: cannot execute {}: {e} (check --haproxy or $PATH)",
                haproxy.display()
            );
            ExitCode::from(1)
        }
    }
}

fn run_master(mut opts: Options) -> ExitCode {
    logging::init(logging::level_for(opts.quiet, opts.verbose));
    logging::make_stderr_nonblocking();
    // Taken (and removed from the environment) before any child exists.
    let passed = hapmaster::listen_fds::take();
    raise_nofile_limit();
    // Set by a previous image of this very process (upgrade in place); removed before any child.
    let resume = match Snapshot::take_from_env() {
        None => None,
        Some(Ok(snapshot)) => Some(snapshot),
        Some(Err(e)) => {
            log::error!("{e}; exiting (the workers keep serving until stopped)");
            return ExitCode::from(1);
        }
    };
    // Before any child exists: no worker inherits what our own parent left open.
    let mut known: Vec<RawFd> = passed.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
    // -S fd@<n>: the master's to hold, and to hand to the next image of an upgrade in place at
    // the same number (its argv names it again).
    let master_cli_fds = hapmaster::control::spec::inherited_fd_numbers(&opts.master_sockets);
    known.extend(&master_cli_fds);
    if let Some(s) = &resume {
        known.push(s.lock_fd);
        known.extend(s.held.iter().map(|h| h.fd));
        known.extend(s.workers.iter().filter_map(|w| w.output));
    }
    let stray = inherited_fds::seal(&known);
    if let Some(line) = inherited_fds::describe(&stray) {
        log::debug!("{line}");
    }
    let inherited = stray.iter().map(|(fd, _)| *fd).chain(master_cli_fds);
    let launch = match Launch::of_current_process(inherited.collect()) {
        Ok(l) => l,
        Err(e) => {
            log::error!("cannot find this program's own path (needed for upgrades in place): {e}");
            return ExitCode::from(1);
        }
    };
    // Read (and removed from the environment) before any child exists.
    let notifier = Notifier::from_env();
    for notice in &opts.notices {
        log::info!("{notice}");
    }
    // Not after an upgrade in place: its workers already run, with the same binary and files.
    if resume.is_none() {
        match refuse_before_start(&opts) {
            Ok(version) => opts.binary_version = version,
            Err(e) => {
                log::error!("refusing to start: {e}");
                if let Some(n) = &notifier {
                    let _ = n.status(&format!("Failed to start: {e}"));
                }
                return ExitCode::from(1);
            }
        }
    } else {
        opts.binary_version = handoff_version(&opts);
    }
    let mut on_ready = OnFirstReady::default();
    if resume.is_none() {
        // Checked before anything is made or started; written once the first worker is ready.
        if let Some(path) = &opts.pidfile {
            match PidPath::open(path) {
                Ok(at) => on_ready.pid_path = Some(at),
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::from(1);
                }
            }
        }
        // The cwd is kept: relative -f paths are read again at every reload.
        if opts.daemon {
            match hapmaster::daemon::detach() {
                Ok(d) => on_ready.detached = Some(d),
                Err(e) => {
                    log::error!("cannot go to the background (-D): {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    match master(&opts, notifier.as_ref(), &launch, resume, passed, on_ready) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log::error!("{}", error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

/// What a fresh start does once its first worker is ready (nothing after an upgrade in place).
#[derive(Default)]
struct OnFirstReady {
    /// `-p`: written then, so that it only ever names a master that serves.
    pid_path: Option<PidPath>,
    /// `-D`: the parent waiting to return.
    detached: Option<Detached>,
}

fn master(
    opts: &Options,
    notifier: Option<&Notifier>,
    launch: &Launch,
    resume: Option<Snapshot>,
    passed: Vec<(std::os::fd::OwnedFd, Option<String>)>,
    on_ready: OnFirstReady,
) -> Result<i32, Box<dyn std::error::Error>> {
    let runtime = match &resume {
        None => fresh_runtime_dir(opts, on_ready.detached.as_ref())?,
        Some(s) => {
            let lock = upgrade::adopt_fd(s.lock_fd)?;
            RuntimeDir::resume(s.runtime_dir.clone(), lock, s.runtime_created)?
        }
    };
    let pid = std::process::id();
    // An upgrade in place waits for the first worker, so a previous image of this very process
    // (same pid) has written the pid file already.
    let mut pidfile = match (&resume, &opts.pidfile) {
        (Some(_), Some(path)) => PidFile::adopt(path, pid),
        _ => None,
    };
    if resume.is_none() {
        log::info!(
            "hapmaster {} (pid {pid}) starting {}; reload: kill -USR2 {pid}; stop: kill -TERM {pid}",
            env!("CARGO_PKG_VERSION"),
            opts.haproxy.display()
        );
    }
    let written = &mut pidfile;
    let first_ready: supervisor::FirstReady<'_> = Box::new(move || {
        if let Some(at) = on_ready.pid_path {
            *written = Some(at.write(pid).map_err(|e| e.to_string())?);
        }
        if let Some(detached) = on_ready.detached {
            detached.ready();
        }
        Ok(())
    });
    let first_ready = resume.is_none().then_some(first_ready);
    let result = supervisor::run(
        opts,
        &runtime,
        notifier,
        launch,
        resume,
        passed,
        first_ready,
    );
    if let Some(p) = pidfile {
        p.remove();
    }
    runtime.cleanup();
    Ok(result?)
}

/// What no worker could run, refused before the first one starts (and by `-c`): a haproxy older
/// than hapmaster supports, and `master-worker` or a `program` section in the configuration
/// (`refused_config`). Those lines are looked for again before every later worker starts (the
/// event loop's `spawn`); the version only here
/// (see `haproxy_version`).
/// Returns the version found, if the binary told it.
fn refuse_before_start(opts: &Options) -> Result<Option<Version>, String> {
    use hapmaster::haproxy_version::{self, Found};
    let version = match haproxy_version::check(&opts.haproxy, haproxy_version::TIMEOUT) {
        Ok(Found::Supported(v)) => {
            log::debug!("{} is haproxy {}", opts.haproxy.display(), v.text);
            Some(v)
        }
        Ok(unknown @ Found::Unknown { .. }) => {
            log::warn!("{unknown}");
            None
        }
        Ok(too_old @ Found::TooOld { .. }) => return Err(too_old.to_string()),
        Err(e) => return Err(e.to_string()),
    };
    let change_dir = opts.change_dir().map(std::path::Path::new);
    match hapmaster::refused_config::find(&opts.config_files, change_dir) {
        Some(found) => Err(found.to_string()),
        None => Ok(version),
    }
}

/// After an upgrade in place the binary was checked by the first image; only its version is read
/// again (how its workers take the held sockets, the master CLI's dialect). An unknown version
/// keeps the `-x` path every haproxy from 1.8 on takes.
fn handoff_version(opts: &Options) -> Option<Version> {
    use hapmaster::haproxy_version::{self, Found};
    match haproxy_version::check(&opts.haproxy, haproxy_version::TIMEOUT) {
        Ok(Found::Supported(v)) => Some(v),
        Ok(_) => None,
        Err(e) => {
            log::warn!("{e}; new workers get the socket handoff on a named socket");
            None
        }
    }
}

/// The runtime directory of a master that starts afresh (not an upgrade in place): locked, the
/// watchdog started, a dead master's workers stopped (before the first worker of this one), and
/// only then the stale files removed (what identifies those workers to an operator).
fn fresh_runtime_dir(
    opts: &Options,
    detached: Option<&Detached>,
) -> Result<RuntimeDir, Box<dyn std::error::Error>> {
    let runtime =
        RuntimeDir::acquire_keeping_files(RuntimeDir::choose(opts.runtime_dir.as_deref()))?;
    start_watchdog(opts, &runtime, detached);
    if let Err(e) = hapmaster::orphans::stop_orphans(runtime.path()) {
        runtime.cleanup();
        return Err(e.into());
    }
    runtime.remove_stale_files();
    Ok(runtime)
}

/// After `-D` and the lock, before the first worker. As PID 1 of a namespace there is nothing to
/// watch for: the kernel kills every process of the namespace when PID 1 dies.
fn start_watchdog(opts: &Options, runtime: &RuntimeDir, detached: Option<&Detached>) {
    if std::process::id() == 1 {
        log::debug!("no watchdog as PID 1: the workers die with this master");
        return;
    }
    let level = logging::level_for(opts.quiet, opts.verbose);
    let start = || hapmaster::watchdog::spawn::start(runtime.path(), level);
    // It lives as long as the master: it must not hold a `-D` caller's stderr.
    let started = match detached {
        Some(d) => d.without_stderr(start),
        None => start(),
    };
    match started {
        Ok(pid) => log::info!("watchdog pid {pid} soft-stops the workers if this master dies"),
        Err(e) => log::warn!(
            "cannot start the watchdog: {e}; if this master is killed, a worker that switched \
             user (haproxy's user/uid/group) serves on until the next hapmaster on {} starts, \
             or until stopped by hand",
            runtime.path().display()
        ),
    }
}

/// The master holds every listening socket and, during a reload, receives a second copy of each:
/// with systemd's default soft limit (1024) a config of a few hundred listeners would make the
/// kernel drop sockets (MSG_CTRUNC) and every reload fail. Raise the soft limit to the hard one,
/// as haproxy does for itself.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise the open file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read the open file limit: {e}"),
    }
}

/// "what failed: caused by: ..." on one line, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(&format!(": caused by: {s_text}"));
        }
        source = s.source();
    }
    text
}
