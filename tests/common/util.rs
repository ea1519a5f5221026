//! Small utilities.

use std::io::{self};
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// Polls `f` every [`POLL`] until it returns `Some`, or `timeout` passes (then `None`).
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// The haproxy binary the tests run: `$HAPMASTER_TEST_HAPROXY`, else `haproxy` from `$PATH`,
/// `/usr/sbin` or `/usr/local/sbin`.
pub fn haproxy_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HAPMASTER_TEST_HAPROXY") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/local/sbin".into());
    for d in dirs {
        let p = d.join("haproxy");
        if p.is_file() {
            return p;
        }
    }
    panic!("haproxy not found in $PATH, /usr/sbin or /usr/local/sbin: install it (apt-get install haproxy) or set HAPMASTER_TEST_HAPROXY");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to `pid`. Errors (e.g. ESRCH) are returned, not panicked on.
pub fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) with a positive pid only signals that one process.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CLOCK_MONOTONIC in microseconds (what systemd expects in `MONOTONIC_USEC=`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
