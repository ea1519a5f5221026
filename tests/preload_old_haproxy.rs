//! The preload library (src/preload/shim.c) in a real haproxy 1.7.14, against a small test
//! master that speaks its protocol (src/preload/wire.rs) and answers with the library's matcher:
//! haproxy takes the held socket instead of binding (checked by the kernel's word: the inode
//! haproxy listens on), and binds nothing when the channel fails.
//!
//! Needs `HAPMASTER_TEST_OLD_HAPROXY=<dir>` with `<dir>/1.7.14/haproxy`
//! (`tests/old-haproxy/build.sh` makes `target/old-haproxy`); without it each test says
//! "skipped" and passes.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use hapmaster::preload::channel::{Incoming, PreloadChannel};
use hapmaster::preload::matcher::{Adoptions, SocketKey};
use hapmaster::preload::socket_key::socket_key;
use hapmaster::preload::wire::Message;
use hapmaster::preload::{install, ENV_FD};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Where the worker finds its end of the channel (any number above haproxy's own first fds).
const CHILD_FD: RawFd = 10;

/// The haproxy 1.7 binary, a test directory and the library installed in it.
struct Old {
    bin: PathBuf,
    dir: TestDir,
    library: PathBuf,
}

impl Old {
    fn setup(test: &str) -> Option<Old> {
        let bin = old_haproxy(test)?;
        let dir = TestDir::new();
        let library = install(dir.path()).unwrap();
        Some(Old { bin, dir, library })
    }

    /// haproxy in the foreground (`-db`), as hapmaster runs it.
    fn spawn(&self, config: &Path) -> (ChildGuard, Channel) {
        spawn(&self.bin, &["-db"], config, &self.library)
    }
}

fn old_haproxy(test: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("HAPMASTER_TEST_OLD_HAPROXY") else {
        eprintln!("{test}: skipped (set HAPMASTER_TEST_OLD_HAPROXY to a dir with 1.7.14/haproxy)");
        return None;
    };
    let bin = Path::new(&dir).join("1.7.14/haproxy");
    assert!(
        bin.is_file(),
        "HAPMASTER_TEST_OLD_HAPROXY is set but {} is missing: run tests/old-haproxy/build.sh",
        bin.display()
    );
    Some(bin)
}

/// The master's side of the channel (the library's `PreloadChannel`), waited on with a deadline.
struct Channel(PreloadChannel);

impl Channel {
    /// One message and the fd that came with it, or `None` at EOF; panics after [`EVENT`].
    fn recv(&self) -> Option<(Message, Option<OwnedFd>)> {
        let deadline = Instant::now() + EVENT;
        loop {
            match self.0.receive().unwrap() {
                Incoming::Message(m, fd) => return Some((m, fd)),
                Incoming::Closed => return None,
                Incoming::Pending => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no message from the worker within {EVENT:?}"
            );
            let mut fds = [PollFd::new(self.0.poll_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap();
            poll(&mut fds, ms).unwrap();
        }
    }

    fn send(&self, m: &Message, fd: Option<BorrowedFd<'_>>) {
        self.0.send(m, fd).unwrap();
    }
}

/// What the worker wrote to stderr, once it exited (stopped first if it still runs).
fn stderr_of(worker: &mut ChildGuard) -> String {
    let _ = worker.stop(EVENT);
    let mut stderr = String::new();
    if let Some(mut pipe) = worker.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

/// haproxy -db with the library preloaded and the channel's other end at [`CHILD_FD`]. The
/// test's copy of that end is closed once the child has it, so the test sees EOF when it exits.
fn spawn(bin: &Path, mode: &[&str], config: &Path, library: &Path) -> (ChildGuard, Channel) {
    let (ours, theirs) = PreloadChannel::open().unwrap();
    let raw = theirs.as_raw_fd();
    let mut command = Command::new(bin);
    command
        .args(mode)
        .arg("-f")
        .arg(config)
        .env("LD_PRELOAD", library)
        .env(ENV_FD, CHILD_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_fd(&mut command, raw, CHILD_FD);
    let child = ChildGuard(command.spawn().unwrap());
    drop(theirs);
    (child, Channel(ours))
}

/// What a worker said while it started.
struct Startup {
    hello: Option<u32>,
    /// For each ADOPT, the index in `held` it was answered with (`None`: NONE).
    answers: Vec<Option<usize>>,
    /// Each NEW: the socket's keys and the socket.
    new: Vec<(SocketKey, OwnedFd)>,
}

/// Plays the master while `worker` starts, until it reported `listeners` NEW sockets: answers
/// each ADOPT from `held` with the library's own matcher.
fn startup(
    worker: &mut ChildGuard,
    channel: &Channel,
    held: &[BorrowedFd<'_>],
    listeners: usize,
) -> Startup {
    let pid = worker.id();
    let keys: Vec<SocketKey> = held
        .iter()
        .map(|fd| socket_key(*fd).unwrap().unwrap())
        .collect();
    let mut adoptions = Adoptions::new(&keys);
    let mut seen = Startup {
        hello: None,
        answers: Vec::new(),
        new: Vec::new(),
    };
    while seen.new.len() < listeners {
        let Some((message, fd)) = channel.recv() else {
            panic!("the worker closed the channel: {}", stderr_of(worker));
        };
        match message {
            Message::Hello { pid } => seen.hello = Some(pid),
            Message::Adopt(bind) => {
                assert_eq!(bind.pid, pid);
                let wanted = SocketKey::from_bind(&bind).expect("a listener's address");
                let index = adoptions.answer(&wanted);
                seen.answers.push(index);
                match index {
                    Some(i) => channel.send(&Message::Fd, Some(held[i])),
                    None => channel.send(&Message::None, None),
                }
            }
            Message::New(bind) => {
                let key = SocketKey::from_bind(&bind).expect("a listener's address");
                seen.new.push((key, fd.expect("NEW carries its socket")));
            }
            other => panic!("the worker sent {other:?}"),
        }
    }
    seen
}

fn write_config(dir: &TestDir, binds: &[String]) -> PathBuf {
    let mut text = String::from(
        "global\n    maxconn 100\ndefaults\n    mode http\n    timeout connect 5s\n    \
         timeout client 30s\n    timeout server 30s\nfrontend fe\n    monitor-uri /\n",
    );
    for bind in binds {
        text.push_str(&format!("    bind {bind}\n"));
    }
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, text).unwrap();
    path
}

fn tcp(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn inode(fd: impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd.as_fd()).unwrap().st_ino
}

/// A listening socket as a first worker leaves it: SO_REUSEADDR and SO_REUSEPORT set, so a
/// second bind with both options at its address would succeed next to it.
fn held_listener(port: u16) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReusePort, &true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.listen(128).unwrap();
    s.into()
}

#[test]
fn haproxy_1_7_adopts_the_held_socket_and_reports_its_own() {
    let Some(old) = Old::setup("haproxy_1_7_adopts_the_held_socket_and_reports_its_own") else {
        return;
    };
    let dir = &old.dir;
    let (held_port, own_port) = (free_port(), free_port());
    let held = held_listener(held_port);
    let held_inode = inode(&held);
    let config = write_config(dir, &[tcp(held_port), tcp(own_port)]);
    let (mut worker, channel) = old.spawn(&config);
    let pid = worker.id();

    let Startup {
        hello,
        answers,
        new,
    } = startup(&mut worker, &channel, &[held.as_fd()], 2);
    assert_eq!(hello, Some(pid), "HELLO first, with the worker's pid");
    assert_eq!(
        answers,
        [Some(0), None],
        "held port adopted, the other bound"
    );

    // The kernel's word: one listener at the held port, the held socket, in the worker.
    assert_eq!(tcp_listen_inodes(held_port), [held_inode].into());
    let own_inode = inode(&new[1].1);
    assert_eq!(tcp_listen_inodes(own_port), [own_inode].into());
    let in_worker = socket_inodes(pid);
    assert!(
        in_worker.contains(&held_inode) && in_worker.contains(&own_inode),
        "worker {pid} holds {in_worker:?}, not {held_inode} and {own_inode}"
    );
    // NEW came for both, the adopted one recognisable by its inode.
    assert_eq!(inode(&new[0].1), held_inode);
    assert_eq!(Some(&new[0].0), socket_key(held.as_fd()).unwrap().as_ref());
    // The library closed the channel to haproxy's children.
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{CHILD_FD}")).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{fdinfo}");
    // haproxy serves on the adopted socket.
    http_get(format!("127.0.0.1:{held_port}")).unwrap();
    http_get(format!("127.0.0.1:{own_port}")).unwrap();

    // Startup over: later binds are the worker's own. The worker exits; the held socket stays.
    channel.send(&Message::End, None);
    let status = worker.stop(EVENT).expect("haproxy stops on SIGTERM");
    assert!(channel.recv().is_none(), "EOF once the worker is gone");
    assert_eq!(
        tcp_listen_inodes(held_port),
        [held_inode].into(),
        "{status}"
    );
}

/// How a test master fails a worker's startup.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// Its end is closed before haproxy runs: the library's HELLO fails.
    ClosedBeforeStart,
    /// Closed after the HELLO: the ADOPT fails.
    ClosedAfterHello,
    /// Open, but the ADOPT is never answered: the library's 10 s receive timeout.
    NoAnswer,
}

/// The channel fails before startup is over: haproxy fails to bind and exits; the held socket
/// (SO_REUSEPORT set, so a real bind next to it would succeed) stays the only one at its port.
#[test]
fn haproxy_1_7_binds_nothing_when_the_channel_fails() {
    let Some(old) = Old::setup("haproxy_1_7_binds_nothing_when_the_channel_fails") else {
        return;
    };
    for failure in [
        Failure::ClosedBeforeStart,
        Failure::ClosedAfterHello,
        Failure::NoAnswer,
    ] {
        let port = free_port();
        let held = held_listener(port);
        let config = write_config(&old.dir, &[tcp(port)]);
        let (mut worker, channel) = old.spawn(&config);
        // The channel while the test waits for haproxy's exit: closed, except for NoAnswer.
        let open = match failure {
            Failure::ClosedBeforeStart => {
                drop(channel);
                None
            }
            Failure::ClosedAfterHello => {
                let hello = channel.recv().map(|(m, _)| m);
                assert_eq!(hello, Some(Message::Hello { pid: worker.id() }));
                drop(channel);
                None
            }
            Failure::NoAnswer => {
                let adopt = channel.recv().and_then(|_| channel.recv());
                assert!(matches!(adopt, Some((Message::Adopt(_), _))), "{adopt:?}");
                Some(channel)
            }
        };
        let status = poll_until(EVENT, || worker.0.try_wait().unwrap()).unwrap_or_else(|| {
            panic!(
                "{failure:?}: haproxy {} still runs; listeners at {port}: {:?} (held: {})",
                worker.id(),
                tcp_listen_inodes(port),
                inode(&held)
            )
        });
        drop(open);
        let stderr = stderr_of(&mut worker);
        assert!(!status.success(), "{failure:?}: {status}: {stderr}");
        assert!(
            stderr.contains("hapmaster preload"),
            "{failure:?}: {stderr}"
        );
        let listeners = tcp_listen_inodes(port);
        assert_eq!(listeners, [inode(&held)].into(), "{failure:?}: {stderr}");
    }
}

/// A unix listener: haproxy binds `<path>.<pid>.tmp`, chmods it and renames it over `<path>`.
/// With the held socket at `<path>`, the library adopts it, the rename only drops haproxy's
/// placeholder, and `<path>` still names the held socket: same file, same listening inode. A
/// second path the master does not hold is bound, chmodded and renamed by haproxy as usual.
#[test]
fn haproxy_1_7_adopts_a_held_unix_socket_and_keeps_its_file() {
    let Some(old) = Old::setup("haproxy_1_7_adopts_a_held_unix_socket_and_keeps_its_file") else {
        return;
    };
    let dir = &old.dir;
    let (path, own) = (dir.join("fe.sock"), dir.join("own.sock"));
    let held = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let file = std::fs::metadata(&path).unwrap();
    let binds = [&path, &own].map(|p| format!("{} mode 600", p.display()));
    let config = write_config(dir, &binds);
    let (mut worker, channel) = old.spawn(&config);
    let Startup { answers, new, .. } = startup(&mut worker, &channel, &[held.as_fd()], 2);
    assert_eq!(answers, [Some(0), None]);
    assert_eq!(inode(&new[0].1), inode(&held));
    let own_inode = inode(&new[1].1);
    let in_worker = socket_inodes(worker.id());
    assert!(in_worker.contains(&inode(&held)) && in_worker.contains(&own_inode));
    assert_eq!(unix_listen_inodes(&path), [inode(&held)].into());
    assert_eq!(unix_listen_inodes(&own), [own_inode].into());
    // Served: haproxy accepts, so it is past its startup (the renames come after the NEWs).
    http_get(path.as_path()).unwrap();
    http_get(own.as_path()).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!((after.dev(), after.ino()), (file.dev(), file.ino()));
    let own_mode = std::fs::metadata(&own).unwrap().permissions().mode();
    assert_eq!(own_mode & 0o777, 0o600);
    let names = common::soak::dir_names(dir.path());
    let want = [
        "fe.sock",
        "haproxy.cfg",
        "own.sock",
        &hapmaster::preload::file_name(),
    ];
    assert_eq!(names, want.into_iter().map(String::from).collect());
}

/// After END the worker's binds are its own: with the channel closed, a connection to a server
/// bound to a fixed `source` port (a bind the library would refuse before END) still goes out.
#[test]
fn haproxy_1_7_binds_for_itself_after_end() {
    let Some(old) = Old::setup("haproxy_1_7_binds_for_itself_after_end") else {
        return;
    };
    let dir = &old.dir;
    let (held_port, source_port) = (free_port(), free_port());
    let held = held_listener(held_port);
    let server = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    server.set_nonblocking(true).unwrap();
    let config = write_config(dir, &[tcp(held_port)]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "    default_backend be\nbackend be\n    source 127.0.0.1:{source_port}\n    \
         server s1 {}\n",
        server.local_addr().unwrap()
    ));
    std::fs::write(&config, text).unwrap();
    let (mut worker, channel) = old.spawn(&config);
    let Startup { answers, .. } = startup(&mut worker, &channel, &[held.as_fd()], 1);
    assert_eq!(answers, [Some(0)]);
    channel.send(&Message::End, None);
    drop(channel);
    // A request through the adopted listener (not to monitor-uri /) makes haproxy connect
    // from the source port.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", held_port)).unwrap();
    std::io::Write::write_all(&mut client, b"GET /to-the-backend HTTP/1.0\r\n\r\n").unwrap();
    let (_conn, peer) = poll_until(EVENT, || server.accept().ok()).unwrap_or_else(|| {
        panic!(
            "no connection from 127.0.0.1:{source_port}: {}",
            stderr_of(&mut worker)
        )
    });
    assert_eq!(peer, SocketAddr::from(([127, 0, 0, 1], source_port)));
    assert_eq!(tcp_listen_inodes(held_port), [inode(&held)].into());
}

/// haproxy binds before it forks (`-D` with nbproc 2): the master's END reaches one process
/// only, and the other, finding the channel closed, must still bind for itself (its startup is
/// over, it never asks). Each process serves one frontend whose backend has its own `source`.
#[test]
fn haproxy_1_7_forked_processes_bind_for_themselves() {
    let Some(old) = Old::setup("haproxy_1_7_forked_processes_bind_for_themselves") else {
        return;
    };
    let ports = free_ports(4);
    let held: Vec<TcpListener> = ports[..2].iter().map(|&p| held_listener(p)).collect();
    let server = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    server.set_nonblocking(true).unwrap();
    let mut text = String::from(
        "global\n    nbproc 2\ndefaults\n    mode http\n    timeout connect 5s\n    \
         timeout client 30s\n    timeout server 30s\n",
    );
    for process in 1..=2 {
        let (listen, source) = (ports[process - 1], ports[process + 1]);
        text.push_str(&format!(
            "frontend fe{process}\n    bind-process {process}\n    bind 127.0.0.1:{listen}\n    \
             default_backend be{process}\nbackend be{process}\n    bind-process {process}\n    \
             source 127.0.0.1:{source}\n    server s1 {}\n",
            server.local_addr().unwrap()
        ));
    }
    let config = old.dir.join("haproxy.cfg");
    std::fs::write(&config, text).unwrap();
    let pidfile = old.dir.join("haproxy.pid");
    let pidfile_arg = pidfile.to_str().unwrap();
    let (mut parent, channel) = spawn(&old.bin, &["-D", "-p", pidfile_arg], &config, &old.library);
    let borrowed: Vec<BorrowedFd<'_>> = held.iter().map(|h| h.as_fd()).collect();
    let Startup { answers, .. } = startup(&mut parent, &channel, &borrowed, 2);
    assert_eq!(answers, [Some(0), Some(1)]);
    let status = poll_until(EVENT, || parent.0.try_wait().unwrap()).expect("haproxy -D returns");
    assert!(status.success(), "{status}: {}", stderr_of(&mut parent));
    let pids: Vec<u32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    // The daemon's processes are this test's too: stopped by pid when the test ends.
    struct Stop(Vec<u32>);
    impl Drop for Stop {
        fn drop(&mut self) {
            for &pid in &self.0 {
                let _ = kill(pid, SIGTERM);
            }
        }
    }
    let _stop = Stop(pids);
    channel.send(&Message::End, None);
    drop(channel);
    for process in 1..=2 {
        let (listen, source) = (ports[process - 1], ports[process + 1]);
        let mut client = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        std::io::Write::write_all(&mut client, b"GET /to-the-backend HTTP/1.0\r\n\r\n").unwrap();
        let (_conn, peer) = poll_until(EVENT, || server.accept().ok())
            .unwrap_or_else(|| panic!("process {process}: no connection from port {source}"));
        assert_eq!(peer, SocketAddr::from(([127, 0, 0, 1], source)));
    }
}
