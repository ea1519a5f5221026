//! `hapmaster`: argv -> options, logging, then the master loop (or a one-shot haproxy command).

use std::ffi::OsString;
use std::io::Write;
use std::process::{Command, ExitCode};

use hapmaster::notify::Notifier;
use hapmaster::options::{self, Options};
use hapmaster::pidfile::PidFile;
use hapmaster::runtime_dir::RuntimeDir;
use hapmaster::supervisor::upgrade::{self, Launch, Snapshot};
use hapmaster::{logging, supervisor};

fn main() -> ExitCode {
    let command = match options::parse(std::env::args_os().skip(1)) {
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
            let mut args: Vec<OsString> = opts.worker_args.clone();
            args.push("-c".into());
            for f in &opts.config_files {
                args.push("-f".into());
                args.push(f.clone());
            }
            run_haproxy(&opts.haproxy, &args)
        }
        options::Command::Run(opts) => run_master(opts),
    }
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

fn run_master(opts: Options) -> ExitCode {
    logging::init(logging::level_for(opts.quiet, opts.verbose));
    // Set by a previous image of this very process (upgrade in place); removed before any child.
    let resume = match Snapshot::take_from_env() {
        None => None,
        Some(Ok(snapshot)) => Some(snapshot),
        Some(Err(e)) => {
            log::error!("{e}; exiting (the workers keep serving until stopped)");
            return ExitCode::from(1);
        }
    };
    let launch = match Launch::of_current_process() {
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
    for socket in &opts.master_sockets {
        log::warn!(
            "-S {socket}: this hapmaster has no master CLI yet; ignored (reload with SIGUSR2 or SIGHUP)"
        );
    }
    if opts.daemon && resume.is_none() {
        // Keep the cwd: relative -f paths are read again at every reload.
        if let Err(e) = nix::unistd::daemon(true, true) {
            log::error!("cannot go to the background (-D): {e}");
            return ExitCode::from(1);
        }
    }
    match master(&opts, notifier.as_ref(), &launch, resume) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log::error!("{}", error_chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn master(
    opts: &Options,
    notifier: Option<&Notifier>,
    launch: &Launch,
    resume: Option<Snapshot>,
) -> Result<i32, Box<dyn std::error::Error>> {
    let runtime = match &resume {
        None => RuntimeDir::acquire(RuntimeDir::choose(opts.runtime_dir.as_deref()))?,
        Some(s) => {
            let lock = upgrade::adopt_fd(s.lock_fd)?;
            RuntimeDir::resume(s.runtime_dir.clone(), lock, s.runtime_created)?
        }
    };
    let pid = std::process::id();
    let pidfile = match &opts.pidfile {
        Some(path) => Some(PidFile::write(path, pid)?),
        None => None,
    };
    if resume.is_none() {
        log::info!(
            "hapmaster {} (pid {pid}) starting {}; reload: kill -USR2 {pid}; stop: kill -TERM {pid}",
            env!("CARGO_PKG_VERSION"),
            opts.haproxy.display()
        );
    }
    let result = supervisor::run(opts, &runtime, notifier, launch, resume);
    if let Some(p) = pidfile {
        p.remove();
    }
    runtime.cleanup();
    Ok(result?)
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
