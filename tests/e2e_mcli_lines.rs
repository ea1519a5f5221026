//! How hapmaster's master CLI reads a line and shapes its answers, against haproxy's own
//! (tests/transcripts/<version>/, issue 13 items 1, 2 and 4): escapes kept when a command is
//! forwarded, `@` prefixes (alone: the session's default target; bad: haproxy's line), blank
//! lines, prompts, and every line answered until the client closes. Each exchange is sent as
//! the capture sent it and compared byte for byte after normalization, prompt sessions step
//! by step.
mod common;

use common::*;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// A hapmaster with the capture's frontend: an ACL read from `F`, an empty file named
/// relatively (`-C` its directory), so that the ACL's reference is `F` as in the transcripts.
struct Capture {
    hm: Hapmaster,
    norm: Normalizer,
    good: String,
}

impl Capture {
    fn start() -> Capture {
        let dir = TestDir::new();
        std::fs::write(dir.join("F"), "").unwrap();
        let here = dir.path().to_str().unwrap().to_string();
        let good = format!(
            "global\n    maxconn 100\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
             timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{}\n    acl blocked_agent hdr(user-agent) -f F\n    \
             http-request deny if blocked_agent\n    \
             http-request return status 200 content-type text/plain string ok\n",
            free_port()
        );
        let mut hm = Hapmaster::start_in(dir, good.as_str(), &["-C", &here]);
        let worker = hm.wait_serving(EVENT);
        let mut norm = Normalizer::new();
        norm.add(hm.pid(), "@PID_MASTER@").add(worker, "@PID_W1@");
        Capture { hm, norm, good }
    }

    fn socket(&self) -> PathBuf {
        self.hm.runtime_dir.join("master.sock")
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(EVENT)).unwrap();
        s.set_write_timeout(Some(EVENT)).unwrap();
        s
    }

    /// `bytes` sent at once, then a write shutdown (as `socat` sends a piped line); the answer
    /// up to EOF.
    fn oneshot(&self, bytes: &[u8]) -> String {
        let mut s = self.connect();
        s.write_all(bytes).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("no EOF after {bytes:?} within {EVENT:?}: {e}"));
        String::from_utf8(answer).unwrap()
    }

    /// The one-shot exchange `name` of the transcript, compared with haproxy's.
    fn compare_oneshot(&self, name: &str) {
        let sent = std::fs::read(transcript_dir().join(format!("{name}.in"))).unwrap();
        let answer = self.oneshot(&sent);
        assert_eq!(
            self.norm.normalize(&answer),
            transcript(&format!("{name}.norm")),
            "{name}: the answer to {:?} differs from haproxy's; raw: {answer:?}",
            String::from_utf8_lossy(&sent)
        );
    }

    /// The prompt session `name` of the transcript, a line at a time, each read up to the
    /// prompt (or EOF) and compared with haproxy's byte for byte. `current`: the placeholder of
    /// the capture's worker that hapmaster's current one plays (the capture had reloaded more).
    fn compare_steps(&self, name: &str, current: &str) {
        self.compare_steps_upto(name, current, usize::MAX);
    }

    /// The first `upto` steps of `name`, then a write shutdown: EOF, nothing more said. For a
    /// session whose next line races with a worker closing (after `quit` in a two-way session
    /// without prompt mode, nothing tells the client the master is back).
    fn compare_steps_upto(&self, name: &str, current: &str, upto: usize) {
        let mut steps = captured_steps(name);
        if steps.len() > upto {
            steps.truncate(upto);
            steps.push((b"<write shutdown>".to_vec(), Vec::new()));
        }
        let capture_norm = capture_normalizer();
        let mut norm = Normalizer::new();
        norm.add(self.hm.pid(), "@PID_MASTER@");
        if let Some(worker) = self.hm.current_worker_pid() {
            norm.add(worker, current);
        }
        let mut s = self.connect();
        for (i, (line, theirs)) in steps.iter().enumerate() {
            if line == b"<write shutdown>" {
                s.shutdown(Shutdown::Write).unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                // The capture writes what came before the EOF, then `<EOF>`.
                let theirs = theirs.strip_suffix(b"<EOF>").unwrap_or(theirs);
                assert_eq!(
                    norm.normalize(&String::from_utf8_lossy(&rest)),
                    capture_norm.normalize(&String::from_utf8_lossy(theirs)),
                    "{name}: the end differs from haproxy's"
                );
                break;
            }
            if line.is_empty() {
                // The capture's EOF after `quit`.
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).unwrap();
                assert!(rest.is_empty(), "{name}: bytes after quit: {rest:?}");
                continue;
            }
            s.write_all(line).unwrap();
            if theirs.is_empty() {
                // haproxy said nothing (prompt mode off): nothing to wait for. Bytes said here
                // would show at the next step's read, or at the end's.
                continue;
            }
            // Without a prompt to end it (prompt mode off), a step is as long as haproxy's
            // (such steps hold no pid).
            let ours = if ends_with_prompt(&String::from_utf8_lossy(theirs)) {
                read_step(&mut s)
            } else {
                read_len(&mut s, theirs.len())
            };
            let ours = norm.normalize(&ours);
            let theirs = capture_norm.normalize(&String::from_utf8_lossy(theirs));
            assert_eq!(
                ours,
                theirs,
                "{name} step {i} ({:?}) differs from haproxy's",
                String::from_utf8_lossy(line)
            );
        }
    }
}

