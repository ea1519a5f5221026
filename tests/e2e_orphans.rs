//! A worker must not outlive a SIGKILLed master (issue 10). Outside systemd nothing else stops
//! it: it would serve on with PPID 1, and a new master on the same config would start its own
//! worker beside it on the same port (SO_REUSEPORT) and never know. So:
//! - the kernel's parent-death signal soft-stops a worker whose master dies (SIGUSR1);
//! - haproxy's `user`/`group` clear that signal, so the master's watchdog (a separate process
//!   blocked on a pidfd of the master) soft-stops the workers itself;
//! - a new master on the runtime directory stops an orphan left anyway before its own worker
//!   serves.
//!
//! Real haproxy, real signals; every wait is on an event with a deadline.
mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Non-keep-alive clients hammering the worker when its master is SIGKILLed.
const CLIENTS: usize = 10;

/// `user`/`group` lines: haproxy switches credentials after binding, which clears the
/// parent-death signal (prctl(2)).
const AS_NOBODY: &str = "    user nobody\n    group nogroup\n";

/// One HTTP frontend on 127.0.0.1:`port` whose answer is the pid of the haproxy that served it.
/// haproxy waits up to `timeout http-request` for a request's headers, also while soft-stopping:
/// 300 s is far beyond every wait here, so a half-sent request keeps its worker alive until the
/// test completes it.
fn pid_config(port: u16, global_extra: &str) -> String {
    format!(
        "global\n    maxconn 4000\n{global_extra}\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 300s\n    \
         timeout server 300s\n    timeout http-request 300s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain lf-string \"%pid\"\n"
    )
}

/// The effective uid of `pid`, from /proc/PID/status.
fn euid_of(pid: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn wait_gone(pid: u32, what: &str) -> Duration {
    let start = Instant::now();
    poll_until(EVENT, || (!pid_alive(pid)).then_some(()))
        .unwrap_or_else(|| panic!("{what} (pid {pid}) still alive {EVENT:?} later"));
    start.elapsed()
}

fn count_kind(by_kind: &[(FailKind, usize)], kind: FailKind) -> usize {
    by_kind
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, n)| n)
        .sum()
}

/// A connection with a half-sent request that `worker` has accepted, by the kernel's word (the
/// accepted end is in its fd table): a request the worker is serving.
fn half_request(port: u16, worker: u32) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n").unwrap();
    let holder = poll_until(EVENT, || conn_holder(&s, &[worker]));
    assert_eq!(
        holder,
        Some(worker),
        "the half-sent request to 127.0.0.1:{port} was not accepted by worker {worker}"
    );
    s
}

/// Sends the rest of a [`half_request`] and reads the whole answer.
fn finish_request(mut s: TcpStream) -> String {
    s.set_read_timeout(Some(EVENT)).unwrap();
    s.write_all(b"Host: localhost\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
}

/// SIGKILLs the master of a worker that serves `CLIENTS` clients and one half-sent request. The
/// worker must soft-stop: close its listening socket within EVENT, still serve the request it
/// had accepted, then exit. Returns the master's log, its pid, the worker's pid and generation.
fn sigkill_master_under_load(what: &str, global_extra: &str) -> (String, u32, u32, u64) {
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let mut hm = Hapmaster::start(pid_config(port, global_extra), &[]);
    let ready = hm.wait_notify(is_serving, EVENT);
    let worker = worker_pid_in(&ready).unwrap();
    let generation = generation_in(&ready).unwrap();
    let master = hm.pid();
    assert_eq!(http_get(target.clone()).unwrap(), worker.to_string());
    let watchdog = watchdog_pid_in(&hm.stderr());
    eprintln!(
        "{what}: master {master}, worker {worker} (euid {:?}), watchdog {watchdog:?}",
        euid_of(worker)
    );
    let accepted = half_request(port, worker);

    let load = Load::start(std::slice::from_ref(&target), CLIENTS);
    poll_until(EVENT, || (load.ok_so_far() >= 200).then_some(()))
        .expect("the load generator got no answers before the kill");
    let killed_at = Instant::now();
    hm.signal(SIGKILL);
    hm.wait_exit(EVENT)
        .expect("the SIGKILLed master was not reaped");
    // The soft stop, as the kernel sees it: the worker no longer holds a listening socket.
    let released = poll_until(EVENT, || {
        listen_holders(port, &[worker])
            .is_empty()
            .then(|| killed_at.elapsed())
    });
    if released.is_some() {
        // Every request in flight when the port closed has ended (and its failure is counted).
        load.wait_every_client_moved_on();
    }
    let report = load.stop();
    eprintln!("{what}: load around the master's SIGKILL: {report}");
    let released = released.unwrap_or_else(|| {
        panic!(
            "{what}: worker {worker} still listens {EVENT:?} after its master {master} was \
             SIGKILLed"
        )
    });
    assert!(
        pid_alive(worker),
        "{what}: worker {worker} exited with a request it had accepted unanswered"
    );
    let reply = finish_request(accepted);
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.ends_with(&worker.to_string()),
        "{what}: the request worker {worker} had accepted before the kill: {reply:?}"
    );
    let exited = wait_gone(worker, &format!("{what}: the soft-stopped worker"));
    eprintln!(
        "{what}: the worker closed its listening socket {} ms after its master's SIGKILL, and \
         exited {} ms after its last request",
        released.as_millis(),
        exited.as_millis()
    );
    // The soft-stopping worker finishes what it accepted. Once it closed its listening socket,
    // nobody holds the port (no systemd fd store here): later connects are refused. A
    // connection still in the accept queue when the last listening fd closes is reset by the
    // kernel (haproxy never accepted it; the same happens with haproxy alone and SIGUSR1): at
    // most one per client.
    let refused = count_kind(&report.by_kind, FailKind::Refused);
    let reset = count_kind(&report.by_kind, FailKind::Reset);
    assert_eq!(
        report.failed,
        refused + reset,
        "{what}: requests failed other than refused or reset in the accept queue: {report}"
    );
    assert!(
        reset <= CLIENTS,
        "{what}: {reset} resets, more than the {CLIENTS} connections that can wait in the \
         accept queue: {report}"
    );
    assert!(report.ok >= 200, "{what}: {report}");
    if let Some(w) = watchdog {
        wait_gone(w, "the watchdog of the SIGKILLed master");
    }
    (hm.stderr(), master, worker, generation)
}

