//! Scenario 5, footprint: the master's memory, fds and wake-ups while idle.

use std::fmt::Write as _;
use std::thread;
use std::time::{Duration, Instant};

use super::{load_footer, load_header, secs, Plan, Section, Target};
use crate::methods::{Env, Method, Running};
use crate::procfs;
use crate::svg;

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
