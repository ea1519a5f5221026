//! The master CLI (control sockets) against a running master with real haproxy workers, through
//! the `hapmaster` client subcommands and raw connections.
mod common;

use common::soak::{settled_fd_count, wait_fd_count};
use common::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args(args)
        .output()
        .expect("running the hapmaster client")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One command line over a raw connection, answer read to EOF.
fn raw(path: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(30 * SEC)).unwrap();
    s.write_all(line).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn show_proc_help_and_forwarding() {
    let (mut hm, port, cli) = Hapmaster::serving_with_cli(&[]);
    let worker = hm.current_worker_pid().unwrap();
    let master = hm.pid();
    let cli_s = cli.to_str().unwrap();
    let out = client(&["cli", "-S", cli_s, "show", "proc"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.starts_with("#<PID>"), "{t}");
    assert!(
        t.contains(&format!("{master}")) && t.contains("master"),
        "{t}"
    );
    let workers = t.split("# workers").nth(1).unwrap_or_default();
    assert!(workers.contains(&worker.to_string()), "{t}");
    assert!(t.contains("# programs"), "{t}");

    let t = raw(&cli, b"help\n");
    assert!(t.contains("reload") && t.contains("show proc"), "{t}");
    let t = raw(&cli, b"no such thing\n");
    assert!(
        t.contains("Unknown command") && t.contains("show proc"),
        "{t}"
    );

    let t = raw(&cli, b"@1 show info\n");
    assert!(t.contains(&format!("Pid: {worker}")), "{t}");
    let t = raw(&cli, format!("@!{worker} show info\n").as_bytes());
    assert!(t.contains(&format!("Pid: {worker}")), "{t}");
    // Two commands on one line, `;`-separated.
    let t = raw(&cli, b"show listeners; @1 show info\n");
    assert!(t.contains(&format!("127.0.0.1:{port}")), "{t}");
    assert!(t.contains("Pid:"), "{t}");
    // Interactive mode: a prompt after each answer, the connection kept until `quit`.
    let t = raw(&cli, b"prompt\nshow proc\nhelp\nquit\n");
    assert!(t.matches("master> ").count() >= 2, "{t}");
    assert!(t.contains("# workers") && t.contains("hard-reload"), "{t}");
    assert!(hm.stop().success());
    assert!(!cli.exists(), "-S socket left behind");
}

#[test]
fn synchronous_reload_success_and_failure() {
    let (mut hm, port, cli) = Hapmaster::serving_with_cli(&[]);
    let cli_s = cli.to_str().unwrap();
    let old = hm.current_worker_pid().unwrap();
    let out = client(&["reload", "-S", cli_s]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.starts_with("Success=1\n--\n"), "{t}");
    // The answer comes after the new worker serves: the notify READY for it is already sent.
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(old), EVENT);
    let new = worker_pid_in(&d).unwrap();
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);

    let good = fs_read(&hm.cfg_path);
    hm.write_config(&format!("{good}    this_is_not_a_keyword 42\n"));
    let out = client(&["reload", "-S", cli_s]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.starts_with("Success=0\n--\n"), "{t}");
    assert!(
        t.contains("[ALERT]"),
        "haproxy's own error lines belong in the answer: {t}"
    );
    assert!(t.contains("this_is_not_a_keyword"), "{t}");
    assert!(pid_alive(new));
    assert_eq!(hm.current_worker_pid(), Some(new));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);

    // hard-reload: the old worker is terminated, not drained.
    hm.write_config(&good);
    let t = raw(&cli, b"hard-reload\n");
    assert!(t.starts_with("Success=1"), "{t}");
    assert!(
        poll_until(EVENT, || (!pid_alive(new)).then_some(())).is_some(),
        "old worker {new} survived a hard-reload"
    );
    assert!(hm.stop().success());
}

#[test]
fn reload_client_reports_a_missing_master() {
    let dir = TestDir::new();
    let missing = dir.join("nobody-here.sock");
    let out = client(&["reload", "-S", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no hapmaster is listening"),
        "{}",
        text(&out)
    );
}

#[test]
fn getsocks_from_the_master() {
    let (mut hm, port, cli) = Hapmaster::serving_with_cli(&[]);
    let cli_s = cli.to_str().unwrap();
    let out = client(&["getsocks", cli_s]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains(&format!("127.0.0.1:{port}")), "{t}");
    // The handover does not disturb the master.
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);

    assert!(hm.stop().success());
}

/// The client run as `nobody` (uid and gid 65534, no supplementary groups).
fn as_nobody(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("running the hapmaster client as nobody")
}

/// Runs the client as `nobody`: refused (exit 3), with every one of `says` on stderr.
fn refused_as_nobody(args: &[&str], says: &[&str]) {
    let out = as_nobody(args);
    assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for s in says {
        assert!(err.contains(s), "{args:?}: no {s:?} in: {err}");
    }
}

