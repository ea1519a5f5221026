//! Upgrade in place: after a package upgrade replaced the binary on disk, the master re-executes
//! it. Same pid, so systemd's MAINPID and the workers' parent stay; the held listening sockets
//! and the runtime directory's lock cross the exec as inherited fds; everything else the new
//! image needs travels in one environment variable, written and read here.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::metrics::{LastReload, Totals};
use super::state::{Generation, Pid, Role, StateSnapshot, Worker};
use crate::handoff::wire::Record;

/// The environment variable that carries a `Snapshot` to the re-executed image.
pub const STATE_ENV: &str = "HAPMASTER_UPGRADE_STATE";
/// Bumped when the format changes, so an older binary refuses a newer snapshot.
const FORMAT: &str = "hapmaster-upgrade 3";
/// Format 2 lacks the `metrics` line: still read, the metrics' counters start afresh.
const FORMAT_2: &str = "hapmaster-upgrade 2";
/// The format of the images before `show proc`'s times and counts crossed the exec: still read,
/// so an upgrade from such an image works; what it lacks starts afresh, as it did then.
const FORMAT_1: &str = "hapmaster-upgrade 1";

/// A moment as CLOCK_MONOTONIC microseconds: the clock `Instant` reads on Linux, which an exec
/// does not reset, so a start time crosses an upgrade in place as one.
pub type MonotonicUsec = u64;

/// `at` on CLOCK_MONOTONIC, given one reading of both clocks (`now`, `now_usec`).
pub fn monotonic_usec_of(at: Instant, now: Instant, now_usec: MonotonicUsec) -> MonotonicUsec {
    let age = now.saturating_duration_since(at).as_micros();
    now_usec.saturating_sub(u64::try_from(age).unwrap_or(u64::MAX))
}

/// The `Instant` of a CLOCK_MONOTONIC reading, given one reading of both clocks; a moment
/// after `now` (no clock does that) or before the clock's start is taken as `now`.
pub fn instant_of_monotonic_usec(
    usec: MonotonicUsec,
    now: Instant,
    now_usec: MonotonicUsec,
) -> Instant {
    now.checked_sub(Duration::from_micros(now_usec.saturating_sub(usec)))
        .unwrap_or(now)
}

/// One reading of both clocks: what converts an `Instant` to a CLOCK_MONOTONIC reading and back.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: Instant,
    pub usec: MonotonicUsec,
}

impl Clock {
    pub fn read() -> Clock {
        Clock {
            now: Instant::now(),
            usec: crate::notify::monotonic_usec(),
        }
    }

    fn usec_of(&self, at: Instant) -> MonotonicUsec {
        monotonic_usec_of(at, self.now, self.usec)
    }

    /// `None` (unknown, from a format 1 snapshot) is now.
    fn instant_of(&self, usec: Option<MonotonicUsec>) -> Instant {
        usec.map_or(self.now, |u| {
            instant_of_monotonic_usec(u, self.now, self.usec)
        })
    }
}

/// The executor's record of a worker, as much of it as crosses the exec; what the state machine
/// knows of the worker is in `Snapshot::state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSnapshot {
    pub pid: Pid,
    /// The master's reload count when it was started (`show proc` counts the reloads since).
    pub reloads_at_spawn: u64,
    /// The haproxy version it reported, once ready.
    pub version: Option<String>,
    /// The read end of its stderr pipe.
    pub output: Option<RawFd>,
}

/// What `show proc` says of the master itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterSnapshot {
    /// Now, from a format 1 snapshot.
    pub started: Instant,
    /// Reload attempts, failed ones included. Images before issue 13 counted successes only
    /// (and `failed_reloads` never went back to 0): the same fields, so format 2 is kept and
    /// such counts read as they were written, until the next reload counts anew.
    pub reloads: u64,
    /// Failed reloads in a row.
    pub failed_reloads: u64,
    /// `show metrics`' counters (zero from formats 1 and 2).
    pub metrics: Totals,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSnapshot {
    pub fd: RawFd,
    pub record: Record,
}

