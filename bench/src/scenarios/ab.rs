//! The reload storm cross-checked with `ab -r`, as operators run it; `ab` reports its own counts.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{load_footer, load_header, secs, sleep_until, Plan, Section};
use crate::methods::{Env, Running};

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
