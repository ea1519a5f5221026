//! Issue 12, case 4: a NOTIFY_SOCKET whose receiver does not read (its queue holds 10
//! datagrams) while the master has 300 listening sockets to put in the fd store. The master must
//! not wait for it: with the receiver deaf, `show proc` is answered at once after the start and
//! after a reload (it was not for minutes when each fd store datagram waited 1 s); once the
//! receiver reads again, what was held back arrives: READY=1 and every socket of the fd store.
//! The figure (start and reload within 1 s of their time without NOTIFY_SOCKET) is
//! measured and printed, not asserted: on a busy machine two runs differ by more than that.
mod common;
mod stalls;

use common::*;
use stalls::*;
use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LISTENERS: usize = 300;

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
    /// `show proc` right after the start and right after the reload.
    answered: [Measured; 2],
}

/// Starts a master on the 300-listener config (with `notify` as NOTIFY_SOCKET, if any) and
/// times its start and one reload. Start: from the spawn until the master, its first worker
/// ready (the pid file is written then), answers `show proc` again, which it does only once it
/// is back in its loop. Reload: `hapmaster reload`, which returns when the new worker serves.
/// After each, one more `show proc` is measured as the stall tests do: a master that waits
/// for the notify socket does not answer it.
fn run(notify: Option<&Path>) -> (TestDir, ChildGuard, Figures) {
    let limit = EVENT;
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
    let always = || Ok(());
    let after_start = during_stall("show proc after the start", &always, || {
        show_proc_latency(&master_sock)
    });

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
    let after_reload = during_stall("show proc after the reload", &always, || {
        show_proc_latency(&master_sock)
    });
    let answered = [after_start, after_reload];
    (
        dir,
        master,
        Figures {
            start,
            reload,
            answered,
        },
    )
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
    let (plain_dir, mut plain, base) = run(None);
    assert!(plain.stop(EVENT).is_some_and(|s| s.success()));
    drop((plain, plain_dir));
    eprintln!(
        "figures: {LISTENERS} listeners without NOTIFY_SOCKET: start {:?}, reload {:?}",
        base.start, base.reload
    );

    let dir = TestDir::new();
    let path = dir.join("notify.sock");
    let deaf = UnixDatagram::bind(&path).unwrap();
    let (_master_dir, mut master, deaf_figures) = run(Some(&path));
    eprintln!(
        "figures: {LISTENERS} listeners with a NOTIFY_SOCKET nobody reads: start {:?}, reload \
         {:?}; {}; {}",
        deaf_figures.start, deaf_figures.reload, deaf_figures.answered[0], deaf_figures.answered[1]
    );
    for answered in &deaf_figures.answered {
        assert!(answered.ok(), "{answered}");
    }

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
