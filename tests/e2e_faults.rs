//! End-to-end under faults (issue 3): the real hapmaster binary supervising
//! `hapmaster-fake-haproxy` (tests/fake_haproxy), a haproxy stand-in that speaks the real protocol
//! and injects the faults a real haproxy cannot be made to produce: a worker that never answers
//! and ignores SIGTERM, a worker that lies when the master fetches its sockets, and so on. Faults a
//! real haproxy produces (a broken config) are tested with it in e2e_reload.rs.
//!
//! Every test checks the same promise: the old worker keeps serving, untouched; the master keeps
//! the same listening sockets (same inodes, and a later good reload hands over those same ones);
//! every failed worker is reaped; the master's fd count comes back to what it was.
mod common;

use common::soak::settled_fd_count;
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// hapmaster running the fake (in normal mode unless `faults` say otherwise).
fn start_fake(port: u16, faults: &[&str], extra: &[&str]) -> Hapmaster {
    let mut args = vec!["--haproxy", FAKE_HAPROXY];
    args.extend_from_slice(extra);
    Hapmaster::start(fake_config(port, faults), &args)
}

/// The next `RELOADING=1` then `READY=1`, which must say `Reload failed` and name `old` as the
/// worker still serving; returns its STATUS.
fn wait_reload_failed(hm: &mut Hapmaster, old: u32, what: &str) -> String {
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(
        is_reload_failed(&d),
        "{what}: expected Reload failed: {d:?}"
    );
    assert_eq!(
        worker_pid_in(&d),
        Some(old),
        "{what}: the status should name the worker still serving: {d:?}"
    );
    notify_field(&d, "STATUS").unwrap_or_default().to_string()
}

/// The next `RELOADING=1` then `READY=1`, which must be `Serving` a worker other than `old`.
fn wait_reload_ok(hm: &mut Hapmaster, old: u32, what: &str) -> u32 {
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "{what}: reload did not succeed: {d:?}");
    let new = worker_pid_in(&d).unwrap();
    assert_ne!(new, old, "{what}: still serving the old worker: {d:?}");
    new
}

/// Polls until the master has exactly one child, `worker`, alive, and no zombie.
fn wait_only_child(master: u32, worker: u32, timeout: Duration, what: &str) {
    let ok = poll_until(timeout, || {
        let kids = children_of(master);
        (kids.len() == 1 && kids[0].pid == worker && kids[0].state != 'Z').then_some(())
    });
    assert!(
        ok.is_some(),
        "{what}: after {timeout:?} the master {master} should have exactly one child, worker \
         {worker}; it has {:?}",
        children_of(master)
    );
}

/// Polls until the master has `base` fds open again.
fn assert_fds_back(master: u32, base: usize, base_listing: &str, what: &str) {
    let back = poll_until(EVENT, || (fd_count(master) == Some(base)).then_some(()));
    assert!(
        back.is_some(),
        "{what}: master fd count {:?}, was {base}\nbefore:\n{base_listing}\nnow:\n{}",
        fd_count(master),
        fd_listing(master)
    );
}

/// The one live child of `master` other than `old`, once it exists.
fn new_child(master: u32, old: u32) -> u32 {
    poll_until(EVENT, || {
        live_children(master).into_iter().find(|p| *p != old)
    })
    .unwrap_or_else(|| panic!("no new worker appeared: {:?}", children_of(master)))
}

/// What every test starts from: hapmaster serving with the fake, its worker, one listener.
struct Baseline {
    master: u32,
    worker: u32,
    port: u16,
    inodes: std::collections::BTreeSet<u64>,
    fds: usize,
    fd_listing: String,
}

impl Baseline {
    fn take(hm: &mut Hapmaster, port: u16) -> Baseline {
        let worker = hm.wait_serving(EVENT);
        let master = hm.pid();
        let inodes = tcp4_listen_inodes(port);
        assert_eq!(inodes.len(), 1, "one listener on 127.0.0.1:{port}");
        assert_eq!(
            http_get(target(port)).unwrap(),
            HELLO,
            "GET before the faults"
        );
        let fds = settled_fd_count(master);
        Baseline {
            master,
            worker,
            port,
            inodes,
            fds,
            fd_listing: fd_listing(master),
        }
    }

    /// The old worker serves as before, the master holds the same sockets and fds, is alive, and
    /// has reaped every other child.
    fn assert_intact(&self, worker: u32, what: &str) {
        wait_only_child(self.master, worker, EVENT, what);
        assert!(pid_alive(self.master), "{what}: master died");
        assert_eq!(
            tcp4_listen_inodes(self.port),
            self.inodes,
            "{what}: listening socket changed"
        );
        assert_eq!(
            http_get(target(self.port)).unwrap(),
            HELLO,
            "{what}: GET through the old worker"
        );
        assert_fds_back(self.master, self.fds, &self.fd_listing, what);
    }