#[test]
fn refusals_say_permission_denied_and_what_gives_access() {
    if !is_root() {
        eprintln!("skipped: needs root (the client runs as nobody)");
        return;
    }
    let (mut hm, port, cli) = Hapmaster::serving_with_cli(&[]);
    let cli_s = cli.to_str().unwrap();
    let worker = hm.current_worker_pid().unwrap();
    // `nobody` may connect to the mode-666 socket and read...
    let out = as_nobody(&["cli", "-S", cli_s, "show", "proc"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("# workers"), "{}", text(&out));
    // ...but the master refuses what changes something: exit 3, "permission denied", and who
    // may (the master runs as root here).
    let by_master = format!("permission denied by the master on {cli_s}");
    for args in [
        vec!["reload", "-S", cli_s],
        vec!["cli", "-S", cli_s, "reload"],
        vec!["cli", "-S", cli_s, "@1", "show", "info"],
        vec!["getsocks", cli_s],
    ] {
        refused_as_nobody(
            &args,
            &[
                &by_master,
                "run this as root or as the master's user (uid 0, root)",
            ],
        );
    }
    // The runtime directory's master.sock (mode 0600) does not even let nobody connect.
    let master_sock = hm.runtime_dir.join("master.sock");
    let master_s = master_sock.to_str().unwrap();
    let on_socket = format!("permission denied on {master_s}: ");
    for args in [
        vec!["reload", "-S", master_s],
        vec!["cli", "-S", master_s, "show", "proc"],
        vec!["getsocks", master_s],
    ] {
        refused_as_nobody(
            &args,
            &[
                &on_socket,
                "connecting needs write permission on the socket file",
            ],
        );
    }
    // Nothing was reloaded, and the listeners are still the master's alone to hand out.
    assert_eq!(hm.current_worker_pid(), Some(worker));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    assert!(hm.stop().success());
}

#[test]
fn cli_exit_status_follows_the_answer() {
    let (mut hm, _port, cli) = Hapmaster::serving_with_cli(&[]);
    let cli_s = cli.to_str().unwrap();
    let ok = |args: &[&str]| {
        let out = client(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    };
    ok(&["cli", "-S", cli_s, "show", "proc"]);
    ok(&["cli", "-S", cli_s, "show proc; help"]);
    ok(&["cli", "-S", cli_s, "@1", "show", "info"]);
    for (args, said) in [
        (
            vec!["cli", "-S", cli_s, "no_such_command"],
            "Unknown command",
        ),
        (
            vec!["cli", "-S", cli_s, "show proc; no_such_command"],
            "Unknown command",
        ),
        (
            vec!["cli", "-S", cli_s, "@1", "no_such_command"],
            "Unknown command",
        ),
        (
            vec!["cli", "-S", cli_s, "@7", "show", "info"],
            "Can't find the target PID",
        ),
    ] {
        let out = client(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            err.contains(&format!(
                "hapmaster cli: {cli_s} answered with an error: {said}"
            )),
            "{args:?}: {err}"
        );
        // The answer itself is printed as it came.
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(said),
            "{args:?}"
        );
    }
    assert!(hm.stop().success());
}

#[test]
fn hostile_clients_do_not_hurt_the_master() {
    let (mut hm, port, cli) = Hapmaster::serving_with_cli(&[]);
    let master = hm.pid();
    let fds = settled_fd_count(master);
    let listing = fd_listing(master);
    // An oversized line: answered with an error and closed.
    let mut big = vec![b'a'; 70 * 1024];
    big.push(b'\n');
    let t = raw(&cli, &big);
    assert!(t.contains("longer than"), "{t}");
    // Garbage bytes.
    let t = raw(&cli, &[0xff, 0x00, 0xfe, b'\n']);
    assert!(t.contains("Unknown command"), "{t}");
    // Many idle clients, beyond the limit: the master keeps working for signals and for a
    // client that is let in once the idle ones leave.
    let idle: Vec<UnixStream> = (0..24)
        .map(|_| UnixStream::connect(&cli).unwrap())
        .collect();
    let old = hm.current_worker_pid().unwrap();
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_serving(&d) && worker_pid_in(&d) != Some(old), "{d:?}");
    drop(idle);
    let t = raw(&cli, b"show proc\n");
    assert!(t.contains("master"), "{t}");
    // A client that asks for a reload and leaves at once: the reload still happens.
    let before = hm.current_worker_pid().unwrap();
    {
        let mut s = UnixStream::connect(&cli).unwrap();
        s.write_all(b"reload\n").unwrap();
    }
    let d = hm.wait_notify(
        |d| is_serving(d) && worker_pid_in(d) != Some(before),
        30 * SEC,
    );
    assert!(is_serving(&d));
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
    wait_fd_count(master, fds, &listing, EVENT);
    assert!(hm.stop().success());
}

fn fs_read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}
