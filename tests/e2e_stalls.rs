//! Issue 12: no peer can stall the master. Each test sets up one stalled or hostile peer of the
//! issue's list (a worker that does not answer a forwarded command, clients that fill the master
//! CLI, clients that flood or trickle, a `_getsocks` client that never acks) and asserts the
//! issue's figure for everyone else: `show proc` answered within 100 ms, reloads that succeed.
//! Cases 3 and 4 (the master's stderr, sd_notify) are in e2e_stderr_stall.rs and
//! e2e_notify_stall.rs. See tests/stalls/mod.rs for how the latencies are measured.
mod common;
mod stalls;

use common::*;
use stalls::*;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const SIGSTOP: i32 = libc::SIGSTOP;
const SIGCONT: i32 = libc::SIGCONT;

fn serving(port: u16, extra: &[&str]) -> Hapmaster {
    Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), extra)
}

/// SIGCONT to a worker this test stopped, when the test ends however it ends.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = kill(self.0, SIGCONT);
    }
}

/// Case 1: `@1` forwarded to a SIGSTOPped worker. `show proc` from another client answers
/// within 100 ms while it is pending, and a reload at the same time succeeds (it ends while the
/// forwarded commands still wait for the stopped worker).
#[test]
fn forwarding_to_a_stopped_worker_delays_nothing_else() {
    let port = free_port();
    let mut hm = serving(port, &[]);
    let old = hm.current_worker_pid().unwrap();
    let master = master_sock(&hm.runtime_dir);
    let resume = Resume(old);
    kill(old, SIGSTOP).unwrap();
    poll_until(EVENT, || (proc_stat(old)?.state == 'T').then_some(()))
        .unwrap_or_else(|| panic!("worker {old} not stopped within {EVENT:?}"));
    // Four forwarded commands, each bounded by the master's forward timeout (5 s): 20 s during
    // which this client waits, far longer than a reload takes.
    let mut forward = UnixStream::connect(&master).unwrap();
    forward
        .write_all("@1 show info;".repeat(4).as_bytes())
        .unwrap();
    forward.write_all(b"\n").unwrap();
    // The master has read the line and connected to the stopped worker's stats socket: its
    // connection waits in that listener's queue.
    let worker_sockets = hm.runtime_dir.join("worker-");
    poll_until(EVENT, || {
        (unaccepted_connections(&worker_sockets) > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the master did not connect to worker {old}'s stats socket"));
    let stalled = || -> Result<(), String> {
        if peer_closed(&forward) {
            return Err("the @1 client has its whole answer".into());
        }
        match proc_stat(old) {
            Some(s) if s.state == 'T' => Ok(()),
            other => Err(format!("worker {old} is no longer stopped: {other:?}")),
        }
    };
    let show = during_stall("show proc on master.sock while @1 waits", &stalled, || {
        show_proc_latency(&master)
    });
    // A reload while the forwarded commands wait.
    let sent = Instant::now();
    hm.signal(SIGUSR2);
    let d = hm.wait_notify(
        |d| (is_serving(d) && worker_pid_in(d) != Some(old)) || is_reload_failed(d),
        EVENT,
    );
    let reload_took = sent.elapsed();
    let pending = stalled();
    let reload = format!(
        "reload: {:?} after {reload_took:.1?}; the @1 client then: {}",
        notify_field(&d, "STATUS").unwrap_or(""),
        match &pending {
            Ok(()) => "still waiting".to_string(),
            Err(why) => why.clone(),
        }
    );
    eprintln!("figures: {show}; {reload}");
    drop(resume);
    assert!(show.ok(), "{show}; {reload}");
    assert!(is_serving(&d) && pending.is_ok(), "{show}; {reload}");
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
}

/// The `-x` a worker was started with, for haproxy 2.6 and later its own socketpair.
fn handoff_argument(pid: u32) -> Option<String> {
    let args = cmdline_args(pid);
    let at = args.iter().position(|a| a == "-x")?;
    args.get(at + 1).cloned()
}

/// The new worker took the listening socket it was handed over its own channel: same inode,
/// and `-x sockpair@N`, not master.sock.
fn assert_handed_over_its_own_channel(
    port: u16,
    before: &std::collections::BTreeSet<u64>,
    pid: u32,
) {
    assert_eq!(
        &tcp4_listen_inodes(port),
        before,
        "worker pid {pid} bound a new socket instead of taking over the held one"
    );
    let x = handoff_argument(pid);
    assert!(
        x.as_deref().is_some_and(|x| x.starts_with("sockpair@")),
        "worker pid {pid} was started with -x {x:?}, not its own socketpair"
    );
}

/// 16 idle prompt sessions on master.sock, then a reload, which must succeed. Returns the
/// listening inodes of `port` before it, the new worker, and the sessions (still open).
fn reload_beside_idle_sessions(
    hm: &mut Hapmaster,
    port: u16,
) -> (std::collections::BTreeSet<u64>, u32, Vec<UnixStream>) {
    let old = hm.current_worker_pid().unwrap();
    let inodes = tcp4_listen_inodes(port);
    assert_eq!(inodes.len(), 1, "one listening socket on port {port}");
    let master = master_sock(&hm.runtime_dir);
    let idle: Vec<UnixStream> = (0..16)
        .map(|_| prompt_session(UnixStream::connect(&master).unwrap()))
        .collect();
    hm.signal(SIGUSR2);
    let d = hm.wait_notify(
        |d| (is_serving(d) && worker_pid_in(d) != Some(old)) || is_reload_failed(d),
        EVENT,
    );
    let status = notify_field(&d, "STATUS").unwrap_or("").to_string();
    eprintln!("figures: reload with 16 idle prompt sessions: {status:?}");
    assert!(
        is_serving(&d),
        "reload with 16 idle prompt sessions: {status:?}"
    );
    (inodes, worker_pid_in(&d).unwrap(), idle)
}

/// Case 2, first half: 16 idle prompt sessions on master.sock, then a reload: Success.
#[test]
fn idle_sessions_leave_the_handoff_its_channel() {
    let port = free_port();
    let mut hm = serving(port, &[]);
    let (inodes, new, idle) = reload_beside_idle_sessions(&mut hm, port);
    assert_handed_over_its_own_channel(port, &inodes, new);
    drop(idle);
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
}

/// Case 2 for haproxy 1.8 to 2.5, which only take `-x <path>` (played by the fake haproxy as
/// 2.5.14): 16 idle prompt sessions on master.sock, then a reload: Success. The new worker was
/// given its own `handoff-<G>.sock`, not master.sock, and the file is gone once it is served.
#[test]
fn idle_sessions_leave_an_older_haproxys_handoff_its_socket() {
    let port = free_port();
    let dir = TestDir::new();
    let haproxy = fake_haproxy_of_version(&dir, "2.5.14");
    let cfg = fake_config::<&str>(port, &[]);
    let mut hm = Hapmaster::start_in(dir, cfg, &["--haproxy", haproxy.to_str().unwrap()]);
    hm.wait_serving(EVENT);
    let (inodes, new, idle) = reload_beside_idle_sessions(&mut hm, port);
    assert_eq!(
        &tcp4_listen_inodes(port),
        &inodes,
        "worker pid {new} bound a new socket"
    );
    let x = handoff_argument(new).map(std::path::PathBuf::from);
    let own = x.as_ref().filter(|x| {
        x.parent() == Some(hm.runtime_dir.as_path())
            && x.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("handoff-"))
    });
    let own = own.unwrap_or_else(|| panic!("worker pid {new} was started with -x {x:?}"));
    assert!(!own.exists(), "{} is left after the handoff", own.display());
    drop(idle);
    assert!(hm.stop().success());
}

/// Case 2, second half: 50 concurrent `hapmaster reload` all exit 0 (coalesced into a few
/// reloads).
#[test]
fn fifty_concurrent_reload_clients_all_succeed() {
    let port = free_port();
    let mut hm = serving(port, &[]);
    let inodes = tcp4_listen_inodes(port);
    assert_eq!(inodes.len(), 1, "one listening socket on port {port}");
    let master = master_sock(&hm.runtime_dir);
    let clients: Vec<_> = (0..50)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_hapmaster"))
                .args(["reload", "-S"])
                .arg(&master)
                .args(["--timeout", "60s"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning hapmaster reload")
        })
        .collect();
    // Each client bounds its own wait (--timeout).
    let outcomes: Vec<(Option<i32>, String)> = clients
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("waiting for hapmaster reload");
            (
                out.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
        .collect();
    hm.settle_reloads();
    let reloads = hm.history().iter().filter(|d| is_reloading(d)).count();
    let failed_reloads = hm.history().iter().filter(|d| is_reload_failed(d)).count();
    let ok = outcomes.iter().filter(|(c, _)| *c == Some(0)).count();
    let first_failure = outcomes
        .iter()
        .find(|(c, _)| *c != Some(0))
        .map(|(c, t)| format!("; first failure: exit {c:?}: {t}"))
        .unwrap_or_default();
    let figures = format!(
        "50 concurrent reload clients: {ok} exit 0, {} not; {reloads} reloads ran, {failed_reloads} failed{first_failure}",
        50 - ok
    );
    eprintln!("figures: {figures}");
    assert_eq!(ok, 50, "{figures}");
    let current = hm.current_worker_pid().unwrap();
    assert_handed_over_its_own_channel(port, &inodes, current);
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
}

/// A client that sends `prompt` then writes `data` over and over without reading, until told to
/// stop or the master closes; counts its writes.
struct Flooder {
    writes: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

fn flood(stream: &UnixStream, data: Arc<Vec<u8>>, stop: Arc<AtomicBool>) -> Flooder {
    let mut s = stream.try_clone().unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicBool::new(false));
    let (w, c) = (writes.clone(), closed.clone());
    let thread = thread::spawn(move || {
        if s.write_all(b"prompt\n").is_err() {
            c.store(true, Ordering::Relaxed);
            return;
        }
        s.set_nonblocking(true).unwrap();
        let mut at = 0;
        while !stop.load(Ordering::Relaxed) {
            match (&s).write(&data[at..]) {
                Ok(n) => {
                    at = (at + n) % data.len();
                    w.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Wait for room (bounded, to look at `stop` again).
                    let mut p = libc::pollfd {
                        fd: s.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 50) };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
    Flooder {
        writes,
        closed,
        thread,
    }
}

/// Bytes `s` has sent that its peer has not read yet (SIOCOUTQ).
fn unread_by_peer(s: &UnixStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "SIOCOUTQ: {}", io::Error::last_os_error());
    n as usize
}

/// True if the master is asleep while every flooder still open has data queued to it that no
/// flooder wrote since before the look at the master: so it slept with their input readable, it
/// does not read them (backpressure, or not accepted).
fn master_ignores(master: u32, sessions: &[UnixStream], flooders: &[Flooder]) -> bool {
    let writes = |f: &[Flooder]| -> Vec<usize> {
        f.iter().map(|f| f.writes.load(Ordering::SeqCst)).collect()
    };
    let before = writes(flooders);
    let asleep = proc_stat(master).is_some_and(|s| s.state == 'S');
    let queued = sessions
        .iter()
        .zip(flooders)
        .all(|(s, f)| f.closed.load(Ordering::SeqCst) || unread_by_peer(s) > 0);
    asleep && queued && writes(flooders) == before
}

/// The master's RSS (VmRSS, VmHWM) not to reach with 16 flooding sessions.
const FLOOD_RSS_LIMIT_KIB: u64 = 32 * 1024;

/// What flooding the master left.
struct Flooded {
    /// Some(true): stopped when the master passed the limit; Some(false): the master took no
    /// more of the flood; None: it still took more after [`EVENT`].
    over: Option<bool>,
    flooded_for: Duration,
    closed_by_master: usize,
    /// The master's VmHWM in KiB.
    hwm: u64,
}

impl std::fmt::Display for Flooded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "master VmHWM {} KiB after {:.1?} of flooding ({}; {} sessions closed by the master)",
            self.hwm,
            self.flooded_for,
            match self.over {
                Some(true) => "stopped when it passed the limit",
                Some(false) => "the master took no more of it",
                None => "the master still took more",
            },
            self.closed_by_master
        )
    }
}

/// Each of `sessions` sends `help;` × 13 000 per line and never reads, until the master takes no
/// more of it (or has grown past the limit: no need to grow it further to see it fail).
fn flood_master(master_pid: u32, sessions: &[UnixStream]) -> Flooded {
    let mut line = "help;".repeat(13_000).into_bytes();
    line.push(b'\n');
    let line = Arc::new(line);
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<Flooder> = sessions
        .iter()
        .map(|s| flood(s, line.clone(), stop.clone()))
        .collect();
    let started = Instant::now();
    let over = poll_until(EVENT, || {
        if status_kib(master_pid, "VmRSS").unwrap_or(0) > FLOOD_RSS_LIMIT_KIB {
            return Some(true);
        }
        master_ignores(master_pid, sessions, &flooders).then_some(false)
    });
    let flooded_for = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let closed_by_master = flooders
        .iter()
        .filter(|f| f.closed.load(Ordering::Relaxed))
        .count();
    for f in flooders {
        f.thread.join().unwrap();
    }
    Flooded {
        over,
        flooded_for,
        closed_by_master,
        hwm: status_kib(master_pid, "VmHWM").unwrap_or(0),
    }
}

/// Case 5: 16 sessions as `nobody` on a mode-666 `-S` socket send `help;` × 13 000 per line and
/// never read. The master stays under 32 MiB RSS and root's `show proc` on the same socket
/// answers within 100 ms.
#[test]
fn flooding_sessions_are_bounded_and_root_gets_in() {
    if !is_root() {
        eprintln!("skipped: needs root (the flooding clients run as nobody)");
        return;
    }
    let (mut hm, _port, cli) = Hapmaster::serving_with_cli(&[]);
    let sessions = connect_as(NOBODY, &cli, 16);
    let flooded = flood_master(hm.pid(), &sessions);
    // The sessions the master kept (it may refuse some of another user's) stay open.
    let stalled = none_closed_from_now(&sessions);
    let show = during_stall("root's show proc on the -S socket", &stalled, || {
        show_proc_latency(&cli)
    });
    let figures = format!("{flooded}; {show}");
    eprintln!("figures: {figures}");
    assert!(flooded.over.is_some(), "{figures}");
    assert!(flooded.hwm < FLOOD_RSS_LIMIT_KIB, "{figures}");
    assert!(show.ok(), "{figures}");
    drop(stalled);
    drop(sessions);
    assert!(hm.stop().success());
}

/// Case 5 without the session limits' help: 16 sessions of root on master.sock (none is refused)
/// send `help;` × 13 000 per line and never read. Backpressure alone keeps the master under
/// 32 MiB RSS.
#[test]
fn flooding_sessions_of_root_are_bounded_too() {
    let mut hm = serving(free_port(), &[]);
    let master = master_sock(&hm.runtime_dir);
    let sessions: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&master).unwrap())
        .collect();
    let flooded = flood_master(hm.pid(), &sessions);
    eprintln!("figures: 16 sessions of root on master.sock: {flooded}");
    assert!(flooded.over.is_some(), "{flooded}");
    assert!(flooded.hwm < FLOOD_RSS_LIMIT_KIB, "{flooded}");
    drop(sessions);
    assert!(hm.stop().success());
}

/// Bytes `s` has received that it has not read yet (SIOCINQ).
fn unread_by_us(s: &UnixStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes one int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "SIOCINQ: {}", io::Error::last_os_error());
    n as usize
}

