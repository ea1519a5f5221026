//! The load generator: N client threads sending `GET /` to one address, either a new connection
//! per request (HTTP/1.0, read to EOF, like `ab` without `-k`) or keep-alive (HTTP/1.1, reused
//! until the server closes). Every failure is kept with its time and kind; requests per 100 ms
//! are counted for the plots. Bounded by duration, request count and a per-request timeout.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub const BUCKET_MS: u64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailKind {
    /// connect() got ECONNREFUSED: nothing listening.
    Refused,
    /// ECONNRESET / EPIPE.
    Reset,
    /// connect, write or read timed out.
    Timeout,
    /// The server closed before a complete response.
    Short,
    /// Not a 200, or malformed.
    Bad,
    /// Anything else (e.g. EADDRNOTAVAIL: the client ran out of local ports).
    Other,
}

impl FailKind {
    pub const ALL: [FailKind; 6] = [
        FailKind::Refused,
        FailKind::Reset,
        FailKind::Timeout,
        FailKind::Short,
        FailKind::Bad,
        FailKind::Other,
    ];
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Refused => "refused",
            FailKind::Reset => "reset",
            FailKind::Timeout => "timeout",
            FailKind::Short => "short",
            FailKind::Bad => "bad",
            FailKind::Other => "other",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: FailKind,
    pub text: String,
    /// On a reused keep-alive connection, before any byte of the response: the server closed an
    /// idle connection as the request went out. HTTP clients retry these (RFC 9112, 9.3.1).
    pub retryable: bool,
}

impl Failure {
    fn io(e: &io::Error, context: &str) -> Failure {
        let kind = match e.kind() {
            io::ErrorKind::ConnectionRefused => FailKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => FailKind::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailKind::Timeout,
            _ => FailKind::Other,
        };
        Failure {
            kind,
            text: format!("{context}: {e}"),
            retryable: false,
        }
    }
    fn short(text: String) -> Failure {
        Failure {
            kind: FailKind::Short,
            text,
            retryable: false,
        }
    }
}

/// What one response said.
#[derive(Debug)]
pub struct Response {
    /// The `X-Pid` header: the haproxy process that answered.
    pub pid: Option<u32>,
    pub close: bool,
}

/// Parses one complete response at the start of `buf`: `Ok(None)` if more bytes are needed,
/// else the response and its length.
fn parse(buf: &[u8]) -> Result<Option<(Response, usize)>, Failure> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if !(status.starts_with("HTTP/1.1 200 ") || status.starts_with("HTTP/1.0 200 ")) {
        return Err(Failure {
            kind: FailKind::Bad,
            text: format!("status line {status:?}"),
            retryable: false,
        });
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
    let Some(clen) = clen else {
        return Err(Failure {
            kind: FailKind::Bad,
            text: "no content-length".into(),
            retryable: false,
        });
    };
    let total = head_end + 4 + clen;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((Response { pid, close }, total)))
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| Failure::io(&e, "connect"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(|e| Failure::io(&e, "setsockopt"))?;
    Ok(s)
}

/// One request on a new connection (HTTP/1.0); reads to EOF so the server closes first.
pub fn get_once(addr: SocketAddr, timeout: Duration) -> Result<Response, Failure> {
    let mut s = connect(addr, timeout)?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .map_err(|e| Failure::io(&e, "write"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::io(
                    &e,
                    &format!("read after {} response bytes", buf.len()),
                ))
            }
        }
    }
    match parse(&buf)? {
        Some((r, _)) => Ok(r),
        None => Err(Failure::short(format!(
            "closed after {} bytes, response incomplete",
            buf.len()
        ))),
    }
}

/// A keep-alive connection and how many responses it carried.
struct KeepAlive {
    stream: TcpStream,
    served: u64,
}

