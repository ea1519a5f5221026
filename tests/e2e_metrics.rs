//! End-to-end: `show metrics` on the master CLI, with the real haproxy: its values after the
//! start, a good reload, a failed reload and a worker crash.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// `show metrics` as sample → value; every sample line must follow a `# TYPE` of its family.
fn metrics(hm: &Hapmaster) -> BTreeMap<String, String> {
    let text = hm.cli("show metrics");
    let mut typed = None;
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed = rest.split(' ').next().map(str::to_string);
            continue;
        }
        // The master CLI ends each answer with an empty line.
        if line.starts_with("# HELP ") || line.is_empty() {
            continue;
        }
        let (sample, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample line {line:?} in:\n{text}"));
        let family = sample.split('{').next().unwrap();
        assert_eq!(
            typed.as_deref(),
            Some(family),
            "{line:?} outside its family:\n{text}"
        );
        assert!(
            samples
                .insert(sample.to_string(), value.to_string())
                .is_none(),
            "{sample} twice:\n{text}"
        );
    }
    samples
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn number(m: &BTreeMap<String, String>, sample: &str) -> f64 {
    m.get(sample)
        .unwrap_or_else(|| panic!("no {sample} in {m:#?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{sample}: {e}: {m:#?}"))
}

/// Asserts the samples that are integers, exactly.
fn assert_counts(m: &BTreeMap<String, String>, want: &[(&str, &str)], when: &str) {
    for (sample, value) in want {
        assert_eq!(
            m.get(*sample).map(String::as_str),
            Some(*value),
            "{when}: {sample} in {m:#?}"
        );
    }
}

/// Polls `show metrics` until no worker is starting or draining (the state the counts below
/// are asserted in), with the event deadline.
fn settled(hm: &Hapmaster, when: &str) -> BTreeMap<String, String> {
    let mut last = BTreeMap::new();
    poll_until(EVENT, || {
        last = metrics(hm);
        let quiet = ["starting", "draining"].iter().all(|r| {
            last.get(&format!("hapmaster_workers{{role=\"{r}\"}}"))
                .map(String::as_str)
                == Some("0")
        });
        quiet.then_some(())
    })
    .unwrap_or_else(|| panic!("{when}: workers still starting or draining: {last:#?}"));
    last
}

/// The current worker's pid, from `show proc`'s `# workers` section.
fn current_worker(hm: &Hapmaster) -> u32 {
    let proc = hm.cli("show proc");
    let workers = proc
        .split("# workers")
        .nth(1)
        .and_then(|s| s.split("# old workers").next())
        .unwrap_or_else(|| panic!("no # workers in:\n{proc}"));
    let pids: Vec<u32> = workers
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 1, "one current worker in:\n{proc}");
    pids[0]
}

#[test]
fn show_metrics_counts_reloads_and_crashes() {
    let before = now_secs();
    let port = free_port();
    let good = http_config(&[format!("127.0.0.1:{port}")]);
    let mut hm = Hapmaster::start_ready(good.as_str(), &[]);

    let m = settled(&hm, "after start");
    assert_counts(
        &m,
        &[
            ("hapmaster_reloads_total{result=\"success\"}", "0"),
            ("hapmaster_reloads_total{result=\"failure\"}", "0"),
            ("hapmaster_worker_restarts_total", "0"),
            ("hapmaster_workers{role=\"current\"}", "1"),
            ("hapmaster_held_listeners", "1"),
        ],
        "after start",
    );
    for absent in [
        "hapmaster_last_reload_success",
        "hapmaster_last_reload_duration_seconds",
        "hapmaster_last_reload_timestamp_seconds",
    ] {
        assert!(
            !m.contains_key(absent),
            "{absent} before any reload: {m:#?}"
        );
    }
    let start = number(&m, "hapmaster_start_time_seconds");
    assert!(
        (before - 1.0..=now_secs()).contains(&start),
        "start time {start}, test started at {before}"
    );
    let version = hm.cli("show version").trim().to_string();
    assert!(!version.is_empty());
    let info = format!(
        "hapmaster_info{{version=\"{}\",haproxy_version=\"{version}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_counts(&m, &[(info.as_str(), "1")], "after start");

    // A good reload, answered once it is done.
    let asked = now_secs();
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    let answered = now_secs();
    let m = settled(&hm, "after a good reload");
    assert_counts(
        &m,
        &[
            ("hapmaster_reloads_total{result=\"success\"}", "1"),
            ("hapmaster_reloads_total{result=\"failure\"}", "0"),
            ("hapmaster_last_reload_success", "1"),
            ("hapmaster_worker_restarts_total", "0"),
            ("hapmaster_workers{role=\"current\"}", "1"),
            ("hapmaster_held_listeners", "1"),
        ],
        "after a good reload",
    );
    let took = number(&m, "hapmaster_last_reload_duration_seconds");
    assert!(
        took > 0.0 && took <= answered - asked + 0.01,
        "reload took {took} s, the CLI waited {} s",
        answered - asked
    );
    let ended = number(&m, "hapmaster_last_reload_timestamp_seconds");
    assert!(
        (asked - 0.01..=answered + 0.01).contains(&ended),
        "reload ended at {ended}, asked at {asked}, answered at {answered}"
    );
    assert_eq!(number(&m, "hapmaster_start_time_seconds"), start);

    // A failed reload: the worker stays, the failure is counted.
    hm.write_config(&format!("{good}    this_is_not_a_keyword 42\n"));
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=0"), "{answer}");
    let m = settled(&hm, "after a failed reload");
    assert_counts(
        &m,
        &[
            ("hapmaster_reloads_total{result=\"success\"}", "1"),
            ("hapmaster_reloads_total{result=\"failure\"}", "1"),
            ("hapmaster_last_reload_success", "0"),
            ("hapmaster_worker_restarts_total", "0"),
            ("hapmaster_workers{role=\"current\"}", "1"),
            ("hapmaster_held_listeners", "1"),
        ],
        "after a failed reload",
    );
    assert!(number(&m, "hapmaster_last_reload_timestamp_seconds") >= ended);

    // A crash: the replacement is counted, not as a reload.
    hm.write_config(&good);
    let old = current_worker(&hm);
    kill(old, SIGKILL).unwrap();
    let mut last = BTreeMap::new();
    poll_until(EVENT, || {
        last = settled(&hm, "after a crash");
        (last
            .get("hapmaster_worker_restarts_total")
            .map(String::as_str)
            == Some("1")
            && last
                .get("hapmaster_workers{role=\"current\"}")
                .map(String::as_str)
                == Some("1"))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("no replacement counted after SIGKILL of {old}: {last:#?}"));
    assert_counts(
        &last,
        &[
            ("hapmaster_reloads_total{result=\"success\"}", "1"),
            ("hapmaster_reloads_total{result=\"failure\"}", "1"),
            ("hapmaster_last_reload_success", "0"),
            ("hapmaster_held_listeners", "1"),
        ],
        "after a crash",
    );
    assert_ne!(current_worker(&hm), old);
    assert!(hm.stop().success());
}
