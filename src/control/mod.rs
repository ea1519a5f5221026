//! The master's control socket (haproxy's master CLI, `-S`) and its clients: `-S` specs and
//! binding, the command language, answer formats, and the client subcommands' pieces.
pub mod access;
pub mod answer;
pub mod client;
pub mod command;
pub mod format;
pub mod fuzzy;
pub mod keywords;
pub mod levels;
pub mod load_log;
pub mod payload;
pub mod prompt;
pub mod spec;
pub mod usage;
