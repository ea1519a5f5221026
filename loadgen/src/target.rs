//! Where a client connects, and the open connection.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// Where a client connects: `127.0.0.1:P`, `[::1]:P`, or a unix socket path (starts with `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// Panics on an address that does not resolve: targets are written by tests and the benchmark.
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

impl From<SocketAddr> for Target {
    fn from(a: SocketAddr) -> Target {
        Target::Tcp(a)
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

impl From<&Target> for Target {
    fn from(t: &Target) -> Target {
        t.clone()
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
    /// a blocking unix `connect` waiting for room in the listener's backlog), and sets `timeout` as
    /// the read and write timeout.
    pub fn connect(target: &Target, timeout: Duration) -> io::Result<Conn> {
        let c = match target {
            Target::Tcp(a) => {
                let s = tcp_connect(a, timeout)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Target::Unix(p) => Conn::Unix(unix_connect(p, timeout)?),
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
fn tcp_connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(addr, timeout) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::AddrNotAvailable
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// A unix connect bounded by `timeout`: the kernel waits up to `SO_SNDTIMEO` for room in a full
/// backlog, then fails with EAGAIN (reported as a timeout).
fn unix_connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let addr = SockAddr::unix(path)?;
    // socket2 creates it close-on-exec.
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    sock.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    loop {
        match sock.connect(&addr) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::from(io::ErrorKind::TimedOut))
            }
            Err(e) => return Err(e),
            Ok(()) => return Ok(UnixStream::from(std::os::fd::OwnedFd::from(sock))),
        }
    }
}
