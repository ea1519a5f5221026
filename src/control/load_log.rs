//! What a load (the first start or a reload) leaves in haproxy's startup log, in haproxy's log
//! format, for the `reload` answer after `--` and for `show startup-logs` (haproxy 2.7 and later:
//! mworker.c `cli_io_handler_show_loadstatus`, errors.c `startup_logs`).
//!
//! haproxy's master parses the configuration itself (up to 3.0), so its messages and then `New
//! worker (W) forked` / `Loading success.` (or `Loading failure!`) are the master's lines. Here
//! the worker parses it: its own lines come first, as it printed them, then the master's lines
//! with the master's pid, so that a reader of haproxy's answer finds the same last lines. From
//! 3.1 the worker parses it in haproxy too: the log starts with the master's `Initializing new
//! worker (W)`, then the worker's lines, then `Loading success.`.

use crate::control::keywords::Dialect;

/// One line of haproxy's log format: `[NOTICE]   (1234) : message` (the label padded to 11
/// columns, as haproxy's `print_message` does).
pub fn line(label: &str, pid: u32, message: &str) -> String {
    format!("{:<11}({pid}) : {message}\n", format!("[{label}]"))
}

/// The log of one load by master `master`: the worker's start-up output (`worker_lines`, as it
/// printed it), then the master's lines: `New worker (W) forked` (before 3.1; from 3.1
/// `Initializing new worker (W)` comes first instead) and `Loading success.` when `failure` is
/// None, else the reason as an alert and `Loading failure!`.
pub fn load_log(
    master: u32,
    worker: Option<i32>,
    worker_lines: &str,
    failure: Option<&str>,
    dialect: Dialect,
) -> String {
    // 3.1's master-worker rework: the worker loads the configuration.
    let initializing = dialect.at_least((3, 1));
    let mut out = String::new();
    if let Some(w) = worker.filter(|_| initializing) {
        out.push_str(&line(
            "NOTICE",
            master,
            &format!("Initializing new worker ({w})"),
        ));
    }
    out.push_str(worker_lines);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    match failure {
        None => {
            if let Some(w) = worker.filter(|_| !initializing) {
                out.push_str(&line("NOTICE", master, &format!("New worker ({w}) forked")));
            }
            out.push_str(&line("NOTICE", master, "Loading success."));
        }
        Some(reason) => {
            out.push_str(&line("ALERT", master, &format!("Reload failed: {reason}")));
            out.push_str(&line("WARNING", master, "Loading failure!"));
        }
    }
    out
}

/// The answer to `reload` (and `await-reload`): haproxy 2.7's `Success=1` or `Success=0`, `--`,
/// the load's log, and the blank line that ends a CLI answer. haproxy 2.6 answers nothing (its
/// master re-executes); hapmaster answers this for every version.
pub fn reload_answer(success: bool, log: &str) -> String {
    format!("{}\n", load_status(success, log))
}

/// haproxy's `_loadstatus` (2.7+): `Success=`, then `--` and the log if there is one.
pub fn load_status(success: bool, log: &str) -> String {
    let sep = if log.len() > 1 { "--\n" } else { "" };
    format!("Success={}\n{sep}{log}", u8::from(success))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V3_0: Dialect = Dialect((3, 0));

    /// haproxy 3.4's first load (tests/transcripts/3.4.0-*/show_startup_logs.norm): the
    /// master's `Initializing new worker`, the worker's lines, `Loading success.`.
    #[test]
    fn from_3_1_the_worker_loads() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/transcripts/3.4.0-64a335366"
        );
        let captured = std::fs::read_to_string(format!("{dir}/show_startup_logs.norm")).unwrap();
        let worker_lines: String = captured
            .lines()
            .filter(|l| l.contains("(@PID_W1@) : "))
            .map(|l| format!("{l}\n"))
            .collect();
        let ours = load_log(4242, Some(4343), &worker_lines, None, Dialect((3, 4)))
            .replace("4242", "@PID_MASTER@")
            .replace("4343", "@PID_W1@");
        assert_eq!(format!("{ours}\n"), captured);
        assert_eq!(
            load_log(10, Some(20), "", Some("it exited"), Dialect((3, 1))),
            "[NOTICE]   (10) : Initializing new worker (20)\n\
             [ALERT]    (10) : Reload failed: it exited\n\
             [WARNING]  (10) : Loading failure!\n"
        );
    }

    #[test]
    fn haproxy_shape() {
        assert_eq!(line("NOTICE", 7, "x"), "[NOTICE]   (7) : x\n");
        assert_eq!(line("WARNING", 7, "x"), "[WARNING]  (7) : x\n");
        assert_eq!(line("ALERT", 7, "x"), "[ALERT]    (7) : x\n");
        // haproxy 3.0.11's first reload, as captured (pids normalized): the same lines, then
        // what its master logged before answering (the old worker's exit, timing-dependent).
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/transcripts/3.0.11-1+deb13u4"
        );
        let captured = std::fs::read_to_string(format!("{dir}/reload_ok_1.norm")).unwrap();
        let ours = reload_answer(true, &load_log(4242, Some(4343), "", None, V3_0));
        let ours = ours
            .replace("4242", "@PID_MASTER@")
            .replace("4343", "@PID_W2@");
        let (lines, blank) = ours.split_at(ours.len() - 1);
        assert!(
            captured.starts_with(lines) && captured.ends_with(blank),
            "{captured}"
        );
        assert_eq!(
            reload_answer(true, &load_log(10, Some(20), "", None, V3_0)),
            "Success=1\n--\n[NOTICE]   (10) : New worker (20) forked\n\
             [NOTICE]   (10) : Loading success.\n\n"
        );
        assert_eq!(
            reload_answer(
                false,
                &load_log(
                    10,
                    Some(20),
                    "[ALERT]    (20) : bad",
                    Some("it exited"),
                    V3_0
                )
            ),
            "Success=0\n--\n[ALERT]    (20) : bad\n[ALERT]    (10) : Reload failed: it exited\n\
             [WARNING]  (10) : Loading failure!\n\n"
        );
    }
}
