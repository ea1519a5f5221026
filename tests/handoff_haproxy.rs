//! The handoff against a real haproxy: take the listeners of a running haproxy through its
//! `expose-fd listeners` stats socket, then hand them to a second haproxy started with `-x`, and
//! check that it adopted the very same sockets and serves on them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

mod common;

use common::haproxy::{show_info, Haproxy};
use common::{free_port, TestDir, REQUEST_TIMEOUT};
use hapmaster::handoff::fetch::fetch_sockets;
use hapmaster::handoff::listeners::{is_unix_listener_of, HeldSet, SocketInfo};
use hapmaster::handoff::serve::{serve_getsocks, ServeError, ServeOutcome};

const TRANSFER: Duration = Duration::from_secs(30);

/// The IPv6 bind says `v6only` because Linux makes every socket bound to a specific IPv6
/// address v6only, and haproxy 2.6.12 only adopts a received IPv6 socket whose IPV6_V6ONLY
/// matches what the bind line asks for: without it, the new process binds a second socket next
/// to the old one (SO_REUSEPORT) instead of adopting it.
fn config(dir: &Path, stats: &str, v4: u16, v6: u16) -> PathBuf {
    let text = format!(
        "global
    stats socket {dir}/{stats} mode 600 level admin expose-fd listeners

defaults
    mode http
    timeout connect 1s
    timeout client 2s
    timeout server 2s

frontend fe
    bind 127.0.0.1:{v4}
    bind [::1]:{v6} v6only
    bind unix@{dir}/fe.sock
    http-request return status 200 content-type text/plain string ok
",
        dir = dir.display()
    );
    let path = dir.join(format!("{stats}.cfg"));
    std::fs::write(&path, text).unwrap();
    path
}

fn http_get(mut conn: impl Read + Write) -> String {
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

fn assert_ok(answer: &str, via: &str) {
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{via}: {answer:?}"
    );
    assert!(answer.ends_with("ok"), "{via}: {answer:?}");
}

fn tcp_get(addr: &str) -> String {
    let conn = TcpStream::connect_timeout(&addr.parse().unwrap(), REQUEST_TIMEOUT).unwrap();
    conn.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    http_get(conn)
}

