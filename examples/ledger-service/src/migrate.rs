//! Schema migrations: the files a release ships, the version a state directory is at, and the
//! version this build needs before it calls itself ready.
//!
//! A migration is a file `NNN_name.sql`. Its content is only read (there is no database behind
//! this example); applying it means recording its number in `STATE/schema_version`.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The schema this build needs: the highest migration in `migrations/` beside Cargo.toml
/// (a unit test keeps the two in step).
pub const REQUIRED_SCHEMA: u32 = 2;

/// Where a state directory records its schema version, one decimal number and a newline.
pub const SCHEMA_FILE: &str = "schema_version";

/// One migration file of a migrations directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub number: u32,
    /// The file name, e.g. `002_entries.sql`.
    pub file_name: String,
    pub path: PathBuf,
}

/// The number of a migration file name (`002_entries.sql` is 2).
///
/// `Ok(None)` for files that are not migrations at all (no `.sql` suffix, or hidden), an error
/// for `.sql` files that are misnamed: skipping those silently would skip a migration.
pub fn migration_number(file_name: &str) -> Result<Option<u32>, String> {
    let Some(stem) = file_name.strip_suffix(".sql") else {
        return Ok(None);
    };
    if file_name.starts_with('.') {
        return Ok(None);
    }
    let misnamed =
        || format!("{file_name}: a migration is named NNN_name.sql, e.g. 003_accounts.sql");
    let (digits, name) = stem.split_once('_').ok_or_else(misnamed)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Err(misnamed());
    }
    match digits.parse() {
        Ok(0) => Err(format!("{file_name}: migrations are numbered from 001")),
        Ok(number) => Ok(Some(number)),
        Err(_) => Err(format!(
            "{file_name}: migration number {digits} is too large"
        )),
    }
}

/// Orders migrations by number (numerically: `010` comes after `009` however it is padded) and
/// rejects two files with the same number.
pub fn order(mut migrations: Vec<Migration>) -> Result<Vec<Migration>, String> {
    migrations.sort_by(|a, b| (a.number, &a.file_name).cmp(&(b.number, &b.file_name)));
    for pair in migrations.windows(2) {
        if pair[0].number == pair[1].number {
            return Err(format!(
                "{} and {} both have number {}",
                pair[0].file_name, pair[1].file_name, pair[0].number
            ));
        }
    }
    Ok(migrations)
}

/// The migrations of `dir`, in the order they apply.
pub fn discover(dir: &Path) -> Result<Vec<Migration>, String> {
    let unreadable =
        |e: io::Error| format!("cannot read migrations directory {}: {e}", dir.display());
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let number = migration_number(&file_name).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(number) = number {
            found.push(Migration {
                number,
                path: entry.path(),
                file_name,
            });
        }
    }
    order(found).map_err(|e| format!("{}: {e}", dir.display()))
}

/// The highest migration number in `dir`, 0 when it has none.
pub fn latest(dir: &Path) -> Result<u32, String> {
    Ok(discover(dir)?.last().map_or(0, |m| m.number))
}

