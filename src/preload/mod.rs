//! Socket handoff for haproxy 1.5 – 1.7, which have no `-x`: a preload library in the worker
//! asks the master at each listener bind() for the socket it holds (`shim.c`, `wire.rs`), and
//! the master answers from its held set (`matcher.rs`).

pub mod channel;
pub mod matcher;
pub mod session;
pub mod socket_key;
pub mod wire;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use crate::fs_at::Dir;

/// The library, compiled from `shim.c` by build.rs.
pub static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hapmaster-preload.so"));

/// The environment variable naming the worker's end of the channel.
pub const ENV_FD: &str = "HAPMASTER_PRELOAD_FD";

/// The library's file name, named by its contents: after an upgrade in place, a worker's
/// /proc/PID/maps tells which build of the library it runs.
pub fn file_name() -> String {
    // FNV-1a: stable across builds and Rust versions, unlike std's hasher.
    let hash = SHIM.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("preload-{hash:016x}.so")
}

/// Writes the library into `dir` (the master's private runtime directory) and returns its path,
/// for the workers' `LD_PRELOAD`. The file is made complete under a random name with `O_EXCL`,
/// its mode set through its fd (0500: only this user, who runs the workers, loads it), then
/// renamed into place: nothing is changed by path.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    let name = OsString::from(file_name());
    let opened = Dir::open(dir).and_then(|d| {
        d.write_file(&name, SHIM, 0o500)
            .map(|_| d.path().join(&name))
    });
    opened.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot write the preload library for haproxy < 1.8 into {}: {e}",
                dir.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn install_writes_the_library_with_its_mode() {
        let t = crate::test_dir::temp_dir("preload");
        let path = install(t.path()).unwrap();
        assert_eq!(path, t.path().join(file_name()));
        assert_eq!(std::fs::read(&path).unwrap(), SHIM);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o500);
        assert_eq!(&SHIM[..4], b"\x7fELF");
        // Again (a restart): replaced in place, nothing else left in the directory.
        assert_eq!(install(t.path()).unwrap(), path);
        assert_eq!(crate::test_dir::names(t.path()), [file_name()]);
    }

    #[test]
    fn install_names_the_directory_on_failure() {
        let t = crate::test_dir::temp_dir("preload-missing");
        let missing = t.path().join("missing");
        let err = install(&missing).unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
