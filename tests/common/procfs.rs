//! /proc helpers.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The fields of /proc/PID/stat the tests need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Field 22, clock ticks since boot: with the pid, identifies a process (pids get reused).
    pub starttime: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces or ')': split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    Some(ProcStat {
        pid,
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// True if `pid` exists and is not a zombie (or dead).
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(s) if s.state != 'Z' && s.state != 'X')
}

/// All processes whose parent is `ppid`, zombies included, sorted by pid.
pub fn children_of(ppid: u32) -> Vec<ProcStat> {
    let mut out: Vec<ProcStat> = all_pids()
        .into_iter()
        .filter_map(proc_stat)
        .filter(|st| st.ppid == ppid)
        .collect();
    out.sort_by_key(|s| s.pid);
    out
}

/// The pids listed in /proc now (empty if it cannot be read).
fn all_pids() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Pids of the live (not zombie) children of `ppid`.
pub fn live_children(ppid: u32) -> Vec<u32> {
    children_of(ppid)
        .into_iter()
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .map(|s| s.pid)
        .collect()
}

/// Pids of the zombie children of `ppid`.
pub fn zombie_children(ppid: u32) -> Vec<u32> {
    children_of(ppid)
        .into_iter()
        .filter(|s| s.state == 'Z')
        .map(|s| s.pid)
        .collect()
}

/// Live processes (not this one) whose command line mentions `path` followed by `/`.
pub fn pids_with_cmdline_containing(path: &Path) -> Vec<u32> {
    let mut needle = path.as_os_str().as_bytes().to_vec();
    needle.push(b'/');
    let me = std::process::id();
    let mentions = |pid: &u32| {
        fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle.as_slice()))
    };
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && pid_alive(pid))
        .filter(mentions)
        .collect()
}

/// The argv of `pid` (lossy UTF-8); empty if it cannot be read.
pub fn cmdline_args(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmd| {
            cmd.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Number of open fds of `pid` (entries of /proc/PID/fd); `None` if it cannot be read.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `ls -l /proc/PID/fd`, for failure messages.
pub fn fd_listing(pid: u32) -> String {
    let mut lines = Vec::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let target = fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("<{e}>"));
            lines.push(format!("{} -> {}", e.file_name().to_string_lossy(), target));
        }
    }
    lines.sort();
    lines.join("\n")
}

/// The pid of the master's watchdog, from the master's log line `watchdog pid N ...`.
pub fn watchdog_pid_in(log: &str) -> Option<u32> {
    let (_, rest) = log.split_once("watchdog pid ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// True if `pid` is alive and is the watchdog of `master` (`hapmaster __watchdog <master> ...`):
/// checked before a test signals it, since its pid comes from a log line.
pub fn is_watchdog_of(pid: u32, master: u32) -> bool {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    pid_alive(pid)
        && args.get(1) == Some(&b"__watchdog".as_slice())
        && args.get(2) == Some(&master.to_string().as_bytes())
}
