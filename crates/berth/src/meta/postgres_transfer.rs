//! PostgreSQL as the target of `berth migrate` ([`MigrationTarget`]).
//!
//! One transaction replaces everything: `TRUNCATE` of every copied table, the
//! snapshot's rows inserted table by table (parents first) with their ids kept
//! (`OVERRIDING SYSTEM VALUE`), every identity sequence moved past the largest copied
//! id, and a `migrate_runs` row with the fingerprint of what was written. An
//! interrupted or failed run leaves the database exactly as it was. The `TRUNCATE`
//! waits at most [`LOCK_WAIT`] for nodes serving from the database, then fails with a
//! message saying to stop them: a cluster does not serve while its content is replaced.

use super::postgres::{now, PgMeta};
use super::transfer::{
    quote, MigrationTarget, RowBatch, Snapshot, TableCopied, TargetState, Value, TABLES,
};
use super::{MetaError, Result};
use oci::Digest;
use sqlx::postgres::PgConnection;
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::mpsc;

/// One migration at a time per database.
const MIGRATE_LOCK: i64 = 0x4265_7274_0004;
/// How long the replacement waits for other sessions' locks on the copied tables.
const LOCK_WAIT: &str = "10s";

/// What a database holds, in the terms a re-run compares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    repositories: i64,
    last_repository: i64,
    manifests: i64,
    last_manifest_at: i64,
    tags: i64,
    last_tag_at: i64,
    links: i64,
}

impl Fingerprint {
    async fn read(conn: &mut PgConnection) -> Result<Fingerprint> {
        let r = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM repositories), \
                    (SELECT COALESCE(MAX(id), 0) FROM repositories), \
                    (SELECT COUNT(*) FROM manifests), \
                    (SELECT COALESCE(MAX(created_at), 0) FROM manifests), \
                    (SELECT COUNT(*) FROM tags), \
                    (SELECT COALESCE(MAX(updated_at), 0) FROM tags), \
                    (SELECT COUNT(*) FROM repository_blobs)",
        )
        .fetch_one(conn)
        .await?;
        Ok(Fingerprint {
            repositories: r.try_get(0)?,
            last_repository: r.try_get(1)?,
            manifests: r.try_get(2)?,
            last_manifest_at: r.try_get(3)?,
            tags: r.try_get(4)?,
            last_tag_at: r.try_get(5)?,
            links: r.try_get(6)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.repositories == 0 && self.manifests == 0 && self.tags == 0 && self.links == 0
    }

    /// The stored form (compared, never parsed).
    fn key(&self) -> String {
        format!(
            "repositories={} last_repository={} manifests={} last_manifest_at={} tags={} last_tag_at={} links={}",
            self.repositories,
            self.last_repository,
            self.manifests,
            self.last_manifest_at,
            self.tags,
            self.last_tag_at,
            self.links
        )
    }

    fn describe(&self) -> String {
        format!(
            "{} repositories, {} manifests, {} tags, {} blob links",
            self.repositories, self.manifests, self.tags, self.links
        )
    }
}

