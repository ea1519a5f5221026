//! Properties of the haproxy-compatible command line, on generated argv: `options::parse` answers
//! every argv with a command or an error (never a panic), and for valid command lines it keeps the
//! configuration files in order and passes haproxy's flags through in order, each with its value.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use hapmaster::options::{parse, parse_with, Command};
use proptest::prelude::*;

/// Every flag haproxy 2.6 or hapmaster knows, and near misses.
const FLAGS: &[&str] = &[
    "-f",
    "-p",
    "-S",
    "-x",
    "-sf",
    "-st",
    "-n",
    "-N",
    "-L",
    "-m",
    "-C",
    "-cc",
    "-q",
    "-V",
    "-W",
    "-Ws",
    "-D",
    "-db",
    "-c",
    "-v",
    "-vv",
    "-h",
    "-dW",
    "-dD",
    "-dr",
    "-dV",
    "-dM",
    "-dMfail",
    "-dKall",
    "-de",
    "-dp",
    "-dS",
    "-dG",
    "-dR",
    "-d",
    "-",
    "--",
    "",
    "--help",
    "--help=x",
    "--version",
    "--version=1",
    "--haproxy",
    "--haproxy=",
    "--haproxy=/x",
    "--runtime-dir",
    "--runtime-dir=",
    "--ready-timeout",
    "--ready-timeout=",
    "--ready-timeout=0",
    "--ready-timeout=5s",
    "--ready-timeout=18446744073709551615d",
    "--nope",
    "---",
    "-=",
    "-Ws=1",
];

/// haproxy flags without a value that hapmaster passes to its workers unchanged.
const PASS_FLAGS: &[&str] = &[
    "-dW", "-dD", "-dr", "-dV", "-dM", "-dMfail", "-dKall", "-de", "-dp", "-dS", "-dG", "-dR",
    "-d", "-q", "-V",
];

/// haproxy flags that take the next argument as their value, passed through with it.
const PASS_WITH_VALUE: &[&str] = &["-n", "-N", "-L", "-m", "-C", "-cc"];

fn bytes_arg() -> impl Strategy<Value = OsString> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(OsString::from_vec)
}

fn any_arg() -> impl Strategy<Value = OsString> {
    prop_oneof![
        prop::sample::select(FLAGS).prop_map(OsString::from),
        ".{0,12}".prop_map(OsString::from),
        bytes_arg(),
        "[0-9]{1,6}".prop_map(OsString::from),
        "--ready-timeout=[0-9]{0,24}(us|ms|s|m|h|d|x)?".prop_map(OsString::from),
    ]
}

