//! One `GET /`: on a new connection (HTTP/1.0, read to EOF, like `ab` without `-k`) or on a
//! keep-alive connection (HTTP/1.1, reused until the server closes); its response, or why it failed.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use crate::target::{Conn, Target};

/// Why one request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailKind {
    /// connect() got ECONNREFUSED (or ENOENT for a missing unix socket): nothing listening.
    Refused,
    /// ECONNRESET / EPIPE: the connection was reset.
    Reset,
    /// connect, write or read timed out.
    Timeout,
    /// The server closed before a complete response.
    ShortResponse,
    /// Not an HTTP 200, or malformed.
    BadResponse,
    /// Any other I/O error.
    Other,
    /// The client was still in its request when the load was stopped and waited for.
    Stuck,
}

impl FailKind {
    /// The kinds a request itself can end with (not [`FailKind::Stuck`]), in table order.
    pub const ALL: [FailKind; 6] = [
        FailKind::Refused,
        FailKind::Reset,
        FailKind::Timeout,
        FailKind::ShortResponse,
        FailKind::BadResponse,
        FailKind::Other,
    ];
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Refused => "refused",
            FailKind::Reset => "reset",
            FailKind::Timeout => "timeout",
            FailKind::ShortResponse => "short",
            FailKind::BadResponse => "bad",
            FailKind::Other => "other",
            FailKind::Stuck => "stuck",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestError {
    pub kind: FailKind,
    pub text: String,
    /// On a reused keep-alive connection, before any byte of the response: the server closed an
    /// idle connection as the request went out. HTTP clients retry these (RFC 9112, 9.3.1).
    pub retryable: bool,
}

impl RequestError {
    fn io(e: &io::Error, context: &str) -> RequestError {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => FailKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => FailKind::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailKind::Timeout,
            _ => FailKind::Other,
        };
        RequestError {
            kind,
            text: format!("{context}: {e}"),
            retryable: false,
        }
    }
    fn new(kind: FailKind, text: String) -> RequestError {
        RequestError {
            kind,
            text,
            retryable: false,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

impl std::error::Error for RequestError {}

/// What one 200 response said.
#[derive(Debug)]
pub struct Response {
    /// The `X-Pid` header: the haproxy process that answered (configs that set it).
    pub pid: Option<u32>,
    /// The server closes the connection after it.
    pub close: bool,
    pub body: String,
}

/// A response is read into memory: bounded, whatever the server sends.
const MAX_RESPONSE: usize = 1 << 20;

/// Parses one complete response at the start of `buf`: `Ok(None)` if more bytes are needed. At
/// `eof` (HTTP/1.0, read to the end) a response without content-length ends with the connection.
fn parse(buf: &[u8], eof: bool) -> Result<Option<Response>, RequestError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !(status.starts_with("HTTP/1.1 200 ") || status.starts_with("HTTP/1.0 200 ")) {
        return Err(RequestError::new(
            FailKind::BadResponse,
            format!("status line {status:?}"),
        ));
    }
    let mut clen = None;
    let mut pid = None;
    let mut close = status.starts_with("HTTP/1.0");
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            clen = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("x-pid") {
            pid = v.parse().ok();
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let body = &buf[head_end + 4..];
    let body = match clen {
        Some(n) if body.len() >= n => &body[..n],
        Some(_) => return Ok(None),
        None if eof => body,
        None => {
            return Err(RequestError::new(
                FailKind::BadResponse,
                "no content-length".into(),
            ))
        }
    };
    Ok(Some(Response {
        pid,
        close,
        body: String::from_utf8_lossy(body).into_owned(),
    }))
}

/// Reads one response: to EOF (`until_eof`, HTTP/1.0), else until it is complete. `fail` marks an
/// error with the response bytes received before it (keep-alive: retryable or not).
fn read_response(
    c: &mut Conn,
    until_eof: bool,
    fail: impl Fn(RequestError, usize) -> RequestError,
) -> Result<Response, RequestError> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(RequestError::new(
                        FailKind::BadResponse,
                        "response over 1 MiB".into(),
                    ));
                }
                if !until_eof {
                    if let Some(r) = parse(&buf, false).map_err(|e| fail(e, buf.len()))? {
                        return Ok(r);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let got = buf.len();
                return Err(fail(
                    RequestError::io(&e, &format!("read after {got} response bytes")),
                    got,
                ));
            }
        }
    }
    let got = buf.len();
    match parse(&buf, until_eof).map_err(|e| fail(e, got))? {
        Some(r) if until_eof => Ok(r),
        _ if until_eof => Err(RequestError::new(
            FailKind::ShortResponse,
            format!("closed after {got} bytes, response incomplete"),
        )),
        _ => Err(fail(
            RequestError::new(
                FailKind::ShortResponse,
                format!("closed after {got} response bytes"),
            ),
            got,
        )),
    }
}

impl Conn {
    /// Sends an HTTP/1.0 `GET /` (no keep-alive) and reads the response to EOF, so that the server
    /// closes first.
    pub fn get(mut self) -> Result<Response, RequestError> {
        self.write_all(
            b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: hapmaster-loadgen\r\n\r\n",
        )
        .map_err(|e| RequestError::io(&e, "write"))?;
        read_response(&mut self, true, |e, _| e)
    }
}

/// One `GET /` on a new connection, every step bounded by `timeout`.
pub fn get_once(target: impl Into<Target>, timeout: Duration) -> Result<Response, RequestError> {
    Conn::connect(&target.into(), timeout)
        .map_err(|e| RequestError::io(&e, "connect"))?
        .get()
}

/// A keep-alive connection and how many responses it carried.
pub struct KeepAlive {
    conn: Conn,
    served: u64,
}

impl KeepAlive {
    /// One request on `slot`'s connection (opened if `None`); the connection is kept while the
    /// server allows.
    pub fn get(
        slot: &mut Option<KeepAlive>,
        target: &Target,
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        let ka = match slot {
            Some(ka) => ka,
            None => slot.insert(KeepAlive {
                conn: Conn::connect(target, timeout)
                    .map_err(|e| RequestError::io(&e, "connect"))?,
                served: 0,
            }),
        };
        match ka.request() {
            Ok(r) if !r.close => {
                ka.served += 1;
                Ok(r)
            }
            other => {
                *slot = None;
                other
            }
        }
    }

    fn request(&mut self) -> Result<Response, RequestError> {
        let reused = self.served > 0;
        let mark = |mut e: RequestError, got: usize| {
            e.retryable = reused && got == 0 && e.kind != FailKind::Timeout;
            e
        };
        self.conn
            .write_all(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: hapmaster-loadgen\r\n\r\n",
            )
            .map_err(|e| mark(RequestError::io(&e, "write"), 0))?;
        read_response(&mut self.conn, false, mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_at_its_content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Pid: 42\r\n\r\nhello\n";
        assert!(parse(&r[..r.len() - 1], false).unwrap().is_none());
        let got = parse(r, false).unwrap().unwrap();
        assert_eq!(
            (got.pid, got.close, got.body.as_str()),
            (Some(42), false, "hello\n")
        );
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert!(parse(close, false).unwrap().unwrap().close);
    }

    #[test]
    fn without_content_length_only_eof_ends_a_response() {
        let r = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        assert_eq!(parse(r, true).unwrap().unwrap().body, "to the end");
        assert_eq!(parse(r, false).unwrap_err().kind, FailKind::BadResponse);
    }

    #[test]
    fn not_a_200_is_a_bad_response() {
        let e = parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", true).unwrap_err();
        assert_eq!(e.kind, FailKind::BadResponse, "{e}");
    }
}
