//! reload-bench: naive `haproxy -D -sf`, haproxy's own master (`-Ws`) and hapmaster, on the same
//! config and load, in one run. See README.md, "Reload benchmark".
//!
//! ```text
//! cargo run --release -p reload-bench -- all [--quick] [--out DIR] [--haproxy PATH] [--hapmaster PATH]
//! cargo run --release -p reload-bench -- storm|ab|latency|handoff|crash|footprint|overhead ...
//! ```

mod methods;
mod procfs;
mod scenarios;
mod svg;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use methods::Env;
use scenarios::{Plan, Section, Target};

const SCENARIOS: [&str; 7] = [
    "storm",
    "ab",
    "latency",
    "handoff",
    "crash",
    "footprint",
    "overhead",
];

const USAGE: &str = "usage: reload-bench all|storm|ab|latency|handoff|crash|footprint|overhead... \
[--quick] [--out DIR] [--haproxy PATH] [--hapmaster PATH] [--ports N,N...] [--storm-secs S] [--keep] [--method NAME]...
  all          every scenario (1-6 and the ab cross-check), in that order
  --quick      seconds instead of minutes (the CI smoke run)
  --out DIR    where results.md and the SVG plots go (default bench/results)
  --haproxy    the haproxy binary (default: haproxy in PATH, else /usr/sbin/haproxy)
  --hapmaster  the hapmaster binary (default: build it with `cargo build --release --bin hapmaster`
               and use target/release/hapmaster)
  --ports      listener counts for the latency and handoff scenarios (default 1,100,1000,10000
               and 1000,10000; --quick: 1,100 and 100,1000)
  --storm-secs duration of each reload-storm run (default 60, --quick 1)
  --method     only this method (naive, haproxy-master, hapmaster); may be repeated
  --keep       keep the configs and logs of every run (in /tmp/rbXXXXXX/N/) instead of removing them";

struct Args {
    which: Vec<String>,
    quick: bool,
    out: PathBuf,
    haproxy: Option<PathBuf>,
    hapmaster: Option<PathBuf>,
    ports: Option<Vec<usize>>,
    storm_secs: Option<f64>,
    keep: bool,
    methods: Vec<methods::Method>,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        which: Vec::new(),
        quick: false,
        out: workspace_root().join("bench/results"),
        haproxy: None,
        hapmaster: None,
        ports: None,
        storm_secs: None,
        keep: false,
        methods: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--haproxy" => a.haproxy = Some(PathBuf::from(value("--haproxy")?)),
            "--hapmaster" => a.hapmaster = Some(PathBuf::from(value("--hapmaster")?)),
            "--ports" => {
                let v = value("--ports")?;
                let list: Result<Vec<usize>, _> = v.split(',').map(str::parse).collect();
                a.ports = Some(list.map_err(|e| format!("--ports {v:?}: {e}"))?);
            }
            "--storm-secs" => {
                let v = value("--storm-secs")?;
                a.storm_secs = Some(v.parse().map_err(|e| format!("--storm-secs {v:?}: {e}"))?);
            }
            "--keep" => a.keep = true,
            "--method" => {
                let v = value("--method")?;
                let m = methods::Method::ALL
                    .into_iter()
                    .find(|m| m.name() == v)
                    .ok_or_else(|| format!("--method {v:?}: naive, haproxy-master or hapmaster"))?;
                a.methods.push(m);
            }
            "-h" | "--help" => return Err(String::new()),
            "all" => a.which.extend(SCENARIOS.iter().map(|s| s.to_string())),
            s if SCENARIOS.contains(&s) => a.which.push(s.to_string()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.which.is_empty() {
        return Err("name a scenario, or all".into());
    }
    Ok(a)
}

fn find_haproxy() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("haproxy"))
            .find(|p| p.is_file())
    }) {
        return Ok(p);
    }
    let p = PathBuf::from("/usr/sbin/haproxy");
    if p.is_file() {
        Ok(p)
    } else {
        Err(
            "no haproxy in PATH nor /usr/sbin/haproxy: apt-get install haproxy, or --haproxy"
                .into(),
        )
    }
}

