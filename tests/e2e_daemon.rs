//! `-D` and `-p` at start: the command returns when the first worker is ready (0, pid file
//! written, port serving) or has failed (non-zero, haproxy's `[ALERT]` lines on its stderr), as
//! `haproxy -D` does; a start that fails writes no pid file and removes none but its own.
mod common;

use common::*;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

/// The command as an init script runs it: stderr a pipe the caller reads to its end. Whatever
/// still runs from `dir` when it is dropped (a test that failed half-way) is killed.
struct Caller {
    child: ChildGuard,
    stderr: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Caller {
    fn run(mut cmd: Command, dir: &Path) -> Caller {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning hapmaster");
        let mut pipe = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        Caller {
            child: ChildGuard(child),
            stderr,
            dir: dir.to_path_buf(),
        }
    }

    /// The command's exit status ([`EVENT`] at most).
    fn wait(&mut self) -> ExitStatus {
        poll_until(EVENT, || self.child.0.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("hapmaster (pid {}) did not return", self.child.id()))
    }

    /// Everything written on the caller's stderr, once nothing holds the pipe any more.
    fn stderr(&self) -> String {
        self.stderr.recv_timeout(EVENT).unwrap_or_else(|_| {
            panic!(
                "the caller's stderr was still open {EVENT:?} after hapmaster returned: a \
                 process left in the background holds it"
            )
        })
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        for pid in pids_with_cmdline_containing(&self.dir) {
            let _ = kill(pid, SIGKILL);
        }
    }
}

/// A master that went to the background: stopped (SIGTERM, then SIGKILL) if the test did not
/// stop it.
struct Daemon {
    pid: u32,
    start: u64,
}

impl Daemon {
    fn new(pid: u32) -> Daemon {
        let start = proc_stat(pid)
            .unwrap_or_else(|| panic!("pid {pid} (from the pid file) is not running"))
            .starttime;
        Daemon { pid, start }
    }

    fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some(s) if s.starttime == self.start && s.state != 'Z' && s.state != 'X')
    }

    fn stop(&self) -> bool {
        if self.alive() {
            let _ = kill(self.pid, SIGTERM);
        }
        poll_until(EVENT, || (!self.alive()).then_some(())).is_some()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stop() && self.alive() {
            let _ = kill(self.pid, SIGKILL);
        }
    }
}

/// The master's pid, from its `hapmaster ... (pid N) starting` line.
fn master_pid_in(log: &str) -> Option<u32> {
    let line = log.lines().find(|l| l.contains(" starting "))?;
    let (_, rest) = line.split_once("(pid ")?;
    rest.split(')').next()?.parse().ok()
}

fn broken_config(port: u16) -> String {
    format!(
        "{}    this_is_not_a_keyword 42\n",
        http_config(&[format!("127.0.0.1:{port}")])
    )
}

#[test]
fn daemon_with_a_broken_config_fails_with_haproxys_alerts() {
    let t = TestDir::new();
    let cfg = t.join("haproxy.cfg");
    fs::write(&cfg, broken_config(free_port())).unwrap();
    let (rt, pidfile) = (t.join("rt"), t.join("hapmaster.pid"));
    let mut caller = Caller::run(
        hapmaster_command(&rt, &["-D", "-p", pidfile.to_str().unwrap()], &cfg),
        t.path(),
    );
    let status = caller.wait();
    // When it returns, the master and its worker are gone (it reaped the master).
    let left = pids_with_cmdline_containing(t.path());
    let err = caller.stderr();
    assert_eq!(status.code(), Some(1), "-D with a broken config:\n{err}");
    assert!(
        err.contains("[ALERT]") && err.contains("this_is_not_a_keyword"),
        "haproxy's [ALERT] lines should be on the caller's stderr:\n{err}"
    );
    assert!(left.is_empty(), "processes left: {left:?}\n{err}");
    assert!(!rt.exists(), "runtime dir left behind");
    assert!(
        !pidfile.exists(),
        "pid file written for a start that failed"
    );
    let master = master_pid_in(&err).expect("no start line");
    if let Some(watchdog) = watchdog_pid_in(&err) {
        poll_until(EVENT, || (!is_watchdog_of(watchdog, master)).then_some(()))
            .expect("the watchdog outlived its failed master");
    }
}

#[test]
fn daemon_returns_once_the_first_worker_serves() {
    let t = TestDir::new();
    let port = free_port();
    let cfg = t.join("haproxy.cfg");
    fs::write(&cfg, http_config(&[format!("127.0.0.1:{port}")])).unwrap();
    let (rt, pidfile) = (t.join("rt"), t.join("hapmaster.pid"));
    let mut caller = Caller::run(
        hapmaster_command(&rt, &["-D", "-p", pidfile.to_str().unwrap()], &cfg),
        t.path(),
    );
    let status = caller.wait();
    // What an init script sees the moment the command returns: no waiting from here on.
    let text = fs::read_to_string(&pidfile);
    let master: u32 = text
        .as_ref()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {} when -D returned: {text:?}", pidfile.display()));
    let daemon = Daemon::new(master);
    let answer = http_get(format!("127.0.0.1:{port}"));
    assert!(status.success(), "exit status {status}");
    assert_ne!(
        master,
        caller.child.id(),
        "the pid file names the command, not the master"
    );
    assert!(
        answer.as_deref().is_ok_and(|a| a.contains(HELLO)),
        "127.0.0.1:{port} did not answer when -D returned: {answer:?}"
    );

    let err = caller.stderr();
    assert!(err.contains("-D: started"), "{err}");
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{master}/fd/{fd}")).unwrap();
        assert_eq!(target, Path::new("/dev/null"), "fd {fd} of the master");
    }

    assert!(daemon.stop(), "the master did not stop on SIGTERM");
    assert!(!pidfile.exists(), "pid file left behind");
    assert!(!rt.exists(), "runtime dir left behind");
}