/// Case 5, for forwarded answers: `@1 show map` of a 200 000-entry map (about 8 MB) to a client
/// that does not read is streamed with backpressure, not collected: the master grows by less
/// than 1 MiB, answers `show proc` meanwhile, and the client gets the whole answer once it reads.
#[test]
fn a_large_forwarded_answer_is_streamed_with_backpressure() {
    const ENTRIES: usize = 200_000;
    const GROWTH_LIMIT_KIB: u64 = 1024;
    let dir = TestDir::new();
    let map = dir.join("big.map");
    let mut text = String::with_capacity(ENTRIES * 32);
    for i in 0..ENTRIES {
        text.push_str(&format!("key{i:07} value{i:07}\n"));
    }
    std::fs::write(&map, text).unwrap();
    let port = free_port();
    let cfg = http_config(&[format!("127.0.0.1:{port}")]).replace(
        "    http-request return",
        &format!(
            "    http-request set-var(txn.m) str(k),map({},none)\n    http-request return",
            map.display()
        ),
    );
    let mut hm = Hapmaster::start_in(dir, cfg, &[]);
    hm.wait_serving(EVENT);
    let master_pid = hm.pid();
    let master = master_sock(&hm.runtime_dir);
    let before = status_kib(master_pid, "VmRSS").unwrap();
    let mut client = UnixStream::connect(&master).unwrap();
    client
        .write_all(format!("@1 show map {}\n", map.display()).as_bytes())
        .unwrap();
    // Until the answer reaches the client and the master, asleep, has stopped feeding it: what
    // the client has not read stays the same across a look at the master.
    let stalled = || -> Result<(), String> {
        let queued = unread_by_us(&client);
        let asleep = proc_stat(master_pid).is_some_and(|s| s.state == 'S');
        if queued > 0 && asleep && unread_by_us(&client) == queued {
            Ok(())
        } else {
            Err(format!(
                "{queued} bytes queued to the client; master asleep: {asleep}"
            ))
        }
    };
    poll_until(EVENT, || stalled().ok())
        .unwrap_or_else(|| panic!("the answer never stalled at the client: {:?}", stalled()));
    let show = during_stall(
        "show proc beside a large answer nobody reads",
        &stalled,
        || show_proc_latency(&master),
    );
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    let grew = status_kib(master_pid, "VmHWM")
        .unwrap()
        .saturating_sub(before);
    let answer = String::from_utf8_lossy(&answer);
    let entries = answer.lines().filter(|l| l.contains(" key")).count();
    let figures = format!(
        "master grew {grew} KiB (VmHWM over VmRSS before) for a {} byte answer; {entries} of \
         {ENTRIES} entries relayed; {show}",
        answer.len()
    );
    eprintln!("figures: {figures}");
    assert_eq!(entries, ENTRIES, "{figures}");
    assert!(grew < GROWTH_LIMIT_KIB, "{figures}");
    assert!(show.ok(), "{figures}");
    assert!(hm.stop().success());
}

