//! hapmaster under test.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A configuration to start hapmaster with: text written to `<dir>/haproxy.cfg`, or an existing file.
pub enum Cfg {
    Text(String),
    File(PathBuf),
}

impl From<&str> for Cfg {
    fn from(s: &str) -> Cfg {
        Cfg::Text(s.to_string())
    }
}

impl From<String> for Cfg {
    fn from(s: String) -> Cfg {
        Cfg::Text(s)
    }
}

impl From<&Path> for Cfg {
    fn from(p: &Path) -> Cfg {
        Cfg::File(p.to_path_buf())
    }
}

impl From<PathBuf> for Cfg {
    fn from(p: PathBuf) -> Cfg {
        Cfg::File(p)
    }
}

/// A running `hapmaster` (the binary built by cargo) with its own temp dir:
/// `<dir>/haproxy.cfg` (when given as text), `<dir>/rt` (`--runtime-dir`, created by hapmaster),
/// `<dir>/hapmaster.pid` (`-p`), `<dir>/notify.sock` (`NOTIFY_SOCKET`), `<dir>/stderr.log`.
/// It is started as `hapmaster --haproxy H --runtime-dir R -Ws [extra...] -f CFG -p PIDFILE`.
pub struct Hapmaster {
    pub cfg_path: PathBuf,
    pub runtime_dir: PathBuf,
    pub pidfile: PathBuf,
    pub notify_path: PathBuf,
    pub stderr_path: PathBuf,
    child: Option<Child>,
    pid: u32,
    exit: Option<ExitStatus>,
    notify: UnixDatagram,
    /// Every datagram received, in order.
    history: Vec<String>,
    /// Index in `history` of the first datagram not yet consumed by a `wait_notify`.
    cursor: usize,
    /// Worker pids hapmaster reported, with their start time (to never signal a reused pid).
    workers: Vec<(u32, u64)>,
    current_worker: Option<u32>,
    // Last field: dropped after the child is killed.
    dir: TestDir,
}

impl Hapmaster {
    /// Starts hapmaster in a fresh temp dir. Does not wait for anything; see [`Hapmaster::start_ready`].
    pub fn start(cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        Hapmaster::start_in(TestDir::new(), cfg, extra_args)
    }

    /// Starts hapmaster and waits ([`EVENT`]) for its first `READY=1` + `Serving` datagram.
    pub fn start_ready(cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        let mut hm = Hapmaster::start(cfg, extra_args);
        hm.wait_serving(EVENT);
        hm
    }

    /// Serves [`http_config`] on a free port of 127.0.0.1, with an extra master CLI socket any
    /// user may use (`-S <dir>/cli.sock,mode,666`); waits ([`EVENT`]) until it serves. Returns
    /// the port and that socket's path too.
    pub fn serving_with_cli(extra_args: &[&str]) -> (Hapmaster, u16, PathBuf) {
        let port = free_port();
        let dir = TestDir::new();
        let cli = dir.join("cli.sock");
        let spec = format!("{},mode,666", cli.display());
        let mut args = vec!["-S", spec.as_str()];
        args.extend_from_slice(extra_args);
        let mut hm = Hapmaster::start_in(dir, http_config(&[format!("127.0.0.1:{port}")]), &args);
        hm.wait_serving(EVENT);
        (hm, port, cli)
    }

    /// Like [`Hapmaster::start`] in a dir the caller already made (to put paths in the config).
    pub fn start_in(dir: TestDir, cfg: impl Into<Cfg>, extra_args: &[&str]) -> Hapmaster {
        Hapmaster::start_binary_in(
            Path::new(env!("CARGO_BIN_EXE_hapmaster")),
            dir,
            cfg,
            extra_args,
        )
    }

    /// `start_in` with another copy of the binary (upgrade-in-place tests replace it on disk).
    pub fn start_binary_in(
        binary: &Path,
        dir: TestDir,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        let runtime_dir = dir.join("rt");
        Hapmaster::launch(binary, dir, &runtime_dir, cfg, extra_args)
    }

