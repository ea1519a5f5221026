//! Prometheus' classic text exposition format (`text/plain; version=0.0.4`), written by hand.
//!
//! Why not a crate: `prometheus-client`, the kept one, writes only OpenMetrics (`# EOF`, `info`
//! type, counters named without `_total` in `# TYPE`), which the classic parser of Debian 12's
//! Prometheus 2.42 (`promtool check metrics`) refuses (`unknown metric type "info"`) or lints
//! (`_total` samples of no family). The tikv `prometheus` crate writes the classic format but
//! brings a registry, atomics, `lazy_static`, `parking_lot` and `thiserror` for some ten
//! families the master renders from its own state on demand. The format needs three rules, kept
//! here: a `# HELP` and `# TYPE` line before each family's samples, label values escaped
//! (`\\`, `\"`, `\n`), HELP text escaped (`\\`, `\n`).

use std::fmt::Write;

/// The `Content-Type` of what [`Exposition::finish`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type, as `# TYPE` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The text being written, one family at a time.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// One family: its `# HELP` and `# TYPE` lines, then one line per sample (labels, value).
    /// A family with no sample is left out whole: the classic parser drops it anyway.
    pub fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        samples: &[(&[(&str, &str)], f64)],
    ) {
        if samples.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.text, " {}", value_text(*value));
        }
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// Go's `strconv.ParseFloat` reads Rust's shortest round-trip form of a finite value; the
/// infinities and NaN are spelt as the format wants.
fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_labels_and_values() {
        let mut e = Exposition::default();
        e.family(
            "x_total",
            "Things.",
            Kind::Counter,
            &[
                (&[("result", "success")], 3.0),
                (&[("result", "failure")], 0.0),
            ],
        );
        e.family("y", "A gauge.", Kind::Gauge, &[(&[], 0.25)]);
        e.family("z", "Never set.", Kind::Gauge, &[]);
        e.family("t", "Big.", Kind::Gauge, &[(&[], 1764437392.5)]);
        assert_eq!(
            e.finish(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{result=\"success\"} 3\nx_total{result=\"failure\"} 0\n\
             # HELP y A gauge.\n# TYPE y gauge\ny 0.25\n\
             # HELP t Big.\n# TYPE t gauge\nt 1764437392.5\n"
        );
    }

    #[test]
    fn escapes() {
        let mut e = Exposition::default();
        e.family(
            "i",
            "a \\ b\nc \"d\"",
            Kind::Gauge,
            &[(&[("v", "2.6\\x\n\"q\"")], 1.0)],
        );
        assert_eq!(
            e.finish(),
            "# HELP i a \\\\ b\\nc \"d\"\n# TYPE i gauge\ni{v=\"2.6\\\\x\\n\\\"q\\\"\"} 1\n"
        );
    }

    #[test]
    fn special_values() {
        assert_eq!(value_text(f64::NAN), "NaN");
        assert_eq!(value_text(f64::INFINITY), "+Inf");
        assert_eq!(value_text(f64::NEG_INFINITY), "-Inf");
        assert_eq!(value_text(1e21), "1000000000000000000000");
        assert_eq!(value_text(0.001), "0.001");
    }
}