    /// A good reload after the fault: the new worker got the master's held sockets (the same
    /// inodes: it did not bind new ones). Returns the new worker.
    fn good_reload(&self, hm: &mut Hapmaster, old: u32, what: &str) -> u32 {
        hm.write_config(&fake_config::<&str>(self.port, &[]));
        hm.signal(SIGUSR2);
        let new = wait_reload_ok(hm, old, what);
        let stderr = hm.stderr();
        assert!(
            !stderr.contains(&format!("({new}) : fake: no socket handed over")),
            "{what}: worker {new} was not handed the listener:\n{stderr}"
        );
        self.assert_intact(new, what);
        new
    }
}

fn target(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Waits until hapmaster's stderr (where workers write too) contains `needle`.
fn wait_stderr(hm: &Hapmaster, needle: &str) -> String {
    poll_until(EVENT, || {
        let s = hm.stderr();
        s.contains(needle).then_some(s)
    })
    .unwrap_or_else(|| panic!("no {needle:?} on stderr:\n{}", hm.stderr()))
}

/// A new worker that never answers `show info` and ignores SIGTERM: the reload fails on the ready
/// timeout, the worker gets SIGTERM, then SIGKILL after the 5 s grace, and is reaped.
#[test]
fn never_ready_worker_is_killed_after_grace() {
    let port = free_port();
    let mut hm = start_fake(port, &[], &["--ready-timeout", "1s"]);
    let base = Baseline::take(&mut hm, port);
    let old = base.worker;

    hm.write_config(&fake_config(port, &["hang", "ignore-sigterm"]));
    let signalled_at = Instant::now();
    hm.signal(SIGUSR2);
    let hung = new_child(base.master, old);
    let status = wait_reload_failed(&mut hm, old, "hanging worker");
    assert!(
        status.contains("not ready within 1000 ms"),
        "the status should name the ready timeout: {status:?}"
    );
    // SIGTERM came and was ignored (the fake says so); the old worker serves meanwhile.
    wait_stderr(
        &hm,
        &format!("({hung}) : fake: received SIGTERM/SIGINT: ignored"),
    );
    assert_eq!(
        http_get(target(port)).unwrap(),
        HELLO,
        "GET while the hung worker lingers"
    );

    let gone = poll_until(EVENT, || (!pid_alive(hung)).then(|| signalled_at.elapsed()))
        .unwrap_or_else(|| panic!("hung worker {hung} still alive {EVENT:?} after the reload"));
    wait_stderr(
        &hm,
        &format!("worker pid {hung} did not exit 5 s after SIGTERM: SIGKILL"),
    );
    // The master may only be late: the reload fails 1 s (--ready-timeout) after the spawn, which
    // comes after the signal, and SIGKILL follows SIGTERM by the 5 s grace.
    assert!(
        gone >= Duration::from_secs(6),
        "the hung worker died {gone:?} after the reload signal: the 1 s ready timeout and the \
         5 s grace were not both honoured"
    );
    base.assert_intact(old, "after the SIGKILL");
    assert!(zombie_children(base.master).is_empty());
    eprintln!(
        "never-ready: hung worker {hung} died {gone:?} after the failure; master fds {} -> {:?}",
        base.fds,
        fd_count(base.master)
    );

    base.good_reload(&mut hm, old, "reload after the hang");
    assert!(hm.stop().success());
}

/// A new worker that exits at once (as a real one does on a broken config).
#[test]
fn new_worker_exiting_at_start() {
    let port = free_port();
    let mut hm = start_fake(port, &[], &[]);
    let base = Baseline::take(&mut hm, port);
    hm.write_config(&fake_config(port, &["exit-at-start"]));
    hm.signal(SIGUSR2);
    let status = wait_reload_failed(&mut hm, base.worker, "exit at start");
    assert!(
        status.contains("exited (exit status 1) before it was ready"),
        "{status:?}"
    );
    wait_stderr(&hm, "fake exit-at-start: fatal errors");
    base.assert_intact(base.worker, "after the exit at start");
    base.good_reload(&mut hm, base.worker, "reload after the exit at start");
    assert!(hm.stop().success());
}

/// A new worker that takes the handed sockets, then fails as haproxy does when the transfer fails.
#[test]
fn new_worker_rejecting_the_handed_sockets() {
    let port = free_port();
    let mut hm = start_fake(port, &[], &[]);
    let base = Baseline::take(&mut hm, port);
    hm.write_config(&fake_config(port, &["reject-handoff"]));
    hm.signal(SIGUSR2);
    let status = wait_reload_failed(&mut hm, base.worker, "rejected handoff");
    assert!(status.contains("before it was ready"), "{status:?}");
    wait_stderr(&hm, "Failed to get the sockets from the old process!");
    base.assert_intact(base.worker, "after the rejected handoff");
    base.good_reload(&mut hm, base.worker, "reload after the rejected handoff");
    assert!(hm.stop().success());
}

/// Each lie of a worker answering the master's `_getsocks`, and a word of the failure it must give.
const LIES: &[(&str, &str)] = &[
    ("count-larger", "announced 3 sockets"),
    ("extra-fds", "announced 2 sockets but sent at least 3"),
    ("truncated-record", "ends inside record"),
    ("trailing-garbage", "unexpected bytes after the 2 records"),
    ("oversized", "unexpected bytes after the 2 records"),
    ("pipes", "not a socket"),
    ("data-without-fds", "without fds"),
    ("stall", "no progress within 1s"),
    ("close-mid", "could not take its listening sockets"),
];

/// The fake's name of a lie in its log: `count-larger` -> `CountLarger`.
fn lie_name(lie: &str) -> String {
    lie.split('-')
        .map(|w| w[..1].to_uppercase() + &w[1..])
        .collect()
}

/// The pid in `[LEVEL]   (PID) : ...` of the last line of `text` containing `needle`.
fn pid_of_line(text: &str, needle: &str) -> u32 {
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}"));
    let (_, rest) = line.split_once('(').expect("a pid in parentheses");
    let (pid, _) = rest.split_once(')').expect("a pid in parentheses");
    pid.parse()
        .unwrap_or_else(|e| panic!("bad pid in {line:?}: {e}"))
}

