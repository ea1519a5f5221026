//! HTTP clients: the load generator's (`hapmaster-loadgen`, shared with the benchmark) with the
//! tests' request timeout.

use std::time::Duration;

// Each test binary uses part of these.
#[allow(unused_imports)]
pub use hapmaster_loadgen::{get_once, Conn, FailKind, RequestError, Target};

/// How long one request may take before it counts as failed (`Timeout`): a request that waits in
/// a listen queue nobody accepts from never ends, one on a busy machine ends within a second or so.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One `GET /` (HTTP/1.0, new connection) with [`REQUEST_TIMEOUT`] connect/read/write timeouts;
/// the body of a 200.
pub fn http_get(target: impl Into<Target>) -> Result<String, RequestError> {
    http_get_timeout(target, REQUEST_TIMEOUT)
}

pub fn http_get_timeout(
    target: impl Into<Target>,
    timeout: Duration,
) -> Result<String, RequestError> {
    get_once(target, timeout).map(|r| r.body)
}
