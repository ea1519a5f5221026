//! hapmaster-fake-haproxy: a TEST TOOL, not part of hapmaster. The fault-injection tests
//! (`tests/e2e_faults.rs`) start it through `hapmaster --haproxy` to play a haproxy worker that
//! misbehaves in ways a real haproxy cannot be made to. Everything it does correctly it does as
//! haproxy 2.6 does, with hapmaster's own `_getsocks` code (`hapmaster::handoff`); only the
//! faults are hand-made.
//!
//! Started exactly like haproxy: `<passthrough args> -db -f <cfg>... -f <fragment> [-x <sock>]`,
//! `<sock>` a path or `sockpair@N` (2.6).
//! - `stats socket <path> ...` (the fragment hapmaster writes): its private stats socket, bound
//!   as haproxy does (`<path>.<pid>.tmp`, then renamed to `<path>`). `show info` gets
//!   `Version: <its version>` and `Pid: <own pid>`; `_getsocks` hands over its listeners and
//!   the stats socket itself.
//! - `fake listen <ip:port>`: a TCP listener answering every HTTP request with 200 and
//!   `hello from haproxy\n`. With `-x` it is taken from the sockets fetched there, matched by
//!   address; unmatched fetched sockets are closed. Without `-x` (or with no match) it is bound.
//! - A stats connection whose first command is `prompt ...` (after `operator -;` / `user -;`)
//!   is interactive, as haproxy's CLI (what a two-way `@@1` session of the master sends): served
//!   by a thread of its own, one answer per line (`show info`, `show version`, `flood`: 8 MiB
//!   of `x`, anything else `Unknown command.`), each ended by `\n` (`prompt i`) or `\n> `
//!   (`prompt p`; `prompt` alone toggles), until `quit` or the peer's EOF.
//! - SIGUSR1: soft stop (stops accepting, exits 0). SIGTERM / SIGINT: exits 0.
//! - `-v` / `-vv`: haproxy 2.6's version line, or `$FAKE_HAPROXY_VERSION`'s (which also decides
//!   whether `-x sockpair@N` is understood).
//!
//! Faults, each a line `fake <key> [value]` in any config file:
//! - `fake hang`: accepts `show info` but never answers.
//! - `fake ignore-sigterm`: logs SIGTERM / SIGINT and carries on (only SIGKILL stops it).
//! - `fake exit-at-start`: prints an `[ALERT]` and exits 1 at once.
//! - `fake reject-handoff`: with `-x`, fetches the sockets, then fails as haproxy does when the
//!   transfer fails ("Failed to get the sockets from the old process!", exit 1).
//! - `fake getsocks-lie <lie>`: answers `_getsocks` on its stats socket (the master fetching
//!   from it) with a lie, see [`Lie`].
//! - `fake handoff-stall`: with `-x`, sends `_getsocks` one byte every 400 ms, reads the count,
//!   then never acks nor reads on; once the master closes that connection, fails as
//!   `reject-handoff` does.
//! - `fake stall-marker <path>`: creates `<path>` once a stall (`handoff-stall`, the `trickle`
//!   lie) has begun: the master is then in the middle of that conversation.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapmaster::handoff::fetch::{fetch_from_stream, fetch_sockets, ReceivedSocket};
use hapmaster::handoff::listeners::SocketInfo;
use hapmaster::handoff::serve::serve_getsocks;
use hapmaster::handoff::wire::{encode_record, Record};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, ControlMessage, MsgFlags, UnixAddr};

const HELLO: &str = "hello from haproxy\n";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longer than the master's 1 s per-operation `_getsocks` timeout.
const STALL: Duration = Duration::from_millis(2500);

/// Ways to answer `_getsocks` wrongly. N is the number of sockets there are to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// Announces N+1, sends the N in one batch, reads the ack, closes.
    CountLarger,
    /// Announces N, sends N+1 fds (the first twice) with N+1 records.
    ExtraFds,
    /// N fds whose records lack their last 3 bytes; reads the ack, closes.
    TruncatedRecord,
    /// N fds, their records, then 64 bytes of garbage in the same message.
    TrailingGarbage,
    /// N fds, their records, then 300 KiB: more than any valid batch can carry.
    Oversized,
    /// N pipes instead of the sockets, with valid records.
    Pipes,
    /// The N records as plain data, no fds.
    DataWithoutFds,
    /// One batch per fd, sent without waiting for any ack; the connection stays open. Valid data:
    /// a tolerant client takes all the sockets.
    NoAcks,
    /// Announces N, then sleeps longer than the client's timeout, then closes.
    Stall,
    /// Announces N, sends the first fd only, closes without waiting for the ack.
    CloseMid,
    /// Announces N, sends the N fds with the first byte of their records, then one more byte
    /// every 600 ms (from a thread of its own: the fake goes on answering): a client sees
    /// progress, but the transfer lasts longer than its whole deadline.
    Trickle,
}

