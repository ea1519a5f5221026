//! hapmaster: a master process for HAProxy that holds the listening sockets across reloads.
pub mod config_copy;
pub mod config_scan;
pub mod control;
pub mod daemon;
pub mod fdstore;
pub mod fs_at;
pub mod handoff;
pub mod haproxy_version;
pub mod inherited_fds;
pub mod listen_fds;
pub mod logging;
pub mod master_worker_keyword;
pub mod notify;
pub mod open_files;
pub mod options;
pub mod orphans;
pub mod pidfd;
pub mod pidfile;
pub mod proc_stat;
pub mod program_section;
pub mod refused_config;
pub mod runtime_dir;
pub mod stderr_buffer;
pub mod supervisor;
#[cfg(test)]
mod test_dir;
pub mod unix_stream;
pub mod watchdog;
