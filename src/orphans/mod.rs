//! Workers of a dead master: haproxy processes still running with a runtime directory's
//! per-worker config fragment after the master that started them was killed.
//!
//! Outside systemd nothing else stops them: each serves on with PPID 1, and a new master on the
//! same configuration would start its own worker beside it on the same ports (SO_REUSEPORT lets
//! both accept) without ever seeing it. Two parts stop them: the master's watchdog at once
//! (`crate::watchdog`), and the next master on the directory before its first worker
//! (`sweep`). Both find them the same way (`process`, by `argv`).
pub mod argv;
pub mod listening;
pub mod process;
pub mod sweep;

pub use sweep::{stop_orphans, OrphanError};
