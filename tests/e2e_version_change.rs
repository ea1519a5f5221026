//! The haproxy on disk changes between reloads (a package upgrade, a switched symlink): the
//! master reads its version again before the next worker starts, and that worker takes the held
//! sockets the way its version can: `-x` from 1.8 on, hapmaster's preload library before. The
//! port's one listening socket stays the same through 2.6 -> 1.7 -> 2.6, under load, and a
//! binary too old to run fails its reload while the old worker serves on (issue 16). And the
//! master CLI with 1.5, 1.6 and 1.7 workers answers as with 1.8+ (`show proc`, `show listeners`,
//! a synchronous `reload`). Needs `HAPMASTER_TEST_OLD_HAPROXY` (see tests/common/old_haproxy.rs); skipped without it.
mod common;

use common::soak::reload_once;
use common::*;

#[test]
fn a_reload_reads_the_version_of_a_changed_binary() {
    let Some(mut on) = start_on_wrapper() else {
        return;
    };
    let mut worker = on.hm.wait_serving(EVENT);
    let load = on.load(20);
    let OnWrapper {
        mut hm,
        wrapper,
        old,
        system,
        system_version,
        port,
        ..
    } = on;
    let too_old = hm.dir().join("haproxy-1.4");
    point_wrapper_with(
        &too_old,
        "case \"$1\" in -v) echo 'HA-Proxy version 1.4.27 2016/01/01'; exit 0;; esac\n",
        &system,
    );
    let master = hm.pid();
    let base = tcp4_listen_inodes(port);
    assert_eq!(base.len(), 1, "one listening socket on {port}");

    let steps = [(&old, "1.7.14"), (&system, system_version.as_str())];
    for round in 1..=2 {
        for (binary, version) in steps {
            let what = format!("round {round}, haproxy {version}");
            point_wrapper(&wrapper, binary);
            worker = reload_once(&mut hm, worker, &what);
            let line = proc_line(&hm, worker).unwrap_or_else(|| hm.cli("show proc"));
            assert!(
                line.split_whitespace().any(|w| w == version),
                "{what}: show proc should name {version}: {line:?}"
            );
            // Fails without the re-read: a 1.7 worker is given `expose-fd listeners` and `-x`
            // and refuses to start; a 2.6 one gets the preload library and no `-x`.
            assert_eq!(tcp4_listen_inodes(port), base, "{what}: the socket changed");
            assert_eq!(
                listen_holders(port, &[master, worker]),
                [master, worker],
                "{what}: the master and the new worker should hold the socket"
            );
        }
    }
    let log = hm.stderr();
    assert!(
        log.contains("is now haproxy 1.7.14") && log.contains("through hapmaster's preload"),
        "{log}"
    );

    // A binary below 1.5: the reload fails before any worker starts, the old one serves on.
    point_wrapper(&wrapper, &too_old);
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected a failed reload: {d:?}");
    assert_eq!(worker_pid_in(&d), Some(worker), "{d:?}");
    assert!(hm.stderr().contains("is haproxy 1.4.27"), "{}", hm.stderr());
    assert_eq!(tcp4_listen_inodes(port), base);

    load.wait_every_client_moved_on();
    let report = load.stop();
    eprintln!("load through 2.6 -> 1.7 -> 2.6 -> 1.7 -> 2.6 -> 1.4 (refused): {report}");
    assert_eq!(report.failed, 0, "{report}");
    point_wrapper(&wrapper, &system);
    assert!(hm.stop().success());
    // The preload library goes with the master's files.
    assert!(
        !hm.runtime_dir.exists(),
        "{} left: {:?}",
        hm.runtime_dir.display(),
        std::fs::read_dir(&hm.runtime_dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

/// The master CLI with haproxy 1.5 to 1.7 as on 1.8+: `show proc` names the version, `show
/// listeners` lists the held socket (the worker's, by inode), `reload` answers once the new worker
/// serves (`Success=1`) or the reload failed (`Success=0` with haproxy's ALERT), and the held
/// socket is the one listening throughout.
fn master_cli_as_on_1_8(version: &str) {
    let Some(haproxy) = old_haproxy(version) else {
        return;
    };
    let port = free_port();
    let config = old_http_config(port);
    let mut hm = Hapmaster::start(config.as_str(), &["--haproxy", haproxy.to_str().unwrap()]);
    let first = hm.wait_serving(EVENT);
    let base = tcp4_listen_inodes(port);
    assert_eq!(base.len(), 1);
    let inode = *base.iter().next().unwrap();
    let listeners = hm.cli("show listeners");
    let line = listeners
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port}")))
        .unwrap_or_else(|| panic!("show listeners has no 127.0.0.1:{port}:\n{listeners}"));
    assert!(
        line.split_whitespace().any(|w| w == inode.to_string()),
        "show listeners should name inode {inode}: {line:?}"
    );
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1\n"), "{answer}");
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(first), EVENT);
    let second = worker_pid_in(&d).unwrap();
    let line = proc_line(&hm, second).unwrap_or_else(|| panic!("{}", hm.cli("show proc")));
    assert!(line.split_whitespace().any(|w| w == version), "{line:?}");
    assert_eq!(
        tcp4_listen_inodes(port),
        base,
        "the reload changed the socket"
    );

    hm.write_config(&format!("{config}    this_is_not_a_keyword 42\n"));
    let answer = hm.cli("reload");
    assert!(
        answer.starts_with("Success=0\n") && answer.contains("this_is_not_a_keyword"),
        "{answer}"
    );
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "{d:?}");
    assert_eq!(
        tcp4_listen_inodes(port),
        base,
        "the failed reload changed the socket"
    );
    assert!(hm.stop().success());
}

#[test]
fn master_cli_with_haproxy_1_5_19() {
    master_cli_as_on_1_8("1.5.19");
}

#[test]
fn master_cli_with_haproxy_1_6_16() {
    master_cli_as_on_1_8("1.6.16");
}

#[test]
fn master_cli_with_haproxy_1_7_14() {
    master_cli_as_on_1_8("1.7.14");
}

/// A changed binary whose `-v` never answers holds up only the spawn that waits for it: the
/// master still answers its CLI, stops on SIGTERM, and the hung `-v` does not outlive it.
/// Fails without `end_version_checks`: the `-v` process was left running after the master exited.
#[test]
fn a_hung_version_check_ends_with_the_master() {
    let dir = TestDir::new();
    let wrapper = dir.join("haproxy");
    point_wrapper(&wrapper, &haproxy_path());
    let v_pid = dir.join("v.pid");
    let port = free_port();
    let mut hm = Hapmaster::start_in(
        dir,
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--haproxy", wrapper.to_str().unwrap()],
    );
    let worker = hm.wait_serving(EVENT);
    point_wrapper_with(
        &wrapper,
        &format!(
            "case \"$1\" in -v) echo $$ > {}; exec sleep 600;; esac\n",
            v_pid.display()
        ),
        &haproxy_path(),
    );
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let check = poll_until(EVENT, || {
        std::fs::read_to_string(&v_pid)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    })
    .expect("the master did not run the changed binary's -v");
    assert!(pid_alive(check), "-v pid {check}");
    // The loop is not held up: the CLI answers while the check runs.
    assert!(hm.cli("show proc").contains(&worker.to_string()));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
    let gone = poll_until(EVENT, || (!pid_alive(check)).then_some(()));
    assert!(
        gone.is_some(),
        "the hung -v (pid {check}) outlived the master"
    );
}