    /// Like [`Hapmaster::start_in`], but with `--runtime-dir runtime_dir` instead of `<dir>/rt`:
    /// a second master on the runtime directory an earlier (killed) one left behind. Keep the
    /// earlier `Hapmaster` alive until this one is dropped: dropping it removes its dir.
    pub fn start_on_runtime_dir(
        dir: TestDir,
        runtime_dir: &Path,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        let binary = Path::new(env!("CARGO_BIN_EXE_hapmaster"));
        Hapmaster::launch(binary, dir, runtime_dir, cfg, extra_args)
    }

    /// Like [`Hapmaster::start_in`], with `fd` passed to hapmaster as fd `as_fd` (inheritable,
    /// as a shell's `exec 3<>` or a supervisor would pass it), e.g. for `-S fd@3`.
    pub fn start_in_passing(
        dir: TestDir,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
        fd: std::os::fd::BorrowedFd<'_>,
        as_fd: i32,
    ) -> Hapmaster {
        let binary = Path::new(env!("CARGO_BIN_EXE_hapmaster"));
        let runtime_dir = dir.join("rt");
        let pass = (std::os::fd::AsRawFd::as_raw_fd(&fd), as_fd);
        Hapmaster::launch_passing(binary, dir, &runtime_dir, cfg, extra_args, Some(pass))
    }

    fn launch(
        binary: &Path,
        dir: TestDir,
        runtime_dir: &Path,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
    ) -> Hapmaster {
        Hapmaster::launch_passing(binary, dir, runtime_dir, cfg, extra_args, None)
    }

