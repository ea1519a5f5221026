//! `--metrics-bind ADDR:PORT`: `GET /metrics` over HTTP, and nothing else. Each client is a
//! bounded exchange the loop steps when its socket is ready: at most [`MAX_REQUEST`] bytes of
//! request head, one answer, `Connection: close`, and a deadline (`--cli-timeout`) past which
//! it is dropped whatever it was doing (sending nothing, sending too much, not reading).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::poll::PollFlags;

use crate::exposition::CONTENT_TYPE;

/// Clients served at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 16;
/// A request head longer than this is refused (431) unread.
pub const MAX_REQUEST: usize = 8 * 1024;

/// What a complete (or refused) request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Reads the head in `buf`: None while it is incomplete and within [`MAX_REQUEST`].
pub fn route(buf: &[u8]) -> Option<Route> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
    let Some(end) = end else {
        return (buf.len() >= MAX_REQUEST).then_some(Route::TooLarge);
    };
    if end > MAX_REQUEST {
        return Some(Route::TooLarge);
    }
    let line = buf[..end].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Some(Route::BadRequest);
    };
    let words: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = words.as_slice() else {
        return Some(Route::BadRequest);
    };
    if !matches!(*version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Some(Route::BadRequest);
    }
    if *method != "GET" {
        return Some(Route::MethodNotAllowed);
    }
    let path = target.split('?').next().unwrap_or_default();
    Some(if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    })
}

/// The whole response to `route`; `body` renders the metrics, only when asked for.
pub fn response(route: &Route, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, body, extra) = match route {
        Route::Metrics => ("200 OK", CONTENT_TYPE, body(), ""),
        Route::NotFound => ("404 Not Found", "text/plain", "only /metrics\n".into(), ""),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".into(),
            "Allow: GET\r\n",
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", "bad request\n".into(), ""),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head over 8 KiB\n".into(),
            "",
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One HTTP client.
pub struct Client {
    stream: TcpStream,
    input: Vec<u8>,
    /// The answer, once the head is read; `written` of it is sent.
    output: Option<Vec<u8>>,
    written: usize,
    pub deadline: Instant,
}

/// What a client step leaves.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Going,
    Done,
}

impl Client {
    pub fn new(stream: TcpStream, deadline: Instant) -> io::Result<Client> {
        stream.set_nonblocking(true)?;
        Ok(Client {
            stream,
            input: Vec::new(),
            output: None,
            written: 0,
            deadline,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Read until the head is in, then write until the answer is out.
    pub fn interest(&self) -> PollFlags {
        if self.output.is_some() {
            PollFlags::POLLOUT
        } else {
            PollFlags::POLLIN
        }
    }

    /// Moves the exchange on as far as the socket allows; `body` renders the metrics.
    pub fn step(&mut self, body: impl FnOnce() -> String) -> Step {
        if self.output.is_none() {
            let mut buf = [0u8; 4096];
            loop {
                // Never more than the limit and one read past it.
                match self.stream.read(&mut buf) {
                    Ok(0) => return Step::Done,
                    Ok(n) => {
                        self.input.extend_from_slice(&buf[..n]);
                        if let Some(r) = route(&self.input) {
                            self.output = Some(response(&r, body));
                            self.input = Vec::new();
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Going,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Done,
                }
            }
        }
        let Some(out) = &self.output else {
            return Step::Going;
        };
        while self.written < out.len() {
            match self.stream.write(&out[self.written..]) {
                Ok(0) => return Step::Done,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Going,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Done,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        Step::Done
    }
}

/// The listening socket and its clients.
pub struct Endpoint {
    pub listener: TcpListener,
    pub clients: std::collections::HashMap<u64, Client>,
    next: u64,
}

impl Endpoint {
    /// Binds `addr` non-blocking (CLOEXEC, as every std socket).
    pub fn bind(addr: SocketAddr) -> io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Endpoint {
            listener,
            clients: Default::default(),
            next: 0,
        })
    }

    /// Whether a new client would get a slot.
    pub fn has_room(&self) -> bool {
        self.clients.len() < MAX_CLIENTS
    }

    /// Accepts what waits, up to the free slots.
    pub fn accept(&mut self, deadline: Instant) {
        while self.has_room() {
            match self.listener.accept() {
                Ok((stream, _)) => match Client::new(stream, deadline) {
                    Ok(c) => {
                        self.next += 1;
                        self.clients.insert(self.next, c);
                    }
                    Err(e) => log::warn!("--metrics-bind: cannot serve a client: {e}"),
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock, or a client gone before it was accepted.
                Err(_) => return,
            }
        }
    }

    /// Drops clients past their deadline.
    pub fn expire(&mut self, now: Instant) {
        self.clients.retain(|_, c| c.deadline > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\n\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            Some(Route::NotFound)
        );
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(
            route(b"GET /metrics HTTP/2\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(
            route(b"GET  /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(
            route(b"\xff /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadRequest)
        );
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(route(&vec![b'a'; MAX_REQUEST - 1]), None);
        assert_eq!(route(&vec![b'a'; MAX_REQUEST]), Some(Route::TooLarge));
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.extend(vec![b'a'; MAX_REQUEST]);
        long.extend(b"\r\n\r\n");
        assert_eq!(route(&long), Some(Route::TooLarge));
    }

    #[test]
    fn responses() {
        let ok = String::from_utf8(response(&Route::Metrics, || "a 1\n".into())).unwrap();
        assert_eq!(
            ok,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: 4\r\n\
                 Connection: close\r\n\r\na 1\n"
            )
        );
        let no = String::from_utf8(response(&Route::MethodNotAllowed, || unreachable!())).unwrap();
        assert!(
            no.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{no}"
        );
        assert!(no.contains("\r\nAllow: GET\r\n"), "{no}");
    }
}
