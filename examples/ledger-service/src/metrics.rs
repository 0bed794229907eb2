//! Response counters, a latency summary and their Prometheus text exposition (format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Responses sent, by route label and status class.
pub type ResponseCounts = BTreeMap<(&'static str, &'static str), u64>;

/// The status class label of a status code: `2xx`, `3xx`, `4xx` or `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        // The service sends no 1xx; anything out of range is a server error.
        _ => "5xx",
    }
}

/// Everything the counters hold at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub responses: ResponseCounts,
    pub duration_sum_seconds: f64,
    pub duration_count: u64,
}

#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Snapshot>,
}

impl Metrics {
    /// Counters for `routes`, whose 2xx and 5xx series start at 0: an error ratio
    /// (5xx / all) then has data from the first scrape, before anything has failed.
    pub fn new(routes: &[&'static str]) -> Self {
        let mut snapshot = Snapshot::default();
        for &route in routes {
            for class in ["2xx", "5xx"] {
                snapshot.responses.insert((route, class), 0);
            }
        }
        Metrics {
            inner: Mutex::new(snapshot),
        }
    }

    /// Counts one response and how long it took.
    pub fn record(&self, route: &'static str, status: u16, duration: Duration) {
        let mut inner = self.lock();
        *inner
            .responses
            .entry((route, status_class(status)))
            .or_insert(0) += 1;
        inner.duration_sum_seconds += duration.as_secs_f64();
        inner.duration_count += 1;
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        // A thread that panicked while holding the lock cannot have left a counter half
        // updated, so the data stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The build, for `ledger_build_info`.
#[derive(Debug, Clone, Copy)]
pub struct BuildInfo<'a> {
    pub version: &'a str,
    pub build_id: &'a str,
}

/// Renders the exposition text; families and samples come in a stable order.
pub fn render(snapshot: &Snapshot, build: &BuildInfo<'_>) -> String {
    let mut out = String::new();
    render_into(&mut out, snapshot, build).expect("formatting into a String cannot fail");
    out
}

fn render_into(out: &mut String, snapshot: &Snapshot, build: &BuildInfo<'_>) -> fmt::Result {
    writeln!(
        out,
        "# HELP ledger_http_responses_total HTTP responses sent, by status class and route."
    )?;
    writeln!(out, "# TYPE ledger_http_responses_total counter")?;
    for ((route, class), count) in &snapshot.responses {
        writeln!(
            out,
            "ledger_http_responses_total{{class=\"{class}\",route=\"{}\"}} {count}",
            escape_label_value(route)
        )?;
    }
    writeln!(
        out,
        "# HELP ledger_http_request_duration_seconds Time from a request's head being read to its response being written."
    )?;
    writeln!(out, "# TYPE ledger_http_request_duration_seconds summary")?;
    writeln!(
        out,
        "ledger_http_request_duration_seconds_sum {:.6}",
        snapshot.duration_sum_seconds
    )?;
    writeln!(
        out,
        "ledger_http_request_duration_seconds_count {}",
        snapshot.duration_count
    )?;
    writeln!(
        out,
        "# HELP ledger_build_info Version and build of the running binary; always 1."
    )?;
    writeln!(out, "# TYPE ledger_build_info gauge")?;
    writeln!(
        out,
        "ledger_build_info{{version=\"{}\",build_id=\"{}\"}} 1",
        escape_label_value(build.version),
        escape_label_value(build.build_id)
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

    const BUILD: BuildInfo<'static> = BuildInfo {
        version: "0.1.0",
        build_id: "dev",
    };

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(201), "2xx");
        assert_eq!(status_class(304), "3xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(99), "5xx");
    }

    #[test]
    fn renders_the_exposition_format() {
        let metrics = Metrics::new(&["/", "/ready"]);
        metrics.record("/ready", 503, Duration::from_millis(2));
        metrics.record("/ready", 200, Duration::from_micros(500));
        metrics.record("/ready", 200, Duration::from_micros(500));
        metrics.record("other", 404, Duration::from_millis(1));

        let expected = "\
# HELP ledger_http_responses_total HTTP responses sent, by status class and route.
# TYPE ledger_http_responses_total counter
ledger_http_responses_total{class=\"2xx\",route=\"/\"} 0
ledger_http_responses_total{class=\"5xx\",route=\"/\"} 0
ledger_http_responses_total{class=\"2xx\",route=\"/ready\"} 2
ledger_http_responses_total{class=\"5xx\",route=\"/ready\"} 1
ledger_http_responses_total{class=\"4xx\",route=\"other\"} 1
# HELP ledger_http_request_duration_seconds Time from a request's head being read to its response being written.
# TYPE ledger_http_request_duration_seconds summary
ledger_http_request_duration_seconds_sum 0.004000
ledger_http_request_duration_seconds_count 4
# HELP ledger_build_info Version and build of the running binary; always 1.
# TYPE ledger_build_info gauge
ledger_build_info{version=\"0.1.0\",build_id=\"dev\"} 1
";
        assert_eq!(render(&metrics.snapshot(), &BUILD), expected);
    }

    #[test]
    fn known_routes_have_zero_series_before_any_request() {
        let text = render(&Metrics::new(&["/entries"]).snapshot(), &BUILD);
        assert!(text.contains("ledger_http_responses_total{class=\"2xx\",route=\"/entries\"} 0\n"));
        assert!(text.contains("ledger_http_responses_total{class=\"5xx\",route=\"/entries\"} 0\n"));
        assert!(!text.contains("class=\"4xx\""));
        assert!(text.contains("ledger_http_request_duration_seconds_count 0\n"));
    }

    #[test]
    fn escapes_label_values() {
        let build = BuildInfo {
            build_id: "a\"b\\c\nd",
            ..BUILD
        };
        let text = render(&Metrics::new(&[]).snapshot(), &build);
        assert!(text.contains(r#"ledger_build_info{version="0.1.0",build_id="a\"b\\c\nd"} 1"#));
    }
}