    fn launch_passing(
        binary: &Path,
        dir: TestDir,
        runtime_dir: &Path,
        cfg: impl Into<Cfg>,
        extra_args: &[&str],
        pass: Option<(i32, i32)>,
    ) -> Hapmaster {
        let runtime_dir = runtime_dir.to_path_buf();
        let cfg_path = match cfg.into() {
            Cfg::Text(t) => {
                let p = dir.join("haproxy.cfg");
                fs::write(&p, t).expect("writing haproxy.cfg");
                p
            }
            Cfg::File(p) => p,
        };
        let pidfile = dir.join("hapmaster.pid");
        let notify_path = dir.join("notify.sock");
        let stderr_path = dir.join("stderr.log");
        let notify = UnixDatagram::bind(&notify_path).expect("binding the notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stderr = fs::File::create(&stderr_path).expect("creating stderr.log");
        let mut cmd = Command::new(binary);
        cmd.arg("--haproxy")
            .arg(haproxy_path())
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .arg("-Ws")
            .args(extra_args)
            .arg("-f")
            .arg(&cfg_path)
            .arg("-p")
            .arg(&pidfile)
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stderr.try_clone().unwrap()))
            .stderr(Stdio::from(stderr));
        if let Some((fd, as_fd)) = pass {
            pass_fd(&mut cmd, fd, as_fd);
        }
        let child = cmd.spawn().expect("spawning hapmaster");
        let pid = child.id();
        Hapmaster {
            cfg_path,
            runtime_dir,
            pidfile,
            notify_path,
            stderr_path,
            child: Some(child),
            pid,
            exit: None,
            notify,
            history: Vec::new(),
            cursor: 0,
            workers: Vec::new(),
            current_worker: None,
            dir,
        }
    }

    /// The master's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Overwrites the config file (for a reload).
    pub fn write_config(&self, text: &str) {
        fs::write(&self.cfg_path, text).expect("rewriting the config");
    }

    /// What hapmaster (and haproxy) wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// All datagrams received so far (including those not yet consumed).
    pub fn history(&mut self) -> &[String] {
        self.receive_pending();
        &self.history
    }

    fn record(&mut self, d: String) {
        if let Some(pid) = worker_pid_in(&d) {
            if let Some(st) = proc_stat(pid) {
                if !self.workers.contains(&(pid, st.starttime)) {
                    self.workers.push((pid, st.starttime));
                }
            }
            if is_serving(&d) {
                self.current_worker = Some(pid);
            }
        }
        self.history.push(d);
    }

    /// Receives one datagram, waiting at most ~100 ms. `None` on timeout.
    fn recv_one(&mut self) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        match self.notify.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            // EINTR too: a receive with SO_RCVTIMEO is not restarted after a stop signal.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket recv: {e} ({:?})", e.kind()),
        }
    }

    fn receive_pending(&mut self) {
        self.notify.set_nonblocking(true).unwrap();
        while let Some(d) = self.recv_one() {
            self.record(d);
        }
        self.notify.set_nonblocking(false).unwrap();
    }

    /// The first datagram not yet consumed that matches `pred`, waiting up to `timeout`. Datagrams
    /// before it are consumed (still in [`Hapmaster::history`]). `None` on timeout.
    pub fn try_wait_notify(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.cursor < self.history.len() {
                let i = self.cursor;
                self.cursor += 1;
                if pred(&self.history[i]) {
                    return Some(self.history[i].clone());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            if let Some(d) = self.recv_one() {
                self.record(d);
            } else if self.try_reap().is_some() {
                // The master is gone: nothing more can come once the socket is drained.
                self.receive_pending();
                if self.cursor == self.history.len() {
                    return None;
                }
            }
        }
    }

    /// Like [`Hapmaster::try_wait_notify`] but panics on timeout, showing what was received.
    pub fn wait_notify(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        match self.try_wait_notify(pred, timeout) {
            Some(d) => d,
            None => panic!(
                "no matching notify datagram within {timeout:?}; master {}; datagrams so far:\n{}",
                match self.exit {
                    Some(s) => format!("exited: {s}"),
                    None => "running".into(),
                },
                self.history_text()
            ),
        }
    }

    /// Waits for `READY=1` + `STATUS=Serving: worker pid P, ...` and returns P.
    pub fn wait_serving(&mut self, timeout: Duration) -> u32 {
        let d = self.wait_notify(is_serving, timeout);
        worker_pid_in(&d).unwrap()
    }

    /// Every datagram that arrives during `window` (also consumed). For "nothing more happens" checks.
    pub fn collect_notify(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        while Instant::now() < deadline {
            if let Some(d) = self.recv_one() {
                self.record(d);
            }
        }
        let out = self.history[self.cursor..].to_vec();
        self.cursor = self.history.len();
        out
    }

    pub fn history_text(&self) -> String {
        self.history
            .iter()
            .enumerate()
            .map(|(i, d)| format!("  #{i}: {}", d.replace('\n', " | ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One command on the master CLI (`<runtime dir>/master.sock`), its answer read to the end.
    pub fn cli(&self, line: &str) -> String {
        let path = self.runtime_dir.join("master.sock");
        let mut s = UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", path.display()));
        s.set_read_timeout(Some(EVENT)).unwrap();
        s.set_write_timeout(Some(EVENT)).unwrap();
        s.write_all(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("sending {line:?} to {}: {e}", path.display()));
        let _ = s.shutdown(Shutdown::Write);
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .unwrap_or_else(|e| panic!("reading the answer to {line:?}: {e}"));
        answer
    }

    /// True while the last `RELOADING=1` received has no `READY=1` after it.
    fn reload_running(&mut self) -> bool {
        self.history()
            .iter()
            .rev()
            .find(|d| is_reloading(d) || has_line(d, "READY=1"))
            .is_some_and(|d| is_reloading(d))
    }

    /// Returns once the master has acted on every signal sent to it before this call, and no
    /// reload is running or queued: what a test needs before it counts reloads, with no quiet
    /// period that assumes a speed.
    ///
    /// Why two master CLI round trips prove it: the master is single-threaded, so a signal sent
    /// before the first command is handled (its flag set, its byte written to the self-pipe)
    /// before the master runs any code to answer that command. The second command is read in a
    /// later turn of the loop, and each turn handles the self-pipe first; a reload it starts
    /// sends `RELOADING=1` before that answer is written. A reload queued behind a running one
    /// starts in the same turn as the running one's `READY=1`.
    pub fn settle_reloads(&mut self) {
        let deadline = Instant::now() + EVENT;
        loop {
            while self.reload_running() {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_notify(|d| has_line(d, "READY=1"), left);
            }
            self.cli("show proc");
            self.cli("show proc");
            if !self.reload_running() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reloads did not settle within {EVENT:?}:\n{}",
                self.history_text()
            );
        }
    }

    /// The worker pid of the last `Serving` datagram received.
    pub fn current_worker_pid(&self) -> Option<u32> {
        self.current_worker
    }

    /// All worker pids hapmaster reported so far.
    pub fn reported_workers(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.0).collect()
    }

    /// Reported workers that are still the same, live process.
    pub fn live_reported_workers(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|(pid, start)| {
                matches!(proc_stat(*pid), Some(s) if s.starttime == *start && s.state != 'Z' && s.state != 'X')
            })
            .map(|w| w.0)
            .collect()
    }

    /// Sends `sig` to the master.
    pub fn signal(&self, sig: i32) {
        assert!(
            self.exit.is_none(),
            "hapmaster already exited: {:?}",
            self.exit
        );
        kill(self.pid, sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Reaps the master if it exited; its exit status.
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    self.exit = Some(s);
                }
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.try_reap())
    }

    /// SIGTERM, then wait ([`EVENT`]) for the exit; panics if it does not exit.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(s) = self.exit {
            return s;
        }
        self.signal(SIGTERM);
        match self.wait_exit(EVENT) {
            Some(s) => s,
            None => panic!(
                "hapmaster (pid {}) did not exit within {EVENT:?} of SIGTERM",
                self.pid
            ),
        }
    }

    /// The pid in the pidfile, if any.
    pub fn pidfile_pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    fn dump(&mut self) {
        self.receive_pending();
        eprintln!(
            "===== hapmaster pid {} ({}) stderr =====\n{}\n===== notify datagrams =====\n{}\n=====",
            self.pid,
            match self.exit {
                Some(s) => format!("exited: {s}"),
                None => "running".into(),
            },
            self.stderr(),
            self.history_text()
        );
    }
}

