//! The three reload methods behind one interface, on one generated config.
//!
//! Every run gets its own directory under the benchmark's root in /tmp and its own loopback
//! address (127.0.0.100 and up), so runs never share a port with each other or with anything
//! else on the machine. Every process a run starts has that directory in its command line; the
//! teardown stops them by pid (and checks the command line before signalling a pid it did not
//! spawn itself).

use std::cell::Cell;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hapmaster_loadgen::get_once;

use crate::procfs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Naive,
    HaproxyMaster,
    Hapmaster,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Naive, Method::HaproxyMaster, Method::Hapmaster];
    pub fn name(self) -> &'static str {
        match self {
            Method::Naive => "naive",
            Method::HaproxyMaster => "haproxy-master",
            Method::Hapmaster => "hapmaster",
        }
    }
}

/// Paths and counters shared by every run.
pub struct Env {
    pub haproxy: PathBuf,
    pub hapmaster: PathBuf,
    /// `/tmp/rb<random>`: short, for the unix socket paths under it. Removed when dropped, unless
    /// kept with [`Env::keep`].
    root: tempfile::TempDir,
    runs: Cell<u32>,
}

impl Env {
    pub fn new(haproxy: PathBuf, hapmaster: PathBuf) -> Result<Env, String> {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::Builder::new()
            .prefix("rb")
            // As mkdir(2) makes it: 0777 less the umask.
            .permissions(fs::Permissions::from_mode(0o777))
            .tempdir_in("/tmp")
            .map_err(|e| format!("creating a directory in /tmp: {e}"))?;
        Ok(Env {
            haproxy,
            hapmaster,
            root,
            runs: Cell::new(0),
        })
    }

    /// Keeps the directory of every run (`--keep`) and says where it is.
    pub fn keep(self) -> PathBuf {
        self.root.keep()
    }

