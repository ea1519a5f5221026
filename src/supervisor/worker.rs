//! Starting a haproxy worker, and describing how it ended.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::process::{Command, Stdio};

use super::state::Pid;

/// What a worker is started with.
pub struct WorkerSpec<'a> {
    pub haproxy: &'a Path,
    /// haproxy flags passed through from the master's command line.
    pub passthrough: &'a [OsString],
    /// The user's `-f` files and directories, in order.
    pub config_files: &'a [OsString],
    /// The master-written fragment declaring the worker's private stats socket.
    pub fragment: &'a Path,
    /// Where it takes the held sockets from, when the master holds any.
    pub handoff: Option<Handoff<'a>>,
    /// haproxy before 1.8: hapmaster's preload library and the worker's end of its channel.
    pub preload: Option<Preload<'a>>,
}

/// What a haproxy 1.5 – 1.7 worker loads to take the held sockets at bind() (`crate::preload`).
#[derive(Clone, Copy)]
pub struct Preload<'a> {
    pub library: &'a Path,
    /// Inherited at the same fd, named by `HAPMASTER_PRELOAD_FD`.
    pub channel: BorrowedFd<'a>,
}

/// haproxy's `-x`: where a new worker asks for the listening sockets.
#[derive(Clone, Copy)]
pub enum Handoff<'a> {
    /// A unix socket to connect to (every haproxy).
    Path(&'a Path),
    /// The worker's end of its own socketpair, inherited at the same fd (haproxy 2.6 and later).
    Sockpair(BorrowedFd<'a>),
}

/// haproxy's argv (without argv[0]) for a worker.
///
/// `-db` keeps it in the foreground as our child even if the config says `daemon`; the fragment
/// comes last so the user's files keep their order and meaning. Never `-sf`/`-st`: those make the
/// new process pause the old one's listeners, which are shared with it (and with us).
pub fn worker_argv(spec: &WorkerSpec<'_>) -> Vec<OsString> {
    let mut argv: Vec<OsString> = spec.passthrough.to_vec();
    argv.push("-db".into());
    for file in spec.config_files {
        argv.push("-f".into());
        argv.push(file.clone());
    }
    argv.push("-f".into());
    argv.push(spec.fragment.into());
    match spec.handoff {
        None => {}
        Some(Handoff::Path(sock)) => {
            argv.push("-x".into());
            argv.push(sock.into());
        }
        Some(Handoff::Sockpair(fd)) => {
            argv.push("-x".into());
            argv.push(crate::handoff::sockpair::argument(fd).into());
        }
    }
    argv
}

/// Starts a worker; returns its pid and the read end of its stderr. The child is reaped by the
/// event loop's `waitpid(-1)`, never through `Child`, so the handle is dropped at once.
///
/// stderr goes through the master (which forwards every line to its own stderr) so that a
/// `reload` command can answer with the new worker's start-up messages. haproxy ignores SIGPIPE,
/// so a worker outliving its master is not killed by the broken pipe. stdout stays shared:
/// `log stdout` traffic logs in containers never pass through the master.
pub fn spawn(spec: &WorkerSpec<'_>) -> io::Result<(Pid, OwnedFd)> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &reader,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut command = Command::new(spec.haproxy);
    soft_stop_when_master_dies(&mut command);
    if let Some(Handoff::Sockpair(fd)) = spec.handoff {
        inherit(&mut command, fd.as_raw_fd());
    }
    if let Some(preload) = spec.preload {
        inherit(&mut command, preload.channel.as_raw_fd());
        command.env(
            crate::preload::ENV_FD,
            preload.channel.as_raw_fd().to_string(),
        );
        command.env("LD_PRELOAD", ld_preload(preload.library));
    }
    let child = command
        .args(worker_argv(spec))
        .stdin(Stdio::null())
        .stderr(Stdio::from(writer))
        // The environment is passed as it is (see `worker_env`): NOTIFY_SOCKET and LISTEN_* were
        // removed from the master's at start (`Notifier::from_env`, `listen_fds::take`), so a
        // haproxy built with USE_SYSTEMD does not talk to systemd; the master does.
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot execute {}: {e} (check --haproxy or $PATH)",
                    spec.haproxy.display()
                ),
            )
        })?;
    let pid = Pid::try_from(child.id()).map_err(|_| io::Error::other("child pid out of range"))?;
    Ok((pid, reader))
}

