//! Test harness for hapmaster's end-to-end tests.
//!
//! Real parts only: the real `hapmaster` binary, the real haproxy, real sockets on loopback, a real
//! `NOTIFY_SOCKET` (a bound `UnixDatagram` playing systemd). Every wait has a deadline; polling loops
//! are bounded. Only processes this harness started (or whose pid hapmaster reported, checked by
//! their start time) are ever signalled, by pid.
//!
//! The only crate used besides std is `libc` (already a dependency of hapmaster): for `kill(2)`, for
//! `CLOCK_MONOTONIC`, and for a unix-socket `connect` bounded by `SO_SNDTIMEO`.
#![allow(dead_code)]

pub mod haproxy;
pub mod soak;

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const SIGHUP: i32 = libc::SIGHUP;
pub const SIGINT: i32 = libc::SIGINT;
pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGUSR1: i32 = libc::SIGUSR1;
pub const SIGUSR2: i32 = libc::SIGUSR2;
pub const SIGURG: i32 = libc::SIGURG;

/// Interval between two looks at something we poll (/proc, a file). Not a synchronisation sleep:
/// every poll loop also has a deadline.
pub const POLL: Duration = Duration::from_millis(20);

/// The deadline for something that normally happens within milliseconds or a second (a reload, a
/// worker's exit, a log line, an answer): sized for a 2-core machine busy with other work. Waits
/// end as soon as the event comes, so only a failing test ever waits this long.
pub const EVENT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------------

