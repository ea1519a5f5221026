//! sd_notify datagrams.

/// The value of `KEY=` in a notify datagram (fields are separated by `\n`).
pub fn notify_field<'a>(dgram: &'a str, key: &str) -> Option<&'a str> {
    dgram
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

pub fn has_line(dgram: &str, line: &str) -> bool {
    dgram.lines().any(|l| l == line)
}

/// The pid after `worker pid ` in a datagram's `STATUS=` (the last one, if several).
pub fn worker_pid_in(dgram: &str) -> Option<u32> {
    let status = notify_field(dgram, "STATUS")?;
    let (_, rest) = status.rsplit_once("worker pid ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The generation after `generation ` in a datagram's `STATUS=`.
pub fn generation_in(dgram: &str) -> Option<u64> {
    let status = notify_field(dgram, "STATUS")?;
    let (_, rest) = status.rsplit_once("generation ")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// `READY=1` with `STATUS=Serving: worker pid ...`: a worker is (again) the current one.
pub fn is_serving(dgram: &str) -> bool {
    has_line(dgram, "READY=1")
        && notify_field(dgram, "STATUS").is_some_and(|s| s.starts_with("Serving"))
        && worker_pid_in(dgram).is_some()
}

pub fn is_reloading(dgram: &str) -> bool {
    has_line(dgram, "RELOADING=1")
}

pub fn is_reload_failed(dgram: &str) -> bool {
    notify_field(dgram, "STATUS").is_some_and(|s| s.starts_with("Reload failed"))
}