/// Reads until what came ends with a prompt (`master> `, `master[ReloadFailed]> `, `<pid>> `,
/// with `(xed)` flags, or `+ ` in a payload) or the connection ends.
fn read_step(s: &mut UnixStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("no prompt within {EVENT:?}: {e}; got {got:?}"));
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if ends_with_prompt(&String::from_utf8_lossy(&got)) {
            break;
        }
    }
    String::from_utf8(got).unwrap()
}

/// Reads `len` bytes, or up to EOF.
fn read_len(s: &mut UnixStream, len: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while got.len() < len {
        let n = s
            .read(&mut buf[..len - got.len()])
            .unwrap_or_else(|e| panic!("no {len} bytes within {EVENT:?}: {e}; got {got:?}"));
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// A master's prompt, `+ ` in a payload, or a worker's own (`\n> `, in a two-way `@@`
/// session).
fn ends_with_prompt(text: &str) -> bool {
    if text.ends_with("+ ") {
        return true;
    }
    let Some(rest) = text.strip_suffix("> ") else {
        return false;
    };
    if rest.is_empty() || rest.ends_with('\n') {
        return true;
    }
    let rest = match rest.strip_suffix(')') {
        Some(r) => match r.rfind('(') {
            Some(p) if r[p + 1..].chars().all(|c| "xed".contains(c)) => &r[..p],
            _ => return false,
        },
        None => rest,
    };
    rest.ends_with("master")
        || rest.ends_with("master[ReloadFailed]")
        || rest.ends_with(|c: char| c.is_ascii_digit())
}

/// `NAME.steps`: each line sent and the bytes read after it (python reprs); the last step's
/// line is empty (the capture's EOF).
fn captured_steps(name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let text = transcript(&format!("{name}.steps"));
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let mut steps = Vec::new();
    while let (Some(sent), Some(got)) = (lines.next(), lines.next()) {
        let sent = py_bytes(sent.strip_prefix(">>> ").expect("a sent line"));
        steps.push((sent, py_bytes(got)));
    }
    steps
}

/// A python bytes literal (`b'..\n..'`), as `repr` writes it.
fn py_bytes(repr: &str) -> Vec<u8> {
    let body = repr
        .strip_prefix("b'")
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| repr.strip_prefix("b\"").and_then(|r| r.strip_suffix('"')))
        .unwrap_or_else(|| panic!("not a bytes literal: {repr}"));
    let mut out = Vec::new();
    let mut bytes = body.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap());
            }
            Some(other) => out.push(other),
            None => panic!("a lone backslash in {repr}"),
        }
    }
    out
}

