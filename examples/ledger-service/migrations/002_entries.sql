-- Entries, appended and never changed: the ledger itself.
CREATE TABLE entries (
    id         INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id),
    booked_at  TEXT NOT NULL,
    memo       TEXT NOT NULL
);
CREATE INDEX entries_by_account ON entries (account_id, booked_at);