/// The library first, then whatever the master's environment preloads already (a malloc, say).
fn ld_preload(library: &Path) -> OsString {
    let mut value = OsString::from(library);
    if let Some(theirs) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(theirs);
    }
    value
}

/// Makes the kernel send the worker SIGUSR1 (haproxy's soft stop) if the master dies, so that
/// a SIGKILLed master leaves no worker serving on unseen.
///
/// The parent-death signal follows the *thread* that forked, not the process: the master is
/// single-threaded, so this is the master's death. An upgrade in place (exec, same process)
/// does not fire it. Linux clears it when the worker changes credentials (haproxy's `user`,
/// `uid`, `group`), which is why the master also has a watchdog (`crate::watchdog`).
fn soft_stop_when_master_dies(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let master = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // calls (prctl, getppid, _exit).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The master may have died between fork and prctl: then nothing would fire.
            if libc::getppid() != master {
                libc::_exit(1);
            }
            Ok(())
        })
    };
}

/// The child keeps `fd` (at the same number) across exec; the master's copy stays CLOEXEC.
fn inherit(command: &mut Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only makes one fcntl, async-signal-safe.
    unsafe { command.pre_exec(move || crate::handoff::sockpair::inherit_in_child(fd)) };
}

/// `waitpid` status in words, as logs and STATUS= show it.
pub fn describe_wait_status(status: &nix::sys::wait::WaitStatus) -> String {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "killed by {}{}",
                sig.as_str(),
                if *core { ", core dumped" } else { "" }
            )
        }
        other => format!("{other:?}"),
    }
}

/// The status a shell would report: the exit status, or 128 + the signal number.
pub fn exit_code(status: &nix::sys::wait::WaitStatus) -> i32 {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => *code,
        WaitStatus::Signaled(_, sig, _) => 128 + *sig as i32,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::PathBuf;

    #[test]
    fn argv_keeps_config_order_and_adds_fragment_and_handoff() {
        let files: Vec<OsString> = vec!["/etc/a.cfg".into(), "/etc/conf.d".into()];
        let pass: Vec<OsString> = vec!["-q".into(), "-L".into(), "peer1".into()];
        let frag = PathBuf::from("/run/hm/worker-3.cfg");
        let sock = PathBuf::from("/run/hm/master.sock");
        let spec = WorkerSpec {
            haproxy: Path::new("haproxy"),
            passthrough: &pass,
            config_files: &files,
            fragment: &frag,
            handoff: Some(Handoff::Path(&sock)),
            preload: None,
        };
        let argv: Vec<String> = worker_argv(&spec)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            argv,
            [
                "-q",
                "-L",
                "peer1",
                "-db",
                "-f",
                "/etc/a.cfg",
                "-f",
                "/etc/conf.d",
                "-f",
                "/run/hm/worker-3.cfg",
                "-x",
                "/run/hm/master.sock"
            ]
        );
        let (_channel, worker_end) = crate::handoff::sockpair::HandoffChannel::open().unwrap();
        let sockpair = WorkerSpec {
            handoff: Some(Handoff::Sockpair(worker_end.as_fd())),
            ..spec
        };
        let argv = worker_argv(&sockpair);
        assert_eq!(
            argv[argv.len() - 2..],
            [
                OsString::from("-x"),
                format!("sockpair@{}", worker_end.as_raw_fd()).into()
            ]
        );
        let no_handoff = WorkerSpec {
            handoff: None,
            ..sockpair
        };
        assert!(!worker_argv(&no_handoff).iter().any(|a| a == "-x"));
    }

    #[test]
    fn wait_status_words() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        use nix::unistd::Pid as NixPid;
        let p = NixPid::from_raw(5);
        assert_eq!(
            describe_wait_status(&WaitStatus::Exited(p, 1)),
            "exit status 1"
        );
        assert_eq!(
            describe_wait_status(&WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            "killed by SIGKILL"
        );
        assert_eq!(exit_code(&WaitStatus::Exited(p, 3)), 3);
        assert_eq!(
            exit_code(&WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            137
        );
    }
}
