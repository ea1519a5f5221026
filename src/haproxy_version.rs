//! Which haproxy the master runs, read with `haproxy -v` before the first worker starts.
//!
//! Every worker gets a fragment with a private `stats socket`, and every worker after the first
//! gets the held listening sockets. How depends on the version ([`Version::listener_handoff`]):
//! `-x` and `expose-fd listeners` arrived in haproxy 1.8, and an older haproxy dies on either
//! (printing its usage text or its whole keyword list, which tells the operator nothing about the
//! real cause). So the master asks the binary for its version first, refuses one older than
//! [`OLDEST`], and shapes the fragment and the worker's arguments after it.
//!
//! [`check`] runs `-v` and waits (at start, for `-c`, after an upgrade in place); the event loop
//! runs it again through [`spawn_v`], [`output_complete`] and [`judge`] without waiting when the
//! binary changed on disk (`supervisor::event_loop::version_check`).

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The oldest haproxy hapmaster runs: the oldest release it is tested with
/// (tests/old-haproxy/build.sh). 1.5 to 1.7 have no `-x` (see [`ListenerHandoff::Preload`]), but
/// their stats socket tells the worker's `Pid:` in `show info`, which is how the master knows a
/// worker is ready.
pub const OLDEST: (u32, u32) = (1, 5);
/// `haproxy -v` answers at once; this only bounds a binary that does not.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The banner is one line; a binary printing more than this is not answering `-v`.
const MAX_OUTPUT: usize = 64 * 1024;

/// A version from haproxy's banner: `HAProxy version 2.6.12-1+deb12u4 2023/...` (2.1 and
/// later) or `HA-Proxy version 1.7.14 2021/03/31` (up to 2.0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    /// The whole version word, as haproxy prints it.
    pub text: String,
}

impl Version {
    pub fn is_supported(&self) -> bool {
        (self.major, self.minor) >= OLDEST
    }

    /// How a worker of this version takes the listening sockets the master holds.
    pub fn listener_handoff(&self) -> ListenerHandoff {
        match (self.major, self.minor) {
            v if v >= (2, 6) => ListenerHandoff::XSockpair,
            v if v >= (1, 8) => ListenerHandoff::XPath,
            _ => ListenerHandoff::Preload,
        }
    }
}

/// How a worker gets the listening sockets the master holds, and how the master gets a ready
/// worker's: by version ([`Version::listener_handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerHandoff {
    /// `-x sockpair@FD` (commit 2be557f7c, v2.6-dev1): the new worker asks over a socketpair of
    /// its own. The master takes its sockets with `_getsocks` (`expose-fd listeners`).
    XSockpair,
    /// `-x PATH` (1.8 to 2.5; every 1.8+ takes it): the new worker asks on a named socket. The
    /// master takes its sockets with `_getsocks`.
    XPath,
    /// haproxy 1.5 to 1.7: no `-x`, no `expose-fd listeners`, no `_getsocks`. The worker loads
    /// hapmaster's preload library (`crate::preload`), which takes the held socket at each
    /// listener bind() and reports the worker's listening sockets to the master.
    Preload,
}

impl ListenerHandoff {
    /// By the binary's version; `-x PATH` for one that did not tell (a wrapper, a custom
    /// build): every haproxy with `-x` takes it.
    pub fn of(version: Option<&Version>) -> ListenerHandoff {
        version.map_or(ListenerHandoff::XPath, Version::listener_handoff)
    }

    /// Whether a worker takes `-x` (and its stats socket `expose-fd listeners`, so that the
    /// master can take its sockets with `_getsocks`).
    pub fn takes_x(self) -> bool {
        self != ListenerHandoff::Preload
    }
}

/// What the master makes of the binary's answer.
#[derive(Debug)]
pub enum Found {
    Supported(Version),
    /// Below [`OLDEST`]: refused.
    TooOld {
        binary: PathBuf,
        version: Version,
    },
    /// No version line (a custom build, a wrapper, a binary that is not haproxy): the master
    /// goes on, and the worker says what is wrong if anything is.
    Unknown {
        binary: PathBuf,
        why: String,
    },
}

