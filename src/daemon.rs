//! `-D`: the master goes to the background, and the command returns only once it has started,
//! as `haproxy -D` does: 0 when the first worker is ready (the pid file written, the port
//! serving), the master's exit status when it failed, after its messages (haproxy's `[ALERT]`
//! lines among them) reached the caller's stderr. Init scripts and systemd's `Type=forking` take
//! that return to mean "started".
//!
//! The process forks: the child (the daemon) becomes the master in a new session; the parent
//! waits for one byte on a pipe, or for end of file when the daemon exits without it, and then
//! reaps the daemon and exits with its status. The pipe is close-on-exec: no worker holds it, so
//! end of file means the daemon is gone.
//!
//! The caller's stdin and stdout are let go at once: workers inherit stdout, and a worker must not
//! keep the caller's terminal or pipe open (`out=$(hapmaster -D ...)` would never return). stderr
//! is kept until the verdict, then let go too, like daemon(3) (and `haproxy -D`) does: from then on
//! the master's and workers' messages go to /dev/null, unless stderr is a regular file (a
//! `2>>log` redirection, which holds nothing up) or systemd's journal.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::logging;
use crate::supervisor::worker::{describe_wait_status, exit_code};

/// The byte the daemon writes once its first worker is ready.
const READY: u8 = b'R';

/// The daemon's side until its verdict: the pipe to the waiting parent.
#[derive(Debug)]
pub struct Detached {
    verdict: OwnedFd,
    devnull: File,
    keep_stderr: bool,
}

/// Forks. Returns in the daemon only; the parent waits for the verdict and exits with it. Call
/// it while the process is single-threaded, before anything is acquired that the parent's exit
/// would release (the runtime directory's lock) or that names this pid (the pid file).
pub fn detach() -> io::Result<Detached> {
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // std opens it close-on-exec: only dup2'ed copies on 0, 1 and 2 are inherited.
    let devnull = File::options().read(true).write(true).open("/dev/null")?;
    let keep_stdout = holds_nothing_up(io::stdout().as_fd());
    let keep_stderr = holds_nothing_up(io::stderr().as_fd());
    // SAFETY: the process is single-threaded (see above), so the child may run any code.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { child } => {
            drop(writer);
            await_verdict(child, reader)
        }
        ForkResult::Child => {
            drop(reader);
            // No controlling terminal: its hangup and job-control signals are not ours.
            nix::unistd::setsid()?;
            redirect(&devnull, libc::STDIN_FILENO)?;
            if !keep_stdout {
                redirect(&devnull, libc::STDOUT_FILENO)?;
            }
            Ok(Detached {
                verdict: writer,
                devnull,
                keep_stderr,
            })
        }
    }
}

impl Detached {
    /// The first worker is ready: lets go of the caller's stderr, then tells the parent, which
    /// exits 0. Dropping a `Detached` instead (the daemon exits) makes the parent exit with the
    /// daemon's status.
    pub fn ready(self) {
        log::info!(
            "-D: started; the master runs on in the background as pid {}{}",
            std::process::id(),
            if self.keep_stderr {
                ""
            } else {
                ", its messages and the workers' go to /dev/null from now on"
            }
        );
        if !self.keep_stderr {
            match redirect(&self.devnull, libc::STDERR_FILENO) {
                // The master's own copy of the caller's stderr goes too.
                Ok(()) => crate::stderr_buffer::reattach(),
                Err(e) => {
                    log::warn!("cannot point stderr at /dev/null: {e}; it stays the caller's")
                }
            }
        }
        // The parent may be gone (killed while waiting): nobody is left to tell.
        let _ = nix::unistd::write(&self.verdict, &[READY]);
    }

    /// Runs `f` (which starts a long-lived process) with /dev/null as stderr, when stderr is let
    /// go at the verdict: such a process must not keep the caller's stderr open after it.
    pub fn without_stderr<T>(&self, f: impl FnOnce() -> T) -> T {
        if self.keep_stderr {
            return f();
        }
        let saved = match nix::fcntl::fcntl(
            io::stderr().as_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10),
        ) {
            // SAFETY: a fresh fd that nothing else owns.
            Ok(fd) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
            Err(e) => {
                log::warn!("cannot save stderr: {e}; what starts now keeps it");
                return f();
            }
        };
        let _ = redirect(&self.devnull, libc::STDERR_FILENO);
        let result = f();
        // A failure could not be told anyway: stderr would be /dev/null.
        let _ = redirect(&saved, libc::STDERR_FILENO);
        result
    }
}

/// The parent: exits 0 on the ready byte; otherwise reaps the daemon and exits with its status.
fn await_verdict(child: Pid, reader: OwnedFd) -> ! {
    let mut byte = [0u8; 1];
    let read = loop {
        match nix::unistd::read(&reader, &mut byte) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    if read == Ok(1) && byte[0] == READY {
        std::process::exit(0);
    }
    // End of file: the daemon is exiting (nothing else holds the pipe).
    let status = loop {
        match waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    let code = match status {
        // It failed to start and said why on the same stderr.
        Ok(WaitStatus::Exited(_, code)) if code != 0 => code,
        Ok(status) => {
            eprintln!(
                "hapmaster: the master (pid {child}) ended ({}) before its first worker was ready",
                describe_wait_status(&status)
            );
            exit_code(&status).max(1)
        }
        Err(e) => {
            eprintln!("hapmaster: cannot wait for the master (pid {child}): {e}");
            1
        }
    };
    std::process::exit(code)
}

/// Whether keeping `fd` past the parent's exit holds nothing up: a regular file, /dev/null
/// itself, or systemd's journal stream. A terminal or a pipe is what daemon(3) lets go of.
fn holds_nothing_up(fd: BorrowedFd<'_>) -> bool {
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        // Closed: /dev/null takes the number, so that nothing opened later lands on it.
        return false;
    };
    let kind = st.st_mode & libc::S_IFMT;
    let is_devnull = kind == libc::S_IFCHR
        && nix::sys::stat::stat("/dev/null").is_ok_and(|null| null.st_rdev == st.st_rdev);
    // dev_t and ino_t are u64 on Linux today, but not by definition.
    #[allow(clippy::unnecessary_cast)]
    let journal = logging::style_for(
        std::env::var_os("JOURNAL_STREAM").as_deref(),
        Some((st.st_dev as u64, st.st_ino as u64)),
    ) == logging::Style::Journal;
    kind == libc::S_IFREG || is_devnull || journal
}

fn redirect(from: &impl AsRawFd, to: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: dup2 on two valid fd numbers; `to` is one of 0, 1, 2, which we own.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_or_dev_null_is_kept_a_pipe_is_let_go() {
        let t = crate::test_dir::temp_dir("daemon");
        let file = File::create(t.path().join("log")).unwrap();
        assert!(holds_nothing_up(file.as_fd()));
        let null = File::options().write(true).open("/dev/null").unwrap();
        assert!(holds_nothing_up(null.as_fd()));
        let (reader, writer) = nix::unistd::pipe().unwrap();
        assert!(!holds_nothing_up(writer.as_fd()));
        assert!(!holds_nothing_up(reader.as_fd()));
    }
}
