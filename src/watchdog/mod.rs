//! The master's watchdog: a process of its own that soft-stops the master's workers if the
//! master dies without stopping them (SIGKILL, a crash), so that no worker serves on unseen.
//!
//! Each worker also gets SIGUSR1 as its parent-death signal (`supervisor::worker`), but Linux
//! clears that signal when a process changes its credentials (prctl(2)), and haproxy does at
//! start whenever the config says `user`/`uid`/`group` (Debian's stock config does). So the
//! master starts this watchdog once, at start (`spawn`): `hapmaster __watchdog <master pid>`,
//! blocked in poll(2) on a pidfd of the master (no CPU, no wake-up while the master lives; an
//! upgrade in place keeps the process, so it keeps watching). When the pidfd fires, the watchdog
//! takes the runtime directory's lock and soft-stops the workers it finds there (`watch`).
//!
//! Not the master's child (a double fork): the master reaps every child as a worker, and its
//! children are its workers only. Its command line names no path (tests and operators find a
//! runtime directory's processes by the paths on their command lines).
pub mod spawn;
pub mod watch;

/// The hidden subcommand: `hapmaster __watchdog <master pid> [-q|-V]`.
pub const SUBCOMMAND: &str = "__watchdog";
/// The fd the watchdog inherits: a pidfd of the master.
pub const PIDFD: std::os::fd::RawFd = 3;
/// The fd the watchdog inherits: the runtime directory, opened `O_DIRECTORY`.
pub const DIRFD: std::os::fd::RawFd = 4;