#[derive(Debug)]
pub struct ExecError {
    pub binary: PathBuf,
    pub source: io::Error,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The words the worker spawn uses for the same failure.
        write!(
            f,
            "cannot execute {}: {} (check --haproxy or $PATH)",
            self.binary.display(),
            self.source
        )
    }
}

impl std::error::Error for ExecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Supported(v) => write!(f, "haproxy {}", v.text),
            Found::TooOld { binary, version } => write!(
                f,
                "{} is haproxy {}, which hapmaster cannot run: hapmaster supports haproxy {}.{} \
                 and later (older releases are not tested with it); install a newer haproxy or \
                 point --haproxy at one",
                binary.display(),
                version.text,
                OLDEST.0,
                OLDEST.1
            ),
            Found::Unknown { binary, why } => write!(
                f,
                "cannot tell which haproxy version {} is ({why}); going on as with haproxy 1.8 \
                 or later (workers get `-x` and `expose-fd listeners`)",
                binary.display()
            ),
        }
    }
}

/// The version line of `haproxy -v`'s output.
pub fn parse(output: &str) -> Option<Version> {
    output.lines().find_map(|line| {
        let rest = line
            .trim_start()
            .strip_prefix("HAProxy version ")
            .or_else(|| line.trim_start().strip_prefix("HA-Proxy version "))?;
        Version::of_word(rest.split_whitespace().next()?)
    })
}

impl Version {
    /// A version word as haproxy prints it (`haproxy -v`, `show info`'s `Version:`):
    /// "2.6.12", "2.6.12-1+deb12u4", "3.2-dev5", "1.8".
    pub fn of_word(text: &str) -> Option<Version> {
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        // The minor is the digits after the first dot.
        let minor_word = parts.next()?;
        let digits = minor_word
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(minor_word.len());
        let minor = minor_word[..digits].parse().ok()?;
        Some(Version {
            major,
            minor,
            text: text.to_string(),
        })
    }

    /// `show proc` lists a `# programs` section, even an empty one: haproxy before 3.1 (3.1 and
    /// 3.2 print it only when a `program` section exists, which hapmaster refuses; 3.3 removed
    /// programs).
    pub fn lists_programs(&self) -> bool {
        (self.major, self.minor) < (3, 1)
    }
}

/// Runs `binary -v` (bounded by `timeout`) and judges its version. Err only when the binary
/// cannot be executed at all: no worker could start either.
pub fn check(binary: &Path, timeout: Duration) -> Result<Found, ExecError> {
    let output = run_v(binary, timeout).map_err(|source| ExecError {
        binary: binary.to_path_buf(),
        source,
    })?;
    Ok(match output {
        Output::Text(t) => judge(binary, Some(&t), timeout),
        Output::TimedOut => judge(binary, None, timeout),
    })
}

/// What `binary -v` printed (`None`: no version line within `timeout`), judged.
pub fn judge(binary: &Path, output: Option<&str>, timeout: Duration) -> Found {
    let unknown = |why: String| Found::Unknown {
        binary: binary.to_path_buf(),
        why,
    };
    let Some(text) = output else {
        return unknown(format!(
            "`-v` printed no version line within {} s",
            timeout.as_secs()
        ));
    };
    match parse(text) {
        Some(v) if v.is_supported() => Found::Supported(v),
        Some(version) => Found::TooOld {
            binary: binary.to_path_buf(),
            version,
        },
        None => {
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let first: String = first.chars().take(120).collect();
            unknown(if first.is_empty() {
                "`-v` printed nothing".to_string()
            } else {
                format!("`-v` printed {first:?}")
            })
        }
    }
}

