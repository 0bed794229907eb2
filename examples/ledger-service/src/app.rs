//! The endpoints: what each route answers, and the counting of responses.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::config::ServeConfig;
use crate::http::Response;
use crate::ledger::{self, Ledger};
use crate::metrics::{self, BuildInfo, Metrics};
use crate::migrate::{self, Readiness, REQUIRED_SCHEMA};

/// The routes the service knows, which are also their `route` label values.
pub const ROUTES: [&str; 7] = [
    "/",
    "/entries",
    "/live",
    "/ready",
    "/version",
    "/metrics",
    "/config-hash",
];
/// The `route` label of requests to unknown paths (and of requests that could not be parsed).
/// One label for all of them keeps the number of time series bounded whatever clients send.
const OTHER_ROUTE: &str = "other";

pub struct App {
    name: String,
    secret_hash: u64,
    fail_percent: u8,
    state_dir: PathBuf,
    ledger: Mutex<Ledger>,
    metrics: Metrics,
    /// Requests to `/` so far; decides which of them fail in `flaky` builds.
    root_requests: AtomicU64,
}

impl App {
    pub fn new(config: &ServeConfig, ledger: Ledger) -> Self {
        App {
            name: config.name.clone(),
            secret_hash: config.secret_hash,
            fail_percent: config.fail_percent,
            state_dir: config.state_dir.clone(),
            ledger: Mutex::new(ledger),
            metrics: Metrics::new(&ROUTES),
            root_requests: AtomicU64::new(0),
        }
    }

    /// Answers one request. `body` is the request's body, read in full.
    pub fn handle(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let route = route_label(path);
        if route == OTHER_ROUTE {
            return Response::text(404, "not found\n");
        }
        // HEAD is GET without the body (the connection code drops it); servers must support it.
        let allowed = match route {
            "/entries" => "POST",
            _ => "GET, HEAD",
        };
        if !allowed.split(", ").any(|m| m == method) {
            return Response::text(405, "method not allowed\n").with_header("Allow", allowed);
        }
        match route {
            "/" => self.summary(),
            "/entries" => self.append(body),
            "/live" => Response::text(200, "live\n"),
            "/ready" => self.ready(),
            "/version" => Response::json(200, version_json()),
            "/metrics" => self.metrics(),
            "/config-hash" => Response::text(200, format!("{:016x}\n", self.secret_hash)),
            _ => unreachable!("every route in ROUTES has an answer"),
        }
    }

    /// Counts a response once it has been sent; `path` is the request's path.
    pub fn record(&self, path: &str, status: u16, duration: Duration) {
        self.metrics.record(route_label(path), status, duration);
    }

    fn summary(&self) -> Response {
        let n = self.root_requests.fetch_add(1, Ordering::Relaxed);
        if cfg!(feature = "flaky") && should_fail(n, self.fail_percent) {
            return Response::text(500, "flaky failure\n");
        }
        let entries = self.lock_ledger().entries();
        let schema = migrate::read_schema_version(&self.state_dir)
            .map_or_else(|_| "null".to_owned(), |version| version.to_string());
        Response::json(
            200,
            format!(
                "{{\"name\":{},\"version\":{},\"entries\":{entries},\"schema_version\":{schema},\"required_schema\":{REQUIRED_SCHEMA}}}\n",
                json_string(&self.name),
                json_string(crate::VERSION),
            ),
        )
    }

    fn append(&self, body: &[u8]) -> Response {
        let entry = match ledger::entry_from_body(body) {
            Ok(entry) => entry,
            Err(reason) => return Response::text(400, format!("{reason}\n")),
        };
        let mut ledger = self.lock_ledger();
        match ledger.append(entry, SystemTime::now()) {
            Ok(number) => Response::json(201, format!("{{\"entry\":{number}}}\n")),
            Err(e) => {
                eprintln!("cannot append to {}: {e}", ledger.path().display());
                Response::text(500, "cannot record the entry\n")
            }
        }
    }

    /// Ready once the state's schema is at least the one this build needs. The file is read on
    /// every request, so a `ledgerd migrate` run makes a running service ready without a restart.
    fn ready(&self) -> Response {
        if cfg!(feature = "broken") {
            return Response::text(500, "broken\n");
        }
        let applied = migrate::read_schema_version(&self.state_dir);
        match migrate::readiness(applied, REQUIRED_SCHEMA) {
            Readiness::Ready => Response::text(200, "ready\n"),
            Readiness::Behind { applied, required } => {
                Response::text(503, format!("schema {applied} < required {required}\n"))
            }
            Readiness::Unknown(message) => Response::text(503, format!("{message}\n")),
        }
    }

