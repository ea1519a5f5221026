//! A plain haproxy process started by a test (no hapmaster): started with its output in a log
//! file, waited for on its stats socket, and SIGTERMed (SIGKILLed if need be) and reaped by its
//! pid when dropped, whatever the test did.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{haproxy_path, poll_until, EVENT};

const STARTUP: Duration = EVENT;

pub struct Haproxy {
    child: Child,
    log: PathBuf,
}

impl Haproxy {
    pub fn start(args: &[&str], log: PathBuf) -> Haproxy {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(haproxy_path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning haproxy");
        Haproxy { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the stats socket until this process answers `show info` with its own pid.
    pub fn wait_ready(&mut self, stats: &Path) {
        let want = format!("Pid: {}\n", self.pid());
        let ready = poll_until(STARTUP, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "haproxy exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            show_info(stats).filter(|i| i.contains(&want))
        });
        assert!(
            ready.is_some(),
            "haproxy {} did not answer on {} within {STARTUP:?}:\n{}",
            self.pid(),
            stats.display(),
            self.output()
        );
    }

    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let exited = poll_until(EVENT, || self.child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// haproxy's `show info` on a stats socket, or None if it does not answer within 5 s (callers poll).
pub fn show_info(stats: &Path) -> Option<String> {
    let mut conn = UnixStream::connect(stats).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(b"show info\n").ok()?;
    let mut info = String::new();
    conn.read_to_string(&mut info).ok()?;
    Some(info)
}
