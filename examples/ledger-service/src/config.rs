//! The command line (flags only, no variables for them) and the environment's settings.

use std::net::SocketAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
Usage: ledgerd --listen ADDR:PORT --state DIR [--migrations DIR]
       ledgerd migrate --state DIR --migrations DIR

A small ledger over HTTP: / (summary), POST /entries, /live, /ready, /version,
/metrics and /config-hash. /ready answers 503 until the state directory's schema
is at least the version this build needs; `ledgerd migrate` brings it there.

Options:
  --listen ADDR:PORT  address and port to listen on, e.g. 0.0.0.0:9300 or [::]:9300
  --state DIR         state directory (schema_version, entries.log), created if missing
  --migrations DIR    migrations shipped with this release; with it, the service
                      refuses to start when they stop short of the schema it needs
  -h, --help          print this help and exit
  -V, --version       print the version and exit

Subcommand:
  migrate             apply the migrations NNN_name.sql of --migrations that are newer
                      than DIR/schema_version, in order, then exit; running it again
                      changes nothing

Environment:
  LEDGER_NAME          name shown on / [default ledger]
  LEDGER_SECRET        never served; /config-hash returns its FNV-1a 64-bit hash
  LEDGER_FAIL_PERCENT  percentage of / requests that fail, in builds with the
                       `flaky` feature [default 30]

SIGTERM or SIGINT stops the service after the requests in progress.
";

const DEFAULT_NAME: &str = "ledger";
const DEFAULT_FAIL_PERCENT: u8 = 30;

/// What `ledgerd --listen ... --state ...` needs to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub migrations_dir: Option<PathBuf>,
    pub name: String,
    /// FNV-1a hash of `LEDGER_SECRET`; the secret itself is not kept.
    pub secret_hash: u64,
    /// Share of `/` requests to fail; always 0 without the `flaky` feature.
    pub fail_percent: u8,
}

/// What `ledgerd migrate` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateConfig {
    pub state_dir: PathBuf,
    pub migrations_dir: PathBuf,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(ServeConfig),
    Migrate(MigrateConfig),
    Help,
    Version,
}

/// A usage mistake, reported with exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Flag values as given, before they are checked.
#[derive(Default)]
struct Flags {
    listen: Option<String>,
    state: Option<String>,
    migrations: Option<String>,
}

/// Builds the command from `args` (without the program name) and the environment `env`.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut args = args.into_iter().peekable();
    let migrate = args.next_if(|first| first == "migrate").is_some();

    let mut flags = Flags::default();
    while let Some(arg) = args.next() {
        // Both `--state DIR` and `--state=DIR`.
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" if !migrate => &mut flags.listen,
            "--state" => &mut flags.state,
            "--migrations" => &mut flags.migrations,
            "--listen" => {
                return Err(UsageError(
                    "migrate does not take --listen: it only changes the state directory"
                        .to_owned(),
                ))
            }
            _ => return Err(UsageError(format!("unknown argument '{arg}'"))),
        };
        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))?,
        };
        if value.is_empty() {
            return Err(UsageError(format!("{flag} needs a value")));
        }
        *slot = Some(value);
    }

    if migrate {
        return Ok(Command::Migrate(MigrateConfig {
            state_dir: required(flags.state, "--state", "migrate")?.into(),
            migrations_dir: required(flags.migrations, "--migrations", "migrate")?.into(),
        }));
    }

    let listen = required(flags.listen, "--listen", "ledgerd")?;
    let listen = listen.parse().map_err(|_| {
        UsageError(format!(
            "--listen: '{listen}' is not ADDR:PORT (e.g. 0.0.0.0:9300 or [::]:9300)"
        ))
    })?;
    let state_dir = required(flags.state, "--state", "ledgerd")?.into();
    // An empty variable counts as unset: `LEDGER_NAME=` in an environment file means "default".
    let name = env("LEDGER_NAME")
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let secret_hash = fnv1a_64(env("LEDGER_SECRET").unwrap_or_default().as_bytes());
    // Read only by flaky builds, so that a stray variable cannot stop a normal build starting.
    let fail_percent = if cfg!(feature = "flaky") {
        match env("LEDGER_FAIL_PERCENT").filter(|value| !value.is_empty()) {
            Some(value) => parse_percent(&value).ok_or_else(|| {
                UsageError(format!(
                    "LEDGER_FAIL_PERCENT: '{value}' is not a percentage (0-100)"
                ))
            })?,
            None => DEFAULT_FAIL_PERCENT,
        }
    } else {
        0
    };

    Ok(Command::Serve(ServeConfig {
        listen,
        state_dir,
        migrations_dir: flags.migrations.map(PathBuf::from),
        name,
        secret_hash,
        fail_percent,
    }))
}

fn required(value: Option<String>, flag: &str, command: &str) -> Result<String, UsageError> {
    value.ok_or_else(|| UsageError(format!("{command} needs {flag}")))
}