impl Drop for Hapmaster {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump();
        }
        self.try_reap();
        // Children as they are now (they are reparented once the master dies). Only while the
        // master is unreaped: after that its pid may belong to someone else.
        let kids: Vec<(u32, u64)> = if self.exit.is_none() {
            children_of(self.pid)
                .into_iter()
                .map(|s| (s.pid, s.starttime))
                .collect()
        } else {
            Vec::new()
        };
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for (pid, start) in kids.iter().chain(self.workers.iter()) {
            if matches!(proc_stat(*pid), Some(s) if s.starttime == *start && s.state != 'Z') {
                let _ = kill(*pid, SIGKILL);
            }
        }
        // Workers hapmaster never reported (it died first) are orphans by now; they name files in
        // this test's unique dir on their command line, which identifies them.
        for pid in pids_with_cmdline_containing(self.dir.path()) {
            let _ = kill(pid, SIGKILL);
        }
    }
}

/// `hapmaster --haproxy H --runtime-dir RT [extra...] -f CFG`, for a test that starts it by hand
/// (not through `Hapmaster`): no `NOTIFY_SOCKET`, stdin from /dev/null; the caller sets the rest.
pub fn hapmaster_command(runtime_dir: &Path, extra: &[&str], cfg: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hapmaster"));
    cmd.arg("--haproxy")
        .arg(haproxy_path())
        .arg("--runtime-dir")
        .arg(runtime_dir)
        .args(extra)
        .arg("-f")
        .arg(cfg)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null());
    cmd
}

/// Makes `cmd`'s process get `fd` as fd `as_fd`, inheritable (dup2 between fork and exec).
pub fn pass_fd(cmd: &mut Command, fd: i32, as_fd: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only dup2 between fork and exec (async-signal-safe); dup2 leaves `as_fd`
    // inheritable, as a shell's `exec 3<>` would.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would leave the close-on-exec flag set.
            let done = if fd == as_fd {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, as_fd)
            };
            if done < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// One command on a master CLI socket, its answer read to the end; `Err` (saying which step) if
/// the master does not take or answer it within `limit`: for a test whose point is that the
/// master answers, where [`Hapmaster::cli`] would wait [`EVENT`] and panic.
pub fn cli_within(socket: &Path, line: &str, limit: Duration) -> Result<String, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connecting: {e}"))?;
    s.set_read_timeout(Some(limit)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    s.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("sending {line:?}: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("no answer to {line:?} within {limit:?}: {e}"))?;
    Ok(answer)
}

/// A hapmaster started by hand (not through `Hapmaster`): on drop, if the test did not wait for
/// it (a failed assertion), it gets SIGTERM so that it stops its workers too, then SIGKILL after
/// [`EVENT`], and is reaped.
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM and wait (bounded) for the exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.0.try_wait() {
            return Some(s);
        }
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        poll_until(timeout, || self.0.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.stop(EVENT).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
