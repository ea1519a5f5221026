//! Recognising a hapmaster worker by its command line: pure, no syscalls.
//!
//! Every worker is started as `haproxy ... -db -f <user files> -f <runtime dir>/worker-<G>.cfg
//! [-x ...]` (see `supervisor::worker::worker_argv`); the per-worker fragment names both the
//! runtime directory and the generation. `-db` is required too, so that, say, `tail -f
//! <runtime dir>/worker-1.cfg` is never taken for a worker.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a worker's command line says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentArg {
    /// The directory of its `worker-<G>.cfg`, as written on the command line.
    pub dir: PathBuf,
    pub generation: u64,
}

/// Reads a `/proc/PID/cmdline` (arguments separated and ended by NUL bytes). `None` unless it has
/// `-db` and a `-f` followed by an absolute `<dir>/worker-<digits>.cfg`; with several, the last
/// one (hapmaster puts the fragment after the user's files).
pub fn worker_fragment_arg(cmdline: &[u8]) -> Option<FragmentArg> {
    let args: Vec<&[u8]> = cmdline
        .strip_suffix(b"\0")
        .unwrap_or(cmdline)
        .split(|b| *b == 0)
        .collect();
    if !args.contains(&b"-db".as_slice()) {
        return None;
    }
    args.windows(2)
        .rev()
        .filter(|pair| pair[0] == b"-f")
        .find_map(|pair| fragment_path(Path::new(OsStr::from_bytes(pair[1]))))
}

/// `<dir>/worker-<digits>.cfg` with an absolute `dir`.
fn fragment_path(path: &Path) -> Option<FragmentArg> {
    if !path.is_absolute() {
        return None;
    }
    let name = path.file_name()?.as_bytes();
    let digits = name.strip_prefix(b"worker-")?.strip_suffix(b".cfg")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let generation = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(FragmentArg {
        dir: path.parent()?.to_path_buf(),
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    fn found(args: &[&str]) -> Option<(String, u64)> {
        worker_fragment_arg(&cmdline(args)).map(|f| (f.dir.display().to_string(), f.generation))
    }

    #[test]
    fn a_worker_command_line() {
        let argv = [
            "/usr/sbin/haproxy",
            "-q",
            "-db",
            "-f",
            "/etc/haproxy/haproxy.cfg",
            "-f",
            "/run/hapmaster/worker-12.cfg",
            "-x",
            "/run/hapmaster/master.sock",
        ];
        assert_eq!(found(&argv), Some(("/run/hapmaster".into(), 12)));
        // Without the trailing NUL too (a truncated read).
        let mut raw = cmdline(&argv);
        raw.pop();
        assert_eq!(worker_fragment_arg(&raw).map(|f| f.generation), Some(12));
        // The first worker has no -x.
        assert_eq!(
            found(&[
                "haproxy",
                "-db",
                "-f",
                "/a.cfg",
                "-f",
                "/tmp/x y/worker-1.cfg"
            ]),
            Some(("/tmp/x y".into(), 1))
        );
    }

    #[test]
    fn the_last_fragment_wins() {
        assert_eq!(
            found(&["h", "-db", "-f", "/r/worker-1.cfg", "-f", "/s/worker-2.cfg"]),
            Some(("/s".into(), 2))
        );
    }

    #[test]
    fn not_a_worker() {
        for argv in [
            // No -db: an operator's `tail -f` or `less` of the fragment.
            &["tail", "-f", "/run/hapmaster/worker-1.cfg"][..],
            // No -f before it.
            &["haproxy", "-db", "/run/hapmaster/worker-1.cfg"],
            &["haproxy", "-db", "-x", "/run/hapmaster/worker-1.cfg"],
            // -f at the end, with nothing after it.
            &["haproxy", "-db", "-f"],
            // Not a fragment name.
            &["haproxy", "-db", "-f", "/run/hapmaster/worker-.cfg"],
            &["haproxy", "-db", "-f", "/run/hapmaster/worker-1a.cfg"],
            &["haproxy", "-db", "-f", "/run/hapmaster/worker-1.cfg.bak"],
            &["haproxy", "-db", "-f", "/run/hapmaster/worker-+1.cfg"],
            &["haproxy", "-db", "-f", "/run/hapmaster/.worker-1.cfg.9.tmp"],
            &["haproxy", "-db", "-f", "/run/hapmaster/haproxy.cfg"],
            // Relative: not what hapmaster writes, and relative to someone else's cwd.
            &["haproxy", "-db", "-f", "rt/worker-1.cfg"],
            &["haproxy", "-db", "-f", "worker-1.cfg"],
            // The watchdog and the master themselves.
            &["hapmaster", "__watchdog", "1234"],
            &["hapmaster", "-f", "/etc/haproxy/haproxy.cfg", "-Ws"],
            &[],
        ] {
            assert_eq!(found(argv), None, "{argv:?}");
        }
        assert_eq!(worker_fragment_arg(b""), None);
        assert_eq!(worker_fragment_arg(b"\0\0\0"), None);
        // A generation beyond u64 is not ours either.
        assert_eq!(
            found(&["h", "-db", "-f", "/r/worker-99999999999999999999999.cfg"]),
            None
        );
    }

    #[test]
    fn non_utf8_directories_are_kept_as_bytes() {
        let mut raw = cmdline(&["h", "-db", "-f"]);
        raw.extend_from_slice(b"/r\xff/worker-3.cfg\0");
        let f = worker_fragment_arg(&raw).unwrap();
        assert_eq!(f.dir.as_os_str().as_bytes(), b"/r\xff");
        assert_eq!(f.generation, 3);
    }
}
