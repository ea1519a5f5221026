//! HTTP clients.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hapmaster::unix_stream::connect_unix;

/// Where a client connects: `127.0.0.1:P`, `[::1]:P`, or a unix socket path (starts with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> Target {
        if s.starts_with('/') {
            Target::Unix(PathBuf::from(s))
        } else {
            let addr = s
                .to_socket_addrs()
                .unwrap_or_else(|e| panic!("bad target {s:?}: {e}"))
                .next()
                .unwrap_or_else(|| panic!("bad target {s:?}"));
            Target::Tcp(addr)
        }
    }
}

impl From<&str> for Target {
    fn from(s: &str) -> Target {
        Target::parse(s)
    }
}

impl From<String> for Target {
    fn from(s: String) -> Target {
        Target::parse(&s)
    }
}

impl From<&Path> for Target {
    fn from(p: &Path) -> Target {
        Target::Unix(p.to_path_buf())
    }
}

impl From<PathBuf> for Target {
    fn from(p: PathBuf) -> Target {
        Target::Unix(p)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An open client connection to a target.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Connects, giving up after `timeout` (TCP: `connect_timeout`; unix: `SO_SNDTIMEO`, which bounds
    /// a blocking unix `connect` waiting for room in the listener's backlog).
    pub fn connect(target: &Target, timeout: Duration) -> io::Result<Conn> {
        let c = match target {
            Target::Tcp(a) => Conn::Tcp(tcp_connect(a, timeout)?),
            Target::Unix(p) => Conn::Unix(connect_unix(p, timeout)?),
        };
        c.set_timeouts(timeout)?;
        Ok(c)
    }

    pub fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    /// Sends an HTTP/1.0 `GET /` (no keep-alive) and returns the body of a complete 200 response.
    pub fn get(mut self) -> Result<String, RequestError> {
        let req = b"GET / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: hapmaster-e2e\r\n\r\n";
        self.write_all(req).map_err(RequestError::io)?;
        let mut buf = Vec::with_capacity(512);
        // Bounded: a read timeout applies to each read, and the response is capped at 1 MiB.
        let mut chunk = [0u8; 4096];
        loop {
            match self.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 1 << 20 {
                        return Err(RequestError::bad_response("response over 1 MiB".into()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(if buf.is_empty() {
                        RequestError::io(e)
                    } else {
                        RequestError::io_after(e, buf.len())
                    })
                }
            }
        }
        let _ = self.shutdown_write();
        parse_response(&buf)
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(b),
            Conn::Unix(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(b),
            Conn::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TCP connect that waits out a shortage of *local* ports: at tens of thousands of new
/// connections a second the client side runs out of ephemeral ports (connect gives EAGAIN or
/// EADDRNOTAVAIL before sending anything). That says nothing about the server, so it is retried
/// within the timeout rather than counted as a failed request.
fn tcp_connect(addr: &std::net::SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(addr, timeout) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EADDRNOTAVAIL))
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Why one request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailKind {
    /// connect() answered ECONNREFUSED (or ENOENT for a missing unix socket): nobody listening.
    Refused,
    /// ECONNRESET / EPIPE: the connection was reset.
    Reset,
    /// connect, write or read timed out.
    Timeout,
    /// The server closed without a (complete) response.
    ShortResponse,
    /// Not an HTTP 200, or malformed.
    BadResponse,
    /// Any other I/O error.
    Other,
    /// The request thread did not finish in time when the load was stopped.
    Stuck,
}

#[derive(Debug, Clone)]
pub struct RequestError {
    pub kind: FailKind,
    pub text: String,
}

impl RequestError {
    fn io(e: io::Error) -> RequestError {
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
            text: e.to_string(),
        }
    }
    fn io_after(e: io::Error, got: usize) -> RequestError {
        let mut r = RequestError::io(e);
        r.text = format!("{} (after {got} response bytes)", r.text);
        r
    }
    fn bad_response(text: String) -> RequestError {
        RequestError {
            kind: FailKind::BadResponse,
            text,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.text)
    }
}

impl std::error::Error for RequestError {}

fn parse_response(buf: &[u8]) -> Result<String, RequestError> {
    if buf.is_empty() {
        return Err(RequestError {
            kind: FailKind::ShortResponse,
            text: "connection closed without a response".into(),
        });
    }
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(RequestError {
            kind: FailKind::ShortResponse,
            text: format!("incomplete headers: {:?}", truncate(&text, 200)),
        });
    };
    let status = head.lines().next().unwrap_or("");
    if !(status.starts_with("HTTP/1.0 200 ") || status.starts_with("HTTP/1.1 200 ")) {
        return Err(RequestError::bad_response(format!(
            "status line {status:?}"
        )));
    }
    let clen = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(n) = clen {
        if body.len() != n {
            return Err(RequestError {
                kind: FailKind::ShortResponse,
                text: format!("body {} bytes, content-length {n}", body.len()),
            });
        }
    }
    Ok(body.to_string())
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

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
    let t = target.into();
    Conn::connect(&t, timeout).map_err(RequestError::io)?.get()
}
