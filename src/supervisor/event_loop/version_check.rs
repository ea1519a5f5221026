//! The haproxy on disk may change between two workers (a package upgrade, a symlink switched
//! from 1.7 to 2.8): before each spawn the master compares the binary's file identity with the
//! one it last read the version of, and on a change runs `haproxy -v` again before the worker
//! starts, because the version decides the worker's command line (`-x`, the preload library)
//! and its stats socket line. The check is a child the loop polls, bounded by
//! `haproxy_version::TIMEOUT`: a hung binary delays only the spawns that wait for it.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid as NixPid;

use super::Master;
use crate::haproxy_version::{self, Found};
use crate::supervisor::state::{Generation, Pid, StartKind};

/// What identifies the file `--haproxy` names (through symlinks): a new file, or one rewritten
/// in place, differs in one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BinaryIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl BinaryIdentity {
    pub(super) fn of(path: &Path) -> Option<BinaryIdentity> {
        let m = std::fs::metadata(path).ok()?;
        Some(BinaryIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

pub(super) struct VersionCheck {
    pid: Pid,
    stdout: OwnedFd,
    output: Vec<u8>,
    deadline: Instant,
    /// The binary's identity when the check started: what the version read belongs to.
    identity: Option<BinaryIdentity>,
    /// The spawns that wait for the version.
    waiting: Vec<(Generation, StartKind)>,
    eof: bool,
}

impl VersionCheck {
    pub(super) fn poll_fd(&self) -> BorrowedFd<'_> {
        self.stdout.as_fd()
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Reads what is there; true once the output can be judged.
    fn read(&mut self, now: Instant) -> bool {
        let mut chunk = [0u8; 4096];
        while !self.eof && !haproxy_version::output_complete(&self.output) {
            match nix::unistd::read(&self.stdout, &mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.output.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => self.eof = true,
            }
        }
        self.eof || haproxy_version::output_complete(&self.output) || now >= self.deadline
    }
}

impl Master<'_> {
    /// Starts worker `generation` now, or once the version of a changed binary is known.
    pub(super) fn spawn_when_version_known(&mut self, generation: Generation, kind: StartKind) {
        if let Some(check) = self.version_check.as_mut() {
            check.waiting.push((generation, kind));
            return;
        }
        let identity = BinaryIdentity::of(&self.opts.haproxy);
        if identity == self.binary_identity || identity.is_none() {
            // Unchanged, or unreadable: the spawn itself says what is wrong with it.
            self.spawn(generation, kind);
            return;
        }
        match start_check(&self.opts.haproxy) {
            Ok((pid, stdout)) => {
                self.version_checks_unreaped.push(pid);
                log::info!(
                    "{} changed on disk since its version was read: reading it again before \
                     starting worker generation {generation}",
                    self.opts.haproxy.display()
                );
                self.version_check = Some(VersionCheck {
                    pid,
                    stdout,
                    output: Vec::new(),
                    deadline: Instant::now() + haproxy_version::TIMEOUT,
                    identity,
                    waiting: vec![(generation, kind)],
                    eof: false,
                });
            }
            // The worker's exec fails the same way, and says so.
            Err(_) => self.spawn(generation, kind),
        }
    }

    /// `-v`'s output has something, or its deadline passed.
    pub(super) fn step_version_check(&mut self, now: Instant) {
        let Some(check) = self.version_check.as_mut() else {
            return;
        };
        if !check.read(now) {
            return;
        }
        let Some(check) = self.version_check.take() else {
            return;
        };
        // Not reaped yet, so the pid is still this child's: it may have printed its version
        // and gone on (a wrapper), or printed nothing.
        if self.version_checks_unreaped.contains(&check.pid) {
            let _ = kill(NixPid::from_raw(check.pid), Signal::SIGKILL);
        }
        let text = String::from_utf8_lossy(&check.output).into_owned();
        let complete = check.eof || haproxy_version::output_complete(&check.output);
        let found = haproxy_version::judge(
            &self.opts.haproxy,
            complete.then_some(text.as_str()),
            haproxy_version::TIMEOUT,
        );
        self.binary_identity = check.identity;
        match found {
            Found::TooOld { .. } => {
                let reason = found.to_string();
                for (generation, _) in check.waiting {
                    self.spawn_failed(generation, reason.clone());
                }
                return;
            }
            Found::Supported(version) => self.version_read(Some(version)),
            Found::Unknown { .. } => {
                log::warn!("{found}");
                self.version_read(None);
            }
        }
        for (generation, kind) in check.waiting {
            self.spawn(generation, kind);
        }
    }

    fn version_read(&mut self, version: Option<haproxy_version::Version>) {
        let text = |v: &Option<haproxy_version::Version>| {
            v.as_ref()
                .map_or_else(|| "unknown".to_string(), |v| v.text.clone())
        };
        if text(&version) != text(&self.binary_version) {
            log::info!(
                "{} is now haproxy {} (was {}): new workers take the held sockets {}",
                self.opts.haproxy.display(),
                text(&version),
                text(&self.binary_version),
                match crate::haproxy_version::ListenerHandoff::of(version.as_ref()) {
                    crate::haproxy_version::ListenerHandoff::Preload =>
                        "through hapmaster's preload library",
                    _ => "with -x",
                }
            );
        }
        self.binary_version = version;
        crate::supervisor::worker_env::export(self.binary_version.as_ref(), &self.master_cli_env);
    }

    /// The master exits: a `haproxy -v` that has not ended (a hung binary) must not outlive it.
    /// Not reaped yet, so each pid is still that child's.
    pub(super) fn end_version_checks(&mut self) {
        self.version_check = None;
        for pid in self.version_checks_unreaped.drain(..) {
            let _ = kill(NixPid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// A child the loop reaped: true if it was a version check's (nothing else to do then).
    pub(super) fn reaped_version_check(&mut self, pid: Pid) -> bool {
        let before = self.version_checks_unreaped.len();
        self.version_checks_unreaped.retain(|p| *p != pid);
        self.version_checks_unreaped.len() != before
    }
}

/// `haproxy -v` with its stdout on a non-blocking pipe; stdin and stderr on /dev/null.
fn start_check(binary: &Path) -> io::Result<(Pid, OwnedFd)> {
    let mut child = haproxy_version::spawn_v(binary)?;
    let pid = Pid::try_from(child.id()).map_err(|_| io::Error::other("child pid out of range"))?;
    let stdout: OwnedFd = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?
        .into();
    nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((pid, stdout))
}
