//! End-to-end (issue 10, item 3): a crash after a failed reload must not take the service down.
//!
//! The config on disk is broken and a reload of it failed, so the old worker serves on. When that
//! worker then dies, its replacement must run the configuration the dead worker was started with
//! (the master keeps a copy of it), not the broken files on disk; before this, the replacement
//! failed on the broken file again and again and no worker ever accepted the queued connections.
mod common;

use common::soak::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SEC: Duration = Duration::from_secs(1);
const CLIENTS: usize = 10;
/// A line haproxy refuses: appended to a config, it makes a reload of it fail.
const BROKEN: &str = "    this_is_not_a_keyword 42\n";

/// One HTTP frontend on 127.0.0.1:`port` whose answer names the config's version.
fn versioned_config(port: u16, version: &str) -> String {
    format!(
        "global\n    maxconn 4000\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
         timeout server 10s\n\n\
         frontend fe\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"{version}\\n\"\n"
    )
}

/// The `# ` comment lines of a `show proc` answer that are not haproxy's own section headers.
fn proc_notes(show_proc: &str) -> Vec<&str> {
    show_proc
        .lines()
        .filter(|l| l.starts_with("# "))
        .filter(|l| !matches!(*l, "# workers" | "# old workers" | "# programs"))
        .collect()
}

/// Every row of `show proc` that is not a comment still has haproxy's five columns, and the
/// worker rows name exactly `workers`.
fn assert_proc_rows(show_proc: &str, workers: &[u32]) {
    let mut seen = Vec::new();
    for line in show_proc
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert!(
            cols.len() >= 5,
            "show proc row without its columns: {line:?}"
        );
        if cols[1] == "worker" {
            seen.push(cols[0].parse::<u32>().expect("a pid in the first column"));
        }
    }
    assert_eq!(seen, workers, "worker rows of show proc:\n{show_proc}");
}

/// The last `READY=1` datagram received.
fn last_ready(hm: &mut Hapmaster) -> String {
    hm.history()
        .iter()
        .rev()
        .find(|d| has_line(d, "READY=1"))
        .cloned()
        .unwrap_or_default()
}

/// The generations of the `config-<G>` copies in the runtime dir.
fn copy_dirs(rt: &Path) -> Vec<String> {
    dir_names(rt)
        .into_iter()
        .filter(|n| n.starts_with("config-"))
        .collect()
}

#[test]
fn crash_after_a_failed_reload_serves_the_last_good_config() {
    let port = free_port();
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    let mut hm = Hapmaster::start_ready(versioned_config(port, "v1"), &[]);
    let master = hm.pid();
    let first = hm.current_worker_pid().unwrap();
    let g1 = current_generation(&mut hm);
    let listener = tcp4_listen_inodes(port);
    assert_eq!(http_get(target.clone()).unwrap(), "v1\n");

    let load = Load::start_max(std::slice::from_ref(&target), CLIENTS, 300 * SEC);
    poll_until(EVENT, || (load.ok_so_far() >= 100).then_some(()))
        .expect("the load generator got no answers before the broken reload");

    // The files on disk break; the reload of them fails and the first worker serves on.
    hm.write_config(&format!("{}{BROKEN}", versioned_config(port, "v2")));
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected STATUS=Reload failed: {d:?}");
    wait_only_child(master, first, EVENT);

    // Then the serving worker dies.
    let failed_before = load.failed_so_far();
    let killed_at = Instant::now();
    kill(first, SIGKILL).unwrap_or_else(|e| panic!("SIGKILL {first}: {e}"));
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(first), EVENT);
    let replaced_in = killed_at.elapsed();
    let replacement = worker_pid_in(&d).unwrap();
    eprintln!(
        "worker {first} SIGKILLed: replacement {replacement} serving {replaced_in:.0?} later"
    );
    let status = notify_field(&d, "STATUS").unwrap_or_default().to_string();
    assert!(
        status.contains(&format!("last good configuration of generation {g1}"))
            && status.contains("the files on disk fail"),
        "STATUS= should say the replacement serves the last good configuration: {status:?}"
    );
    // Every client finishes the request it was in at the kill and one more: all of them served
    // by the replacement, from the queue the master's socket kept.
    let served_before = load.ok_so_far();
    load.wait_every_client_moved_on();
    assert!(
        load.ok_so_far() > served_before,
        "the replacement worker {replacement} served nothing"
    );
    assert_eq!(
        http_get(target.clone()).unwrap(),
        "v1\n",
        "the replacement should run the last good configuration, not the broken files on disk"
    );
    let proc = hm.cli("show proc");
    assert_proc_rows(&proc, &[replacement]);
    let notes = proc_notes(&proc);
    assert!(
        notes.iter().any(|l| l.contains(&replacement.to_string())
            && l.contains(&format!("last good configuration of generation {g1}"))
            && l.contains("the files on disk fail")),
        "show proc should say the worker serves the last good configuration:\n{proc}"
    );
    let failed_at_kill = load.failed_so_far() - failed_before;
    let report = load.stop();
    eprintln!(
        "load: {report}\nrefused: {}; failed around the kill: {failed_at_kill}; replacement \
         serving after {replaced_in:.0?}",
        count_kind(&report.by_kind, FailKind::Refused)
    );
    // Only requests the killed worker had accepted may fail: one per client at most.
    assert_only_cut_in_flight(&report);
    assert!(
        failed_at_kill <= CLIENTS,
        "more failures than requests in flight: {report}"
    );
    assert_eq!(
        tcp4_listen_inodes(port),
        listener,
        "the listening socket changed"
    );

    // The runtime dir holds the replacement's files and its copy only: the dead worker's copy, and
    // the failed reload's, are gone.
    let g = current_generation(&mut hm);
    let expected = expected_runtime_names(g);
    let names = poll_until(EVENT, || {
        let names = dir_names(&hm.runtime_dir);
        (names == expected).then_some(names)
    });
    assert!(
        names.is_some(),
        "runtime dir should hold exactly {expected:?}, holds {:?}",
        dir_names(&hm.runtime_dir)
    );

    // Fixed on disk and reloaded: the files on disk serve again, and the note is gone.
    hm.write_config(&versioned_config(port, "v3"));
    let fixed = reload_once(&mut hm, replacement, "reload of the fixed config");
    let ready = last_ready(&mut hm);
    assert_eq!(
        notify_field(&ready, "STATUS"),
        Some(format!("Serving: worker pid {fixed}, generation {}", g + 1).as_str()),
        "a successful reload clears the last-good status: {ready:?}"
    );
    let proc = hm.cli("show proc");
    assert!(
        proc_notes(&proc).is_empty(),
        "show proc after the fix:\n{proc}"
    );
    // Once the soft-stopped worker is gone, only the new one accepts: the kernel says who answers.
    wait_only_child(master, fixed, EVENT);
    assert_eq!(http_get(target.clone()).unwrap(), "v3\n");
    let expected = expected_runtime_names(g + 1);
    assert!(
        poll_until(EVENT, || (dir_names(&hm.runtime_dir) == expected)
            .then_some(()))
        .is_some(),
        "runtime dir should hold exactly {expected:?}, holds {:?}",
        dir_names(&hm.runtime_dir)
    );
    assert!(hm.stop().success());
    assert!(!hm.runtime_dir.exists(), "runtime dir left behind");
}