impl Lie {
    fn parse(word: &str) -> Option<Lie> {
        Some(match word {
            "count-larger" => Lie::CountLarger,
            "extra-fds" => Lie::ExtraFds,
            "truncated-record" => Lie::TruncatedRecord,
            "trailing-garbage" => Lie::TrailingGarbage,
            "oversized" => Lie::Oversized,
            "pipes" => Lie::Pipes,
            "data-without-fds" => Lie::DataWithoutFds,
            "no-acks" => Lie::NoAcks,
            "stall" => Lie::Stall,
            "close-mid" => Lie::CloseMid,
            "trickle" => Lie::Trickle,
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
struct Config {
    stats_socket: Option<PathBuf>,
    handoff: Option<PathBuf>,
    listens: Vec<SocketAddr>,
    hang: bool,
    ignore_sigterm: bool,
    exit_at_start: bool,
    reject_handoff: bool,
    handoff_stall: bool,
    stall_marker: Option<PathBuf>,
    lie: Option<Lie>,
}

fn pid() -> u32 {
    std::process::id()
}

fn alert(msg: &str) {
    eprintln!("[ALERT]    ({}) : {msg}", pid());
}

fn notice(msg: &str) {
    eprintln!("[NOTICE]   ({}) : fake: {msg}", pid());
}

fn warning(msg: &str) {
    eprintln!("[WARNING]  ({}) : fake: {msg}", pid());
}

fn main() -> ExitCode {
    // hapmaster reads the version before it starts a worker.
    if std::env::args_os().skip(1).any(|a| a == "-v" || a == "-vv") {
        println!(
            "HAProxy version {} 2023/03/28 - https://haproxy.org/",
            version()
        );
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            alert(&msg);
            ExitCode::from(1)
        }
    }
}

fn parse_args() -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-f" {
            let file = args.next().ok_or("-f needs a file")?;
            parse_file(Path::new(&file), &mut cfg)?;
        } else if arg == "-x" {
            cfg.handoff = Some(args.next().ok_or("-x needs a socket path")?.into());
        }
        // Everything else (-db, -q, passthrough flags) is accepted and ignored.
    }
    Ok(cfg)
}

fn parse_file(path: &Path, cfg: &mut Config) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config : cannot open '{}': {e}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = || format!("parsing [{}:{}]", path.display(), n + 1);
        match words.as_slice() {
            ["stats", "socket", sock, ..] => cfg.stats_socket = Some(PathBuf::from(sock)),
            ["fake", "listen", addr] => cfg.listens.push(
                addr.parse()
                    .map_err(|e| format!("{} : bad address '{addr}': {e}", at()))?,
            ),
            ["fake", "hang"] => cfg.hang = true,
            ["fake", "ignore-sigterm"] => cfg.ignore_sigterm = true,
            ["fake", "exit-at-start"] => cfg.exit_at_start = true,
            ["fake", "reject-handoff"] => cfg.reject_handoff = true,
            ["fake", "handoff-stall"] => cfg.handoff_stall = true,
            ["fake", "stall-marker", path] => cfg.stall_marker = Some(PathBuf::from(path)),
            ["fake", "getsocks-lie", word] => {
                cfg.lie = Some(
                    Lie::parse(word).ok_or_else(|| format!("{} : unknown lie '{word}'", at()))?,
                )
            }
            ["fake", ..] => return Err(format!("{} : unknown fake directive '{line}'", at())),
            _ => {}
        }
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let cfg = parse_args()?;
    if cfg.exit_at_start {
        return Err("config : fake exit-at-start: fatal errors found in configuration.".into());
    }
    let stats_path = cfg
        .stats_socket
        .clone()
        .ok_or("config : no 'stats socket' line in any -f file")?;
    let (stop, term, wake) = install_signals().map_err(|e| format!("signals: {e}"))?;
    let listeners = open_listeners(&cfg)?;
    let stats = bind_stats(&stats_path).map_err(|e| {
        format!(
            "Starting frontend GLOBAL: cannot bind UNIX socket [{}]: {e}",
            stats_path.display()
        )
    })?;
    notice(&format!(
        "ready: {} listener(s), stats socket {}{}",
        listeners.len(),
        stats_path.display(),
        match cfg.lie {
            Some(l) => format!(", will lie on _getsocks: {l:?}"),
            None => String::new(),
        }
    ));
    let mut worker = Worker {
        cfg,
        listeners,
        stats,
        hung: Vec::new(),
        lingering: Vec::new(),
    };
    worker.serve(&stop, &term, &wake)
}

