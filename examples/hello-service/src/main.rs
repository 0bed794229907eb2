//! hello-service: a small HTTP service used as the example deployment target of orchestrate.
//!
//! Standard library only, so it builds offline with nothing but a Rust toolchain.
//! See README.md for the endpoints and the build features.

mod app;
mod clock;
mod config;
mod http;
mod metrics;
mod server;
mod sys;

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::app::App;
use crate::config::{Command, Config, UsageError};

pub const NAME: &str = env!("CARGO_PKG_NAME");
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Identifies the build in /version and /metrics: `HELLO_BUILD_ID=... cargo build`.
pub const BUILD_ID: &str = match option_env!("HELLO_BUILD_ID") {
    Some(id) if !id.is_empty() => id,
    _ => "dev",
};

/// Exit status for usage errors, as for the orchestrate CLI.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let parsed = args().and_then(|args| {
        config::parse(args, |name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    });
    match parsed {
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("{NAME} {VERSION} (build {BUILD_ID})");
            ExitCode::SUCCESS
        }
        Ok(Command::Run(config)) => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{NAME}: {message}");
                ExitCode::FAILURE
            }
        },
        Err(UsageError(message)) => {
            eprintln!("{NAME}: {message}\nTry '{NAME} --help' for more information.");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The arguments after the program name; they must be valid UTF-8.
fn args() -> Result<Vec<String>, UsageError> {
    std::env::args_os()
        .skip(1)
        .map(|arg: OsString| {
            arg.into_string()
                .map_err(|arg| UsageError(format!("argument {arg:?} is not valid UTF-8")))
        })
        .collect()
}

fn run(config: &Config) -> Result<(), String> {
    let started = Instant::now();
    let start_time = SystemTime::now();

    fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    // Before binding, so that a signal arriving during startup already means "shut down".
    sys::install_shutdown_handlers().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let address = SocketAddr::new(config.bind, config.port);
    let listener =
        TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
    if cfg!(feature = "panic") {
        panic!("built with the panic feature: crashing on purpose after binding {address}");
    }
    // Written only once listening, so the file marks starts that succeeded.
    write_started_at(&config.data_dir, start_time)?;

    let local = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "{NAME} {VERSION} (build {BUILD_ID}) listening on {local}, data directory {}",
        config.data_dir.display()
    );
    let app = Arc::new(App::new(config, started, start_time));
    server::run(listener, &app).map_err(|e| format!("server failed: {e}"))?;
    eprintln!("{NAME} stopped");
    Ok(())
}

/// Records the start time in `DATA_DIR/started_at`, replacing the file atomically so that a
/// reader never sees it half written.
fn write_started_at(data_dir: &Path, time: SystemTime) -> Result<(), String> {
    let path = data_dir.join("started_at");
    let temporary = data_dir.join(".started_at.tmp");
    fs::write(&temporary, format!("{}\n", clock::rfc3339_millis(time)))
        .and_then(|()| fs::rename(&temporary, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
