//! End-to-end with Debian's stock /etc/haproxy/haproxy.cfg (chroot, user/group haproxy, `daemon`,
//! its own `stats socket`), plus one frontend: hapmaster must run it as shipped.
mod common;

use common::*;
use std::fs;

const DEBIAN_CFG: &str = "/etc/haproxy/haproxy.cfg";

/// Debian's config with its stats socket moved to `sock` and a frontend on 127.0.0.1:`port` appended.
fn adapt(stock: &str, sock: &std::path::Path, port: u16) -> String {
    let mut out = String::new();
    let mut moved = 0;
    for line in stock.lines() {
        let t = line.trim_start();
        if t.starts_with("stats socket ") {
            let rest: Vec<&str> = t.split_whitespace().skip(3).collect();
            let indent = &line[..line.len() - t.len()];
            out.push_str(&format!(
                "{indent}stats socket {} {}\n",
                sock.display(),
                rest.join(" ")
            ));
            moved += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(moved, 1, "expected one `stats socket` line in {DEBIAN_CFG}");
    out.push_str(&format!(
        "\nfrontend e2e\n    bind 127.0.0.1:{port}\n    \
         http-request return status 200 content-type text/plain string \"hello from haproxy\\n\"\n"
    ));
    out
}

#[test]
fn debian_stock_config_reloads() {
    if !is_root() {
        eprintln!("skipped: needs root (Debian's config chroots and switches to user haproxy)");
        return;
    }
    let stock = fs::read_to_string(DEBIAN_CFG)
        .unwrap_or_else(|e| panic!("{DEBIAN_CFG}: {e} (apt-get install haproxy)"));
    for k in ["chroot", "user haproxy", "daemon"] {
        assert!(
            stock.contains(k),
            "{DEBIAN_CFG} no longer has `{k}`: update this test"
        );
    }
    let dir = TestDir::new();
    let port = free_port();
    let admin = dir.join("admin.sock");
    let cfg = adapt(&stock, &admin, port);
    let mut hm = Hapmaster::start_in(dir, cfg, &[]);
    let mut worker = hm.wait_serving(EVENT);
    let master = hm.pid();
    let target = format!("127.0.0.1:{port}");
    assert_eq!(http_get(target.as_str()).unwrap(), HELLO);
    let inode = tcp4_listen_inodes(port);
    assert_eq!(inode.len(), 1);
    let admin_inode = unix_listen_inodes(&admin);
    assert_eq!(
        admin_inode.len(),
        1,
        "Debian's stats socket (moved to {})",
        admin.display()
    );
    // The worker dropped privileges as the config says.
    let uid = fs::read_to_string(format!("/proc/{worker}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
        .unwrap();
    assert_ne!(
        uid, "0",
        "worker {worker} runs as root despite `user haproxy`"
    );

    for i in 1..=2 {
        hm.signal(SIGUSR2);
        hm.wait_notify(is_reloading, EVENT);
        let d = hm.wait_notify(|d| has_line(d, "READY=1"), EVENT);
        assert!(is_serving(&d), "reload {i}: {d:?}");
        let new = worker_pid_in(&d).unwrap();
        assert_ne!(new, worker, "reload {i}: same worker");
        worker = new;
        assert_eq!(
            tcp4_listen_inodes(port),
            inode,
            "reload {i}: listener changed"
        );
        assert_eq!(
            unix_listen_inodes(&admin),
            admin_inode,
            "reload {i}: stats socket changed"
        );
        assert_eq!(http_get(target.as_str()).unwrap(), HELLO, "reload {i}");
    }
    assert_eq!(hm.pid(), master);
    let status = hm.stop();
    assert!(status.success(), "exit status {status}");
    assert!(hm.live_reported_workers().is_empty());
    assert!(tcp4_listen_inodes(port).is_empty());
}
