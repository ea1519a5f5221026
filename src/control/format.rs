//! Answers of the control socket and of `hapmaster getsocks`, formatted: pure, no I/O.
//!
//! None of these include the blank line that ends every CLI answer: the session adds it, as
//! haproxy's CLI does after each command.

use std::fmt::Write as _;
use std::time::Duration;

use crate::handoff::listeners::{Family, SocketInfo};
use crate::handoff::wire::Record;

/// One process of `show proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcRow {
    pub pid: i32,
    /// `"master"` or `"worker"`.
    pub kind: &'static str,
    /// Master: reload attempts since it started, failed ones included. Worker: reload attempts
    /// since it was started (0 for the worker a reload started), as haproxy counts them.
    pub reloads: u64,
    /// Master only: reloads failed in a row, 0 after a successful one (haproxy prints
    /// `<reloads> [failed: <n>]` on the master line); ignored for workers.
    pub failed_reloads: u64,
    pub uptime: Duration,
    /// The haproxy version the process runs; on the master's row, the version of the newest
    /// worker, as haproxy's master re-executed at its last reload would run.
    pub version: String,
}

/// haproxy's uptime shape: `0d00h01m02s`.
pub fn uptime(d: Duration) -> String {
    let up = d.as_secs();
    format!(
        "{}d{:02}h{:02}m{:02}s",
        up / 86_400,
        (up % 86_400) / 3_600,
        (up % 3_600) / 60,
        up % 60
    )
}

fn proc_line(out: &mut String, pid: i32, kind: &str, reloads: &str, row: &ProcRow, debug: bool) {
    let _ = write!(
        out,
        "{:<15} {:<15} {:<15} {:<15} {:<15}",
        pid,
        kind,
        reloads,
        uptime(row.uptime),
        row.version
    );
    debug_columns(out, debug, "-1", "-1");
}

/// `show proc debug`'s columns (haproxy 3.1+): a process's ends of haproxy's master-worker
/// socketpair. hapmaster keeps no such pair (it reaches a worker's CLI by its stats socket, one
/// connection per command): `-1`, as haproxy prints a closed end.
fn debug_columns(out: &mut String, debug: bool, first: &str, second: &str) {
    if debug {
        let _ = write!(out, "\t\t {first:<15} {second:<15}");
    }
    out.push('\n');
}

/// `show proc` exactly as haproxy 2.6's master CLI prints it (`cli_io_handler_show_proc`):
///
/// ```text
/// #<PID>          <type>          <reloads>       <uptime>        <version>
/// 4080            master          0 [failed: 0]   0d00h10m07s     2.6.12-1+deb12u4
/// # workers
/// 4085            worker          0               0d00h10m07s     2.6.12-1+deb12u4
/// # old workers
/// 4001            worker          1               0d00h20m00s     2.6.12-1+deb12u4
/// # programs
/// ```
///
/// Every column is padded to 15 characters (so lines carry trailing spaces where a value is
/// shorter); `# old workers` only appears when there are some; `# programs` (always empty:
/// hapmaster runs no programs) only with `programs`, for the haproxy versions that print it
/// (`Version::lists_programs`). `debug` (`show proc debug`, haproxy 3.1+): two more columns,
/// [`debug_columns`].
pub fn show_proc(
    master: &ProcRow,
    current: &[ProcRow],
    old: &[ProcRow],
    programs: bool,
    debug: bool,
) -> String {
    let mut out = format!(
        "#{:<14} {:<15} {:<15} {:<15} {:<15}",
        "<PID>", "<type>", "<reloads>", "<uptime>", "<version>"
    );
    debug_columns(&mut out, debug, "<ipc_fd[0]>", "<ipc_fd[1]>");
    let reloads = format!("{} [failed: {}]", master.reloads, master.failed_reloads);
    proc_line(&mut out, master.pid, master.kind, &reloads, master, debug);
    out.push_str("# workers\n");
    for w in current {
        proc_line(&mut out, w.pid, w.kind, &w.reloads.to_string(), w, debug);
    }
    if !old.is_empty() {
        out.push_str("# old workers\n");
        for w in old {
            proc_line(&mut out, w.pid, w.kind, &w.reloads.to_string(), w, debug);
        }
    }
    if programs {
        out.push_str("# programs\n");
    }
    out
}