type Flag = Arc<AtomicBool>;

/// (SIGUSR1, SIGTERM or SIGINT, wake-up pipe).
fn install_signals() -> io::Result<(Flag, Flag, UnixStream)> {
    let (rx, tx) = UnixStream::pair()?;
    rx.set_nonblocking(true)?;
    tx.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGUSR1, Arc::clone(&stop))?;
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term))?;
    }
    for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
        signal_hook::low_level::pipe::register(sig, tx.try_clone()?)?;
    }
    Ok((stop, term, rx))
}

/// `$FAKE_HAPROXY_VERSION` (e.g. `2.5.14`, to play a haproxy that only takes `-x <path>`), else
/// 2.6.12.
fn version() -> String {
    std::env::var("FAKE_HAPROXY_VERSION").unwrap_or_else(|_| "2.6.12-fake".into())
}

fn takes_sockpair() -> bool {
    let v = version();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (2, 6)
}

/// `-x <path>`, or `-x sockpair@N` as haproxy 2.6 does it: a socketpair, one end sent over the
/// inherited fd N (two data bytes and the fd), `_getsocks` on the other.
fn fetch_handoff(x: &Path) -> Result<Vec<ReceivedSocket>, String> {
    match sockpair_fd(x) {
        None => fetch_sockets(x, TIMEOUT).map_err(|e| e.to_string()),
        Some(fd) => fetch_from_stream(&sockpair_stream(x, fd)?, TIMEOUT).map_err(|e| e.to_string()),
    }
}

/// The N of `-x sockpair@N`, when this version takes it. Before 2.6, `sockpair@N` is a path like
/// any other (and fails).
fn sockpair_fd(x: &Path) -> Option<&str> {
    let sockpair = x.to_str().and_then(|x| x.strip_prefix("sockpair@"));
    sockpair.filter(|_| takes_sockpair())
}

/// A socketpair whose other end went over the inherited fd `fd`: where `_getsocks` is asked.
fn sockpair_stream(x: &Path, fd: &str) -> Result<UnixStream, String> {
    let fd: RawFd = fd.parse().map_err(|e| format!("-x {}: {e}", x.display()))?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    let raw = [theirs.as_raw_fd()];
    let rights = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(&[0, 0])];
    socket::sendmsg::<UnixAddr>(fd, &iov, &rights, MsgFlags::MSG_NOSIGNAL, None).map_err(|e| {
        format!(
            "Cannot transfer the fd {} over sockpair@{fd}. Giving up. ({e})",
            raw[0]
        )
    })?;
    drop(theirs);
    Ok(ours)
}

/// `fake handoff-stall`: asks `_getsocks` on the `-x` channel one byte at a time, reads the
/// count, then stalls until the master gives up on this conversation (closes it). The error to
/// exit with.
fn stall_handoff(x: &Path, marker: Option<&Path>) -> String {
    let stream = match sockpair_fd(x) {
        None => UnixStream::connect(x).map_err(|e| format!("connect {}: {e}", x.display())),
        Some(fd) => sockpair_stream(x, fd),
    };
    let stalled = stream.and_then(|mut stream| {
        // The command one byte every 400 ms: the master's conversation lasts about as long as
        // its whole bound on it (5 s), not just one operation's second.
        for (i, byte) in b"_getsocks\n".iter().enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(400));
            }
            stream
                .write_all(&[*byte])
                .map_err(|e| format!("_getsocks: {e}"))?;
            if i == 0 {
                mark_stall(marker);
            }
        }
        stream
            .read_exact(&mut [0u8; 4])
            .map_err(|e| format!("reading the count: {e}"))?;
        notice("handoff-stall: got the socket count, not acking");
        // POLLRDHUP: the master closed, whatever it had sent that this side never read. (nix's
        // PollFlags has no POLLRDHUP.)
        let mut p = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        while unsafe { libc::poll(&mut p, 1, -1) } < 1 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        Ok(())
    });
    format!(
        "fake handoff-stall: {}, then: Failed to get the sockets from the old process!",
        match stalled {
            Ok(()) => "the master closed the handoff".to_string(),
            Err(e) => e,
        }
    )
}