/// One request on `conn` (opened if `None`); the connection is kept if the server allows.
fn get_keepalive(
    conn: &mut Option<KeepAlive>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Response, Failure> {
    if conn.is_none() {
        *conn = Some(KeepAlive {
            stream: connect(addr, timeout)?,
            served: 0,
        });
    }
    let Some(c) = conn.as_mut() else {
        return Err(Failure::short("no connection".into()));
    };
    let reused = c.served > 0;
    let result = request_on(&mut c.stream, reused);
    match result {
        Ok(r) if !r.close => {
            c.served += 1;
            Ok(r)
        }
        other => {
            *conn = None;
            other
        }
    }
}

fn request_on(s: &mut TcpStream, reused: bool) -> Result<Response, Failure> {
    let mark = |mut f: Failure, got: usize| {
        f.retryable = reused && got == 0 && f.kind != FailKind::Timeout;
        f
    };
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| mark(Failure::io(&e, "write"), 0))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                return Err(mark(
                    Failure::short(format!("closed after {} response bytes", buf.len())),
                    buf.len(),
                ))
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some((r, _)) = parse(&buf)? {
                    return Ok(r);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let got = buf.len();
                return Err(mark(
                    Failure::io(&e, &format!("read after {got} response bytes")),
                    got,
                ));
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub clients: usize,
    pub keepalive: bool,
    pub duration: Duration,
    pub max_requests: u64,
    pub timeout: Duration,
}

/// A failure and when it happened (ms since the load started).
#[derive(Clone, Debug)]
pub struct FailEvent {
    pub ms: u64,
    pub failure: Failure,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: u64,
    pub failures: Vec<FailEvent>,
    /// Successful responses per 100 ms.
    pub buckets: Vec<u64>,
    pub elapsed: Duration,
    /// Each haproxy pid seen in X-Pid, with the time (ms) of its first response.
    pub pid_first_ms: BTreeMap<u32, u64>,
}

impl LoadResult {
    pub fn count(&self, kind: FailKind) -> usize {
        self.failures
            .iter()
            .filter(|f| f.failure.kind == kind)
            .count()
    }
    pub fn retryable(&self) -> usize {
        self.failures.iter().filter(|f| f.failure.retryable).count()
    }
    pub fn failed(&self) -> usize {
        self.failures.len()
    }
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
    /// Failures per 100 ms bucket.
    pub fn fail_buckets(&self) -> Vec<u64> {
        let mut b = vec![0; self.buckets.len()];
        for f in &self.failures {
            let i = usize::try_from(f.ms / BUCKET_MS).unwrap_or(usize::MAX);
            if let Some(slot) = b.get_mut(i) {
                *slot += 1;
            } else if let Some(last) = b.last_mut() {
                *last += 1;
            }
        }
        b
    }
    /// Up to `n` distinct failure texts with their kinds, for the report.
    pub fn sample_errors(&self, n: usize) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for f in &self.failures {
            let t = format!(
                "{} at {} ms: {}",
                f.failure.kind.name(),
                f.ms,
                f.failure.text
            );
            if seen.len() < n && !seen.iter().any(|s| s.ends_with(&f.failure.text)) {
                seen.push(t);
            }
        }
        seen
    }
}

#[derive(Default)]
struct ThreadOut {
    ok: u64,
    failures: Vec<FailEvent>,
    buckets: Vec<u64>,
    pid_first_ms: BTreeMap<u32, u64>,
}

/// A running load. [`Load::finish`] stops it and collects the result.
pub struct Load {
    pub started: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<ThreadOut>>,
}

impl Load {
    pub fn start(spec: &LoadSpec) -> Result<Load, String> {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicU64::new(0));
        let deadline = started + spec.duration;
        let mut threads = Vec::with_capacity(spec.clients);
        for i in 0..spec.clients {
            let (stop, issued, spec) = (stop.clone(), issued.clone(), spec.clone());
            let h = thread::Builder::new()
                .name(format!("client-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || client(&spec, started, deadline, &stop, &issued))
                .map_err(|e| format!("spawning load client thread {i}: {e}"))?;
            threads.push(h);
        }
        Ok(Load {
            started,
            stop,
            threads,
        })
    }

    pub fn ms_now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Stops the clients (each finishes its request, bounded by the request timeout) and merges
    /// what they saw.
    pub fn finish(mut self) -> Result<LoadResult, String> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let mut r = LoadResult {
            elapsed,
            ..LoadResult::default()
        };
        for h in std::mem::take(&mut self.threads) {
            let out = h
                .join()
                .map_err(|_| "a load client thread panicked".to_string())?;
            r.ok += out.ok;
            r.failures.extend(out.failures);
            if r.buckets.len() < out.buckets.len() {
                r.buckets.resize(out.buckets.len(), 0);
            }
            for (i, n) in out.buckets.iter().enumerate() {
                r.buckets[i] += n;
            }
            for (pid, ms) in out.pid_first_ms {
                let e = r.pid_first_ms.entry(pid).or_insert(ms);
                *e = (*e).min(ms);
            }
        }
        r.failures.sort_by_key(|f| f.ms);
        Ok(r)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn client(
    spec: &LoadSpec,
    started: Instant,
    deadline: Instant,
    stop: &AtomicBool,
    issued: &AtomicU64,
) -> ThreadOut {
    let mut out = ThreadOut::default();
    let mut conn = None;
    let ms = |t: Instant| u64::try_from(t.duration_since(started).as_millis()).unwrap_or(u64::MAX);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if issued.fetch_add(1, Ordering::Relaxed) >= spec.max_requests {
            break;
        }
        let r = if spec.keepalive {
            get_keepalive(&mut conn, spec.addr, spec.timeout)
        } else {
            get_once(spec.addr, spec.timeout)
        };
        let now = ms(Instant::now());
        match r {
            Ok(resp) => {
                out.ok += 1;
                let b = usize::try_from(now / BUCKET_MS).unwrap_or(0);
                if out.buckets.len() <= b {
                    out.buckets.resize(b + 1, 0);
                }
                out.buckets[b] += 1;
                if let Some(pid) = resp.pid {
                    out.pid_first_ms.entry(pid).or_insert(now);
                }
            }
            Err(failure) => {
                out.failures.push(FailEvent { ms: now, failure });
                // A refused connect returns at once: do not spin on it.
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
    out
}