/// The capture's own pids (`facts.json`) to placeholders, for its raw `.steps`.
fn capture_normalizer() -> Normalizer {
    let facts = transcript("facts.json");
    let pid = |key: &str| -> u32 {
        let quoted = format!("\"{key}\": ");
        let at = facts.find(&quoted).unwrap() + quoted.len();
        let digits: String = facts[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    let mut norm = Normalizer::new();
    norm.add(pid("master"), "@PID_MASTER@");
    for w in 1..=5 {
        norm.add(pid(&format!("worker{w}")), &format!("@PID_W{w}@"));
    }
    norm
}

/// Item 1: escapes reach the worker as they were typed (`\;` does not end the command, `\ `
/// stays in the word), tabs separate words, and the worker's own parser unescapes. The ACL
/// file fills as in the capture, so each `show acl F` compares whole.
#[test]
fn escapes_are_forwarded_as_haproxy_does() {
    let c = Capture::start();
    c.compare_oneshot("escape_add_show_acl");
    c.compare_oneshot("escape_show_acl_after");
    c.compare_oneshot("escape_tab_backslash");
    c.compare_steps("prompt_escape", "@PID_W1@");
    c.compare_oneshot("tab_after_prefix");
    // On the master, `show\ version` is one word: an unknown command.
    c.compare_oneshot("escape_master_show_version");
}

/// A payload (`<<`, then lines up to an empty one) goes to the worker with its command, its
/// lines taken as they are (a `;` in them ends nothing); prompt mode answers `+ ` to each line;
/// a master command takes one too (and ignores it); a payload the client never ended is not
/// run. The ACL fills as in the capture (the escape exchanges first), so each `show acl F`
/// compares whole.
#[test]
fn payloads_as_haproxy_reads_them() {
    let c = Capture::start();
    c.compare_oneshot("escape_add_show_acl");
    c.compare_oneshot("escape_tab_backslash");
    c.compare_steps("prompt_escape", "@PID_W1@");
    c.compare_steps("prompt_payload", "@PID_W1@");
    c.compare_oneshot("payload_oneshot");
    c.compare_oneshot("payload_master");
    // Cut short by the client's close: nothing is answered, nothing added (haproxy 2.6 alike).
    assert_eq!(c.oneshot(b"@1 add map F <<\nk3 v3\n"), "");
    let acl = transcript("payload_oneshot.norm");
    let after = acl.strip_prefix('\n').unwrap();
    assert_eq!(c.norm.normalize(&c.oneshot(b"@1 show acl F\n")), after);
    // What follows the `;` after the command is the payload's first line (haproxy's proxy
    // reads up to the newline once in a payload).
    let answer = c.oneshot(b"@1 add map F <<;k4 v4\n\n@1 show acl F\n");
    assert_eq!(
        c.norm.normalize(&answer),
        format!("\n{after}").replace("v;2\n", "v;2\n@PTR@ k4 v4\n"),
        "{answer:?}"
    );
}

/// Item 4: a forwarded answer is relayed as the worker wrote it (its blank line, no other),
/// every line is answered until the client closes, `quit` alone says nothing, and in prompt
/// mode the prompt follows each command without a blank line before the first.
#[test]
fn answers_and_prompts_are_shaped_as_haproxy_does() {
    let c = Capture::start();
    c.compare_oneshot("at1_show_version");
    c.compare_oneshot("at1_show_version_twice");
    c.compare_oneshot("two_lines_at1_no_prompt");
    c.compare_oneshot("quit_oneshot");
    // Several master answers on one connection, each with its blank line, no prompt.
    c.compare_oneshot("two_lines_no_prompt");
    c.compare_steps("prompt_basic", "@PID_W1@");
    c.compare_steps("prompt_modes", "@PID_W1@");
    // `prompt i|p` set the mode from haproxy 3.2 (every argument toggles before), `n` and
    // others are refused with the usage.
    c.compare_steps("prompt_i_p", "@PID_W1@");
    c.compare_steps("prompt_n_bad", "@PID_W1@");

    // `prompt` twice: prompt mode off again, the session goes on without prompts
    // (prompt_toggle_off; its steps without a prompt are read at once here).
    let version = transcript("show_version.norm");
    let mut s = c.connect();
    s.write_all(b"prompt\n").unwrap();
    assert_eq!(read_step(&mut s), "master> ");
    s.write_all(b"show version\n").unwrap();
    assert_eq!(read_step(&mut s), format!("{version}master> "));
    s.write_all(b"prompt\nshow version\nquit\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, version, "after prompt mode was turned off");
    // Pipelined on one line, as scripts do; and prompt mode ended by the client's EOF.
    c.compare_oneshot("prompt_pipelined");
    c.compare_oneshot("prompt_pipelined_no_quit");

    // After a failed reload the prompt says so; a good reload clears it.
    let good = c.good.clone();
    c.hm.write_config(&format!("{good}\nthis-is-not-a-keyword\n"));
    let failed = c.hm.cli("reload");
    assert!(failed.starts_with("Success=0\n"), "{failed}");
    // The capture's current worker then was its third.
    c.compare_steps("prompt_reload_failed", "@PID_W3@");
    c.hm.write_config(&good);
    let ok = c.hm.cli("reload");
    assert!(ok.starts_with("Success=1\n"), "{ok}");
    c.compare_steps("prompt_after_recovery", "@PID_W3@");
    // A reload's answer ends the session, prompt mode or not, what followed it not run
    // (haproxy 3.0's prompt_reload_ok; 2.6 closes saying nothing: README).
    let mut s = c.connect();
    s.write_all(b"prompt\nreload\nshow version\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("master> Success=1\n--\n")
            && answer.ends_with(" : Loading success.\n\n"),
        "{answer:?}"
    );
}

/// Item 2: `@1` alone makes the current worker the session's target (its pid, in the prompt),
/// `@` / `@master` the master again; a bad prefix gets haproxy's line alone, and haproxy 2.6
/// (the version the tests run) then closes the connection.
#[test]
fn prefixes_as_haproxy_reads_them() {
    let c = Capture::start();
    c.compare_oneshot("at_alone_oneshot");
    c.compare_oneshot("at_alone_then_command");
    for name in ["at_alone_then_master", "at_zero", "at_master"] {
        c.compare_oneshot(name);
    }
    c.compare_steps("prompt_at_alone", "@PID_W1@");
    for name in [
        "at_2",
        "at_bad_pid",
        "at_at_1",
        "at_at_1_alone",
        "at_at_master",
    ] {
        c.compare_oneshot(name);
    }
    // `@@1` (haproxy 3.2+, a bad prefix before): the worker's own CLI, both ways, until it
    // closes; then the master's again.
    c.compare_steps("prompt_at_at_1", "@PID_W1@");
    c.compare_steps("prompt_at_at_1_command", "@PID_W1@");
    // Without prompt mode nothing tells when the worker has closed after `quit`: up to it.
    c.compare_steps_upto("at_at_1_interactive", "@PID_W1@", 3);
    let worker = c.hm.current_worker_pid().unwrap();
    let answer = c.oneshot(format!("@!{worker} show version\n").as_bytes());
    assert_eq!(answer, transcript("at_bang_pid.norm"));
    // A bad prefix ends the connection (haproxy before 2.8): what follows it is not run.
    let answer = c.oneshot(b"@2 show info; @1 show version\n@1 show version\n");
    assert_eq!(
        answer,
        "Can't find the target PID matching the prefix '@2'\n"
    );
}

/// `prompt timed`: haproxy 2.6 ignores the argument (prompt mode toggled, as `prompt`); 2.8
/// and later turn prompt mode on and toggle a `[d:hh:mm:ss] ` stamp of the uptime of the
/// process the session's commands go to (tests/transcripts/3.0.11-1+deb13u4/prompt_timed,
/// played here by the fake haproxy as 3.0.0, whose master and worker answers are its own).
#[test]
fn prompt_timed_as_haproxy() {
    let c = Capture::start();
    c.compare_steps("prompt_timed", "@PID_W1@");
    drop(c);

    let mut hm = fake_haproxy_3_0(&[], &[]);
    let worker = hm.wait_serving(EVENT);
    let mut norm = Normalizer::new();
    norm.add(worker, "@PID_W1@");
    let mut s = UnixStream::connect(hm.runtime_dir.join("master.sock")).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    let mut step = |line: &[u8]| {
        s.write_all(line).unwrap();
        norm.normalize(&read_step(&mut s))
    };
    assert_eq!(step(b"prompt timed\n"), "[@UPTIME@] master> ");
    assert_eq!(step(b"@1\n"), "[@UPTIME@] @PID_W1@> ");
    assert_eq!(step(b"expert-mode on\n"), "[@UPTIME@] @PID_W1@(e)> ");
    // Again: the stamp goes, prompt mode stays (prompt_timed step 4).
    assert_eq!(step(b"prompt timed\n"), "@PID_W1@(e)> ");
    assert_eq!(step(b"prompt timed\n"), "[@UPTIME@] @PID_W1@(e)> ");
    assert_eq!(step(b"@master\n"), "[@UPTIME@] master(e)> ");
    // Plain `prompt` still ends prompt mode.
    s.write_all(b"prompt\nquit\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert!(hm.stop().success());
}

/// The default target is a pid: once that worker is gone, haproxy's master cannot connect to
/// it, says so and closes.
#[test]
fn a_default_target_that_left_ends_the_session() {
    let mut c = Capture::start();
    let worker = c.hm.current_worker_pid().unwrap();
    let mut s = c.connect();
    s.write_all(b"prompt\n").unwrap();
    assert_eq!(read_step(&mut s), "master> ");
    s.write_all(b"@1\n").unwrap();
    assert_eq!(read_step(&mut s), format!("{worker}> "));
    let ok = c.hm.cli("reload");
    assert!(ok.starts_with("Success=1\n"), "{ok}");
    c.hm.settle_reloads();
    poll_until(EVENT, || (!pid_alive(worker)).then_some(()))
        .unwrap_or_else(|| panic!("worker {worker} still alive after {EVENT:?}"));
    s.write_all(b"show version\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "Can't connect to the target CLI!\n");
}

/// From haproxy 2.8 on (played by the fake haproxy as 3.0.0, whose `show info` the master reads
/// the version from), a bad prefix no longer ends the session: haproxy's line, the rest of what
/// was sent dropped, then the prompt (cli.c v3.0.0: pcli_error).
#[test]
fn from_haproxy_2_8_a_bad_prefix_keeps_the_session() {
    let mut hm = fake_haproxy_3_0(&[], &[]);
    hm.wait_serving(EVENT);
    let proc = hm.cli("show proc");
    assert!(proc.contains(" 3.0.0 "), "{proc}");
    let sock = hm.runtime_dir.join("master.sock");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    s.write_all(b"prompt\n").unwrap();
    assert_eq!(read_step(&mut s), "master> ");
    s.write_all(b"@2 show info; show proc\n").unwrap();
    assert_eq!(
        read_step(&mut s),
        "Can't find the target PID matching the prefix '@2'\nmaster> "
    );
    s.write_all(b"show proc\n").unwrap();
    let answer = read_step(&mut s);
    assert!(
        answer.starts_with("#<PID>") && answer.ends_with("\n\nmaster> "),
        "{answer:?}"
    );
    // `@@<pid>` is haproxy 3.2's: a bad prefix before.
    s.write_all(b"@@1\n").unwrap();
    assert_eq!(
        read_step(&mut s),
        "Can't find the target PID matching the prefix '@@1'\nmaster> "
    );
    s.write_all(b"quit\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "master> ");
    assert!(hm.stop().success());
}

/// Until a worker tells its version (`show info`), the master speaks the dialect of the version
/// the binary's `-v` printed at start: here the fake haproxy plays 3.0.0 and its first worker
/// never answers, so a bad prefix keeps the session (2.8+) and `show version` is the binary's.
#[test]
fn before_a_worker_answers_the_binary_version_decides() {
    let hm = fake_haproxy_3_0(&["hang"], &["--ready-timeout", "10m"]);
    let sock = hm.runtime_dir.join("master.sock");
    let mut s = poll_until(EVENT, || UnixStream::connect(&sock).ok())
        .unwrap_or_else(|| panic!("{} not there after {EVENT:?}", sock.display()));
    s.set_read_timeout(Some(EVENT)).unwrap();
    s.write_all(b"prompt\n").unwrap();
    assert_eq!(read_step(&mut s), "master> ");
    s.write_all(b"@2 show info\n").unwrap();
    assert_eq!(
        read_step(&mut s),
        "Can't find the target PID matching the prefix '@2'\nmaster> "
    );
    s.write_all(b"show version\n").unwrap();
    assert_eq!(read_step(&mut s), "3.0.0\n\nmaster> ");
    let proc = hm.cli("show proc");
    assert!(
        !proc
            .lines()
            .any(|l| l.contains("worker") && l.contains("3.0.0")),
        "the worker was meant never to answer: {proc}"
    );
}

/// hapmaster on the fake haproxy playing 3.0.0 (what a 2.8+ master does, where the host has 2.6),
/// with `faults` in its config and `extra` arguments; not waited for.
fn fake_haproxy_3_0(faults: &[&str], extra: &[&str]) -> Hapmaster {
    fake_haproxy_as("3.0.0", faults, extra)
}

/// hapmaster on the fake haproxy playing `version`, with `faults` and `extra` arguments.
fn fake_haproxy_as(version: &str, faults: &[&str], extra: &[&str]) -> Hapmaster {
    let dir = TestDir::new();
    let haproxy = fake_haproxy_of_version(&dir, version);
    let cfg = fake_config(free_port(), faults);
    let mut args = vec!["--haproxy", haproxy.to_str().unwrap()];
    args.extend_from_slice(extra);
    Hapmaster::start_in(dir, cfg, &args)
}

/// Whether the haproxy the tests run (its transcripts' directory, `<major>.<minor>...`) is
/// `major.minor` or later.
fn haproxy_found_at_least(major: u32, minor: u32) -> bool {
    let dir = transcript_dir();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut parts = name.split(|c: char| !c.is_ascii_digit());
    let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok()).unwrap();
    (number(), number()) >= (major, minor)
}

/// `lines` payload lines of 100 bytes each: `k000001 vvv...`.
fn payload_lines(lines: usize) -> Vec<u8> {
    (0..lines)
        .flat_map(|i| format!("k{i:06} {}\n", "v".repeat(91)).into_bytes())
        .collect()
}

/// A payload past what the worker's CLI buffer takes (tune.bufsize, 16384 bytes here) is
/// answered with a line that says so (the worker's from haproxy 3.0; before, haproxy's master
/// says nothing, or "Can't connect to the target CLI!", as the worker closes or resets, and
/// hapmaster says why; 3.4's worker takes it); one past the master's own bound (64 KiB) is
/// refused with a line and the connection closed, nothing sent to the worker. Either way the
/// ACL is unchanged and other clients are answered.
#[test]
fn a_payload_past_the_buffer_is_refused_with_a_line() {
    let c = Capture::start();
    let acl = c.oneshot(b"@1 show acl F\n");
    let version = transcript("at1_show_version.norm");
    // haproxy 3.4's CLI allocates a payload past tune.bufsize (9b1f0a355, v3.4-dev10): the
    // worker takes it, and only the master's own bound is left.
    let past_the_buffer_taken = haproxy_found_at_least(3, 4);
    for lines in [170, 400] {
        let mut sent = b"@1 add map F <<\n".to_vec();
        sent.extend(payload_lines(lines));
        sent.extend(b"\n@1 show version\n");
        let answer = c.oneshot(&sent);
        // The next command still runs.
        let said = answer
            .strip_suffix(version.as_str())
            .unwrap_or_else(|| panic!("{lines} lines: {answer:?}"));
        if past_the_buffer_taken {
            assert_eq!(said, "\n", "{lines} lines of payload, taken from 3.4 on");
            continue;
        }
        // haproxy 3.0's worker says it itself (one line, no blank line after it), 2.6's closes
        // without a word and hapmaster says why.
        assert!(
            said.contains("tune.bufsize") && said.ends_with('\n'),
            "{lines} lines of payload: {said:?}"
        );
    }
    let mut sent = b"@1 add map F <<\n".to_vec();
    sent.extend(payload_lines(700));
    sent.extend(b"\n@1 show version\n");
    let answer = c.oneshot(&sent);
    assert!(
        answer
            .starts_with("Payload too large: '@1 add map F <<' and its payload exceed 65536 bytes")
            && answer.ends_with("send it in parts.\n"),
        "{answer:?}"
    );
    if !past_the_buffer_taken {
        assert_eq!(c.oneshot(b"@1 show acl F\n"), acl);
    }
    let proc = c.hm.cli("show proc");
    assert!(proc.starts_with("#<PID>"), "{proc}");
}

/// From haproxy 2.9 on, `<<TAG` opens a payload that the line `TAG` ends; before, `<<TAG` is a
/// word like another (2.6: `add map` gets no payload). With the haproxy found, then with the
/// fake haproxy as 3.0.0 (its CLI answers "Unknown command." after reading the command).
#[test]
fn a_payload_ends_at_its_tag_from_haproxy_2_9() {
    let c = Capture::start();
    let mut s = c.connect();
    let mut step = |line: &[u8]| {
        s.write_all(line).unwrap();
        read_step(&mut s)
    };
    assert_eq!(step(b"prompt\n"), "master> ");
    if haproxy_found_at_least(2, 9) {
        assert_eq!(step(b"@1 add map F <<EOF\n"), "+ ");
        assert_eq!(step(b"k9 v9\n"), "+ ");
        assert_eq!(step(b"EOF\n"), "\nmaster> ");
    } else {
        let answer = step(b"@1 add map F <<EOF\n");
        assert!(
            answer.starts_with("'add map' expects three parameters")
                && answer.ends_with("master> "),
            "{answer:?}"
        );
    }
    drop(c);

    let mut hm = fake_haproxy_3_0(&[], &[]);
    hm.wait_serving(EVENT);
    let mut s = UnixStream::connect(hm.runtime_dir.join("master.sock")).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    let mut step = |line: &[u8]| {
        s.write_all(line).unwrap();
        read_step(&mut s)
    };
    assert_eq!(step(b"prompt\n"), "master> ");
    assert_eq!(step(b"@1 add map F <<EOF\n"), "+ ");
    assert_eq!(step(b"k1 v1\n"), "+ ");
    // An empty line is a payload line like another here.
    assert_eq!(step(b"\n"), "+ ");
    assert_eq!(step(b"EOF\n"), "Unknown command.\nmaster> ");
    // A tag longer than 7 bytes opens no payload: the command goes alone.
    assert_eq!(
        step(b"@1 add map F <<ABCDEFGH\n"),
        "Unknown command.\nmaster> "
    );
    // On the master's own command, the tag word is not an argument.
    let version = step(b"show version <<END\n");
    assert_eq!(version, "+ ");
    assert_eq!(step(b"END\n"), "3.0.0\n\nmaster> ");
    drop(s);
    assert!(hm.stop().success());
}

/// A client that opens a payload and never ends it is cut off by `--cli-timeout` like any
/// stalled client (the payload not run), and meanwhile others are answered.
#[test]
fn a_payload_never_ended_is_cut_off_by_the_cli_timeout() {
    let cli_timeout = std::time::Duration::from_secs(5);
    let mut hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{}", free_port())]),
        &["--cli-timeout", "5s"],
    );
    let mut s = UnixStream::connect(hm.runtime_dir.join("master.sock")).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    let opened = std::time::Instant::now();
    s.write_all(b"@1 add map F <<\nk1 v1\n").unwrap();
    let proc = hm.cli("show proc");
    assert!(proc.starts_with("#<PID>"), "{proc}");
    let answered_after = opened.elapsed();
    assert!(
        answered_after < cli_timeout,
        "show proc took {answered_after:?}: the payload client's time ran out first"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("the payload client not cut off within {EVENT:?}: {e}"));
    let cut_off = opened.elapsed();
    eprintln!(
        "figures: show proc answered after {answered_after:?}; the open payload cut off after \
         {cut_off:.1?} with --cli-timeout {cli_timeout:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");
    assert!(cut_off >= cli_timeout, "cut off after {cut_off:?}");
    assert!(hm.stop().success());
}

/// `@@1` as haproxy 3.2+ serves it (tests/transcripts/3.4.0-*/prompt_at_at_1*, played here by
/// the fake haproxy as 3.4.0, whose CLI serves an interactive connection; the host's haproxy
/// 2.6 answers `@@1` as a bad prefix): the worker's own CLI both ways until it closes, then the
/// master again with its prompt. Keeps the relay exercised where only haproxy 2.6 runs.
#[test]
fn a_two_way_session_as_haproxy_3_4() {
    let mut hm = fake_haproxy_as("3.4.0", &[], &[]);
    let worker = hm.wait_serving(EVENT);
    let sock = hm.runtime_dir.join("master.sock");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    let mut step = |line: &[u8]| {
        s.write_all(line).unwrap();
        read_step(&mut s)
    };
    assert_eq!(step(b"prompt\n"), "master> ");
    // Alone: the worker is put in the session's mode (`prompt p`), its prompt is its own.
    assert_eq!(step(b"@@1\n"), "\n> ");
    assert_eq!(step(b"show version\n"), "3.4.0\n\n> ");
    // The worker's, not the master's (which would answer `master> `).
    assert_eq!(step(b"prompt p\n"), "\n> ");
    assert_eq!(step(b"no-such-command\n"), "Unknown command.\n\n> ");
    assert_eq!(step(b"quit\n"), "master> ");
    assert_eq!(step(b"show version\n"), "3.4.0\n\nmaster> ");
    // With a command: the worker's one answer, then the master.
    assert_eq!(
        step(format!("@@!{worker} show info\n").as_bytes()),
        format!("Name: HAProxy\nVersion: 3.4.0\nPid: {worker}\nmaster> ")
    );
    assert_eq!(
        step(b"@@2 show info\n"),
        "Can't find the target PID matching the prefix '@@2'\nmaster> "
    );
    // 3.2's prompt arguments.
    let usage = step(b"prompt n\n");
    assert!(
        usage.starts_with("Usage: prompt [help | i | p | timed]*\n") && usage.ends_with("master> "),
        "{usage:?}"
    );
    s.write_all(b"prompt i\nshow version\nquit\n").unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "3.4.0\n\n");

    // Without prompt mode: `prompt i`; the client's EOF reaches the worker, which closes.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(EVENT)).unwrap();
    s.write_all(b"@@1\n").unwrap();
    let mut blank = [0u8; 1];
    s.read_exact(&mut blank).unwrap();
    assert_eq!(&blank, b"\n");
    s.write_all(b"show version\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "3.4.0\n\n");
    assert!(hm.stop().success());
}