/// Polls `f` every [`POLL`] until it returns `Some`, or `timeout` passes (then `None`).
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The haproxy binary the tests run: `$HAPMASTER_TEST_HAPROXY`, else `haproxy` from `$PATH`,
/// `/usr/sbin` or `/usr/local/sbin`.
pub fn haproxy_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HAPMASTER_TEST_HAPROXY") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    for d in dirs {
        let p = d.join("haproxy");
        if p.is_file() {
            return p;
        }
    }
    panic!("haproxy not found in $PATH, /usr/sbin or /usr/local/sbin: install it (apt-get install haproxy) or set HAPMASTER_TEST_HAPROXY");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to `pid`. Errors (e.g. ESRCH) are returned, not panicked on.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) with a positive pid only signals that one process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CLOCK_MONOTONIC in microseconds (what systemd expects in `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

static DIR_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory `/tmp/hm-<pid>-<n>`, removed on drop. Kept short on purpose: unix socket
/// paths must fit in 107 bytes. Set `HAPMASTER_TEST_KEEP=1` to keep it for inspection.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        let n = DIR_SEQ.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!("/tmp/hm-{}-{}", std::process::id(), n));
        if path.exists() {
            fs::remove_dir_all(&path).expect("removing a stale test dir");
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("HAPMASTER_TEST_KEEP").is_some() {
            eprintln!("keeping test dir {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------------

/// The fields of /proc/PID/stat the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Field 22, clock ticks since boot: with the pid, identifies a process (pids get reused).
    pub starttime: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces or ')': split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// True if `pid` exists and is not a zombie (or dead).
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// All processes whose parent is `ppid`, zombies included, sorted by pid.
pub fn children_of(ppid: u32) -> Vec<ProcStat> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = proc_stat(pid) {
            if st.ppid == ppid {
                out.push(st);
            }
        }
    }
    out.sort_by_key(|s| s.pid);
    out
}

/// Pids of the live (not zombie) children of `ppid`.
pub fn live_children(ppid: u32) -> Vec<u32> {
    children_of(ppid)
        .into_iter()
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.pid)
        .collect()
}

/// Pids of the zombie children of `ppid`.
pub fn zombie_children(ppid: u32) -> Vec<u32> {
    children_of(ppid)
        .into_iter()
        .filter(|s| s.state == 'Z')
        .map(|s| s.pid)
        .collect()
}

/// Live processes (not this one) whose command line mentions `path` followed by `/`.
pub fn pids_with_cmdline_containing(path: &Path) -> Vec<u32> {
    let mut needle = path.as_os_str().as_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || !pid_alive(pid) {
            continue;
        }
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if cmd.windows(needle.len()).any(|w| w == needle.as_slice()) {
                out.push(pid);
            }
        }
    }
    out
}

/// Number of open fds of `pid` (entries of /proc/PID/fd); `None` if it cannot be read.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `ls -l /proc/PID/fd`, for failure messages.
pub fn fd_listing(pid: u32) -> String {
    let mut lines = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let target = fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("<{e}>"));
            lines.push(format!("{} -> {}", e.file_name().to_string_lossy(), target));
        }
    }
    lines.sort();
    lines.join("\n")
}

/// The pid of the master's watchdog, from the master's log line `watchdog pid N ...`.
pub fn watchdog_pid_in(log: &str) -> Option<u32> {
    let (_, rest) = log.split_once("watchdog pid ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// True if `pid` is alive and is the watchdog of `master` (`hapmaster __watchdog <master> ...`):
/// checked before a test signals it, since its pid comes from a log line.
pub fn is_watchdog_of(pid: u32, master: u32) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    pid_alive(pid)
        && args.get(1) == Some(&b"__watchdog".as_slice())
        && args.get(2) == Some(&master.to_string().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Listening sockets
// ---------------------------------------------------------------------------------------------

fn tcp_table_listen_inodes(table: &str, port: u16) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let Ok(text) = fs::read_to_string(table) else {
        return out;
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((_, hexport)) = f[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(hexport, 16).ok() == Some(port) {
            if let Ok(ino) = f[9].parse::<u64>() {
                out.insert(ino);
            }
        }
    }
    out
}

/// Inodes of the IPv4 TCP sockets in LISTEN state on `port` (any local address).
pub fn tcp4_listen_inodes(port: u16) -> BTreeSet<u64> {
    tcp_table_listen_inodes("/proc/net/tcp", port)
}

/// Inodes of the IPv6 TCP sockets in LISTEN state on `port` (any local address).
pub fn tcp6_listen_inodes(port: u16) -> BTreeSet<u64> {
    tcp_table_listen_inodes("/proc/net/tcp6", port)
}

/// Inodes of all TCP sockets (v4 and v6) in LISTEN state on `port`.
pub fn tcp_listen_inodes(port: u16) -> BTreeSet<u64> {
    let mut s = tcp4_listen_inodes(port);
    s.extend(tcp6_listen_inodes(port));
    s
}

/// Inodes of the listening unix stream sockets whose bound name starts with `prefix`. haproxy binds
/// `<path>.<pid>.tmp` and renames it to `<path>`, so /proc/net/unix shows the temporary name: pass the
/// configured path, it is a prefix of that name.
pub fn unix_listen_inodes(prefix: &Path) -> BTreeSet<u64> {
    // /proc/net/unix walks a hash table that unix sockets under load keep changing, and such a
    // walk can skip entries: the union of a few reads does not miss a socket that exists (and a
    // replaced one still shows as an extra inode).
    (0..3)
        .flat_map(|_| unix_listen_inodes_once(prefix))
        .collect()
}

fn unix_listen_inodes_once(prefix: &Path) -> BTreeSet<u64> {
    let prefix = prefix.as_os_str().as_bytes();
    let mut out = BTreeSet::new();
    let Ok(text) = fs::read("/proc/net/unix") else {
        return out;
    };
    for line in text.split(|b| *b == b'\n').skip(1) {
        let line = String::from_utf8_lossy(line);
        // Num RefCount Protocol Flags Type St Inode [Path]
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let listening = flags & 0x0001_0000 != 0; // __SO_ACCEPTCON
        if listening && f[7].as_bytes().starts_with(prefix) {
            if let Ok(ino) = f[6].parse::<u64>() {
                out.insert(ino);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Who holds a socket: the kernel's answer
// ---------------------------------------------------------------------------------------------

/// Inodes of the sockets `pid` has open (its `/proc/PID/fd` links `socket:[N]`).
pub fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
            if let Ok(ino) = n.parse() {
                out.insert(ino);
            }
        }
    }
    out
}

/// `/proc/net/tcp`'s form of an IPv4 address and port: the address's bytes as a native-endian
/// 32-bit number, then the port, both in upper-case hex.
fn proc_net_tcp_addr(a: std::net::SocketAddrV4) -> String {
    format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    )
}

/// The inode of the accepted (server) end of the IPv4 TCP connection whose client end is `client`,
/// once a process has accepted it. `None` while it waits in the listening socket's accept queue:
/// the kernel gives the socket an inode only when `accept()` makes it a file.
pub fn accepted_inode(client: &TcpStream) -> Option<u64> {
    let (SocketAddr::V4(mine), SocketAddr::V4(server)) =
        (client.local_addr().ok()?, client.peer_addr().ok()?)
    else {
        panic!("accepted_inode: IPv4 connections only");
    };
    let (local, remote) = (proc_net_tcp_addr(server), proc_net_tcp_addr(mine));
    let text = fs::read_to_string("/proc/net/tcp").ok()?;
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 10 && f[1] == local && f[2] == remote)
            .then(|| f[9].parse::<u64>().ok())
            .flatten()
            .filter(|ino| *ino != 0)
    })
}

/// Which of `pids` holds the accepted end of `client`'s connection, by their fd tables; `None` if
/// no process has accepted it yet (or one outside `pids` did).
pub fn conn_holder(client: &TcpStream, pids: &[u32]) -> Option<u32> {
    let ino = accepted_inode(client)?;
    pids.iter()
        .copied()
        .find(|p| socket_inodes(*p).contains(&ino))
}

/// The processes among `pids` that hold one of the TCP sockets listening on `port`: the only
/// ones that can accept a new connection to it.
pub fn listen_holders(port: u16, pids: &[u32]) -> Vec<u32> {
    let listening = tcp_listen_inodes(port);
    pids.iter()
        .copied()
        .filter(|p| !socket_inodes(*p).is_disjoint(&listening))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// The kernel's ephemeral port range (`ip_local_port_range`), from which every client
/// connection (the load generators' tens of thousands a second included) takes its local port.
fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Ports the tests listen on, outside the ephemeral range: a port picked by binding port 0 comes
/// from that range, and a client connection of a concurrent test can take it as its local port
/// before haproxy binds it (seen: "cannot bind socket (Address already in use)"). Each port is
/// handed out once per test process; the start is spread by pid so that concurrent test
/// processes rarely meet.
fn next_candidate() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let (lo, hi) = ephemeral_range();
    let (first, last) = if lo > 11_000 {
        (10_000u16, lo - 1)
    } else {
        (hi.saturating_add(1).max(10_000), 65_000)
    };
    let span = usize::from(last - first) + 1;
    let _ = NEXT.compare_exchange(
        usize::MAX,
        (std::process::id() as usize * 7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    first + (n % span) as u16
}

/// A TCP port outside the ephemeral range that was free on both 127.0.0.1 and ::1 a moment ago,
/// not handed out before by this process.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = next_candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 after 1000 tries");
}

/// `n` distinct ports, each as [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP clients
// ---------------------------------------------------------------------------------------------

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
            Target::Unix(p) => Conn::Unix(unix_connect_timeout(p, timeout)?),
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

fn unix_connect_timeout(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unix socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = UnixStream::from(fd);
    // SO_SNDTIMEO bounds the wait of a blocking unix connect (unix_stream_connect uses sk_sndtimeo).
    stream.set_write_timeout(Some(timeout))?;
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let rc = unsafe {
        libc::connect(
            raw,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
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

// ---------------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct LoadShared {
    ok: AtomicUsize,
    /// Requests each client has finished (served or failed), by client index.
    finished: Vec<AtomicUsize>,
    failures: Mutex<Vec<(FailKind, usize)>>,
    first_errors: Mutex<Vec<String>>,
    ok_by_target: Mutex<Vec<(String, usize)>>,
}

impl LoadShared {
    fn fail(&self, target: &Target, e: &RequestError) {
        {
            let mut f = self.failures.lock().unwrap();
            match f.iter_mut().find(|(k, _)| *k == e.kind) {
                Some((_, n)) => *n += 1,
                None => f.push((e.kind, 1)),
            }
        }
        let mut fe = self.first_errors.lock().unwrap();
        if fe.len() < 10 {
            fe.push(format!("{target}: {e}"));
        }
    }
}

/// Result of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    /// Failures counted by kind.
    pub by_kind: Vec<(FailKind, usize)>,
    /// Text of the first few failures (`target: Kind: error`).
    pub first_errors: Vec<String>,
    /// Successes per target (of the clients that finished).
    pub ok_by_target: Vec<(String, usize)>,
    pub elapsed: Duration,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ok {:?}, {} failed {:?} in {:.1?} ({:.0} req/s)",
            self.ok,
            self.ok_by_target,
            self.failed,
            self.by_kind,
            self.elapsed,
            self.ok as f64 / self.elapsed.as_secs_f64().max(0.001)
        )?;
        for e in &self.first_errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Concurrent clients, each looping non-keep-alive `GET /` requests (a new connection per request)
/// against the targets, thread i on target i % len. Bounded by [`Load::stop`] and by a maximum
/// duration; each request by [`REQUEST_TIMEOUT`].
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<LoadShared>,
    done_rx: mpsc::Receiver<()>,
    threads: Vec<thread::JoinHandle<()>>,
    started: Instant,
    stopped: bool,
}

impl Load {
    pub const DEFAULT_MAX: Duration = Duration::from_secs(180);

    pub fn start(targets: &[Target], concurrency: usize) -> Load {
        Load::start_max(targets, concurrency, Load::DEFAULT_MAX)
    }

    pub fn start_max(targets: &[Target], concurrency: usize, max: Duration) -> Load {
        assert!(!targets.is_empty() && concurrency > 0);
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(LoadShared {
            finished: (0..concurrency).map(|_| AtomicUsize::new(0)).collect(),
            ..LoadShared::default()
        });
        let (done_tx, done_rx) = mpsc::channel();
        let started = Instant::now();
        let deadline = started + max;
        let threads = (0..concurrency)
            .map(|i| {
                let target = targets[i % targets.len()].clone();
                let stop = stop.clone();
                let shared = shared.clone();
                let done_tx = done_tx.clone();
                thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        let mut ok = 0;
                        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                            match http_get(target.clone()) {
                                Ok(_) => {
                                    ok += 1;
                                    shared.ok.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => shared.fail(&target, &e),
                            }
                            shared.finished[i].fetch_add(1, Ordering::Relaxed);
                        }
                        {
                            let name = target.to_string();
                            let mut by = shared.ok_by_target.lock().unwrap();
                            match by.iter_mut().find(|(t, _)| *t == name) {
                                Some((_, n)) => *n += ok,
                                None => by.push((name, ok)),
                            }
                        }
                        let _ = done_tx.send(());
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        Load {
            stop,
            shared,
            done_rx,
            threads,
            started,
            stopped: false,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok_so_far(&self) -> usize {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Requests each client has finished so far (served or failed), by client.
    pub fn finished_by_client(&self) -> Vec<usize> {
        self.shared
            .finished
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until every client has finished two more requests than it had at this call: the one
    /// it was in then (whatever its fate, now counted) and one started after the call. So every
    /// failure of a request in flight at the call has been counted when this returns. Panics after
    /// [`EVENT`].
    pub fn wait_every_client_moved_on(&self) {
        let from = self.finished_by_client();
        let moved = poll_until(EVENT, || {
            let now = self.finished_by_client();
            now.iter()
                .zip(&from)
                .all(|(n, f)| *n >= f + 2)
                .then_some(())
        });
        assert!(
            moved.is_some(),
            "within {EVENT:?} not every client finished two more requests: {from:?} -> {:?}",
            self.finished_by_client()
        );
    }

    /// Failures so far.
    pub fn failed_so_far(&self) -> usize {
        self.shared
            .failures
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum()
    }

    /// Stops the clients and waits (up to [`EVENT`], longer than one request may take) for them to
    /// finish their current request. A client that does not finish in time is counted as a
    /// `Stuck` failure and left behind.
    pub fn stop(mut self) -> LoadReport {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> LoadReport {
        self.stopped = true;
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        let deadline = Instant::now() + EVENT;
        let mut finished = 0;
        while finished < self.threads.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        let stuck = self.threads.len() - finished;
        if stuck == 0 {
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
        let mut by_kind = self.shared.failures.lock().unwrap().clone();
        if stuck > 0 {
            by_kind.push((FailKind::Stuck, stuck));
        }
        by_kind.sort();
        LoadReport {
            ok: self.shared.ok.load(Ordering::Relaxed),
            failed: by_kind.iter().map(|(_, n)| n).sum(),
            by_kind,
            first_errors: self.shared.first_errors.lock().unwrap().clone(),
            ok_by_target: self.shared.ok_by_target.lock().unwrap().clone(),
            elapsed,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Never block a panicking test on its clients: tell them to stop and leave.
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// sd_notify datagrams
// ---------------------------------------------------------------------------------------------

/// The value of `KEY=` in a notify datagram (fields are separated by `\n`).
pub fn notify_field<'a>(dgram: &'a str, key: &str) -> Option<&'a str> {
    dgram
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

pub fn has_line(dgram: &str, line: &str) -> bool {
    dgram.lines().any(|l| l == line)
}

/// The pid after `worker pid ` in a datagram's `STATUS=` (the last one, if several).
pub fn worker_pid_in(dgram: &str) -> Option<u32> {
    let status = notify_field(dgram, "STATUS")?;
    let (_, rest) = status.rsplit_once("worker pid ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The generation after `generation ` in a datagram's `STATUS=`.
pub fn generation_in(dgram: &str) -> Option<u64> {
    let status = notify_field(dgram, "STATUS")?;
    let (_, rest) = status.rsplit_once("generation ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `READY=1` with `STATUS=Serving: worker pid ...`: a worker is (again) the current one.
pub fn is_serving(dgram: &str) -> bool {
    has_line(dgram, "READY=1")
        && notify_field(dgram, "STATUS").is_some_and(|s| s.starts_with("Serving"))
        && worker_pid_in(dgram).is_some()
}

pub fn is_reloading(dgram: &str) -> bool {
    has_line(dgram, "RELOADING=1")
}

pub fn is_reload_failed(dgram: &str) -> bool {
    notify_field(dgram, "STATUS").is_some_and(|s| s.starts_with("Reload failed"))
}

// ---------------------------------------------------------------------------------------------
// Configurations
// ---------------------------------------------------------------------------------------------

/// The body every test frontend answers.
pub const HELLO: &str = "hello from haproxy\n";

/// A minimal haproxy config: one HTTP frontend with the given `bind` addresses answering 200 + [`HELLO`]
/// itself (no backend). No `stats socket`: hapmaster adds its own.
pub fn http_config(binds: &[String]) -> String {
    let mut c = String::from(
        "global\n    maxconn 4000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n",
    );
    for b in binds {
        c.push_str(&format!("    bind {b}\n"));
    }
    c.push_str(
        "    http-request return status 200 content-type text/plain string \"hello from haproxy\\n\"\n",
    );
    c
}

// ---------------------------------------------------------------------------------------------
// hapmaster under test
// ---------------------------------------------------------------------------------------------

/// A configuration to start hapmaster with: text written to `<dir>/haproxy.cfg`, or an existing file.
pub enum Cfg {
    Text(String),
    File(PathBuf),
}

impl From<&str> for Cfg {
    fn from(s: &str) -> Cfg {
        Cfg::Text(s.to_string())
    }
}

impl From<String> for Cfg {
    fn from(s: String) -> Cfg {
        Cfg::Text(s)
    }
}

impl From<&Path> for Cfg {
    fn from(p: &Path) -> Cfg {
        Cfg::File(p.to_path_buf())
    }
}

impl From<PathBuf> for Cfg {
    fn from(p: PathBuf) -> Cfg {
        Cfg::File(p)
    }
}

/// A running `hapmaster` (the binary built by cargo) with its own temp dir:
/// `<dir>/haproxy.cfg` (when given as text), `<dir>/rt` (`--runtime-dir`, created by hapmaster),
/// `<dir>/hapmaster.pid` (`-p`), `<dir>/notify.sock` (`NOTIFY_SOCKET`), `<dir>/stderr.log`.
/// It is started as `hapmaster --haproxy H --runtime-dir R -Ws [extra...] -f CFG -p PIDFILE`.
pub struct Hapmaster {
    pub cfg_path: PathBuf,
    pub runtime_dir: PathBuf,
    pub pidfile: PathBuf,
    pub notify_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    pid: u32,
    exit: Option<ExitStatus>,
    notify: UnixDatagram,
    /// Every datagram received, in order.
    history: Vec<String>,
    /// Index in `history` of the first datagram not yet consumed by a `wait_notify`.
    cursor: usize,
    /// Worker pids hapmaster reported, with their start time (to never signal a reused pid).
    workers: Vec<(u32, u64)>,
    current_worker: Option<u32>,
    // Last field: dropped after the child is killed.
    dir: TestDir,
}

impl Hapmaster {
    /// Starts hapmaster in a fresh temp dir. Does not wait for anything; see [`Hapmaster::start_ready`].
    pub fn start(cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        Hapmaster::start_in(TestDir::new(), cfg, extra_args)
    }

    /// Starts hapmaster and waits ([`EVENT`]) for its first `READY=1` + `Serving` datagram.
    pub fn start_ready(cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        let mut hm = Hapmaster::start(cfg, extra_args);
        hm.wait_serving(EVENT);
        hm
    }

    /// Like [`Hapmaster::start`] in a dir the caller already made (to put paths in the config).
    pub fn start_in(dir: TestDir, cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        Hapmaster::start_binary_in(
            Path::new(env!("CARGO_BIN_EXE_hapmaster")),
            dir,
            cfg,
            extra_args,
        )
    }

    /// `start_in` with another copy of the binary (upgrade-in-place tests replace it on disk).
    pub fn start_binary_in(
        binary: &Path,
        dir: TestDir,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        let runtime_dir = dir.join("rt");
        Hapmaster::launch(binary, dir, &runtime_dir, cfg, extra_args)
    }

    /// Like [`Hapmaster::start_in`], but with `--runtime-dir runtime_dir` instead of `<dir>/rt`:
    /// a second master on the runtime directory an earlier (killed) one left behind. Keep the
    /// earlier `Hapmaster` alive until this one is dropped: dropping it removes its dir.
    pub fn start_on_runtime_dir(
        dir: TestDir,
        runtime_dir: &Path,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        let binary = Path::new(env!("CARGO_BIN_EXE_hapmaster"));
        Hapmaster::launch(binary, dir, runtime_dir, cfg, extra_args)
    }

    fn launch(
        binary: &Path,
        dir: TestDir,
        runtime_dir: &Path,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        let runtime_dir = runtime_dir.to_path_buf();
        let cfg_path = match cfg.into() {
            Cfg::Text(t) => {
                let p = dir.join("haproxy.cfg");
                fs::write(&p, t).expect("writing haproxy.cfg");
                p
            }
            Cfg::File(p) => p,
        };
        let pidfile = dir.join("hapmaster.pid");
        let notify_path = dir.join("notify.sock");
        let stderr_path = dir.join("stderr.log");
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stderr = fs::File::create(&stderr_path).expect("creating stderr.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--haproxy")
            .arg(haproxy_path())
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .arg("-Ws")
            .args(extra_args)
            .arg("-f")
            .arg(&cfg_path)
            .arg("-p")
            .arg(&pidfile)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr.try_clone().unwrap()))
            .stderr(Stdio::from(stderr));
        let child = cmd.spawn().expect("spawning hapmaster");
        let pid = child.id();
        Hapmaster {
            cfg_path,
            runtime_dir,
            pidfile,
            notify_path,
            stderr_path,
            child: Some(child),
            pid,
            exit: None,
            notify,
            history: Vec::new(),
            cursor: 0,
            workers: Vec::new(),
            current_worker: None,
            dir,
        }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Overwrites the config file (for a reload).
    pub fn write_config(&self, text: &str) {
        fs::write(&self.cfg_path, text).expect("rewriting the config");
    }

    /// What hapmaster (and haproxy) wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// All datagrams received so far (including those not yet consumed).
    pub fn history(&mut self) -> &[String] {
        self.receive_pending();
        &self.history
    }

    fn record(&mut self, d: String) {
        if let Some(pid) = worker_pid_in(&d) {
            if let Some(st) = proc_stat(pid) {
                if !self.workers.contains(&(pid, st.starttime)) {
                    self.workers.push((pid, st.starttime));
                }
            }
            if is_serving(&d) {
                self.current_worker = Some(pid);
            }
        }
        self.history.push(d);
    }

    /// Receives one datagram, waiting at most ~100 ms. `None` on timeout.
    fn recv_one(&mut self) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                None
            }
            Err(e) => panic!("notify socket recv: {e}"),
        }
    }

    fn receive_pending(&mut self) {
        self.notify.set_nonblocking(true).unwrap();
        while let Some(d) = self.recv_one() {
            self.record(d);
        }
        self.notify.set_nonblocking(false).unwrap();
    }

    /// The first datagram not yet consumed that matches `pred`, waiting up to `timeout`. Datagrams
    /// before it are consumed (still in [`Hapmaster::history`]). `None` on timeout.
    pub fn try_wait_notify(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.cursor < self.history.len() {
                let i = self.cursor;
                self.cursor += 1;
                if pred(&self.history[i]) {
                    return Some(self.history[i].clone());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            if let Some(d) = self.recv_one() {
                self.record(d);
            } else if self.try_reap().is_some() {
                // The master is gone: nothing more can come once the socket is drained.
                self.receive_pending();
                if self.cursor == self.history.len() {
                    return None;
                }
            }
        }
    }

    /// Like [`Hapmaster::try_wait_notify`] but panics on timeout, showing what was received.
    pub fn wait_notify(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        match self.try_wait_notify(pred, timeout) {
            Some(d) => d,
            None => panic!(
                "no matching notify datagram within {timeout:?}; master {}; datagrams so far:\n{}",
                match self.exit {
                    Some(s) => format!("exited: {s}"),
                    None => "running".into(),
                },
                self.history_text()
            ),
        }
    }

    /// Waits for `READY=1` + `STATUS=Serving: worker pid P, ...` and returns P.
    pub fn wait_serving(&mut self, timeout: Duration) -> u32 {
        let d = self.wait_notify(is_serving, timeout);
        worker_pid_in(&d).unwrap()
    }

    /// Every datagram that arrives during `window` (also consumed). For "nothing more happens" checks.
    pub fn collect_notify(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            if let Some(d) = self.recv_one() {
                self.record(d);
            }
        }
        let out = self.history[self.cursor..].to_vec();
        self.cursor = self.history.len();
        out
    }

    pub fn history_text(&self) -> String {
        self.history
            .iter()
            .enumerate()
            .map(|(i, d)| format!("  #{i}: {}", d.replace('\n', " | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One command on the master CLI (`<runtime dir>/master.sock`), its answer read to the end.
    pub fn cli(&self, line: &str) -> String {
        let path = self.runtime_dir.join("master.sock");
        let mut s = UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        s.set_read_timeout(Some(EVENT)).unwrap();
        s.set_write_timeout(Some(EVENT)).unwrap();
        s.write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending {line:?} to {}: {e}", path.display()));
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("reading the answer to {line:?}: {e}"));
        answer
    }

    /// True while the last `RELOADING=1` received has no `READY=1` after it.
    fn reload_running(&mut self) -> bool {
        self.history()
            .iter()
            .rev()
            .find(|d| is_reloading(d) || has_line(d, "READY=1"))
            .is_some_and(|d| is_reloading(d))
    }

    /// Returns once the master has acted on every signal sent to it before this call, and no
    /// reload is running or queued: what a test needs before it counts reloads, with no quiet
    /// period that assumes a speed.
    ///
    /// Why two master CLI round trips prove it: the master is single-threaded, so a signal sent
    /// before the first command is handled (its flag set, its byte written to the self-pipe)
    /// before the master runs any code to answer that command. The second command is read in a
    /// later turn of the loop, and each turn handles the self-pipe first; a reload it starts
    /// sends `RELOADING=1` before that answer is written. A reload queued behind a running one
    /// starts in the same turn as the running one's `READY=1`.
    pub fn settle_reloads(&mut self) {
        let deadline = Instant::now() + EVENT;
        loop {
            while self.reload_running() {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_notify(|d| has_line(d, "READY=1"), left);
            }
            self.cli("show proc");
            self.cli("show proc");
            if !self.reload_running() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reloads did not settle within {EVENT:?}:\n{}",
                self.history_text()
            );
        }
    }

    /// The worker pid of the last `Serving` datagram received.
    pub fn current_worker_pid(&self) -> Option<u32> {
        self.current_worker
    }

    /// All worker pids hapmaster reported so far.
    pub fn reported_workers(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.0).collect()
    }

    /// Reported workers that are still the same, live process.
    pub fn live_reported_workers(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|(pid, start)| {
                matches!(proc_stat(*pid), Some(s) if s.starttime == *start && s.state != 'Z' && s.state != 'X')
            })
            .map(|w| w.0)
            .collect()
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: i32) {
        assert!(
            self.exit.is_none(),
            "hapmaster already exited: {:?}",
            self.exit
        );
        kill(self.pid, sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Reaps the master if it exited; its exit status.
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.exit = Some(s);
                }
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_reap())
    }

    /// SIGTERM, then wait ([`EVENT`]) for the exit; panics if it does not exit.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        self.signal(SIGTERM);
        match self.wait_exit(EVENT) {
            Some(s) => s,
            None => panic!(
                "hapmaster (pid {}) did not exit within {EVENT:?} of SIGTERM",
                self.pid
            ),
        }
    }

    /// The pid in the pidfile, if any.
    pub fn pidfile_pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    fn dump(&mut self) {
        self.receive_pending();
        eprintln!(
            "===== hapmaster pid {} ({}) stderr =====\n{}\n===== notify datagrams =====\n{}\n=====",
            self.pid,
            match self.exit {
                Some(s) => format!("exited: {s}"),
                None => "running".into(),
            },
            self.stderr(),
            self.history_text()
        );
    }
}

impl Drop for Hapmaster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        self.try_reap();
        // Children as they are now (they are reparented once the master dies). Only while the
        // master is unreaped: after that its pid may belong to someone else.
        let kids: Vec<(u32, u64)> = if self.exit.is_none() {
            children_of(self.pid)
                .into_iter()
                .map(|s| (s.pid, s.starttime))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for (pid, start) in kids.iter().chain(self.workers.iter()) {
            if matches!(proc_stat(*pid), Some(s) if s.starttime == *start && s.state != 'Z') {
                let _ = kill(*pid, SIGKILL);
            }
        }
        // Workers hapmaster never reported (it died first) are orphans by now; they name files in
        // this test's unique dir on their command line, which identifies them.
        for pid in pids_with_cmdline_containing(self.dir.path()) {
            let _ = kill(pid, SIGKILL);
        }
    }
}

/// `hapmaster --haproxy H --runtime-dir RT [extra...] -f CFG`, for a test that starts it by hand
/// (not through `Hapmaster`): no `NOTIFY_SOCKET`, stdin from /dev/null; the caller sets the rest.
pub fn hapmaster_command(runtime_dir: &Path, extra: &[&str], cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hapmaster"));
    cmd.arg("--haproxy")
        .arg(haproxy_path())
        .arg("--runtime-dir")
        .arg(runtime_dir)
        .args(extra)
        .arg("-f")
        .arg(cfg)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    cmd
}

/// One command on a master CLI socket, its answer read to the end; `Err` (saying which step) if
/// the master does not take or answer it within `limit`: for a test whose point is that the
/// master answers, where [`Hapmaster::cli`] would wait [`EVENT`] and panic.
pub fn cli_within(socket: &Path, line: &str, limit: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connecting: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("sending {line:?}: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("no answer to {line:?} within {limit:?}: {e}"))?;
    Ok(answer)
}

/// A hapmaster started by hand (not through `Hapmaster`): on drop, if the test did not wait for
/// it (a failed assertion), it gets SIGTERM so that it stops its workers too, then SIGKILL after
/// [`EVENT`], and is reaped.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.0.try_wait() {
            return Some(s);
        }
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        poll_until(timeout, || self.0.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.stop(EVENT).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
