//! Tests of [`PgMeta`] against a real PostgreSQL server: the shared suites, the byte
//! order of names under a non-C database locale, concurrent start-up, and races between
//! writers of several "nodes" (connections).
//!
//! The server is `BERTH_TEST_POSTGRES_URL` when set (see `scripts/start-postgres.sh`);
//! otherwise the first test starts one with that script, once per test process, in a
//! directory shared by test runs (`$TMPDIR/berth-test-postgres-<uid>`: the script reuses a
//! running cluster there; `scripts/stop-postgres.sh DIR` stops it). Without PostgreSQL's
//! binaries the tests fail and say how to install them. Every test works in a database of
//! its own, created for it and dropped at its end.

use super::postgres::{PgMeta, PgOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::sync::OnceLock;

/// The URL of the test server (an existing database on it, for administration).
pub(crate) fn server_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("BERTH_TEST_POSTGRES_URL") {
            if !url.is_empty() {
                return url;
            }
        }
        start_server()
    })
    .clone()
}

fn start_server() -> String {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/start-postgres.sh");
    // SAFETY-free way to the user id: the owner of the process's /proc entry.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("berth-test-postgres-{uid}"));
    let lock = std::env::temp_dir().join(format!("berth-test-postgres-{uid}.lock"));
    // flock: test binaries started at once must not both initdb the same directory.
    let mut cmd = if which("flock") {
        let mut c = std::process::Command::new("flock");
        // -o: the lock is not inherited by the server the script starts.
        c.arg("-o").arg(&lock).arg("bash");
        c
    } else {
        std::process::Command::new("bash")
    };
    let out = cmd
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "BERTH_TEST_POSTGRES_URL is not set and {} could not start a PostgreSQL server:\n{stderr}\n\
         Install PostgreSQL with scripts/install-test-deps.sh (Debian package postgresql), or point \
         BERTH_TEST_POSTGRES_URL at a server (postgres://user@host:port/db; the user must be able to \
         CREATE DATABASE).",
        script.display()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export BERTH_TEST_POSTGRES_URL="))
        .unwrap_or_else(|| panic!("{} printed no URL:\n{stdout}\n{stderr}", script.display()))
        .to_string();
    eprintln!(
        "meta::postgres tests: using the PostgreSQL test cluster in {} ({url}); stop it with scripts/stop-postgres.sh {}",
        dir.display(),
        dir.display()
    );
    url
}

/// The CA certificate of the test server's TLS (`scripts/start-postgres.sh` makes one):
/// `BERTH_TEST_POSTGRES_CA`, else `ca.crt` in the server's directory.
pub(crate) fn server_ca() -> std::path::PathBuf {
    let url = server_url();
    if let Some(ca) = std::env::var_os("BERTH_TEST_POSTGRES_CA").filter(|v| !v.is_empty()) {
        return ca.into();
    }
    let dir = match std::env::var_os("BERTH_TEST_POSTGRES_DIR").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let uid = std::fs::metadata("/proc/self")
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            std::env::temp_dir().join(format!("berth-test-postgres-{uid}"))
        }
    };
    let ca = dir.join("ca.crt");
    assert!(
        ca.is_file(),
        "the PostgreSQL test server at {url} has no TLS CA at {}: start it with the current scripts/start-postgres.sh (stop an older one with scripts/stop-postgres.sh {}), or set BERTH_TEST_POSTGRES_CA for a server of your own",
        ca.display(),
        dir.display()
    );
    ca
}

