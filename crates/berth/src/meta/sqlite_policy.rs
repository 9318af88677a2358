//! SQLite implementation of project policies ([`ImmutableRules`]).

use super::sqlite::SqliteMeta;
use super::{now, ImmutableRules, NewRule, Result, StoredRule};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

fn rule(r: &SqliteRow) -> Result<StoredRule> {
    Ok(StoredRule {
        id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        priority: r.try_get(2)?,
        disabled: r.try_get::<i64, _>(3)? != 0,
        selectors: r.try_get(4)?,
    })
}

#[async_trait::async_trait]
impl ImmutableRules for SqliteMeta {
    async fn immutable_rules(&self, project_id: i64) -> Result<Vec<StoredRule>> {
        let rows = sqlx::query(
            "SELECT id, project_id, priority, disabled, selectors FROM immutable_rules
              WHERE project_id = ?1 ORDER BY id",
        )
        .bind(project_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rule).collect()
    }

    async fn active_immutable_rules(&self, project: &str) -> Result<Vec<StoredRule>> {
        let rows = sqlx::query(
            "SELECT r.id, r.project_id, r.priority, r.disabled, r.selectors
               FROM immutable_rules r JOIN projects p ON p.id = r.project_id
              WHERE p.name = ?1 AND r.disabled = 0 ORDER BY r.id",
        )
        .bind(project)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rule).collect()
    }

    async fn add_immutable_rule(
        &self,
        project_id: i64,
        r: &NewRule,
        max: u32,
    ) -> Result<Option<i64>> {
        // One statement: two requests at once cannot both pass the cap.
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO immutable_rules (project_id, priority, disabled, selectors, created_at, updated_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?5
              WHERE (SELECT COUNT(*) FROM immutable_rules WHERE project_id = ?1) < ?6
             RETURNING id",
        )
        .bind(project_id)
        .bind(r.priority)
        .bind(r.disabled)
        .bind(&r.selectors)
        .bind(now())
        .bind(i64::from(max))
        .fetch_optional(&self.writer)
        .await?;
        Ok(id)
    }

    async fn update_immutable_rule(&self, project_id: i64, id: i64, r: &NewRule) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE immutable_rules SET priority = ?3, disabled = ?4, selectors = ?5, updated_at = ?6
              WHERE project_id = ?1 AND id = ?2",
        )
        .bind(project_id)
        .bind(id)
        .bind(r.priority)
        .bind(r.disabled)
        .bind(&r.selectors)
        .bind(now())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn delete_immutable_rule(&self, project_id: i64, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM immutable_rules WHERE project_id = ?1 AND id = ?2")
            .bind(project_id)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn immutable_rules_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = super::SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("open");
        crate::meta::testsuite::immutable_rules(&meta).await;
    }
}
