//! Temporary directories.

use std::fs;
use std::path::{Path, PathBuf};

/// A fresh directory `/tmp/hm-<random>`, removed on drop. Kept short on purpose: unix socket
/// paths must fit in 107 bytes. Mode 0777 less the umask, as mkdir(2) makes it: tests that act as
/// another user reach sockets in it. Set `HAPMASTER_TEST_KEEP=1` to keep it for inspection.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        use std::os::unix::fs::PermissionsExt;
        let keep = std::env::var_os("HAPMASTER_TEST_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("hm-")
            .permissions(fs::Permissions::from_mode(0o777))
            .disable_cleanup(keep)
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("creating a test dir in /tmp: {e}"));
        if keep {
            eprintln!("keeping test dir {}", dir.path().display());
        }
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}
