//! `serve_getsocks` and `fetch_*` against each other and against peers that misbehave at the byte
//! level, over real unix sockets carrying real sockets.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use hapmaster::handoff::fetch::{fetch_from_stream, fetch_sockets, FetchError, ReceivedSocket};
use hapmaster::handoff::serve::{
    serve_getsocks, serve_getsocks_after_command, ServeError, ServeOutcome, ServeStage,
};
use hapmaster::handoff::wire::{encode_record, Record};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Tests count the process's open fds, so they must not run concurrently.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    raise_nofile();
    guard
}

fn nofile_hard_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_max
}

fn set_nofile(soft: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile_hard_limit(),
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

fn raise_nofile() {
    set_nofile(nofile_hard_limit());
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// How many fds of this process refer to one of `fds`' sockets (the originals included): what a
/// received copy left open adds to, whatever else the test binary opens meanwhile.
fn fds_on_sockets_of(fds: &[OwnedFd]) -> usize {
    let inodes: Vec<String> = fds
        .iter()
        .map(|f| format!("socket:[{}]", inode(f.as_fd())))
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        .count()
}

/// Real sockets: a TCP listener first, then UDP sockets, which are cheaper.
fn make_sockets(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|i| {
            if i == 0 {
                OwnedFd::from(TcpListener::bind("127.0.0.1:0").unwrap())
            } else {
                OwnedFd::from(UdpSocket::bind("127.0.0.1:0").unwrap())
            }
        })
        .collect()
}

fn make_records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            namespace: if i % 3 == 1 {
                format!("ns{i}").into_bytes()
            } else {
                Vec::new()
            },
            interface: if i % 2 == 1 {
                format!("eth{i}").into_bytes()
            } else {
                Vec::new()
            },
            options: (i as u32)
                .wrapping_mul(0x0101_0101)
                .wrapping_add(4)
                .to_ne_bytes(),
        })
        .collect()
}

fn inode(fd: BorrowedFd<'_>) -> u64 {
    nix::sys::stat::fstat(fd).unwrap().st_ino
}

fn has_cloexec(fd: BorrowedFd<'_>) -> bool {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    flags & libc::FD_CLOEXEC != 0
}

fn serve_list<'a>(fds: &'a [OwnedFd], records: &'a [Record]) -> Vec<(BorrowedFd<'a>, &'a Record)> {
    fds.iter().map(|f| f.as_fd()).zip(records.iter()).collect()
}

fn round_trip(n: usize) {
    let _serial = serial();
    let fds = make_sockets(n);
    let records = make_records(n);
    let before = open_fds();
    let (server, client) = UnixStream::pair().unwrap();
    let (outcome, received) = thread::scope(|s| {
        let list = serve_list(&fds, &records);
        let server_side = s.spawn(move || serve_getsocks(&server, &list, TIMEOUT));
        let received = fetch_from_stream(&client, TIMEOUT);
        (server_side.join().unwrap(), received)
    });
    assert_eq!(outcome.unwrap(), ServeOutcome { sent: n });
    let received = received.unwrap();
    assert_eq!(received.len(), n);
    for (i, got) in received.iter().enumerate() {
        assert_eq!(inode(got.fd.as_fd()), inode(fds[i].as_fd()), "socket {i}");
        assert_ne!(
            got.fd.as_raw_fd(),
            fds[i].as_raw_fd(),
            "socket {i} is a new fd"
        );
        assert_eq!(got.record, records[i], "record {i}");
        assert!(
            has_cloexec(got.fd.as_fd()),
            "received fd {i} lacks FD_CLOEXEC"
        );
    }
    drop(received);
    drop(client);
    assert_eq!(
        open_fds(),
        before,
        "fds leaked by a fetch whose results were dropped"
    );
}

#[test]
fn round_trip_1_socket() {
    round_trip(1);
}

#[test]
fn round_trip_252_sockets() {
    round_trip(252);
}

#[test]
fn round_trip_253_sockets() {
    round_trip(253);
}

#[test]
fn round_trip_505_sockets() {
    round_trip(505);
}

