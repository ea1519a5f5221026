//! The `_getsocks` socket handoff: wire format, client (fetch), server (serve), and the held set.
pub mod channel;
pub mod fetch;
pub mod fetch_task;
pub mod known;
pub mod listeners;
pub mod named;
pub mod serve;
pub mod sockpair;
pub mod wire;
