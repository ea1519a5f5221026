//! The six scenarios of issue 6. Each returns its markdown section, its plot, and the figures
//! the targets table is built from.

use std::fmt::Write as _;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hapmaster::handoff::fetch::fetch_sockets;
use hapmaster::handoff::listeners::HeldSet;
use hapmaster::handoff::serve::serve_getsocks;

use crate::load::{FailKind, Load, LoadResult, LoadSpec};
use crate::methods::{floor_once, wait_answer, Bare, Env, Method, Running, Site};
use crate::procfs;
use crate::svg::{self, Panel};

/// Durations and counts of one run (full or `--quick`).
pub struct Plan {
    pub quick: bool,
    /// The methods compared (all three unless `--method` narrows them).
    pub methods: Vec<Method>,
    pub storm_secs: f64,
    pub storm_clients: Vec<usize>,
    pub ab_secs: u64,
    pub latency_ports: Vec<usize>,
    pub latency_reloads: usize,
    pub handoff_sockets: Vec<usize>,
    pub handoff_iters: usize,
    pub crash_secs: f64,
    pub footprint_reloads: usize,
    pub idle_secs: f64,
    pub overhead_secs: f64,
    pub overhead_rounds: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            methods: Method::ALL.to_vec(),
            storm_secs: 60.0,
            storm_clients: vec![20, 200],
            ab_secs: 10,
            latency_ports: vec![1, 100, 1000, 9900, 10000],
            latency_reloads: 50,
            handoff_sockets: vec![1000, 10000],
            handoff_iters: 10,
            crash_secs: 10.0,
            footprint_reloads: 1000,
            idle_secs: 10.0,
            overhead_secs: 10.0,
            overhead_rounds: 3,
        }
    }
    /// Those of `methods` that this run compares.
    pub fn only(&self, methods: &[Method]) -> Vec<Method> {
        methods
            .iter()
            .copied()
            .filter(|m| self.methods.contains(m))
            .collect()
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            methods: Method::ALL.to_vec(),
            storm_secs: 1.0,
            storm_clients: vec![20],
            ab_secs: 1,
            latency_ports: vec![1, 100],
            latency_reloads: 2,
            handoff_sockets: vec![100, 1000],
            handoff_iters: 2,
            crash_secs: 1.5,
            footprint_reloads: 10,
            idle_secs: 1.0,
            overhead_secs: 1.0,
            overhead_rounds: 1,
        }
    }
}

/// One target line: what, the measured figure, met or not.
pub struct Target {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

pub struct Section {
    /// Errors of single runs: reported in the markdown, and make the benchmark exit non-zero.
    pub errors: Vec<String>,
    pub markdown: String,
    pub svg: Option<(String, String)>,
    pub targets: Vec<Target>,
}

const REQ_TIMEOUT: Duration = Duration::from_secs(5);

/// Prefix of a reload the method itself reported as failed: a result, not a benchmark error.
const RELOAD_FAILED: &str = "reload failed";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)]
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn load_header(md: &mut String) {
    let _ = writeln!(md, "_load average at start: {}_\n", procfs::loadavg());
}

fn load_footer(md: &mut String) {
    let _ = writeln!(md, "\n_load average at end: {}_\n", procfs::loadavg());
}