/// Case 6, first half: 16 prompt sessions from `nobody`, each sending a newline every 3 s, do
/// not keep root out of that `-S` socket: root's `show proc` answers within 100 ms.
#[test]
fn sessions_of_another_user_do_not_keep_root_out() {
    if !is_root() {
        eprintln!("skipped: needs root (the idle clients run as nobody)");
        return;
    }
    let (mut hm, _port, cli) = Hapmaster::serving_with_cli(&[]);
    // Those the master lets in (it may refuse some of another user's, to keep room for root).
    let sessions: Vec<UnixStream> = connect_as(NOBODY, &cli, 16)
        .into_iter()
        .filter_map(try_prompt_session)
        .collect();
    let refused = 16 - sessions.len();
    // The hostile client's pace, not a wait for anything: a newline every 3 s keeps each
    // session from ever being idle for --cli-timeout (10 s).
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let writers: Vec<UnixStream> = sessions.iter().map(|s| s.try_clone().unwrap()).collect();
    let keepalive = thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            stop_rx.recv_timeout(Duration::from_secs(3))
        {
            for mut w in &writers {
                let _ = w.write_all(b"\n");
            }
        }
    });
    let stalled = none_closed_from_now(&sessions);
    let show = during_stall(
        "root's show proc on the -S socket beside 16 sessions of nobody",
        &stalled,
        || show_proc_latency(&cli),
    );
    drop(stop_tx);
    keepalive.join().unwrap();
    eprintln!("figures: {show} ({refused} of nobody's 16 sessions refused)");
    assert!(
        show.ok(),
        "{show} ({refused} of nobody's 16 sessions refused)"
    );
    drop(stalled);
    drop(sessions);
    assert!(hm.stop().success());
}

