//! The endpoints: what each path answers. No I/O here beyond reading clocks.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use crate::clock;
use crate::config::Config;
use crate::http::Response;
use crate::metrics::{self, Gauges, Metrics};

/// The `path` label of requests to unknown paths. One label for all of them keeps the number
/// of time series bounded whatever clients ask for.
const OTHER_ROUTE: &str = "other";

pub struct App {
    greeting: String,
    secret_hash: u64,
    fail_percent: u8,
    started: Instant,
    start_time: SystemTime,
    metrics: Metrics,
    /// Requests to `/` so far; decides which of them fail in `flaky` builds.
    root_requests: AtomicU64,
}

impl App {
    pub fn new(config: &Config, started: Instant, start_time: SystemTime) -> Self {
        let mut greeting = config.greeting.clone();
        if !greeting.ends_with('\n') {
            greeting.push('\n');
        }
        App {
            greeting,
            secret_hash: config.secret_hash,
            fail_percent: config.fail_percent,
            started,
            start_time,
            metrics: Metrics::default(),
            root_requests: AtomicU64::new(0),
        }
    }

    /// Answers one request and counts it in the metrics.
    pub fn handle(&self, method: &str, path: &str) -> Response {
        let route = route_label(path);
        // HEAD is GET without the body (the connection code drops it); servers must support it.
        let response = if method != "GET" && method != "HEAD" {
            Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD")
        } else {
            match route {
                "/" => self.root(),
                "/healthz" => healthz(),
                "/version" => Response::new(200, "application/json", version_json()),
                "/metrics" => self.metrics(),
                "/config-hash" => Response::text(200, format!("{:016x}\n", self.secret_hash)),
                _ => Response::text(404, "not found\n"),
            }
        };
        self.metrics.record_request(route, response.status);
        response
    }

    fn root(&self) -> Response {
        let n = self.root_requests.fetch_add(1, Ordering::Relaxed);
        if cfg!(feature = "flaky") && should_fail(n, self.fail_percent) {
            return Response::text(500, "flaky failure\n");
        }
        Response::text(200, self.greeting.as_str())
    }

    fn metrics(&self) -> Response {
        let gauges = Gauges {
            version: crate::VERSION,
            build_id: crate::BUILD_ID,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            start_time_seconds: clock::unix_seconds(self.start_time),
        };
        let text = metrics::render(&self.metrics.request_counts(), &gauges);
        Response::new(200, metrics::CONTENT_TYPE, text)
    }
}

fn healthz() -> Response {
    if cfg!(feature = "broken") {
        Response::text(500, "broken\n")
    } else {
        Response::text(200, "ok\n")
    }
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/healthz" => "/healthz",
        "/version" => "/version",
        "/metrics" => "/metrics",
        "/config-hash" => "/config-hash",
        _ => OTHER_ROUTE,
    }
}

fn version_json() -> String {
    format!(
        "{{\"name\":{},\"version\":{},\"build_id\":{}}}\n",
        json_string(crate::NAME),
        json_string(crate::VERSION),
        json_string(crate::BUILD_ID)
    )
}

fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    // Writing into a String cannot fail, so the `write!` results below are ignored.
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether the `n`th request (from 0) fails when `percent` of them should.
///
/// Deterministic and evenly spread: request n fails when floor((n+1)·p/100) steps past
/// floor(n·p/100), so every 100 consecutive requests hold exactly p failures and a canary's
/// error ratio does not depend on luck.
fn should_fail(n: u64, percent: u8) -> bool {
    let n = n % 100;
    let p = u64::from(percent);
    (n + 1) * p / 100 > n * p / 100
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fnv1a_64;
    use std::path::PathBuf;

    fn app() -> App {
        let config = Config {
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            data_dir: PathBuf::from("unused"),
            greeting: "hi".to_owned(),
            secret_hash: fnv1a_64(b"s3cret"),
            fail_percent: 0,
        };
        App::new(&config, Instant::now(), SystemTime::now())
    }

    fn body(response: &Response) -> &str {
        std::str::from_utf8(&response.body).unwrap()
    }

    #[test]
    fn healthz_depends_on_the_broken_feature() {
        let response = app().handle("GET", "/healthz");
        if cfg!(feature = "broken") {
            assert_eq!((response.status, body(&response)), (500, "broken\n"));
        } else {
            assert_eq!((response.status, body(&response)), (200, "ok\n"));
        }
    }

    #[test]
    fn root_serves_the_greeting_with_a_newline() {
        let response = app().handle("GET", "/");
        assert_eq!((response.status, body(&response)), (200, "hi\n"));
    }

    #[test]
    fn version_is_json_with_name_version_and_build() {
        let response = app().handle("GET", "/version");
        assert_eq!(response.content_type, "application/json");
        let expected = format!(
            "{{\"name\":\"hello-service\",\"version\":\"0.1.0\",\"build_id\":\"{}\"}}\n",
            crate::BUILD_ID
        );
        assert_eq!(body(&response), expected);
    }

    #[test]
    fn config_hash_is_the_hash_not_the_secret() {
        let response = app().handle("GET", "/config-hash");
        assert_eq!(body(&response), format!("{:016x}\n", fnv1a_64(b"s3cret")));
        assert!(!body(&response).contains("s3cret"));
    }

    #[test]
    fn unknown_paths_and_methods() {
        let app = app();
        assert_eq!(app.handle("GET", "/nope").status, 404);
        let post = app.handle("POST", "/healthz");
        assert_eq!(post.status, 405);
        assert_eq!(post.headers, vec![("Allow", "GET, HEAD".to_owned())]);
        assert_eq!(app.handle("HEAD", "/version").status, 200);
    }

    #[test]
    fn requests_are_counted_by_route_with_unknown_paths_folded() {
        let app = app();
        app.handle("GET", "/a");
        app.handle("GET", "/b");
        app.handle("DELETE", "/version");
        let metrics = app.handle("GET", "/metrics");
        let text = body(&metrics);
        assert!(
            text.contains("hello_requests_total{path=\"other\",code=\"404\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("hello_requests_total{path=\"/version\",code=\"405\"} 1\n"));
        assert!(text.contains(&format!("build_id=\"{}\"}} 1\n", crate::BUILD_ID)));
        // The scrape is counted after it has been rendered.
        assert!(!text.contains("path=\"/metrics\""));
        let text = body(&app.handle("GET", "/metrics")).to_owned();
        assert!(text.contains("hello_requests_total{path=\"/metrics\",code=\"200\"} 1\n"));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn failures_are_exactly_the_requested_share() {
        for percent in [0u8, 1, 30, 99, 100] {
            let failures = (0..1000).filter(|&n| should_fail(n, percent)).count();
            assert_eq!(failures, 10 * usize::from(percent), "percent {percent}");
            // Any window of 100 consecutive requests holds the same count.
            let window = (37..137).filter(|&n| should_fail(n, percent)).count();
            assert_eq!(window, usize::from(percent), "percent {percent}");
        }
        // Spread out: with 30 %, the first three requests succeed.
        assert!(!(0..3).any(|n| should_fail(n, 30)));
    }
}
