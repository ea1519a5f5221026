//! The client subcommands against real processes: `hapmaster getsocks` takes the listeners of a
//! running haproxy (and leaves it serving), `hapmaster cli` talks to its stats socket, and
//! `hapmaster reload` / `getsocks` say clearly when nothing listens. And their help texts:
//! `hapmaster --help` names them, `hapmaster help [SUBCOMMAND]` works, and each subcommand's
//! `--help` is its own usage, not the others'.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

use common::haproxy::Haproxy;
use common::{free_port, TestDir, REQUEST_TIMEOUT};

fn hapmaster(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running hapmaster")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One haproxy with a TCP frontend, a unix-socket frontend, a stats socket that exposes its
/// listeners and one that does not.
struct Setup {
    dir: TestDir,
    port: u16,
    haproxy: Haproxy,
}

impl Setup {
    fn start() -> Setup {
        let dir = TestDir::new();
        let port = free_port();
        let cfg = dir.join("h.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global
    stats socket {d}/admin.sock mode 600 level admin expose-fd listeners
    stats socket {d}/plain.sock mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 2s
    timeout server 2s

frontend fe
    bind 127.0.0.1:{port}
    bind unix@{d}/fe.sock
    http-request return status 200 content-type text/plain string ok
",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut haproxy = Haproxy::start(
            &["-db", "-f", cfg.to_str().unwrap()],
            dir.join("haproxy.log"),
        );
        haproxy.wait_ready(&dir.join("admin.sock"));
        Setup { dir, port, haproxy }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn serves(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
        let mut answer = String::new();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
            && conn.read_to_string(&mut answer).is_ok()
            && answer.ends_with("ok")
    }
}

#[test]
fn getsocks_table_json_and_refusals() {
    let s = Setup::start();
    let admin = s.path("admin.sock");
    let tcp = format!("127.0.0.1:{}", s.port);

    // The table: a header, then both frontends and the stats sockets (haproxy reports its unix
    // listeners under their temporary bind name, <path>.<pid>.tmp).
    let out = hapmaster(&["getsocks", &admin]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("#index"), "{table}");
    let unix_name = |name: &str| format!("{}.{}.tmp", s.path(name), s.haproxy.pid());
    for want in [
        tcp.clone(),
        unix_name("fe.sock"),
        unix_name("admin.sock"),
        unix_name("plain.sock"),
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.split_whitespace().nth(3) == Some(&want)),
            "{want} missing from:\n{table}"
        );
    }
    assert_eq!(lines.len(), 1 + 4, "{table}");
    for (i, line) in lines[1..].iter().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols.len(), 8, "{line}");
        assert_eq!(cols[0], i.to_string());
        assert_eq!(cols[2], "stream");
        assert_eq!((cols[4], cols[5], cols[6]), ("-", "-", "0x00000000"));
    }
    let tcp_line = lines.iter().find(|l| l.contains(&tcp)).unwrap();
    assert!(
        tcp_line.split_whitespace().nth(1) == Some("inet"),
        "{tcp_line}"
    );

    // Taking (and closing) the sockets did not disturb haproxy.
    assert!(s.serves(), "haproxy stopped serving after getsocks");

    // JSON: same sockets.
    let out = hapmaster(&["getsocks", "--json", &admin]);
    assert!(out.status.success(), "{out:?}");
    let json = text(&out.stdout);
    assert!(json.starts_with("{\"sockets\": [\n"), "{json}");
    assert!(json.ends_with("\n]}\n"), "{json}");
    assert_eq!(json.matches("\"index\": ").count(), 4, "{json}");
    assert!(
        json.contains(&format!("\"family\": \"inet\", \"type\": \"stream\", \"address\": \"{tcp}\", \"namespace\": null, \"interface\": null, \"options\": 0")),
        "{json}"
    );
    assert!(
        json.contains(&format!("\"address\": \"{}\"", unix_name("fe.sock"))),
        "{json}"
    );
    assert_eq!(json.matches("\"family\": \"unix\"").count(), 3, "{json}");

    // A stats socket without expose-fd: exit 1 and what to add.
    let out = hapmaster(&["getsocks", &s.path("plain.sock")]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("expose-fd listeners"), "{err}");
    assert!(err.contains(&s.path("plain.sock")), "{err}");
    assert!(out.stdout.is_empty());

    // A path where nothing is: exit 2 and a clear error naming it.
    let missing = s.path("missing.sock");
    let out = hapmaster(&["getsocks", &missing]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains(&format!("cannot connect to {missing}")),
        "{err}"
    );

    assert!(s.serves(), "haproxy stopped serving");
}

#[test]
fn cli_talks_to_a_real_stats_socket() {
    let s = Setup::start();
    let out = hapmaster(&["cli", "-S", &s.path("admin.sock"), "show", "info"]);
    assert!(out.status.success(), "{out:?}");
    let info = text(&out.stdout);
    assert!(
        info.contains(&format!("Pid: {}\n", s.haproxy.pid())),
        "{info}"
    );
    // haproxy's own `;` separation goes through untouched.
    let out = hapmaster(&[
        "cli",
        "-S",
        &s.path("admin.sock"),
        "show version; show info",
    ]);
    let both = text(&out.stdout);
    assert!(both.contains("Pid: "), "{both}");
}

