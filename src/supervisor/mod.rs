//! Worker lifecycle: a pure state machine (`state`), and the event loop that observes processes,
//! signals and sockets and carries out the machine's decisions.
pub mod admission;
pub mod event_loop;
pub mod forward;
pub mod last_good;
pub mod metrics;
pub mod metrics_http;
pub mod output;
pub mod probe;
pub mod relay;
pub mod sessions;
pub mod signals;
pub mod state;
pub mod upgrade;
pub mod worker;
pub mod worker_env;

pub use event_loop::{run, FirstReady, SetupError};