/// A plain config: the parent-death signal alone would do.
#[test]
fn sigkill_master_soft_stops_its_worker() {
    sigkill_master_under_load("plain config", "");
}

/// The worker switched to `nobody`, which cleared the parent-death signal: only the watchdog
/// stops it.
#[test]
fn sigkill_master_soft_stops_a_worker_that_changed_user() {
    if !is_root() {
        eprintln!("skipped: needs root (the config switches the worker to user nobody)");
        return;
    }
    let (log, master, worker, generation) = sigkill_master_under_load("user nobody", AS_NOBODY);
    let line = format!(
        "master pid {master} died: soft-stopping its worker pid {worker} (generation {generation})"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("[WARNING]") && l.ends_with(&line)),
        "no watchdog line {line:?} in the log:\n{log}"
    );
}

/// An orphan (made on purpose: watchdog SIGKILLed first, worker as `nobody`) is stopped by the
/// next master on the same runtime directory before that master's own worker serves.
#[test]
fn new_master_stops_the_orphan_before_serving() {
    if !is_root() {
        eprintln!("skipped: needs root (the config switches the worker to user nobody)");
        return;
    }
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let mut first = Hapmaster::start(pid_config(port, AS_NOBODY), &[]);
    let orphan = first.wait_serving(EVENT);
    let master = first.pid();
    assert_ne!(euid_of(orphan), Some(0), "worker {orphan} runs as root");
    if let Some(w) = watchdog_pid_in(&first.stderr()) {
        assert!(
            is_watchdog_of(w, master),
            "pid {w} is not the watchdog of {master}"
        );
        kill(w, SIGKILL).unwrap();
        wait_gone(w, "the SIGKILLed watchdog");
    }
    first.signal(SIGKILL);
    first
        .wait_exit(EVENT)
        .expect("the SIGKILLed master was not reaped");
    // The orphan exists: alive, listening, serving.
    assert!(pid_alive(orphan), "worker {orphan} died with its master");
    assert_eq!(http_get(target.as_str()).unwrap(), orphan.to_string());
    assert_eq!(listen_holders(port, &[orphan]), vec![orphan]);

    let mut second = Hapmaster::start_on_runtime_dir(
        TestDir::new(),
        &first.runtime_dir,
        first.cfg_path.clone(),
        &[],
    );
    let worker = second.wait_serving(EVENT);
    assert!(
        listen_holders(port, &[orphan]).is_empty(),
        "at READY=1 the orphan {orphan} still holds the listening socket on {target}:\n{}",
        second.stderr()
    );
    for i in 0..20 {
        assert_eq!(
            http_get(target.as_str()).unwrap(),
            worker.to_string(),
            "request {i} after READY=1 was not served by the new worker {worker}"
        );
    }
    let gone = wait_gone(orphan, "the orphan");
    eprintln!(
        "the orphan {orphan} was gone {} ms after READY=1 of the new master",
        gone.as_millis()
    );
    let log = second.stderr();
    assert!(
        log.contains(&format!(
            "worker pid {orphan} (generation 1) of a dead master"
        )),
        "the new master's log does not name the orphan {orphan}:\n{log}"
    );
    assert!(second.stop().success());
}

/// The watchdog is not the master's child, names no path on its command line, and exits
/// quietly once its master has stopped normally.
#[test]
fn watchdog_exits_quietly_with_its_master() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(pid_config(port, ""), &[]);
    let master = hm.pid();
    let worker = hm.current_worker_pid().unwrap();
    let log = hm.stderr();
    let watchdog =
        watchdog_pid_in(&log).unwrap_or_else(|| panic!("no `watchdog pid N` in the log:\n{log}"));
    assert!(is_watchdog_of(watchdog, master), "pid {watchdog}");
    assert_eq!(live_children(master), vec![worker], "the master's children");
    assert!(
        !pids_with_cmdline_containing(hm.dir()).contains(&watchdog),
        "the watchdog's command line names the test dir"
    );
    assert!(hm.stop().success());
    wait_gone(watchdog, "the watchdog of the stopped master");
    let log = hm.stderr();
    assert!(
        !log.contains("died"),
        "the watchdog acted on a normal stop:\n{log}"
    );
}
