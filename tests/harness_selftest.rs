//! Checks the harness itself against a plain `haproxy -db` (no hapmaster): the load generator counts
//! successes and notices failures, the /proc helpers find haproxy's listeners, fds and children.
mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cfg(p4: u16, p6: u16, unix: &std::path::Path) -> String {
    http_config(&[
        format!("127.0.0.1:{p4}"),
        format!("[::1]:{p6}"),
        format!("unix@{}", unix.display()),
    ])
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn harness_against_plain_haproxy() {
    let dir = TestDir::new();
    let ports = free_ports(2);
    let (p4, p6) = (ports[0], ports[1]);
    let fe = dir.join("fe.sock");
    let cfg_path = dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg(p4, p6, &fe)).unwrap();
    let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
    let mut hap = Haproxy(
        Command::new(haproxy_path())
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let pid = hap.0.id();

    // Listeners appear, one socket each.
    let found = poll_until(EVENT, || {
        let (a, b, c) = (
            tcp4_listen_inodes(p4),
            tcp6_listen_inodes(p6),
            unix_listen_inodes(&fe),
        );
        (a.len() == 1 && b.len() == 1 && c.len() == 1).then_some((a, b, c))
    })
    .expect("haproxy's three listeners did not show up in /proc/net");
    eprintln!(
        "inodes: tcp {:?} tcp6 {:?} unix {:?}",
        found.0, found.1, found.2
    );
    assert!(
        tcp6_listen_inodes(p4).is_empty(),
        "no v6 listener on the v4 port"
    );
    assert_eq!(tcp_listen_inodes(p4), found.0);

    // The listening inodes are haproxy's fds.
    let fds = fd_listing(pid);
    for ino in found.0.iter().chain(&found.1).chain(&found.2) {
        assert!(
            fds.contains(&format!("socket:[{ino}]")),
            "inode {ino} not among haproxy's fds:\n{fds}"
        );
    }
    let nfd = fd_count(pid).unwrap();
    assert!(nfd >= 6, "haproxy has {nfd} fds");

    // Process helpers.
    let me = std::process::id();
    assert!(live_children(me).contains(&pid));
    assert!(pid_alive(pid));
    assert_eq!(proc_stat(pid).unwrap().comm, "haproxy");

    // One request to each target.
    let targets: Vec<Target> = vec![
        format!("127.0.0.1:{p4}").into(),
        format!("[::1]:{p6}").into(),
        fe.clone().into(),
    ];
    for t in &targets {
        assert_eq!(http_get(t.clone()).unwrap(), HELLO, "GET {t}");
    }
    // Nobody on the other port of the v4 address: refused, and classified so.
    let closed = free_port();
    let e = http_get(format!("127.0.0.1:{closed}")).unwrap_err();
    assert_eq!(e.kind, FailKind::Refused, "{e}");
    let e = http_get(dir.join("nothing.sock")).unwrap_err();
    assert_eq!(e.kind, FailKind::Refused, "{e}");

    // Load with no disturbance: no failures.
    let load = Load::start(&targets, 20);
    let enough = poll_until(EVENT, || (load.ok_so_far() >= 5000).then_some(()));
    let report = load.stop();
    eprintln!("undisturbed load: {report}");
    assert!(enough.is_some(), "load too slow: {report}");
    assert_eq!(report.failed, 0, "{report}");

    // Load while haproxy dies: the generator must notice.
    let load = Load::start(&targets, 20);
    poll_until(EVENT, || (load.ok_so_far() >= 500).then_some(())).expect("load did not start");
    kill(pid, SIGKILL).unwrap();
    // A killed child stays a zombie until we reap it.
    poll_until(EVENT, || zombie_children(me).contains(&pid).then_some(()))
        .expect("killed haproxy never showed as a zombie child");
    assert!(!pid_alive(pid));
    poll_until(EVENT, || (load.failed_so_far() >= 100).then_some(()))
        .expect("the load generator did not notice haproxy's death");
    let report = load.stop();
    eprintln!("load across a kill: {report}");
    assert!(
        report.by_kind.iter().any(|(k, _)| *k == FailKind::Refused),
        "{report}"
    );
    hap.0.wait().unwrap();
    assert!(!children_of(me).iter().any(|s| s.pid == pid));
    assert!(tcp_listen_inodes(p4).is_empty());
    assert!(unix_listen_inodes(&fe).is_empty());
}

#[test]
fn notify_parsing() {
    let d = "READY=1\nSTATUS=Serving: worker pid 1234, generation 7\nMAINPID=99";
    assert!(is_serving(d));
    assert_eq!(worker_pid_in(d), Some(1234));
    assert_eq!(generation_in(d), Some(7));
    assert_eq!(notify_field(d, "MAINPID"), Some("99"));
    assert!(!is_reloading(d));
    let r = "RELOADING=1\nMONOTONIC_USEC=123\nSTATUS=Reloading...";
    assert!(is_reloading(r) && !is_serving(r));
    let f = "READY=1\nSTATUS=Reload failed: worker exited with status 1; still serving: worker pid 55, generation 2";
    assert!(is_reload_failed(f) && !is_serving(f));
    assert_eq!(worker_pid_in(f), Some(55));
}

#[test]
fn monotonic_clock_moves() {
    let a = monotonic_usec();
    let t = Instant::now();
    poll_until(Duration::from_secs(1), || {
        (t.elapsed() >= Duration::from_millis(50)).then_some(())
    });
    assert!(monotonic_usec() >= a + 50_000);
}

#[test]
fn normalizes_like_capture_py() {
    let mut n = Normalizer::new();
    n.add(4080, "@PID_MASTER@").add(408, "@PID_W1@");
    // A 4-digit pid in a 15-wide column, a shorter placeholder padded, a longer one kept one
    // space away; a pid inside a longer number untouched.
    assert_eq!(
        n.normalize("4080            master          0 [failed: 0]   0d00h10m07s     2.6\n"),
        "@PID_MASTER@    master          0 [failed: 0]   @UPTIME@        2.6\n"
    );
    assert_eq!(n.normalize("408 x 14080 4081"), "@PID_W1@ x 14080 4081");
    assert_eq!(n.normalize("[0:00:01:02] master> "), "[@UPTIME@] master> ");
    assert_eq!(
        n.normalize("0x55d2c3a0b2f0 a\n(1234) (7)\nHAPROXY_LOCALPEER=host\nX=1\n"),
        "@PTR@ a\n(@PID@) (7)\nHAPROXY_LOCALPEER=@HOST@\nX=1\n"
    );
}
