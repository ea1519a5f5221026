//! Operator policies for failures and draining, against the real haproxy:
//! `--exit-on-failure`, `--drain-timeout`, `--max-old-workers`.
mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

/// haproxy waits up to `timeout http-request` for a request's headers, even while soft-stopping:
/// a half-sent request keeps an old worker draining.
fn lingering_config(port: u16) -> String {
    format!(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout http-request 30s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"hello\"\n"
    )
}

/// Opens a connection with a half-sent request and waits until `worker` has accepted it (its fd
/// count grows), so the connection is the worker's, not a queued one the next worker would take.
fn half_request(port: u16, worker: u32) -> TcpStream {
    let before = fd_count(worker).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    poll_until(5 * SEC, || (fd_count(worker)? > before).then_some(()))
        .unwrap_or_else(|| panic!("worker {worker} did not accept the connection"));
    s
}

fn reload(hm: &mut Hapmaster, old: u32) -> u32 {
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, 15 * SEC);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), 30 * SEC);
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
    let _conn = half_request(port, old);
    let new = reload(&mut hm, old);
    // Still draining right after the soft stop: the half-sent request holds it.
    std::thread::sleep(Duration::from_millis(500));
    assert!(pid_alive(old), "old worker {old} should still be draining");
    assert!(
        wait_dead(old, 8 * SEC),
        "old worker {old} still alive long after --drain-timeout 1s"
    );
    assert!(
        hm.stderr().contains("--drain-timeout"),
        "the log should say why:\n{}",
        hm.stderr()
    );
    assert!(pid_alive(new));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap().len(), 5);
    assert!(hm.stop().success());
}

#[test]
fn max_old_workers_terminates_the_oldest() {
    let port = free_port();
    let mut hm = Hapmaster::start_ready(lingering_config(port), &["--max-old-workers", "1"]);
    let w1 = hm.current_worker_pid().unwrap();
    let _c1 = half_request(port, w1);
    let w2 = reload(&mut hm, w1);
    let _c2 = half_request(port, w2);
    assert!(pid_alive(w1), "one draining worker is within the limit");
    let w3 = reload(&mut hm, w2);
    assert!(
        wait_dead(w1, 8 * SEC),
        "oldest draining worker {w1} not stopped beyond --max-old-workers 1"
    );
    assert!(pid_alive(w2), "worker {w2} is the one old worker allowed");
    assert!(pid_alive(w3));
    assert!(hm.stderr().contains("--max-old-workers"), "{}", hm.stderr());
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
        .wait_exit(15 * SEC)
        .expect("master did not exit after its worker died with --exit-on-failure");
    assert_eq!(status.code(), Some(137), "128 + SIGKILL: {status}");
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
    assert!(!hm.pidfile.exists(), "pidfile left behind");
    assert!(tcp4_listen_inodes(port).is_empty(), "port still open");
}