/// Accepts one connection on `listener` within `TRANSFER` and serves `held` to it.
fn serve_once(listener: &UnixListener, held: &HeldSet) -> Result<ServeOutcome, ServeError> {
    let mut fds = [nix::poll::PollFd::new(
        listener.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let timeout = nix::poll::PollTimeout::try_from(TRANSFER).unwrap();
    let ready = nix::poll::poll(&mut fds, timeout).unwrap();
    assert_eq!(ready, 1, "the new haproxy never connected to the -x socket");
    let (conn, _) = listener.accept().unwrap();
    serve_getsocks(&conn, held, TRANSFER)
}

fn locals(infos: &[SocketInfo]) -> BTreeSet<String> {
    infos.iter().map(|i| i.local.clone()).collect()
}

#[test]
fn sockets_survive_a_handoff_between_two_real_haproxies() {
    let dir = TestDir::new();
    let d = dir.path().display().to_string();
    let (v4, v6) = (free_port(), free_port());

    let stats1 = dir.join("s1.sock");
    let mut old = Haproxy::start(
        &[
            "-db",
            "-f",
            config(dir.path(), "s1.sock", v4, v6).to_str().unwrap(),
        ],
        dir.join("old.log"),
    );
    old.wait_ready(&stats1);

    // What a running haproxy exports: every listener it bound, its stats socket included.
    let received = fetch_sockets(&stats1, TRANSFER).unwrap();
    let infos: Vec<SocketInfo> = received
        .iter()
        .map(|r| SocketInfo::of(r.fd.as_fd()).unwrap())
        .collect();
    for (r, info) in received.iter().zip(&infos) {
        eprintln!(
            "old haproxy sent {info} type {} options {:#x}",
            info.sock_type,
            r.record.options_u32()
        );
    }
    let old_pid = old.pid();
    let expected: BTreeSet<String> = [
        format!("127.0.0.1:{v4}"),
        format!("[::1]:{v6}"),
        format!("{d}/fe.sock.{old_pid}.tmp"),
        format!("{d}/s1.sock.{old_pid}.tmp"),
    ]
    .into_iter()
    .collect();
    assert_eq!(locals(&infos), expected);
    assert_eq!(received.len(), expected.len(), "duplicates: {infos:?}");

    // The master holds the frontends, not the old worker's private stats socket.
    let held = HeldSet::from_received(received, |info| is_unix_listener_of(info, &stats1)).unwrap();
    assert_eq!(held.len(), 3);
    let held_inodes: BTreeSet<u64> = held.inodes().into_iter().collect();

    let master_path = dir.join("master.sock");
    let master = UnixListener::bind(&master_path).unwrap();
    let stats2 = dir.join("s2.sock");
    let cfg2 = config(dir.path(), "s2.sock", v4, v6);
    let (served, mut new) = thread::scope(|s| {
        let server = s.spawn(|| serve_once(&master, &held));
        let new = Haproxy::start(
            &[
                "-db",
                "-x",
                master_path.to_str().unwrap(),
                "-f",
                cfg2.to_str().unwrap(),
            ],
            dir.join("new.log"),
        );
        (server.join().unwrap(), new)
    });
    assert_eq!(
        served.unwrap_or_else(|e| panic!("{e}\nnew haproxy:\n{}", new.output())),
        ServeOutcome { sent: 3 }
    );
    new.wait_ready(&stats2);

    // The new haproxy listens on the very sockets the master handed over.
    let adopted = fetch_sockets(&stats2, TRANSFER).unwrap();
    let adopted_infos: Vec<SocketInfo> = adopted
        .iter()
        .map(|r| SocketInfo::of(r.fd.as_fd()).unwrap())
        .filter(|info| !is_unix_listener_of(info, &stats2))
        .collect();
    for info in &adopted_infos {
        eprintln!("new haproxy holds {info}");
    }
    let adopted_inodes: BTreeSet<u64> = adopted_infos.iter().map(|i| i.inode).collect();
    assert_eq!(
        adopted_inodes,
        held_inodes,
        "{adopted_infos:?}\nnew haproxy:\n{}",
        new.output()
    );
    // Adopted unix listeners keep the name the first haproxy bound them under.
    assert!(
        locals(&adopted_infos).contains(&format!("{d}/fe.sock.{old_pid}.tmp")),
        "{adopted_infos:?}"
    );
    drop(adopted);

    // With the old process gone, only the new one can answer on those sockets.
    old.stop();
    assert_ok(&tcp_get(&format!("127.0.0.1:{v4}")), "127.0.0.1");
    assert_ok(&tcp_get(&format!("[::1]:{v6}")), "::1");
    let unix = UnixStream::connect(dir.join("fe.sock")).unwrap();
    unix.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    assert_ok(&http_get(unix), "fe.sock");
    let new_pid = new.pid();
    assert!(show_info(&stats2).is_some_and(|i| i.contains(&format!("Pid: {new_pid}\n"))));
    drop(held);
}

#[test]
fn nothing_exported_without_expose_fd() {
    let dir = TestDir::new();
    let stats = dir.join("plain.sock");
    let cfg = dir.join("plain.cfg");
    let port = free_port();
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 2s\n    \
             timeout server 2s\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    \
             http-request return status 200 content-type text/plain string ok\n",
            stats.display()
        ),
    )
    .unwrap();
    let mut haproxy = Haproxy::start(&["-db", "-f", cfg.to_str().unwrap()], dir.join("plain.log"));
    haproxy.wait_ready(&stats);
    let err = fetch_sockets(&stats, TRANSFER).unwrap_err();
    eprintln!("without expose-fd: {err}");
    assert!(
        matches!(
            err,
            hapmaster::handoff::fetch::FetchError::NothingExported { .. }
        ),
        "{err:?}"
    );
}