/// A pid file that cannot be written fails the start before anything is made: no runtime
/// directory, no worker; with `-D` too.
#[test]
fn a_pid_file_in_a_missing_directory_fails_before_anything_starts() {
    let missing = format!("/nonexistent-hapmaster-{}/h.pid", std::process::id());
    for daemon in [false, true] {
        let t = TestDir::new();
        let cfg = t.join("haproxy.cfg");
        fs::write(&cfg, http_config(&[format!("127.0.0.1:{}", free_port())])).unwrap();
        let rt = t.join("rt");
        let mut args = vec!["-p", missing.as_str()];
        if daemon {
            args.insert(0, "-D");
        }
        let mut caller = Caller::run(hapmaster_command(&rt, &args, &cfg), t.path());
        let status = caller.wait();
        let err = caller.stderr();
        assert_eq!(status.code(), Some(1), "{args:?}:\n{err}");
        assert!(
            err.contains(&missing),
            "{args:?}: the error names the path:\n{err}"
        );
        assert!(!rt.exists(), "{args:?}: runtime dir left behind");
        assert!(!err.contains("starting worker"), "{args:?}:\n{err}");
    }
}

/// A second master on its own runtime directory with the same `-p` and a config that fails
/// leaves the running master's pid file as it was, in the foreground and with `-D`.
#[test]
fn a_failed_start_leaves_the_running_masters_pid_file() {
    let mut first =
        Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{}", free_port())]), &[]);
    assert_eq!(first.pidfile_pid(), Some(first.pid()));
    let pidfile = first.pidfile.to_str().unwrap().to_string();
    for daemon in [false, true] {
        let t = TestDir::new();
        let cfg = t.join("haproxy.cfg");
        fs::write(&cfg, broken_config(free_port())).unwrap();
        let mut args = vec!["-p", pidfile.as_str()];
        if daemon {
            args.insert(0, "-D");
        }
        let mut caller = Caller::run(hapmaster_command(&t.join("rt"), &args, &cfg), t.path());
        let status = caller.wait();
        let err = caller.stderr();
        assert!(!status.success(), "{args:?}:\n{err}");
        assert_eq!(
            first.pidfile_pid(),
            Some(first.pid()),
            "{args:?}: the failed master touched the running master's pid file:\n{err}"
        );
    }
    assert!(first.stop().success());
    assert!(!first.pidfile.exists(), "pid file left behind");
}

/// The pid file is written when the first worker is ready; if it cannot be written then, the
/// start fails: the worker is stopped, the `-D` command returns 1 with the reason.
///
/// The worker is held at start by a Lua script of its config reading a FIFO; the FIFO opened for
/// writing proves the worker started, hence the start-up check of the pid file's directory is
/// past. That directory is then removed, and the worker released.
#[test]
fn a_pid_file_that_cannot_be_written_when_ready_fails_the_start() {
    let t = TestDir::new();
    let gate = t.join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let lua = t.join("gate.lua");
    fs::write(
        &lua,
        format!(
            "local f = io.open(\"{}\", \"r\")\nf:read(\"*l\")\nf:close()\n",
            gate.display()
        ),
    )
    .unwrap();
    let config = http_config(&[format!("127.0.0.1:{}", free_port())]).replacen(
        "global\n",
        &format!("global\n    lua-load {}\n", lua.display()),
        1,
    );
    let cfg = t.join("haproxy.cfg");
    fs::write(&cfg, config).unwrap();
    let (rt, piddir) = (t.join("rt"), t.join("piddir"));
    fs::create_dir(&piddir).unwrap();
    let pidfile = piddir.join("h.pid");
    let mut caller = Caller::run(
        hapmaster_command(&rt, &["-D", "-p", pidfile.to_str().unwrap()], &cfg),
        t.path(),
    );
    let mut writer = poll_until(EVENT, || {
        use std::os::unix::fs::OpenOptionsExt;
        // ENXIO until the worker has opened the FIFO for reading.
        fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&gate)
            .ok()
    })
    .expect("the worker never reached its Lua gate");
    fs::remove_dir(&piddir).unwrap();
    std::io::Write::write_all(&mut writer, b"go\n").unwrap();
    drop(writer);
    let status = caller.wait();
    let left = pids_with_cmdline_containing(t.path());
    let err = caller.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("it is ready, but cannot write pid file"),
        "the reason should be on the caller's stderr:\n{err}"
    );
    assert!(left.is_empty(), "processes left: {left:?}\n{err}");
    assert!(!rt.exists(), "runtime dir left behind");
}
