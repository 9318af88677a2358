//! `/api/v2.0/robots` (and the listing `/projects/{p}/robots`): Harbor's robot account
//! API. The secret is shown once, at creation or refresh.

use super::{id, json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::{ProjectKey, RobotRequest};
use crate::auth::rbac::RobotPermission;
use crate::meta::Robot;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};

/// A robot's lifetime in days as Harbor reports it (-1: never expires).
fn duration(r: &Robot) -> i64 {
    match r.expires_at {
        None => -1,
        Some(t) => ((t - r.created_at) as f64 / 86_400.0).round() as i64,
    }
}

/// Harbor's `Robot`.
async fn render(c: &Call<'_>, r: &Robot) -> Result<Value, Failure> {
    let name = c.accounts.robot_full_name(r).await?;
    let permissions: Value =
        serde_json::from_str(&r.permissions).unwrap_or(Value::Array(Vec::new()));
    Ok(json!({
        "id": r.id,
        "name": name,
        "description": r.description,
        "secret": "",
        "level": if r.project_id.is_some() { "project" } else { "system" },
        "duration": duration(r),
        "editable": true,
        "disable": r.disabled,
        "expires_at": r.expires_at.unwrap_or(-1),
        "permissions": permissions,
        "creation_time": time(r.created_at),
        "update_time": time(r.updated_at),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotCreate {
    name: String,
    #[serde(default)]
    description: String,
    /// Ignored, as Harbor does: the secret is always generated.
    #[serde(default)]
    #[allow(dead_code)]
    secret: Option<String>,
    level: String,
    #[serde(default)]
    disable: bool,
    #[serde(default)]
    duration: i64,
    permissions: Vec<RobotPermission>,
}

pub(super) async fn create(c: &mut Call<'_>) -> Answer {
    let req: RobotCreate = c.json().await?;
    let created = c
        .accounts
        .create_robot(
            &c.who,
            RobotRequest {
                name: req.name,
                description: req.description,
                level: req.level,
                disable: req.disable,
                duration: req.duration,
                permissions: req.permissions,
            },
        )
        .await?;
    let project = created.full_name.split_once('+').map(|(p, _)| {
        p.trim_start_matches(&c.accounts.access().settings().robot_prefix)
            .to_string()
    });
    c.audit("create", "robot", &created.full_name, project.as_deref());
    let body = json!({
        "id": created.robot.id,
        "name": created.full_name,
        "secret": created.secret,
        "creation_time": time(created.robot.created_at),
        "expires_at": created.robot.expires_at.unwrap_or(-1),
    });
    let mut resp = json(StatusCode::CREATED, &body);
    if let Ok(v) = format!("/api/v2.0/robots/{}", created.robot.id).parse() {
        resp.headers_mut().insert("location", v);
    }
    Ok(resp)
}

/// `GET /robots?q=Level=project,ProjectID=N` (project robots) or without `Level`
/// (system robots).
pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    let (page, size, p) = c.page()?;
    let level = c.q("Level").map(|(v, _)| v);
    let project = match level.as_deref() {
        Some("project") => {
            let pid = c
                .q("ProjectID")
                .ok_or_else(|| Failure::bad_request("must with project ID when to query project robots: q=Level=project,ProjectID=N"))?
                .0;
            Some(ProjectKey::Id(id(&pid, "ProjectID")?))
        }
        None | Some("system") => None,
        Some(other) => {
            return Err(Failure::bad_request(format!(
                "Level {other:?} is not system or project"
            )))
        }
    };
    let (robots, total) = c.accounts.list_robots(&c.who, project.as_ref(), p).await?;
    let mut items = Vec::with_capacity(robots.len());
    for r in &robots {
        items.push(render(c, r).await?);
    }
    Ok(listing(c, items, total, page, size))
}

/// `GET /projects/{p}/robots`: the project's robots.
pub(super) async fn list_of_project(c: &mut Call<'_>, p: &str) -> Answer {
    let (page, size, pg) = c.page()?;
    let key = c.project_key(p);
    let (robots, total) = c.accounts.list_robots(&c.who, Some(&key), pg).await?;
    let mut items = Vec::with_capacity(robots.len());
    for r in &robots {
        items.push(render(c, r).await?);
    }
    Ok(listing(c, items, total, page, size))
}

pub(super) async fn get(c: &mut Call<'_>, rid: &str) -> Answer {
    let r = c.accounts.robot(&c.who, id(rid, "robot id")?).await?;
    Ok(json(StatusCode::OK, &render(c, &r).await?))
}

/// The `Robot` model as Harbor's clients send it back on update.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct RobotUpdate {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    level: Option<String>,
    #[serde(default)]
    duration: Option<i64>,
    #[serde(default)]
    editable: Option<bool>,
    #[serde(default)]
    disable: Option<bool>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    permissions: Option<Vec<RobotPermission>>,
    #[serde(default)]
    creation_time: Option<String>,
    #[serde(default)]
    update_time: Option<String>,
    #[serde(default)]
    creator_type: Option<String>,
    #[serde(default)]
    creator_ref: Option<i64>,
}

pub(super) async fn update(c: &mut Call<'_>, rid: &str) -> Answer {
    let robot_id = id(rid, "robot id")?;
    let req: RobotUpdate = c.json().await?;
    let current = c.accounts.robot(&c.who, robot_id).await?;
    let full = c.accounts.robot_full_name(&current).await?;
    let level = if current.project_id.is_some() {
        "project"
    } else {
        "system"
    };
    if req.name.as_deref().is_some_and(|n| n != full)
        || req.level.as_deref().is_some_and(|l| l != level)
    {
        return Err(Failure::bad_request(
            "cannot update the level or name of robot",
        ));
    }
    let new_duration = req.duration.filter(|d| *d != duration(&current));
    c.accounts
        .update_robot(
            &c.who,
            robot_id,
            req.description,
            req.disable,
            new_duration,
            req.permissions,
        )
        .await?;
    c.audit("update", "robot", &full, None);
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RobotSec {
    #[serde(default)]
    secret: Option<String>,
}

/// `PATCH /robots/{id}`: set the given secret, or make a new one and return it.
pub(super) async fn refresh(c: &mut Call<'_>, rid: &str) -> Answer {
    let robot_id = id(rid, "robot id")?;
    let req: RobotSec = c.json().await?;
    let generated = c
        .accounts
        .refresh_robot_secret(&c.who, robot_id, req.secret)
        .await?;
    c.audit("update", "robot", &format!("{rid} (secret)"), None);
    Ok(json(
        StatusCode::OK,
        &json!({"secret": generated.unwrap_or_default()}),
    )
    .into_response())
}

pub(super) async fn delete(c: &mut Call<'_>, rid: &str) -> Answer {
    let robot_id = id(rid, "robot id")?;
    let r = c.accounts.robot(&c.who, robot_id).await?;
    let full = c.accounts.robot_full_name(&r).await?;
    c.accounts.delete_robot(&c.who, robot_id).await?;
    c.audit("delete", "robot", &full, None);
    Ok(ok())
}
