//! Ports.

use std::fs;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The kernel's ephemeral port range (`ip_local_port_range`), from which every client
/// connection (the load generators' tens of thousands a second included) takes its local port.
fn ephemeral_range() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Ports the tests listen on, outside the ephemeral range: a port picked by binding port 0 comes
/// from that range, and a client connection of a concurrent test can take it as its local port
/// before haproxy binds it (seen: "cannot bind socket (Address already in use)"). Each port is
/// handed out once per test process; the start is spread by pid so that concurrent test
/// processes rarely meet.
fn next_candidate() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let (lo, hi) = ephemeral_range();
    let (first, last) = if lo > 11_000 {
        (10_000u16, lo - 1)
    } else {
        (hi.saturating_add(1).max(10_000), 65_000)
    };
    let span = usize::from(last - first) + 1;
    let _ = NEXT.compare_exchange(
        usize::MAX,
        (std::process::id() as usize * 7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    first + (n % span) as u16
}

/// A TCP port outside the ephemeral range that was free on both 127.0.0.1 and ::1 a moment ago,
/// with nothing listening on it at any other address either (the tests count a port's listeners
/// in /proc/net/tcp*, whatever their address: another job's benchmark on 127.0.0.201 would be
/// counted), not handed out before by this process.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = next_candidate();
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok()
            && super::listening::tcp_listen_inodes(port).is_empty()
        {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1 after 1000 tries");
}

/// `n` distinct ports, each as [`free_port`].
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}
