//! End-to-end: `show metrics` on the master CLI, with the real haproxy: its values after the
//! start, a good reload, a failed reload and a worker crash.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
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

/// One HTTP/1.1 request on a new connection; the whole answer (the server closes).
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(EVENT)).unwrap();
    s.set_write_timeout(Some(EVENT)).unwrap();
    s.write_all(request).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("reading the answer to {request:?}: {e}"));
    answer
}

/// `promtool check metrics` on `text`, when Debian's `prometheus` package is installed.
fn promtool_check(text: &str, what: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!(
            "SKIPPED promtool check of {what}: promtool not installed (apt-get install prometheus)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {what}: {}\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_over_http_answer_only_get_metrics() {
    let port = free_port();
    let mport = free_port();
    let addr = format!("127.0.0.1:{mport}");
    let mut hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--metrics-bind", &addr],
    );
    let answer = http(&addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("no end of head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nConnection: close"), "{head}");
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", body.len())),
        "{head}"
    );
    // The same families and values as the CLI's, the newline that ends a CLI answer apart.
    let cli = hm.cli("show metrics");
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.is_empty() && !l.starts_with("hapmaster_start_time_seconds"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(strip(body), strip(&cli));
    assert!(
        body.contains("hapmaster_workers{role=\"current\"} 1\n"),
        "{body}"
    );
    promtool_check(body, "GET /metrics");
    promtool_check(&cli, "show metrics");

    for (request, status) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "404 Not Found"),
        (b"GET /metricsx HTTP/1.0\r\n\r\n", "404 Not Found"),
        (
            b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "405 Method Not Allowed",
        ),
        (b"GET /metrics SPDY/3\r\n\r\n", "400 Bad Request"),
    ] {
        let answer = http(&addr, request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{request:?}: {answer}"
        );
    }
    assert!(hm.stop().success());
}

/// Clients that send nothing, or a 1 MiB head, or never read, delay neither the master CLI nor
/// another scraper; the silent ones are dropped at --cli-timeout, the huge head is refused.
#[test]
fn hostile_http_clients_do_not_stall_the_master() {
    let port = free_port();
    let mport = free_port();
    let addr = format!("127.0.0.1:{mport}");
    let hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--metrics-bind", &addr, "--cli-timeout", "2s"],
    );
    // More silent clients than there are slots.
    let silent: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // A request sent, its answer never read.
    let mut unread = TcpStream::connect(&addr).unwrap();
    unread.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    // A 1 MiB head: refused once 8 KiB are in; the write may fail when the master closes.
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.set_write_timeout(Some(EVENT)).unwrap();
    huge.set_read_timeout(Some(EVENT)).unwrap();
    let mut head = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    head.resize(1 << 20, b'a');
    let _ = huge.write_all(&head);

    let proc = hm.cli("show proc");
    assert!(proc.contains("# workers"), "{proc}");
    assert!(hm
        .cli("show metrics")
        .contains("hapmaster_held_listeners 1\n"));

    // Each silent client is dropped (EOF) once its deadline passed, including those that waited
    // in the backlog for a slot.
    for (i, mut s) in silent.into_iter().enumerate() {
        s.set_read_timeout(Some(EVENT)).unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("silent client {i}: {other:?}"),
        }
    }
    // Slots free again: a scraper is served.
    let answer = http(&addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    drop(unread);
    drop(huge);
}

/// A --metrics-bind address that cannot be bound stops the start, saying which and why.
#[test]
fn metrics_bind_error_is_fatal() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TestDir::new();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, http_config(&[format!("127.0.0.1:{}", free_port())])).unwrap();
    let mut child = ChildGuard(
        hapmaster_command(&dir.join("rt"), &["--metrics-bind", &addr], &cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = poll_until(EVENT, || child.0.try_wait().unwrap()).expect("hapmaster still runs");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    let want = format!("--metrics-bind: cannot listen on {addr}: ");
    assert!(stderr.contains(&want), "no {want:?} in:\n{stderr}");
}

/// An upgrade in place closes the endpoint at the exec, the new image binds it again and goes
/// on counting.
#[test]
fn metrics_endpoint_survives_an_upgrade_in_place() {
    let port = free_port();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--metrics-bind", &addr],
    );
    let answer = hm.cli("reload");
    assert!(answer.starts_with("Success=1"), "{answer}");
    hm.signal(SIGURG);
    hm.wait_notify(|d| d.contains("upgraded in place"), EVENT);
    let answer = http(&addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The counters cross the exec (the upgrade's snapshot carries them).
    for line in [
        "hapmaster_reloads_total{result=\"success\"} 1\n",
        "hapmaster_last_reload_success 1\n",
    ] {
        assert!(answer.contains(line), "no {line:?} in {answer}");
    }
    assert!(hm.stop().success());
}

/// One request, `None` while nothing listens at `addr` (a server still starting).
fn try_http(addr: &str, request: &[u8]) -> Option<String> {
    TcpStream::connect(addr).ok()?;
    Some(http(addr, request))
}

/// The value of the first sample of an instant query to Prometheus' HTTP API (`"value":[ts,"v"]`),
/// `None` while the query has no result (no scrape yet) or the server does not answer yet.
fn prometheus_value(prometheus: &str, query: &str) -> Option<String> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let request = format!(
        "GET /api/v1/query?query={encoded} HTTP/1.1\r\nHost: {prometheus}\r\nConnection: close\r\n\r\n"
    );
    let answer = try_http(prometheus, request.as_bytes())?;
    let value = answer.split("\"value\":[").nth(1)?;
    let value = value.split_once(',')?.1;
    Some(value.split('"').nth(1)?.to_string())
}

/// A real Prometheus server (Debian's `prometheus`) scrapes `--metrics-bind` on loopback and sees
/// a reload counted.
#[test]
fn prometheus_scrapes_the_endpoint_and_sees_a_reload() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: prometheus not installed (apt-get install prometheus)");
        return;
    }
    let port = free_port();
    let maddr = format!("127.0.0.1:{}", free_port());
    let mut hm = Hapmaster::start_ready(
        http_config(&[format!("127.0.0.1:{port}")]),
        &["--metrics-bind", &maddr],
    );
    let paddr = format!("127.0.0.1:{}", free_port());
    let config = hm.dir().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: hapmaster\n    static_configs:\n      \
             - targets: ['{maddr}']\n"
        ),
    )
    .unwrap();
    let mut prometheus = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                hm.dir().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={paddr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );
    let scraped = |query: &str, want: &str| {
        let mut last = None;
        poll_until(EVENT, || {
            last = prometheus_value(&paddr, query);
            (last.as_deref() == Some(want)).then_some(())
        })
        .unwrap_or_else(|| panic!("prometheus at {paddr}: {query} = {last:?}, want {want}"));
    };
    scraped("up{job=\"hapmaster\"}", "1");
    scraped("hapmaster_workers{role=\"current\"}", "1");
    scraped("hapmaster_reloads_total{result=\"success\"}", "0");

    hm.signal(libc::SIGUSR2);
    hm.settle_reloads();
    scraped("hapmaster_reloads_total{result=\"success\"}", "1");
    scraped("hapmaster_last_reload_success", "1");
    assert!(prometheus.stop(EVENT).is_some_and(|s| s.success()));
    assert!(hm.stop().success());
}
