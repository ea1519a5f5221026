//! Takes the listening sockets of a haproxy (a `stats socket ... expose-fd listeners`) or of a
//! hapmaster control socket, says what each one is, and closes them. Uses only hapmaster's
//! public library API.
//!
//! ```sh
//! cargo run --example getsocks -- /run/haproxy/admin.sock
//! ```

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hapmaster::handoff::fetch::{fetch_sockets, FetchError};
use hapmaster::handoff::listeners::SocketInfo;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: getsocks <path of a stats socket with expose-fd listeners>");
        return ExitCode::from(2);
    };
    let sockets = match fetch_sockets(&path, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e @ FetchError::NothingExported { .. }) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("{} received {} sockets:", path.display(), sockets.len());
    for (i, socket) in sockets.iter().enumerate() {
        let what = match SocketInfo::of(socket.fd.as_fd()) {
            Ok(info) => info.to_string(),
            Err(e) => format!("cannot describe: {e}"),
        };
        let ns = String::from_utf8_lossy(&socket.record.namespace);
        let iface = String::from_utf8_lossy(&socket.record.interface);
        println!(
            "  {i}: {what}; namespace {:?}, interface {:?}, options {:#x}",
            ns,
            iface,
            socket.record.options_u32()
        );
    }
    // Dropping the sockets closes our copies; the sender keeps listening.
    drop(sockets);
    ExitCode::SUCCESS
}