#[async_trait::async_trait]
impl MigrationTarget for PgMeta {
    async fn state(&self, source: &str) -> Result<TargetState> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.explain(e.into()))?;
        let now = Fingerprint::read(&mut conn).await?;
        if now.is_empty() {
            return Ok(TargetState::Empty);
        }
        let last = sqlx::query(
            "SELECT source, fingerprint, finished_at FROM migrate_runs ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        let last: Option<(String, String, i64)> = match last {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        };
        Ok(match last {
            Some((s, f, at)) if s == source && f == now.key() => {
                TargetState::LastMigrated { finished_at: at }
            }
            last => TargetState::Occupied {
                holds: now.describe(),
                last_source: last.map(|(s, _, _)| s),
            },
        })
    }

    async fn replace(
        &self,
        source: &str,
        summary: &str,
        snapshot: &mut dyn Snapshot,
        copied: &mut (dyn FnMut(TableCopied) + Send),
    ) -> Result<Vec<TableCopied>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.explain(e.into()))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *tx)
            .await?;
        // Many statements, each bounded by the table's size, not by a request's timeout.
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
            .execute(&mut *tx)
            .await?;
        let all = TABLES.join(", ");
        if let Err(e) = sqlx::query(&format!("TRUNCATE {all} RESTART IDENTITY"))
            .execute(&mut *tx)
            .await
        {
            return Err(match sqlstate(&e).as_deref() {
                Some("55P03") => MetaError::Unavailable(format!(
                    "the target database is in use (its tables stayed locked for {LOCK_WAIT}): stop every Berth node serving from it, then run berth migrate again"
                )),
                _ => e.into(),
            });
        }
        let mut done = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let columns = columns(&mut tx, table).await?;
            let names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
            let check = ManifestCheck::for_table(table, &names);
            let nulled = super::transfer::nulled_columns(table, &names);
            let (send, mut receive) = mpsc::channel::<RowBatch>(4);
            let read = snapshot.rows(table, &names, send);
            let write = async {
                let mut written = 0u64;
                while let Some(mut batch) = receive.recv().await {
                    for row in &mut batch {
                        for &i in &nulled {
                            row[i] = Value::Null;
                        }
                    }
                    if let Some(check) = &check {
                        check.verify(&batch)?;
                    }
                    written += batch.len() as u64;
                    insert(&mut tx, table, &columns, batch).await?;
                }
                Ok::<u64, MetaError>(written)
            };
            let (read, write) = tokio::join!(read, write);
            let written = write?;
            let read = read?;
            if read != written {
                return Err(MetaError::Corrupt(format!(
                    "{table}: {read} rows read from the source but {written} written"
                )));
            }
            let one = TableCopied {
                table: table.to_string(),
                rows: written,
            };
            done.push(one.clone());
            copied(one);
        }
        let identities = sqlx::query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
        )
        .fetch_all(&mut *tx)
        .await?;
        for r in identities {
            let table: String = r.try_get(0)?;
            let column: String = r.try_get(1)?;
            if !TABLES.contains(&table.as_str()) {
                continue;
            }
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(MAX({c}), 0) + 1, false) FROM {t}",
                c = quote(&column),
                t = quote(&table)
            ))
            .bind(&table)
            .bind(&column)
            .execute(&mut *tx)
            .await?;
        }
        let fingerprint = Fingerprint::read(&mut tx).await?;
        sqlx::query(
            "INSERT INTO migrate_runs (source, finished_at, fingerprint, summary) VALUES ($1, $2, $3, $4)",
        )
        .bind(source)
        .bind(now())
        .bind(fingerprint.key())
        .bind(summary)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done)
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// The column types a copy can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    BigInt,
    Int,
    Bool,
    Text,
    Bytes,
    Float,
}

/// `table`'s columns (name, type) in order.
async fn columns(conn: &mut PgConnection, table: &str) -> Result<Vec<(String, ColumnType)>> {
    let rows = sqlx::query(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get(0)?;
        let ty: String = r.try_get(1)?;
        let ty = match ty.as_str() {
            "bigint" => ColumnType::BigInt,
            "integer" | "smallint" => ColumnType::Int,
            "boolean" => ColumnType::Bool,
            "text" | "character varying" => ColumnType::Text,
            "bytea" => ColumnType::Bytes,
            "double precision" | "real" => ColumnType::Float,
            other => {
                return Err(MetaError::Corrupt(format!(
                    "{table}.{name} has type {other}, which berth migrate cannot copy"
                )))
            }
        };
        out.push((name, ty));
    }
    if out.is_empty() {
        return Err(MetaError::Corrupt(format!(
            "the target database has no table {table}: is it migrated by the same Berth version?"
        )));
    }
    Ok(out)
}