/// One element of a valid command line, with what `parse` must make of it.
#[derive(Clone, Debug)]
enum Item {
    Config(OsString),
    Pass(&'static str),
    PassValue(&'static str, OsString),
    /// Consumed by the master, nothing passed on: `-W`, `-p FILE`, `-x PATH`, `-sf PID...`, ...
    Master(Vec<OsString>),
    MasterSocket(String),
    Haproxy(OsString, bool),
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

fn item() -> impl Strategy<Value = Item> {
    let master = prop_oneof![
        prop::sample::select(&["-W", "-Ws", "-D", "-db"][..]).prop_map(|f| vec![os(f)]),
        bytes_arg().prop_map(|v| vec![os("-p"), v]),
        bytes_arg().prop_map(|v| vec![os("-x"), v]),
        (
            prop::sample::select(&["-sf", "-st"][..]),
            prop::collection::vec(1u32..4_194_304, 0..4)
        )
            .prop_map(|(f, pids)| {
                let mut v = vec![os(f)];
                v.extend(pids.iter().map(|p| OsString::from(p.to_string())));
                v
            }),
        "[a-z/]{1,12}".prop_map(|d| vec![os("--runtime-dir"), OsString::from(d)]),
        (1u32..1000).prop_map(|n| vec![OsString::from(format!("--ready-timeout={n}s"))]),
    ];
    prop_oneof![
        bytes_arg().prop_map(Item::Config),
        prop::sample::select(PASS_FLAGS).prop_map(Item::Pass),
        (prop::sample::select(PASS_WITH_VALUE), bytes_arg())
            .prop_map(|(f, v)| Item::PassValue(f, v)),
        master.prop_map(Item::Master),
        ".{0,16}".prop_map(Item::MasterSocket),
        (
            prop::collection::vec(any::<u8>(), 1..24).prop_map(OsString::from_vec),
            any::<bool>()
        )
            .prop_map(|(p, inline)| Item::Haproxy(p, inline)),
    ]
}

/// A valid command line: items, at least one configuration file, and maybe `--` and more files
/// (anything after `--` is a file, even `-f` or `--help`).
fn command_line() -> impl Strategy<Value = (Vec<Item>, Option<Vec<OsString>>)> {
    (
        prop::collection::vec(item(), 0..16),
        bytes_arg(),
        any::<prop::sample::Index>(),
        prop::option::of(prop::collection::vec(any_arg(), 0..4)),
    )
        .prop_map(|(mut items, file, at, tail)| {
            items.insert(at.index(items.len() + 1), Item::Config(file));
            (items, tail)
        })
}

struct Expected {
    argv: Vec<OsString>,
    config_files: Vec<OsString>,
    worker_args: Vec<OsString>,
    master_sockets: Vec<String>,
    haproxy: Option<PathBuf>,
    quiet: bool,
}

fn expected(items: &[Item], tail: &Option<Vec<OsString>>) -> Expected {
    let mut e = Expected {
        argv: Vec::new(),
        config_files: Vec::new(),
        worker_args: Vec::new(),
        master_sockets: Vec::new(),
        haproxy: None,
        quiet: false,
    };
    for item in items {
        match item {
            Item::Config(f) => {
                e.argv.extend([os("-f"), f.clone()]);
                e.config_files.push(f.clone());
            }
            Item::Pass(f) => {
                e.quiet |= *f == "-q";
                e.argv.push(os(f));
                e.worker_args.push(os(f));
            }
            Item::PassValue(f, v) => {
                e.argv.extend([os(f), v.clone()]);
                e.worker_args.extend([os(f), v.clone()]);
            }
            Item::Master(args) => e.argv.extend(args.iter().cloned()),
            Item::MasterSocket(s) => {
                e.argv.extend([os("-S"), os(s)]);
                e.master_sockets.push(s.clone());
            }
            Item::Haproxy(p, inline) => {
                if *inline {
                    let mut a = os("--haproxy=");
                    a.push(p);
                    e.argv.push(a);
                } else {
                    e.argv.extend([os("--haproxy"), p.clone()]);
                }
                e.haproxy = Some(PathBuf::from(p));
            }
        }
    }
    if let Some(tail) = tail {
        // Possibly empty: a bare `--` at the end adds nothing.
        e.argv.push(os("--"));
        e.argv.extend(tail.iter().cloned());
        e.config_files.extend(tail.iter().cloned());
    }
    e
}

proptest! {
    /// Any argv at all: a command or an error, never a panic.
    #[test]
    fn parse_never_panics(argv in prop::collection::vec(any_arg(), 0..12)) {
        let _ = parse(argv);
    }

    /// Valid command lines: files in order (`-f` ones, then those after `--`), haproxy flags
    /// passed through in order with their values, master-only flags consumed.
    #[test]
    fn valid_command_lines_keep_order((items, tail) in command_line()) {
        let e = expected(&items, &tail);
        let parsed = parse_with(e.argv.clone(), || PathBuf::from("/default/haproxy"));
        let o = match parsed {
            Ok(Command::Run(o)) => o,
            other => {
                prop_assert!(false, "{:?} gave {:?}", e.argv, other);
                unreachable!()
            }
        };
        prop_assert_eq!(&o.config_files, &e.config_files, "config files of {:?}", e.argv);
        prop_assert_eq!(&o.worker_args, &e.worker_args, "worker args of {:?}", e.argv);
        prop_assert_eq!(&o.master_sockets, &e.master_sockets, "-S of {:?}", e.argv);
        prop_assert_eq!(
            o.haproxy,
            e.haproxy.unwrap_or_else(|| PathBuf::from("/default/haproxy"))
        );
        // A `-q` that is the value of `-n` and the like is passed on, and does not make it quiet.
        prop_assert_eq!(o.quiet, e.quiet, "-q of {:?}", e.argv);
    }
}
