//! `/api/v2.0/retentions`: projects' tag retention policies, their runs ("executions"),
//! each run's tasks (one per repository) and a task's log, in Harbor's shapes. Anyone
//! who sees the project reads them; project admins and maintainers (and robots with
//! `tag-retention:operate`) set the policy, run it and stop runs. What a policy does is
//! `registry/retention.rs`.

use super::{created, id, json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::ProjectKey;
use crate::auth::rbac::Permission;
use crate::meta::{ProjectAccess, RetentionRun, RetentionTask, StoredRetention};
use crate::registry::retention::{self, NotStarted, Policy, TEMPLATES};
use crate::registry::RegistryError;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

/// `GET /retentions/metadatas`: the rule templates and selectors Berth takes.
pub(super) async fn metadatas(_c: &mut Call<'_>) -> Answer {
    let templates: Vec<Value> = TEMPLATES
        .iter()
        .map(|(t, d)| {
            let params = if *t == "always" {
                json!([])
            } else {
                json!([{"type": "int", "unit": if t.starts_with('n') { "DAYS" } else { "COUNT" }, "required": true}])
            };
            json!({"rule_template": t, "display_text": d, "action": "retain", "params": params})
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({
            "templates": templates,
            "scope_selectors": [{"display_text": "Repositories", "kind": "doublestar", "decorations": ["repoMatches", "repoExcludes"]}],
            "tag_selectors": [{"display_text": "Tags", "kind": "doublestar", "decorations": ["matches", "excludes"]}],
        }),
    ))
}

fn render(stored: &StoredRetention, p: &Policy) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
    v["id"] = json!(stored.id);
    v["scope"] = json!({"level": "project", "ref": stored.project_id});
    v
}

/// The policy `text` names, and the caller's access to its project (`need`).
async fn find(
    c: &Call<'_>,
    text: &str,
    need: Permission,
) -> Result<(StoredRetention, Policy, ProjectAccess), Failure> {
    let rid = id(text, "retention policy id")?;
    let (stored, policy) = c
        .app
        .registry
        .retention(rid)
        .await?
        .ok_or_else(|| Failure::not_found(format!("retention policy {rid} not found")))?;
    let a = c
        .accounts
        .project_for(&c.who, &ProjectKey::Id(stored.project_id), need)
        .await?;
    Ok((stored, policy, a))
}

async fn body(c: &mut Call<'_>) -> Result<Policy, Failure> {
    let mut p: Policy = c.json().await?;
    p.check().map_err(Failure::bad_request)?;
    Ok(p)
}

/// `POST /retentions`: a project's policy (one per project); 201 with its `Location`.
pub(super) async fn create(c: &mut Call<'_>) -> Answer {
    let p = body(c).await?;
    let a = c
        .accounts
        .project_for(
            &c.who,
            &ProjectKey::Id(p.scope.reference),
            Permission::ManageRetention,
        )
        .await?;
    let Some(rid) = c.app.registry.create_retention(&p).await? else {
        let existing = c
            .app
            .registry
            .project_retention_id(a.project.id)
            .await?
            .unwrap_or_default();
        return Err(Failure::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!(
                "project {} has a retention policy already ({existing}): change it with PUT /api/v2.0/retentions/{existing}",
                a.project.name
            ),
        ));
    };
    c.audit(
        "create",
        "retention",
        &rid.to_string(),
        Some(&a.project.name),
    );
    Ok(created(&format!("/api/v2.0/retentions/{rid}")))
}

pub(super) async fn get(c: &mut Call<'_>, rid: &str) -> Answer {
    let (stored, policy, _) = find(c, rid, Permission::Read).await?;
    Ok(json(StatusCode::OK, &render(&stored, &policy)))
}

/// `PUT /retentions/{id}`: replace the policy (its project stays).
pub(super) async fn update(c: &mut Call<'_>, rid: &str) -> Answer {
    let (stored, _, a) = find(c, rid, Permission::ManageRetention).await?;
    let p = body(c).await?;
    if p.scope.reference != stored.project_id {
        return Err(Failure::bad_request(format!(
            "scope.ref {} is not this policy's project ({}): a policy cannot move to another project",
            p.scope.reference, stored.project_id
        )));
    }
    if !c.app.registry.update_retention(stored.id, &p).await? {
        return Err(Failure::not_found(format!(
            "retention policy {} not found",
            stored.id
        )));
    }
    c.audit(
        "update",
        "retention",
        &stored.id.to_string(),
        Some(&a.project.name),
    );
    Ok(ok())
}