/// Case 6, second half: a client sending one byte a second (a command line that never ends) is
/// cut off by a total time per command, here `--cli-timeout 2s`; today each byte restarts the
/// idle timeout and it stays forever.
#[test]
fn a_trickling_client_is_cut_off() {
    if !is_root() {
        eprintln!("skipped: needs root (the client runs as nobody)");
        return;
    }
    let cli_timeout = Duration::from_secs(2);
    // Five times the total time per command: ample for a busy machine, and the test's bound.
    let give_up = 5 * cli_timeout;
    let (mut hm, _port, cli) = Hapmaster::serving_with_cli(&["--cli-timeout", "2s"]);
    let mut s = connect_as(NOBODY, &cli, 1).pop().unwrap();
    let text = b"show proc";
    let started = Instant::now();
    let mut sent = 0usize;
    let cut_off = loop {
        if started.elapsed() >= give_up {
            break None;
        }
        // Wait up to a second for the master to close; else send the next byte.
        let mut p = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 1000) };
        if n == 1 {
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break Some(started.elapsed()),
                Ok(_) => continue,
            }
        }
        let byte = if sent < text.len() { text[sent] } else { b' ' };
        if s.write_all(&[byte]).is_err() {
            break Some(started.elapsed());
        }
        sent += 1;
    };
    let figures = match cut_off {
        Some(t) => format!("trickling client cut off after {t:.1?} ({sent} bytes sent)"),
        None => format!("trickling client still connected after {give_up:?} ({sent} bytes sent)"),
    };
    eprintln!("figures: {figures} with --cli-timeout {cli_timeout:?}");
    assert!(cut_off.is_some(), "{figures}");
    assert!(hm.stop().success());
}

