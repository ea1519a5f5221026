//! Scenario 1, reload storm: reloads every 100 ms under load; failed requests per method.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hapmaster_loadgen::{Load, LoadResult, LoadSpec};

use super::{
    finish, kinds_cells, kinds_header, load_footer, load_header, secs, sleep_until, Plan, Section,
    Target, REQ_TIMEOUT,
};
use crate::methods::{Env, Method, Running};
use crate::svg::{self, Panel};

/// How the clients connect, and whether the site closes idle keep-alive connections at soft stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NewConn,
    KeepAlive,
    /// Keep-alive against a site with `option idle-close-on-response` (haproxy 2.6+): at soft stop
    /// haproxy keeps an idle connection open and closes it after its next response
    /// (`Connection: close`), instead of closing it under a request already on the wire
    /// (src/mux_h1.c v2.6.0: h1_process, h1_set_cli_conn_mode).
    KeepAliveIdleClose,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::NewConn, Mode::KeepAlive, Mode::KeepAliveIdleClose];

    fn name(self) -> &'static str {
        match self {
            Mode::NewConn => "new conn",
            Mode::KeepAlive => "keep-alive",
            Mode::KeepAliveIdleClose => "keep-alive, idle-close-on-response",
        }
    }
}

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
    mode: Mode,
    spec: &LoadSpec,
    dur: Duration,
) -> Result<StormRun, String> {
    let site = env.site(1, 4000)?;
    if mode == Mode::KeepAliveIdleClose {
        site.add_defaults_line("option idle-close-on-response")?;
    }
    let mut running = Running::start(method, env, &site, secs(20.0))?;
    let spec = LoadSpec {
        targets: vec![site.addr.into()],
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
    let result = finish(load)?;
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
         `idle-close-on-response`: the site's `defaults` has `option idle-close-on-response`, so a \
         soft-stopped worker closes a keep-alive connection after a response, not while idle. \
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
    // The worst hapmaster run with idle-close-on-response: (failed, clients).
    let mut hm_idle_close: Option<(usize, usize)> = None;
    let mut errors = Vec::new();
    for &clients in &plan.storm_clients {
        for storm_mode in Mode::ALL {
            let mode = storm_mode.name();
            for method in plan.methods.clone() {
                let spec = LoadSpec {
                    targets: Vec::new(),
                    clients,
                    keepalive: storm_mode != Mode::NewConn,
                    duration: secs(plan.storm_secs),
                    max_requests: 50_000_000,
                    timeout: REQ_TIMEOUT,
                };
                let run = match storm_once(env, method, storm_mode, &spec, secs(plan.storm_secs)) {
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
                    if storm_mode == Mode::KeepAliveIdleClose
                        && hm_idle_close.map_or(true, |(f, _)| r.failed() > f)
                    {
                        hm_idle_close = Some((r.failed(), clients));
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
    if let Some((f, clients)) = hm_idle_close {
        targets.push(Target {
            target: "hapmaster, keep-alive with `option idle-close-on-response`: 0 failures".into(),
            measured: format!("worst run ({clients} clients): {f} failed"),
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
