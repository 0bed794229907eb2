//! ledgerd: a small ledger over HTTP whose state carries a schema, migrated by a deploy hook.
//! The second example deployment target of orchestrate, with a contract unlike hello-service's.
//!
//! Standard library only, so it builds offline with nothing but a Rust toolchain.
//! See README.md for the command line, the endpoints and the build features.

mod app;
mod clock;
mod config;
mod http;
mod ledger;
mod metrics;
mod migrate;
mod server;
mod sys;

use std::ffi::OsString;
use std::fs;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::App;
use crate::config::{Command, MigrateConfig, ServeConfig, UsageError};
use crate::ledger::Ledger;
use crate::migrate::REQUIRED_SCHEMA;

/// The Cargo package, as /version names it.
pub const PACKAGE: &str = env!("CARGO_PKG_NAME");
/// The program, as logs, `--version` and the Server header name it.
pub const BINARY: &str = env!("CARGO_BIN_NAME");
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Identifies the build in /version and /metrics: `LEDGER_BUILD_ID=... cargo build`.
pub const BUILD_ID: &str = match option_env!("LEDGER_BUILD_ID") {
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
    let outcome = match parsed {
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            Ok(())
        }
        Ok(Command::Version) => {
            // Nothing after the version: tools take the last word of this line as the version.
            println!("{BINARY} {VERSION}");
            Ok(())
        }
        Ok(Command::Serve(config)) => serve(&config),
        Ok(Command::Migrate(config)) => migrate(&config),
        Err(UsageError(message)) => {
            eprintln!("{BINARY}: {message}\nTry '{BINARY} --help' for more information.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{BINARY}: {message}");
            ExitCode::FAILURE
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

fn migrate(config: &MigrateConfig) -> Result<(), String> {
    if cfg!(feature = "failmigrate") {
        // Before reading anything, so the state is left exactly as it was.
        return Err("migration failed on purpose (built with the failmigrate feature)".to_owned());
    }
    let outcome = migrate::run(&config.state_dir, &config.migrations_dir, |migration| {
        println!("applying {}", migration.file_name);
    })?;
    println!("{outcome}");
    Ok(())
}

fn serve(config: &ServeConfig) -> Result<(), String> {
    let state = &config.state_dir;
    fs::create_dir_all(state)
        .map_err(|e| format!("cannot create state directory {}: {e}", state.display()))?;
    let ledger = Ledger::open(state).map_err(|e| {
        format!(
            "cannot open {}: {e}",
            state.join(ledger::ENTRIES_FILE).display()
        )
    })?;
    if let Some(dir) = &config.migrations_dir {
        // A release whose migrations stop short of this build's schema can never become ready:
        // say why now rather than let it fail its health checks until the deploy gives up.
        let shipped = migrate::latest(dir)?;
        if shipped < REQUIRED_SCHEMA {
            return Err(format!(
                "{} holds migrations up to {shipped}, but this build needs schema {REQUIRED_SCHEMA}: the release is incomplete",
                dir.display()
            ));
        }
    }
    // Before binding, so that a signal arriving during startup already means "shut down".
    sys::install_shutdown_handlers().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let listener = TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    if cfg!(feature = "panic") {
        panic!("built with the panic feature: crashing on purpose after binding {local}");
    }

    eprintln!("{BINARY} {VERSION} listening on {local}");
    let schema = match migrate::read_schema_version(state) {
        Ok(version) => version.to_string(),
        Err(message) => message,
    };
    eprintln!(
        "state directory {}: {} entries, schema {schema}, this build needs schema {REQUIRED_SCHEMA} (build {BUILD_ID})",
        state.display(),
        ledger.entries()
    );
    let app = Arc::new(App::new(config, ledger));
    server::run(listener, &app).map_err(|e| format!("server failed: {e}"))?;
    eprintln!("{BINARY} stopped");
    Ok(())
}