/// Whether `-v` output read so far is enough to judge: a complete version line, or more than
/// anyone's `-v` prints.
pub fn output_complete(buf: &[u8]) -> bool {
    buf.len() > MAX_OUTPUT
        || buf
            .iter()
            .rposition(|&b| b == b'\n')
            .is_some_and(|end| parse(&String::from_utf8_lossy(&buf[..end])).is_some())
}

/// `binary -v` with its stdout on a pipe (stdin and stderr on /dev/null).
pub fn spawn_v(binary: &Path) -> io::Result<std::process::Child> {
    Command::new(binary)
        .arg("-v")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

enum Output {
    Text(String),
    TimedOut,
}

/// `binary -v`'s stdout, read until it holds a version line or ends. The child is killed and
/// reaped before this returns, whatever it does: a wrapper script may leave a process behind that
/// keeps the pipe open, so the end of the output is not awaited once the line is there.
fn run_v(binary: &Path, timeout: Duration) -> io::Result<Output> {
    let mut child = spawn_v(binary)?;
    let result = match child.stdout.take() {
        Some(stdout) => read_version(stdout, Instant::now() + timeout),
        None => Ok(Output::Text(String::new())),
    };
    // Already exited (a zombie until reaped) or not: either way wait() returns at once after it.
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn read_version(mut stdout: std::process::ChildStdout, deadline: Instant) -> io::Result<Output> {
    nix::fcntl::fcntl(
        &stdout,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if output_complete(&buf) {
            return Ok(Output::Text(String::from_utf8_lossy(&buf).into_owned()));
        }
        match stdout.read(&mut chunk) {
            Ok(0) => return Ok(Output::Text(String::from_utf8_lossy(&buf).into_owned())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Output::TimedOut);
                }
                let ms = left.as_millis().clamp(1, 60_000) as i32;
                let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
                match poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::NONE),
                ) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::temp_dir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn banners_of_every_era() {
        let v = |s: &str| parse(s).map(|v| (v.major, v.minor, v.text));
        assert_eq!(
            v("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\nStatus: ..."),
            Some((2, 6, "2.6.12-1+deb12u4".into()))
        );
        assert_eq!(
            v("HA-Proxy version 1.5.19 2016/12/25\nCopyright 2000-2016 Willy Tarreau\n"),
            Some((1, 5, "1.5.19".into()))
        );
        assert_eq!(
            v("HA-Proxy version 2.0.33-1 2023/09/12 - https://haproxy.org/\n"),
            Some((2, 0, "2.0.33-1".into()))
        );
        assert_eq!(
            v("HAProxy version 3.2-dev5-8f3c2a 2025/02/07 - https://haproxy.org/\n"),
            Some((3, 2, "3.2-dev5-8f3c2a".into()))
        );
        assert_eq!(
            v("HAProxy version 10.12.1 x"),
            Some((10, 12, "10.12.1".into()))
        );
        for bad in [
            "",
            "haproxy 2.6",
            "HAProxy version \n",
            "HAProxy version x.y",
            "2.6.12",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    fn at(major: u32, minor: u32) -> Version {
        Version {
            major,
            minor,
            text: format!("{major}.{minor}"),
        }
    }

    #[test]
    fn supported_from_1_5() {
        assert!(!at(1, 4).is_supported());
        assert!(!at(0, 9).is_supported());
        for (major, minor) in [(1, 5), (1, 6), (1, 7), (1, 8), (1, 10), (2, 0), (3, 3)] {
            assert!(at(major, minor).is_supported(), "{major}.{minor}");
        }
        let v = |text| Version::of_word(text).unwrap();
        for text in ["1.5.19", "1.6.16", "1.7.14"] {
            assert!(v(text).is_supported(), "{text}");
        }
    }

    #[test]
    fn listener_handoff_at_each_boundary() {
        use ListenerHandoff::*;
        for (major, minor, expected) in [
            (1, 5, Preload),
            (1, 6, Preload),
            (1, 7, Preload),
            (1, 8, XPath),
            (2, 0, XPath),
            (2, 5, XPath),
            (2, 6, XSockpair),
            (3, 4, XSockpair),
            (10, 0, XSockpair),
        ] {
            let handoff = at(major, minor).listener_handoff();
            assert_eq!(handoff, expected, "{major}.{minor}");
            assert_eq!(handoff.takes_x(), expected != Preload, "{major}.{minor}");
        }
        assert_eq!(
            Version::of_word("1.7.14").unwrap().listener_handoff(),
            Preload
        );
        assert_eq!(Version::of_word("1.8.0").unwrap().listener_handoff(), XPath);
        // No version line: `-x PATH`, as before versions were read.
        assert_eq!(ListenerHandoff::of(None), XPath);
        assert_eq!(ListenerHandoff::of(Some(&at(1, 7))), Preload);
        assert_eq!(ListenerHandoff::of(Some(&at(2, 6))), XSockpair);
    }

    /// `check`, again while exec says ETXTBSY: another test thread's child, between its fork
    /// and its exec, may still hold the fd `script` wrote the file with (seen under load). That
    /// child execs soon; 5 s is far more than it needs.
    fn check_script(binary: &Path, timeout: Duration) -> Result<Found, ExecError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match check(binary, timeout) {
                Err(e)
                    if e.source.raw_os_error() == Some(libc::ETXTBSY)
                        && Instant::now() < deadline =>
                {
                    std::thread::yield_now()
                }
                other => return other,
            }
        }
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn checks_a_binary() {
        let t = temp_dir("version");
        let old = script(t.path(), "old", "echo 'HA-Proxy version 1.4.27 2016/01/01'");
        let found = check_script(&old, TIMEOUT).unwrap();
        assert!(matches!(&found, Found::TooOld { version, .. } if version.text == "1.4.27"));
        let text = found.to_string();
        for part in [old.to_str().unwrap(), "1.4.27", "1.5 and later"] {
            assert!(text.contains(part), "{text}");
        }

        let new = script(t.path(), "new", "echo 'HAProxy version 2.6.12 2023/01/01'");
        assert!(
            matches!(check_script(&new, TIMEOUT).unwrap(), Found::Supported(v) if v.minor == 6)
        );
        let pre_x = script(
            t.path(),
            "pre-x",
            "echo 'HA-Proxy version 1.7.14 2021/03/31'",
        );
        assert!(
            matches!(check_script(&pre_x, TIMEOUT).unwrap(), Found::Supported(v) if v.minor == 7)
        );

        let odd = script(t.path(), "odd", "echo 'my proxy 1.0'; exit 3");
        let found = check_script(&odd, TIMEOUT).unwrap();
        assert!(matches!(found, Found::Unknown { .. }), "{found:?}");
        assert!(found.to_string().contains("my proxy 1.0"), "{found}");

        let missing = t.path().join("missing");
        let e = check_script(&missing, TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("cannot execute"), "{e}");
    }

    /// A wrapper that leaves a process holding the pipe: the version line is enough.
    #[test]
    fn does_not_wait_for_the_end_of_the_output() {
        let t = temp_dir("version-wrapper");
        let sleeper = t.path().join("sleeper.pid");
        let wrapper = script(
            t.path(),
            "wrapper",
            &format!(
                "sleep 600 & echo $! > {}\necho 'HAProxy version 2.8.1 2023/01/01'\nwait",
                sleeper.display()
            ),
        );
        let found = check_script(&wrapper, TIMEOUT).unwrap();
        assert!(
            matches!(found, Found::Supported(ref v) if v.minor == 8),
            "{found:?}"
        );
        // The sleep outlives the killed wrapper; end it (it is ours, by its pid).
        if let Ok(pid) = std::fs::read_to_string(&sleeper) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }

        let silent = script(t.path(), "silent", "exec sleep 600");
        let found = check_script(&silent, Duration::from_millis(200)).unwrap();
        assert!(matches!(found, Found::Unknown { .. }), "{found:?}");
        assert!(found.to_string().contains("within"), "{found}");
    }
}
