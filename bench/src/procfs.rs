//! What the benchmark reads from /proc, and signals sent by pid.

use std::fs;

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: i32) -> Result<(), String> {
    let pid_t = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    // SAFETY: kill(2) with a plain pid and signal number; no memory is passed.
    if unsafe { libc::kill(pid_t, sig) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => stat_fields(&s).and_then(|f| f.first().copied()) != Some("Z"),
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after the `(comm)` field: index 0 is the state (field 3).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

pub fn ppid(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&s)?.get(1)?.parse().ok()
}

/// User + system CPU time in milliseconds.
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&s)?;
    // Fields 14 and 15 (utime, stime) are at indexes 11 and 12 after the comm field.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(ticks * 1000 / hz)
}

/// Time on CPU in nanoseconds (`/proc/PID/schedstat`, first field: the scheduler's own count,
/// not rounded to clock ticks as `cpu_ms`). For the process's main thread, which is all of a
/// single-threaded master.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The size of the fd table (`FDSize` in /proc/PID/status): the kernel grows it to a power of
/// two that holds the highest fd ever open and never shrinks it, so it bounds the peak from
/// above without sampling.
pub fn fd_table_size(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value(&s, "FDSize")
}

fn status_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// VmRSS in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value(&s, "VmRSS")
}

/// Open file descriptors.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Voluntary + involuntary context switches, summed over the threads of `pid`.
pub fn ctxt_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("status");
        let Ok(s) = fs::read_to_string(path) else {
            continue; // a thread that just exited
        };
        total += status_value(&s, "voluntary_ctxt_switches").unwrap_or(0)
            + status_value(&s, "nonvoluntary_ctxt_switches").unwrap_or(0);
    }
    Some(total)
}

pub fn threads(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Live processes whose command line contains `needle` (a path unique to one benchmark run, so
/// these are processes the benchmark started).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|&pid| cmdline(pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

pub fn cmdline_contains(pid: u32, needle: &str) -> bool {
    cmdline(pid).is_some_and(|c| c.contains(needle))
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg writes them.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Raises RLIMIT_NOFILE as far as allowed; returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// CPU time of the calling thread, in microseconds.
pub fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}
