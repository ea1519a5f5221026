//! hapmaster running haproxy 1.5, 1.6 and 1.7 (issue 16): releases without `-x`, `expose-fd
//! listeners` or `_getsocks`. The binaries are built by `tests/old-haproxy/build.sh`;
//! `HAPMASTER_TEST_OLD_HAPROXY` names the directory holding them (`target/old-haproxy`, one
//! `<version>/haproxy` each). Without it each test prints a `skipped` line and passes.
//!
//! What is checked: the first worker starts and serves (READY=1 on the notify socket), `show
//! proc` names its version, `@1 show info` is forwarded to it, a SIGUSR2 reload starts a new
//! worker that serves once the old one is gone, a broken configuration's reload fails and leaves
//! the old worker serving, a SIGKILLed worker is replaced, and a stop exits 0. Reloads on these versions are NOT seamless yet: the master holds none of the workers'
//! listening sockets (no `_getsocks` before 1.8), so each new worker binds its own, as with
//! haproxy's `-sf`; the preload library of issue 16 is what will make them seamless, and its
//! tests (a load test among them) come with it.

mod common;

use std::path::PathBuf;

use common::*;

const OLD_HAPROXY: &str = "HAPMASTER_TEST_OLD_HAPROXY";

/// The body haproxy's `monitor-uri` answers with in 1.5 to 1.7 (`http-request return`, which
/// `http_config` uses, arrived in 2.2).
const MONITOR_BODY: &str = "Service ready.";

