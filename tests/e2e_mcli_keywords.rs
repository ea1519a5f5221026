//! The master's own commands, session levels and modes, and `reload`'s answer, against haproxy's
//! master CLI captured from the haproxy installed (tests/transcripts/<version>/): the same
//! exchange on the same kind of socket (`-S ...` admin, `,level,user`, `,level,operator`),
//! normalized alike, compared byte for byte.
mod common;

use common::*;
use std::path::{Path, PathBuf};

/// A hapmaster serving on 127.0.0.1 with haproxy's capture sockets: `master.sock` (admin),
/// `master-user.sock` (`level,user`), `master-oper.sock` (`level,operator`).
struct Sockets {
    hm: Hapmaster,
    admin: PathBuf,
    user: PathBuf,
    oper: PathBuf,
    norm: Normalizer,
}

fn start() -> Sockets {
    let dir = TestDir::new();
    let [admin, user, oper] =
        ["master.sock", "master-user.sock", "master-oper.sock"].map(|n| dir.join(n));
    let specs = [
        admin.display().to_string(),
        format!("{},level,user", user.display()),
        format!("{},level,operator", oper.display()),
    ];
    let args: Vec<&str> = specs.iter().flat_map(|s| ["-S", s.as_str()]).collect();
    let cfg = http_config(&[format!("127.0.0.1:{}", free_port())]);
    let mut hm = Hapmaster::start_in(dir, cfg, &args);
    let worker = hm.wait_serving(EVENT);
    let mut norm = Normalizer::new();
    norm.add(hm.pid(), "@PID_MASTER@").add(worker, "@PID_W1@");
    Sockets {
        hm,
        admin,
        user,
        oper,
        norm,
    }
}

impl Sockets {
    /// The exchange `name` of the transcript, sent on `socket` as the capture sent it (its
    /// `.in`, then EOF), hapmaster's answer normalized.
    fn exchange(&self, socket: &Path, name: &str) -> (String, String) {
        let line = transcript(&format!("{name}.in"));
        let answer = cli_within(socket, line.trim_end_matches('\n'), EVENT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        (
            self.norm.normalize(&answer),
            transcript(&format!("{name}.norm")),
        )
    }

    fn compare(&self, socket: &Path, name: &str) {
        let (got, expected) = self.exchange(socket, name);
        // The capture's configuration sets no maxconn (a worker then says which it took);
        // this one does.
        let expected: String = expected
            .split_inclusive('\n')
            .filter(|l| !l.contains(" : Automatically setting global.maxconn to "))
            .collect();
        let (got, expected) = (without_fds(&got), without_fds(&expected));
        assert_eq!(
            got, expected,
            "{name}: hapmaster's answer differs from haproxy's"
        );
    }
}

/// The master's own commands as haproxy's master of the same version answers them: the
/// version, the level, the sockets, the commands that version lacks (its `Unknown command`
/// answer with its fuzzy suggestions), `show proc` with an argument.
#[test]
fn master_commands_answer_as_haproxy() {
    let s = start();
    // `show env` (3.1+) shows the process's environment: the capture's was fixed, a test's is
    // cargo's; compared in shape only where the transcript has an answer.
    for name in ["show_env", "show_env_var"] {
        let (got, expected) = s.exchange(&s.admin, name);
        if expected.starts_with("Unknown command") {
            assert_eq!(got, expected, "{name}");
        } else {
            let lines: Vec<&str> = got.lines().collect();
            assert!(
                lines.len() >= 2
                    && lines[lines.len() - 1].is_empty()
                    && lines[..lines.len() - 1].iter().all(|l| l.contains('=')),
                "{name}: {got}"
            );
            assert!(got.contains("PATH="), "{name}: {got}");
        }
    }
    for name in [
        "show_version",
        "show_cli_level",
        "show_cli_sockets",
        "show_startup_logs",
        "unknown_command",
        "show_proc_debug",
        "show_proc_arg",
        "expert_mode_query",
        "expert_mode_on_query",
    ] {
        s.compare(&s.admin, name);
    }
    s.compare(&s.user, "show_proc_user_socket");
}

/// `show proc debug`'s fd columns (haproxy 3.1+) are haproxy's socketpairs, which hapmaster
/// has not (it prints -1: src/control/format.rs checks the shape): left out of comparisons.
fn without_fds(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.find("\t\t ") {
            Some(at) => format!("{}\t\t @FDS@\n", &line[..at]),
            None => line.to_string(),
        })
        .collect()
}