fn parse_percent(value: &str) -> Option<u8> {
    value.trim().parse().ok().filter(|percent| *percent <= 100)
}

/// 64-bit FNV-1a. Not a cryptographic hash: /config-hash only lets a test check that a secret
/// reached the process, and should be fed high-entropy secrets.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(|a| a.to_string()), |name| {
            env.get(name).cloned()
        })
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> ServeConfig {
        match parse_with(args, env) {
            Ok(Command::Serve(config)) => config,
            other => panic!("expected a serve config, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse_with(args, &[]) {
            Err(UsageError(message)) => message,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn serve_with_required_flags_and_defaults() {
        let config = serve(
            &["--listen", "127.0.0.1:9300", "--state", "/var/lib/ledger"],
            &[],
        );
        assert_eq!(config.listen, "127.0.0.1:9300".parse().unwrap());
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/ledger"));
        assert_eq!(config.migrations_dir, None);
        assert_eq!(config.name, "ledger");
        assert_eq!(config.secret_hash, fnv1a_64(b""));
        let default_percent = if cfg!(feature = "flaky") { 30 } else { 0 };
        assert_eq!(config.fail_percent, default_percent);
    }

    #[test]
    fn serve_with_every_flag_inline_and_the_environment() {
        let env = [("LEDGER_NAME", "books"), ("LEDGER_SECRET", "s3cret")];
        let config = serve(
            &[
                "--listen=[::1]:0",
                "--state=s",
                "--migrations",
                "/opt/ledger/migrations",
            ],
            &env,
        );
        assert_eq!(config.listen, "[::1]:0".parse().unwrap());
        assert_eq!(config.state_dir, PathBuf::from("s"));
        assert_eq!(
            config.migrations_dir,
            Some(PathBuf::from("/opt/ledger/migrations"))
        );
        assert_eq!(config.name, "books");
        assert_eq!(config.secret_hash, fnv1a_64(b"s3cret"));
    }

    #[test]
    fn empty_name_means_default() {
        let config = serve(
            &["--listen", "0.0.0.0:1", "--state", "s"],
            &[("LEDGER_NAME", "")],
        );
        assert_eq!(config.name, "ledger");
    }

    #[test]
    fn migrate_subcommand() {
        assert_eq!(
            parse_with(&["migrate", "--migrations", "m", "--state=s"], &[]),
            Ok(Command::Migrate(MigrateConfig {
                state_dir: PathBuf::from("s"),
                migrations_dir: PathBuf::from("m"),
            }))
        );
    }

    #[test]
    fn help_and_version_win_anywhere() {
        assert_eq!(
            parse_with(&["--listen", "x", "--help"], &[]),
            Ok(Command::Help)
        );
        assert_eq!(parse_with(&["migrate", "-h"], &[]), Ok(Command::Help));
        assert_eq!(parse_with(&["--version"], &[]), Ok(Command::Version));
        assert_eq!(parse_with(&["-V"], &[]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors_name_the_culprit() {
        assert_eq!(error(&[]), "ledgerd needs --listen");
        assert_eq!(error(&["--listen", "0.0.0.0:1"]), "ledgerd needs --state");
        assert_eq!(error(&["--port", "8080"]), "unknown argument '--port'");
        assert_eq!(error(&["serve"]), "unknown argument 'serve'");
        assert_eq!(error(&["--state"]), "--state needs a value");
        assert_eq!(error(&["--state="]), "--state needs a value");
        assert_eq!(
            error(&["--listen", "9300", "--state", "s"]),
            "--listen: '9300' is not ADDR:PORT (e.g. 0.0.0.0:9300 or [::]:9300)"
        );
        assert_eq!(
            error(&["--listen", "localhost:9300", "--state", "s"]),
            "--listen: 'localhost:9300' is not ADDR:PORT (e.g. 0.0.0.0:9300 or [::]:9300)"
        );
        assert_eq!(
            error(&["migrate", "--state", "s"]),
            "migrate needs --migrations"
        );
        assert_eq!(
            error(&["migrate", "--migrations", "m"]),
            "migrate needs --state"
        );
        assert_eq!(
            error(&["migrate", "--listen", "0.0.0.0:1"]),
            "migrate does not take --listen: it only changes the state directory"
        );
        // `migrate` is a subcommand only in first place.
        assert_eq!(
            error(&["--state", "s", "migrate"]),
            "unknown argument 'migrate'"
        );
    }

    #[test]
    fn fail_percent_is_read_only_by_flaky_builds() {
        let env = [("LEDGER_FAIL_PERCENT", "50")];
        let percent = serve(&["--listen", "0.0.0.0:1", "--state", "s"], &env).fail_percent;
        assert_eq!(percent, if cfg!(feature = "flaky") { 50 } else { 0 });
        assert_eq!(parse_percent("100"), Some(100));
        assert_eq!(parse_percent("101"), None);
        assert_eq!(parse_percent("-1"), None);
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