    fn metrics(&self) -> Response {
        let build = BuildInfo {
            version: crate::VERSION,
            build_id: crate::BUILD_ID,
        };
        let text = metrics::render(&self.metrics.snapshot(), &build);
        Response::new(200, metrics::CONTENT_TYPE, text)
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while appending leaves at worst a partial last line, which the count already
        // treats as an entry; the ledger stays usable.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .copied()
        .find(|&route| route == path)
        .unwrap_or(OTHER_ROUTE)
}

fn version_json() -> String {
    format!(
        "{{\"name\":{},\"version\":{},\"build_id\":{}}}\n",
        json_string(crate::PACKAGE),
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
    use std::fs;
    use std::sync::atomic::AtomicUsize;

    /// An app on a fresh state directory, removed when the value is dropped.
    struct TestApp {
        app: App,
        state_dir: PathBuf,
    }

    impl Drop for TestApp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.state_dir);
        }
    }

    fn app() -> TestApp {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let state_dir = std::env::temp_dir().join(format!(
            "ledgerd-test-{}-app-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&state_dir);
        fs::create_dir_all(&state_dir).unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: state_dir.clone(),
            migrations_dir: None,
            name: "books".to_owned(),
            secret_hash: fnv1a_64(b"s3cret"),
            fail_percent: 0,
        };
        let ledger = Ledger::open(&state_dir).unwrap();
        TestApp {
            app: App::new(&config, ledger),
            state_dir,
        }
    }

    fn body(response: &Response) -> &str {
        std::str::from_utf8(&response.body).unwrap()
    }

    fn get(app: &App, path: &str) -> Response {
        app.handle("GET", path, b"")
    }

    #[test]
    fn ready_follows_the_schema_version() {
        let test = app();
        let response = get(&test.app, "/ready");
        if cfg!(feature = "broken") {
            assert_eq!((response.status, body(&response)), (500, "broken\n"));
            return;
        }
        assert_eq!(
            (response.status, body(&response)),
            (503, "schema 0 < required 2\n")
        );
        migrate::write_schema_version(&test.state_dir, REQUIRED_SCHEMA).unwrap();
        let response = get(&test.app, "/ready");
        assert_eq!((response.status, body(&response)), (200, "ready\n"));

        fs::write(test.state_dir.join(migrate::SCHEMA_FILE), "two\n").unwrap();
        let response = get(&test.app, "/ready");
        assert_eq!(response.status, 503);
        assert!(body(&response).contains("'two' is not a schema version number"));
    }

    #[test]
    fn live_always_answers() {
        let response = get(&app().app, "/live");
        assert_eq!((response.status, body(&response)), (200, "live\n"));
    }

    #[test]
    fn entries_are_appended_and_summarised() {
        let test = app();
        let created = test.app.handle("POST", "/entries", b"coffee 3.20\n");
        assert_eq!((created.status, body(&created)), (201, "{\"entry\":1}\n"));
        assert_eq!(created.content_type, "application/json");
        let rejected = test.app.handle("POST", "/entries", b"two\nlines");
        assert_eq!(rejected.status, 400);

        migrate::write_schema_version(&test.state_dir, 1).unwrap();
        let summary = get(&test.app, "/");
        assert_eq!(
            body(&summary),
            "{\"name\":\"books\",\"version\":\"0.1.0\",\"entries\":1,\"schema_version\":1,\"required_schema\":2}\n"
        );
        let log = fs::read_to_string(test.state_dir.join(ledger::ENTRIES_FILE)).unwrap();
        assert!(log.ends_with("\tcoffee 3.20\n"), "{log:?}");
    }

    #[test]
    fn version_is_json_with_name_version_and_build() {
        let response = get(&app().app, "/version");
        assert_eq!(response.content_type, "application/json");
        let expected = format!(
            "{{\"name\":\"ledger-service\",\"version\":\"0.1.0\",\"build_id\":\"{}\"}}\n",
            crate::BUILD_ID
        );
        assert_eq!(body(&response), expected);
    }

    #[test]
    fn config_hash_is_the_hash_not_the_secret() {
        let response = get(&app().app, "/config-hash");
        assert_eq!(body(&response), format!("{:016x}\n", fnv1a_64(b"s3cret")));
        assert!(!body(&response).contains("s3cret"));
    }

    #[test]
    fn unknown_paths_and_methods() {
        let test = app();
        assert_eq!(get(&test.app, "/nope").status, 404);
        assert_eq!(test.app.handle("POST", "/nope", b"x").status, 404);
        let post = test.app.handle("POST", "/live", b"");
        assert_eq!(post.status, 405);
        assert_eq!(post.headers, vec![("Allow", "GET, HEAD".to_owned())]);
        let get_entries = get(&test.app, "/entries");
        assert_eq!(get_entries.status, 405);
        assert_eq!(get_entries.headers, vec![("Allow", "POST".to_owned())]);
        assert_eq!(test.app.handle("HEAD", "/version", b"").status, 200);
    }

    #[test]
    fn responses_are_counted_by_class_and_route() {
        let test = app();
        for (method, path) in [("GET", "/a"), ("GET", "/b"), ("GET", "/ready")] {
            let status = test.app.handle(method, path, b"").status;
            test.app.record(path, status, Duration::from_millis(1));
        }
        let text = body(&get(&test.app, "/metrics")).to_owned();
        assert!(
            text.contains("ledger_http_responses_total{class=\"4xx\",route=\"other\"} 2\n"),
            "{text}"
        );
        // Not migrated yet (503), or a `broken` build (500): a server error either way.
        assert!(text.contains("ledger_http_responses_total{class=\"5xx\",route=\"/ready\"} 1\n"));
        assert!(text.contains("ledger_http_responses_total{class=\"2xx\",route=\"/entries\"} 0\n"));
        assert!(text.contains("ledger_http_request_duration_seconds_count 3\n"));
        assert!(text.contains(&format!("build_id=\"{}\"}} 1\n", crate::BUILD_ID)));
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