/// Case 6, what the total time per command leaves alone: a `reload` whose new worker takes
/// longer than `--cli-timeout` to fail (the fake haproxy's `fake hang`, never ready, failed by
/// `--ready-timeout 3s`) is still answered, not cut off at the `--cli-timeout 1s`.
#[test]
fn a_reload_longer_than_the_cli_timeout_is_still_answered() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(
        fake_config::<&str>(port, &[]),
        &[
            "--haproxy",
            FAKE_HAPROXY,
            "--cli-timeout",
            "1s",
            "--ready-timeout",
            "3s",
        ],
    );
    hm.write_config(&fake_config(port, &["hang"]));
    let started = Instant::now();
    let answer = cli_within(&master_sock(&hm.runtime_dir), "reload", EVENT);
    let took = started.elapsed();
    eprintln!("figures: reload answered after {took:.1?} with --cli-timeout 1s: {answer:?}");
    let answer = answer.unwrap();
    assert!(
        answer.starts_with("Success=0") && answer.contains("not ready within 3000 ms"),
        "{answer:?}"
    );
    assert!(hm.stop().success());
}

/// Case 7: a `_getsocks` client that takes the count and never acks delays nothing else:
/// `show proc` from another client answers within 100 ms meanwhile.
#[test]
fn a_getsocks_client_that_never_acks_delays_nothing_else() {
    let port = free_port();
    let mut hm = serving(port, &[]);
    let master = master_sock(&hm.runtime_dir);
    let mut taker = UnixStream::connect(&master).unwrap();
    taker.write_all(b"_getsocks\n").unwrap();
    // The count has come: the master is serving this client, which now never acks.
    let mut count = [0u8; 4];
    taker.set_read_timeout(Some(EVENT)).unwrap();
    taker
        .read_exact(&mut count)
        .expect("reading the socket count");
    assert!(i32::from_ne_bytes(count) > 0, "count {count:?}");
    let stalled = || -> Result<(), String> {
        if peer_closed(&taker) {
            Err("the master has given up on the _getsocks client".into())
        } else {
            Ok(())
        }
    };
    let show = during_stall(
        "show proc on master.sock while a _getsocks client does not ack",
        &stalled,
        || show_proc_latency(&master),
    );
    eprintln!("figures: {show}");
    assert!(show.ok(), "{show}");
    drop(taker);
    assert!(hm.stop().success());
}