#[test]
fn reload_and_cli_without_a_master() {
    let dir = TestDir::new();
    let missing = dir.join("master.sock").display().to_string();
    for args in [
        vec!["reload", "-S", &missing],
        vec!["reload", "-S", &missing, "--timeout", "2s"],
        vec!["cli", "-S", &missing, "show", "proc"],
    ] {
        let out = hapmaster(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            err.contains(&format!(
                "no hapmaster is listening on {missing}: is it running (with -S {missing})?"
            )),
            "{err}"
        );
    }

    // A socket file whose listener is gone: the same message.
    let stale = dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = hapmaster(&["reload", "-S", &stale.display().to_string()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("no hapmaster is listening on"));

    // Usage errors: exit 2, and where to find help.
    let out = hapmaster(&["reload", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("hapmaster reload --help"));
    let out = hapmaster(&["getsocks", "--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("hapmaster getsocks PATH [--json]"));
}

#[test]
fn reload_against_something_that_is_not_a_master() {
    // A haproxy stats socket answers `reload` with an error, not Success=: exit 2.
    let s = Setup::start();
    let out = hapmaster(&["reload", "-S", &s.path("admin.sock"), "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text(&out.stderr).contains("without Success=1 or Success=0"),
        "{out:?}"
    );
}

#[test]
fn permission_denied_as_nobody() {
    if !common::is_root() {
        eprintln!("skipped: needs root (to run the client as nobody)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("master.sock");
    // The master's default: 0600, owned by root.
    let spec = hapmaster::control::spec::ControlSpec::new(path.clone());
    let _listener = hapmaster::control::spec::bind(&spec, None).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hapmaster"))
        .args([
            "reload",
            "-S",
            &path.display().to_string(),
            "--timeout",
            "2s",
        ])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("running hapmaster as nobody");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "hapmaster reload: permission denied on {}: connecting needs write permission on the \
             socket file",
            path.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("run this as root or as the master's user"),
        "{err}"
    );
}

#[test]
fn cli_exit_status_follows_haproxy_answers() {
    let s = Setup::start();
    let admin = s.path("admin.sock");
    // haproxy 2.6 answers "Unknown command. Please enter one of the following commands only:".
    for line in ["no_such_command", "show info; no_such_command"] {
        let out = hapmaster(&["cli", "-S", &admin, line]);
        assert_eq!(out.status.code(), Some(1), "{line}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!(
                "hapmaster cli: {admin} answered with an error: Unknown command"
            )),
            "{line}: {err}"
        );
    }
    let out = hapmaster(&["cli", "-S", &admin, "show info; show version"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn cli_refused_by_a_stats_socket_level() {
    let dir = TestDir::new();
    let cfg = dir.join("h.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket {d}/user.sock mode 600 level user\n\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 2s\n    \
             timeout server 2s\n\nfrontend fe\n    bind 127.0.0.1:{port}\n    \
             http-request return status 200\n",
            d = dir.path().display(),
            port = free_port()
        ),
    )
    .unwrap();
    let user = dir.join("user.sock");
    let mut haproxy = Haproxy::start(&["-db", "-f", cfg.to_str().unwrap()], dir.join("log"));
    haproxy.wait_ready(&user);
    let user = user.display().to_string();
    // A user-level socket may not disable a frontend: haproxy answers "Permission denied".
    let out = hapmaster(&["cli", "-S", &user, "disable frontend fe"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.starts_with(&format!("hapmaster cli: permission denied by {user}: ")),
        "{err}"
    );
    assert!(err.contains("level admin"), "{err}");
    assert!(
        text(&out.stdout).starts_with("Permission denied"),
        "{out:?}"
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SUBCOMMANDS: [&str; 3] = ["reload", "cli", "getsocks"];

#[test]
fn top_level_help_lists_the_subcommands() {
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = hapmaster(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        let text = stdout(&out);
        assert!(
            text.contains("Usage: hapmaster [-Ws|-W]"),
            "{args:?}: {text}"
        );
        for sub in SUBCOMMANDS {
            assert!(
                text.contains(&format!("hapmaster {sub} ")),
                "{args:?}: {sub} missing from:\n{text}"
            );
        }
        assert!(text.contains("hapmaster help [SUBCOMMAND]"), "{text}");
    }
}

#[test]
fn each_subcommand_has_its_own_usage() {
    for sub in SUBCOMMANDS {
        let own = format!("usage: hapmaster {sub} ");
        for args in [vec![sub, "--help"], vec![sub, "-h"], vec!["help", sub]] {
            let out = hapmaster(&args);
            assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
            let text = stdout(&out);
            assert!(text.starts_with(&own), "{args:?}: {text}");
            assert!(text.contains("Exit status:"), "{args:?}: {text}");
            for other in SUBCOMMANDS.iter().filter(|o| **o != sub) {
                assert!(
                    !text.contains(&format!("hapmaster {other} ")),
                    "{args:?} also describes {other}:\n{text}"
                );
            }
        }
    }
}

#[test]
fn help_of_an_unknown_subcommand_is_a_usage_error() {
    for args in [&["help", "restart"][..], &["help", "reload", "cli"]] {
        let out = hapmaster(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("reload, cli, getsocks"),
            "{args:?}: names the subcommands: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
}
