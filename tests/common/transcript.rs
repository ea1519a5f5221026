//! haproxy's own master CLI, captured (tests/transcripts/<version>/, see its README): where a
//! test finds the transcript of the haproxy it runs, and the normalization that makes
//! hapmaster's answers comparable with it byte for byte (a port of `capture.py`'s `normalize`:
//! same placeholders, same column-width rule).

use std::path::PathBuf;
use std::process::Command;

/// `tests/transcripts/<version>/` for the haproxy the tests run (`haproxy -v`'s version word);
/// panics, saying how to capture it, if there is none.
pub fn transcript_dir() -> PathBuf {
    let haproxy = super::haproxy_path();
    let out = Command::new(&haproxy)
        .arg("-v")
        .output()
        .unwrap_or_else(|e| panic!("running {} -v: {e}", haproxy.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix("HAProxy version ")
                .or_else(|| l.trim_start().strip_prefix("HA-Proxy version "))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in `{} -v`: {text}", haproxy.display()));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/transcripts")
        .join(version);
    assert!(
        dir.is_dir(),
        "no transcript of haproxy {version} in {}: capture it with \
         tests/transcripts/capture.sh {}",
        dir.display(),
        haproxy.display()
    );
    dir
}

/// `<transcript dir>/<name>`, e.g. `show_proc_start.norm`.
pub fn transcript(name: &str) -> String {
    let path = transcript_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The substitutions of one run: each raw value (a pid, a port, the temporary directory) and
/// its placeholder (`@PID_MASTER@`, `@PID_W1@`, `@PORT_FE@`, `@TMP@`, ...), plus the fixed rules
/// (uptimes, pointers, startup-log pids, the host name).
#[derive(Clone, Debug, Default)]
pub struct Normalizer {
    subst: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Normalizer {
    pub fn new() -> Normalizer {
        Normalizer::default()
    }

    /// `raw` (not part of a longer number) becomes `placeholder`.
    pub fn add(&mut self, raw: impl ToString, placeholder: &str) -> &mut Normalizer {
        let raw = raw.to_string();
        if !raw.is_empty() {
            self.subst
                .push((raw.into_bytes(), placeholder.as_bytes().to_vec()));
        }
        self
    }

    pub fn normalize(&self, data: &str) -> String {
        let mut out = data.as_bytes().to_vec();
        let mut subst = self.subst.clone();
        subst.sort_by_key(|(raw, _)| std::cmp::Reverse(raw.len()));
        for (raw, placeholder) in &subst {
            out = replace(&out, |d, i| {
                let digit = |j: usize| d.get(j).is_some_and(u8::is_ascii_digit);
                let hit =
                    d[i..].starts_with(raw) && !(i > 0 && digit(i - 1)) && !digit(i + raw.len());
                hit.then(|| padded(d, i, raw.len(), placeholder))
            });
        }
        out = replace(&out, |d, i| {
            uptime_len(d, i).map(|len| padded(d, i, len, b"@UPTIME@"))
        });
        out = replace(&out, |d, i| {
            timed_stamp_len(d, i).map(|len| (len, b"[@UPTIME@] ".to_vec()))
        });
        out = replace(&out, |d, i| {
            let hex = d[i..].strip_prefix(b"0x")?;
            let n = count(hex, |b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            (n >= 6).then(|| (2 + n, b"@PTR@".to_vec()))
        });
        out = replace(&out, |d, i| {
            let key = b"HAPROXY_LOCALPEER=";
            let rest = d[i..].strip_prefix(key.as_slice())?;
            let n = count(rest, |b| b != b'\n');
            Some((key.len() + n, b"HAPROXY_LOCALPEER=@HOST@".to_vec()))
        });
        out = replace(&out, |d, i| {
            let rest = d[i..].strip_prefix(b"(")?;
            let n = count(rest, |b| b.is_ascii_digit());
            (n >= 2 && rest.get(n) == Some(&b')')).then(|| (n + 2, b"(@PID@)".to_vec()))
        });
        String::from_utf8(out).expect("normalizing keeps UTF-8")
    }
}

/// Like `re.sub`: left to right, each match (its length, its replacement) replaced, matching
/// again after it.
fn replace(data: &[u8], at: impl Fn(&[u8], usize) -> Option<(usize, Vec<u8>)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        match at(data, i) {
            Some((len, with)) if len > 0 => {
                out.extend_from_slice(&with);
                i += len;
            }
            _ => {
                out.push(data[i]);
                i += 1;
            }
        }
    }
    out
}

fn count(bytes: &[u8], pred: impl Fn(u8) -> bool) -> usize {
    bytes.iter().take_while(|b| pred(**b)).count()
}

/// The value at `i` (`len` bytes) and the spaces after it, replaced by `placeholder` padded to
/// the same total width (at least one space) when spaces followed: a fixed-width column.
fn padded(d: &[u8], i: usize, len: usize, placeholder: &[u8]) -> (usize, Vec<u8>) {
    let spaces = count(&d[i + len..], |b| b == b' ');
    let mut with = placeholder.to_vec();
    if spaces > 0 {
        let width = len + spaces;
        with.resize(
            placeholder.len() + width.saturating_sub(placeholder.len()).max(1),
            b' ',
        );
    }
    (len + spaces, with)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `\b\d+d\d\dh\d\dm\d\ds\b`: `show proc`'s uptime.
fn uptime_len(d: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_word(d[i - 1]) {
        return None;
    }
    let days = count(&d[i..], |b| b.is_ascii_digit());
    if days == 0 {
        return None;
    }
    let mut j = i + days;
    for unit in [b'd', b'h', b'm'] {
        if d.get(j) != Some(&unit) {
            return None;
        }
        j += 1;
        if count(&d[j..], |b| b.is_ascii_digit()) < 2 {
            return None;
        }
        j += 2;
    }
    (d.get(j) == Some(&b's') && !d.get(j + 1).is_some_and(|b| is_word(*b))).then_some(j + 1 - i)
}

/// `\[\d+:\d\d:\d\d:\d\d\] `: a `prompt timed` stamp.
fn timed_stamp_len(d: &[u8], i: usize) -> Option<usize> {
    let rest = d[i..].strip_prefix(b"[")?;
    let days = count(rest, |b| b.is_ascii_digit());
    if days == 0 {
        return None;
    }
    let mut j = days;
    for _ in 0..3 {
        if rest.get(j) != Some(&b':') || count(&rest[j + 1..], |b| b.is_ascii_digit()) < 2 {
            return None;
        }
        j += 3;
    }
    rest[j..].starts_with(b"] ").then_some(1 + j + 2)
}
