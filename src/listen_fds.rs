//! Sockets systemd passes at start (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`): from a
//! `.socket` unit, or the fd store after the master itself was restarted. They become the first
//! held set, so the first worker adopts them with `-x` and the ports were never closed.

use std::ffi::OsStr;
use std::os::fd::{OwnedFd, RawFd};

/// systemd's first passed fd (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;
/// More than any sane unit passes; a larger count is a broken environment, not a reason to
/// take ownership of thousands of fd numbers.
const MAX_LISTEN_FDS: usize = 65_536;

#[derive(Debug, PartialEq, Eq)]
pub enum ListenFdsError {
    BadCount(String),
    BadPid(String),
}

impl std::fmt::Display for ListenFdsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenFdsError::BadCount(v) => {
                write!(
                    f,
                    "LISTEN_FDS={v:?} is not a count of passed sockets: ignored"
                )
            }
            ListenFdsError::BadPid(v) => write!(f, "LISTEN_PID={v:?} is not a pid: ignored"),
        }
    }
}

impl std::error::Error for ListenFdsError {}

/// Which fds systemd passed to `our_pid`, with their names. Pure: the values of the three
/// variables in, fd numbers out. Nothing passed (or passed to another process) is an empty list.
pub fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Vec<(RawFd, Option<String>)>, ListenFdsError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| ListenFdsError::BadPid(pid.to_string()))?;
    if pid != our_pid {
        return Ok(Vec::new());
    }
    let count: usize = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ListenFdsError::BadCount(fds.to_string()))?;
    let mut names = names.map(|n| n.split(':')).into_iter().flatten();
    Ok((0..count)
        .map(|i| {
            let name = names.next().filter(|n| !n.is_empty()).map(str::to_string);
            (LISTEN_FDS_START + i as RawFd, name)
        })
        .collect())
}

/// Takes the passed fds (CLOEXEC set, each checked to be open) and removes the variables, so no
/// worker sees them.
pub fn take() -> Vec<(OwnedFd, Option<String>)> {
    let var = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(OsStr::new(name));
    }
    let passed = match parsed {
        Ok(p) => p,
        Err(e) => {
            log::warn!("{e}");
            return Vec::new();
        }
    };
    passed
        .into_iter()
        .filter_map(
            |(fd, name)| match crate::supervisor::upgrade::adopt_fd(fd) {
                Ok(owned) => Some((owned, name)),
                Err(e) => {
                    log::warn!("systemd passed {e}");
                    None
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_names_and_pid() {
        assert_eq!(
            parse(Some("42"), Some("2"), Some("web:sock-17"), 42),
            Ok(vec![(3, Some("web".into())), (4, Some("sock-17".into()))])
        );
        assert_eq!(
            parse(Some("42"), Some("2"), None, 42),
            Ok(vec![(3, None), (4, None)])
        );
        // Fewer names than fds, and empty names.
        assert_eq!(
            parse(Some("42"), Some("3"), Some(":b"), 42),
            Ok(vec![(3, None), (4, Some("b".into())), (5, None)])
        );
    }

    #[test]
    fn other_process_or_nothing_passed_is_empty() {
        assert_eq!(parse(Some("41"), Some("2"), None, 42), Ok(vec![]));
        assert_eq!(parse(None, Some("2"), None, 42), Ok(vec![]));
        assert_eq!(parse(Some("42"), None, None, 42), Ok(vec![]));
        assert_eq!(parse(Some("42"), Some("0"), None, 42), Ok(vec![]));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(Some("x"), Some("2"), None, 42).is_err());
        assert!(parse(Some("42"), Some("-1"), None, 42).is_err());
        assert!(parse(Some("42"), Some("99999999999"), None, 42).is_err());
        assert!(parse(Some("42"), Some("two"), None, 42).is_err());
    }
}