/// `-f <directory>` with `-C`: the copy holds the `.cfg` files haproxy reads, in its order, and
/// relative paths in them still resolve against the `-C` directory. Here the worker dies after an
/// edit on disk that was never reloaded.
#[test]
fn config_directory_crash_before_any_reload_serves_what_the_worker_read() {
    let dir = TestDir::new();
    let base = dir.path().to_path_buf();
    let port = free_port();
    let conf = base.join("conf.d");
    fs::create_dir(&conf).unwrap();
    let global =
        "global\n    maxconn 4000\n\ndefaults\n    mode http\n    timeout connect 5s\n    \
                  timeout client 10s\n    timeout server 10s\n";
    // The body comes from a file named relative to -C: resolved the same from a copy.
    let frontend = |body: &str| {
        format!(
            "frontend fe\n    bind 127.0.0.1:{port}\n    \
             http-request return status 200 content-type text/plain file {body}\n"
        )
    };
    fs::write(base.join("v1.txt"), "v1\n").unwrap();
    fs::write(base.join("v2.txt"), "v2\n").unwrap();
    fs::write(conf.join("10-global.cfg"), global).unwrap();
    fs::write(conf.join("20-frontend.cfg"), frontend("v1.txt")).unwrap();
    // What haproxy does not read, the copy must not hold either (each would break the config).
    for ignored in [
        "README",
        "30-old.cfg.disabled",
        ".40-hidden.cfg",
        "50-x.cfg.cfg",
    ] {
        fs::write(conf.join(ignored), BROKEN).unwrap();
    }
    fs::create_dir(conf.join("60-dir.cfg")).unwrap();
    let base_arg = base.to_str().unwrap().to_string();
    let mut hm = Hapmaster::start_in(dir, PathBuf::from("conf.d"), &["-C", &base_arg]);
    let first = hm.wait_serving(EVENT);
    let master = hm.pid();
    let g1 = current_generation(&mut hm);
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    assert_eq!(http_get(target.clone()).unwrap(), "v1\n");
    let copy = hm.runtime_dir.join(format!("config-{g1}"));
    let copied: Vec<String> = dir_names(&copy).into_iter().collect();
    assert_eq!(copy_dirs(&hm.runtime_dir), [format!("config-{g1}")]);
    assert_eq!(copied.len(), 2, "the two .cfg files only: {copied:?}");
    assert!(
        copied[0].ends_with("10-global.cfg") && copied[1].ends_with("20-frontend.cfg"),
        "in haproxy's order: {copied:?}"
    );

    // Edited on disk, broken, never reloaded; then the worker dies.
    fs::write(
        conf.join("20-frontend.cfg"),
        format!("{}{BROKEN}", frontend("v2.txt")),
    )
    .unwrap();
    let killed_at = Instant::now();
    kill(first, SIGKILL).unwrap();
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(first), EVENT);
    eprintln!(
        "replacement serving {:.0?} after SIGKILL",
        killed_at.elapsed()
    );
    let replacement = worker_pid_in(&d).unwrap();
    assert_eq!(
        http_get(target.clone()).unwrap(),
        "v1\n",
        "the replacement should run what the dead worker read"
    );
    // Nothing is known to fail yet (no reload ran): STATUS= is the plain one, show proc says
    // where the configuration came from.
    let status = notify_field(&d, "STATUS").unwrap_or_default().to_string();
    assert!(status.starts_with("Serving: worker pid"), "{status:?}");
    let proc = hm.cli("show proc");
    assert_proc_rows(&proc, &[replacement]);
    assert!(
        proc_notes(&proc)
            .iter()
            .any(|l| l.contains(&format!("last good configuration of generation {g1}"))),
        "show proc should name the configuration's generation:\n{proc}"
    );

    // A reload reads the files on disk: it fails, and the status says what serves.
    hm.signal(SIGUSR2);
    hm.wait_notify(is_reloading, EVENT);
    let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
    assert!(is_reload_failed(&d), "expected Reload failed: {d:?}");
    assert_eq!(worker_pid_in(&d), Some(replacement), "{d:?}");
    let status = notify_field(&d, "STATUS").unwrap_or_default().to_string();
    assert!(
        status.contains(&format!("last good configuration of generation {g1}")),
        "{status:?}"
    );
    assert!(
        proc_notes(&hm.cli("show proc"))
            .iter()
            .any(|l| l.contains("the files on disk fail")),
        "show proc after the failed reload"
    );

    // Fixed on disk: the reload serves the new files.
    fs::write(conf.join("20-frontend.cfg"), frontend("v2.txt")).unwrap();
    let fixed = reload_once(&mut hm, replacement, "reload of the fixed directory");
    assert!(proc_notes(&hm.cli("show proc")).is_empty());
    wait_only_child(master, fixed, EVENT);
    assert_eq!(http_get(target).unwrap(), "v2\n");
    let g = current_generation(&mut hm);
    assert!(
        poll_until(EVENT, || {
            (copy_dirs(&hm.runtime_dir) == [format!("config-{g}")]).then_some(())
        })
        .is_some(),
        "only the current worker's copy should remain: {:?}",
        dir_names(&hm.runtime_dir)
    );
    assert!(hm.stop().success());
}

