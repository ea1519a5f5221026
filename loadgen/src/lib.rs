//! The HTTP load generator of hapmaster's end-to-end tests and of the reload benchmark (`bench/`):
//! one way to send a request, classify its failure and run N clients, so that a test's "0 failed
//! requests" and a benchmark table's means the same thing.
//!
//! - [`target`]: where a client connects (TCP or a unix socket) and the open connection.
//! - [`request`]: one `GET /` (new connection or keep-alive), its response, why it failed.
//! - [`load`]: concurrent clients looping requests, live counters and the merged result.

pub mod load;
pub mod request;
pub mod target;

pub use load::{FailEvent, Load, LoadResult, LoadSpec, BUCKET_MS};
pub use request::{get_once, FailKind, KeepAlive, RequestError, Response};
pub use target::{Conn, Target};
