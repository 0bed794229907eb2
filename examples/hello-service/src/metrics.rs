//! Request counters and their Prometheus text exposition (format version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::{Mutex, MutexGuard, PoisonError};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Requests answered, by route label and status code.
pub type RequestCounts = BTreeMap<(&'static str, u16), u64>;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<RequestCounts>,
}

impl Metrics {
    pub fn record_request(&self, route: &'static str, status: u16) {
        *self.lock().entry((route, status)).or_insert(0) += 1;
    }

    pub fn request_counts(&self) -> RequestCounts {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, RequestCounts> {
        // A thread that panicked while holding the lock cannot have left a counter half
        // updated, so the data stays usable.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Values that are not counters, sampled at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges<'a> {
    pub version: &'a str,
    pub build_id: &'a str,
    pub uptime_seconds: f64,
    pub start_time_seconds: f64,
}

/// Renders the exposition text; families and samples come in a stable order.
pub fn render(requests: &RequestCounts, gauges: &Gauges<'_>) -> String {
    let mut out = String::new();
    render_into(&mut out, requests, gauges).expect("formatting into a String cannot fail");
    out
}

fn render_into(out: &mut String, requests: &RequestCounts, gauges: &Gauges<'_>) -> fmt::Result {
    writeln!(
        out,
        "# HELP hello_requests_total HTTP requests answered, by route and status code."
    )?;
    writeln!(out, "# TYPE hello_requests_total counter")?;
    for ((path, code), count) in requests {
        writeln!(
            out,
            "hello_requests_total{{path=\"{}\",code=\"{code}\"}} {count}",
            escape_label_value(path)
        )?;
    }
    writeln!(
        out,
        "# HELP hello_build_info Version and build of the running binary; always 1."
    )?;
    writeln!(out, "# TYPE hello_build_info gauge")?;
    writeln!(
        out,
        "hello_build_info{{version=\"{}\",build_id=\"{}\"}} 1",
        escape_label_value(gauges.version),
        escape_label_value(gauges.build_id)
    )?;
    writeln!(
        out,
        "# HELP hello_uptime_seconds Seconds since the service started."
    )?;
    writeln!(out, "# TYPE hello_uptime_seconds gauge")?;
    writeln!(out, "hello_uptime_seconds {:.3}", gauges.uptime_seconds)?;
    writeln!(
        out,
        "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds."
    )?;
    writeln!(out, "# TYPE process_start_time_seconds gauge")?;
    writeln!(
        out,
        "process_start_time_seconds {:.3}",
        gauges.start_time_seconds
    )
}

/// Escapes a label value as the text format requires: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAUGES: Gauges<'static> = Gauges {
        version: "0.1.0",
        build_id: "dev",
        uptime_seconds: 12.3456,
        start_time_seconds: 1_700_000_000.25,
    };

    #[test]
    fn renders_the_exposition_format() {
        let metrics = Metrics::default();
        metrics.record_request("/healthz", 200);
        metrics.record_request("/healthz", 200);
        metrics.record_request("other", 404);
        metrics.record_request("/", 500);

        let expected = "\
# HELP hello_requests_total HTTP requests answered, by route and status code.
# TYPE hello_requests_total counter
hello_requests_total{path=\"/\",code=\"500\"} 1
hello_requests_total{path=\"/healthz\",code=\"200\"} 2
hello_requests_total{path=\"other\",code=\"404\"} 1
# HELP hello_build_info Version and build of the running binary; always 1.
# TYPE hello_build_info gauge
hello_build_info{version=\"0.1.0\",build_id=\"dev\"} 1
# HELP hello_uptime_seconds Seconds since the service started.
# TYPE hello_uptime_seconds gauge
hello_uptime_seconds 12.346
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1700000000.250
";
        assert_eq!(render(&metrics.request_counts(), &GAUGES), expected);
    }

    #[test]
    fn a_family_without_samples_keeps_its_metadata() {
        let text = render(&RequestCounts::new(), &GAUGES);
        assert!(text.contains("# TYPE hello_requests_total counter\n# HELP hello_build_info"));
        assert!(!text.contains("hello_requests_total{"));
    }

    #[test]
    fn escapes_label_values() {
        let gauges = Gauges {
            build_id: "a\"b\\c\nd",
            ..GAUGES
        };
        let text = render(&RequestCounts::new(), &gauges);
        assert!(text.contains(r#"hello_build_info{version="0.1.0",build_id="a\"b\\c\nd"} 1"#));
    }
}