/// With `default-path config`, relative paths resolve against the config file's own directory,
/// which a copy would change: replacements read the files on disk, and the log says so.
#[test]
fn default_path_config_makes_replacements_read_the_files_on_disk() {
    let dir = TestDir::new();
    let base = dir.path().to_path_buf();
    let port = free_port();
    fs::write(base.join("v1.txt"), "v1\n").unwrap();
    fs::write(base.join("v2.txt"), "v2\n").unwrap();
    let config = |body: &str| {
        format!(
            "global\n    maxconn 4000\n    default-path config\n\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    \
             timeout server 10s\n\n\
             frontend fe\n    bind 127.0.0.1:{port}\n    \
             http-request return status 200 content-type text/plain file {body}\n"
        )
    };
    let mut hm = Hapmaster::start_in(dir, config("v1.txt"), &[]);
    let first = hm.wait_serving(EVENT);
    let target = Target::parse(&format!("127.0.0.1:{port}"));
    assert_eq!(http_get(target.clone()).unwrap(), "v1\n");
    let wanted = "replacements read the files on disk because";
    let line = poll_until(EVENT, || {
        hm.stderr()
            .lines()
            .find(|l| l.contains(wanted))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no log line {wanted:?}:\n{}", hm.stderr()));
    assert!(
        line.contains("haproxy.cfg") && line.contains("default-path config"),
        "the line should name the file and the setting: {line:?}"
    );
    assert!(copy_dirs(&hm.runtime_dir).is_empty(), "no copy is kept");

    // Edited on disk, not reloaded; the worker dies: its replacement reads the files on disk.
    hm.write_config(&config("v2.txt"));
    kill(first, SIGKILL).unwrap();
    let d = hm.wait_notify(|d| is_serving(d) && worker_pid_in(d) != Some(first), EVENT);
    assert!(worker_pid_in(&d).is_some());
    assert_eq!(http_get(target).unwrap(), "v2\n");
    assert!(proc_notes(&hm.cli("show proc")).is_empty());
    assert!(hm.stop().success());
}
