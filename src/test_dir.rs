//! Temporary directories for the unit tests (test builds only).

use std::path::Path;

use tempfile::TempDir;

/// A new empty directory `<tmp>/hm-unit-<tag>-<random>`, removed when dropped, mode 0755: not
/// writable by others, as the runtime directory's checks require of what is above it, and
/// traversable by the other users some tests act as.
pub fn temp_dir(tag: &str) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(&format!("hm-unit-{tag}-"))
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The names of the entries of `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
