//! Configuration from the command line and the environment; a flag wins over its variable.

use std::net::IpAddr;
use std::path::PathBuf;

pub const USAGE: &str = "\
Usage: hello-service [OPTIONS]

A small HTTP service with /healthz, /version, /metrics, /config-hash and /.

Options:
  --port N         TCP port to listen on [env HELLO_PORT, default 8080]
  --bind ADDR      IP address to listen on [env HELLO_BIND, default 0.0.0.0]
  --data-dir DIR   state directory, created if missing [env HELLO_DATA_DIR, default ./data]
  -h, --help       print this help and exit
  -V, --version    print the version and exit

Environment:
  HELLO_GREETING      text served on /
  HELLO_SECRET        never served; /config-hash returns its FNV-1a 64-bit hash
  HELLO_FAIL_PERCENT  percentage of / requests that fail, in builds with the
                      `flaky` feature [default 30]

SIGTERM or SIGINT stops the service after the requests in progress.
";

const DEFAULT_PORT: u16 = 8080;
const DEFAULT_BIND: &str = "0.0.0.0";
const DEFAULT_DATA_DIR: &str = "./data";
const DEFAULT_GREETING: &str = "Hello from hello-service!";
const DEFAULT_FAIL_PERCENT: u8 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    pub greeting: String,
    /// FNV-1a hash of `HELLO_SECRET`; the secret itself is not kept.
    pub secret_hash: u64,
    /// Share of `/` requests to fail; always 0 without the `flaky` feature.
    pub fail_percent: u8,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// A usage mistake, reported with exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Builds the command from `args` (without the program name) and the environment `env`.
pub fn parse<I, E>(args: I, env: E) -> Result<Command, UsageError>
where
    I: IntoIterator<Item = String>,
    E: Fn(&str) -> Option<String>,
{
    let mut port = None;
    let mut bind = None;
    let mut data_dir = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--port 8080` and `--port=8080`.
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--port" => &mut port,
            "--bind" => &mut bind,
            "--data-dir" => &mut data_dir,
            _ => return Err(UsageError(format!("unknown argument '{arg}'"))),
        };
        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| UsageError(format!("{flag} needs a value")))?,
        };
        *slot = Some((value, flag.to_owned()));
    }

    // An empty variable counts as unset: `HELLO_PORT=` in an environment file means "default".
    let from_env = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .map(|value| (value, name.to_owned()))
    };

    let port = match port.or_else(|| from_env("HELLO_PORT")) {
        Some((value, source)) => value.parse().map_err(|_| {
            UsageError(format!(
                "{source}: '{value}' is not a port number (0-65535)"
            ))
        })?,
        None => DEFAULT_PORT,
    };
    let bind = match bind.or_else(|| from_env("HELLO_BIND")) {
        Some((value, source)) => value.parse().map_err(|_| {
            UsageError(format!(
                "{source}: '{value}' is not an IPv4 or IPv6 address"
            ))
        })?,
        None => DEFAULT_BIND.parse().expect("the default address is valid"),
    };
    let data_dir = data_dir.or_else(|| from_env("HELLO_DATA_DIR")).map_or_else(
        || PathBuf::from(DEFAULT_DATA_DIR),
        |(value, _)| PathBuf::from(value),
    );
    let greeting = env("HELLO_GREETING").unwrap_or_else(|| DEFAULT_GREETING.to_owned());
    let secret_hash = fnv1a_64(env("HELLO_SECRET").unwrap_or_default().as_bytes());
    // Read only by flaky builds, so that a stray variable cannot stop a normal build starting.
    let fail_percent = if cfg!(feature = "flaky") {
        match from_env("HELLO_FAIL_PERCENT") {
            Some((value, source)) => parse_percent(&value).ok_or_else(|| {
                UsageError(format!("{source}: '{value}' is not a percentage (0-100)"))
            })?,
            None => DEFAULT_FAIL_PERCENT,
        }
    } else {
        0
    };

    Ok(Command::Run(Config {
        bind,
        port,
        data_dir,
        greeting,
        secret_hash,
        fail_percent,
    }))
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

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse_with(args, env) {
            Ok(Command::Run(config)) => config,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let config = config(&[], &[]);
        assert_eq!(config.port, 8080);
        assert_eq!(config.bind.to_string(), "0.0.0.0");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.greeting, DEFAULT_GREETING);
        assert_eq!(config.secret_hash, fnv1a_64(b""));
    }

    #[test]
    fn environment_and_flags_with_flags_winning() {
        let env = [
            ("HELLO_PORT", "9000"),
            ("HELLO_BIND", "::1"),
            ("HELLO_DATA_DIR", "/var/lib/hello"),
            ("HELLO_GREETING", "hi"),
            ("HELLO_SECRET", "s3cret"),
        ];
        let from_env = config(&[], &env);
        assert_eq!(from_env.port, 9000);
        assert_eq!(from_env.bind.to_string(), "::1");
        assert_eq!(from_env.data_dir, PathBuf::from("/var/lib/hello"));
        assert_eq!(from_env.greeting, "hi");
        assert_eq!(from_env.secret_hash, fnv1a_64(b"s3cret"));

        let flagged = config(
            &["--port", "9001", "--bind=127.0.0.1", "--data-dir", "d"],
            &env,
        );
        assert_eq!(flagged.port, 9001);
        assert_eq!(flagged.bind.to_string(), "127.0.0.1");
        assert_eq!(flagged.data_dir, PathBuf::from("d"));
    }

    #[test]
    fn empty_variables_mean_default() {
        assert_eq!(config(&[], &[("HELLO_PORT", "")]).port, 8080);
    }

    #[test]
    fn help_and_version() {
        assert_eq!(
            parse_with(&["--port", "1", "--help"], &[]),
            Ok(Command::Help)
        );
        assert_eq!(parse_with(&["-V"], &[]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors_name_the_culprit() {
        let error = |args: &[&str], env: &[(&str, &str)]| match parse_with(args, env) {
            Err(UsageError(message)) => message,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(error(&["--bogus"], &[]), "unknown argument '--bogus'");
        assert_eq!(error(&["--port"], &[]), "--port needs a value");
        assert_eq!(
            error(&["--port", "70000"], &[]),
            "--port: '70000' is not a port number (0-65535)"
        );
        assert_eq!(
            error(&[], &[("HELLO_PORT", "http")]),
            "HELLO_PORT: 'http' is not a port number (0-65535)"
        );
        assert_eq!(
            error(&["--bind", "localhost"], &[]),
            "--bind: 'localhost' is not an IPv4 or IPv6 address"
        );
    }

    #[test]
    fn fail_percent_is_read_only_by_flaky_builds() {
        let percent = config(&[], &[("HELLO_FAIL_PERCENT", "50")]).fail_percent;
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