pub(super) async fn delete(c: &mut Call<'_>, rid: &str) -> Answer {
    let (stored, _, a) = find(c, rid, Permission::ManageRetention).await?;
    c.app.registry.delete_retention(stored.id).await?;
    c.audit(
        "delete",
        "retention",
        &stored.id.to_string(),
        Some(&a.project.name),
    );
    Ok(ok())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /retentions/{id}/executions`: run the policy now (`{"dry_run": true}` lists
/// what would go and deletes nothing); 201 with the run's `Location`.
pub(super) async fn run(c: &mut Call<'_>, rid: &str) -> Answer {
    let (stored, _, a) = find(c, rid, Permission::ManageRetention).await?;
    let req: RunRequest = c.json_or(Some(RunRequest::default())).await?;
    if !req.dry_run {
        c.writable()?;
    }
    // Unique per run: claims of the same owner renew each other, so a second real run
    // asked for by the same user is refused rather than let in.
    let owner = format!(
        "API request by {} on {}, run {}",
        c.who.principal().display_name(),
        crate::config::events::hostname(),
        uuid::Uuid::new_v4().simple()
    );
    let started = c
        .app
        .registry
        .start_retention(stored.id, req.dry_run, &owner)
        .await;
    let run = match started {
        Ok(Ok(run)) => run,
        Ok(Err(NotStarted::Unknown)) => {
            return Err(Failure::not_found(format!(
                "retention policy {} not found",
                stored.id
            )))
        }
        Ok(Err(NotStarted::TickTaken)) => {
            return Err(Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "the run was not recorded; try again",
            ))
        }
        Err(RegistryError::JobRunning(m)) => {
            return Err(Failure::new(StatusCode::CONFLICT, "CONFLICT", m))
        }
        Err(e) => return Err(e.into()),
    };
    c.audit(
        "run",
        "retention",
        &stored.id.to_string(),
        Some(&a.project.name),
    );
    Ok(created(&format!(
        "/api/v2.0/retentions/{}/executions/{run}",
        stored.id
    )))
}

fn render_run(r: &RetentionRun, now: i64) -> Value {
    json!({
        "id": r.id,
        "policy_id": r.policy_id,
        "start_time": time(r.started_at),
        "end_time": r.ended_at.map(time),
        "status": retention::shown_status(r, now),
        "trigger": r.kind,
        "dry_run": r.dry_run,
    })
}

/// `GET /retentions/{id}/executions`: the runs, newest first.
pub(super) async fn runs(c: &mut Call<'_>, rid: &str) -> Answer {
    let (stored, _, _) = find(c, rid, Permission::Read).await?;
    let (page, size, window) = c.page()?;
    let (runs, total) = c.app.registry.retention_runs(stored.id, window).await?;
    // The runs' times are the database's clock.
    let now = c.app.registry.clock().await?;
    Ok(listing(
        c,
        runs.iter().map(|r| render_run(r, now)).collect(),
        total,
        page,
        size,
    ))
}

async fn find_run(
    c: &Call<'_>,
    stored: &StoredRetention,
    eid: &str,
) -> Result<RetentionRun, Failure> {
    let eid = id(eid, "execution id")?;
    c.app
        .registry
        .retention_run(stored.id, eid)
        .await?
        .ok_or_else(|| {
            Failure::not_found(format!(
                "execution {eid} of retention policy {} not found",
                stored.id
            ))
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunChange {
    action: String,
}

/// `PATCH /retentions/{id}/executions/{eid}` with `{"action": "stop"}`: stop a run
/// (within seconds, between two repositories; what it deleted stays deleted).
pub(super) async fn stop(c: &mut Call<'_>, rid: &str, eid: &str) -> Answer {
    let (stored, _, a) = find(c, rid, Permission::ManageRetention).await?;
    let change: RunChange = c.json().await?;
    if change.action != "stop" {
        return Err(Failure::bad_request(format!(
            "action {:?} is not supported: the one action on a run is \"stop\"",
            change.action
        )));
    }
    let run = find_run(c, &stored, eid).await?;
    c.app.registry.stop_retention_run(stored.id, run.id).await?;
    c.audit(
        "stop",
        "retention_execution",
        &run.id.to_string(),
        Some(&a.project.name),
    );
    Ok(ok())
}

fn render_task(t: &RetentionTask) -> Value {
    json!({
        "id": t.id,
        "execution_id": t.run_id,
        "repository": t.repository,
        "job_id": format!("retention-{}-{}", t.run_id, t.id),
        "status": t.status,
        "status_code": if t.status == "Succeed" { 3 } else { 4 },
        "start_time": time(t.started_at),
        "end_time": time(t.ended_at),
        "total": t.total,
        "retained": t.retained,
    })
}

/// `GET /retentions/{id}/executions/{eid}/tasks`: one task per repository the run
/// went through, as each ends.
pub(super) async fn tasks(c: &mut Call<'_>, rid: &str, eid: &str) -> Answer {
    let (stored, _, _) = find(c, rid, Permission::Read).await?;
    let run = find_run(c, &stored, eid).await?;
    let (page, size, window) = c.page()?;
    let (tasks, total) = c.app.registry.retention_tasks(run.id, window).await?;
    Ok(listing(
        c,
        tasks.iter().map(render_task).collect(),
        total,
        page,
        size,
    ))
}

/// `GET /retentions/{id}/executions/{eid}/tasks/{tid}`: the task's log, as text.
pub(super) async fn task_log(c: &mut Call<'_>, rid: &str, eid: &str, tid: &str) -> Answer {
    let (stored, _, _) = find(c, rid, Permission::Read).await?;
    let run = find_run(c, &stored, eid).await?;
    let tid = id(tid, "task id")?;
    let task = c
        .app
        .registry
        .retention_task(run.id, tid)
        .await?
        .ok_or_else(|| {
            Failure::not_found(format!("task {tid} of execution {} not found", run.id))
        })?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        task.log,
    )
        .into_response())
}