/// What the master knows that the new image cannot rediscover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub runtime_dir: PathBuf,
    pub runtime_created: bool,
    pub lock_fd: RawFd,
    pub master: MasterSnapshot,
    /// The state machine's, handed to `State::resume` as it is.
    pub state: StateSnapshot,
    /// The executor's record of each worker.
    pub workers: Vec<WorkerSnapshot>,
    pub held: Vec<HeldSnapshot>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotError(String);

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot read the state handed over by the previous hapmaster image ({STATE_ENV}): {}",
            self.0
        )
    }
}

impl std::error::Error for SnapshotError {}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Starting => "starting",
        Role::Current => "current",
        Role::Draining => "draining",
        Role::Failed => "failed",
        Role::Terminating => "terminating",
    }
}

fn parse_role(word: &str) -> Option<Role> {
    Some(match word {
        "starting" => Role::Starting,
        "current" => Role::Current,
        "draining" => Role::Draining,
        "failed" => Role::Failed,
        "terminating" => Role::Terminating,
        _ => return None,
    })
}

/// Hex keeps paths and interface names of any bytes on one space-separated line.
fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".to_string();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text == "-" {
        return Some(Vec::new());
    }
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Snapshot {
    /// Times are written as CLOCK_MONOTONIC readings, by `clock`.
    pub fn encode(&self, clock: Clock) -> String {
        use std::os::unix::ffi::OsStrExt;
        let mut out = format!(
            "{FORMAT}\nruntime {} {} {}\ngeneration {} {}\n",
            hex(self.runtime_dir.as_os_str().as_bytes()),
            u8::from(self.runtime_created),
            self.lock_fd,
            self.state.next_generation,
            self.state.crash_streak,
        );
        out.push_str(&format!(
            "master {} {} {}\n",
            clock.usec_of(self.master.started),
            self.master.reloads,
            self.master.failed_reloads
        ));
        let m = &self.master.metrics;
        let last = m.last_reload.map_or("- - -".to_string(), |l| {
            let at =
                l.at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros());
            format!("{} {} {at}", u8::from(l.success), l.duration.as_micros())
        });
        out.push_str(&format!(
            "metrics {} {} {} {last}\n",
            m.reloads_ok, m.reloads_failed, m.worker_restarts
        ));
        if let Some(pid) = self.state.current {
            out.push_str(&format!("current {pid}\n"));
        }
        for w in &self.state.workers {
            let record = self.workers.iter().find(|r| r.pid == w.pid);
            let version = record
                .and_then(|r| r.version.as_deref())
                .unwrap_or_default();
            out.push_str(&format!(
                "worker {} {} {} {} {} {}\n",
                w.pid,
                w.generation,
                role_word(w.role),
                clock.usec_of(w.started),
                record.map_or(self.master.reloads, |r| r.reloads_at_spawn),
                hex(version.as_bytes())
            ));
        }
        for r in &self.workers {
            if let Some(fd) = r.output {
                out.push_str(&format!("output {} {fd}\n", r.pid));
            }
        }
        for h in &self.held {
            out.push_str(&format!(
                "held {} {} {} {}\n",
                h.fd,
                hex(&h.record.namespace),
                hex(&h.record.interface),
                hex(&h.record.options)
            ));
        }
        out
    }

    /// Times are read back by `clock`; those a format 1 snapshot lacks are `clock.now`.
    pub fn decode(text: &str, clock: Clock) -> Result<Snapshot, SnapshotError> {
        use std::os::unix::ffi::OsStringExt;
        let mut lines = text.lines();
        let first = lines.next();
        let v1 = first == Some(FORMAT_1);
        let v2 = first == Some(FORMAT_2);
        if !v1 && !v2 && first != Some(FORMAT) {
            return Err(SnapshotError(format!(
                "not in the format {FORMAT:?} (nor the older {FORMAT_1:?}): \
                 written by a newer hapmaster?"
            )));
        }
        let mut master = None;
        let mut metrics = None;
        let mut snap = Snapshot {
            runtime_dir: PathBuf::new(),
            runtime_created: false,
            lock_fd: -1,
            master: MasterSnapshot {
                started: clock.now,
                reloads: 0,
                failed_reloads: 0,
                metrics: Totals::default(),
            },
            state: StateSnapshot {
                workers: Vec::new(),
                current: None,
                next_generation: 0,
                crash_streak: 0,
            },
            workers: Vec::new(),
            held: Vec::new(),
        };
        for (n, line) in lines.enumerate() {
            let bad = || SnapshotError(format!("line {}: {line:?}", n + 2));
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
            let count = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).ok_or_else(bad);
            let when = |i: usize| match f.get(i) {
                Some(&"-") => Ok(None),
                _ => count(i).map(Some),
            };
            match (f[0], f.len()) {
                ("runtime", 4) => {
                    let dir = unhex(f[1]).ok_or_else(bad)?;
                    snap.runtime_dir = PathBuf::from(OsString::from_vec(dir));
                    snap.runtime_created = num(2)? == 1;
                    snap.lock_fd = RawFd::try_from(num(3)?).map_err(|_| bad())?;
                }
                ("generation", 3) => {
                    snap.state.next_generation =
                        Generation::try_from(num(1)?).map_err(|_| bad())?;
                    snap.state.crash_streak = u32::try_from(num(2)?).map_err(|_| bad())?;
                }
                ("current", 2) => {
                    snap.state.current = Some(Pid::try_from(num(1)?).map_err(|_| bad())?)
                }
                ("master", 4) if !v1 && master.is_none() => {
                    master = Some(MasterSnapshot {
                        started: clock.instant_of(when(1)?),
                        reloads: count(2)?,
                        failed_reloads: count(3)?,
                        metrics: Totals::default(),
                    })
                }
                ("metrics", 7) if !v1 && !v2 && metrics.is_none() => {
                    let last_reload = match f[4] {
                        "-" if f[5] == "-" && f[6] == "-" => None,
                        _ => Some(LastReload {
                            success: match count(4)? {
                                0 => false,
                                1 => true,
                                _ => return Err(bad()),
                            },
                            duration: Duration::from_micros(count(5)?),
                            at: std::time::UNIX_EPOCH + Duration::from_micros(count(6)?),
                        }),
                    };
                    metrics = Some(Totals {
                        reloads_ok: count(1)?,
                        reloads_failed: count(2)?,
                        worker_restarts: count(3)?,
                        last_reload,
                    })
                }
                ("worker", 4 | 7) if v1 == (f.len() == 4) => {
                    let pid = Pid::try_from(num(1)?).map_err(|_| bad())?;
                    snap.state.workers.push(Worker {
                        pid,
                        generation: Generation::try_from(num(2)?).map_err(|_| bad())?,
                        role: parse_role(f[3]).ok_or_else(bad)?,
                        started: clock.instant_of(if v1 { None } else { when(4)? }),
                    });
                    let (reloads_at_spawn, version) = if v1 {
                        (0, None)
                    } else {
                        let version = match unhex(f[6]).ok_or_else(bad)? {
                            v if v.is_empty() => None,
                            v => Some(String::from_utf8(v).map_err(|_| bad())?),
                        };
                        (count(5)?, version)
                    };
                    snap.workers.push(WorkerSnapshot {
                        pid,
                        reloads_at_spawn,
                        version,
                        output: None,
                    });
                }
                ("output", 3) => {
                    let pid = Pid::try_from(num(1)?).map_err(|_| bad())?;
                    let fd = RawFd::try_from(num(2)?).map_err(|_| bad())?;
                    match snap.workers.iter_mut().find(|r| r.pid == pid) {
                        Some(record) => record.output = Some(fd),
                        // Not a worker's: still an fd to take over and close.
                        None => snap.workers.push(WorkerSnapshot {
                            pid,
                            reloads_at_spawn: 0,
                            version: None,
                            output: Some(fd),
                        }),
                    }
                }
                ("held", 5) => {
                    let options: [u8; 4] = unhex(f[4])
                        .and_then(|o| o.try_into().ok())
                        .ok_or_else(bad)?;
                    snap.held.push(HeldSnapshot {
                        fd: RawFd::try_from(num(1)?).map_err(|_| bad())?,
                        record: Record {
                            namespace: unhex(f[2]).ok_or_else(bad)?,
                            interface: unhex(f[3]).ok_or_else(bad)?,
                            options,
                        },
                    });
                }
                _ => return Err(bad()),
            }
        }
        if snap.lock_fd < 0 || snap.runtime_dir.as_os_str().is_empty() {
            return Err(SnapshotError("no runtime line".into()));
        }
        match master {
            Some(m) => snap.master = m,
            None if v1 => {}
            None => return Err(SnapshotError("no master line".into())),
        }
        match metrics {
            Some(m) => snap.master.metrics = m,
            None if v1 || v2 => {}
            None => return Err(SnapshotError("no metrics line".into())),
        }
        Ok(snap)
    }

    /// Takes the snapshot a previous image left in the environment, if any, and removes it so
    /// that no worker inherits it.
    pub fn take_from_env() -> Option<Result<Snapshot, SnapshotError>> {
        let text = std::env::var_os(STATE_ENV)?;
        std::env::remove_var(STATE_ENV);
        Some(match text.into_string() {
            Ok(t) => Snapshot::decode(&t, Clock::read()),
            Err(_) => Err(SnapshotError("not UTF-8".into())),
        })
    }
}

