//! Issue 12, case 4: a NOTIFY_SOCKET whose receiver does not read (its queue holds 10
//! datagrams) while the master has 300 listening sockets to put in the fd store. Start and reload
//! must take what they take without NOTIFY_SOCKET, give or take a second; once the receiver
//! reads again, what was held back arrives: READY=1 and every socket of the fd store.
mod common;

use common::*;
use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LISTENERS: usize = 300;
/// The figure: start and reload each within 1 s of their time without notify.
const SLACK: Duration = Duration::from_secs(1);

fn config(dir: &Path) -> String {
    let mut c = String::from(
        "global\n    maxconn 100\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n",
    );
    for i in 0..LISTENERS {
        c.push_str(&format!("    bind unix@{}/l{i}.sock\n", dir.display()));
    }
    c.push_str("    http-request return status 200 content-type text/plain string \"hello\\n\"\n");
    c
}

struct Figures {
    start: Duration,
    reload: Duration,
}

/// Starts a master on the 300-listener config (with `notify` as NOTIFY_SOCKET, if any) and
/// times its start and one reload. Start: from the spawn until the master, its first worker
/// ready (the pid file is written then), answers `show proc` again, which it does only once it
/// is back in its loop. Reload: `hapmaster reload`, which returns when the new worker serves.
fn run(notify: Option<&Path>, limit: Duration) -> (TestDir, ChildGuard, Figures) {
    let dir = TestDir::new();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let rt = dir.join("rt");
    let pidfile = dir.join("hapmaster.pid");
    let mut cmd = hapmaster_command(&rt, &["-q", "-p", pidfile.to_str().unwrap()], &cfg);
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let spawned = Instant::now();
    let master = ChildGuard(cmd.spawn().expect("spawning hapmaster"));
    let written = poll_until(EVENT, || pidfile.exists().then_some(()));
    assert!(written.is_some(), "no pid file within {EVENT:?}");
    let master_sock = rt.join("master.sock");
    if let Err(e) = cli_within(&master_sock, "show proc", limit) {
        panic!(
            "show proc once the first worker was ready (NOTIFY_SOCKET {notify:?}, {:?} after \
             the start): {e}",
            spawned.elapsed()
        );
    }
    let start = spawned.elapsed();

    let asked = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args(["reload", "-S"])
        .arg(&master_sock)
        .args(["--timeout", &format!("{}ms", limit.as_millis())])
        .output()
        .expect("running hapmaster reload");
    let reload = asked.elapsed();
    assert!(
        out.status.success(),
        "hapmaster reload: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, master, Figures { start, reload })
}

fn fd_store_names(received: &[String]) -> BTreeSet<String> {
    received
        .iter()
        .filter(|d| has_line(d, "FDSTORE=1"))
        .filter_map(|d| notify_field(d, "FDNAME").map(str::to_string))
        .collect()
}

#[test]
fn a_deaf_notify_socket_delays_neither_start_nor_reload() {
    let (plain_dir, mut plain, base) = run(None, EVENT);
    assert!(plain.stop(EVENT).is_some_and(|s| s.success()));
    drop((plain, plain_dir));
    eprintln!(
        "{LISTENERS} listeners without NOTIFY_SOCKET: start {:?}, reload {:?}",
        base.start, base.reload
    );

    let dir = TestDir::new();
    let path = dir.join("notify.sock");
    let deaf = UnixDatagram::bind(&path).unwrap();
    let limit = base.start.max(base.reload) + SLACK;
    let (_master_dir, mut master, deaf_figures) =
        run(Some(&path), limit.max(Duration::from_secs(5)));
    eprintln!(
        "{LISTENERS} listeners with a NOTIFY_SOCKET nobody reads: start {:?}, reload {:?}",
        deaf_figures.start, deaf_figures.reload
    );
    assert!(
        deaf_figures.start <= base.start + SLACK,
        "start took {:?} with a deaf NOTIFY_SOCKET, {:?} without",
        deaf_figures.start,
        base.start
    );
    assert!(
        deaf_figures.reload <= base.reload + SLACK,
        "reload took {:?} with a deaf NOTIFY_SOCKET, {:?} without",
        deaf_figures.reload,
        base.reload
    );

    // The receiver reads again: what waited goes out, READY=1 and the whole fd store.
    deaf.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + EVENT;
    while Instant::now() < deadline {
        if let Ok(n) = deaf.recv(&mut buf) {
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if received.iter().any(|d| is_serving(d)) && fd_store_names(&received).len() == LISTENERS {
            break;
        }
    }
    assert!(
        received.iter().any(|d| is_serving(d)),
        "no READY=1 once the receiver read again: {} datagrams",
        received.len()
    );
    assert_eq!(
        fd_store_names(&received).len(),
        LISTENERS,
        "fd store entries received once the receiver read again"
    );
    assert!(master.stop(EVENT).is_some_and(|s| s.success()));
}