/// A reload to a fake haproxy worker that stalls the socket handoff with `fault` (a fault no
/// real haproxy can be made to produce on demand): `show proc` answers within 100 ms while the
/// master is in that conversation, and the reload fails, the old worker serving on.
/// `ended`: what the master writes on its stderr, before it answers anyone else, once it has
/// given up on the conversation with worker `pid`.
fn stalled_handoff_delays_nothing_else(
    fault: &str,
    extra: &[&str],
    what: &str,
    ended: impl Fn(u32) -> String,
) {
    let port = free_port();
    let mut args = vec!["--haproxy", FAKE_HAPROXY];
    args.extend_from_slice(extra);
    let mut hm = Hapmaster::start(fake_config::<&str>(port, &[]), &args);
    let old = hm.wait_serving(EVENT);
    let master = master_sock(&hm.runtime_dir);
    let marker = hm.dir().join("stall-began");
    let faults = [
        fault.to_string(),
        format!("stall-marker {}", marker.display()),
    ];
    hm.write_config(&fake_config(port, &faults));
    hm.signal(SIGUSR2);
    // The new worker writes its pid there once the master is in the stalled conversation.
    let new: u32 = poll_until(EVENT, || {
        std::fs::read_to_string(&marker).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("{what}: the stall did not begin:\n{}", hm.stderr()));
    let ended = ended(new);
    let stalled = || -> Result<(), String> {
        match hm.stderr().contains(&ended) {
            true => Err(format!("the master has ended it ({ended:?})")),
            false => Ok(()),
        }
    };
    let show = during_stall(
        &format!("show proc on master.sock while {what}"),
        &stalled,
        || show_proc_latency(&master),
    );
    let sent = Instant::now();
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    let reload = format!(
        "reload: {:?} {:.1?} after the stall began",
        notify_field(&d, "STATUS").unwrap_or(""),
        sent.elapsed()
    );
    eprintln!("figures: {show}; {reload}");
    assert!(show.ok(), "{show}; {reload}");
    assert!(is_reload_failed(&d), "{reload}");
    assert_eq!(worker_pid_in(&d), Some(old), "{reload}");
    assert!(
        hm.stderr().contains(&ended),
        "{what}: no {ended:?} on stderr:\n{}",
        hm.stderr()
    );
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
}

/// A new worker that trickles its sockets when the master takes them (one byte of their records
/// every 600 ms, past the master's 5 s bound on the exchange).
#[test]
fn a_worker_trickling_its_sockets_delays_nothing_else() {
    stalled_handoff_delays_nothing_else(
        "getsocks-lie trickle",
        &[],
        "a new worker trickles its sockets",
        |_| "could not take its listening sockets".to_string(),
    );
}

/// A new worker that asks for the held sockets on its own channel one byte at a time, then
/// never acks them.
#[test]
fn a_worker_stalling_its_handoff_delays_nothing_else() {
    stalled_handoff_delays_nothing_else(
        "handoff-stall",
        // The end of a serve is a debug message.
        &["-V"],
        "a new worker stalls its handoff",
        |pid| format!("listening sockets to worker pid {pid}"),
    );
}

/// A two-way `@@1` session (haproxy 3.2+, played by the fake haproxy as 3.4.0) whose client
/// reads nothing while the worker sends it 8 MiB: the master relays no more than the client's
/// room, and `show proc` from another client answers within 100 ms meanwhile.
#[test]
fn a_two_way_session_that_is_not_read_delays_nothing_else() {
    let dir = TestDir::new();
    let haproxy = fake_haproxy_of_version(&dir, "3.4.0");
    let cfg = fake_config::<&str>(free_port(), &[]);
    let mut hm = Hapmaster::start_in(dir, cfg, &["--haproxy", haproxy.to_str().unwrap()]);
    hm.wait_serving(EVENT);
    let master = master_sock(&hm.runtime_dir);
    let mut relay = UnixStream::connect(&master).unwrap();
    relay.set_read_timeout(Some(EVENT)).unwrap();
    relay.write_all(b"@@1\n").unwrap();
    // The worker's answer to `prompt i`: the session is the worker's.
    let mut blank = [0u8; 1];
    relay.read_exact(&mut blank).unwrap();
    assert_eq!(&blank, b"\n", "not the worker's answer to `prompt i`");
    let before = status_kib(hm.pid(), "VmHWM").unwrap();
    relay.write_all(b"flood\n").unwrap();
    poll_until(EVENT, || (unread_by_us(&relay) > 0).then_some(()))
        .unwrap_or_else(|| panic!("nothing of the flood reached the client within {EVENT:?}"));
    let stalled = || -> Result<(), String> {
        if peer_closed(&relay) {
            return Err("the master closed the @@1 session".into());
        }
        Ok(())
    };
    let show = during_stall(
        "show proc while an @@1 client reads nothing",
        &stalled,
        || show_proc_latency(&master),
    );
    let after = status_kib(hm.pid(), "VmHWM").unwrap();
    eprintln!("figures: {show}; master VmHWM {before} KiB -> {after} KiB");
    assert!(show.ok(), "{show}");
    // The flood waits in the worker and the sockets, not in the master.
    assert!(
        after < before + 1024,
        "the master grew from {before} KiB to {after} KiB"
    );
    assert!(hm.stop().success());
}
