//! Scenario 4, worker crash: what each method does when its worker dies.

use std::fmt::Write as _;

use hapmaster_loadgen::{FailKind, Load, LoadSpec};

use super::{
    finish, kinds_cells, kinds_header, load_footer, load_header, secs, sleep_until, Plan, Section,
    Target, REQ_TIMEOUT,
};
use crate::methods::{Env, Method, Running};
use crate::procfs;
use crate::svg::{self, Panel};

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
            targets: vec![site.addr.into()],
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
        let r = finish(load)?;
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