/// Notes for the end of a `show proc` answer: each a `# ` comment line, which parsers of
/// haproxy's output skip like its section headers; a note's own line breaks become spaces.
pub fn comment_lines(notes: &[String]) -> String {
    let mut out = String::new();
    for note in notes {
        out.push_str("# ");
        out.extend(note.chars().map(|c| if c.is_control() { ' ' } else { c }));
        out.push('\n');
    }
    out
}

/// One held socket of `show listeners`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRow {
    /// `inet`, `inet6`, `unix` (see [`family_name`]).
    pub family: String,
    /// `stream`, `dgram`, `seqpacket` (see [`sock_type_name`]).
    pub sock_type: String,
    pub address: String,
    /// Empty when none.
    pub namespace: String,
    /// Empty when none.
    pub interface: String,
    pub inode: u64,
    /// Which worker uses it, e.g. `4242` (a pid) or `4242,4301`; empty when none.
    pub used_by: String,
}

impl ListenerRow {
    pub fn new(info: &SocketInfo, record: &Record, used_by: String) -> ListenerRow {
        ListenerRow {
            family: family_name(info.family),
            sock_type: sock_type_name(info.sock_type),
            address: info.local.clone(),
            namespace: String::from_utf8_lossy(&record.namespace).into_owned(),
            interface: String::from_utf8_lossy(&record.interface).into_owned(),
            inode: info.inode,
            used_by,
        }
    }
}

/// `inet`, `inet6`, `unix`, or `family<N>`.
pub fn family_name(family: Family) -> String {
    match family {
        Family::Inet => "inet".to_string(),
        Family::Inet6 => "inet6".to_string(),
        Family::Unix => "unix".to_string(),
        Family::Other(n) => format!("family{n}"),
    }
}

/// `stream`, `dgram`, `seqpacket`, `raw`, or `type<N>`.
pub fn sock_type_name(sock_type: i32) -> String {
    match sock_type {
        libc::SOCK_STREAM => "stream".to_string(),
        libc::SOCK_DGRAM => "dgram".to_string(),
        libc::SOCK_SEQPACKET => "seqpacket".to_string(),
        libc::SOCK_RAW => "raw".to_string(),
        n => format!("type{n}"),
    }
}