fn build_hapmaster() -> Result<PathBuf, String> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("reload-bench: cargo build --release --bin hapmaster");
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "hapmaster",
            "--bin",
            "hapmaster",
        ])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !st.success() {
        return Err(format!("cargo build --release --bin hapmaster: {st}"));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release/hapmaster");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} missing after the build", bin.display()))
    }
}

fn haproxy_version(haproxy: &Path) -> String {
    Command::new(haproxy)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn run() -> Result<bool, String> {
    let args = parse_args()?;
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if !args.methods.is_empty() {
        plan.methods.clone_from(&args.methods);
    }
    if let Some(s) = args.storm_secs {
        plan.storm_secs = s;
    }
    if let Some(p) = &args.ports {
        plan.latency_ports.clone_from(p);
        plan.handoff_sockets.clone_from(p);
    }
    let haproxy = match args.haproxy {
        Some(p) => p,
        None => find_haproxy()?,
    };
    let hapmaster = match args.hapmaster {
        Some(p) => p,
        None => build_hapmaster()?,
    };
    // 10 000 listeners: haproxy wants more than 2 fds per port, hapmaster holds one per port.
    let nofile = procfs::raise_nofile(1 << 18);
    fs::create_dir_all(&args.out).map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let env = Env::new(haproxy.clone(), hapmaster.clone())?;
    let started = Instant::now();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Reload benchmark results ({})\n\n\
         {}; hapmaster {} ({}); {} CPUs; RLIMIT_NOFILE {nofile}; load average at start {}. \
         Loopback only; each run on its own 127.0.0.x address.\n",
        if plan.quick {
            "--quick smoke run: figures are not meaningful"
        } else {
            "full run"
        },
        haproxy_version(&haproxy),
        env!("CARGO_PKG_VERSION"),
        hapmaster.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        procfs::loadavg(),
    );
    let mut targets: Vec<Target> = Vec::new();
    let mut errors = Vec::new();
    for name in &args.which {
        eprintln!(
            "reload-bench: scenario {name} ({:.0?} so far)",
            started.elapsed()
        );
        let t = Instant::now();
        let r: Result<Section, String> = match name.as_str() {
            "storm" => scenarios::reload_storm(&env, &plan),
            "ab" => scenarios::ab_crosscheck(&env, &plan),
            "latency" => scenarios::reload_latency(&env, &plan, nofile),
            "handoff" => scenarios::handoff_cost(&env, &plan, nofile),
            "crash" => scenarios::worker_crash(&env, &plan),
            "footprint" => scenarios::footprint(&env, &plan),
            "overhead" => scenarios::overhead(&env, &plan),
            _ => Err(format!("unknown scenario {name}")),
        };
        match r {
            Ok(section) => {
                for e in &section.errors {
                    eprintln!("reload-bench: {name}: error: {e}");
                    errors.push(format!("{name}: {e}"));
                }
                md.push_str(&section.markdown);
                if let Some((file, svg)) = section.svg {
                    let p = args.out.join(&file);
                    fs::write(&p, svg).map_err(|e| format!("writing {}: {e}", p.display()))?;
                    let _ = writeln!(md, "![{name}]({file})\n");
                }
                targets.extend(section.targets);
                eprintln!("reload-bench: {name} done in {:.1?}", t.elapsed());
            }
            Err(e) => {
                eprintln!("reload-bench: scenario {name} FAILED: {e}");
                let _ = writeln!(md, "### {name}: FAILED\n\n{e}\n");
                errors.push(format!("{name}: {e}"));
            }
        }
    }
    if !targets.is_empty() {
        md.push_str("### Targets (hapmaster)\n\n| target | measured | met |\n|---|---|---|\n");
        for t in &targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "_total time {:.0?}; load average at end {}_",
        started.elapsed(),
        procfs::loadavg()
    );
    let results = args.out.join("results.md");
    fs::write(&results, &md).map_err(|e| format!("writing {}: {e}", results.display()))?;
    println!("{md}");
    if args.keep {
        eprintln!(
            "reload-bench: configs and logs of every run kept in {}",
            env.keep().display()
        );
    }
    if errors.is_empty() {
        eprintln!("reload-bench: results in {}", results.display());
        Ok(true)
    } else {
        for e in &errors {
            eprintln!("reload-bench: error: {e}");
        }
        Ok(false)
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reload-bench: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
