//! `/api/v2.0/quotas`: projects' storage quotas in Harbor's `Quota` shape (the quota's
//! id is its project's), for system administrators. Usage is kept exact by the
//! registry's writes (`meta::Quotas`); a project member sees its project's quota in
//! `GET /projects/{p}/summary`.

use super::{id, json, listing, ok, time, Answer, Call, Failure};
use crate::meta::Quota;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The limit as Harbor writes it: bytes, or -1 for none.
pub(super) fn limit(q: &Quota) -> i64 {
    q.hard.map_or(-1, |h| i64::try_from(h).unwrap_or(i64::MAX))
}

fn render(q: &Quota) -> Value {
    json!({
        "id": q.project_id,
        "ref": {"id": q.project_id, "name": q.project},
        "hard": {"storage": limit(q)},
        "used": {"storage": q.used},
        "creation_time": time(q.created_at),
        "update_time": time(q.updated_at),
    })
}

/// `GET /quotas` (`reference=project`, `reference_id=N` narrow it to one project).
pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    let (page, size, window) = c.page()?;
    if let Some(r) = c.param("reference").filter(|r| *r != "project") {
        return Err(Failure::bad_request(format!(
            "reference {r:?} is not supported: quotas are per project"
        )));
    }
    if let Some(rid) = c.param("reference_id").map(str::to_string) {
        let q = c.accounts.quota(&c.who, id(&rid, "reference_id")?).await;
        let items: Vec<Value> = match q {
            Ok(q) => vec![render(&q)],
            Err(crate::auth::accounts::AccountError::NotFound(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let total = items.len() as u64;
        return Ok(listing(c, items, total, page, size));
    }
    let (quotas, total) = c.accounts.quotas(&c.who, window).await?;
    Ok(listing(
        c,
        quotas.iter().map(render).collect(),
        total,
        page,
        size,
    ))
}

/// `GET /quotas/{id}`.
pub(super) async fn get(c: &mut Call<'_>, quota: &str) -> Answer {
    let q = c.accounts.quota(&c.who, id(quota, "quota id")?).await?;
    Ok(json(StatusCode::OK, &render(&q)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaUpdate {
    hard: BTreeMap<String, i64>,
}

/// `PUT /quotas/{id}` with `{"hard": {"storage": BYTES}}` (-1: no limit). A limit below
/// the current usage is taken: nothing is deleted, and new blobs are refused until
/// usage is under it again.
pub(super) async fn update(c: &mut Call<'_>, quota: &str) -> Answer {
    let req: QuotaUpdate = c.json().await?;
    let project_id = id(quota, "quota id")?;
    if let Some(other) = req.hard.keys().find(|k| *k != "storage") {
        return Err(Failure::bad_request(format!(
            "hard.{other} is not supported: Berth's quotas limit storage only"
        )));
    }
    let storage = *req
        .hard
        .get("storage")
        .ok_or_else(|| Failure::bad_request("hard.storage is required"))?;
    if storage < -1 {
        return Err(Failure::bad_request(
            "hard.storage must be a number of bytes, or -1 for no limit",
        ));
    }
    let q = c
        .accounts
        .set_quota(&c.who, project_id, u64::try_from(storage).ok())
        .await?;
    c.audit(
        "update",
        "quota",
        &format!("{} to {storage}", q.project),
        Some(&q.project),
    );
    Ok(ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harbor_shape() {
        let q = Quota {
            project_id: 4,
            project: "team".into(),
            hard: None,
            used: 12,
            created_at: 0,
            updated_at: 0,
        };
        let v = render(&q);
        assert_eq!(v["hard"]["storage"], -1);
        assert_eq!(v["used"]["storage"], 12);
        assert_eq!(v["ref"]["name"], "team");
    }
}
