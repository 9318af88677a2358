//! `database`: where Berth keeps its metadata (Berth's section; Distribution 3's
//! metadata-database settings use the same section name and the `pool.maxopen`,
//! `pool.maxlifetime`, `connecttimeout` spellings).
//!
//! ```yaml
//! database:
//!   driver: postgres            # sqlite (default: berth.db under the storage root) | postgres
//!   dsn: postgres://berth:secret@db.internal:5432/berth?sslmode=disable
//!   connecttimeout: 5s
//!   statementtimeout: 60s       # unset: the server's setting
//!   pool:
//!     maxopen: 10               # connections per node
//!     maxidletime: 10m
//!     maxlifetime: 30m
//!     acquiretimeout: 30s
//! ```
//!
//! Every key can be set from the environment as usual (`REGISTRY_DATABASE_DRIVER`,
//! `REGISTRY_DATABASE_DSN`, `REGISTRY_DATABASE_POOL_MAXOPEN`, ...). The DSN holds a
//! password: it is never logged, and `Debug` shows it redacted.

use super::yaml::Value;
use super::{bad, get_int, get_str, go_duration, ConfigError};
use std::time::Duration;

/// Which metadata backend (`database.driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Driver {
    /// Embedded SQLite, `berth.db` under the storage root.
    #[default]
    Sqlite,
    /// A PostgreSQL server shared by every node (`database.dsn`).
    Postgres,
}

/// The `database` section.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    pub driver: Driver,
    /// `database.dsn` (PostgreSQL only): `postgres://user:password@host:port/db?sslmode=...`.
    pub dsn: Option<String>,
    /// `database.connecttimeout` (default 5s).
    pub connect_timeout: Duration,
    /// `database.statementtimeout`: the server cancels longer statements (default: the
    /// server's setting).
    pub statement_timeout: Option<Duration>,
    /// `database.pool.maxopen`: connections per node (default 10).
    pub max_open: u32,
    /// `database.pool.maxidletime`: an idle connection is closed after this (default 10m;
    /// 0: never).
    pub max_idle_time: Option<Duration>,
    /// `database.pool.maxlifetime`: a connection is replaced after this (default 30m; 0:
    /// never).
    pub max_lifetime: Option<Duration>,
    /// `database.pool.acquiretimeout`: how long a request waits for a free connection
    /// (default 30s).
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            driver: Driver::Sqlite,
            dsn: None,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: None,
            max_open: 10,
            max_idle_time: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// `dsn` with its password replaced, for messages.
