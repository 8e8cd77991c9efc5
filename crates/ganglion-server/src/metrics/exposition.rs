//! Prometheus text (exposition format 0.0.4), written one metric family at a time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use ganglion_core::stats::HistogramSnapshot;

/// A label value with `\\`, `"` and newlines escaped.
pub(super) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Prometheus text (exposition format 0.0.4), one metric family at a time.
pub(super) struct Exposition {
    pub(super) out: String,
}

impl Exposition {
    pub(super) fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A family with one unlabelled sample.
    pub(super) fn one(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        value: impl std::fmt::Display,
    ) {
        self.header(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A family with a sample per label set (`label="value"` pairs, already escaped).
    /// The family is declared even with no samples yet, so every name the server can
    /// export is in every scrape.
    pub(super) fn each<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) {
        self.header(name, kind, help);
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }

    /// A histogram family, a series per label set (`""` for none).
    pub(super) fn histograms<'a>(
        &mut self,
        name: &str,
        help: &str,
        series: impl IntoIterator<Item = (String, &'a HistogramSnapshot)>,
    ) {
        self.header(name, "histogram", help);
        for (labels, h) in series {
            let sep = if labels.is_empty() { "" } else { "," };
            for (bound, count) in &h.buckets {
                let _ = writeln!(
                    self.out,
                    "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
                h.count
            );
            let braces = |s: &str| {
                if s.is_empty() {
                    String::new()
                } else {
                    format!("{{{s}}}")
                }
            };
            let _ = writeln!(self.out, "{name}_sum{} {}", braces(&labels), h.sum_seconds);
            let _ = writeln!(self.out, "{name}_count{} {}", braces(&labels), h.count);
        }
    }
}

/// `label="value"`, escaped.
pub(super) fn label(name: &str, value: &str) -> String {
    format!("{name}=\"{}\"", escape(value))
}
