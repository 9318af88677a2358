//! SQLite as the source of `berth migrate` ([`MigrationSource`]): reads run on the
//! read-only connections, so a node serving from the same file keeps writing. A
//! [`Snapshot`] is one read transaction held open (WAL mode: it sees one moment and
//! blocks no writer; it only keeps the WAL from being checkpointed past it, which is
//! why the long copy of blob bytes runs from [`MigrationSource::blob_list`] first).

use super::sqlite::{upload_session, SqliteMeta};
use super::transfer::{quote, MigrationSource, RowBatch, Snapshot, Value, BATCH_ROWS};
use super::{digest, BlobRecord, MetaError, Result, UploadSession};
use futures_util::TryStreamExt;
use oci::Digest;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction, TypeInfo, ValueRef};
use tokio::sync::mpsc;

#[async_trait::async_trait]
impl MigrationSource for SqliteMeta {
    async fn blob_list(&self) -> Result<Vec<(Digest, BlobRecord)>> {
        let rows = sqlx::query("SELECT digest, size, storage_key FROM blobs")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(blob_row).collect()
    }

    async fn snapshot(&self) -> Result<Box<dyn Snapshot>> {
        let mut tx = self.reader.begin().await?;
        // A deferred transaction takes its snapshot at its first read.
        sqlx::query("SELECT COUNT(*) FROM repositories")
            .fetch_one(&mut *tx)
            .await?;
        Ok(Box::new(SqliteSnapshot { tx }))
    }
}

fn blob_row(r: &SqliteRow) -> Result<(Digest, BlobRecord)> {
    let size: i64 = r.try_get("size")?;
    let size = u64::try_from(size)
        .map_err(|_| MetaError::Corrupt(format!("blob size {size} is negative")))?;
    let key = r.try_get("storage_key")?;
    Ok((digest(r.try_get("digest")?)?, BlobRecord { size, key }))
}

struct SqliteSnapshot {
    tx: Transaction<'static, Sqlite>,
}

#[async_trait::async_trait]
impl Snapshot for SqliteSnapshot {
    async fn blobs(&mut self) -> Result<Vec<(Digest, BlobRecord)>> {
        let rows = sqlx::query("SELECT digest, size, storage_key FROM blobs")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(blob_row).collect()
    }

    async fn uploads(&mut self) -> Result<Vec<UploadSession>> {
        let rows = sqlx::query("SELECT id, repository, algorithm, created_at FROM uploads")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(upload_session).collect()
    }

    async fn rows(
        &mut self,
        table: &str,
        columns: &[String],
        out: mpsc::Sender<RowBatch>,
    ) -> Result<u64> {
        // Names come from the target's catalog, checked against this schema's: quote
        // them anyway.
        let list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("SELECT {list} FROM {}", quote(table));
        let mut stream = sqlx::query(&sql).fetch(&mut *self.tx);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut sent = 0u64;
        while let Some(row) = stream.try_next().await? {
            batch.push(values(&row)?);
            if batch.len() == BATCH_ROWS {
                sent += batch.len() as u64;
                if out.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(sent);
                }
            }
        }
        if !batch.is_empty() {
            sent += batch.len() as u64;
            let _ = out.send(batch).await;
        }
        Ok(sent)
    }
}

/// A row's values by the storage class each value actually has (SQLite's columns are
/// typed per value, not per column).
fn values(row: &SqliteRow) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(row.columns().len());
    for i in 0..row.columns().len() {
        let raw = row.try_get_raw(i)?;
        if raw.is_null() {
            out.push(Value::Null);
            continue;
        }
        let class = raw.type_info().name().to_ascii_uppercase();
        let value = match class.as_str() {
            "INTEGER" | "BOOLEAN" | "INT8" | "BIGINT" => Value::Int(row.try_get_unchecked(i)?),
            "REAL" => Value::Real(row.try_get_unchecked(i)?),
            "BLOB" => Value::Bytes(row.try_get_unchecked(i)?),
            _ => Value::Text(row.try_get_unchecked(i)?),
        };
        out.push(value);
    }
    Ok(out)
}

/// Every table of the schema with its columns, in order (for the schema comparison).
#[cfg(test)]
pub(crate) async fn schema(meta: &SqliteMeta) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&meta.reader)
    .await
    .expect("tables");
    let mut out = Vec::new();
    for t in tables {
        let cols: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM pragma_table_info('{t}') ORDER BY name"
        ))
        .fetch_all(&meta.reader)
        .await
        .expect("columns");
        out.push((t, cols));
    }
    for (_, cols) in &mut out {
        cols.sort();
    }
    out.sort();
    out
}
