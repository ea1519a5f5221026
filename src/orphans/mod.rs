//! Workers of a dead master: haproxy processes still running with a runtime directory's
//! per-worker config fragment after the master that started them was killed.
//!
//! Outside systemd nothing else stops them: each serves on with PPID 1, and a new master on the
//! same configuration would start its own worker beside it on the same ports (SO_REUSEPORT lets
//! both accept) without ever seeing it. The master's watchdog (`crate::watchdog`) stops them
//! at once; it finds them by their command line (`process`, `argv`).
pub mod argv;
pub mod process;