/// The schema version recorded in `state_dir`; 0 when none has been recorded yet.
pub fn read_schema_version(state_dir: &Path) -> Result<u32, String> {
    let path = state_dir.join(SCHEMA_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            format!(
                "{}: '{}' is not a schema version number",
                path.display(),
                text.trim()
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Records `version` in `state_dir`, atomically: a reader (the running service's /ready) sees
/// the old number or the new one, never a half-written file, also after a crash.
pub fn write_schema_version(state_dir: &Path, version: u32) -> Result<(), String> {
    let path = state_dir.join(SCHEMA_FILE);
    let temporary = state_dir.join(format!(".{SCHEMA_FILE}.tmp"));
    let written = File::create(&temporary)
        .and_then(|mut file| {
            file.write_all(format!("{version}\n").as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, &path))
        // The rename is durable once the directory itself is synced.
        .and_then(|()| File::open(state_dir)?.sync_all());
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What a `migrate` run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub from: u32,
    pub to: u32,
    pub applied: Vec<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.applied.len() {
            0 => write!(f, "schema version {}: up to date", self.to),
            n => write!(
                f,
                "schema version {} (was {}): applied {n} migration(s)",
                self.to, self.from
            ),
        }
    }
}

/// Applies the migrations of `migrations_dir` newer than the schema of `state_dir`, in order,
/// recording each one as it completes; `on_apply` hears of each before it is applied.
///
/// Running it again applies nothing. Migrations older than the recorded version are left
/// alone: after a rollback the older release's migrations are all behind the state, which
/// stays as it is (readiness asks for "at least", so the older build is ready).
pub fn run(
    state_dir: &Path,
    migrations_dir: &Path,
    mut on_apply: impl FnMut(&Migration),
) -> Result<Outcome, String> {
    let migrations = discover(migrations_dir)?;
    fs::create_dir_all(state_dir)
        .map_err(|e| format!("cannot create state directory {}: {e}", state_dir.display()))?;
    let from = read_schema_version(state_dir)?;
    let mut outcome = Outcome {
        from,
        to: from,
        applied: Vec::new(),
    };
    for migration in migrations.iter().filter(|m| m.number > from) {
        on_apply(migration);
        fs::read(&migration.path)
            .map_err(|e| format!("cannot read migration {}: {e}", migration.path.display()))?;
        write_schema_version(state_dir, migration.number)?;
        outcome.to = migration.number;
        outcome.applied.push(migration.file_name.clone());
    }
    if outcome.applied.is_empty() {
        // Rewriting the same number proves the state directory is writable, which the service
        // about to start needs: the deploy hook is the earliest place to find out.
        write_schema_version(state_dir, from)?;
    }
    Ok(outcome)
}

/// Whether a state directory at `applied` serves a build that needs `required`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    Behind { applied: u32, required: u32 },
    Unknown(String),
}

pub fn readiness(applied: Result<u32, String>, required: u32) -> Readiness {
    match applied {
        Ok(applied) if applied >= required => Readiness::Ready,
        Ok(applied) => Readiness::Behind { applied, required },
        Err(message) => Readiness::Unknown(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temporary directory.
    fn scratch(name: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ledgerd-test-{}-{}-{name}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn migration(file_name: &str) -> Migration {
        Migration {
            number: migration_number(file_name).unwrap().unwrap(),
            file_name: file_name.to_owned(),
            path: PathBuf::from(file_name),
        }
    }

    fn names(migrations: &[Migration]) -> Vec<&str> {
        migrations.iter().map(|m| m.file_name.as_str()).collect()
    }

    #[test]
    fn migration_file_names() {
        assert_eq!(migration_number("001_init.sql"), Ok(Some(1)));
        assert_eq!(migration_number("042_add_index.sql"), Ok(Some(42)));
        assert_eq!(migration_number("1000_late.sql"), Ok(Some(1000)));
        assert_eq!(migration_number("README.md"), Ok(None));
        assert_eq!(migration_number(".001_init.sql"), Ok(None));
        assert!(migration_number("init.sql")
            .unwrap_err()
            .contains("NNN_name.sql"));
        assert!(migration_number("01-init.sql")
            .unwrap_err()
            .contains("NNN_name.sql"));
        assert!(migration_number("003_.sql")
            .unwrap_err()
            .contains("NNN_name.sql"));
        assert!(migration_number("000_zero.sql")
            .unwrap_err()
            .contains("numbered from 001"));
        assert!(migration_number("99999999999_x.sql")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn migrations_order_numerically_and_numbers_are_unique() {
        let ordered = order(vec![
            migration("010_ten.sql"),
            migration("002_two.sql"),
            migration("9_nine.sql"),
            migration("001_one.sql"),
        ])
        .unwrap();
        assert_eq!(
            names(&ordered),
            ["001_one.sql", "002_two.sql", "9_nine.sql", "010_ten.sql"]
        );
        let clash = order(vec![migration("002_b.sql"), migration("2_a.sql")]).unwrap_err();
        assert_eq!(clash, "002_b.sql and 2_a.sql both have number 2");
    }

    #[test]
    fn the_shipped_migrations_reach_the_required_schema() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        assert_eq!(latest(&shipped), Ok(REQUIRED_SCHEMA));
    }

    #[test]
    fn migrate_applies_in_order_once() {
        let root = scratch("apply");
        let (state, migrations) = (root.join("state"), root.join("migrations"));
        fs::create_dir(&migrations).unwrap();
        for name in ["002_b.sql", "001_a.sql", "notes.txt"] {
            fs::write(migrations.join(name), "-- sql\n").unwrap();
        }

        let mut heard = Vec::new();
        let first = run(&state, &migrations, |m| heard.push(m.number)).unwrap();
        assert_eq!(heard, [1, 2]);
        assert_eq!(first.applied, ["001_a.sql", "002_b.sql"]);
        assert_eq!((first.from, first.to), (0, 2));
        assert_eq!(fs::read_to_string(state.join(SCHEMA_FILE)).unwrap(), "2\n");
        assert_eq!(
            first.to_string(),
            "schema version 2 (was 0): applied 2 migration(s)"
        );

        let again = run(&state, &migrations, |_| panic!("nothing to apply")).unwrap();
        assert_eq!((again.from, again.to, again.applied.len()), (2, 2, 0));
        assert_eq!(again.to_string(), "schema version 2: up to date");

        fs::write(migrations.join("003_c.sql"), "").unwrap();
        assert_eq!(
            run(&state, &migrations, |_| {}).unwrap().applied,
            ["003_c.sql"]
        );
        assert_eq!(read_schema_version(&state), Ok(3));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_older_release_leaves_a_newer_schema_alone() {
        let root = scratch("rollback");
        let (state, migrations) = (root.join("state"), root.join("migrations"));
        fs::create_dir(&migrations).unwrap();
        fs::write(migrations.join("001_a.sql"), "").unwrap();
        fs::create_dir(&state).unwrap();
        write_schema_version(&state, 5).unwrap();

        let outcome = run(&state, &migrations, |_| {}).unwrap();
        assert_eq!((outcome.from, outcome.to, outcome.applied.len()), (5, 5, 0));
        assert_eq!(read_schema_version(&state), Ok(5));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unreadable_migration_stops_after_the_ones_before_it() {
        let root = scratch("unreadable");
        let (state, migrations) = (root.join("state"), root.join("migrations"));
        fs::create_dir(&migrations).unwrap();
        fs::write(migrations.join("001_a.sql"), "").unwrap();
        // A dangling link: listed, but not readable (mode bits would not stop root).
        symlink(root.join("missing"), migrations.join("002_b.sql")).unwrap();
        fs::write(migrations.join("003_c.sql"), "").unwrap();

        let error = run(&state, &migrations, |_| {}).unwrap_err();
        assert!(error.starts_with("cannot read migration "), "{error}");
        assert!(error.contains("002_b.sql"), "{error}");
        assert_eq!(read_schema_version(&state), Ok(1));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unusable_state_directory_fails_even_when_up_to_date() {
        let root = scratch("unwritable");
        let migrations = root.join("migrations");
        fs::create_dir(&migrations).unwrap();
        let file = root.join("a-file");
        fs::write(&file, "").unwrap();

        let error = run(&file.join("state"), &migrations, |_| {}).unwrap_err();
        assert!(
            error.starts_with("cannot create state directory "),
            "{error}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn schema_version_file() {
        let state = scratch("schema");
        assert_eq!(read_schema_version(&state), Ok(0));
        write_schema_version(&state, 7).unwrap();
        assert_eq!(read_schema_version(&state), Ok(7));
        assert!(!state.join(".schema_version.tmp").exists());
        fs::write(state.join(SCHEMA_FILE), "seven\n").unwrap();
        let error = read_schema_version(&state).unwrap_err();
        assert!(error.ends_with("schema_version: 'seven' is not a schema version number"));
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn ready_once_the_schema_reaches_the_required_version() {
        assert_eq!(
            readiness(Ok(0), 2),
            Readiness::Behind {
                applied: 0,
                required: 2
            }
        );
        assert_eq!(readiness(Ok(2), 2), Readiness::Ready);
        assert_eq!(readiness(Ok(3), 2), Readiness::Ready);
        assert_eq!(
            readiness(Err("garbled".to_owned()), 2),
            Readiness::Unknown("garbled".to_owned())
        );
    }
}