/// A value converted for its target column.
enum Bound {
    BigInt(Option<i64>),
    Int(Option<i32>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Float(Option<f64>),
}

fn bound(table: &str, column: &str, ty: ColumnType, value: Value) -> Result<Bound> {
    let wrong = |v: &Value| {
        MetaError::Corrupt(format!(
            "{table}.{column}: the source holds {v:?}, which does not fit the column's type ({ty:?})"
        ))
    };
    Ok(match (ty, value) {
        (ColumnType::BigInt, Value::Null) => Bound::BigInt(None),
        (ColumnType::Int, Value::Null) => Bound::Int(None),
        (ColumnType::Bool, Value::Null) => Bound::Bool(None),
        (ColumnType::Text, Value::Null) => Bound::Text(None),
        (ColumnType::Bytes, Value::Null) => Bound::Bytes(None),
        (ColumnType::Float, Value::Null) => Bound::Float(None),
        (ColumnType::BigInt, Value::Int(i)) => Bound::BigInt(Some(i)),
        (ColumnType::Int, Value::Int(i)) => {
            Bound::Int(Some(i32::try_from(i).map_err(|_| wrong(&Value::Int(i)))?))
        }
        (ColumnType::Bool, Value::Int(i)) => Bound::Bool(Some(i != 0)),
        (ColumnType::Float, Value::Int(i)) => Bound::Float(Some(i as f64)),
        (ColumnType::Float, Value::Real(f)) => Bound::Float(Some(f)),
        (ColumnType::Text, Value::Text(s)) => Bound::Text(Some(s)),
        (ColumnType::Text, Value::Bytes(b)) => match String::from_utf8(b) {
            Ok(s) => Bound::Text(Some(s)),
            Err(e) => return Err(wrong(&Value::Bytes(e.into_bytes()))),
        },
        (ColumnType::Bytes, Value::Bytes(b)) => Bound::Bytes(Some(b)),
        (ColumnType::Bytes, Value::Text(s)) => Bound::Bytes(Some(s.into_bytes())),
        (_, v) => return Err(wrong(&v)),
    })
}

/// Insert one batch of rows into `table` with their ids as they are.
async fn insert(
    conn: &mut PgConnection,
    table: &str,
    columns: &[(String, ColumnType)],
    batch: RowBatch,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut rows = Vec::with_capacity(batch.len());
    for row in batch {
        if row.len() != columns.len() {
            return Err(MetaError::Corrupt(format!(
                "{table}: a row of {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        let mut out = Vec::with_capacity(row.len());
        for ((name, ty), v) in columns.iter().zip(row) {
            out.push(bound(table, name, *ty, v)?);
        }
        rows.push(out);
    }
    let list = columns
        .iter()
        .map(|(n, _)| quote(n))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "INSERT INTO {} ({list}) OVERRIDING SYSTEM VALUE ",
        quote(table)
    ));
    q.push_values(rows, |mut b, row| {
        for v in row {
            match v {
                Bound::BigInt(v) => b.push_bind(v),
                Bound::Int(v) => b.push_bind(v),
                Bound::Bool(v) => b.push_bind(v),
                Bound::Text(v) => b.push_bind(v),
                Bound::Bytes(v) => b.push_bind(v),
                Bound::Float(v) => b.push_bind(v),
            };
        }
    });
    q.build().execute(conn).await.map_err(|e| {
        MetaError::Corrupt(format!(
            "writing {table} into the target failed ({e}): the source's rows do not fit the target's constraints; nothing was written"
        ))
    })?;
    Ok(())
}

/// Every copied manifest's content is hashed and compared with its digest.
struct ManifestCheck {
    digest: usize,
    content: usize,
}

impl ManifestCheck {
    fn for_table(table: &str, columns: &[String]) -> Option<ManifestCheck> {
        if table != "manifests" {
            return None;
        }
        Some(ManifestCheck {
            digest: columns.iter().position(|c| c == "digest")?,
            content: columns.iter().position(|c| c == "content")?,
        })
    }

    fn verify(&self, batch: &RowBatch) -> Result<()> {
        for row in batch {
            let (Some(Value::Text(d)), Some(content)) =
                (row.get(self.digest), row.get(self.content))
            else {
                return Err(MetaError::Corrupt(
                    "a manifest row without digest or content".into(),
                ));
            };
            let content: &[u8] = match content {
                Value::Bytes(b) => b,
                Value::Text(s) => s.as_bytes(),
                _ => return Err(MetaError::Corrupt(format!("manifest {d}: no content"))),
            };
            let digest: Digest = d
                .parse()
                .map_err(|e| MetaError::Corrupt(format!("manifest digest {d:?}: {e}")))?;
            let actual = Digest::of(digest.algorithm(), content);
            if actual != digest {
                return Err(MetaError::Corrupt(format!(
                    "manifest {digest} in the source database holds content whose digest is {actual}: the source is damaged; delete that manifest on the source node (DELETE /v2/<repository>/manifests/{digest}) and run berth migrate again"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::postgres_test::TestDb;
    use super::super::sqlite::SqliteMeta;
    use super::super::sqlite_transfer::schema;
    use super::super::transfer::{
        MigrationSource, MigrationTarget, TargetState, NOT_COPIED, TABLES,
    };
    use super::super::{
        Manifests, MetaError, NewEvent, NewManifest, NewRegistry, Outbox, Projects, Repositories,
        SessionCaps, UploadSession, Uploads, UpstreamRegistries,
    };
    use oci::{Algorithm, Digest, Reference, RepoName, Tag};
    use sqlx::Row;

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn manifest(content: &str, children: &[(Digest, bool)]) -> NewManifest {
        NewManifest {
            digest: d(content),
            media_type: oci::media::OCI_MANIFEST.to_string(),
            content: content.as_bytes().to_vec(),
            subject: None,
            artifact_type: None,
            annotations: Some(r#"{"k":"v"}"#.into()),
            references: children.to_vec(),
            required_blobs: Vec::new(),
            required_manifests: Vec::new(),
        }
    }

    async fn pg_schema(db: &TestDb) -> Vec<(String, Vec<String>)> {
        let meta = db.open().await;
        let rows = sqlx::query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' \
             ORDER BY table_name, column_name",
        )
        .fetch_all(&meta.pool)
        .await
        .expect("columns");
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in rows {
            let (t, c): (String, String) = (r.get(0), r.get(1));
            match out.last_mut() {
                Some((last, cols)) if *last == t => cols.push(c),
                _ => out.push((t, vec![c])),
            }
        }
        meta.close().await;
        // Byte order, as the SQLite side (the database's collation may sort otherwise).
        for (_, cols) in &mut out {
            cols.sort();
        }
        out.sort();
        out
    }

    /// A new table or column in one schema only, or a table neither copied nor listed
    /// as not copied, fails here before it can be lost by a migration.
    #[tokio::test]
    async fn both_schemas_have_the_same_tables_and_every_table_is_accounted_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lite = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("sqlite");
        let db = TestDb::create().await;
        let pg = pg_schema(&db).await;
        db.drop_db().await;
        assert_eq!(schema(&lite).await, pg);
        let mut listed: Vec<&str> = TABLES.iter().chain(NOT_COPIED).copied().collect();
        listed.sort_unstable();
        let tables: Vec<&str> = pg.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(listed, tables);
    }

    #[tokio::test]
    async fn a_snapshot_replaces_the_target_whole_and_a_rerun_is_recognised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lite = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("sqlite");
        let app = repo("team/app");
        lite.link_blob(&app, &d("layer"), 5, &[])
            .await
            .expect("link");
        // Recorded at a key of the source's own: the target keeps it at its digest.
        lite.link_blob_at(&app, &d("config"), 3, Some("objects/source-key"), &[])
            .await
            .expect("link");
        let image = manifest("image", &[(d("layer"), false), (d("config"), false)]);
        let v1: Tag = "v1".parse().expect("tag");
        lite.put_manifest(&app, &image, std::slice::from_ref(&v1), &[])
            .await
            .expect("manifest");
        let index = manifest("index", &[(d("image"), true)]);
        lite.put_manifest(&app, &index, &["latest".parse().expect("tag")], &[])
            .await
            .expect("index");
        let session = UploadSession {
            id: "0d6e6f1c-upload".into(),
            repository: app.clone(),
            algorithm: Algorithm::Sha256,
            created_at: 1_700_000_000,
        };
        lite.create_upload(&session, SessionCaps::default())
            .await
            .expect("session")
            .expect("under caps");
        let event = |p: &str| NewEvent {
            endpoint: "hook".into(),
            payload: p.into(),
        };
        lite.enqueue(&[event("one"), event("two")])
            .await
            .expect("outbox");
        // A proxy-cache project: its registry is copied before it (and `insecure` arrives
        // as a boolean).
        let upstream = NewRegistry {
            name: "hub".into(),
            kind: "docker-hub".into(),
            url: "https://registry-1.docker.io".into(),
            description: String::new(),
            access_key: Some("puller".into()),
            access_secret: Some("secret".into()),
            insecure: true,
            ca_certificate: None,
        };
        let registry = lite
            .add_registry(&upstream)
            .await
            .expect("registry")
            .expect("free");
        let cache = lite
            .create_project("hub-cache", true, None)
            .await
            .expect("project")
            .expect("free");
        assert!(lite
            .set_project_registry(cache.id, registry)
            .await
            .expect("bind"));

        let db = TestDb::create().await;
        let pg = db.open().await;
        assert_eq!(pg.state("node-a").await.expect("state"), TargetState::Empty);
        // Something to be replaced: a repository the source does not have.
        pg.link_blob(&repo("stale/repo"), &d("stale"), 1, &[])
            .await
            .expect("stale");

        let mut snapshot = lite.snapshot().await.expect("snapshot");
        let mut seen = Vec::new();
        let copied = pg
            .replace("node-a", "summary", snapshot.as_mut(), &mut |t| {
                seen.push(t.table)
            })
            .await
            .expect("replace");
        drop(snapshot);
        assert_eq!(
            seen,
            TABLES.iter().map(|t| t.to_string()).collect::<Vec<_>>()
        );
        let rows = |t: &str| copied.iter().find(|c| c.table == t).expect("table").rows;
        assert_eq!(rows("manifests"), 2);
        assert_eq!(rows("manifest_references"), 3);
        assert_eq!(rows("outbox"), 2);

        // The target serves what the source held, and nothing else.
        assert!(!pg
            .repository_exists(&repo("stale/repo"))
            .await
            .expect("exists"));
        let got = pg
            .get_manifest(&app, &Reference::Tag(v1.clone()))
            .await
            .expect("get")
            .expect("the tag");
        assert_eq!(got.content, b"image");
        assert_eq!(
            pg.known_blob(&d("layer")).await.expect("known"),
            crate::meta::testsuite::by_digest(5)
        );
        assert_eq!(
            pg.known_blob(&d("config")).await.expect("known"),
            crate::meta::testsuite::by_digest(3),
            "a source's key names nothing in the target's store"
        );
        assert_eq!(
            pg.get_upload(&session.id).await.expect("upload"),
            Some(session.clone())
        );
        let claimed = pg
            .claim("hook", "node", 30)
            .await
            .expect("claim")
            .expect("entry");
        assert_eq!(claimed.payload, "one");
        // Booleans arrive as booleans: the index's child is a manifest, the layers not.
        let child: bool = sqlx::query_scalar(
            "SELECT child_is_manifest FROM manifest_references WHERE child_digest = $1",
        )
        .bind(d("image").to_string())
        .fetch_one(&pg.pool)
        .await
        .expect("reference");
        assert!(child);
        // Identities continue past the copied ids.
        pg.link_blob(&repo("team/new"), &d("new"), 1, &[])
            .await
            .expect("a new repository");
        pg.enqueue(&[event("three")]).await.expect("a new event");
        let copied_proxy = pg.proxy_project("hub-cache").await.expect("proxy");
        assert!(copied_proxy
            .as_ref()
            .is_some_and(|p| p.registry.registry.insecure));
        assert_eq!(
            copied_proxy,
            lite.proxy_project("hub-cache").await.expect("proxy")
        );
        let next = pg
            .add_registry(&NewRegistry {
                name: "another".into(),
                ..upstream
            })
            .await
            .expect("a new registry")
            .expect("free");
        assert!(next > registry);

        // That write makes the target something a re-run must not overwrite silently.
        match pg.state("node-a").await.expect("state") {
            TargetState::Occupied { last_source, .. } => {
                assert_eq!(last_source.as_deref(), Some("node-a"))
            }
            other => panic!("expected Occupied, got {other:?}"),
        }
        db.drop_db().await;
    }

    #[tokio::test]
    async fn a_rerun_with_nothing_written_since_is_recognised_and_a_damaged_manifest_changes_nothing(
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let lite = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("sqlite");
        let app = repo("team/app");
        lite.link_blob(&app, &d("layer"), 5, &[])
            .await
            .expect("link");
        lite.put_manifest(
            &app,
            &manifest("image", &[(d("layer"), false)]),
            &["v1".parse().expect("tag")],
            &[],
        )
        .await
        .expect("manifest");
        let db = TestDb::create().await;
        let pg = db.open().await;
        let mut snapshot = lite.snapshot().await.expect("snapshot");
        pg.replace("node-a", "first", snapshot.as_mut(), &mut |_| {})
            .await
            .expect("replace");
        drop(snapshot);
        assert!(matches!(
            pg.state("node-a").await.expect("state"),
            TargetState::LastMigrated { .. }
        ));
        assert!(matches!(
            pg.state("node-b").await.expect("state"),
            TargetState::Occupied { .. }
        ));

        // A manifest whose bytes no longer hash to its digest: refused, target unchanged.
        sqlx::query("UPDATE manifests SET content = X'00'")
            .execute(&lite.writer)
            .await
            .expect("damage");
        let mut snapshot = lite.snapshot().await.expect("snapshot");
        let err = pg
            .replace("node-a", "second", snapshot.as_mut(), &mut |_| {})
            .await
            .expect_err("a damaged manifest is refused");
        drop(snapshot);
        assert!(
            matches!(err, MetaError::Corrupt(ref m) if m.contains("damaged")),
            "{err}"
        );
        let got = pg
            .get_manifest(&app, &Reference::Digest(d("image")))
            .await
            .expect("get")
            .expect("still there");
        assert_eq!(got.content, b"image");
        assert!(matches!(
            pg.state("node-a").await.expect("state"),
            TargetState::LastMigrated { .. }
        ));
        db.drop_db().await;
    }
}
