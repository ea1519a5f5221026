//! Files the master creates in directories other users can write (issue 10, item 1): a user who
//! can write the directory of a `-S` socket or of the `-p` pid file must not be able to make the
//! master chmod, chown or remove anything else, however they time their swaps.
mod common;

use common::*;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const NOBODY: u32 = 65534;
const STARTS: usize = 300;

/// A process running as `nobody` that watches `dir/name` and, whenever a root-owned socket appears
/// there, renames a symlink to `target` over it: the race of issue 10. It counts its swaps on a
/// pipe (one byte each) and dies by itself after 10 minutes (alarm) if the test does not kill it.
struct Swapper {
    pid: libc::pid_t,
    counts: std::fs::File,
}

impl Swapper {
    fn start(dir: &Path, name: &str, target: &Path) -> Swapper {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        // Everything the child needs is made before fork: after it, only system calls.
        let (sock, link, target) = (
            c(&dir.join(name)),
            c(&dir.join(format!(".{name}.swap"))),
            c(target),
        );
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child calls only async-signal-safe functions and never returns.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            unsafe {
                // The child never execs, so close-on-exec does not help: drop every fd the test
                // process had open (other tests' sockets included, e.g. a port a concurrent test
                // just probed, which it would otherwise keep bound), keeping the pipe as fd 3.
                if libc::dup2(fds[1], 3) != 3 {
                    libc::_exit(3);
                }
                libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                libc::alarm(600);
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    libc::_exit(3);
                }
                let mut st: libc::stat = std::mem::zeroed();
                loop {
                    if libc::lstat(sock.as_ptr(), &mut st) == 0
                        && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                        && st.st_uid == 0
                    {
                        libc::symlink(target.as_ptr(), link.as_ptr());
                        if libc::rename(link.as_ptr(), sock.as_ptr()) == 0 {
                            libc::write(3, b"s".as_ptr().cast(), 1);
                        }
                    }
                }
            }
        }
        unsafe { libc::close(fds[1]) };
        Swapper {
            pid,
            counts: unsafe { std::os::fd::FromRawFd::from_raw_fd(fds[0]) },
        }
    }

    /// Stops it (it is our child: killed by pid, reaped) and returns how many swaps it made.
    fn stop(mut self) -> usize {
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut status = 0;
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut self.counts, &mut buf).unwrap();
        buf.len()
    }
}

