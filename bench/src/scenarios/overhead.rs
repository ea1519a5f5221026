//! Scenario 6, overhead: requests through a worker with and without the master.

use std::fmt::Write as _;
use std::time::Instant;

use hapmaster_loadgen::{Load, LoadResult, LoadSpec};

use super::{
    finish, load_footer, load_header, median, secs, sleep_until, Plan, Section, Target, REQ_TIMEOUT,
};
use crate::methods::{wait_answer, Bare, Env, Method, Running};
use crate::svg::{self, Panel};

fn overhead_run(env: &Env, with_master: bool, spec: &LoadSpec) -> Result<LoadResult, String> {
    let site = env.site(1, 4000)?;
    let spec = LoadSpec {
        targets: vec![site.addr.into()],
        ..spec.clone()
    };
    if with_master {
        let running = Running::start(Method::Hapmaster, env, &site, secs(20.0))?;
        let r = Load::start(&spec)?;
        sleep_until(r.started + spec.duration);
        let r = finish(r)?;
        running.stop()?;
        Ok(r)
    } else {
        let bare = Bare::start(env, &site.cfg, &[], &site)?;
        let pid = bare.pid();
        wait_answer(site.addr, Instant::now() + secs(20.0), |p| p == Some(pid))
            .ok_or("bare haproxy does not answer")?;
        let r = Load::start(&spec)?;
        sleep_until(r.started + spec.duration);
        finish(r)
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
            targets: Vec::new(),
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