/// How this master was started: what an upgrade in place executes again.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The binary's path as resolved at start; after a package upgrade it names the new binary.
    pub exe: PathBuf,
    /// The original argv, argv[0] included.
    pub argv: Vec<OsString>,
    /// fds inherited from whatever started the first image (kept from the workers by
    /// close-on-exec, see `inherited_fds`): handed on to the next image, which holds them as the
    /// first one did. Open for the life of the process; never closed by it.
    pub inherited: Vec<RawFd>,
}

impl Launch {
    pub fn of_current_process(inherited: Vec<RawFd>) -> io::Result<Launch> {
        Ok(Launch {
            exe: std::env::current_exe()?,
            argv: std::env::args_os().collect(),
            inherited,
        })
    }
}

fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on {
        FdFlag::FD_CLOEXEC
    } else {
        FdFlag::empty()
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))
        .map(drop)
        .map_err(io::Error::from)
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::other("argument with a NUL byte"))
}

/// Re-executes `launch` with `snapshot` in the environment and the `keep` fds inherited. Returns
/// only if the exec failed, with CLOEXEC, the signal mask and the environment restored, so the
/// master goes on as it was.
pub fn exec(
    launch: &Launch,
    snapshot: &Snapshot,
    keep: &[BorrowedFd<'_>],
    notify_socket: Option<&OsStr>,
) -> io::Error {
    let exe = match cstring(launch.exe.as_os_str()) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let argv: io::Result<Vec<CString>> = launch.argv.iter().map(|a| cstring(a)).collect();
    let argv = match argv {
        Ok(a) => a,
        Err(e) => return e,
    };
    // Only here, right before exec, are these fds made inheritable: no child spawned in between.
    for fd in keep {
        if let Err(e) = set_cloexec(*fd, false) {
            restore(keep);
            return e;
        }
    }
    std::env::set_var(STATE_ENV, snapshot.encode(Clock::read()));
    if let Some(value) = notify_socket {
        // from_env removed it at start; the new image reads (and removes) it again.
        std::env::set_var(crate::notify::NOTIFY_SOCKET, value);
    }
    if let Err(e) = super::signals::block_handled() {
        restore(keep);
        return e;
    }
    // execv returns only on failure; std's Command::exec would reset the signal mask.
    let err = match nix::unistd::execv(&exe, &argv) {
        Err(errno) => io::Error::from(errno),
        Ok(never) => match never {},
    };
    restore(keep);
    let _ = super::signals::unblock_handled();
    err
}

fn restore(keep: &[BorrowedFd<'_>]) {
    for fd in keep {
        let _ = set_cloexec(*fd, true);
    }
    std::env::remove_var(STATE_ENV);
    std::env::remove_var(crate::notify::NOTIFY_SOCKET);
}

/// Takes ownership of an fd inherited across the exec, after checking it is open (wrapping a
/// closed number would later close someone else's fd), and makes it CLOEXEC again.
pub fn adopt_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) on an arbitrary number only reads its flags; EBADF means not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("fd {fd} named by the previous image is not open"),
        ));
    }
    // SAFETY: the fd is open, and the previous image handed it to us to own: nothing else in
    // this new image knows its number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(std::os::fd::AsFd::as_fd(&owned), true)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> Clock {
        Clock {
            now: Instant::now(),
            usec: 50_000_000,
        }
    }

    fn sample(c: Clock) -> Snapshot {
        let at = |usec| c.instant_of(Some(usec));
        Snapshot {
            runtime_dir: PathBuf::from("/run/hap master"),
            runtime_created: true,
            lock_fd: 4,
            master: MasterSnapshot {
                started: at(1_000_000),
                reloads: 7,
                failed_reloads: 2,
                metrics: Totals {
                    reloads_ok: 5,
                    reloads_failed: 2,
                    worker_restarts: 1,
                    last_reload: Some(LastReload {
                        success: false,
                        duration: Duration::from_micros(1_250_000),
                        at: std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
                    }),
                },
            },
            state: StateSnapshot {
                next_generation: 9,
                current: Some(120),
                crash_streak: 2,
                workers: vec![
                    Worker {
                        pid: 120,
                        generation: 8,
                        role: Role::Current,
                        started: at(9_000_000),
                    },
                    Worker {
                        pid: 110,
                        generation: 7,
                        role: Role::Draining,
                        started: at(8_000_000),
                    },
                ],
            },
            workers: vec![
                WorkerSnapshot {
                    pid: 120,
                    reloads_at_spawn: 6,
                    version: Some("2.6.12-1+deb12u4 custom".into()),
                    output: Some(9),
                },
                WorkerSnapshot {
                    pid: 110,
                    reloads_at_spawn: 5,
                    version: None,
                    output: Some(10),
                },
            ],
            held: vec![
                HeldSnapshot {
                    fd: 7,
                    record: Record::default(),
                },
                HeldSnapshot {
                    fd: 8,
                    record: Record {
                        namespace: b"ns1".to_vec(),
                        interface: b"eth0".to_vec(),
                        options: [4, 0, 0, 1],
                    },
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let c = clock();
        let s = sample(c);
        assert_eq!(Snapshot::decode(&s.encode(c), c), Ok(s));
        let mut empty = sample(c);
        empty.state.current = None;
        empty.state.workers.clear();
        empty.workers.clear();
        empty.held.clear();
        assert_eq!(Snapshot::decode(&empty.encode(c), c), Ok(empty));
    }

    /// Read by a later image, times keep their age: the clock has moved on by then.
    #[test]
    fn times_cross_as_ages() {
        let c = clock();
        let text = sample(c).encode(c);
        let later = Clock {
            now: c.now + Duration::from_secs(2),
            usec: c.usec + 2_000_000,
        };
        let s = Snapshot::decode(&text, later).unwrap();
        assert_eq!(s.master.started, sample(c).master.started);
        assert_eq!(s.state.workers, sample(c).state.workers);
    }

    #[test]
    fn rejects_other_formats_and_garbage() {
        let c = clock();
        let good = sample(c).encode(c);
        let decode = |text: &str| Snapshot::decode(text, c);
        assert!(decode("").is_err());
        assert!(decode(&good.replace(FORMAT, "hapmaster-upgrade 4")).is_err());
        let no_metrics: String = good
            .lines()
            .filter(|l| !l.starts_with("metrics "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(decode(&no_metrics).is_err());
        assert!(decode(&format!("{good}metrics 1 1 1 - - -\n")).is_err());
        let two = good.replace(
            "metrics 5 2 1 0 1250000 1700000000123456",
            "metrics 5 2 1 2 1 1",
        );
        assert!(decode(&two).is_err(), "{two}");
        let no_master: String = good
            .lines()
            .filter(|l| !l.starts_with("master "))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(decode(&no_master).is_err());
        assert!(decode(&format!("{good}master - 1 1\n")).is_err());
        assert!(decode(&format!("{good}worker 1 2 current - 0 zz\n")).is_err());
        assert!(decode(&format!("{good}worker 1 2 current\n")).is_err());
        assert!(decode(&format!("{good}held x - - 00000000\n")).is_err());
        assert!(decode(&format!("{good}worker 1 2 sleeping\n")).is_err());
        assert!(decode(&format!("{good}held 3 - - 0000\n")).is_err());
        assert!(decode(&format!("{good}unknown line\n")).is_err());
        assert!(decode(&format!("{FORMAT}\ngeneration 1 0\n")).is_err());
        // Every truncation is an error or a shorter valid snapshot, never a panic.
        for i in 0..good.len() {
            let _ = decode(&good[..i]);
        }
    }

    /// What hapmaster before format 2 wrote: an upgrade from it still works, with `show proc`'s
    /// counters and times started afresh.
    #[test]
    fn reads_format_1() {
        let c = clock();
        let text = format!(
            "{FORMAT_1}\nruntime {} 1 4\ngeneration 9 2\ncurrent 120\nworker 120 8 current\n\
             output 120 9\nheld 7 - - 00000000\n",
            hex(b"/run/hm")
        );
        let snap = Snapshot::decode(&text, c).unwrap();
        assert_eq!(
            snap.master,
            MasterSnapshot {
                started: c.now,
                reloads: 0,
                failed_reloads: 0,
                metrics: Totals::default(),
            }
        );
        assert_eq!(
            snap.state.workers,
            vec![Worker {
                pid: 120,
                generation: 8,
                role: Role::Current,
                started: c.now,
            }]
        );
        assert_eq!(
            snap.workers,
            vec![WorkerSnapshot {
                pid: 120,
                reloads_at_spawn: 0,
                version: None,
                output: Some(9),
            }]
        );
        assert_eq!(snap.state.current, Some(120));
        // Format 1 has no master line, nor format 2's worker lines.
        assert!(Snapshot::decode(&format!("{text}master 1 0 0\n"), c).is_err());
        assert!(Snapshot::decode(&format!("{text}worker 1 2 current 5 0 -\n"), c).is_err());
    }

    /// Format 2 (before `show metrics`): read, with the metrics' counters at zero.
    #[test]
    fn reads_format_2() {
        let c = clock();
        let good = sample(c).encode(c);
        let v2: String = good
            .replace(FORMAT, FORMAT_2)
            .lines()
            .filter(|l| !l.starts_with("metrics "))
            .map(|l| format!("{l}\n"))
            .collect();
        let snap = Snapshot::decode(&v2, c).unwrap();
        assert_eq!(snap.master.metrics, Totals::default());
        assert_eq!(snap.master.reloads, 7);
        assert!(Snapshot::decode(&good.replace(FORMAT, FORMAT_2), c).is_err());
        // No reload yet: the last one's fields are `-`.
        let mut fresh = sample(c);
        fresh.master.metrics.last_reload = None;
        let text = fresh.encode(c);
        assert!(text.contains("\nmetrics 5 2 1 - - -\n"), "{text}");
        assert_eq!(Snapshot::decode(&text, c).unwrap(), fresh);
    }

    #[test]
    fn start_times_cross_as_monotonic_readings() {
        let now = Instant::now();
        let now_usec = 50_000_000;
        let started = now - Duration::from_secs(3);
        let usec = monotonic_usec_of(started, now, now_usec);
        assert_eq!(usec, 47_000_000);
        // Read again 2 s later (by the clock's reading), the start is 5 s back.
        let later = now + Duration::from_secs(2);
        let back = instant_of_monotonic_usec(usec, later, now_usec + 2_000_000);
        assert_eq!(later.duration_since(back), Duration::from_secs(5));
        // A reading from the future is taken as now.
        assert_eq!(instant_of_monotonic_usec(now_usec + 1, now, now_usec), now);
    }
}