/// One field of a whitespace-separated line: never empty, never containing whitespace.
///
/// An empty value is `-`; a value that is `-` itself is `\x2d`; backslash, space, control
/// characters and other ASCII whitespace are written `\xNN` (a backslash is `\x5c`). Anything
/// else, UTF-8 included, is kept.
pub fn field(value: &str) -> String {
    if value.is_empty() {
        return "-".to_string();
    }
    if value == "-" {
        return "\\x2d".to_string();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' || c.is_whitespace() || c.is_control() {
            if (c as u32) < 0x80 {
                let _ = write!(out, "\\x{:02x}", c as u32);
            } else {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `show listeners`: a header, then one line per held socket, fields separated by one space,
/// in this fixed order:
///
/// ```text
/// # family type address namespace interface inode used_by
/// inet stream 127.0.0.1:8080 - - 183942 4242
/// unix stream /run/haproxy/admin.sock.4242.tmp - - 183950 4242
/// ```
///
/// Every field goes through [`field`]: an empty one is `-`, and none contains whitespace, so
/// `awk '{print $3}'` is the address. New columns, if any, will only ever be appended.
pub fn show_listeners(rows: &[ListenerRow]) -> String {
    let mut out = String::from("# family type address namespace interface inode used_by\n");
    for r in rows {
        let _ = writeln!(
            out,
            "{} {} {} {} {} {} {}",
            field(&r.family),
            field(&r.sock_type),
            field(&r.address),
            field(&r.namespace),
            field(&r.interface),
            r.inode,
            field(&r.used_by)
        );
    }
    out
}

/// One socket received by `hapmaster getsocks`, in the order it arrived (the sender's fd order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketRow {
    pub index: usize,
    pub family: String,
    pub sock_type: String,
    pub address: String,
    pub namespace: String,
    pub interface: String,
    /// The record's option bits (non-zero only from haproxy 1.8 – 2.2 senders).
    pub options: u32,
    pub inode: u64,
}

impl SocketRow {
    pub fn new(index: usize, info: &SocketInfo, record: &Record) -> SocketRow {
        SocketRow {
            index,
            family: family_name(info.family),
            sock_type: sock_type_name(info.sock_type),
            address: info.local.clone(),
            namespace: String::from_utf8_lossy(&record.namespace).into_owned(),
            interface: String::from_utf8_lossy(&record.interface).into_owned(),
            options: record.options_u32(),
            inode: info.inode,
        }
    }
}

/// The table `hapmaster getsocks` prints: a `#` header, then one line per socket, columns
/// aligned with spaces; fields as in [`field`] (no whitespace, `-` for none); options in hex.
///
/// ```text
/// #index family type   address               namespace interface options    inode
/// 0      inet   stream 127.0.0.1:8080        -         -         0x00000000 183942
/// ```
pub fn getsocks_table(rows: &[SocketRow]) -> String {
    let header = [
        "#index",
        "family",
        "type",
        "address",
        "namespace",
        "interface",
        "options",
        "inode",
    ];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.index.to_string(),
                field(&r.family),
                field(&r.sock_type),
                field(&r.address),
                field(&r.namespace),
                field(&r.interface),
                format!("{:#010x}", r.options),
                r.inode.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header: [String; 8] = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&cells) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push(' ');
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON string literal of `s`, quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_string(s: &str) -> String {
    if s.is_empty() {
        "null".to_string()
    } else {
        json_string(s)
    }
}

/// `hapmaster getsocks --json`: one object, `{"sockets": [...]}`, one socket per line:
///
/// ```text
/// {"sockets": [
///   {"index": 0, "family": "inet", "type": "stream", "address": "127.0.0.1:8080", "namespace": null, "interface": null, "options": 0, "inode": 183942}
/// ]}
/// ```
///
/// `namespace` and `interface` are `null` when none; `options` is a number.
pub fn getsocks_json(rows: &[SocketRow]) -> String {
    let mut out = String::from("{\"sockets\": [");
    for (i, r) in rows.iter().enumerate() {
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        let _ = write!(
            out,
            "  {{\"index\": {}, \"family\": {}, \"type\": {}, \"address\": {}, \
             \"namespace\": {}, \"interface\": {}, \"options\": {}, \"inode\": {}}}",
            r.index,
            json_string(&r.family),
            json_string(&r.sock_type),
            json_string(&r.address),
            json_opt_string(&r.namespace),
            json_opt_string(&r.interface),
            r.options,
            r.inode
        );
    }
    if !rows.is_empty() {
        out.push('\n');
    }
    out.push_str("]}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: i32, kind: &'static str, reloads: u64, secs: u64) -> ProcRow {
        ProcRow {
            pid,
            kind,
            reloads,
            failed_reloads: 0,
            uptime: Duration::from_secs(secs),
            version: "2.6.12-1+deb12u4".to_string(),
        }
    }

    #[test]
    fn uptimes() {
        assert_eq!(uptime(Duration::ZERO), "0d00h00m00s");
        assert_eq!(uptime(Duration::from_millis(62_999)), "0d00h01m02s");
        assert_eq!(
            uptime(Duration::from_secs(86_400 + 3_600 + 61)),
            "1d01h01m01s"
        );
        assert_eq!(
            uptime(Duration::from_secs(400 * 86_400 + 86_399)),
            "400d23h59m59s"
        );
    }

    #[test]
    fn show_proc_matches_haproxy_2_6() {
        // Captured from Debian's haproxy 2.6.12 master CLI (`haproxy -W -S`), minus the
        // blank line that ends every CLI answer.
        let master = ProcRow {
            failed_reloads: 0,
            ..row(4080, "master", 0, 607)
        };
        let out = show_proc(&master, &[row(4085, "worker", 0, 607)], &[], true, false);
        assert_eq!(
            out,
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
             4080            master          0 [failed: 0]   0d00h10m07s     2.6.12-1+deb12u4\n\
             # workers\n\
             4085            worker          0               0d00h10m07s     2.6.12-1+deb12u4\n\
             # programs\n"
        );
    }

    #[test]
    fn show_proc_with_old_workers_and_short_version() {
        let master = ProcRow {
            version: "0.1.0".to_string(),
            reloads: 3,
            failed_reloads: 1,
            ..row(1, "master", 0, 3_723)
        };
        let old = [row(200, "worker", 1, 125), row(150, "worker", 2, 3_000)];
        let out = show_proc(&master, &[row(300, "worker", 0, 5)], &old, true, false);
        assert_eq!(
            out,
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \n\
             1               master          3 [failed: 1]   0d01h02m03s     0.1.0          \n\
             # workers\n\
             300             worker          0               0d00h00m05s     2.6.12-1+deb12u4\n\
             # old workers\n\
             200             worker          1               0d00h02m05s     2.6.12-1+deb12u4\n\
             150             worker          2               0d00h50m00s     2.6.12-1+deb12u4\n\
             # programs\n"
        );
        // No worker at all (between a crash and its replacement).
        let out = show_proc(&master, &[], &[], true, false);
        assert!(out.ends_with("\n# workers\n# programs\n"), "{out}");
        // haproxy 3.1 and later: no programs section without programs.
        let out = show_proc(&master, &[row(300, "worker", 0, 5)], &old, false, false);
        assert!(out.ends_with("0d00h50m00s     2.6.12-1+deb12u4\n"), "{out}");
        assert!(!out.contains("programs"), "{out}");
    }

    /// tests/transcripts/3.4.0-64a335366/show_proc_debug.txt, its fds aside (haproxy's master
    /// printed `6 7` and `4 -1`: its socketpairs).
    #[test]
    fn show_proc_debug_columns() {
        let version = "3.4.0-64a335366";
        let with = |r: ProcRow| ProcRow {
            version: version.to_string(),
            ..r
        };
        let master = with(row(17421, "master", 0, 0));
        let out = show_proc(
            &master,
            &[with(row(17423, "worker", 0, 0))],
            &[],
            false,
            true,
        );
        assert_eq!(
            out,
            "#<PID>          <type>          <reloads>       <uptime>        <version>      \t\t <ipc_fd[0]>     <ipc_fd[1]>    \n\
             17421           master          0 [failed: 0]   0d00h00m00s     3.4.0-64a335366\t\t -1              -1             \n\
             # workers\n\
             17423           worker          0               0d00h00m00s     3.4.0-64a335366\t\t -1              -1             \n"
        );
    }

    #[test]
    fn comments_are_one_line_each() {
        assert_eq!(comment_lines(&[]), "");
        assert_eq!(
            comment_lines(&["a\nb".to_string(), "c".to_string()]),
            "# a b\n# c\n"
        );
    }

    #[test]
    fn fields() {
        assert_eq!(field(""), "-");
        assert_eq!(field("-"), "\\x2d");
        assert_eq!(field("--"), "--");
        assert_eq!(field("/run/my dir/s"), "/run/my\\x20dir/s");
        assert_eq!(field("a\\b"), "a\\x5cb");
        assert_eq!(field("a\tb\nc"), "a\\x09b\\x0ac");
        assert_eq!(field("wörld"), "wörld");
        assert_eq!(field("a\u{85}b"), "a\\u{85}b");
        assert_eq!(field("@abs\\x00"), "@abs\\x5cx00");
    }

    #[test]
    fn show_listeners_shape() {
        let rows = [
            ListenerRow {
                family: "inet".into(),
                sock_type: "stream".into(),
                address: "127.0.0.1:8080".into(),
                namespace: String::new(),
                interface: String::new(),
                inode: 183942,
                used_by: "4242".into(),
            },
            ListenerRow {
                family: "inet6".into(),
                sock_type: "dgram".into(),
                address: "[::]:443".into(),
                namespace: "blue".into(),
                interface: "eth0".into(),
                inode: 7,
                used_by: "4242,4301".into(),
            },
            ListenerRow {
                family: "unix".into(),
                sock_type: "stream".into(),
                address: "/run/my dir/a.sock.4242.tmp".into(),
                namespace: String::new(),
                interface: String::new(),
                inode: 9,
                used_by: String::new(),
            },
        ];
        assert_eq!(
            show_listeners(&rows),
            "# family type address namespace interface inode used_by\n\
             inet stream 127.0.0.1:8080 - - 183942 4242\n\
             inet6 dgram [::]:443 blue eth0 7 4242,4301\n\
             unix stream /run/my\\x20dir/a.sock.4242.tmp - - 9 -\n"
        );
        assert_eq!(
            show_listeners(&[]),
            "# family type address namespace interface inode used_by\n"
        );
    }

    fn sock(index: usize, address: &str, ns: &str, options: u32) -> SocketRow {
        SocketRow {
            index,
            family: if address.starts_with('/') {
                "unix"
            } else {
                "inet"
            }
            .into(),
            sock_type: "stream".into(),
            address: address.into(),
            namespace: ns.into(),
            interface: String::new(),
            options,
            inode: 1000 + index as u64,
        }
    }

    #[test]
    fn getsocks_table_shape() {
        let rows = [
            sock(0, "127.0.0.1:8080", "", 0),
            sock(1, "/tmp/hm/stats.sock.77.tmp", "blue", 0x404),
        ];
        assert_eq!(
            getsocks_table(&rows),
            "#index family type   address                   namespace interface options    inode\n\
             0      inet   stream 127.0.0.1:8080            -         -         0x00000000 1000\n\
             1      unix   stream /tmp/hm/stats.sock.77.tmp blue      -         0x00000404 1001\n"
        );
        assert_eq!(
            getsocks_table(&[]),
            "#index family type address namespace interface options inode\n"
        );
    }

    #[test]
    fn json_strings() {
        assert_eq!(json_string("plain"), "\"plain\"");
        assert_eq!(json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(
            json_string("\n\r\t\u{1}\u{7f}"),
            "\"\\n\\r\\t\\u0001\\u007f\""
        );
        assert_eq!(json_string("wörld"), "\"wörld\"");
    }

    #[test]
    fn getsocks_json_shape() {
        let rows = [
            sock(0, "127.0.0.1:8080", "", 0),
            sock(1, "/a \"b\"", "ns", 4),
        ];
        assert_eq!(
            getsocks_json(&rows),
            "{\"sockets\": [\n  \
             {\"index\": 0, \"family\": \"inet\", \"type\": \"stream\", \"address\": \"127.0.0.1:8080\", \"namespace\": null, \"interface\": null, \"options\": 0, \"inode\": 1000},\n  \
             {\"index\": 1, \"family\": \"unix\", \"type\": \"stream\", \"address\": \"/a \\\"b\\\"\", \"namespace\": \"ns\", \"interface\": null, \"options\": 4, \"inode\": 1001}\n\
             ]}\n"
        );
        assert_eq!(getsocks_json(&[]), "{\"sockets\": []}\n");
    }

    #[test]
    fn names() {
        assert_eq!(family_name(Family::Inet6), "inet6");
        assert_eq!(family_name(Family::Other(42)), "family42");
        assert_eq!(sock_type_name(libc::SOCK_DGRAM), "dgram");
        assert_eq!(sock_type_name(99), "type99");
    }
}