fn which(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// `url` with its database replaced by `db`.
pub(crate) fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").expect("a postgres:// URL");
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A fresh database on the test server, dropped by [`TestDb::drop_db`].
pub(crate) struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A new, empty database (`extra` is appended to `CREATE DATABASE`, e.g. a locale).
    pub async fn try_create_with(extra: &str) -> Result<TestDb, sqlx::Error> {
        let name = format!("berth_test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&server_url())
            .await
            .expect("connect to the PostgreSQL test server");
        let made = admin
            .execute(format!("CREATE DATABASE {name} {extra}").as_str())
            .await;
        let _ = admin.close().await;
        made?;
        let url = with_database(&server_url(), &name);
        Ok(TestDb { name, url })
    }

    pub async fn create() -> TestDb {
        TestDb::try_create_with("").await.expect("create database")
    }

    pub async fn open(&self) -> PgMeta {
        PgMeta::open(&self.url, PgOptions::default())
            .await
            .expect("open PgMeta")
    }

    pub async fn drop_db(self) {
        let mut admin = PgConnection::connect(&server_url())
            .await
            .expect("connect to the PostgreSQL test server");
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop database");
        let _ = admin.close().await;
    }
}

mod suites {
    use super::TestDb;

    #[tokio::test]
    async fn shared_suite() {
        let db = TestDb::create().await;
        let meta = db.open().await;
        crate::meta::testsuite::run(&meta).await;
        crate::meta::testsuite::run_events(&meta).await;
        crate::meta::testsuite::transactional_events(&meta).await;
        crate::meta::testsuite::outbox_trim(&meta).await;
        crate::meta::testsuite::proxy_cache(&meta).await;
        crate::meta::testsuite::job_claims(&meta).await;
        crate::meta::testsuite::gc_runs(&meta).await;
        crate::meta::testsuite::immutable_rules(&meta).await;
        crate::meta::testsuite::quotas(&meta).await;
        crate::meta::testsuite::retentions(&meta).await;
        crate::meta::testsuite::registries(&meta).await;
        crate::meta::testsuite::completed_uploads(&meta).await;
        crate::meta::testsuite::blob_keys(&meta).await;
        // Reopening keeps everything (migrations are idempotent).
        meta.close().await;
        drop(meta);
        let meta = db.open().await;
        crate::meta::testsuite::check_persisted(&meta).await;
        meta.close().await;
        db.drop_db().await;
    }

    #[tokio::test]
    async fn housekeeping_suite() {
        let db = TestDb::create().await;
        let meta = db.open().await;
        crate::meta::testsuite::housekeeping(&meta).await;
        meta.close().await;
        db.drop_db().await;
    }

    /// The catalog part of the suite on a store holding nothing else.
    #[tokio::test]
    async fn catalog_suite() {
        let db = TestDb::create().await;
        let meta = db.open().await;
        crate::meta::testsuite_catalog::run(&meta).await;
        meta.close().await;
        db.drop_db().await;
    }
}

mod schema {
    use super::TestDb;
    use crate::meta::postgres::{PgMeta, PgOptions};
    use crate::meta::{Housekeeping, Manifests, MetaError, NewManifest, Repositories};
    use oci::{Algorithm, Digest, RepoName, Tag};

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    fn manifest(content: &str) -> NewManifest {
        NewManifest {
            digest: Digest::of(Algorithm::Sha256, content.as_bytes()),
            media_type: oci::media::OCI_MANIFEST.to_string(),
            content: content.as_bytes().to_vec(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Vec::new(),
            required_blobs: Vec::new(),
            required_manifests: Vec::new(),
        }
    }

    /// Several nodes starting at once on a fresh database all come up (sqlx's migrator
    /// serializes them on an advisory lock), and the schema is there once.
    #[tokio::test]
    async fn concurrent_opens_of_a_fresh_database() {
        let db = TestDb::create().await;
        let opens = (0..6).map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgMeta::open(&url, PgOptions::default()).await })
        });
        let metas: Vec<PgMeta> = futures_util::future::join_all(opens)
            .await
            .into_iter()
            .map(|r| r.expect("join").expect("every concurrent open succeeds"))
            .collect();
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(&metas[0].pool)
            .await
            .expect("migrations");
        let files = std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"),
        )
        .expect("migrations dir")
        .count();
        assert_eq!(applied as usize, files);
        for m in &metas {
            assert_eq!(
                crate::meta::Maintenance::setting(m, crate::meta::BLOB_KEYS_SETTING)
                    .await
                    .expect("setting")
                    .as_deref(),
                Some("on"),
                "a database this release created"
            );
        }
        // One an older release created (no row) does not gain it on a later open.
        sqlx::query("DELETE FROM settings")
            .execute(&metas[0].pool)
            .await
            .expect("older");
        let later = PgMeta::open(&db.url, PgOptions::default())
            .await
            .expect("reopen");
        assert_eq!(
            crate::meta::Maintenance::setting(&later, crate::meta::BLOB_KEYS_SETTING)
                .await
                .expect("setting"),
            None
        );
        later.close().await;
        for m in &metas {
            m.link_blob(
                &repo("up/app"),
                &Digest::of(Algorithm::Sha256, b"x"),
                1,
                &[],
            )
            .await
            .expect("usable");
        }
        for m in metas {
            m.close().await;
        }
        db.drop_db().await;
    }

    /// A rolling upgrade: a node of a newer version migrated the database first, then a
    /// node of this version (re)starts on it. Migrations are expand-only (`tests/tidy.rs`
    /// checks), so it starts and works instead of refusing an unknown migration.
    #[tokio::test]
    async fn a_node_starts_on_a_schema_a_newer_version_migrated() {
        let db = TestDb::create().await;
        let meta = db.open().await;
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99990101, 'from a newer version', true, '\\x00', 1)",
        )
        .execute(&meta.pool)
        .await
        .expect("a newer migration recorded");
        sqlx::query("CREATE TABLE newer_feature (id BIGINT PRIMARY KEY)")
            .execute(&meta.pool)
            .await
            .expect("its table");
        meta.close().await;
        let again = db.open().await;
        again
            .link_blob(
                &repo("up/app"),
                &Digest::of(Algorithm::Sha256, b"x"),
                1,
                &[],
            )
            .await
            .expect("usable");
        again.close().await;
        db.drop_db().await;
    }

    /// `sslmode` in the DSN is honoured: the role `tlsonly` (the test server refuses it
    /// without TLS) connects with `verify-full` against the server's CA, the session is
    /// encrypted, and a certificate the given roots do not vouch for is refused.
    #[tokio::test]
    async fn tls_is_used_when_the_dsn_asks_and_the_certificate_is_checked() {
        let ca = super::server_ca();
        let db = TestDb::create().await;
        let url = db.url.replacen("://postgres@", "://tlsonly@", 1);
        assert_ne!(url, db.url, "the test URL names the postgres user");
        let opts = PgOptions::default;
        let plain = PgMeta::open(&format!("{url}?sslmode=disable"), opts())
            .await
            .err()
            .expect("the server refuses tlsonly without TLS");
        assert!(plain.to_string().contains("no encryption"), "{plain}");
        let meta = PgMeta::open(
            &format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
            opts(),
        )
        .await
        .expect("verify-full with the server's CA");
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&meta.pool)
                .await
                .expect("pg_stat_ssl");
        assert!(encrypted);
        meta.link_blob(
            &repo("tls/app"),
            &Digest::of(Algorithm::Sha256, b"x"),
            1,
            &[],
        )
        .await
        .expect("usable over TLS");
        meta.close().await;
        let stranger = PgMeta::open(
            &format!("{url}?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt"),
            opts(),
        )
        .await
        .err()
        .expect("a certificate from a CA the roots do not hold is refused");
        assert!(
            stranger.to_string().contains("cannot connect"),
            "{stranger}"
        );
        db.drop_db().await;
    }

    /// Names, tags and digests list in byte order even when the database's own collation
    /// is a natural-language one (the columns are `COLLATE "C"`).
    #[tokio::test]
    async fn byte_order_under_a_non_c_database_locale() {
        // A libc locale if the system has one, else an ICU one (no OS locale needed).
        let mut created = None;
        for (what, extra) in [
            (
                "libc en_US.UTF-8",
                "TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8'",
            ),
            (
                "ICU en-US",
                "TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
            ),
        ] {
            match TestDb::try_create_with(extra).await {
                Ok(db) => {
                    created = Some((what, db));
                    break;
                }
                Err(e) => eprintln!("no {what} collation on this server ({e}); trying the next"),
            }
        }
        let Some((what, db)) = created else {
            eprintln!(
                "SKIPPED byte_order_under_a_non_c_database_locale: the server has neither the en_US.UTF-8 locale nor ICU"
            );
            return;
        };
        let meta = db.open().await;
        // Prove the database's default collation is not byte order.
        let natural: Vec<String> = sqlx::query_scalar(
            "SELECT x FROM unnest(ARRAY['B', 'a', '_', 'Z1', 'z']) AS x ORDER BY x",
        )
        .fetch_all(&meta.pool)
        .await
        .expect("sort");
        assert_ne!(natural, ["B", "Z1", "_", "a", "z"], "{what} sorts like C?");

        let r = repo("order/app");
        let tags: Vec<Tag> = ["B", "a", "_", "Z1", "z"]
            .iter()
            .map(|t| t.parse().expect("tag"))
            .collect();
        meta.put_manifest(&r, &manifest("m"), &tags, &[])
            .await
            .expect("put");
        let listed = meta.list_tags(&r, None, 100).await.expect("tags");
        assert_eq!(
            listed,
            Some(vec![
                "B".into(),
                "Z1".into(),
                "_".into(),
                "a".into(),
                "z".into()
            ])
        );
        let after = meta.list_tags(&r, Some("Z1"), 100).await.expect("tags");
        assert_eq!(after, Some(vec!["_".into(), "a".into(), "z".into()]));
        // The manifest's tags compared with a byte-sorted list: accepted as they are.
        let mut sorted = tags.clone();
        sorted.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(
            meta.delete_manifest(&r, &manifest("m").digest, Some(&sorted), &[])
                .await
                .expect("delete"),
            crate::meta::ManifestDeletion::Deleted
        );
        // Repository listings and `last` paging.
        for name in ["b/x", "a_b/x", "a0/x", "a-b/x", "a.b/x", "ab/x"] {
            meta.link_blob(
                &repo(name),
                &Digest::of(Algorithm::Sha256, name.as_bytes()),
                1,
                &[],
            )
            .await
            .expect("link");
        }
        let all = meta.list_repositories(None, 100, None).await.expect("list");
        let mut want = all.clone();
        want.sort();
        assert_eq!(all, want, "byte order");
        assert_eq!(all, ["a-b/x", "a.b/x", "a0/x", "a_b/x", "ab/x", "b/x"]);
        let page = meta
            .list_repositories(Some("a0/x"), 2, None)
            .await
            .expect("page");
        assert_eq!(page, ["a_b/x", "ab/x"]);
        let within = meta
            .list_repositories(None, 100, Some(&["ab".into(), "a-b".into(), "a_b".into()]))
            .await
            .expect("within");
        assert_eq!(within, ["a-b/x", "a_b/x", "ab/x"]);
        meta.close().await;
        db.drop_db().await;
        eprintln!("byte order checked under the {what} collation");
    }

    /// Sizes are 64-bit: a layer over 4 GiB is recorded and counted exactly.
    #[tokio::test]
    async fn sizes_beyond_32_bits() {
        let db = TestDb::create().await;
        let meta = db.open().await;
        let big = 5u64 << 30;
        let d = Digest::of(Algorithm::Sha256, b"big");
        meta.link_blob(&repo("big/app"), &d, big, &[])
            .await
            .expect("link");
        assert_eq!(
            meta.known_blob(&d).await.expect("known"),
            crate::meta::testsuite::by_digest(big)
        );
        assert_eq!(meta.stats().await.expect("stats").blob_bytes, big);
        meta.close().await;
        db.drop_db().await;
    }

    /// A server that cannot be reached: the error names host and port, never the
    /// password, and says what to check.
    #[tokio::test]
    async fn unreachable_server_is_named_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        // Nothing listens there any more.
        let dsn = format!("postgres://berth:hunter2-secret@127.0.0.1:{port}/berth");
        let e = match PgMeta::open(&dsn, PgOptions::default()).await {
            Err(e) => e,
            Ok(_) => panic!("connected to nothing"),
        };
        let text = e.to_string();
        assert!(matches!(e, MetaError::Unavailable(_)), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("check"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// Disk full on PostgreSQL is recognized as out of space.
    #[test]
    fn disk_full_is_out_of_space() {
        #[derive(Debug)]
        struct Full;
        impl std::fmt::Display for Full {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("could not extend file: No space left on device")
            }
        }
        impl std::error::Error for Full {}
        impl sqlx::error::DatabaseError for Full {
            fn message(&self) -> &str {
                "could not extend file"
            }
            fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
                Some("53100".into())
            }
            fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
                self
            }
            fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
                self
            }
            fn kind(&self) -> sqlx::error::ErrorKind {
                sqlx::error::ErrorKind::Other
            }
        }
        let e = MetaError::Database(sqlx::Error::Database(Box::new(Full)));
        assert!(e.is_out_of_space());
    }
}