/// `help`: haproxy's lines for its version, in order, then hapmaster's own commands before the
/// fixed help/prompt/quit lines (a difference by design: README).
#[test]
fn help_is_haproxys_list_and_hapmasters_own() {
    let s = start();
    for (socket, name) in [(&s.admin, "help"), (&s.user, "help_user_socket")] {
        let (got, expected) = s.exchange(socket, name);
        // hard-reload is haproxy's from 2.9 on, hapmaster's own before.
        let hard = (!expected.contains("  hard-reload ")).then_some("  hard-reload ");
        let ours: Vec<&str> = hard
            .into_iter()
            .chain([
                "  await-reload ",
                "  show listeners ",
                "  show metrics ",
                "  _getsocks ",
            ])
            .collect();
        let theirs: String = got
            .split_inclusive('\n')
            .filter(|l| !ours.iter().any(|o| l.starts_with(o)))
            .collect();
        assert_eq!(theirs, expected, "{name}: haproxy's lines differ:\n{got}");
        for &o in &ours {
            assert!(got.contains(o), "{name}: {o:?} missing:\n{got}");
        }
        // Where haproxy lists hard-reload itself (2.9 and later), it is listed once.
        assert_eq!(got.matches("  hard-reload ").count(), 1, "{got}");
    }
}

/// Session levels: a socket's `level`, `operator` and `user` lowering it, raising it refused
/// (haproxy 2.6 closes the connection then), `reload` below operator refused by the CLI.
#[test]
fn levels_as_haproxy() {
    let s = start();
    s.compare(&s.user, "show_cli_level_user_socket");
    s.compare(&s.oper, "show_cli_level_oper_socket");
    for name in [
        "operator_show_cli_level",
        "user_show_cli_level",
        "user_operator",
    ] {
        s.compare(&s.admin, name);
    }
    s.compare(&s.user, "user_socket_reload");
    // Nothing reloaded.
    let proc = s.hm.cli("show proc");
    assert!(proc.contains(" 0 [failed: 0] "), "{proc}");
}

/// The level and modes reach the worker with a forwarded command (`operator -;expert-mode on
/// -;<command>`): what `debug dev` needs (expert mode on the worker).
#[test]
fn levels_and_modes_reach_the_worker() {
    let s = start();
    for name in [
        "operator_at1_show_cli_level",
        "user_at1_show_cli_level",
        "expert_at1_expert_mode",
        "experimental_at1_experimental_mode",
        "expert_off_at1_expert_mode",
        "expert_at1_debug_dev",
        "at1_debug_dev_no_expert",
    ] {
        s.compare(&s.admin, name);
    }
    s.compare(&s.user, "user_socket_at1_show_cli_level");
    // In a two-way session too (haproxy 3.2+; a bad prefix before).
    s.compare(&s.user, "user_socket_at_at_1_show_cli_level");
    // A mode needs admin: on an operator socket it is refused by the master itself.
    let answer = cli_within(&s.oper, "expert-mode on; @1 expert-mode", EVENT).unwrap();
    assert_eq!(answer, "Permission denied!\n");
}

