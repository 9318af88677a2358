//! PostgreSQL implementation of upstream registries and proxy-cache projects
//! ([`UpstreamRegistries`]; schema in `migrations/postgres/0015_registries.sql`). Deleting
//! a registry locks its row (`FOR UPDATE`) before it looks for projects bound to it;
//! binding a project locks it `FOR SHARE` first, so one of the two waits for the other.

use super::postgres::{now, PgMeta};
use super::{
    Conflict, NewRegistry, ProxyProject, RegistryDeletion, Result, StoredRegistry,
    UpstreamRegistries,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// A registry's columns (13, from `r`), as [`registry`] reads them.
const REGISTRY_COLUMNS: &str = "r.id, r.name, r.kind, r.url, r.description, r.access_key,
     r.access_secret, r.insecure, r.ca_certificate, r.status, r.checked_at, r.created_at,
     r.updated_at";

/// The registry of [`REGISTRY_COLUMNS`] starting at column `at`.
fn registry(r: &PgRow, at: usize) -> Result<StoredRegistry> {
    Ok(StoredRegistry {
        id: r.try_get(at)?,
        registry: NewRegistry {
            name: r.try_get(at + 1)?,
            kind: r.try_get(at + 2)?,
            url: r.try_get(at + 3)?,
            description: r.try_get(at + 4)?,
            access_key: r.try_get(at + 5)?,
            access_secret: r.try_get(at + 6)?,
            insecure: r.try_get(at + 7)?,
            ca_certificate: r.try_get(at + 8)?,
        },
        status: r.try_get(at + 9)?,
        checked_at: r.try_get(at + 10)?,
        created_at: r.try_get(at + 11)?,
        updated_at: r.try_get(at + 12)?,
    })
}

fn proxy(r: &PgRow) -> Result<ProxyProject> {
    Ok(ProxyProject {
        project_id: r.try_get(0)?,
        project: r.try_get(1)?,
        registry: registry(r, 2)?,
    })
}

#[async_trait::async_trait]
impl UpstreamRegistries for PgMeta {
    async fn add_registry(&self, r: &NewRegistry) -> Result<std::result::Result<i64, Conflict>> {
        self.read(async {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO registries (name, kind, url, description, access_key, access_secret,
                                         insecure, ca_certificate, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .bind(&r.name)
            .bind(&r.kind)
            .bind(&r.url)
            .bind(&r.description)
            .bind(r.access_key.as_deref())
            .bind(r.access_secret.as_deref())
            .bind(r.insecure)
            .bind(r.ca_certificate.as_deref())
            .bind(now())
            .fetch_optional(&self.pool)
            .await?;
            Ok(id.ok_or(Conflict))
        })
        .await
    }

    async fn registries(&self) -> Result<Vec<StoredRegistry>> {
        self.read(async {
            let rows = sqlx::query(&format!(
                "SELECT {REGISTRY_COLUMNS} FROM registries r ORDER BY r.id"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(|r| registry(r, 0)).collect()
        })
        .await
    }

    async fn registry(&self, id: i64) -> Result<Option<StoredRegistry>> {
        self.read(async {
            let row = sqlx::query(&format!(
                "SELECT {REGISTRY_COLUMNS} FROM registries r WHERE r.id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(|r| registry(r, 0)).transpose()
        })
        .await
    }

    async fn update_registry(
        &self,
        id: i64,
        r: &NewRegistry,
    ) -> Result<std::result::Result<bool, Conflict>> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE registries SET name = $2, kind = $3, url = $4, description = $5,
                        access_key = $6, access_secret = $7, insecure = $8, ca_certificate = $9,
                        updated_at = $10
                  WHERE id = $1",
            )
            .bind(id)
            .bind(&r.name)
            .bind(&r.kind)
            .bind(&r.url)
            .bind(&r.description)
            .bind(r.access_key.as_deref())
            .bind(r.access_secret.as_deref())
            .bind(r.insecure)
            .bind(r.ca_certificate.as_deref())
            .bind(now())
            .execute(&self.pool)
            .await;
            match done {
                Ok(done) => Ok(Ok(done.rows_affected() == 1)),
                // The new name is another registry's (the statement changed nothing).
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Err(Conflict)),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn delete_registry(&self, id: i64) -> Result<RegistryDeletion> {
        self.write("deleting an upstream registry", || async move {
            let mut tx = self.pool.begin().await?;
            // Locked first: a project being bound to it (which holds the row FOR SHARE)
            // has committed before the check below, or waits and then finds it gone.
            let found: Option<i64> =
                sqlx::query_scalar("SELECT id FROM registries WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Ok(RegistryDeletion::NotFound);
            }
            let users: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM projects WHERE registry_id = $1 ORDER BY name COLLATE \"C\"",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            if !users.is_empty() {
                return Ok(RegistryDeletion::InUse(users));
            }
            sqlx::query("DELETE FROM registries WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(RegistryDeletion::Deleted)
        })
        .await
    }

    async fn set_registry_status(&self, id: i64, status: &str, at: i64) -> Result<()> {
        self.read(async {
            sqlx::query("UPDATE registries SET status = $2, checked_at = $3 WHERE id = $1")
                .bind(id)
                .bind(status)
                .bind(at)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn set_project_registry(&self, project_id: i64, registry_id: i64) -> Result<bool> {
        self.write("binding a project to an upstream registry", || async move {
            let mut tx = self.pool.begin().await?;
            let found: Option<i64> =
                sqlx::query_scalar("SELECT id FROM registries WHERE id = $1 FOR SHARE")
                    .bind(registry_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if found.is_none() {
                return Ok(false);
            }
            let done =
                sqlx::query("UPDATE projects SET registry_id = $2, updated_at = $3 WHERE id = $1")
                    .bind(project_id)
                    .bind(registry_id)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn project_registry_id(&self, project_id: i64) -> Result<Option<i64>> {
        self.read(async {
            let id: Option<Option<i64>> =
                sqlx::query_scalar("SELECT registry_id FROM projects WHERE id = $1")
                    .bind(project_id)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(id.flatten())
        })
        .await
    }

    async fn proxy_projects(&self) -> Result<Vec<ProxyProject>> {
        self.read(async {
            let rows = sqlx::query(&format!(
                "SELECT p.id, p.name, {REGISTRY_COLUMNS}
                   FROM projects p JOIN registries r ON r.id = p.registry_id
                  ORDER BY p.name COLLATE \"C\""
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(proxy).collect()
        })
        .await
    }

    async fn proxy_project(&self, project: &str) -> Result<Option<ProxyProject>> {
        self.read(async {
            let row = sqlx::query(&format!(
                "SELECT p.id, p.name, {REGISTRY_COLUMNS}
                   FROM projects p JOIN registries r ON r.id = p.registry_id WHERE p.name = $1"
            ))
            .bind(project)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(proxy).transpose()
        })
        .await
    }
}
