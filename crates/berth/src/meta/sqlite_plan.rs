//! Test helper of the SQLite backend's query-plan tests: a hot statement must search or
//! walk an index at every step (scans of `json_each`, a bound array, aside), sort
//! nothing unless allowed, and use the indexes named.

use super::sqlite::SqliteMeta;

/// Every step of `sql`'s plan uses an index, none sorts, each of `indexes` is used.
pub async fn assert_indexed(meta: &SqliteMeta, sql: &str, indexes: &[&str]) {
    assert_plan(meta, sql, indexes, false).await
}

/// [`assert_indexed`], with a sort allowed when `sorts` (of a caller's short list).
pub async fn assert_plan(meta: &SqliteMeta, sql: &str, indexes: &[&str], sorts: bool) {
    let steps: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
        .fetch_all(&meta.reader)
        .await
        .expect("explain")
        .iter()
        .map(|r| sqlx::Row::get::<String, _>(r, 3))
        .collect();
    for step in &steps {
        // json_each shows as `SCAN json_each VIRTUAL TABLE ...`, or under its alias.
        let bound_array = step.starts_with("SCAN json_each") || step.contains(" VIRTUAL TABLE ");
        let unindexed = step.starts_with("SCAN ") && !step.contains(" USING ") && !bound_array;
        assert!(
            !unindexed && (sorts || !step.contains("TEMP B-TREE")),
            "{step:?} in the plan of {sql}: {steps:?}"
        );
    }
    for index in indexes {
        assert!(
            steps.iter().any(|s| s.contains(index)),
            "{sql} does not use {index}: {steps:?}"
        );
    }
}
