//! The few fields of `/proc/PID/stat` the master needs: a process's state, parent and start time.

use std::fs;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `Z`...
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 22, in clock ticks since boot: with the pid, it names one process for good.
    pub starttime: u64,
}

impl Stat {
    /// `pid`'s fields now; None once it is gone (or /proc is not there).
    pub fn of(pid: i32) -> Option<Stat> {
        parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// A zombie or dead process: its fds are closed, only its pid is left.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The command name (field 2) is in parentheses and may hold spaces and parentheses: fields
/// count from the last `)`.
pub fn parse(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        starttime: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let line = "4242 (hap (x) y) S 1 4242 4242 0 -1 4194560 370 0 0 0 1 2 0 0 20 0 3 0 \
                    987654 25088000 1234 18446744073709551615 1 1 0 0 0 0 0 4096 16386 0 0 0 17 \
                    1 0 0 0 0 0";
        let stat = parse(line).unwrap();
        assert_eq!((stat.state, stat.ppid, stat.starttime), ('S', 1, 987654));
        assert!(!stat.is_dead());
        assert_eq!(parse("1 (a) Z 0"), None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn our_own() {
        let stat = Stat::of(std::process::id() as i32).unwrap();
        // The main thread: running, or sleeping while tests run.
        assert!(matches!(stat.state, 'R' | 'S'), "{}", stat.state);
        assert_eq!(stat.ppid as u32, std::os::unix::process::parent_id());
        assert!(stat.starttime > 0);
    }
}