pub fn redact_dsn(dsn: &str) -> String {
    let Some((scheme, rest)) = dsn.split_once("://") else {
        return "<unparsable dsn>".into();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            let hidden = if userinfo.contains(':') {
                ":<redacted>"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => dsn.to_string(),
    }
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("driver", &self.driver)
            .field("dsn", &self.dsn.as_deref().map(redact_dsn))
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("max_open", &self.max_open)
            .field("max_idle_time", &self.max_idle_time)
            .field("max_lifetime", &self.max_lifetime)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// A duration where 0 means "never" (`None`).
fn optional(
    tree: &Value,
    key: &str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    Ok(match go_duration(tree, key)? {
        None => default,
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    })
}

fn positive(tree: &Value, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    match go_duration(tree, key)? {
        None => Ok(default),
        Some(d) if d.is_zero() => Err(bad(key, "must be longer than 0 (e.g. 5s)")),
        Some(d) => Ok(d),
    }
}

/// Read the `database` section (defaults when absent).
pub fn read(tree: &Value) -> Result<DatabaseConfig, ConfigError> {
    let d = DatabaseConfig::default();
    let driver = match get_str(tree, "database.driver")?.map(|s| s.trim().to_ascii_lowercase()) {
        None => Driver::Sqlite,
        Some(s) if s == "sqlite" || s == "sqlite3" => Driver::Sqlite,
        Some(s) if s == "postgres" || s == "postgresql" || s == "pgx" => Driver::Postgres,
        Some(s) => {
            return Err(bad(
                "database.driver",
                format!("{s:?} names no metadata database driver: use sqlite (embedded, the default) or postgres"),
            ))
        }
    };
    let dsn = get_str(tree, "database.dsn")?.filter(|s| !s.trim().is_empty());
    match (driver, &dsn) {
        (Driver::Postgres, None) => {
            return Err(bad(
                "database.dsn",
                "is required with database.driver postgres: postgres://user:password@host:5432/database?sslmode=disable (or set REGISTRY_DATABASE_DSN)",
            ))
        }
        (Driver::Postgres, Some(dsn)) => {
            let dsn = dsn.trim();
            if !(dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")) {
                return Err(bad(
                    "database.dsn",
                    format!(
                        "{:?} is not a PostgreSQL URL: write it as postgres://user:password@host:5432/database?sslmode=disable",
                        redact_dsn(dsn)
                    ),
                ));
            }
        }
        (Driver::Sqlite, Some(_)) => {
            return Err(bad(
                "database.dsn",
                "is only read with database.driver postgres; the SQLite database is berth.db under the storage root (set database.driver: postgres, or remove database.dsn)",
            ))
        }
        (Driver::Sqlite, None) => {}
    }
    let max_open = match get_int(tree, "database.pool.maxopen")? {
        None => d.max_open,
        Some(n) => u32::try_from(n)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| {
                bad(
                    "database.pool.maxopen",
                    format!("{n} is not between 1 and 10000"),
                )
            })?,
    };
    Ok(DatabaseConfig {
        driver,
        dsn: dsn.map(|s| s.trim().to_string()),
        connect_timeout: positive(tree, "database.connecttimeout", d.connect_timeout)?,
        statement_timeout: optional(tree, "database.statementtimeout", d.statement_timeout)?,
        max_open,
        max_idle_time: optional(tree, "database.pool.maxidletime", d.max_idle_time)?,
        max_lifetime: optional(tree, "database.pool.maxlifetime", d.max_lifetime)?,
        acquire_timeout: positive(tree, "database.pool.acquiretimeout", d.acquire_timeout)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            redact_dsn("postgres://berth:s3cret@db:5432/berth?sslmode=disable"),
            "postgres://berth:<redacted>@db:5432/berth?sslmode=disable"
        );
        assert_eq!(
            redact_dsn("postgres://berth@db/berth"),
            "postgres://berth@db/berth"
        );
        assert_eq!(redact_dsn("postgres://db:5432/x"), "postgres://db:5432/x");
    }
}

#[cfg(test)]
mod load {
    use super::Driver;
    use crate::config::{ConfigError, Loaded};
    use std::time::Duration;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        crate::config::load_tests::load(&format!("storage: filesystem\n{yaml}"), env)
    }

    fn error(yaml: &str, env: &[(&str, &str)]) -> String {
        load(yaml, env).expect_err("refused").to_string()
    }

    #[test]
    fn sqlite_by_default() {
        let l = load("", &[]).expect("load");
        assert_eq!(l.config.database.driver, Driver::Sqlite);
        assert_eq!(l.config.database.max_open, 10);
    }

    #[test]
    fn postgres_from_the_file_and_the_environment() {
        let l = load(
            "database:\n  driver: postgres\n  dsn: postgres://berth:pw@db:5432/berth?sslmode=disable\n  connecttimeout: 2s\n  pool:\n    maxopen: 25\n    maxlifetime: 0\n",
            &[],
        )
        .expect("load");
        let d = &l.config.database;
        assert_eq!(d.driver, Driver::Postgres);
        assert_eq!(d.max_open, 25);
        assert_eq!(d.connect_timeout, Duration::from_secs(2));
        assert_eq!(d.max_lifetime, None);
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        assert!(!format!("{d:?}").contains(":pw@"), "{d:?}");

        let l = load(
            "",
            &[
                ("REGISTRY_DATABASE_DRIVER", "postgres"),
                ("REGISTRY_DATABASE_DSN", "postgres://u:p@h:1/d"),
                ("REGISTRY_DATABASE_POOL_MAXOPEN", "3"),
                ("REGISTRY_DATABASE_STATEMENTTIMEOUT", "30s"),
            ],
        )
        .expect("load");
        let d = &l.config.database;
        assert_eq!(d.driver, Driver::Postgres);
        assert_eq!(d.dsn.as_deref(), Some("postgres://u:p@h:1/d"));
        assert_eq!(d.max_open, 3);
        assert_eq!(d.statement_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = error("database:\n  driver: postgres\n", &[]);
        assert!(e.contains("database.dsn") && e.contains("required"), "{e}");
        let e = error("database:\n  driver: mysql\n", &[]);
        assert!(e.contains("database.driver") && e.contains("mysql"), "{e}");
        let e = error("", &[("REGISTRY_DATABASE_DRIVER", "postgres")]);
        assert!(e.contains("database.dsn"), "{e}");
        let e = error(
            "database:\n  driver: postgres\n  dsn: mysql://u:secret@h/d\n",
            &[],
        );
        assert!(e.contains("database.dsn") && !e.contains("secret"), "{e}");
        let e = error("database:\n  dsn: postgres://h/d\n", &[]);
        assert!(e.contains("database.dsn") && e.contains("driver"), "{e}");
        let e = error(
            "database:\n  driver: postgres\n  dsn: postgres://h/d\n  pool:\n    maxopen: 0\n",
            &[],
        );
        assert!(e.contains("database.pool.maxopen"), "{e}");
        let e = error("database: postgres\n", &[]);
        assert!(e.contains("database") && e.contains("map"), "{e}");
    }

    #[test]
    fn unknown_keys_get_suggestions() {
        let l = load(
            "database:\n  driver: postgres\n  dsn: postgres://h/d\n  pool:\n    maxopn: 3\n",
            &[],
        )
        .expect("load");
        assert!(
            l.warnings
                .iter()
                .any(|w| w.contains("database.pool.maxopn") && w.contains("database.pool.maxopen")),
            "{:?}",
            l.warnings
        );
    }
}
