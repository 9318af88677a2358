//! `/api/v2.0/users`: Harbor's user API (create, list, search, get, profile, password,
//! administrator flag, delete, current).

use super::{created, id, json, listing, ok, time, Answer, Call, Failure};
use crate::auth::accounts::UserRequest;
use crate::auth::berth::Who;
use crate::meta::{User, UserChanges};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

/// Harbor's `UserResp`.
pub(super) fn render(u: &User) -> Value {
    json!({
        "user_id": u.id,
        "username": u.username,
        "email": u.email,
        "realname": u.realname,
        "comment": u.comment,
        "sysadmin_flag": u.admin,
        "admin_role_in_auth": false,
        "creation_time": time(u.created_at),
        "update_time": time(u.updated_at),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserCreationReq {
    username: String,
    password: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    realname: String,
    #[serde(default)]
    comment: String,
}

pub(super) async fn create(c: &mut Call<'_>) -> Answer {
    let req: UserCreationReq = c.json().await?;
    let u = c
        .accounts
        .create_user(
            &c.who,
            UserRequest {
                username: req.username,
                password: req.password,
                email: req.email,
                realname: req.realname,
                comment: req.comment,
            },
            false,
        )
        .await?;
    c.audit("create", "user", &u.username, None);
    Ok(created(&format!("/api/v2.0/users/{}", u.id)))
}

pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    let (page, size, p) = c.page()?;
    let name = c.q("username").map(|(v, _)| v);
    let (users, total) = c.accounts.list_users(&c.who, name.as_deref(), p).await?;
    Ok(listing(
        c,
        users.iter().map(render).collect(),
        total,
        page,
        size,
    ))
}

/// `GET /users/search?username=`: any logged-in caller finds user names (to add members).
pub(super) async fn search(c: &mut Call<'_>) -> Answer {
    let (page, size, p) = c.page()?;
    let name = c
        .param("username")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Failure::bad_request("username is required"))?
        .to_string();
    let (users, total) = c.accounts.search_users(&c.who, &name, p).await?;
    let items = users
        .iter()
        .map(|u| json!({"user_id": u.id, "username": u.username}))
        .collect();
    Ok(listing(c, items, total, page, size))
}

pub(super) async fn current(c: &mut Call<'_>) -> Answer {
    match &c.who {
        Who::User { user, .. } => Ok(json(StatusCode::OK, &render(user))),
        Who::Anonymous => Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required",
        )),
        _ => Err(Failure::new(
            StatusCode::PRECONDITION_FAILED,
            "PRECONDITION",
            "the caller is not a user (robot accounts have no user record)",
        )),
    }
}

pub(super) async fn get(c: &mut Call<'_>, user: &str) -> Answer {
    let uid = id(user, "user id")?;
    let u = c.accounts.get_user(&c.who, uid).await?;
    Ok(json(StatusCode::OK, &render(&u)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserProfile {
    email: Option<String>,
    realname: Option<String>,
    comment: Option<String>,
}

pub(super) async fn update(c: &mut Call<'_>, user: &str) -> Answer {
    let uid = id(user, "user id")?;
    let p: UserProfile = c.json().await?;
    c.accounts
        .update_user(
            &c.who,
            uid,
            UserChanges {
                email: p.email,
                realname: p.realname,
                comment: p.comment,
            },
        )
        .await?;
    c.audit("update", "user", user, None);
    Ok(ok())
}

pub(super) async fn delete(c: &mut Call<'_>, user: &str) -> Answer {
    let uid = id(user, "user id")?;
    c.accounts.delete_user(&c.who, uid).await?;
    c.audit("delete", "user", user, None);
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordReq {
    #[serde(default)]
    old_password: Option<String>,
    new_password: String,
}

pub(super) async fn password(c: &mut Call<'_>, user: &str) -> Answer {
    let uid = id(user, "user id")?;
    let p: PasswordReq = c.json().await?;
    c.accounts
        .change_password(&c.who, uid, p.old_password.as_deref(), &p.new_password)
        .await?;
    c.audit("update", "user", &format!("{user} (password)"), None);
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SysAdminFlag {
    sysadmin_flag: bool,
}

pub(super) async fn sysadmin(c: &mut Call<'_>, user: &str) -> Answer {
    let uid = id(user, "user id")?;
    let f: SysAdminFlag = c.json().await?;
    c.accounts.set_admin(&c.who, uid, f.sysadmin_flag).await?;
    c.audit(
        "update",
        "user",
        &format!("{user} (sysadmin_flag={})", f.sysadmin_flag),
        None,
    );
    Ok(ok())
}
