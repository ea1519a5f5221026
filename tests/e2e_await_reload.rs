//! `hapmaster reload --await` (the master CLI's `await-reload`): the outcome of the reload a signal
//! started, as systemd's `Type=notify-reload` needs from `ExecReload=` (it sends the signal, then
//! runs the command). Real haproxy workers; the reloads are counted by their `RELOADING=1`.
mod common;

use common::*;
use std::process::{Child, Command, Output, Stdio};

fn await_command(hm: &Hapmaster) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hapmaster"));
    c.arg("reload")
        .arg("--await")
        .arg("-S")
        .arg(hm.runtime_dir.join("master.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_await(hm: &Hapmaster) -> Output {
    await_command(hm).output().expect("running reload --await")
}

fn spawn_await(hm: &Hapmaster) -> Child {
    await_command(hm).spawn().expect("spawning reload --await")
}

fn reloads_started(hm: &mut Hapmaster) -> usize {
    hm.history().iter().filter(|d| is_reloading(d)).count()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits for the client's own exit (it is not asked to stop).
fn exit_of(client: &mut ChildGuard) -> std::process::ExitStatus {
    poll_until(EVENT, || client.0.try_wait().ok().flatten()).unwrap_or_else(|| {
        panic!(
            "reload --await (pid {}) still runs after {EVENT:?}",
            client.id()
        )
    })
}

/// The master logged that the client `pid` waits (its `await-reload` was read and registered).
fn wait_until_awaiting(hm: &Hapmaster, pid: u32) {
    let line = format!("await-reload from pid {pid}: waiting");
    poll_until(EVENT, || hm.stderr().contains(&line).then_some(()))
        .unwrap_or_else(|| panic!("no '{line}' within {EVENT:?}:\n{}", hm.stderr()));
}

/// What systemd does: the signal, then at once the command. Whether the reload has started,
/// is running or has even ended when the command's request is read, the command reports the
/// outcome of that reload, and starts none itself.
#[test]
fn signal_then_await_reports_that_reload() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let bad = format!("{good}    this-is-not-a-keyword\n");
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let broken = round % 3 == 2;
        hm.write_config(if broken { &bad } else { &good });
        hm.signal(SIGUSR2);
        let out = run_await(&hm);
        let want = if broken { 1 } else { 0 };
        assert_eq!(
            out.status.code(),
            Some(want),
            "round {round} (broken config: {broken}): {}\nmaster:\n{}",
            text(&out),
            hm.stderr()
        );
        if broken {
            assert!(
                text(&out).contains("this-is-not-a-keyword"),
                "round {round}: the answer carries haproxy's alert: {}",
                text(&out)
            );
        }
        // Received as they come: the notify socket's queue is short.
        hm.history();
    }
    hm.settle_reloads();
    assert_eq!(
        reloads_started(&mut hm),
        ROUNDS,
        "one reload per signal, none from --await:\n{}",
        hm.history_text()
    );
    assert_eq!(http_get(format!("127.0.0.1:{port}")).unwrap(), HELLO);
}

/// A signal's reload that ended before the command came is answered once, to a child of the
/// signal's sender (systemd runs `ExecReload=` as its child); a second command, or one whose
/// signal someone else sent, waits for the next reload, whoever asks for it.
#[test]
fn an_ended_signal_reload_is_answered_once_to_the_senders_child() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    hm.write_config(&format!("{good}    this-is-not-a-keyword\n"));
    hm.signal(SIGUSR2); // sent by this process, the client's parent
    hm.wait_notify(is_reload_failed, EVENT);
    let out = run_await(&hm);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    hm.write_config(&good);
    let mut second = ChildGuard(spawn_await(&hm));
    wait_until_awaiting(&hm, second.id());
    assert_eq!(reloads_started(&mut hm), 1, "{}", hm.history_text());
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    assert_eq!(exit_of(&mut second).code(), Some(0));
    hm.settle_reloads();
    assert_eq!(reloads_started(&mut hm), 2, "{}", hm.history_text());

    // Sent by a `kill` process: a client of this process's is not its child.
    hm.write_config(&format!("{good}    this-is-not-a-keyword\n"));
    let kill = std::process::Command::new("kill")
        .args(["-USR2", &hm.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(kill.success());
    hm.wait_notify(is_reload_failed, EVENT);
    hm.write_config(&good);
    let mut third = ChildGuard(spawn_await(&hm));
    wait_until_awaiting(&hm, third.id());
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    assert_eq!(exit_of(&mut third).code(), Some(0), "{}", hm.stderr());
    hm.settle_reloads();
    assert_eq!(reloads_started(&mut hm), 4, "{}", hm.history_text());
}

/// A client that comes first waits for the signal's reload (the order an operator may use).
#[test]
fn await_before_the_signal_gets_its_outcome() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);
    let mut waiting = ChildGuard(spawn_await(&hm));
    wait_until_awaiting(&hm, waiting.id());
    hm.write_config(&format!("{good}    this-is-not-a-keyword\n"));
    hm.signal(SIGHUP);
    let status = exit_of(&mut waiting);
    assert_eq!(status.code(), Some(1), "{}", hm.stderr());
    hm.settle_reloads();
    assert_eq!(reloads_started(&mut hm), 1, "{}", hm.history_text());
}