#[test]
fn batch_larger_than_one_kernel_skb_round_trips() {
    // 252 maximal records are 130 kB, which the kernel delivers in several reads: only the
    // first carries the fds.
    let _serial = serial();
    let fds = make_sockets(252);
    let records: Vec<Record> = (0..252)
        .map(|i| Record {
            namespace: vec![b'n'; 255],
            interface: vec![b'a' + (i % 26) as u8; 255],
            options: [i as u8; 4],
        })
        .collect();
    let before = open_fds();
    let (server, client) = UnixStream::pair().unwrap();
    let received = thread::scope(|s| {
        let list = serve_list(&fds, &records);
        let server_side = s.spawn(move || serve_getsocks(&server, &list, TIMEOUT));
        let received = fetch_from_stream(&client, TIMEOUT).unwrap();
        server_side.join().unwrap().unwrap();
        received
    });
    let got: Vec<Record> = received.iter().map(|r| r.record.clone()).collect();
    assert_eq!(got, records);
    drop((received, client));
    assert_eq!(open_fds(), before);
}

#[test]
fn fetch_sockets_connects_to_a_path() {
    let _serial = serial();
    let dir = temp_dir("path");
    let path = dir.path().join("master.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fds = make_sockets(3);
    let records = make_records(3);
    let received = thread::scope(|s| {
        let list = serve_list(&fds, &records);
        let server_side = s.spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            serve_getsocks(&conn, &list, TIMEOUT)
        });
        let received = fetch_sockets(&path, TIMEOUT);
        server_side.join().unwrap().unwrap();
        received.unwrap()
    });
    assert_eq!(received.len(), 3);
}

/// A CLI session reads the `_getsocks` line itself (to know it is that command), then hands the
/// sockets over without reading a command again.
#[test]
fn serve_after_the_caller_read_the_command() {
    let _serial = serial();
    let fds = make_sockets(3);
    let records = make_records(3);
    let (server, client) = UnixStream::pair().unwrap();
    let received = thread::scope(|s| {
        let list = serve_list(&fds, &records);
        let server_side = s.spawn(move || {
            let mut line = [0u8; 10];
            (&server).read_exact(&mut line).unwrap();
            assert_eq!(&line, b"_getsocks\n");
            serve_getsocks_after_command(&server, &list, TIMEOUT)
        });
        let received = fetch_from_stream(&client, TIMEOUT);
        assert_eq!(
            server_side.join().unwrap().unwrap(),
            ServeOutcome { sent: 3 }
        );
        received.unwrap()
    });
    assert_eq!(received.len(), 3);
    for (i, got) in received.iter().enumerate() {
        assert_eq!(inode(got.fd.as_fd()), inode(fds[i].as_fd()), "socket {i}");
        assert_eq!(got.record, records[i]);
    }
}

