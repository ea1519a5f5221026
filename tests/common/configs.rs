//! Configurations.

/// The body every test frontend answers.
pub const HELLO: &str = "hello from haproxy\n";

/// A minimal haproxy config: one HTTP frontend with the given `bind` addresses answering 200 + [`HELLO`]
/// itself (no backend). No `stats socket`: hapmaster adds its own.
pub fn http_config(binds: &[String]) -> String {
    let mut c = String::from(
        "global\n    maxconn 4000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\n\
         frontend fe\n",
    );
    for b in binds {
        c.push_str(&format!("    bind {b}\n"));
    }
    c.push_str(
        "    http-request return status 200 content-type text/plain string \"hello from haproxy\\n\"\n",
    );
    c
}

/// The fake haproxy (tests/fake_haproxy): for faults a real haproxy cannot produce on demand.
pub const FAKE_HAPROXY: &str = env!("CARGO_BIN_EXE_hapmaster-fake-haproxy");

/// The fake haproxy playing haproxy `version` (`$FAKE_HAPROXY_VERSION`: its `-v`, its `show
/// info`, which `-x` it takes): a script `haproxy-<version>` in `dir`, for `--haproxy`.
pub fn fake_haproxy_of_version(dir: &super::TestDir, version: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(&format!("haproxy-{version}"));
    std::fs::write(
        &path,
        format!("#!/bin/sh\nFAKE_HAPROXY_VERSION={version} exec {FAKE_HAPROXY} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A config for the fake haproxy: one HTTP listener on 127.0.0.1:`port` and a `fake <fault>`
/// line per fault.
pub fn fake_config<S: AsRef<str>>(port: u16, faults: &[S]) -> String {
    let mut c = format!("# hapmaster-fake-haproxy\nfake listen 127.0.0.1:{port}\n");
    for f in faults {
        c.push_str(&format!("fake {}\n", f.as_ref()));
    }
    c
}