/// `reload`'s answer: haproxy 2.7's shape for every version (2.6 answers nothing: its master
/// re-executes; a difference by design, README): `Success=`, `--`, the load's log in haproxy's
/// log format with the master's pid, a blank line, then the connection closes (what followed
/// `reload` is not run, as in haproxy 2.7 and later).
#[test]
fn reload_answers_in_haproxys_log_shape() {
    let mut s = start();
    let master = s.hm.pid();
    // From 3.1 the worker loads the configuration in haproxy too: the log opens with the
    // master's line, then the worker's own (a 3.4 worker started as root warns), then success.
    let version = s.hm.cli("show version");
    let from_3_1 = !version.starts_with("2.") && !version.starts_with("3.0");
    let answer = cli_within(&s.admin, "reload; show version", EVENT).unwrap();
    let worker = s.hm.wait_serving(EVENT);
    if from_3_1 {
        let head =
            format!("Success=1\n--\n[NOTICE]   ({master}) : Initializing new worker ({worker})\n");
        let tail = format!("[NOTICE]   ({master}) : Loading success.\n\n");
        assert!(
            answer.starts_with(&head) && answer.ends_with(&tail) && !answer.contains("forked"),
            "{answer}"
        );
    } else {
        assert_eq!(
            answer,
            format!(
                "Success=1\n--\n[NOTICE]   ({master}) : New worker ({worker}) forked\n\
                 [NOTICE]   ({master}) : Loading success.\n\n"
            )
        );
    }
    // hapmaster hard-reloads whatever the haproxy version (haproxy's master from 2.9).
    let answer = cli_within(&s.admin, "hard-reload", EVENT).unwrap();
    let worker = s.hm.wait_serving(EVENT);
    let new_worker = if from_3_1 {
        format!("Initializing new worker ({worker})")
    } else {
        format!("New worker ({worker}) forked")
    };
    assert!(
        answer.starts_with("Success=1\n--\n") && answer.contains(&new_worker),
        "{answer}"
    );

    s.hm.write_config("this-is-not-a-keyword\n");
    let answer = cli_within(&s.admin, "reload", EVENT).unwrap();
    let tail = format!("[WARNING]  ({master}) : Loading failure!\n\n");
    assert!(
        answer.starts_with("Success=0\n--\n") && answer.ends_with(&tail),
        "{answer}"
    );
    let reason = format!("[ALERT]    ({master}) : Reload failed: ");
    assert!(answer.contains(&reason), "{answer}");
    // The worker's own lines come first, as it printed them.
    assert!(answer.contains("this-is-not-a-keyword"), "{answer}");
}

/// The workers' environment as haproxy's master gives it (at1_show_env): `HAPROXY_MWORKER=1` and,
/// before haproxy 3.1, `HAPROXY_MASTER_CLI` with the master CLI sockets in haproxy's order
/// (hapmaster's own `master.sock` last, as the first one bound), the master's variables in its
/// order, not sorted; none of systemd's (NOTIFY_SOCKET is set for this master).
#[test]
fn workers_get_haproxys_master_worker_variables() {
    let mut s = start();
    let worker = s.hm.current_worker_pid().unwrap();
    let environ = |pid: u32| -> Vec<String> {
        let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        raw.split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect()
    };
    // What the master was started with, less what it takes for itself, then the two it adds.
    let master_cli = s
        .oper
        .parent()
        .map(|dir| {
            let rt = s.hm.runtime_dir.join("master.sock");
            format!(
                "HAPROXY_MASTER_CLI=unix@{d}/master-oper.sock;unix@{d}/master-user.sock;\
                 unix@{d}/master.sock;unix@{}",
                rt.display(),
                d = dir.display()
            )
        })
        .unwrap();
    let mut expected: Vec<String> = environ(s.hm.pid())
        .into_iter()
        .filter(|v| !v.starts_with("NOTIFY_SOCKET="))
        .collect();
    expected.push("HAPROXY_MWORKER=1".into());
    // haproxy 3.1+ workers restore their master's first environment: no HAPROXY_MASTER_CLI.
    let haproxy_has_master_cli = transcript("at1_show_env.norm").contains("\nHAPROXY_MASTER_CLI=");
    if haproxy_has_master_cli {
        expected.push(master_cli);
    }
    let got = environ(worker);
    assert_eq!(got, expected, "worker {worker}'s environment at exec");

    // As haproxy's worker shows them (the transcript, its temporary directory as @TMP@).
    let dir = s.oper.parent().unwrap().to_path_buf();
    s.norm.add(dir.display(), "@TMP@");
    let (shown, haproxys) = s.exchange(&s.admin, "at1_show_env");
    let names = ["HAPROXY_MWORKER=", "HAPROXY_MASTER_CLI="];
    for name in &names[..1 + usize::from(haproxy_has_master_cli)] {
        let line = |text: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .map(str::to_string)
        };
        let theirs = line(&haproxys).unwrap_or_else(|| panic!("{name} not in the transcript"));
        let ours = line(&shown).unwrap_or_else(|| panic!("{name} not shown: {shown}"));
        // hapmaster's own master.sock comes after haproxy's list.
        assert!(
            ours == theirs || ours.starts_with(&format!("{theirs};unix@@TMP@/rt/")),
            "{ours} against haproxy's {theirs}"
        );
    }
}
