//! The `_getsocks` socket handoff: wire format, client (fetch), server (serve), and the held set.
pub mod fetch;
pub mod listeners;
pub mod serve;
pub mod sockpair;
pub mod wire;