fn kinds_cells(r: &LoadResult) -> String {
    FailKind::ALL
        .iter()
        .map(|k| r.count(*k).to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn kinds_header() -> String {
    FailKind::ALL
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(" | ")
}

// ---------------------------------------------------------------------------------------------
// 1. Reload storm
// ---------------------------------------------------------------------------------------------

struct StormRun {
    result: LoadResult,
    reloads_ms: Vec<u64>,
    sent: usize,
    executed: usize,
    errors: Vec<String>,
}

/// One method under `spec` for `dur`, reloading every 100 ms from 0.2 s until 0.3 s before the end.
fn storm_once(
    env: &Env,
    method: Method,
    spec: &LoadSpec,
    dur: Duration,
) -> Result<StormRun, String> {
    let site = env.site(1, 4000)?;
    let mut running = Running::start(method, env, &site, secs(20.0))?;
    let spec = LoadSpec {
        addr: site.addr,
        duration: dur,
        ..spec.clone()
    };
    let load = Load::start(&spec)?;
    let mut reloads_ms = Vec::new();
    let mut errors = Vec::new();
    let end = load.started + dur.saturating_sub(Duration::from_millis(300));
    let mut next = load.started + Duration::from_millis(200);
    let mut failed = 0;
    while next < end {
        sleep_until(next);
        reloads_ms.push(load.ms_now());
        if let Err(e) = running.reload() {
            failed += 1;
            if errors.len() < 3 {
                errors.push(e);
            }
        }
        next += Duration::from_millis(100);
        next = next.max(Instant::now());
    }
    sleep_until(load.started + dur);
    let result = load.finish()?;
    if running.exited() {
        errors.push(format!(
            "{} exited during the storm; log: {}",
            method.name(),
            running.log_path().display()
        ));
    }
    let sent = reloads_ms.len();
    let executed = match method {
        Method::Naive => sent - failed,
        _ => running.ready_reloads(),
    };
    running.stop()?;
    Ok(StormRun {
        result,
        reloads_ms,
        sent,
        executed,
        errors,
    })
}

pub fn reload_storm(env: &Env, plan: &Plan) -> Result<Section, String> {
    let mut md = String::from("### 1. Reload storm: a reload every 100 ms under load\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "{:.0} s per run; new connection per request (HTTP/1.0) or keep-alive (HTTP/1.1); 5 s request timeout. \
         `retryable`: of the failures, those on a reused keep-alive connection before any response byte \
         (the server closed the idle connection as the request went out; HTTP clients retry these). \
         `executed`: naive commands that exited 0, or `READY=1` datagrams after a reload. \
         `workers`: distinct haproxy pids that answered.\n",
        plan.storm_secs
    );
    let _ = writeln!(
        md,
        "| method | clients | mode | ok | req/s | failed | {} | retryable | reloads sent | executed | workers |",
        kinds_header()
    );
    md.push_str(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut panels = Vec::new();
    let mut notes = Vec::new();
    let mut hm_worst: Option<(usize, usize, String)> = None;
    let mut errors = Vec::new();
    for &clients in &plan.storm_clients {
        for keepalive in [false, true] {
            let mode = if keepalive { "keep-alive" } else { "new conn" };
            for method in plan.methods.clone() {
                let spec = LoadSpec {
                    addr: "127.0.0.1:1".parse().map_err(|e| format!("address: {e}"))?,
                    clients,
                    keepalive,
                    duration: secs(plan.storm_secs),
                    max_requests: 50_000_000,
                    timeout: REQ_TIMEOUT,
                };
                let run = match storm_once(env, method, &spec, secs(plan.storm_secs)) {
                    Ok(run) => run,
                    Err(e) => {
                        let _ = writeln!(
                            md,
                            "| {} | {clients} | {mode} | error: {} |||||||||||||",
                            method.name(),
                            e.replace('|', "/")
                        );
                        errors.push(format!("storm {} {clients} {mode}: {e}", method.name()));
                        continue;
                    }
                };
                let r = &run.result;
                let _ = writeln!(
                    md,
                    "| {} | {clients} | {mode} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    method.name(),
                    r.ok,
                    r.rate(),
                    r.failed(),
                    kinds_cells(r),
                    r.retryable(),
                    run.sent,
                    run.executed,
                    r.pid_first_ms.len()
                );
                for e in &run.errors {
                    notes.push(format!("{} {clients} {mode}: {e}", method.name()));
                }
                for e in r.sample_errors(3) {
                    notes.push(format!("{} {clients} {mode}: {e}", method.name()));
                }
                if method == Method::Hapmaster {
                    let label = format!("{clients} clients, {mode}");
                    let worse = hm_worst.as_ref().map_or(true, |(f, _, _)| r.failed() > *f);
                    if worse {
                        hm_worst = Some((r.failed(), r.failed() - r.retryable(), label));
                    }
                }
                panels.push(Panel {
                    title: format!("{} — {clients} clients, {mode}", method.name()),
                    ok: r.buckets.clone(),
                    fails: r.fail_buckets(),
                    reloads_ms: run.reloads_ms.clone(),
                    events: Vec::new(),
                });
            }
        }
    }
    if !notes.is_empty() {
        md.push_str("\nFirst failures seen (kind, time since the load started, error):\n\n");
        for n in &notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    load_footer(&mut md);
    let mut targets = Vec::new();
    if let Some((f, nonretry, label)) = hm_worst {
        targets.push(Target {
            target: "hapmaster: 0 failures in every storm".into(),
            measured: format!("worst run ({label}): {f} failed, of which {nonretry} not retryable"),
            met: f == 0,
        });
    }
    let svg = svg::timeseries("Reload storm: requests per 100 ms", &panels);
    Ok(Section {
        errors,
        markdown: md,
        svg: Some(("storm.svg".into(), svg)),
        targets,
    })
}

/// `ab -r` during a reload storm, as operators run it; reports its own counts.
pub fn ab_crosscheck(env: &Env, plan: &Plan) -> Result<Section, String> {
    let mut md =
        String::from("### 1b. Cross-check with `ab -r -c 20` during the same reload storm\n\n");
    let ab_ok = Command::new("ab")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ab_ok {
        md.push_str("`ab` (apache2-utils) is not installed: cross-check skipped.\n\n");
        return Ok(Section {
            errors: Vec::new(),
            markdown: md,
            svg: None,
            targets: Vec::new(),
        });
    }
    load_header(&mut md);
    let _ = writeln!(
        md,
        "`ab -r -q -c 20 -s 5 -t {} -n 100000000 http://ADDR/` (new connection per request), reload every 100 ms.\n",
        plan.ab_secs
    );
    md.push_str("| method | complete requests | failed requests (ab) | non-2xx | reloads sent |\n|---|---:|---|---:|---:|\n");
    for method in plan.methods.clone() {
        let site = env.site(1, 4000)?;
        let mut running = Running::start(method, env, &site, secs(20.0))?;
        let out_path = site.dir.join("ab.out");
        let out = std::fs::File::create(&out_path)
            .map_err(|e| format!("creating {}: {e}", out_path.display()))?;
        let start = Instant::now();
        let mut ab = Command::new("ab")
            .args(["-r", "-q", "-c", "20", "-s", "5", "-t"])
            .arg(plan.ab_secs.to_string())
            .args(["-n", "100000000"])
            .arg(format!("http://{}/", site.addr))
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| format!("dup: {e}"))?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("spawning ab: {e}"))?;
        let end = start + Duration::from_secs(plan.ab_secs);
        let mut next = start + Duration::from_millis(200);
        let mut sent = 0;
        while next + Duration::from_millis(300) < end {
            sleep_until(next);
            running.reload()?;
            sent += 1;
            next += Duration::from_millis(100);
            next = next.max(Instant::now());
        }
        let deadline = end + Duration::from_secs(20);
        loop {
            match ab.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = ab.kill();
                    let _ = ab.wait();
                    return Err("ab did not finish in time".into());
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for ab: {e}")),
            }
        }
        running.stop()?;
        let text = std::fs::read_to_string(&out_path)
            .map_err(|e| format!("reading {}: {e}", out_path.display()))?;
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        let mut failed = field("Failed requests:").unwrap_or_else(|| "?".into());
        if let Some(i) = text.lines().position(|l| l.starts_with("Failed requests:")) {
            if let Some(next) = text.lines().nth(i + 1) {
                if next.trim_start().starts_with('(') {
                    failed = format!("{failed} {}", next.trim());
                }
            }
        }
        // ab -r keeps going on receive errors only: a failed connect() ends the run early,
        // without the summary. Report what it said then.
        let aborted = field("Complete requests:").is_none().then(|| {
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            format!("ab aborted: `{}`", last.trim().replace('|', "/"))
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {sent} |",
            method.name(),
            aborted
                .or_else(|| field("Complete requests:"))
                .unwrap_or_else(|| "?".into()),
            failed,
            field("Non-2xx responses:").unwrap_or_else(|| "0".into()),
        );
    }
    load_footer(&mut md);
    Ok(Section {
        errors: Vec::new(),
        markdown: md,
        svg: None,
        targets: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Reload latency
// ---------------------------------------------------------------------------------------------

struct Lat {
    ready: Vec<f64>,
    newpid: Vec<f64>,
}

fn stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    format!(
        "{:.1} / {:.1} / {:.1}",
        percentile(v, 50.0),
        percentile(v, 95.0),
        percentile(v, 100.0)
    )
}

fn measure_reloads(
    env: &Env,
    site: &Site,
    method: Method,
    n: usize,
    timeout: Duration,
) -> Result<Lat, String> {
    let mut running = Running::start(method, env, site, timeout)?;
    let mut lat = Lat {
        ready: Vec::new(),
        newpid: Vec::new(),
    };
    for i in 0..n {
        let old = running.answering_pid()?;
        let sent = running.reload()?;
        let deadline = sent.at + timeout;
        let mut newpid = None;
        let mut ready = None;
        let wants_ready = method != Method::Naive;
        loop {
            if newpid.is_none() {
                if let Ok(r) = crate::load::get_once(site.addr, Duration::from_secs(1)) {
                    if r.pid.is_some_and(|p| p != old) {
                        newpid = Some(Instant::now() - sent.at);
                    }
                }
            }
            if wants_ready && ready.is_none() {
                if let Some((t, d)) = running
                    .notify
                    .as_ref()
                    .and_then(|n| n.ready_since(sent.notify_index))
                {
                    if let Some(status) = d
                        .lines()
                        .find_map(|l| l.strip_prefix("STATUS=Reload failed: "))
                    {
                        // A measured outcome, not an error of the benchmark.
                        return Err(format!("{RELOAD_FAILED} (reload {i}): {status}"));
                    }
                    ready = Some(t - sent.at);
                }
            }
            if newpid.is_some() && (ready.is_some() || !wants_ready) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} reload {i} on {} ports: no new worker within {timeout:?} (log {})",
                    method.name(),
                    site.ports,
                    running.log_path().display()
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
        if let Some(d) = ready {
            lat.ready.push(ms(d));
        }
        if let Some(d) = newpid {
            lat.newpid.push(ms(d));
        }
        // Let the old worker finish before the next reload (not measured).
        let gone = Instant::now() + Duration::from_secs(20);
        while procfs::alive(old) && Instant::now() < gone {
            thread::sleep(Duration::from_millis(2));
        }
    }
    running.stop()?;
    Ok(lat)
}

pub fn reload_latency(env: &Env, plan: &Plan, nofile: u64) -> Result<Section, String> {
    let mut md = String::from("### 2. Reload latency\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "{} reloads per method and config, one after the other (the next starts when the old worker has exited), no load. \
         `READY`: signal → `READY=1` on the NOTIFY_SOCKET (haproxy -Ws and hapmaster). \
         `new pid answers`: signal (naive: start of `haproxy -D -p PID -sf OLD`) → first HTTP response from a process other than the old one \
         (the config answers with `X-Pid: %pid`; a 1 ms probe loop). \
         Floor: bare `haproxy -db` spawn → its first HTTP response, same config, {} starts. \
         Ratio: the method's p50 (READY, or new-pid for naive) over the floor's p50. Figures in ms, p50 / p95 / max.\n",
        plan.latency_reloads, plan.latency_reloads
    );
    md.push_str("| ports | method | READY p50 / p95 / max | new pid answers p50 / p95 / max | floor p50 / p95 / max | ratio (p50) |\n|---:|---|---|---|---|---:|\n");
    let mut groups = Vec::new();
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for &ports in &plan.latency_ports {
        let maxconn = 1000;
        // Per process: haproxy needs 2 fds per connection plus one per listener (it sets its
        // own soft limit to that), hapmaster one per listener plus a few.
        let need = (2 * maxconn + ports + 500) as u64;
        if need > nofile {
            notes.push(format!(
                "{ports} ports: skipped, RLIMIT_NOFILE can only be raised to {nofile} here \
                 (hard limit, no CAP_SYS_RESOURCE) and haproxy needs about {need}"
            ));
            continue;
        }
        let site = env.site(ports, maxconn)?;
        let timeout = secs(30.0 + ports as f64 / 100.0);
        let mut floor = Vec::new();
        for _ in 0..plan.latency_reloads {
            match floor_once(env, &site, timeout) {
                Ok(d) => floor.push(ms(d)),
                Err(e) => {
                    errors.push(format!("latency floor, {ports} ports: {e}"));
                    break;
                }
            }
        }
        let floor_p50 = median(&floor);
        let mut row = vec![floor_p50];
        let mut p50s = Vec::new();
        for method in plan.methods.clone() {
            let lat = match measure_reloads(env, &site, method, plan.latency_reloads, timeout) {
                Ok(lat) => lat,
                Err(e) => {
                    let _ = writeln!(
                        md,
                        "| {ports} | {} | **{}** | | | |",
                        method.name(),
                        e.replace('|', "/")
                    );
                    if e.starts_with(RELOAD_FAILED) {
                        if method == Method::Hapmaster {
                            targets.push(Target {
                                target: format!("reload latency, {ports} ports"),
                                measured: format!("no figure: {e}"),
                                met: false,
                            });
                        }
                    } else {
                        errors.push(format!("latency {} {ports} ports: {e}", method.name()));
                    }
                    continue;
                }
            };
            let primary = if method == Method::Naive {
                &lat.newpid
            } else {
                &lat.ready
            };
            let p50 = median(primary);
            p50s.push((method, p50, median(&lat.newpid)));
            row.push(p50);
            let _ = writeln!(
                md,
                "| {ports} | {} | {} | {} | {} | {:.2} |",
                method.name(),
                stats(&lat.ready),
                stats(&lat.newpid),
                stats(&floor),
                p50 / floor_p50
            );
        }
        let find = |m: Method| p50s.iter().find(|x| x.0 == m).map(|x| (x.1, x.2));
        if let (Some((hm, hm_pid)), Some((hx, hx_pid))) =
            (find(Method::Hapmaster), find(Method::HaproxyMaster))
        {
            targets.push(Target {
                target: format!("reload latency ≤ 1.15 × floor, {ports} ports"),
                measured: format!(
                    "hapmaster p50 {hm:.1} ms, floor p50 {floor_p50:.1} ms: {:.2} ×",
                    hm / floor_p50
                ),
                met: hm <= 1.15 * floor_p50,
            });
            targets.push(Target {
                target: format!("reload latency below haproxy-master's, {ports} ports"),
                measured: format!(
                    "READY p50: hapmaster {hm:.1} ms, haproxy-master {hx:.1} ms; \
                     new pid answers p50: {hm_pid:.1} vs {hx_pid:.1} ms"
                ),
                met: hm < hx,
            });
        }
        groups.push((format!("{ports} ports"), row));
    }
    for n in &notes {
        let _ = writeln!(md, "\n{n}");
    }
    load_footer(&mut md);
    let svg = svg::bars(
        "Reload latency, p50 (ms): floor = bare haproxy start to first response",
        "ms",
        &[
            "floor",
            "naive (new pid answers)",
            "haproxy-master (READY)",
            "hapmaster (READY)",
        ],
        &groups,
    );
    Ok(Section {
        errors,
        markdown: md,
        svg: Some(("latency.svg".into(), svg)),
        targets,
    })
}

// ---------------------------------------------------------------------------------------------
// 3. Handoff cost
// ---------------------------------------------------------------------------------------------

fn accept_within(
    l: &UnixListener,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream, String> {
    l.set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("blocking: {e}"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!("no haproxy -x connected within {timeout:?}"));
                }
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

pub fn handoff_cost(env: &Env, plan: &Plan, nofile: u64) -> Result<Section, String> {
    let mut md =
        String::from("### 3. Handoff cost: `_getsocks` fetch and serve in hapmaster's code\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "Measured in-process with hapmaster's own library functions (hapmaster logs no timings, even at `-V`), \
         against the real haproxy, {} rounds each: **fetch** = `fetch_sockets` from a haproxy \
         (`stats socket ... expose-fd listeners`) holding N listeners, as hapmaster does from each new worker; \
         **held set** = `HeldSet::from_received` (fstat/getsockname of each, dedup); **serve** = `serve_getsocks` \
         to a real `haproxy -x` starting up on the same config, as hapmaster does to each new worker \
         (includes waiting for haproxy's acks). Wall ms (p50 / max), and CPU ms of the master thread (p50). \
         A reload costs the master one serve plus one fetch and held set.\n",
        plan.handoff_iters
    );
    md.push_str("| sockets | fetch wall | fetch CPU | held set wall | serve wall | serve CPU | total wall p50 |\n|---:|---|---:|---|---|---:|---:|\n");
    let mut groups = Vec::new();
    let mut targets = Vec::new();
    for &n in &plan.handoff_sockets {
        let need = (2 * 1000 + n + 500) as u64;
        if need > nofile {
            let _ = writeln!(
                md,
                "| {n} | skipped: RLIMIT_NOFILE {nofile} < ~{need} | | | | | |"
            );
            continue;
        }
        let site = env.site(n, 1000)?;
        let stats_path = site.dir.join("s.sock");
        let cfg = site.cfg_with_global(
            "stats.cfg",
            &format!(
                "stats socket {} level admin expose-fd listeners",
                stats_path.display()
            ),
        )?;
        let timeout = secs(30.0 + n as f64 / 100.0);
        let bare = Bare::start(env, &cfg, &[], &site)?;
        let pid = bare.pid();
        wait_answer(site.addr, Instant::now() + timeout, |p| p == Some(pid))
            .ok_or_else(|| format!("haproxy with {n} ports did not answer"))?;
        let (mut fetch_w, mut fetch_c, mut build_w, mut serve_w, mut serve_c, mut total) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for i in 0..plan.handoff_iters {
            let c0 = procfs::thread_cpu_us();
            let t0 = Instant::now();
            let received = fetch_sockets(&stats_path, timeout)
                .map_err(|e| format!("fetch_sockets from {}: {e}", stats_path.display()))?;
            let t1 = Instant::now();
            let c1 = procfs::thread_cpu_us();
            let got = received.len();
            let set = HeldSet::from_received(received, |_| false)
                .map_err(|e| format!("HeldSet::from_received: {e}"))?;
            let t2 = Instant::now();
            if got < n {
                return Err(format!("fetched {got} sockets, expected at least {n}"));
            }
            let xsock = site.dir.join(format!("x{i}.sock"));
            let listener = UnixListener::bind(&xsock)
                .map_err(|e| format!("binding {}: {e}", xsock.display()))?;
            let xs = xsock.display().to_string();
            let newer = Bare::start(env, &site.cfg, &["-x", &xs], &site)?;
            let stream = accept_within(&listener, timeout)?;
            let list = set.as_serve_list();
            let c2 = procfs::thread_cpu_us();
            let t3 = Instant::now();
            let outcome = serve_getsocks(&stream, &list, timeout)
                .map_err(|e| format!("serve_getsocks to haproxy -x: {e}"))?;
            let t4 = Instant::now();
            let c3 = procfs::thread_cpu_us();
            if outcome.sent != list.len() {
                return Err(format!("served {} of {}", outcome.sent, list.len()));
            }
            let npid = newer.pid();
            wait_answer(site.addr, Instant::now() + timeout, |_| true);
            drop(newer);
            let gone = Instant::now() + Duration::from_secs(10);
            while procfs::alive(npid) && Instant::now() < gone {
                thread::sleep(Duration::from_millis(2));
            }
            drop(list);
            drop(set);
            let _ = std::fs::remove_file(&xsock);
            fetch_w.push(ms(t1 - t0));
            fetch_c.push((c1 - c0) as f64 / 1000.0);
            build_w.push(ms(t2 - t1));
            serve_w.push(ms(t4 - t3));
            serve_c.push((c3 - c2) as f64 / 1000.0);
            total.push(ms(t2 - t0) + ms(t4 - t3));
        }
        drop(bare);
        let pm = |v: &[f64]| format!("{:.1} / {:.1}", median(v), percentile(v, 100.0));
        let _ = writeln!(
            md,
            "| {n} | {} | {:.1} | {} | {} | {:.1} | {:.1} |",
            pm(&fetch_w),
            median(&fetch_c),
            pm(&build_w),
            pm(&serve_w),
            median(&serve_c),
            median(&total)
        );
        if n >= 10000 {
            targets.push(Target {
                target: "10 000-socket handoff under 50 ms of master time".into(),
                measured: format!(
                    "fetch + held set + serve p50 {:.1} ms wall (CPU {:.1} ms)",
                    median(&total),
                    median(&fetch_c) + median(&serve_c)
                ),
                met: median(&total) < 50.0,
            });
        }
        groups.push((
            format!("{n} sockets"),
            vec![
                median(&fetch_w),
                median(&build_w),
                median(&serve_w),
                median(&total),
            ],
        ));
    }
    load_footer(&mut md);
    let svg = svg::bars(
        "Handoff cost in hapmaster's code, p50 wall ms",
        "ms",
        &["fetch", "held set", "serve", "total"],
        &groups,
    );
    Ok(Section {
        errors: Vec::new(),
        markdown: md,
        svg: Some(("handoff.svg".into(), svg)),
        targets,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Worker crash
// ---------------------------------------------------------------------------------------------

pub fn worker_crash(env: &Env, plan: &Plan) -> Result<Section, String> {
    let mut md = String::from("### 4. Worker crash: SIGKILL of the current worker under load\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "20 clients, new connection per request, {:.0} s; the worker answering at 1/3 of the run is SIGKILLed. \
         Same config for both (haproxy's default: no `master-worker no-exit-on-failure`). \
         Time to serve again: kill → first response from another worker.\n",
        plan.crash_secs
    );
    let _ = writeln!(
        md,
        "| method | ok | failed | {} | time to serve again | master after the run |",
        kinds_header()
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let mut panels = Vec::new();
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    for method in plan.only(&[Method::HaproxyMaster, Method::Hapmaster]) {
        let site = env.site(1, 4000)?;
        let mut running = Running::start(method, env, &site, secs(20.0))?;
        let spec = LoadSpec {
            addr: site.addr,
            clients: 20,
            keepalive: false,
            duration: secs(plan.crash_secs),
            max_requests: 50_000_000,
            timeout: REQ_TIMEOUT,
        };
        let load = Load::start(&spec)?;
        sleep_until(load.started + secs(plan.crash_secs / 3.0));
        let victim = running.answering_pid()?;
        let master = running.master_pid.ok_or("no master pid")?;
        if procfs::ppid(victim) != Some(master) {
            return Err(format!("pid {victim} answering is not a child of {master}"));
        }
        let kill_ms = load.ms_now();
        procfs::kill(victim, libc::SIGKILL)?;
        sleep_until(load.started + secs(plan.crash_secs));
        let r = load.finish()?;
        let back = r
            .pid_first_ms
            .iter()
            .filter(|(p, t)| **p != victim && **t >= kill_ms)
            .map(|(_, t)| *t - kill_ms)
            .min();
        let master_state = if running.exited() {
            "exited".to_string()
        } else {
            "running".to_string()
        };
        let back_s = back.map_or_else(
            || {
                format!(
                    "not within {:.1} s",
                    plan.crash_secs - plan.crash_secs / 3.0
                )
            },
            |t| format!("{t} ms"),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {back_s} | {master_state} |",
            method.name(),
            r.ok,
            r.failed(),
            kinds_cells(&r)
        );
        if method == Method::Hapmaster {
            targets.push(Target {
                target: "worker crash → 0 refused connections".into(),
                measured: format!(
                    "{} refused ({} failed in all: {}; serving again after {back_s})",
                    r.count(FailKind::Refused),
                    r.failed(),
                    FailKind::ALL
                        .iter()
                        .filter(|k| r.count(**k) > 0)
                        .map(|k| format!("{} {}", r.count(*k), k.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                met: r.count(FailKind::Refused) == 0,
            });
        }
        for e in r.sample_errors(3) {
            notes.push(format!("- {}: {e}", method.name()));
        }
        panels.push(Panel {
            title: format!("{} — SIGKILL of worker {victim}", method.name()),
            ok: r.buckets.clone(),
            fails: r.fail_buckets(),
            reloads_ms: Vec::new(),
            events: vec![(kill_ms, "SIGKILL".into())],
        });
        running.stop()?;
    }
    if !notes.is_empty() {
        md.push_str("\nFirst failures seen (kind, time since the load started, error):\n\n");
        md.push_str(&notes.join("\n"));
        md.push('\n');
    }
    load_footer(&mut md);
    let svg = svg::timeseries("Worker crash under load: requests per 100 ms", &panels);
    Ok(Section {
        errors: Vec::new(),
        markdown: md,
        svg: Some(("crash.svg".into(), svg)),
        targets,
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Footprint
// ---------------------------------------------------------------------------------------------

struct Snap {
    rss_kib: u64,
    fds: usize,
    cpu_ms: u64,
    threads: usize,
}

fn snap(pid: u32) -> Result<Snap, String> {
    let err = || format!("reading /proc/{pid}");
    Ok(Snap {
        rss_kib: procfs::rss_kib(pid).ok_or_else(err)?,
        fds: procfs::fd_count(pid).ok_or_else(err)?,
        cpu_ms: procfs::cpu_ms(pid).ok_or_else(err)?,
        threads: procfs::threads(pid).ok_or_else(err)?,
    })
}

pub fn footprint(env: &Env, plan: &Plan) -> Result<Section, String> {
    let mut md = String::from("### 5. Footprint of the master process\n\n");
    load_header(&mut md);
    let n = plan.footprint_reloads;
    let _ = writeln!(
        md,
        "1 listener, no load. Snapshots 1 s after the first READY=1 and 1 s after {n} reloads \
         (SIGUSR2, each waited for its READY=1). RSS = VmRSS; CPU = utime + stime of the master; \
         idle wake-ups = voluntary + involuntary context switches of all its threads over {:.0} s idle, per second.\n",
        plan.idle_secs
    );
    md.push_str("| master | RSS after start | RSS after reloads | fds after start / reloads | CPU ms after start / reloads | threads | idle wake-ups/s |\n|---|---:|---:|---|---|---:|---:|\n");
    let mut series: Vec<Vec<f64>> = Vec::new();
    let mut labels: Vec<String> = Vec::new();
    let mut targets = Vec::new();
    for method in plan.only(&[Method::HaproxyMaster, Method::Hapmaster]) {
        let site = env.site(1, 1000)?;
        let mut running = Running::start(method, env, &site, secs(20.0))?;
        let pid = running.master_pid.ok_or("no master pid")?;
        thread::sleep(Duration::from_secs(1));
        let s0 = snap(pid)?;
        let mut rss = vec![s0.rss_kib as f64 / 1024.0];
        let step = (n / 10).max(1);
        for i in 0..n {
            let sent = running.reload()?;
            let deadline = sent.at + Duration::from_secs(20);
            loop {
                let ready = running
                    .notify
                    .as_ref()
                    .and_then(|x| x.ready_since(sent.notify_index));
                if let Some((_, d)) = ready {
                    if d.contains("Reload failed") {
                        return Err(format!("{} reload {i} failed: {d:?}", method.name()));
                    }
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} reload {i}: no READY=1 in 20 s", method.name()));
                }
                thread::sleep(Duration::from_millis(1));
            }
            if (i + 1) % step == 0 {
                rss.push(procfs::rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
            }
        }
        thread::sleep(Duration::from_secs(1));
        let s1 = snap(pid)?;
        let c0 = procfs::ctxt_switches(pid).ok_or("ctxt switches")?;
        let t0 = Instant::now();
        thread::sleep(secs(plan.idle_secs));
        let c1 = procfs::ctxt_switches(pid).ok_or("ctxt switches")?;
        let wake = (c1 - c0) as f64 / t0.elapsed().as_secs_f64();
        let mib = |k: u64| format!("{:.2} MiB", k as f64 / 1024.0);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} | {} / {} | {} | {:.2} |",
            method.name(),
            mib(s0.rss_kib),
            mib(s1.rss_kib),
            s0.fds,
            s1.fds,
            s0.cpu_ms,
            s1.cpu_ms,
            s1.threads,
            wake
        );
        if method == Method::Hapmaster {
            let worst = s0.rss_kib.max(s1.rss_kib);
            targets.push(Target {
                target: "hapmaster RSS under 4 MiB".into(),
                measured: format!(
                    "{} after start, {} after {n} reloads",
                    mib(s0.rss_kib),
                    mib(s1.rss_kib)
                ),
                met: worst < 4096,
            });
            targets.push(Target {
                target: "0 idle wake-ups per second".into(),
                measured: format!(
                    "{wake:.2}/s ({} switches in {:.0} s)",
                    c1 - c0,
                    plan.idle_secs
                ),
                met: c1 == c0,
            });
        }
        labels.push(method.name().to_string());
        series.push(rss);
        running.stop()?;
    }
    load_footer(&mut md);
    let npoints = series.iter().map(Vec::len).max().unwrap_or(0);
    let step = (n / 10).max(1);
    let groups: Vec<(String, Vec<f64>)> = (0..npoints)
        .map(|k| {
            (
                format!("{} reloads", k * step),
                series
                    .iter()
                    .map(|s| s.get(k).copied().unwrap_or(0.0))
                    .collect(),
            )
        })
        .collect();
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let svg = svg::bars("Master RSS (MiB) over reloads", "MiB", &names, &groups);
    Ok(Section {
        errors: Vec::new(),
        markdown: md,
        svg: Some(("footprint.svg".into(), svg)),
        targets,
    })
}

// ---------------------------------------------------------------------------------------------
// 6. Overhead
// ---------------------------------------------------------------------------------------------

fn overhead_run(env: &Env, with_master: bool, spec: &LoadSpec) -> Result<LoadResult, String> {
    let site = env.site(1, 4000)?;
    let spec = LoadSpec {
        addr: site.addr,
        ..spec.clone()
    };
    if with_master {
        let running = Running::start(Method::Hapmaster, env, &site, secs(20.0))?;
        let r = Load::start(&spec)?;
        sleep_until(r.started + spec.duration);
        let r = r.finish()?;
        running.stop()?;
        Ok(r)
    } else {
        let bare = Bare::start(env, &site.cfg, &[], &site)?;
        let pid = bare.pid();
        wait_answer(site.addr, Instant::now() + secs(20.0), |p| p == Some(pid))
            .ok_or("bare haproxy does not answer")?;
        let r = Load::start(&spec)?;
        sleep_until(r.started + spec.duration);
        r.finish()
    }
}

pub fn overhead(env: &Env, plan: &Plan) -> Result<Section, String> {
    let mut md =
        String::from("### 6. Overhead: throughput without reloads, hapmaster vs bare haproxy\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "20 clients, {:.0} s per run, {} round(s) alternating the order; bare = `haproxy -db -f CFG`. \
         Ratio = median hapmaster req/s ÷ median bare req/s. On 2 cores shared by the clients and haproxy, \
         run-to-run noise is several percent.\n",
        plan.overhead_secs, plan.overhead_rounds
    );
    md.push_str("| mode | bare req/s (each round) | hapmaster req/s (each round) | failed (bare / hapmaster) | ratio |\n|---|---|---|---|---:|\n");
    let mut panels = Vec::new();
    let mut targets = Vec::new();
    for keepalive in [false, true] {
        let mode = if keepalive { "keep-alive" } else { "new conn" };
        let spec = LoadSpec {
            addr: "127.0.0.1:1".parse().map_err(|e| format!("address: {e}"))?,
            clients: 20,
            keepalive,
            duration: secs(plan.overhead_secs),
            max_requests: 500_000_000,
            timeout: REQ_TIMEOUT,
        };
        let (mut bare, mut hm) = (Vec::new(), Vec::new());
        let (mut fb, mut fh) = (0, 0);
        for round in 0..plan.overhead_rounds {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with_master in order {
                let r = overhead_run(env, with_master, &spec)?;
                if round + 1 == plan.overhead_rounds {
                    panels.push(Panel {
                        title: format!(
                            "{} — {mode}, {:.0} req/s",
                            if with_master {
                                "hapmaster"
                            } else {
                                "bare haproxy"
                            },
                            r.rate()
                        ),
                        ok: r.buckets.clone(),
                        fails: r.fail_buckets(),
                        reloads_ms: Vec::new(),
                        events: Vec::new(),
                    });
                }
                if with_master {
                    fh += r.failed();
                    hm.push(r.rate());
                } else {
                    fb += r.failed();
                    bare.push(r.rate());
                }
            }
        }
        let ratio = median(&hm) / median(&bare);
        let list = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {mode} | {} | {} | {fb} / {fh} | {ratio:.3} |",
            list(&bare),
            list(&hm)
        );
        targets.push(Target {
            target: format!("throughput ratio ≥ 0.99 ({mode})"),
            measured: format!(
                "{ratio:.3} (median {:.0} vs {:.0} req/s)",
                median(&hm),
                median(&bare)
            ),
            met: ratio >= 0.99,
        });
    }
    load_footer(&mut md);
    let svg = svg::timeseries(
        "Throughput without reloads (last round): requests per 100 ms",
        &panels,
    );
    Ok(Section {
        errors: Vec::new(),
        markdown: md,
        svg: Some(("overhead.svg".into(), svg)),
        targets,
    })
}
