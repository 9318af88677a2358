//! `/api/v2.0/system/gc`: garbage collection runs (history, one run, its log) and the
//! schedule, in Harbor's shapes, for system administrators. A "Manual" schedule runs a
//! collection now; the others store a cron schedule that every node's scheduler reads
//! (`jobs::gc`).

use super::{json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::Accounts;
use crate::meta::{GcRun, GcSchedule};
use crate::registry::gc::GcOptions;
use crate::registry::gc_runs::{self, STALE_AFTER};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// The status shown for a run: a `Running` record its collector stopped updating
/// belongs to a collector that died.
fn status(run: &GcRun, now: i64) -> &str {
    let stale = i64::try_from(STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
    if run.status == "Running" && run.updated_at + stale < now {
        "Error"
    } else {
        &run.status
    }
}

fn render(run: &GcRun, now: i64) -> Value {
    let kind = if run.kind == gc_runs::SCHEDULED {
        "Schedule"
    } else {
        "Manual"
    };
    json!({
        "id": run.id,
        "job_name": "GARBAGE_COLLECTION",
        "job_kind": run.kind,
        "job_parameters": run.parameters,
        "schedule": {"type": kind, "cron": ""},
        "job_status": status(run, now),
        "deleted": false,
        "creation_time": time(run.started_at),
        "update_time": time(run.updated_at),
        "owner": run.owner,
        "deleted_blobs": run.deleted_blobs,
        "deleted_manifests": run.deleted_manifests,
        "freed_bytes": run.freed_bytes,
        "error": run.error,
    })
}

pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    let (page, size, p) = c.page()?;
    let (runs, total) = c.app.registry.gc_runs(p).await?;
    let now = crate::meta::now();
    Ok(listing(
        c,
        runs.iter().map(|r| render(r, now)).collect(),
        total,
        page,
        size,
    ))
}

async fn find(c: &Call<'_>, id: &str) -> Result<GcRun, Failure> {
    let id = super::id(id, "garbage collection id")?;
    c.app
        .registry
        .gc_run(id)
        .await?
        .ok_or_else(|| Failure::not_found(format!("garbage collection {id} not found")))
}

pub(super) async fn get(c: &mut Call<'_>, id: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let run = find(c, id).await?;
    Ok(json(StatusCode::OK, &render(&run, crate::meta::now())))
}

/// `PUT /system/gc/{id}`: stop a run (Harbor's stop; a finished run is left as it is).
pub(super) async fn stop(c: &mut Call<'_>, id: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let run = find(c, id).await?;
    c.app.registry.stop_gc_run(run.id).await?;
    c.audit("stop", "garbage_collection", &run.id.to_string(), None);
    Ok(ok())
}

pub(super) async fn log(c: &mut Call<'_>, id: &str) -> Answer {
    Accounts::require_admin(&c.who)?;
    let run = find(c, id).await?;
    let text = c.app.registry.gc_run_log(run.id).await?.unwrap_or_default();
    let text = if text.is_empty() && run.status == "Running" {
        "the run is in progress; its log is recorded when it ends\n".to_string()
    } else {
        text
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}

pub(super) async fn schedule(c: &mut Call<'_>) -> Answer {
    Accounts::require_admin(&c.who)?;
    let s = c.app.registry.gc_schedule().await?;
    let next = s
        .as_ref()
        .and_then(|s| gc_runs::next_tick(&s.cron, crate::meta::now()))
        .map(time);
    let v = match s {
        Some(s) => json!({
            "id": 1,
            "job_name": "",
            "job_kind": s.cron,
            "job_parameters": s.parameters,
            "schedule": {"type": s.kind, "cron": s.cron, "next_scheduled_time": next},
            "creation_time": time(s.updated_at),
            "update_time": time(s.updated_at),
        }),
        None => json!({"schedule": {"type": "None", "cron": ""}}),
    };
    Ok(json(StatusCode::OK, &v))
}

/// Harbor's `Schedule` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    schedule: ScheduleObj,
    #[serde(default)]
    parameters: Parameters,
    // Read-only fields a client may send back unchanged.
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    creation_time: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    update_time: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleObj {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    #[allow(dead_code)]
    next_scheduled_time: Option<Value>,
}

/// The run parameters Harbor's clients send.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Parameters {
    #[serde(default)]
    delete_untagged: bool,
    #[serde(default)]
    dry_run: bool,
    /// Harbor's worker count (1 to 10): accepted; Berth sweeps with one.
    #[serde(default)]
    workers: Option<u32>,
    /// Harbor 2.15's tag deletion: not offered.
    #[serde(default)]
    delete_tag: bool,
    /// Hours within which content is kept (Harbor's `time_window`, default 2).
    #[serde(default)]
    time_window: Option<u64>,
}

impl Parameters {
    fn check(&self) -> Result<(), Failure> {
        if let Some(w) = self.workers {
            if !(1..=10).contains(&w) {
                return Err(Failure::bad_request(format!(
                    "invalid number of workers {w}: it must be from 1 to 10"
                )));
            }
        }
        if self.delete_tag {
            return Err(Failure::bad_request(
                "delete_tag is not supported: Berth's garbage collection never deletes tags; use delete_untagged to delete manifests no tag reaches",
            ));
        }
        Ok(())
    }

    fn options(&self, owner: String) -> GcOptions {
        GcOptions {
            dry_run: self.dry_run,
            delete_untagged: self.delete_untagged,
            grace: Duration::from_secs(self.time_window.unwrap_or(2).saturating_mul(3600)),
            owner,
        }
    }

    /// As stored with a schedule (a scheduled run is never a dry run).
    fn stored(&self) -> String {
        json!({
            "delete_untagged": self.delete_untagged,
            "time_window": self.time_window.unwrap_or(2),
            "workers": self.workers.unwrap_or(1),
        })
        .to_string()
    }
}

/// `POST` (`created`) or `PUT /system/gc/schedule`.
pub(super) async fn set_schedule(c: &mut Call<'_>, created: bool) -> Answer {
    Accounts::require_admin(&c.who)?;
    let body: ScheduleBody = c.json().await?;
    body.parameters.check()?;
    let kind = body.schedule.kind.as_str();
    match kind {
        "Manual" => {
            c.writable()?;
            // Unique per run: two collectors never share an owner, so the second is
            // refused (claims of the same owner renew each other).
            let owner = format!(
                "API request by {} on {}, run {}",
                c.who.principal().display_name(),
                crate::config::events::hostname(),
                uuid::Uuid::new_v4().simple()
            );
            let options = body.parameters.options(owner);
            let id = c
                .app
                .registry
                .start_garbage_collection(options)
                .await
                .map_err(|e| match e {
                    crate::registry::RegistryError::JobRunning(m) => {
                        Failure::new(StatusCode::CONFLICT, "CONFLICT", m)
                    }
                    e => e.into(),
                })?;
            c.audit("create", "garbage_collection", &id.to_string(), None);
            Ok(if created {
                super::created(&format!("/api/v2.0/system/gc/{id}"))
            } else {
                ok()
            })
        }
        "Hourly" | "Daily" | "Weekly" | "Custom" | "None" => {
            let cron = if kind == "None" {
                String::new()
            } else {
                let cron = body.schedule.cron.trim().to_string();
                gc_runs::check_cron(&cron).map_err(|e| {
                    Failure::bad_request(format!("invalid cron string for scheduled gc: {e}"))
                })?;
                cron
            };
            c.app
                .registry
                .set_gc_schedule(&GcSchedule {
                    kind: kind.to_string(),
                    cron: cron.clone(),
                    parameters: body.parameters.stored(),
                    updated_at: 0,
                })
                .await?;
            c.audit(
                "update",
                "garbage_collection_schedule",
                &format!("{kind} {cron}"),
                None,
            );
            Ok(if created {
                super::created("/api/v2.0/system/gc/0")
            } else {
                ok()
            })
        }
        // Harbor's label of runs the schedule started: nothing to do.
        "Schedule" => Ok(if created {
            super::created("/api/v2.0/system/gc/0")
        } else {
            ok()
        }),
        other => Err(Failure::bad_request(format!(
            "schedule type {other:?} is not one of Hourly, Daily, Weekly, Custom, Manual, None"
        ))),
    }
}