/// A new worker that answers `show info` but lies when the master fetches its sockets: the reload
/// fails, the old worker serves on, the master keeps exactly the sockets it held.
#[test]
fn lying_worker_fails_the_reload_and_changes_nothing() {
    let port = free_port();
    let mut hm = start_fake(port, &[], &[]);
    let base = Baseline::take(&mut hm, port);
    let mut worker = base.worker;
    for (lie, expected) in LIES {
        let what = format!("getsocks-lie {lie}");
        let started = Instant::now();
        hm.write_config(&fake_config(port, &[&what]));
        hm.signal(SIGUSR2);
        let status = wait_reload_failed(&mut hm, worker, &what);
        assert!(
            status.contains("could not take its listening sockets") && status.contains(expected),
            "{what}: the status should say why ({expected:?}): {status:?}"
        );
        // The liar lived for milliseconds: its pid is in what it wrote.
        let lied = format!("_getsocks: lying ({})", lie_name(lie));
        let stderr = wait_stderr(&hm, &lied);
        let liar = pid_of_line(&stderr, &lied);
        assert_ne!(liar, worker);
        base.assert_intact(worker, &what);
        assert!(!pid_alive(liar), "{what}: the liar {liar} is still alive");
        worker = base.good_reload(&mut hm, worker, &format!("good reload after {what}"));
        eprintln!(
            "{what}: failed as expected in {:?}: {status}",
            started.elapsed()
        );
    }
    // Sending every batch without waiting for acks is not a lie about the sockets: a client
    // that acks into a connection still open takes them all.
    hm.write_config(&fake_config(port, &["getsocks-lie no-acks"]));
    hm.signal(SIGUSR2);
    let taker = wait_reload_ok(&mut hm, worker, "getsocks-lie no-acks");
    base.assert_intact(taker, "after no-acks");
    base.good_reload(&mut hm, taker, "good reload after no-acks");
    eprintln!(
        "lies: master fds {} at start, {:?} at the end",
        base.fds,
        fd_count(base.master)
    );
    assert!(hm.stop().success());
}

