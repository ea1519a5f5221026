//! Scenario 2, reload latency: from the reload signal to the new worker answering.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    load_footer, load_header, median, ms, percentile, secs, Plan, Section, Target, RELOAD_FAILED,
};
use crate::methods::{floor_once, Env, Method, Running, Site};
use crate::procfs;
use crate::svg;

struct Lat {
    ready: Vec<f64>,
    newpid: Vec<f64>,
    /// The master's CPU per reload, ms: from the signal until the old worker has exited.
    master_cpu: Vec<f64>,
    /// The master's fd table size after the reloads (`procfs::fd_table_size`).
    fd_table: Option<u64>,
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

fn cpu_stats(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    format!("{:.1} / {:.1}", percentile(v, 50.0), percentile(v, 100.0))
}

/// One method's run, measured one reload at a time between the other methods' reloads.
struct Measured {
    method: Method,
    site: Site,
    running: Option<Running>,
    lat: Lat,
    /// Why it stopped early: a failed reload (a measured outcome) or a benchmark error.
    failed: Option<String>,
}

/// Reload `i` of a running method: signal, then wait for READY (not naive) and for a response
/// from a new pid; then for the old worker to exit, so the next reload starts from rest.
fn measure_one(
    running: &mut Running,
    site: &Site,
    method: Method,
    i: usize,
    timeout: Duration,
    lat: &mut Lat,
) -> Result<(), String> {
    let old = running.answering_pid()?;
    let cpu_before = running.master_pid.and_then(procfs::cpu_ns);
    let sent = running.reload()?;
    let deadline = sent.at + timeout;
    let mut newpid = None;
    let mut ready = None;
    let wants_ready = method != Method::Naive;
    loop {
        if newpid.is_none() {
            if let Ok(r) = hapmaster_loadgen::get_once(site.addr, Duration::from_secs(1)) {
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
    let cpu_after = running.master_pid.and_then(procfs::cpu_ns);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        lat.master_cpu.push(b.saturating_sub(a) as f64 / 1e6);
    }
    Ok(())
}

/// Every method on its own copy of the site, started at once and reloaded in turn — reload i of
/// each method, then bare start i of the floor — so that a slow minute of a shared machine
/// slows every method alike instead of the one that happened to run then.
struct Round {
    ports: usize,
    maxconn: usize,
    reloads: usize,
    timeout: Duration,
}

/// The methods' runs, the floor's starts (ms), and the floor's error if it stopped early.
type Interleaved = (Vec<Measured>, Vec<f64>, Option<String>);

fn measure_interleaved(
    env: &Env,
    methods: &[Method],
    round: &Round,
    floor_site: &Site,
) -> Result<Interleaved, String> {
    let Round {
        ports,
        maxconn,
        reloads: n,
        timeout,
    } = *round;
    let mut runs = Vec::new();
    let mut floor = Vec::new();
    let mut floor_error = None;
    for &method in methods {
        let site = env.site(ports, maxconn)?;
        let (running, failed) = match Running::start(method, env, &site, timeout) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        runs.push(Measured {
            method,
            site,
            running,
            lat: Lat {
                ready: Vec::new(),
                newpid: Vec::new(),
                master_cpu: Vec::new(),
                fd_table: None,
            },
            failed,
        });
    }
    for i in 0..n {
        for m in runs.iter_mut() {
            let Some(running) = m.running.as_mut() else {
                continue;
            };
            if let Err(e) = measure_one(running, &m.site, m.method, i, timeout, &mut m.lat) {
                m.failed = Some(e);
                m.lat.fd_table = running.master_pid.and_then(procfs::fd_table_size);
                if let Some(r) = m.running.take() {
                    r.stop()?;
                }
            }
        }
        if floor_error.is_none() {
            match floor_once(env, floor_site, timeout) {
                Ok(d) => floor.push(ms(d)),
                Err(e) => floor_error = Some(format!("latency floor, {ports} ports: {e}")),
            }
        }
    }
    for m in runs.iter_mut() {
        if let Some(r) = m.running.take() {
            m.lat.fd_table = r.master_pid.and_then(procfs::fd_table_size);
            r.stop()?;
        }
    }
    Ok((runs, floor, floor_error))
}

pub fn reload_latency(env: &Env, plan: &Plan, nofile: u64) -> Result<Section, String> {
    let mut md = String::from("### 2. Reload latency\n\n");
    load_header(&mut md);
    let _ = writeln!(
        md,
        "{} reloads per method and config, no load. Every method runs at once on its own copy of the config (its own loopback address), and they take turns: reload i of each method, then bare start i of the floor; each reload starts when the previous one's old worker has exited. So a slow minute of a shared machine slows every method alike. \
         `READY`: signal → `READY=1` on the NOTIFY_SOCKET (haproxy -Ws and hapmaster). \
         `new pid answers`: signal (naive: start of `haproxy -D -p PID -sf OLD`) → first HTTP response from a process other than the old one \
         (the config answers with `X-Pid: %pid`; a 1 ms probe loop). \
         Floor: bare `haproxy -db` spawn → its first HTTP response, same config, {} starts. \
         Ratio: the method's p50 (READY, or new-pid for naive) over the floor's p50. Figures in ms, p50 / p95 / max. \
         `master CPU`: the master process's time on CPU per reload (/proc/PID/schedstat), from the signal until the old worker exited, p50 / max. \
         `fd table`: the master's fd table size after the reloads (FDSize: the power of two the kernel grew it to, ≥ its highest fd + 1; it never shrinks). \
         A count the machine's RLIMIT_NOFILE cannot hold is replaced by the largest that fits.\n",
        plan.latency_reloads, plan.latency_reloads
    );
    md.push_str("| ports | method | READY p50 / p95 / max | new pid answers p50 / p95 / max | floor p50 / p95 / max | ratio (p50) | master CPU p50 / max | fd table |\n|---:|---|---|---|---|---:|---|---:|\n");
    let mut groups = Vec::new();
    let mut targets = Vec::new();
    let mut notes = Vec::new();
    let mut errors = Vec::new();
    for &wanted in &plan.latency_ports {
        // haproxy sets its own fd limit to 2 per connection plus one per listener; a large site
        // gets a small maxconn so that the most listeners fit.
        let maxconn = if wanted > 10_000 { 100 } else { 1000 };
        let need = |ports: usize| (2 * maxconn + ports + 500) as u64;
        let ports = if need(wanted) <= nofile {
            wanted
        } else {
            let fits = nofile.saturating_sub(need(0)) as usize / 1000 * 1000;
            if fits <= 10_000 || plan.latency_ports.contains(&fits) {
                notes.push(format!(
                    "{wanted} ports: skipped, RLIMIT_NOFILE can only be raised to {nofile} here \
                     (hard limit, no CAP_SYS_RESOURCE) and haproxy needs about {}",
                    need(wanted)
                ));
                continue;
            }
            notes.push(format!(
                "{wanted} ports: RLIMIT_NOFILE can only be raised to {nofile} here (hard limit, no \
                 CAP_SYS_RESOURCE) and haproxy needs about {}: measured at {fits}, the most that fits",
                need(wanted)
            ));
            fits
        };
        let floor_site = env.site(ports, maxconn)?;
        let timeout = secs(30.0 + ports as f64 / 100.0);
        let round = Round {
            ports,
            maxconn,
            reloads: plan.latency_reloads,
            timeout,
        };
        let (runs, floor, floor_error) =
            measure_interleaved(env, &plan.methods, &round, &floor_site)?;
        errors.extend(floor_error);
        let floor_p50 = median(&floor);
        let mut row = vec![floor_p50];
        let mut p50s = Vec::new();
        for Measured {
            method,
            lat,
            failed,
            ..
        } in runs
        {
            if let Some(e) = failed {
                let _ = writeln!(
                    md,
                    "| {ports} | {} | **{}** | | | | | |",
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
                "| {ports} | {} | {} | {} | {} | {:.2} | {} | {} |",
                method.name(),
                stats(&lat.ready),
                stats(&lat.newpid),
                stats(&floor),
                p50 / floor_p50,
                cpu_stats(&lat.master_cpu),
                lat.fd_table.map_or("–".into(), |n| n.to_string())
            );
        }
        let find = |m: Method| p50s.iter().find(|x| x.0 == m).map(|x| (x.1, x.2));
        if let (Some((hm, hm_pid)), Some((hx, hx_pid))) =
            (find(Method::Hapmaster), find(Method::HaproxyMaster))
        {
            if ports >= 1000 {
                targets.push(Target {
                    target: format!("reload latency ≤ 1.10 × floor, {ports} ports"),
                    measured: format!(
                        "hapmaster p50 {hm:.1} ms, floor p50 {floor_p50:.1} ms: {:.2} ×",
                        hm / floor_p50
                    ),
                    met: hm <= 1.10 * floor_p50,
                });
            }
            targets.push(Target {
                target: format!("READY p50 ≤ haproxy-master's, {ports} ports"),
                measured: format!(
                    "READY p50: hapmaster {hm:.1} ms, haproxy-master {hx:.1} ms; \
                     new pid answers p50: {hm_pid:.1} vs {hx_pid:.1} ms"
                ),
                met: hm <= hx,
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
