//! `/api/v2.0/ping`, `/health`, `/systeminfo` and the OpenAPI document of what Berth
//! implements (`/api/v2.0/openapi.json`).

use super::{json, Answer, Call};
use crate::auth::berth::Who;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The OpenAPI 3 document of the management API Berth serves.
pub const OPENAPI: &str = include_str!("openapi.json");

pub(super) fn ping() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        "Pong",
    )
        .into_response()
}

pub(super) fn openapi() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// Harbor's `OverallHealthStatus`: the metadata database and the storage health checks.
pub(super) async fn health(c: &mut Call<'_>) -> Answer {
    let database = match c.accounts.project_exists("-").await {
        Ok(_) => json!({"name": "database", "status": "healthy"}),
        Err(e) => json!({"name": "database", "status": "unhealthy", "error": e.to_string()}),
    };
    let checks = c.app.options.health.failures();
    let registry = match checks.iter().next() {
        None => json!({"name": "registry", "status": "healthy"}),
        Some((name, why)) => {
            json!({"name": "registry", "status": "unhealthy", "error": format!("{name}: {why}")})
        }
    };
    let healthy = database["status"] == "healthy" && registry["status"] == "healthy";
    Ok(json(
        StatusCode::OK,
        &json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "components": [{"name": "core", "status": "healthy"}, database, registry],
        }),
    ))
}

/// Harbor's `GeneralInfo`: more for a logged-in caller.
pub(super) async fn systeminfo(c: &mut Call<'_>) -> Answer {
    let settings = c.accounts.access().settings();
    let mut v = json!({
        "auth_mode": if settings.ldap.is_some() { "ldap_auth" } else { "db_auth" },
        "primary_auth_mode": false,
        "self_registration": false,
        "harbor_version": concat!("berth-", env!("CARGO_PKG_VERSION")),
        "banner_message": "",
    });
    if !matches!(c.who, Who::Anonymous) {
        v["project_creation_restriction"] = json!(match settings.project_creation {
            crate::auth::berth::ProjectCreation::Everyone => "everyone",
            crate::auth::berth::ProjectCreation::AdminOnly => "adminonly",
        });
        v["has_ca_root"] = json!(false);
        v["read_only"] = json!(c.app.options.read_only);
        v["registry_storage_provider_name"] = json!("filesystem");
        v["notification_enable"] = json!(c.app.options.notify);
        v["current_time"] = json!(super::time(crate::meta::now()));
        let base = super::super::base_of(&c.app.options, c.parts, true);
        v["external_url"] = json!(base);
        v["registry_url"] = json!(base
            .split_once("://")
            .map(|(_, host)| host.to_string())
            .unwrap_or_default());
    }
    Ok(json(StatusCode::OK, &v))
}