#[test]
fn connect_error_names_the_path() {
    let _serial = serial();
    let dir = temp_dir("missing");
    let path = dir.path().join("nobody-listens.sock");
    let err = fetch_sockets(&path, TIMEOUT).unwrap_err();
    assert!(matches!(err, FetchError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("nobody-listens.sock"), "{text}");
    assert!(text.contains("expose-fd listeners"), "{text}");
    assert!(std::error::Error::source(&err).is_some());
}

// ---- fault servers, speaking the protocol byte by byte ----

fn read_command(conn: &mut UnixStream) {
    let mut cmd = [0u8; 10];
    conn.read_exact(&mut cmd).unwrap();
    assert_eq!(&cmd, b"_getsocks\n");
}

fn send_count(conn: &mut UnixStream, n: i32) {
    conn.write_all(&n.to_ne_bytes()).unwrap();
}

fn send_batch(conn: &UnixStream, fds: &[RawFd], data: &[u8]) {
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    let sent = sendmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &[IoSlice::new(data)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .unwrap();
    assert_eq!(sent, data.len());
}

fn records_bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for r in make_records(n) {
        encode_record(&r, &mut out).unwrap();
    }
    out
}

fn read_ack(conn: &mut UnixStream) -> i32 {
    let mut ack = [0u8; 4];
    conn.read_exact(&mut ack).unwrap();
    i32::from_ne_bytes(ack)
}

fn read_acks(conn: &mut UnixStream) -> Vec<i32> {
    let mut acks = Vec::new();
    let mut ack = [0u8; 4];
    while conn.read_exact(&mut ack).is_ok() {
        acks.push(i32::from_ne_bytes(ack));
    }
    acks
}

/// Runs `fault_server` on one end of a pair and fetches from the other; checks that no received
/// socket is left open.
fn fetch_against(
    sockets: usize,
    fault_server: impl FnOnce(UnixStream, &[RawFd]) + Send,
) -> FetchError {
    let _serial = serial();
    let fds = make_sockets(sockets);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let copies_before = fds_on_sockets_of(&fds);
    let (server, client) = UnixStream::pair().unwrap();
    let result = thread::scope(|s| {
        let raw = &raw;
        let server_side = s.spawn(move || fault_server(server, raw));
        let result = fetch_from_stream(&client, TIMEOUT);
        drop(client);
        server_side.join().unwrap();
        result
    });
    let err = match result {
        Ok(got) => panic!("fetch succeeded with {} sockets", got.len()),
        Err(e) => e,
    };
    assert_eq!(
        fds_on_sockets_of(&fds),
        copies_before,
        "received sockets left open after {err}"
    );
    err
}

#[test]
fn eof_before_count_is_nothing_exported() {
    let err = fetch_against(0, |mut conn, _| read_command(&mut conn));
    assert!(matches!(err, FetchError::NothingExported { .. }), "{err:?}");
    assert!(err.to_string().contains("expose-fd listeners"), "{err}");
}

#[test]
fn truncated_count_is_an_error() {
    let err = fetch_against(0, |mut conn, _| {
        read_command(&mut conn);
        conn.write_all(&[1, 0]).unwrap();
    });
    assert!(
        matches!(err, FetchError::TruncatedCount { bytes: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn negative_and_absurd_counts_are_rejected() {
    for count in [-1, i32::MIN, 1_000_001, i32::MAX] {
        let err = fetch_against(0, move |mut conn, _| {
            read_command(&mut conn);
            send_count(&mut conn, count);
        });
        assert!(
            matches!(err, FetchError::BadCount { count: c, .. } if c == count),
            "{count}: {err:?}"
        );
    }
}

#[test]
fn a_text_answer_is_not_a_count() {
    // What a master answers a client that may not take its sockets, then closes.
    let refusal = "Permission denied: '_getsocks' needs root or the master's user (uid 0); \
                   this client is uid 65534.\n\n";
    let err = fetch_against(0, move |mut conn, _| {
        read_command(&mut conn);
        conn.write_all(refusal.as_bytes()).unwrap();
    });
    match &err {
        FetchError::TextAnswer { text, .. } => assert_eq!(text, refusal),
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("answered _getsocks with text instead of a socket count: \"Permission denied: '_getsocks'"),
        "{err}"
    );
    // Text with fds along, and more text than is kept: the fds are closed (fetch_against checks),
    // the text cut at 4 KiB.
    let err = fetch_against(2, |mut conn, fds| {
        read_command(&mut conn);
        conn.write_all(b"Unknown command").unwrap();
        send_batch(&conn, fds, &[b'x'; 64]);
        let _ = conn.write_all(&[b'y'; 8192]);
    });
    match &err {
        FetchError::TextAnswer { text, .. } => {
            assert!(text.starts_with("Unknown command"), "{text}");
            assert_eq!(text.len(), 4096);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fewer_fds_than_announced_then_close() {
    let err = fetch_against(3, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 5);
        send_batch(&conn, fds, &records_bytes(3));
        assert_eq!(read_ack(&mut conn), 0);
    });
    assert!(
        matches!(
            err,
            FetchError::MissingFds {
                announced: 5,
                received: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn more_fds_than_announced() {
    let err = fetch_against(3, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 2);
        send_batch(&conn, fds, &records_bytes(3));
        read_acks(&mut conn);
    });
    assert!(
        matches!(
            err,
            FetchError::TooManyFds {
                announced: 2,
                received: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn more_fds_than_announced_in_a_later_batch() {
    let err = fetch_against(4, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 3);
        send_batch(&conn, &fds[..2], &records_bytes(2));
        assert_eq!(read_ack(&mut conn), 0);
        send_batch(&conn, &fds[2..], &records_bytes(2));
        read_acks(&mut conn);
    });
    assert!(
        matches!(
            err,
            FetchError::TooManyFds {
                announced: 3,
                received: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn data_without_fds() {
    let err = fetch_against(0, |mut conn, _| {
        read_command(&mut conn);
        send_count(&mut conn, 1);
        send_batch(&conn, &[], &records_bytes(1));
        read_acks(&mut conn);
    });
    assert!(
        matches!(err, FetchError::DataWithoutFds { received: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn data_without_fds_after_a_complete_batch() {
    let err = fetch_against(1, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 2);
        send_batch(&conn, fds, &records_bytes(1));
        assert_eq!(read_ack(&mut conn), 0);
        send_batch(&conn, &[], &records_bytes(1));
        read_acks(&mut conn);
    });
    assert!(
        matches!(err, FetchError::DataWithoutFds { received: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn fds_with_the_count() {
    let err = fetch_against(1, |mut conn, fds| {
        read_command(&mut conn);
        send_batch(&conn, fds, &1i32.to_ne_bytes());
        read_acks(&mut conn);
    });
    assert!(
        matches!(err, FetchError::FdsWithCount { fds: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn missing_records_then_close() {
    let err = fetch_against(2, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 2);
        let data = records_bytes(2);
        send_batch(&conn, fds, &data[..data.len() - 1]);
        assert_eq!(read_ack(&mut conn), 0);
    });
    assert!(matches!(err, FetchError::Records { .. }), "{err:?}");
}

#[test]
fn trailing_record_bytes() {
    let err = fetch_against(2, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 2);
        let mut data = records_bytes(2);
        data.extend_from_slice(b"junk");
        send_batch(&conn, fds, &data);
        read_acks(&mut conn);
    });
    assert!(matches!(err, FetchError::Records { .. }), "{err:?}");
}

#[test]
fn kernel_dropping_fds_is_control_truncated() {
    // At the fd limit the kernel installs what it can, drops the rest and sets MSG_CTRUNC; the
    // fds that did arrive must still be closed.
    let err = fetch_against(200, |mut conn, fds| {
        read_command(&mut conn);
        send_count(&mut conn, 200);
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        set_nofile(highest + 4);
        send_batch(&conn, fds, &records_bytes(200));
        read_acks(&mut conn);
        raise_nofile();
    });
    assert!(
        matches!(err, FetchError::ControlTruncated { .. }),
        "{err:?}"
    );
}

#[test]
fn acks_count_fds_received_before_each_message() {
    let _serial = serial();
    let fds = make_sockets(505);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (mut server, client) = UnixStream::pair().unwrap();
    let (received, acks) = thread::scope(|s| {
        let server_side = s.spawn(move || {
            read_command(&mut server);
            send_count(&mut server, 505);
            let mut acks = Vec::new();
            for (start, end) in [(0, 252), (252, 504), (504, 505)] {
                send_batch(&server, &raw[start..end], &records_bytes(end - start));
                acks.push(read_ack(&mut server));
            }
            acks.extend(read_acks(&mut server));
            acks
        });
        let received = fetch_from_stream(&client, TIMEOUT);
        drop(client);
        (received, server_side.join().unwrap())
    });
    assert_eq!(received.unwrap().len(), 505);
    assert_eq!(acks, vec![0, 252, 504]);
}

#[test]
fn legacy_batch_of_253_fds_is_accepted() {
    let _serial = serial();
    let fds = make_sockets(253);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let (mut server, client) = UnixStream::pair().unwrap();
    let received = thread::scope(|s| {
        s.spawn(move || {
            read_command(&mut server);
            send_count(&mut server, 253);
            send_batch(&server, &raw, &records_bytes(253));
            read_acks(&mut server);
        });
        let received = fetch_from_stream(&client, TIMEOUT);
        drop(client);
        received
    });
    let received: Vec<ReceivedSocket> = received.unwrap();
    assert_eq!(received.len(), 253);
    assert_eq!(inode(received[252].fd.as_fd()), inode(fds[252].as_fd()));
}

#[test]
fn silent_server_times_out_within_the_deadline() {
    let _serial = serial();
    let (server, client) = UnixStream::pair().unwrap();
    let started = std::time::Instant::now();
    let err = fetch_from_stream(&client, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, FetchError::Timeout { .. }), "{err:?}");
    // A fetch that ignored its deadline would wait for the silent server forever; one that
    // kept it returns after 300 ms, later only on a busy machine, never sooner.
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(30)).contains(&took),
        "{took:?}"
    );
    drop(server);
}

// ---- fault clients ----

/// Serves `n` sockets to `fault_client`, which gets the client end of a pair.
fn serve_to<T: Send>(
    n: usize,
    timeout: Duration,
    fault_client: impl FnOnce(UnixStream) -> T + Send,
) -> (Result<ServeOutcome, ServeError>, T) {
    let _serial = serial();
    let fds = make_sockets(n);
    let records = make_records(n);
    let (server, client) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let client_side = s.spawn(move || fault_client(client));
        let outcome = serve_getsocks(&server, &serve_list(&fds, &records), timeout);
        drop(server);
        (outcome, client_side.join().unwrap())
    })
}

/// Reads one message with fds, closing them; returns (bytes, fds).
fn recv_batch(conn: &UnixStream) -> (usize, usize) {
    let mut data = vec![0u8; 253 * 516];
    let mut cmsg = nix::cmsg_space!([RawFd; 253]);
    let mut iov = [IoSliceMut::new(&mut data)];
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .unwrap();
    let mut fds = 0;
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                fds += 1;
            }
        }
    }
    (msg.bytes, fds)
}

fn read_count(conn: &mut UnixStream) -> i32 {
    let mut count = [0u8; 4];
    conn.read_exact(&mut count).unwrap();
    i32::from_ne_bytes(count)
}

#[test]
fn wrong_command_is_rejected() {
    let cases: [(&[u8], &[u8]); 4] = [
        (b"show info\n", b"show info\n"),
        (b"_getsocks", b"_getsocks"),
        (b"_getsocks now\n", b"_getsocks now\n"),
        (&[b'a'; 100], &[b'a'; 64]),
    ];
    for (sent, expected) in cases {
        let (outcome, _) = serve_to(1, TIMEOUT, move |mut conn| {
            // The server may stop reading and close as soon as it has seen enough.
            let _ = conn.write_all(sent);
            let _ = conn.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            rest
        });
        match outcome {
            Err(ServeError::UnexpectedCommand { received, .. }) => assert_eq!(received, expected),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(sent)),
        }
    }
}

#[test]
fn crlf_command_is_accepted_and_final_ack_is_optional() {
    let (outcome, (count, batch)) = serve_to(3, TIMEOUT, |mut conn| {
        conn.write_all(b"_getsocks\r\n").unwrap();
        let count = read_count(&mut conn);
        // Close without the final ack, as haproxy 2.6 may.
        (count, recv_batch(&conn))
    });
    assert_eq!(outcome.unwrap(), ServeOutcome { sent: 3 });
    assert_eq!(count, 3);
    assert_eq!(batch, (records_bytes(3).len(), 3));
}

#[test]
fn empty_set_is_never_announced() {
    let _serial = serial();
    let (server, mut client) = UnixStream::pair().unwrap();
    let err = serve_getsocks(&server, &[], TIMEOUT).unwrap_err();
    assert!(matches!(err, ServeError::NothingToServe), "{err:?}");
    drop(server);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "sent {rest:?}");
}

#[test]
fn client_leaving_mid_transfer_is_an_error() {
    let (outcome, first) = serve_to(505, TIMEOUT, |mut conn| {
        conn.write_all(b"_getsocks\n").unwrap();
        assert_eq!(read_count(&mut conn), 505);
        recv_batch(&conn)
    });
    assert_eq!(first.1, 252);
    match outcome {
        Err(ServeError::ClientClosed {
            stage: ServeStage::ReadAck,
            sent: 252,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn client_leaving_before_the_command_is_an_error() {
    let (outcome, ()) = serve_to(1, TIMEOUT, drop);
    assert!(
        matches!(
            outcome,
            Err(ServeError::ClientClosed {
                stage: ServeStage::ReadCommand,
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[test]
fn client_not_acking_a_full_batch_times_out() {
    let (outcome, ()) = serve_to(253, Duration::from_millis(300), |mut conn| {
        conn.write_all(b"_getsocks\n").unwrap();
        read_count(&mut conn);
        recv_batch(&conn);
        // Stay connected without acking until the server gives up.
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    assert!(
        matches!(
            outcome,
            Err(ServeError::Timeout {
                stage: ServeStage::ReadAck,
                sent: 252,
                ..
            })
        ),
        "{outcome:?}"
    );
}

#[test]
fn bad_record_fails_before_anything_is_sent() {
    let _serial = serial();
    let fds = make_sockets(2);
    let mut records = make_records(2);
    records[1].interface = vec![b'x'; 256];
    let (server, mut client) = UnixStream::pair().unwrap();
    let err = serve_getsocks(&server, &serve_list(&fds, &records), TIMEOUT).unwrap_err();
    assert!(
        matches!(err, ServeError::Record { index: 1, .. }),
        "{err:?}"
    );
    drop(server);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("hapmaster-fs-{tag}-"))
        .tempdir()
        .unwrap()
}
