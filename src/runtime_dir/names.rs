//! The names of things in the runtime directory, and which directory it is: what a worker's
//! socket and fragment are called, what a crashed master may have left, what the fragment says.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::haproxy_version::ListenerHandoff;

pub const LOCK_FILE: &str = "hapmaster.lock";
pub const MASTER_SOCKET: &str = "master.sock";
pub(super) const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";

/// `sizeof(sun_path) - 1`: the longest unix socket path the kernel accepts.
pub const SUN_PATH_MAX: usize = 107;

/// The longest file name a worker's stats socket can have in the directory: haproxy binds
/// `<sock>.<pid>.tmp` first, then renames it, so that name must fit too. Largest generation,
/// largest pid Linux allows (`PID_MAX_LIMIT`).
pub(super) fn longest_socket_name() -> String {
    format!("worker-{}.sock.{}.tmp", u64::MAX, 4_194_304)
}

/// `choose` with its inputs given, for tests.
pub fn choose_from(
    explicit: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
    euid: u32,
) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = first_runtime_directory(env(RUNTIME_DIRECTORY)) {
        return p;
    }
    if euid == 0 {
        return PathBuf::from("/run/hapmaster");
    }
    // The XDG spec says a relative value must be ignored.
    match env("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg.join("hapmaster"),
        _ => PathBuf::from(format!("/tmp/hapmaster-{euid}")),
    }
}

/// systemd sets one absolute path per `RuntimeDirectory=` entry, separated by ':'.
pub(super) fn first_runtime_directory(value: Option<OsString>) -> Option<PathBuf> {
    let value = value?;
    let first = value.as_bytes().split(|&b| b == b':').next()?;
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(first));
    path.is_absolute().then_some(path)
}

/// The fragment that gives a worker a private admin socket: the master's readiness probe asks it
/// `show info`, and takes the worker's listeners from it with `_getsocks` where the version has
/// `expose-fd listeners` (1.8+; 1.5 to 1.7 refuse the keyword: "unknown keyword 'expose-fd'").
pub fn fragment_contents(generation: u64, socket: &Path, handoff: ListenerHandoff) -> String {
    format!(
        "# written by hapmaster for worker generation {generation}; removed when the worker \
         exits\nglobal\n    stats socket {} mode 600 level admin{}\n",
        socket.display(),
        if handoff.takes_x() {
            " expose-fd listeners"
        } else {
            ""
        }
    )
}

/// A new worker's own `-x` socket (haproxy 1.8 to 2.5): "handoff-<generation>.sock".
pub fn handoff_socket_name(generation: u64) -> String {
    format!("handoff-{generation}.sock")
}

fn is_handoff_socket_name(name: &[u8]) -> bool {
    name.strip_prefix(b"handoff-")
        .and_then(|r| r.strip_suffix(b".sock"))
        .is_some_and(is_digits)
}

/// "worker-<digits>" followed by the returned rest.
fn strip_worker_prefix(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(b"worker-")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    (digits > 0).then(|| &rest[digits..])
}

pub(super) fn is_digits(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(u8::is_ascii_digit)
}

/// "<pid>.tmp" or "<pid>.bak": the names haproxy uses next to a unix socket while binding it.
pub(super) fn is_haproxy_temp_suffix(rest: &[u8]) -> bool {
    let Some(pid) = rest
        .strip_suffix(b".tmp")
        .or_else(|| rest.strip_suffix(b".bak"))
    else {
        return false;
    };
    is_digits(pid)
}

pub(super) fn is_worker_socket_file_name(name: &[u8]) -> bool {
    match strip_worker_prefix(name) {
        Some(b".sock") => true,
        Some(rest) => rest
            .strip_prefix(b".sock.")
            .and_then(|r| r.strip_suffix(b".tmp"))
            .is_some_and(is_digits),
        None => false,
    }
}

/// What a crashed master (or its workers) may have left: never anything else of the directory.
/// `preload-<16 hex digits>.so`: the library haproxy 1.5 – 1.7 workers load
/// (`crate::preload::file_name`), written again by the master that needs it.
pub(super) fn is_preload_library_name(name: &[u8]) -> bool {
    name.strip_prefix(b"preload-")
        .and_then(|r| r.strip_suffix(b".so"))
        .is_some_and(|hex| hex.len() == 16 && hex.iter().all(u8::is_ascii_hexdigit))
}

pub(super) fn is_stale_file_name(name: &[u8]) -> bool {
    // Our temporary files and sockets (fs_at), left by a crash mid-write or mid-bind.
    if name == MASTER_SOCKET.as_bytes() || crate::fs_at::is_temp_name(name) {
        return true;
    }
    // write_atomic's temp files: ".worker-<gen>.cfg.<pid>.tmp".
    if let Some(rest) = name.strip_prefix(b".").and_then(strip_worker_prefix) {
        return rest
            .strip_prefix(b".cfg.")
            .and_then(|r| r.strip_suffix(b".tmp"))
            .is_some_and(is_digits);
    }
    if is_handoff_socket_name(name) || is_preload_library_name(name) {
        return true;
    }
    match strip_worker_prefix(name) {
        Some(b".sock") | Some(b".cfg") => true,
        Some(rest) => rest
            .strip_prefix(b".sock.")
            .is_some_and(is_haproxy_temp_suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preload_library_is_a_stale_file_and_only_it() {
        let ours = crate::preload::file_name();
        assert!(is_preload_library_name(ours.as_bytes()), "{ours}");
        assert!(is_stale_file_name(ours.as_bytes()));
        for other in [
            "preload-.so",
            "preload-0123456789abcdeg.so",
            "preload-0123456789abcdef.so.tmp",
            "xpreload-0123456789abcdef.so",
            "preload-0123456789abcdef0.so",
        ] {
            assert!(!is_preload_library_name(other.as_bytes()), "{other}");
        }
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn choice_order() {
        let all = [
            ("RUNTIME_DIRECTORY", "/run/haproxy:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let explicit = Path::new("/srv/hm");
        assert_eq!(choose_from(Some(explicit), env(&all), 0), explicit);
        assert_eq!(
            choose_from(None, env(&all), 1000),
            Path::new("/run/haproxy")
        );
        assert_eq!(
            choose_from(None, env(&all[1..]), 0),
            Path::new("/run/hapmaster")
        );
        assert_eq!(
            choose_from(None, env(&all[1..]), 1000),
            Path::new("/run/user/1000/hapmaster")
        );
        assert_eq!(
            choose_from(None, env(&[]), 1000),
            Path::new("/tmp/hapmaster-1000")
        );
        let odd = [("RUNTIME_DIRECTORY", ""), ("XDG_RUNTIME_DIR", "relative")];
        assert_eq!(
            choose_from(None, env(&odd), 1000),
            Path::new("/tmp/hapmaster-1000")
        );
    }
}
