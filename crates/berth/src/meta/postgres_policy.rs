//! PostgreSQL implementation of project policies ([`ImmutableRules`]).

use super::postgres::{now, PgMeta};
use super::{ImmutableRules, NewRule, Result, StoredRule};
use sqlx::postgres::PgRow;
use sqlx::Row;

fn rule(r: &PgRow) -> Result<StoredRule> {
    Ok(StoredRule {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        priority: r.try_get(2)?,
        disabled: r.try_get(3)?,
        selectors: r.try_get(4)?,
    })
}

#[async_trait::async_trait]
impl ImmutableRules for PgMeta {
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<StoredRule>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT id, project_id, priority, disabled, selectors FROM immutable_rules
                  WHERE project_id = $1 ORDER BY id",
            )
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rule).collect()
        })
        .await
    }

    async fn active_immutable_rules(&self, project: &str) -> Result<Vec<StoredRule>> {
        self.read(async {
            let rows = sqlx::query(
                "SELECT r.id, r.project_id, r.priority, r.disabled, r.selectors
                   FROM immutable_rules r JOIN projects p ON p.id = r.project_id
                  WHERE p.name = $1 AND NOT r.disabled ORDER BY r.id",
            )
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rule).collect()
        })
        .await
    }

    async fn add_immutable_rule(
        &self,
        project_id: i64,
        r: &NewRule,
        max: u32,
    ) -> Result<Option<i64>> {
        self.write("adding an immutable tag rule", || async move {
            let mut tx = self.pool.begin().await?;
            // The project's row locked: two requests at once cannot both pass the cap.
            sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
                .bind(project_id)
                .execute(&mut *tx)
                .await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO immutable_rules (project_id, priority, disabled, selectors, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $5
                  WHERE (SELECT COUNT(*) FROM immutable_rules WHERE project_id = $1) < $6
                 RETURNING id",
            )
            .bind(project_id)
            .bind(r.priority)
            .bind(r.disabled)
            .bind(&r.selectors)
            .bind(now())
            .bind(i64::from(max))
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
        .await
    }

    async fn update_immutable_rule(&self, project_id: i64, id: i64, r: &NewRule) -> Result<bool> {
        self.read(async {
            let done = sqlx::query(
                "UPDATE immutable_rules SET priority = $3, disabled = $4, selectors = $5, updated_at = $6
                  WHERE project_id = $1 AND id = $2",
            )
            .bind(project_id)
            .bind(id)
            .bind(r.priority)
            .bind(r.disabled)
            .bind(&r.selectors)
            .bind(now())
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool> {
        self.read(async {
            let done = sqlx::query("DELETE FROM immutable_rules WHERE project_id = $1 AND id = $2")
                .bind(project_id)
                .bind(id)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }
}
