//! Scenario 3, handoff cost: fetching, holding and serving many listening sockets.

use std::fmt::Write as _;
use std::os::unix::net::UnixListener;
use std::thread;
use std::time::{Duration, Instant};

use hapmaster::handoff::fetch::fetch_sockets;
use hapmaster::handoff::listeners::HeldSet;
use hapmaster::handoff::serve::serve_getsocks;

use super::{load_footer, load_header, median, ms, percentile, secs, Plan, Section, Target};
use crate::methods::{wait_answer, Bare, Env};
use crate::procfs;
use crate::svg;

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
            let c2 = procfs::thread_cpu_us();
            let t3 = Instant::now();
            let outcome = serve_getsocks(&stream, &set, timeout)
                .map_err(|e| format!("serve_getsocks to haproxy -x: {e}"))?;
            let t4 = Instant::now();
            let c3 = procfs::thread_cpu_us();
            if outcome.sent != set.len() {
                return Err(format!("served {} of {}", outcome.sent, set.len()));
            }
            let npid = newer.pid();
            wait_answer(site.addr, Instant::now() + timeout, |_| true);
            drop(newer);
            let gone = Instant::now() + Duration::from_secs(10);
            while procfs::alive(npid) && Instant::now() < gone {
                thread::sleep(Duration::from_millis(2));
            }
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