fn mode_owner(p: &Path) -> (u32, u32, u32) {
    let m = fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

/// `-S DIR/m.sock,mode,666` started 300 times while a user who owns DIR swaps a symlink to a
/// root-owned 0600 file over each fresh socket: the file keeps its mode and owner.
#[test]
fn control_socket_mode_is_never_set_through_a_swapped_name() {
    if !is_root() {
        eprintln!("skipped: needs root (the swapper runs as nobody against root's master)");
        return;
    }
    let t = TestDir::new();
    let dir = t.join("shared");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let target = t.join("precious");
    fs::write(&target, "root's secret\n").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let before = mode_owner(&target);
    let cfg = t.join("bad.cfg");
    fs::write(&cfg, "frontend fe\n    this_is_not_a_keyword\n").unwrap();
    let sock = dir.join("m.sock");
    let spec = format!("{},mode,666", sock.display());

    let swapper = Swapper::start(&dir, "m.sock", &target);
    let started = Instant::now();
    let mut bound = 0;
    for i in 0..STARTS {
        // What a swap left at the name would make the next start refuse to bind: clear it (the
        // test is root; the master never does this).
        let _ = fs::remove_file(&sock);
        let out = hapmaster_command(&t.join("rt"), &["-S", &spec], &cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "start {i}: a broken config started");
        if String::from_utf8_lossy(&out.stderr).contains("master CLI on") {
            bound += 1;
        }
        assert_eq!(
            mode_owner(&target),
            before,
            "start {i}: the master changed {} through a swapped name",
            target.display()
        );
    }
    let swaps = swapper.stop();
    eprintln!(
        "{STARTS} starts ({bound} bound the socket) in {:.1?}; the swapper renamed a symlink over \
         a fresh socket {swaps} times; target mode/uid/gid {:?}",
        started.elapsed(),
        mode_owner(&target)
    );
    assert_eq!(mode_owner(&target), before);
    assert_eq!(fs::read_to_string(&target).unwrap(), "root's secret\n");
    assert!(
        bound > STARTS / 2,
        "only {bound} of {STARTS} starts bound the socket"
    );
    assert!(
        swaps > 0,
        "the swapper never won a swap: the race was not exercised"
    );
}

/// A symlink planted at the `-p` path: the pid file replaces the link, never writes, chmods or
/// removes its target; and at exit a file someone swapped in is left alone.
#[test]
fn pid_file_never_follows_a_planted_link() {
    let t = TestDir::new();
    let target = t.join("precious");
    fs::write(&target, "keep me\n").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    // The harness's pid file path, with a link planted there before the start.
    let cfg = http_config(&[format!("127.0.0.1:{port}")]);
    let pidfile = t.join("hapmaster.pid");
    std::os::unix::fs::symlink(&target, &pidfile).unwrap();
    let mut hm = Hapmaster::start_in(t, cfg, &[]);
    hm.wait_serving(EVENT);
    assert_eq!(hm.pidfile_pid(), Some(hm.pid()));
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep me\n");
    assert_eq!(mode_owner(&target).0, 0o600);
    // Someone swaps another file in; the master must not remove it at exit.
    let swapped = hm.dir().join("swapped");
    fs::write(&swapped, "not the master's\n").unwrap();
    fs::rename(&swapped, &hm.pidfile).unwrap();
    assert!(hm.stop().success());
    assert_eq!(
        fs::read_to_string(&hm.pidfile).unwrap(),
        "not the master's\n",
        "the master removed a pid file that was no longer its own"
    );
    assert!(
        hm.stderr()
            .contains("was replaced by another file: left alone"),
        "{}",
        hm.stderr()
    );
}

/// A runtime directory whose parent others can write could be swapped under the master: refused,
/// with what to do.
#[test]
fn runtime_dir_in_a_directory_others_can_write_is_refused() {
    let t = TestDir::new();
    let open = t.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let cfg = t.join("haproxy.cfg");
    fs::write(&cfg, http_config(&[format!("127.0.0.1:{}", free_port())])).unwrap();
    let log = t.join("stderr.log");
    let mut child = ChildGuard(
        hapmaster_command(&open.join("rt"), &[], &cfg)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = poll_until(EVENT, || child.0.try_wait().ok().flatten());
    let err = fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "hapmaster should refuse to start:\n{err}"
    );
    assert!(
        err.contains("can be written by other users") && err.contains("--runtime-dir"),
        "{err}"
    );
    assert!(!open.join("rt").exists(), "created the runtime dir anyway");
}

/// The runtime directory on another mount of the same filesystem (what systemd's
/// `RuntimeDirectory=` under `ProtectSystem=` gives): a socket made there cannot be renamed into
/// the `-S` directory (EXDEV), so it is made next to its name instead. Found by the real-systemd
/// tier, where every start failed with "Invalid cross-device link".
#[test]
fn control_socket_across_a_mount_boundary() {
    if !is_root() {
        eprintln!("skipped: needs root (a bind mount in a mount namespace of its own)");
        return;
    }
    let t = TestDir::new();
    let (shared, rt) = (t.join("shared"), t.join("rt"));
    fs::create_dir(&shared).unwrap();
    fs::create_dir(&rt).unwrap();
    fs::set_permissions(&rt, fs::Permissions::from_mode(0o700)).unwrap();
    let port = free_port();
    let cfg = t.join("haproxy.cfg");
    fs::write(&cfg, http_config(&[format!("127.0.0.1:{port}")])).unwrap();
    let sock = shared.join("m.sock");
    let log = t.join("stderr.log");
    // unshare execs sh, which execs hapmaster: the child is hapmaster, in a mount namespace where
    // the runtime directory is a bind mount of itself.
    let mut child = ChildGuard(
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && exec "$2" --haproxy "$3" --runtime-dir "$1" -S "$4" -f "$5""#)
            .arg("sh")
            .arg(&rt)
            .arg(env!("CARGO_BIN_EXE_hapmaster"))
            .arg(haproxy_path())
            .arg(format!("{},mode,660", sock.display()))
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("unshare (util-linux) is needed"),
    );
    let served = poll_until(EVENT, || {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "hapmaster exited ({status}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        http_get(format!("127.0.0.1:{port}")).ok()
    });
    assert_eq!(served.as_deref(), Some(HELLO));
    let meta = fs::symlink_metadata(&sock).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    assert_eq!(meta.mode() & 0o7777, 0o660);
    let names: Vec<String> = fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["m.sock"],
        "temporary entries left next to the socket"
    );
    let status = child.stop(EVENT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
