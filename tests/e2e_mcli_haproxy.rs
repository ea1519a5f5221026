//! hapmaster's master CLI against haproxy's own, captured from a real `haproxy -W -S` of the
//! version installed (tests/transcripts/<version>/): the same exchanges, normalized alike
//! (`common::Normalizer`), compared byte for byte.
mod common;

use common::*;

/// What `show proc` shows after each step of the capture's reload sequence
/// (tests/transcripts/capture.py: 2 good reloads, 2 failed, 1 more failed, 1 good).
#[test]
fn show_proc_counts_reloads_as_haproxy() {
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    // What made haproxy's own reloads fail in the capture.
    let bad = format!("{good}\nthis-is-not-a-keyword\n");
    let hm = Hapmaster::start_ready(good.as_str(), &[]);
    let mut norm = Normalizer::new();
    norm.add(hm.pid(), "@PID_MASTER@");
    let mut workers = 0;
    // The first `# workers` row's pid: this step's new worker gets the capture's next name.
    let mut name_new_worker = |norm: &mut Normalizer, proc: &str| {
        let pid = worker_row_pid(proc);
        workers += 1;
        norm.add(pid, &format!("@PID_W{workers}@"));
    };
    let reload = |expect: &str| {
        let answer = hm.cli("reload");
        assert!(answer.starts_with(expect), "reload: {answer}");
    };
    let compare = |norm: &Normalizer, name: &str, proc: &str| {
        assert_eq!(
            norm.normalize(proc),
            transcript(&format!("{name}.norm")),
            "`show proc` ({name}) differs from haproxy's; raw answer:\n{proc}"
        );
    };

    let proc = settled_proc(&hm);
    name_new_worker(&mut norm, &proc);
    compare(&norm, "show_proc_start", &proc);

    reload("Success=1\n");
    let proc = settled_proc(&hm);
    name_new_worker(&mut norm, &proc);
    compare(&norm, "show_proc_after_1_reload", &proc);

    reload("Success=1\n");
    let proc = settled_proc(&hm);
    name_new_worker(&mut norm, &proc);
    compare(&norm, "show_proc_after_2_reloads", &proc);

    hm.write_config(&bad);
    reload("Success=0\n");
    reload("Success=0\n");
    compare(&norm, "show_proc_after_2_ok_2_failed", &settled_proc(&hm));

    reload("Success=0\n");
    hm.write_config(&good);
    reload("Success=1\n");
    let proc = settled_proc(&hm);
    name_new_worker(&mut norm, &proc);
    compare(&norm, "show_proc_after_recovery", &proc);
}

/// `show proc` once the old workers are gone (as the capture waited for haproxy's): an idle
/// worker soft-stopped by a reload exits at once.
fn settled_proc(hm: &Hapmaster) -> String {
    poll_until(EVENT, || {
        let proc = hm.cli("show proc");
        (!proc.contains("# old workers")).then_some(proc)
    })
    .unwrap_or_else(|| {
        panic!(
            "old workers still listed after {EVENT:?}:\n{}",
            hm.cli("show proc")
        )
    })
}

/// The pid of the first row after `# workers`.
fn worker_row_pid(proc: &str) -> u32 {
    proc.lines()
        .skip_while(|l| *l != "# workers")
        .nth(1)
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no worker row in `show proc`:\n{proc}"))
}

/// The exit code haproxy's own master gave in the capture (`facts.json` `exit_codes`).
fn captured_exit_code(key: &str) -> i32 {
    let facts = transcript("facts.json");
    let quoted = format!("\"{key}\": ");
    let at = facts
        .find(&quoted)
        .unwrap_or_else(|| panic!("no {quoted:?} in facts.json:\n{facts}"));
    let digits: String = facts[at + quoted.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// haproxy's master passes SIGINT on to its workers and exits with their 130; SIGTERM ends
/// them with 143, a normal end: 0.
#[test]
fn sigint_and_sigterm_exit_codes_as_haproxy() {
    for (signal, key) in [
        (SIGINT, "main master, SIGINT"),
        (SIGTERM, "fd master, SIGTERM"),
    ] {
        let port = free_port();
        let mut hm = Hapmaster::start_ready(http_config(&[format!("127.0.0.1:{port}")]), &[]);
        let worker = hm.current_worker_pid().unwrap();
        hm.signal(signal);
        let status = hm
            .wait_exit(EVENT)
            .unwrap_or_else(|| panic!("no exit within {EVENT:?} of signal {signal}"));
        let log = hm.stderr();
        assert_eq!(
            status.code(),
            Some(captured_exit_code(key)),
            "exit code after signal {signal} ({key}):\n{log}"
        );
        if signal == SIGINT {
            // The worker got the same signal, as haproxy's master passes it on.
            let line =
                format!("current worker pid {worker} (generation 1) exited (killed by SIGINT)");
            assert!(log.contains(&line), "expected {line:?} in:\n{log}");
        }
    }
}