/// `<dir>/<version>/haproxy`, or None (with the `skipped` line) when the variable is unset.
fn old_haproxy(version: &str) -> Option<PathBuf> {
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

/// One HTTP frontend on 127.0.0.1:`port` answering `monitor-uri /` itself, in the syntax of 1.5.
fn old_http_config(port: u16) -> String {
    format!(
        "global\n    maxconn 100\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
         timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    monitor-uri /\n"
    )
}

fn serves(port: u16) -> Result<String, String> {
    match http_get(format!("127.0.0.1:{port}")) {
        Ok(body) if body.contains(MONITOR_BODY) => Ok(body),
        Ok(body) => Err(format!("unexpected body {body:?}")),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// The `show proc` line of worker `pid`, if it lists it.
fn proc_line(hm: &Hapmaster, pid: u32) -> Option<String> {
    let proc = hm.cli("show proc");
    let prefix = format!("{pid} ");
    proc.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_string)
}

/// Waits until `pid` is the only worker hapmaster reported that still runs.
fn wait_only_worker(hm: &Hapmaster, pid: u32) {
    let only = poll_until(EVENT, || {
        (hm.live_reported_workers() == [pid]).then_some(())
    });
    assert!(
        only.is_some(),
        "worker {pid} should be the only one left; live: {:?}",
        hm.live_reported_workers()
    );
}

fn starts_reloads_and_stops(version: &str) {
    let Some(haproxy) = old_haproxy(version) else {
        return;
    };
    let port = free_port();
    let config = old_http_config(port);
    let mut hm = Hapmaster::start(config.as_str(), &["--haproxy", haproxy.to_str().unwrap()]);
    // Fails on main: "refusing to start: ... is haproxy 1.7.14".
    let first = hm.wait_serving(EVENT);
    assert_eq!(serves(port).map(|_| ()), Ok(()), "first worker {first}");
    let line = proc_line(&hm, first).unwrap_or_else(|| panic!("{}", hm.cli("show proc")));
    assert!(
        line.split_whitespace().any(|w| w == version),
        "show proc should name {version}: {line:?}"
    );
    // The master CLI forwards to the worker's stats socket (`show info` exists since 1.5).
    let info = hm.cli("@1 show info");
    assert!(info.contains(&format!("Pid: {first}\n")), "{info}");
    // A reload with the same configuration: not seamless yet (the new worker binds its own
    // sockets next to the old one's, with SO_REUSEPORT), so no load runs through it.
    hm.signal(SIGUSR2);
    let second = hm.wait_serving(EVENT);
    assert_ne!(second, first, "the reload should start a new worker");
    // Once the old worker is gone, whatever answers is the new one.
    wait_only_worker(&hm, second);
    assert_eq!(serves(port).map(|_| ()), Ok(()), "new worker {second}");
    let line = proc_line(&hm, second).unwrap_or_else(|| panic!("{}", hm.cli("show proc")));
    assert!(line.contains(version), "{line:?}");

    // A configuration haproxy refuses: the reload fails, the old worker keeps serving.
    hm.write_config(&format!("{config}    this_is_not_a_keyword 42\n"));
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected STATUS=Reload failed: {d:?}");
    assert_eq!(worker_pid_in(&d), Some(second), "{d:?}");
    wait_only_worker(&hm, second);
    assert_eq!(serves(port).map(|_| ()), Ok(()), "old worker {second}");
    assert!(proc_line(&hm, second).is_some(), "{}", hm.cli("show proc"));

    // A crashed worker is replaced (the ports are closed meanwhile: the master holds no copy).
    kill(second, SIGKILL).unwrap();
    let third = hm.wait_serving(EVENT);
    assert_ne!(third, second);
    wait_only_worker(&hm, third);
    assert_eq!(serves(port).map(|_| ()), Ok(()), "replacement {third}");

    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}

#[test]
fn haproxy_1_5_19_starts_reloads_and_stops() {
    starts_reloads_and_stops("1.5.19");
}

#[test]
fn haproxy_1_6_16_starts_reloads_and_stops() {
    starts_reloads_and_stops("1.6.16");
}

#[test]
fn haproxy_1_7_14_starts_reloads_and_stops() {
    starts_reloads_and_stops("1.7.14");
}

/// `path`: a script that runs `haproxy`, replaced whole (written aside, then renamed over) so
/// that no exec ever meets a half-written file.
fn point_wrapper(path: &std::path::Path, haproxy: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let aside = path.with_extension("new");
    std::fs::write(
        &aside,
        format!("#!/bin/sh\nexec {} \"$@\"\n", haproxy.display()),
    )
    .unwrap();
    std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// An upgrade in place finds the binary changed from the system haproxy (1.8+: the master holds
/// the worker's socket) to 1.7: the next worker gets no `-x` and binds its own socket, and the
/// master lets go of the copy it held, which nobody would accept on once the old worker is gone.
#[test]
fn an_upgrade_in_place_onto_1_7_lets_go_of_the_held_sockets() {
    let Some(old) = old_haproxy("1.7.14") else {
        return;
    };
    let dir = TestDir::new();
    let wrapper = dir.join("haproxy");
    point_wrapper(&wrapper, &haproxy_path());
    let port = free_port();
    let mut hm = Hapmaster::start_in(
        dir,
        old_http_config(port),
        &["--haproxy", wrapper.to_str().unwrap()],
    );
    let first = hm.wait_serving(EVENT);
    let master = hm.pid();
    assert_eq!(
        listen_holders(port, &[master, first]),
        [master, first],
        "the master should hold the worker's socket"
    );

    point_wrapper(&wrapper, &old);
    hm.signal(SIGURG);
    hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
    // Fails on main: the 1.7 worker gets `-x` and `expose-fd listeners`, and the reload fails.
    hm.signal(SIGUSR2);
    let second = hm.wait_serving(EVENT);
    wait_only_worker(&hm, second);
    assert_eq!(
        listen_holders(port, &[master, second]),
        [second],
        "only the new worker should hold a socket listening on {port}"
    );
    assert_eq!(tcp4_listen_inodes(port).len(), 1, "one listening socket");
    assert_eq!(serves(port).map(|_| ()), Ok(()), "worker {second}");
    let line = proc_line(&hm, second).unwrap_or_else(|| panic!("{}", hm.cli("show proc")));
    assert!(line.contains("1.7.14"), "{line:?}");
    assert!(
        hm.stderr()
            .contains("letting go of the sockets the master held (1)"),
        "{}",
        hm.stderr()
    );
    let status = hm.stop();
    assert!(status.success(), "hapmaster exit: {status}");
}