/// Writers of several nodes at once: each "node" is a [`PgMeta`] of its own (its own
/// pool) on the same database.
mod races {
    use super::TestDb;

    /// Nodes claiming one background job at the same moment: exactly one wins, and
    /// every loser is told who holds it.
    #[tokio::test]
    async fn one_of_many_simultaneous_job_claims_wins() {
        use crate::meta::Maintenance;
        let db = TestDb::create().await;
        let meta = std::sync::Arc::new(db.open().await);
        let claims = (0..16).map(|i| {
            let meta = meta.clone();
            tokio::spawn(async move {
                meta.claim_job(
                    "uploadpurge",
                    &format!("node-{i}"),
                    std::time::Duration::from_secs(60),
                )
                .await
                .expect("claim")
            })
        });
        let results: Vec<_> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .map(|r| r.expect("join"))
            .collect();
        let winners: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        let holders: std::collections::BTreeSet<_> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|h| h.owner.clone()))
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "every loser names the one winner: {results:?}"
        );
        meta.close().await;
        db.drop_db().await;
    }
    use crate::meta::{
        Housekeeping, Manifests, MetaError, NewEvent, NewManifest, Outbox, Reference, Repositories,
        SessionCapReached, SessionCaps, UploadSession, Uploads,
    };
    use oci::{Algorithm, Digest, RepoName, Tag};
    use std::sync::Arc;

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    fn d(s: &str) -> Digest {
        Digest::of(Algorithm::Sha256, s.as_bytes())
    }

    fn image(content: &str, layer: &Digest) -> NewManifest {
        NewManifest {
            digest: d(content),
            media_type: oci::media::OCI_MANIFEST.to_string(),
            content: content.as_bytes().to_vec(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: vec![(layer.clone(), false)],
            required_blobs: vec![layer.clone()],
            required_manifests: Vec::new(),
        }
    }

    /// "GC forgets blob X" against "a manifest requiring X is written", raced 50 times:
    /// never both; the store never holds a manifest naming a forgotten blob.
    #[tokio::test]
    async fn manifest_write_against_gc_forget() {
        let db = TestDb::create().await;
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let (mut forgot, mut wrote) = (0, 0);
        for i in 0..50 {
            let r = repo(&format!("race/app{i}"));
            let layer = d(&format!("layer {i}"));
            a.link_blob(&r, &layer, 10, &[]).await.expect("link");
            a.backdate(7200).await.expect("backdate");
            let cutoff = crate::meta::now() - 3600;
            let m = image(&format!("manifest {i}"), &layer);
            let gc = {
                let b = b.clone();
                let layer = layer.clone();
                tokio::spawn(async move {
                    let lease = std::time::Duration::from_secs(30);
                    b.gc_forget_blob(&layer, cutoff, &format!("gc {i}"), lease)
                        .await
                        .expect("forget")
                })
            };
            let push = {
                let a = a.clone();
                let r = r.clone();
                tokio::spawn(async move { a.put_manifest(&r, &m, &[], &[]).await })
            };
            let forgotten = gc.await.expect("join");
            let pushed = match push.await.expect("join") {
                Ok(()) => true,
                Err(MetaError::MissingReferences(gone)) => {
                    assert_eq!(gone, vec![layer.clone()]);
                    false
                }
                Err(e) => panic!("push failed otherwise: {e}"),
            };
            assert!(
                forgotten != pushed,
                "round {i}: forgotten={forgotten} pushed={pushed}"
            );
            let stored = a
                .get_manifest(&r, &Reference::Digest(d(&format!("manifest {i}"))))
                .await
                .expect("get")
                .is_some();
            let known = a.known_blob(&layer).await.expect("known").is_some();
            assert_eq!(stored, pushed, "round {i}");
            assert!(
                !stored || known,
                "round {i}: a manifest names a forgotten blob"
            );
            forgot += usize::from(forgotten);
            wrote += usize::from(pushed);
        }
        eprintln!("manifest vs forget: {forgot} forgotten first, {wrote} written first");
        a.close().await;
        b.close().await;
        db.drop_db().await;
    }

    /// Two nodes push the same tag to different manifests at once: one wins, the tag
    /// points at a stored manifest, and both manifests are stored.
    #[tokio::test]
    async fn concurrent_pushes_of_one_tag() {
        let db = TestDb::create().await;
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let r = repo("race/tags");
        let layer = d("shared layer");
        a.link_blob(&r, &layer, 1, &[]).await.expect("link");
        let tag: Tag = "latest".parse().expect("tag");
        for i in 0..20 {
            let one = image(&format!("one {i}"), &layer);
            let two = image(&format!("two {i}"), &layer);
            let (x, y) = tokio::join!(
                {
                    let (a, r, tag, one) = (a.clone(), r.clone(), tag.clone(), one.clone());
                    async move { a.put_manifest(&r, &one, &[tag], &[]).await }
                },
                {
                    let (b, r, tag, two) = (b.clone(), r.clone(), tag.clone(), two.clone());
                    async move { b.put_manifest(&r, &two, &[tag], &[]).await }
                }
            );
            x.expect("push one");
            y.expect("push two");
            let now = a
                .get_manifest(&r, &Reference::Tag(tag.clone()))
                .await
                .expect("get")
                .expect("tagged");
            assert!(now.digest == one.digest || now.digest == two.digest);
            for m in [&one, &two] {
                assert!(a
                    .get_manifest(&r, &Reference::Digest(m.digest.clone()))
                    .await
                    .expect("get")
                    .is_some());
            }
            assert_eq!(
                a.list_tags(&r, None, 10).await.expect("tags"),
                Some(vec!["latest".to_string()])
            );
        }
        a.close().await;
        b.close().await;
        db.drop_db().await;
    }

    /// Two nodes push different manifests to one new immutable tag at once, 20 times
    /// over: each time exactly one wins, the other is refused with nothing written, and
    /// the tag points at the winner.
    #[tokio::test]
    async fn concurrent_pushes_of_one_immutable_tag() {
        let db = TestDb::create().await;
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let r = repo("race/frozen");
        let layer = d("shared layer");
        a.link_blob(&r, &layer, 1, &[]).await.expect("link");
        for i in 0..20 {
            let tag: Tag = format!("v{i}").parse().expect("tag");
            let one = image(&format!("one {i}"), &layer);
            let two = image(&format!("two {i}"), &layer);
            let (x, y) = tokio::join!(
                {
                    let (a, r, tag, one) = (a.clone(), r.clone(), tag.clone(), one.clone());
                    async move {
                        a.put_manifest_guarded(
                            &r,
                            &one,
                            std::slice::from_ref(&tag),
                            std::slice::from_ref(&tag),
                            &[],
                        )
                        .await
                    }
                },
                {
                    let (b, r, tag, two) = (b.clone(), r.clone(), tag.clone(), two.clone());
                    async move {
                        b.put_manifest_guarded(
                            &r,
                            &two,
                            std::slice::from_ref(&tag),
                            std::slice::from_ref(&tag),
                            &[],
                        )
                        .await
                    }
                }
            );
            let (winner, loser, refused) = match (x, y) {
                (Ok(()), Err(e)) => (&one, &two, e),
                (Err(e), Ok(())) => (&two, &one, e),
                other => panic!("push {i}: expected exactly one winner, got {other:?}"),
            };
            assert!(
                matches!(&refused, crate::meta::MetaError::ImmutableTag(t) if *t == tag),
                "{refused:?}"
            );
            let now = a
                .get_manifest(&r, &Reference::Tag(tag.clone()))
                .await
                .expect("get")
                .expect("tagged");
            assert_eq!(now.digest, winner.digest);
            assert!(a
                .get_manifest(&r, &Reference::Digest(loser.digest.clone()))
                .await
                .expect("get")
                .is_none());
        }
        a.close().await;
        b.close().await;
        db.drop_db().await;
    }

    /// Two nodes link 24 different blobs (and one shared by all) into three repositories
    /// of a project at once, with room for 10: exactly 10 new blobs get in, the shared
    /// one is counted once, and the usage equals a fresh count.
    #[tokio::test]
    async fn concurrent_links_never_pass_a_quota() {
        use crate::meta::{Projects, Quotas};
        let db = TestDb::create().await;
        let a = Arc::new(db.open().await);
        let b = Arc::new(db.open().await);
        let p = a
            .create_project("race", false, None)
            .await
            .expect("create")
            .expect("free");
        a.set_quota(p.id, Some(11 * 100)).await.expect("quota");
        let mut tasks = Vec::new();
        for i in 0..24 {
            let node = if i % 2 == 0 { a.clone() } else { b.clone() };
            let r = repo(&format!("race/r{}", i % 3));
            tasks.push(tokio::spawn(async move {
                let shared = node.link_blob(&r, &d("shared"), 100, &[]).await;
                let own = node.link_blob(&r, &d(&format!("own {i}")), 100, &[]).await;
                (shared, own)
            }));
        }
        let mut won = 0;
        for t in tasks {
            let (shared, own) = t.await.expect("task");
            shared.expect("the shared blob fits, once");
            match own {
                Ok(()) => won += 1,
                Err(MetaError::QuotaExceeded { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 10);
        let q = a.quota(p.id).await.expect("quota").expect("set");
        assert_eq!(q.used, 1100);
        let counted = a
            .set_quota(p.id, Some(1100))
            .await
            .expect("recount")
            .expect("set");
        assert_eq!(counted.used, 1100, "kept exact");
        a.close().await;
        b.close().await;
        db.drop_db().await;
    }

    /// Many tasks on three nodes append events while a reader polls by sequence number,
    /// remembering the highest it has seen: it never skips one that commits later.
    #[tokio::test]
    async fn outbox_readers_never_skip_a_committed_event() {
        let db = TestDb::create().await;
        let nodes: Vec<Arc<crate::meta::postgres::PgMeta>> = vec![
            Arc::new(db.open().await),
            Arc::new(db.open().await),
            Arc::new(db.open().await),
        ];
        const WRITERS: usize = 12;
        const EACH: usize = 25;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let node = nodes[w % nodes.len()].clone();
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let event = NewEvent {
                        endpoint: "hook".into(),
                        payload: format!("{w}-{i}"),
                    };
                    if i % 2 == 0 {
                        node.enqueue(&[event]).await.expect("enqueue");
                    } else {
                        // Through a change's own transaction.
                        let r = repo(&format!("events/w{w}"));
                        node.link_blob(&r, &d(&format!("{w}-{i}")), 1, &[event])
                            .await
                            .expect("link");
                    }
                }
            }));
        }
        let reader = nodes[0].clone();
        let mut last = 0i64;
        let mut seen = std::collections::BTreeSet::new();
        let mut skipped = Vec::new();
        let mut done = false;
        loop {
            let rows: Vec<(i64, String)> =
                sqlx::query_as("SELECT seq, payload FROM outbox WHERE seq > $1 ORDER BY seq")
                    .bind(last)
                    .fetch_all(&reader.pool)
                    .await
                    .expect("poll");
            for (seq, payload) in rows {
                last = seq;
                seen.insert(payload);
            }
            // Anything at or below `last` that the reader has not seen was skipped.
            let below: Vec<String> =
                sqlx::query_scalar("SELECT payload FROM outbox WHERE seq <= $1")
                    .bind(last)
                    .fetch_all(&reader.pool)
                    .await
                    .expect("check");
            skipped.extend(below.into_iter().filter(|p| !seen.contains(p)));
            if done {
                break;
            }
            // One more poll after the last writer is done, then stop.
            done = writers.iter().all(|w| w.is_finished());
            tokio::task::yield_now().await;
        }
        for w in writers {
            w.await.expect("join");
        }
        assert!(skipped.is_empty(), "skipped: {skipped:?}");
        assert_eq!(seen.len(), WRITERS * EACH);
        for n in nodes {
            n.close().await;
        }
        db.drop_db().await;
    }

    /// Upload sessions created on three nodes at once never exceed the caps.
    #[tokio::test]
    async fn session_caps_hold_under_concurrency() {
        let db = TestDb::create().await;
        let nodes: Vec<Arc<crate::meta::postgres::PgMeta>> = vec![
            Arc::new(db.open().await),
            Arc::new(db.open().await),
            Arc::new(db.open().await),
        ];
        let caps = SessionCaps {
            total: 15,
            per_repository: 6,
        };
        let mut tasks = Vec::new();
        for i in 0..60 {
            let node = nodes[i % nodes.len()].clone();
            tasks.push(tokio::spawn(async move {
                let s = UploadSession {
                    id: format!("s{i}"),
                    repository: repo(&format!("caps/r{}", i % 4)),
                    algorithm: Algorithm::Sha256,
                    created_at: 1,
                };
                node.create_upload(&s, caps).await.expect("create")
            }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(()) => ok += 1,
                Err(SessionCapReached::Repository(6) | SessionCapReached::Total(15)) => {}
                Err(other) => panic!("unexpected cap {other:?}"),
            }
        }
        let per_repo: Vec<(String, i64)> = sqlx::query_as(
            "SELECT repository, COUNT(*) FROM uploads GROUP BY repository ORDER BY repository",
        )
        .fetch_all(&nodes[0].pool)
        .await
        .expect("count");
        let total: i64 = per_repo.iter().map(|(_, n)| n).sum();
        assert_eq!(total, ok);
        assert!(total <= 15, "{per_repo:?}");
        assert!(per_repo.iter().all(|(_, n)| *n <= 6), "{per_repo:?}");
        assert_eq!(
            total, 15,
            "the caps are reached, not undershot: {per_repo:?}"
        );
        for n in nodes {
            n.close().await;
        }
        db.drop_db().await;
    }
}