/// Creates the `fake stall-marker` file, if any: the stall has begun.
fn mark_stall(marker: Option<&Path>) {
    if let Some(path) = marker {
        if let Err(e) = std::fs::write(path, format!("{}\n", pid())) {
            warning(&format!("stall-marker {}: {e}", path.display()));
        }
    }
}

fn open_listeners(cfg: &Config) -> Result<Vec<TcpListener>, String> {
    let mut fetched: Vec<Option<OwnedFd>> = Vec::new();
    if let Some(path) = &cfg.handoff {
        if cfg.handoff_stall {
            return Err(stall_handoff(path, cfg.stall_marker.as_deref()));
        }
        let received = fetch_handoff(path)
            .map_err(|e| format!("Failed to get the sockets from the old process! ({e})"))?;
        if cfg.reject_handoff {
            return Err(format!(
                "fake reject-handoff: got {} sockets, then: Failed to get the sockets from the old process!",
                received.len()
            ));
        }
        fetched = received.into_iter().map(|r| Some(r.fd)).collect();
    }
    let mut out = Vec::new();
    for addr in &cfg.listens {
        let found = fetched.iter_mut().find(|slot| {
            slot.as_ref().is_some_and(|fd| {
                SocketInfo::of(fd.as_fd()).is_ok_and(|info| {
                    info.sock_type == libc::SOCK_STREAM
                        && info.local.parse::<SocketAddr>().ok() == Some(*addr)
                })
            })
        });
        let listener = match found.and_then(Option::take) {
            Some(fd) => TcpListener::from(fd),
            None => {
                if cfg.handoff.is_some() {
                    warning(&format!(
                        "no socket handed over for {addr}: binding a new one"
                    ));
                }
                TcpListener::bind(addr).map_err(|e| {
                    format!("Starting frontend fe: cannot bind socket [{addr}]: {e}")
                })?
            }
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{addr}: {e}"))?;
        out.push(listener);
    }
    // The fetched sockets that matched no listener are closed here, as haproxy does.
    Ok(out)
}

fn bind_stats(path: &Path) -> io::Result<UnixListener> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".{}.tmp", pid()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

struct Worker {
    cfg: Config,
    listeners: Vec<TcpListener>,
    stats: UnixListener,
    /// `show info` connections a hanging worker never answers.
    hung: Vec<UnixStream>,
    /// `_getsocks` connections left open on purpose.
    lingering: Vec<UnixStream>,
}

impl Worker {
    fn serve(&mut self, stop: &Flag, term: &Flag, wake: &UnixStream) -> Result<(), String> {
        loop {
            let (woke, stats_ready, ready) = {
                let mut fds = vec![
                    PollFd::new(wake.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.stats.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(
                    self.listeners
                        .iter()
                        .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN)),
                );
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("poll: {e}")),
                }
                let ready: Vec<bool> = fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect();
                (ready[0], ready[1], ready[2..].to_vec())
            };
            if woke {
                let mut buf = [0u8; 64];
                while matches!((&*wake).read(&mut buf), Ok(n) if n > 0) {}
            }
            if term.swap(false, Ordering::SeqCst) {
                if self.cfg.ignore_sigterm {
                    warning("received SIGTERM/SIGINT: ignored (fake ignore-sigterm)");
                } else {
                    notice("received SIGTERM/SIGINT: exiting");
                    return Ok(());
                }
            }
            if stop.swap(false, Ordering::SeqCst) {
                notice("received SIGUSR1: soft stop, no longer accepting; exiting");
                self.listeners.clear();
                return Ok(());
            }
            if stats_ready {
                while let Ok((stream, _)) = self.stats.accept() {
                    self.stats_client(stream);
                }
            }
            for (i, is_ready) in ready.into_iter().enumerate() {
                if is_ready {
                    while let Ok((stream, _)) = self.listeners[i].accept() {
                        http_client(stream);
                    }
                }
            }
        }
    }

    /// What `_getsocks` hands over: the listeners and the stats socket, by ascending fd (2.4+).
    fn exported(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds: Vec<BorrowedFd<'_>> = self.listeners.iter().map(|l| l.as_fd()).collect();
        fds.push(self.stats.as_fd());
        fds.sort_by_key(|fd| fd.as_raw_fd());
        fds
    }

    fn stats_client(&mut self, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let Some(line) = peek_line(&stream) else {
            return;
        };
        if line.starts_with(b"_getsocks") {
            match self.cfg.lie {
                Some(lie) => self.lie(stream, lie),
                None => {
                    let record = Record::default();
                    let list: Vec<(BorrowedFd<'_>, &Record)> = self
                        .exported()
                        .into_iter()
                        .map(|fd| (fd, &record))
                        .collect();
                    if let Err(e) = serve_getsocks(&stream, &list, TIMEOUT) {
                        warning(&format!("_getsocks: {e}"));
                    }
                }
            }
            return;
        }
        let mut consumed = vec![0u8; line.len()];
        if (&stream).read_exact(&mut consumed).is_err() {
            return;
        }
        if without_levels(&line).starts_with(b"prompt") {
            std::thread::spawn(move || interactive(stream, line));
            return;
        }
        // A command opening a payload (`<<`, `<<TAG`): its lines follow up to the master's write
        // shutdown; read them (bounded) as haproxy's CLI would, so that closing leaves nothing
        // unread (which would reset the master's connection).
        if line.windows(2).any(|w| w == b"<<") {
            let _ = io::copy(&mut (&stream).take(1 << 20), &mut io::sink());
        }
        if line.starts_with(b"show info") {
            if self.cfg.hang {
                self.hung.push(stream);
                return;
            }
            let reply = format!("Name: HAProxy\nVersion: {}\nPid: {}\n", version(), pid());
            let _ = (&stream).write_all(reply.as_bytes());
        } else {
            let _ = (&stream).write_all(b"Unknown command.\n");
        }
    }

    fn lie(&mut self, stream: UnixStream, lie: Lie) {
        let mut command = [0u8; 10];
        if (&stream).read_exact(&mut command).is_err() {
            return;
        }
        let fds: Vec<RawFd> = self.exported().iter().map(|fd| fd.as_raw_fd()).collect();
        let n = fds.len();
        notice(&format!("_getsocks: lying ({lie:?}) about {n} sockets"));
        let result = match lie {
            Lie::CountLarger => send_count(&stream, n + 1)
                .and_then(|()| send_batch(&stream, &fds, &records(n)))
                .map(|()| read_ack(&stream)),
            Lie::ExtraFds => {
                let mut more = fds.clone();
                more.push(fds[0]);
                send_count(&stream, n)
                    .and_then(|()| send_batch(&stream, &more, &records(n + 1)))
                    .map(|()| read_ack(&stream))
            }
            Lie::TruncatedRecord => {
                let data = records(n);
                send_count(&stream, n)
                    .and_then(|()| send_batch(&stream, &fds, &data[..data.len() - 3]))
                    .map(|()| read_ack(&stream))
            }
            Lie::TrailingGarbage => {
                let mut data = records(n);
                data.extend_from_slice(&[0xA5; 64]);
                send_count(&stream, n)
                    .and_then(|()| send_batch(&stream, &fds, &data))
                    .map(|()| read_ack(&stream))
            }
            Lie::Oversized => {
                let mut data = records(n);
                data.resize(data.len() + 300 * 1024, 0xFF);
                send_count(&stream, n).and_then(|()| send_batch(&stream, &fds, &data))
            }
            Lie::Pipes => {
                let pipes: Vec<(OwnedFd, OwnedFd)> = (0..n)
                    .filter_map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok())
                    .collect();
                let raw: Vec<RawFd> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
                send_count(&stream, n)
                    .and_then(|()| send_batch(&stream, &raw, &records(n)))
                    .map(|()| read_ack(&stream))
            }
            Lie::DataWithoutFds => send_count(&stream, n)
                .and_then(|()| (&stream).write_all(&records(n)))
                .map(|()| read_ack(&stream)),
            Lie::NoAcks => {
                let sent = send_count(&stream, n).and_then(|()| {
                    fds.iter()
                        .try_for_each(|fd| send_batch(&stream, &[*fd], &records(1)))
                });
                self.lingering.push(stream);
                sent
            }
            Lie::Stall => send_count(&stream, n).map(|()| std::thread::sleep(STALL)),
            Lie::CloseMid => {
                send_count(&stream, n).and_then(|()| send_batch(&stream, &fds[..1], &records(1)))
            }
            Lie::Trickle => {
                let marker = self.cfg.stall_marker.clone();
                send_count(&stream, n).and_then(|()| {
                    let data = records(n);
                    send_batch(&stream, &fds, &data[..1])?;
                    mark_stall(marker.as_deref());
                    // The fds are the worker's own, open as long as it runs.
                    std::thread::spawn(move || trickle(&stream, &data[1..]));
                    Ok(())
                })
            }
        };
        if let Err(e) = result {
            notice(&format!("_getsocks lie {lie:?}: {e}"));
        }
    }
}

