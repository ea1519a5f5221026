//! The `log` backend: haproxy-style lines on stderr, or sd-daemon priority prefixes when stderr
//! is the journal. The master's lines go through `crate::stderr_buffer`, which never waits for
//! a reader once [`make_stderr_nonblocking`] was called.
//!
//! Hand-written because no logging crate produces haproxy's `[NOTICE]   (pid) : text` layout,
//! and operators grep for it alongside the workers' own messages on the same stderr.

use std::ffi::OsStr;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where a line goes decides its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `[NOTICE]   (1234) : text`, as haproxy prints.
    Haproxy,
    /// `<5>text`: journald reads the priority and adds the pid and timestamp itself.
    Journal,
}

/// `-q` keeps warnings and alerts; `-V` shows debug. Like haproxy, `-V` wins over `-q`.
pub fn level_for(quiet: bool, verbose: bool) -> LevelFilter {
    if verbose {
        LevelFilter::Debug
    } else if quiet {
        LevelFilter::Warn
    } else {
        LevelFilter::Info
    }
}

/// haproxy's label for a level, padded to 11 columns so that the pids line up.
fn tag(level: Level) -> &'static str {
    match level {
        Level::Error => "[ALERT]    ",
        Level::Warn => "[WARNING]  ",
        Level::Info => "[NOTICE]   ",
        Level::Debug | Level::Trace => "[DEBUG]    ",
    }
}

/// sd-daemon(3) priority: LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_DEBUG.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 5,
        Level::Debug | Level::Trace => 7,
    }
}

/// The bytes written for one record. A multi-line message gets the prefix on every line, so
/// that journald keeps the priority of each and a reader of stderr sees who wrote it.
pub fn format_record(style: Style, level: Level, pid: u32, text: &str) -> Vec<u8> {
    let text = text.trim_end_matches('\n');
    let mut out = String::with_capacity(text.len() + 24);
    for line in text.split('\n') {
        match style {
            Style::Haproxy => {
                out.push_str(tag(level));
                out.push_str(&format!("({pid}) : "));
            }
            Style::Journal => out.push_str(&format!("<{}>", priority(level))),
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into_bytes()
}

/// Parses `JOURNAL_STREAM` (`<device>:<inode>`, both decimal), as set by systemd.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Journal style only if stderr is still the stream systemd connected: `JOURNAL_STREAM` is
/// inherited by anything we start, even after stderr was redirected elsewhere.
pub fn style_for(journal_stream: Option<&OsStr>, stderr_dev_ino: Option<(u64, u64)>) -> Style {
    let expected = journal_stream
        .and_then(OsStr::to_str)
        .and_then(parse_journal_stream);
    match (expected, stderr_dev_ino) {
        (Some(e), Some(actual)) if e == actual => Style::Journal,
        _ => Style::Haproxy,
    }
}

// dev_t and ino_t are u64 on Linux today, but not by definition.
#[allow(clippy::unnecessary_cast)]
fn stderr_dev_ino() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr()).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

struct StderrLogger {
    style: Style,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // `set_max_level` is the one switch, so a later `init` can change it.
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // The pid is read now: the master may have daemonized since `init`.
        let line = format_record(
            self.style,
            record.level(),
            std::process::id(),
            &record.args().to_string(),
        );
        crate::stderr_buffer::write(&line, crate::stderr_buffer::Origin::Master);
    }

    fn flush(&self) {}
}

fn current_style() -> Style {
    style_for(
        std::env::var_os("JOURNAL_STREAM").as_deref(),
        stderr_dev_ino(),
    )
}

/// Installs the logger. A second call (tests, re-init) keeps the first logger's style but takes
/// the new level.
pub fn init(level: LevelFilter) {
    let style = current_style();
    let _ = log::set_boxed_logger(Box::new(StderrLogger { style }));
    log::set_max_level(level);
}

/// The master's stderr is written without waiting from now on (see `crate::stderr_buffer`);
/// its drop notices look like the master's other warnings.
pub fn make_stderr_nonblocking() {
    let style = current_style();
    let notice =
        Box::new(move |text: &str| format_record(style, Level::Warn, std::process::id(), text));
    if let Some(note) = crate::stderr_buffer::make_nonblocking(notice) {
        log::debug!("{note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(style: Style, level: Level, text: &str) -> String {
        String::from_utf8(format_record(style, level, 1234, text)).unwrap()
    }

    #[test]
    fn haproxy_style_lines() {
        assert_eq!(
            s(Style::Haproxy, Level::Info, "New worker (8) forked"),
            "[NOTICE]   (1234) : New worker (8) forked\n"
        );
        assert_eq!(
            s(Style::Haproxy, Level::Error, "x"),
            "[ALERT]    (1234) : x\n"
        );
        assert_eq!(
            s(Style::Haproxy, Level::Warn, "x"),
            "[WARNING]  (1234) : x\n"
        );
        assert_eq!(
            s(Style::Haproxy, Level::Debug, "x"),
            "[DEBUG]    (1234) : x\n"
        );
        assert_eq!(
            s(Style::Haproxy, Level::Trace, "x"),
            "[DEBUG]    (1234) : x\n"
        );
        for level in [Level::Error, Level::Warn, Level::Info, Level::Debug] {
            assert_eq!(tag(level).len(), 11);
        }
    }

    #[test]
    fn journal_style_lines() {
        assert_eq!(s(Style::Journal, Level::Error, "boom"), "<3>boom\n");
        assert_eq!(s(Style::Journal, Level::Warn, "w"), "<4>w\n");
        assert_eq!(s(Style::Journal, Level::Info, "n"), "<5>n\n");
        assert_eq!(s(Style::Journal, Level::Debug, "d"), "<7>d\n");
        assert_eq!(s(Style::Journal, Level::Trace, "t"), "<7>t\n");
    }

    #[test]
    fn multi_line_and_trailing_newlines() {
        assert_eq!(s(Style::Journal, Level::Warn, "a\nb\n"), "<4>a\n<4>b\n");
        assert_eq!(
            s(Style::Haproxy, Level::Info, "a\nb"),
            "[NOTICE]   (1234) : a\n[NOTICE]   (1234) : b\n"
        );
        assert_eq!(s(Style::Journal, Level::Info, ""), "<5>\n");
    }

    #[test]
    fn levels() {
        assert_eq!(level_for(false, false), LevelFilter::Info);
        assert_eq!(level_for(true, false), LevelFilter::Warn);
        assert_eq!(level_for(false, true), LevelFilter::Debug);
        assert_eq!(level_for(true, true), LevelFilter::Debug);
    }

    #[test]
    fn journal_stream_detection() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream("812345"), None);
        let js = OsStr::new("8:12345");
        assert_eq!(style_for(Some(js), Some((8, 12345))), Style::Journal);
        assert_eq!(style_for(Some(js), Some((8, 99))), Style::Haproxy);
        assert_eq!(style_for(Some(js), None), Style::Haproxy);
        assert_eq!(style_for(None, Some((8, 12345))), Style::Haproxy);
        assert_eq!(
            style_for(Some(OsStr::new("garbage")), Some((8, 12345))),
            Style::Haproxy
        );
    }

    #[test]
    fn init_twice_does_not_panic() {
        init(LevelFilter::Info);
        init(LevelFilter::Debug);
        assert_eq!(log::max_level(), LevelFilter::Debug);
    }
}