/// The first worker's sockets are fetched too: a first worker that lies makes startup fail.
#[test]
fn lying_first_worker_fails_startup() {
    let port = free_port();
    let mut hm = start_fake(port, &["getsocks-lie extra-fds"], &[]);
    let status = hm
        .wait_exit(EVENT)
        .expect("hapmaster still running 15 s after its first worker lied");
    assert!(!status.success(), "exit status {status}");
    let err = hm.stderr();
    assert!(
        err.contains("failed to start: could not take its listening sockets")
            && err.contains("announced 2 sockets but sent at least 3"),
        "stderr should say why startup failed:\n{err}"
    );
    assert!(
        !hm.history().iter().any(|d| has_line(d, "READY=1")),
        "READY=1 although no worker ever served:\n{}",
        hm.history_text()
    );
    assert!(hm.live_reported_workers().is_empty());
    assert!(
        pids_with_cmdline_containing(hm.dir()).is_empty(),
        "a worker outlived the master"
    );
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(tcp4_listen_inodes(port).is_empty(), "port still listening");
}

/// Connects to the master's handoff socket as a client that is not a worker; returns the
/// connection and the instant just before the connect.
fn connect_handoff(sock: &Path) -> (UnixStream, Instant) {
    let t = Instant::now();
    let c = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    c.set_read_timeout(Some(EVENT)).unwrap();
    c.set_write_timeout(Some(EVENT)).unwrap();
    (c, t)
}

/// Reads until the master closes; returns the bytes and how long after `t` the close came.
fn read_until_closed(c: &mut UnixStream, t: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return (got, t.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, t.elapsed()),
            Err(e) => panic!("the master did not close the connection: {e}"),
        }
    }
}

/// The idle limit of the master CLI in [`hostile_handoff_clients`]: the clients that are answered
/// must be closed before it (so not by it), the silent one at it.
const CLI_TIMEOUT: Duration = Duration::from_secs(8);

/// Clients of `<runtime-dir>/master.sock` that are not haproxy: each is dropped, by the end of its
/// exchange or by a timeout, and leaves the master as it was.
#[test]
fn hostile_handoff_clients() {
    let port = free_port();
    let cli_timeout = format!("{}s", CLI_TIMEOUT.as_secs());
    let mut hm = start_fake(port, &[], &["--cli-timeout", &cli_timeout]);
    let base = Baseline::take(&mut hm, port);
    let sock = hm.runtime_dir.join("master.sock");
    let mut worker = base.worker;

    // A command the master CLI does not know: answered with the command list, then closed
    // (the client closed its side, as `socat` does).
    let (mut c, t) = connect_handoff(&sock);
    c.write_all(b"show info\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, took) = read_until_closed(&mut c, t);
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("Unknown command"), "garbage command: {got:?}");
    assert!(
        took < CLI_TIMEOUT,
        "garbage command: closed after {took:?}, by the idle timeout rather than after the answer"
    );
    drop(c);
    base.assert_intact(worker, "garbage command");
    worker = base.good_reload(&mut hm, worker, "reload after the garbage command");

    // `_getsocks`, the count, then gone in the middle of the transfer.
    let (mut c, _) = connect_handoff(&sock);
    c.write_all(b"_getsocks\n").unwrap();
    let mut count = [0u8; 4];
    c.read_exact(&mut count).unwrap();
    assert_eq!(i32::from_ne_bytes(count), 1, "the master holds one socket");
    drop(c);
    base.assert_intact(worker, "disconnect mid-transfer");
    worker = base.good_reload(&mut hm, worker, "reload after the disconnect");

    // `_getsocks`, then never an ack: the master gives up waiting for it, then closes.
    let (mut c, t) = connect_handoff(&sock);
    c.write_all(b"_getsocks\n").unwrap();
    let (got, took) = read_until_closed(&mut c, t);
    assert_eq!(got.len(), 4 + 6, "count and one record: {got:?}");
    eprintln!("no ack: closed after {took:?}");
    assert!(
        (Duration::from_millis(500)..CLI_TIMEOUT).contains(&took),
        "no ack: closed after {took:?}, expected by the handoff's own timeout, before the idle one"
    );
    drop(c);
    base.assert_intact(worker, "no ack");
    worker = base.good_reload(&mut hm, worker, "reload after the missing ack");

    // Connected, silent: dropped at the --cli-timeout, not before.
    let (mut c, t) = connect_handoff(&sock);
    let (got, took) = read_until_closed(&mut c, t);
    assert!(got.is_empty(), "idle client got {got:?}");
    eprintln!("idle client: closed after {took:?}");
    assert!(
        took >= CLI_TIMEOUT,
        "idle client: closed after {took:?}, before the {CLI_TIMEOUT:?} --cli-timeout"
    );
    drop(c);
    base.assert_intact(worker, "idle client");
    base.good_reload(&mut hm, worker, "reload after the idle client");
    eprintln!(
        "hostile clients: master fds {} at start, {:?} at the end",
        base.fds,
        fd_count(base.master)
    );
    assert!(hm.stop().success());
}