/// One byte of `data` every 600 ms, until it is all out or the client has gone.
fn trickle(stream: &UnixStream, data: &[u8]) {
    for byte in data {
        std::thread::sleep(Duration::from_millis(600));
        if socket::send(stream.as_raw_fd(), &[*byte], MsgFlags::MSG_NOSIGNAL).is_err() {
            notice("_getsocks trickle: the client has gone");
            return;
        }
    }
}

/// The first line the client sent, without consuming it; `None` on EOF or after 1 s.
fn peek_line(stream: &UnixStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 64];
    loop {
        let n = socket::recv(stream.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK).ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            return Some(buf[..=end].to_vec());
        }
        if n == buf.len() || Instant::now() >= deadline {
            return Some(buf[..n].to_vec());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A command without the level a master puts first (`operator -;`, `user -;`).
fn without_levels(line: &[u8]) -> &[u8] {
    let mut line = line;
    for level in [&b"operator -;"[..], b"user -;"] {
        line = line.strip_prefix(level).unwrap_or(line);
    }
    line
}

/// An interactive CLI connection (its first line in): one answer per line until `quit` or EOF.
/// Bounded by a read timeout, so that a forgotten connection ends its thread.
fn interactive(stream: UnixStream, first: Vec<u8>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(None);
    let mut reader = io::BufReader::new(&stream);
    let mut line = first;
    let mut prompt = false;
    loop {
        let text = String::from_utf8_lossy(without_levels(&line))
            .trim()
            .to_string();
        let answer = match text.as_str() {
            "quit" => return,
            t if t.starts_with("prompt") => {
                let args: Vec<&str> = t.split_whitespace().skip(1).collect();
                prompt = if args.is_empty() {
                    !prompt
                } else {
                    args.contains(&"p")
                };
                String::new()
            }
            "show info" => format!("Name: HAProxy\nVersion: {}\nPid: {}\n", version(), pid()),
            "show version" => format!("{}\n", version()),
            "flood" => "x".repeat(8 << 20) + "\n",
            _ => "Unknown command.\n".to_string(),
        };
        let end = if prompt { "\n> " } else { "\n" };
        if (&stream)
            .write_all(format!("{answer}{end}").as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
        match io::BufRead::read_until(&mut reader, b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn records(n: usize) -> Vec<u8> {
    let mut data = Vec::new();
    for _ in 0..n {
        let _ = encode_record(&Record::default(), &mut data);
    }
    data
}

fn send_count(stream: &UnixStream, n: usize) -> io::Result<()> {
    let count = i32::try_from(n).unwrap_or(i32::MAX);
    (&*stream).write_all(&count.to_ne_bytes())
}

/// One sendmsg carrying `fds` and `data`; the rest of `data`, if the kernel took only part of it,
/// follows as plain data.
fn send_batch(stream: &UnixStream, fds: &[RawFd], data: &[u8]) -> io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let iov = [IoSlice::new(data)];
    let sent = socket::sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &iov,
        &rights,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    (&*stream).write_all(&data[sent..])
}

fn read_ack(stream: &UnixStream) {
    let mut ack = [0u8; 4];
    let _ = (&*stream).read_exact(&mut ack);
}

fn http_client(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match (&stream).read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let reply = format!(
        "HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{HELLO}",
        HELLO.len()
    );
    let _ = (&stream).write_all(reply.as_bytes());
}
