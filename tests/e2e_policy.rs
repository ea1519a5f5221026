//! Operator policies for failures and draining, against the real haproxy:
//! `--exit-on-failure`, `--drain-timeout`, `--max-old-workers`.
mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// haproxy waits up to `timeout http-request` for a request's headers, even while soft-stopping:
/// a half-sent request keeps an old worker draining. 300 s is far beyond every wait in these tests,
/// so a worker that is gone before then was stopped by the policy under test.
fn lingering_config(port: u16) -> String {
    format!(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 300s\n    \
         timeout server 300s\n    timeout http-request 300s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"hello\"\n"
    )
}

/// Opens a connection with a half-sent request that `worker` holds, by the kernel's word.
///
/// An old worker keeps accepting on the shared listening socket until it has handled its soft
/// stop and closed its copy, so first wait until `worker` is the only child of the master holding
/// that socket (the master holds one too, but never accepts): no other worker can then take the
/// connection. Then wait until `worker`'s fd table has the accepted end.
fn half_request(hm: &Hapmaster, port: u16, worker: u32) -> TcpStream {
    let master = hm.pid();
    let alone = poll_until(EVENT, || {
        (listen_holders(port, &live_children(master)) == [worker]).then_some(())
    });
    assert!(
        alone.is_some(),
        "worker {worker} is not the only worker holding 127.0.0.1:{port}: holders {:?}",
        listen_holders(port, &live_children(master))
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let holder = poll_until(EVENT, || conn_holder(&s, &live_children(master)));
    assert_eq!(
        holder,
        Some(worker),
        "the half-sent request to 127.0.0.1:{port} is not held by worker {worker}"
    );
    s
}

/// The master's log line that says it stopped old worker `pid` under `policy`.
fn policy_stop_logged(hm: &Hapmaster, pid: u32, policy: &str) -> bool {
    let needle = format!("old worker pid {pid} ");
    hm.stderr()
        .lines()
        .any(|l| l.contains(&needle) && l.contains(policy))
}

fn reload(hm: &mut Hapmaster, old: u32) -> u32 {
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d), "reload failed: {d:?}");
    let new = worker_pid_in(&d).unwrap();
    assert_ne!(new, old);
    new
}

fn wait_dead(pid: u32, timeout: Duration) -> bool {
    poll_until(timeout, || (!pid_alive(pid)).then_some(())).is_some()
}

#[test]
fn drain_timeout_terminates_a_lingering_old_worker() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(lingering_config(port), &["--drain-timeout", "1s"]);
    let old = hm.current_worker_pid().unwrap();
    let _conn = half_request(&hm, port, old);
    let new = reload(&mut hm, old);
    // The half-sent request would keep it draining for 300 s.
    assert!(
        wait_dead(old, 60 * SEC),
        "old worker {old} still alive 60 s after a reload with --drain-timeout 1s"
    );
    // Logged only for a worker that was still draining when its deadline came.
    assert!(
        policy_stop_logged(
            &hm,
            old,
            "is still draining after 1000 ms (--drain-timeout)"
        ),
        "the log should say that the drain timeout stopped {old}:\n{}",
        hm.stderr()
    );
    assert!(pid_alive(new));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap().len(), 5);
    assert!(hm.stop().success());
}

/// `--on-sigterm soft`: SIGTERM (a container runtime's stop) lets the worker finish what it
/// serves; `--drain-timeout` bounds that, and the master still exits 0.
#[test]
fn on_sigterm_soft_drains_within_the_drain_timeout_and_exits_zero() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(
        lingering_config(port),
        &["--on-sigterm", "soft", "--drain-timeout", "1s"],
    );
    let worker = hm.current_worker_pid().unwrap();
    let mut finishing = half_request(&hm, port, worker);
    let _lingering = half_request(&hm, port, worker);
    hm.signal(libc::SIGTERM);
    let d = hm.wait_notify(|d| has_line(d, "STOPPING=1"), EVENT);
    assert!(
        notify_field(&d, "STATUS").is_some_and(|s| s.starts_with("Soft-stopping")),
        "{d:?}"
    );
    // A hard stop would have closed it: the request sent after SIGTERM is answered.
    finishing
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut finishing, &mut reply).unwrap();
    assert!(reply.ends_with("hello"), "reply after SIGTERM: {reply:?}");
    // The other half-sent request would keep the worker for 300 s.
    let status = hm
        .wait_exit(60 * SEC)
        .expect("master still running 60 s after SIGTERM with --drain-timeout 1s");
    assert!(
        status.success(),
        "exit status after a bounded drain: {status}"
    );
    assert!(!pid_alive(worker), "worker {worker} still alive");
    assert!(
        hm.stderr().contains(
            "workers still draining 1000 ms after the soft stop (--drain-timeout): hard stop"
        ),
        "the log should say that the drain timeout ended the soft stop:\n{}",
        hm.stderr()
    );
}

#[test]
fn max_old_workers_terminates_the_oldest() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(lingering_config(port), &["--max-old-workers", "1"]);
    let w1 = hm.current_worker_pid().unwrap();
    let _c1 = half_request(&hm, port, w1);
    let w2 = reload(&mut hm, w1);
    let _c2 = half_request(&hm, port, w2);
    assert!(pid_alive(w1), "one draining worker is within the limit");
    let w3 = reload(&mut hm, w2);
    // Each old worker holds a half-sent request that would keep it draining for 300 s.
    assert!(
        wait_dead(w1, 60 * SEC),
        "oldest draining worker {w1} not stopped beyond --max-old-workers 1"
    );
    assert!(
        policy_stop_logged(&hm, w1, "(--max-old-workers)"),
        "the log should say that --max-old-workers stopped {w1}:\n{}",
        hm.stderr()
    );
    assert!(pid_alive(w2), "worker {w2} is the one old worker allowed");
    assert!(pid_alive(w3));
    assert!(hm.stop().success());
}

#[test]
fn exit_on_failure_exits_with_the_worker_status() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--exit-on-failure"],
    );
    let worker = hm.current_worker_pid().unwrap();
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let status = hm
        .wait_exit(EVENT)
        .expect("master did not exit after its worker died with --exit-on-failure");
    assert_eq!(status.code(), Some(137), "128 + SIGKILL: {status}");
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
    assert!(tcp4_listen_inodes(port).is_empty(), "port still open");
}
