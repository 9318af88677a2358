//! The metadata side of `berth migrate`: a consistent snapshot of a single node's
//! database ([`MigrationSource`], SQLite) copied whole into a cluster's
//! ([`MigrationTarget`], PostgreSQL) in one transaction.
//!
//! The copy is generic over the schema: every table of [`TABLES`] is read column by
//! column as plain [`Value`]s and written with the target column's own type (SQLite's
//! INTEGER flags become BOOLEAN, BLOB becomes BYTEA). Both databases are migrated to the
//! same version before a copy, and a test checks that the two schemas have the same
//! tables and columns, so a new table or column is either copied or fails that test.
//! Identity sequences are moved past the copied ids, so the cluster's next id never
//! collides with a copied one.

use super::{BlobRecord, Result, UploadSession};
use oci::Digest;
use tokio::sync::mpsc;

/// Every table a migration copies, parents before the tables whose foreign keys point
/// at them. `migrate_runs` (the record of migrations themselves) and sqlx's bookkeeping
/// are not copied.
pub const TABLES: &[&str] = &[
    "users",
    "registries",
    "projects",
    "members",
    "robots",
    "signing_keys",
    "audit_log",
    "repositories",
    "blobs",
    "repository_blobs",
    "manifests",
    "manifest_references",
    "tags",
    "uploads",
    "outbox",
    "proxy_cache",
    "gc_runs",
    "gc_schedule",
    "immutable_rules",
    "project_quotas",
    "retention_policies",
    "retention_runs",
    "retention_tasks",
];

/// Tables of the schema that are not registry content and are not copied.
pub const NOT_COPIED: &[&str] = &[
    "completed_uploads",
    "job_claims",
    "migrate_runs",
    // The target's own: decided when its database was created.
    "settings",
];

/// Columns of copied tables written as NULL in the target: `berth migrate` streams every
/// blob through the target store's upload path, which keeps it under its digest's own
/// path, so no key the source recorded for a blob names anything in the target.
pub const NULLED: &[(&str, &str)] = &[("blobs", "storage_key")];

/// Positions in `columns` of `table`'s [`NULLED`] columns.
pub fn nulled_columns(table: &str, columns: &[String]) -> Vec<usize> {
    NULLED
        .iter()
        .filter(|(t, _)| *t == table)
        .filter_map(|(_, c)| columns.iter().position(|n| n == c))
        .collect()
}

/// `name` as an SQL identifier (both databases quote alike).
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One column value of a copied row, as the source stored it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Bytes(Vec<u8>),
}

/// Rows travel from the source's snapshot to the target in batches of this many.
pub const BATCH_ROWS: usize = 256;

/// A batch of rows (each the values of the requested columns, in order).
pub type RowBatch = Vec<Vec<Value>>;

/// A database a single node ran on, read while that node may still serve.
#[async_trait::async_trait]
pub trait MigrationSource: Send + Sync {
    /// The committed blobs (digest, size) as of now, outside any snapshot (the long
    /// first copy of bytes runs from this, holding no read transaction open).
    async fn blob_list(&self) -> Result<Vec<(Digest, BlobRecord)>>;
    /// A consistent snapshot of everything, held until the snapshot is dropped.
    async fn snapshot(&self) -> Result<Box<dyn Snapshot>>;
}

/// One consistent view of a source database: every read sees the same moment.
#[async_trait::async_trait]
pub trait Snapshot: Send {
    /// The committed blobs (digest, size).
    async fn blobs(&mut self) -> Result<Vec<(Digest, BlobRecord)>>;
    /// The open upload sessions.
    async fn uploads(&mut self) -> Result<Vec<UploadSession>>;
    /// Send every row of `table` (its `columns`, in that order) to `out` in batches of
    /// at most [`BATCH_ROWS`]; returns how many rows were sent. Stops early, without an
    /// error, when the receiver is gone (it failed: its error is the one to report).
    async fn rows(
        &mut self,
        table: &str,
        columns: &[String],
        out: mpsc::Sender<RowBatch>,
    ) -> Result<u64>;
}

/// What a target database holds before a migration writes into it.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetState {
    /// No repositories, manifests, tags or blob links: nothing to lose.
    Empty,
    /// Exactly what the last migration from this same source left: a re-run (after an
    /// interruption, or the final catch-up before switching over) replaces it.
    LastMigrated { finished_at: i64 },
    /// Registry content this source's last migration did not write (another source's,
    /// or pushes to a cluster already serving from this database).
    Occupied {
        /// The content, in words ("12 repositories, 340 manifests, ...").
        holds: String,
        /// The source of the last migration into it, if any.
        last_source: Option<String>,
    },
}

/// Rows copied into one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopied {
    pub table: String,
    pub rows: u64,
}

/// A database a cluster will run on.
#[async_trait::async_trait]
pub trait MigrationTarget: Send + Sync {
    /// What the target holds, judged against the last migration from `source`.
    async fn state(&self, source: &str) -> Result<TargetState>;
    /// Replace every table of [`TABLES`] with the snapshot's rows, in one transaction
    /// (nothing changes unless everything was copied), verifying every manifest's
    /// content against its digest, and record the run. `copied` hears of each table as
    /// it is done. Returns the rows copied per table.
    async fn replace(
        &self,
        source: &str,
        summary: &str,
        snapshot: &mut dyn Snapshot,
        copied: &mut (dyn FnMut(TableCopied) + Send),
    ) -> Result<Vec<TableCopied>>;
}
