//! Test harness for hapmaster's end-to-end tests.
//!
//! Real parts only: the real `hapmaster` binary, the real haproxy, real sockets on loopback, a real
//! `NOTIFY_SOCKET` (a bound `UnixDatagram` playing systemd). Every wait has a deadline; polling loops
//! are bounded. Only processes this harness started (or whose pid hapmaster reported, checked by
//! their start time) are ever signalled, by pid.
//!
//! Crates used besides std: `tempfile` for the test directories, `libc` (already a dependency of
//! hapmaster) for `kill(2)` and `CLOCK_MONOTONIC`, and `hapmaster-loadgen` (loadgen/, this
//! workspace's) for the HTTP client and the load generator, shared with the benchmark.
#![allow(dead_code)]

pub mod haproxy;
pub mod soak;

mod configs;
mod http;
mod listening;
mod load;
mod master;
mod notify;
mod old_haproxy;
mod ports;
mod procfs;
mod socket_holders;
mod test_dir;
mod transcript;
mod util;

// One namespace for the tests (`use common::*`); each test binary uses part of it.
#[allow(unused_imports)]
pub use self::{
    configs::*, http::*, listening::*, load::*, master::*, notify::*, old_haproxy::*, ports::*,
    procfs::*, socket_holders::*, test_dir::*, transcript::*, util::*,
};

use std::time::Duration;

pub const SIGHUP: i32 = libc::SIGHUP;
pub const SIGINT: i32 = libc::SIGINT;
pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGUSR1: i32 = libc::SIGUSR1;
pub const SIGUSR2: i32 = libc::SIGUSR2;
pub const SIGURG: i32 = libc::SIGURG;

/// Interval between two looks at something we poll (/proc, a file). Not a synchronisation sleep:
/// every poll loop also has a deadline.
pub const POLL: Duration = Duration::from_millis(20);

/// The deadline for something that normally happens within milliseconds or a second (a reload, a
/// worker's exit, a log line, an answer): sized for a 2-core machine busy with other work. Waits
/// end as soon as the event comes, so only a failing test ever waits this long.
pub const EVENT: Duration = Duration::from_secs(60);
