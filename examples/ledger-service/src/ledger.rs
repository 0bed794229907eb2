//! The ledger itself: `STATE/entries.log`, one line per entry, only ever appended to.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::clock;

pub const ENTRIES_FILE: &str = "entries.log";
/// Longest entry accepted, in bytes.
pub const MAX_ENTRY_BYTES: usize = 4096;

pub struct Ledger {
    path: PathBuf,
    file: File,
    entries: u64,
}

impl Ledger {
    /// Opens (creating it if needed) the entries file of `state_dir` and counts its entries.
    ///
    /// Opening for appending also proves that the state directory is writable, so that a
    /// service which could not record entries fails at start rather than on its first POST.
    pub fn open(state_dir: &Path) -> io::Result<Ledger> {
        let path = state_dir.join(ENTRIES_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        let mut entries = 0;
        for line in BufReader::new(&file).split(b'\n') {
            line?;
            entries += 1;
        }
        Ok(Ledger {
            path,
            file,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Appends `entry` as the line `TIMESTAMP<TAB>ENTRY` and returns its number (from 1).
    ///
    /// One write per line on a file opened for appending, synced before the caller answers
    /// 201: an acknowledged entry survives a crash, and concurrent writers never interleave.
    pub fn append(&mut self, entry: &str, time: SystemTime) -> io::Result<u64> {
        let line = format!("{}\t{entry}\n", clock::rfc3339_millis(time));
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        self.entries += 1;
        Ok(self.entries)
    }
}

/// The entry a request body holds: UTF-8 text on one line (a final line break is dropped).
pub fn entry_from_body(body: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(body).map_err(|_| "an entry is UTF-8 text")?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.trim().is_empty() {
        return Err("an entry needs some text");
    }
    if text.len() > MAX_ENTRY_BYTES {
        return Err("an entry is at most 4096 bytes");
    }
    // Control characters would break the one-line-per-entry format (and a terminal showing it).
    if text.chars().any(char::is_control) {
        return Err("an entry is one line without control characters");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn appends_lines_and_counts_them_across_reopenings() {
        let state =
            std::env::temp_dir().join(format!("ledgerd-test-{}-ledger", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).unwrap();
        let time = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

        let mut ledger = Ledger::open(&state).unwrap();
        assert_eq!(ledger.entries(), 0);
        assert_eq!(ledger.append("coffee 3.20", time).unwrap(), 1);
        assert_eq!(ledger.append("rent 900", time).unwrap(), 2);
        drop(ledger);

        let mut reopened = Ledger::open(&state).unwrap();
        assert_eq!(reopened.entries(), 2);
        assert_eq!(reopened.append("tea 2.10", time).unwrap(), 3);
        assert_eq!(
            fs::read_to_string(state.join(ENTRIES_FILE)).unwrap(),
            "2023-11-14T22:13:20.000Z\tcoffee 3.20\n\
             2023-11-14T22:13:20.000Z\trent 900\n\
             2023-11-14T22:13:20.000Z\ttea 2.10\n"
        );
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn entries_are_one_line_of_text() {
        assert_eq!(entry_from_body(b"coffee 3.20"), Ok("coffee 3.20"));
        assert_eq!(entry_from_body(b"coffee 3.20\r\n"), Ok("coffee 3.20"));
        assert_eq!(entry_from_body(b"caf\xc3\xa9\n"), Ok("caf\u{e9}"));
        assert!(entry_from_body(b"").is_err());
        assert!(entry_from_body(b" \n").is_err());
        assert!(entry_from_body(b"a\nb").is_err());
        assert!(entry_from_body(b"a\tb").is_err());
        assert!(entry_from_body(b"\xff").is_err());
        assert!(entry_from_body(&[b'x'; MAX_ENTRY_BYTES]).is_ok());
        assert!(entry_from_body(&[b'x'; MAX_ENTRY_BYTES + 1]).is_err());
    }
}
