//! haproxy 1.5 – 1.7 for the tests (issue 16): built by `tests/old-haproxy/build.sh` into
//! `target/old-haproxy/<version>/haproxy`; `HAPMASTER_TEST_OLD_HAPROXY` names that directory.
//! Without it a test that needs them prints a `skipped` line and passes.

use std::path::{Path, PathBuf};

pub const OLD_HAPROXY: &str = "HAPMASTER_TEST_OLD_HAPROXY";

/// The body haproxy's `monitor-uri` answers with in 1.5 to 1.7 (`http-request return`, which
/// `http_config` uses, arrived in 2.2).
pub const MONITOR_BODY: &str = "Service ready.";

/// `<dir>/<version>/haproxy`, or None (with the `skipped` line) when the variable is unset.
pub fn old_haproxy(version: &str) -> Option<PathBuf> {
    let Some(dir) = std::env::var_os(OLD_HAPROXY) else {
        eprintln!(
            "skipped: haproxy {version}: set {OLD_HAPROXY} to the directory \
             tests/old-haproxy/build.sh fills (target/old-haproxy)"
        );
        return None;
    };
    let binary = PathBuf::from(dir).join(version).join("haproxy");
    assert!(
        binary.is_file(),
        "{OLD_HAPROXY} is set, but {} is missing: run tests/old-haproxy/build.sh {version}",
        binary.display()
    );
    Some(binary)
}

/// One HTTP frontend on 127.0.0.1:`port` answering `monitor-uri /` itself, in the syntax of 1.5
/// (which every later haproxy reads too).
pub fn old_http_config(port: u16) -> String {
    format!(
        "global\n    maxconn 100\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
         timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    monitor-uri /\n"
    )
}

/// `path`: a script that runs `haproxy` (after `prelude`, shell lines), replaced whole (written
/// aside, then renamed over) so that no exec ever meets a half-written file.
pub fn point_wrapper_with(path: &Path, prelude: &str, haproxy: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let aside = path.with_extension("new");
    std::fs::write(
        &aside,
        format!("#!/bin/sh\n{prelude}exec {} \"$@\"\n", haproxy.display()),
    )
    .unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

pub fn point_wrapper(path: &Path, haproxy: &Path) {
    point_wrapper_with(path, "", haproxy);
}

/// The `show proc` line of worker `pid`, if hapmaster's master CLI lists it.
pub fn proc_line(hm: &super::Hapmaster, pid: u32) -> Option<String> {
    let prefix = format!("{pid} ");
    hm.cli("show proc")
        .lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_string)
}

/// The version `haproxy -v` names (its third word), as `show proc` shows it.
pub fn version_of(haproxy: &Path) -> String {
    let out = std::process::Command::new(haproxy)
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("{} -v: {e}", haproxy.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{} -v: {text:?}", haproxy.display()))
        .to_string()
}

/// hapmaster started on a wrapper script (`<dir>/haproxy`) that runs the system haproxy, serving
/// [`old_http_config`] on a free port, with haproxy 1.7.14 at hand to point the wrapper at.
pub struct OnWrapper {
    pub hm: super::Hapmaster,
    pub wrapper: PathBuf,
    pub old: PathBuf,
    pub system: PathBuf,
    pub system_version: String,
    pub port: u16,
    pub target: super::Target,
}

/// None (with the `skipped` line) without the 1.7.14 build.
pub fn start_on_wrapper() -> Option<OnWrapper> {
    let old = old_haproxy("1.7.14")?;
    let system = super::haproxy_path();
    let system_version = version_of(&system);
    let dir = super::TestDir::new();
    let wrapper = dir.join("haproxy");
    point_wrapper(&wrapper, &system);
    let port = super::free_port();
    let hm = super::Hapmaster::start_in(
        dir,
        old_http_config(port),
        &["--haproxy", wrapper.to_str().unwrap()],
    );
    Some(OnWrapper {
        hm,
        wrapper,
        old,
        system,
        system_version,
        port,
        target: super::Target::parse(&format!("127.0.0.1:{port}")),
    })
}

impl OnWrapper {
    /// `clients` non-keep-alive clients on the port, once they have been answered 100 times.
    pub fn load(&self, clients: usize) -> super::Load {
        let load = super::Load::start(std::slice::from_ref(&self.target), clients);
        super::poll_until(super::EVENT, || (load.ok_so_far() >= 100).then_some(()))
            .expect("the load generator got no answers");
        load
    }
}