    /// A fresh site: its own directory, loopback address and config with `ports` listeners.
    pub fn site(&self, ports: usize, maxconn: usize) -> Result<Site, String> {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let dir = self.root.path().join(n.to_string());
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // 127.0.0.100 .. 127.0.0.254, then 127.0.1.x, ...: one address per run; past
        // PORTS_PER_ADDRESS listeners, the same address with the second octet 1, 2, ...
        let host = |group: usize| -> Result<Ipv4Addr, String> {
            Ok(Ipv4Addr::new(
                127,
                u8::try_from(group).map_err(|_| format!("{ports} listeners: too many"))?,
                u8::try_from(n / 150).map_err(|_| "out of loopback addresses".to_string())?,
                u8::try_from(100 + n % 150).unwrap_or(100),
            ))
        };
        let port_base: u16 = 20000;
        let binds = (0..ports)
            .map(|i| {
                let port = port_base + (i % PORTS_PER_ADDRESS) as u16;
                Ok(SocketAddrV4::new(host(i / PORTS_PER_ADDRESS)?, port))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let addr = SocketAddr::V4(SocketAddrV4::new(host(0)?, port_base));
        TcpListener::bind(addr).map_err(|e| format!("{addr} is not free: {e}"))?;
        let cfg = dir.join("haproxy.cfg");
        let mut c = format!(
            "global\n    maxconn {maxconn}\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
             timeout server 10s\n    timeout http-keep-alive 10s\n\nfrontend fe\n"
        );
        for b in &binds {
            c.push_str(&format!("    bind {b}\n"));
        }
        c.push_str(
            "    http-request return status 200 content-type text/plain hdr X-Pid \"%pid\" \
             string \"hello from haproxy\\n\"\n",
        );
        fs::write(&cfg, c).map_err(|e| format!("writing {}: {e}", cfg.display()))?;
        Ok(Site {
            dir,
            cfg,
            addr,
            ports,
        })
    }
}

/// Listeners per loopback address in a site (ports 20000 and up): 50 000 listeners take five
/// addresses, below the ephemeral ports (32768 and up) each.
const PORTS_PER_ADDRESS: usize = 12_000;

pub struct Site {
    pub dir: PathBuf,
    pub cfg: PathBuf,
    /// The first listener.
    pub addr: SocketAddr,
    pub ports: usize,
}

impl Site {
    fn tag(&self) -> String {
        self.dir.display().to_string() + "/"
    }

    /// Adds a line to the config's `defaults` section, in place (before anything runs it).
    pub fn add_defaults_line(&self, line: &str) -> Result<(), String> {
        let text = fs::read_to_string(&self.cfg)
            .map_err(|e| format!("reading {}: {e}", self.cfg.display()))?;
        let text = text.replacen("defaults\n", &format!("defaults\n    {line}\n"), 1);
        fs::write(&self.cfg, text).map_err(|e| format!("writing {}: {e}", self.cfg.display()))
    }

    /// Writes a copy of the config with an extra `global` line; returns its path.
    pub fn cfg_with_global(&self, name: &str, line: &str) -> Result<PathBuf, String> {
        let text = fs::read_to_string(&self.cfg)
            .map_err(|e| format!("reading {}: {e}", self.cfg.display()))?;
        let text = text.replacen("global\n", &format!("global\n    {line}\n"), 1);
        let p = self.dir.join(name);
        fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
        Ok(p)
    }
}

/// The datagrams received on a NOTIFY_SOCKET, each with its arrival time.
pub struct Notify {
    history: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Notify {
    fn bind(path: &Path) -> Result<Notify, String> {
        let sock = UnixDatagram::bind(path)
            .map_err(|e| format!("binding NOTIFY_SOCKET {}: {e}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| format!("notify socket timeout: {e}"))?;
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (history.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("notify".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !s.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if let Ok(mut v) = h.lock() {
                            v.push((Instant::now(), text));
                        }
                    }
                }
            })
            .map_err(|e| format!("spawning the notify thread: {e}"))?;
        Ok(Notify {
            history,
            stop,
            thread: Some(thread),
        })
    }

    pub fn len(&self) -> usize {
        self.history.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The first datagram at index `from` or later with a `READY=1` line.
    pub fn ready_since(&self, from: usize) -> Option<(Instant, String)> {
        let v = self.history.lock().ok()?;
        v.iter()
            .skip(from)
            .find(|(_, d)| d.lines().any(|l| l == "READY=1"))
            .cloned()
    }

    pub fn count_ready(&self) -> usize {
        self.history
            .lock()
            .map(|v| {
                v.iter()
                    .filter(|(_, d)| d.lines().any(|l| l == "READY=1"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A reload that was sent: when, and how many notify datagrams had arrived before it.
pub struct Sent {
    pub at: Instant,
    pub notify_index: usize,
}

/// One method serving one site.
pub struct Running {
    pub method: Method,
    pub master_pid: Option<u32>,
    child: Option<Child>,
    pub notify: Option<Notify>,
    cfg: PathBuf,
    tag: String,
    addr: SocketAddr,
    pidfile: PathBuf,
    log: PathBuf,
    haproxy: PathBuf,
    naive_pids: Vec<u32>,
    stopped: bool,
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let g = f
        .try_clone()
        .map_err(|e| format!("dup {}: {e}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Polls `GET /` every millisecond until `accept` takes the answering pid, or `deadline`.
pub fn wait_answer(
    addr: SocketAddr,
    deadline: Instant,
    mut accept: impl FnMut(Option<u32>) -> bool,
) -> Option<(Instant, Option<u32>)> {
    loop {
        if let Ok(r) = get_once(addr, Duration::from_secs(1)) {
            if accept(r.pid) {
                return Some((Instant::now(), r.pid));
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

impl Running {
    pub fn start(
        method: Method,
        env: &Env,
        site: &Site,
        timeout: Duration,
    ) -> Result<Running, String> {
        let log = site.dir.join(format!("{}.log", method.name()));
        let mut r = Running {
            method,
            master_pid: None,
            child: None,
            notify: None,
            cfg: site.cfg.clone(),
            tag: site.tag(),
            addr: site.addr,
            pidfile: site.dir.join(format!("{}.pid", method.name())),
            log: log.clone(),
            haproxy: env.haproxy.clone(),
            naive_pids: Vec::new(),
            stopped: false,
        };
        let deadline = Instant::now() + timeout;
        match method {
            Method::Naive => {
                r.naive_command(None)?;
            }
            Method::HaproxyMaster | Method::Hapmaster => {
                let nsock = site.dir.join(format!("{}.notify", method.name()));
                r.notify = Some(Notify::bind(&nsock)?);
                let (out, err) = log_file(&log)?;
                let mut cmd = match method {
                    Method::HaproxyMaster => Command::new(&env.haproxy),
                    _ => {
                        let mut c = Command::new(&env.hapmaster);
                        c.arg("--haproxy")
                            .arg(&env.haproxy)
                            .arg("--runtime-dir")
                            .arg(site.dir.join("rt"));
                        c
                    }
                };
                cmd.arg("-Ws")
                    .arg("-f")
                    .arg(&site.cfg)
                    .env("NOTIFY_SOCKET", &nsock)
                    .env_remove("LISTEN_FDS")
                    .env_remove("LISTEN_PID")
                    .env_remove("JOURNAL_STREAM")
                    .env_remove("RUNTIME_DIRECTORY")
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err);
                let child = cmd
                    .spawn()
                    .map_err(|e| format!("spawning {}: {e}", method.name()))?;
                r.master_pid = Some(child.id());
                r.child = Some(child);
                loop {
                    if r.notify.as_ref().and_then(|n| n.ready_since(0)).is_some() {
                        break;
                    }
                    if let Some(c) = r.child.as_mut() {
                        if let Ok(Some(st)) = c.try_wait() {
                            return Err(format!(
                                "{} exited during start-up ({st}); log: {}",
                                method.name(),
                                log.display()
                            ));
                        }
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "{} sent no READY=1 within {timeout:?}; log: {}",
                            method.name(),
                            log.display()
                        ));
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            }
        }
        if wait_answer(site.addr, deadline, |_| true).is_none() {
            return Err(format!(
                "{} does not answer on {}",
                method.name(),
                site.addr
            ));
        }
        Ok(r)
    }

    /// `haproxy -D -p PIDFILE -f CFG [-sf OLD]`, waited for.
    fn naive_command(&mut self, old: Option<u32>) -> Result<u32, String> {
        let (out, err) = log_file(&self.log)?;
        let mut cmd = Command::new(&self.haproxy);
        cmd.arg("-D")
            .arg("-p")
            .arg(&self.pidfile)
            .arg("-f")
            .arg(&self.cfg)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(old) = old {
            cmd.arg("-sf").arg(old.to_string());
        }
        let st = cmd
            .status()
            .map_err(|e| format!("running haproxy -D: {e}"))?;
        if !st.success() {
            return Err(format!(
                "haproxy -D exited {st}; log: {}",
                self.log.display()
            ));
        }
        let pid = self.read_pidfile()?;
        self.naive_pids.push(pid);
        Ok(pid)
    }

    fn read_pidfile(&self) -> Result<u32, String> {
        let s = fs::read_to_string(&self.pidfile)
            .map_err(|e| format!("reading {}: {e}", self.pidfile.display()))?;
        s.lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("no pid in {}", self.pidfile.display()))
    }

    /// Sends one reload. For naive this runs the command to completion (that is the method).
    pub fn reload(&mut self) -> Result<Sent, String> {
        let notify_index = self.notify.as_ref().map_or(0, Notify::len);
        let at = Instant::now();
        match self.method {
            Method::Naive => {
                let old = self.read_pidfile()?;
                self.naive_command(Some(old))?;
            }
            _ => {
                let pid = self.master_pid.ok_or("no master pid")?;
                procfs::kill(pid, libc::SIGUSR2)?;
            }
        }
        Ok(Sent { at, notify_index })
    }

    /// Reloads that completed: READY=1 after the first one (master methods).
    pub fn ready_reloads(&self) -> usize {
        self.notify
            .as_ref()
            .map_or(0, |n| n.count_ready().saturating_sub(1))
    }

    /// The worker currently answering (X-Pid).
    pub fn answering_pid(&self) -> Result<u32, String> {
        let r = get_once(self.addr, Duration::from_secs(5))
            .map_err(|f| format!("GET {}: {}", self.addr, f.text))?;
        r.pid.ok_or_else(|| "no X-Pid header".to_string())
    }

    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Stops everything this run started; waits until the first port is free again.
    pub fn stop(mut self) -> Result<(), String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        if let Some(mut c) = self.child.take() {
            let _ = procfs::kill(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        for &pid in &self.naive_pids {
            if procfs::alive(pid) && procfs::cmdline_contains(pid, &self.tag) {
                let _ = procfs::kill(pid, libc::SIGTERM);
            }
        }
        // Whatever is left of this run (workers, daemons): SIGTERM, then SIGKILL.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = procfs::pids_with_cmdline(&self.tag);
            if left.is_empty() {
                break;
            }
            let sig = if Instant::now() >= deadline {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            };
            for pid in left {
                let _ = procfs::kill(pid, sig);
            }
            if Instant::now() >= deadline + Duration::from_secs(2) {
                return Err(format!("processes of {} survive SIGKILL", self.tag));
            }
            thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(self.addr).is_err() {
            if Instant::now() >= deadline {
                return Err(format!("{} still in use after the teardown", self.addr));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

/// The floor: bare `haproxy -db -f CFG` from spawn to its first HTTP response.
pub fn floor_once(env: &Env, site: &Site, timeout: Duration) -> Result<Duration, String> {
    let (out, err) = log_file(&site.dir.join("floor.log"))?;
    let t0 = Instant::now();
    let mut child = Command::new(&env.haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&site.cfg)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawning haproxy -db: {e}"))?;
    let pid = child.id();
    let got = wait_answer(site.addr, t0 + timeout, |p| p == Some(pid));
    let _ = procfs::kill(pid, libc::SIGTERM);
    let _ = child.wait();
    match got {
        Some((t, _)) => Ok(t - t0),
        None => Err(format!("bare haproxy did not answer within {timeout:?}")),
    }
}

/// Bare `haproxy -db -f CFG` as a child, for the overhead comparison and the handoff scenario.
pub struct Bare {
    child: Child,
}

impl Bare {
    pub fn start(env: &Env, cfg: &Path, args: &[&str], site: &Site) -> Result<Bare, String> {
        let (out, err) = log_file(&site.dir.join("bare.log"))?;
        let child = Command::new(&env.haproxy)
            .arg("-db")
            .arg("-f")
            .arg(cfg)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning haproxy -db: {e}"))?;
        Ok(Bare { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = procfs::kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}
