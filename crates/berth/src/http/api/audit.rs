//! `/api/v2.0/audit-logs` and `/projects/{p}/logs`: the audit log, filtered by Harbor's
//! `q` keys (`username`, `operation`, `resource`, `resource_type`, `op_time=[from~to]`),
//! newest first, paginated.

use super::{listing, time_ms, Answer, Call, Failure};
use crate::meta::{AuditEntry, AuditQuery};
use serde_json::{json, Value};

fn render(e: &AuditEntry) -> Value {
    json!({
        "id": e.id,
        "username": e.record.principal,
        "resource": e.record.resource,
        "resource_type": e.record.resource_type,
        "operation": e.record.operation,
        "op_time": time_ms(e.record.time_ms),
        "client": e.record.client,
        "project": e.record.project,
        "result": e.record.result,
    })
}

/// The filters of `q`.
fn query(c: &Call<'_>) -> Result<AuditQuery, Failure> {
    let mut q = AuditQuery {
        principal: c.q("username").map(|(v, _)| v),
        operation: c.q("operation").map(|(v, _)| v),
        resource_type: c.q("resource_type").map(|(v, _)| v),
        resource_contains: c.q("resource").map(|(v, _)| v),
        ..AuditQuery::default()
    };
    if let Some((range, _)) = c.q("op_time") {
        let inner = range
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .ok_or_else(|| {
                Failure::bad_request(
                    "op_time must be a range [from~to] of RFC 3339 times or Unix seconds",
                )
            })?;
        let (from, to) = inner.split_once('~').unwrap_or((inner, ""));
        q.from_ms = parse_time(from)?;
        q.to_ms = parse_time(to)?;
    }
    Ok(q)
}

/// Unix seconds, or `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DDTHH:MM:SS` (UTC), as milliseconds.
fn parse_time(text: &str) -> Result<Option<i64>, Failure> {
    let t = text.trim().trim_matches(['"', '\'']);
    if t.is_empty() {
        return Ok(None);
    }
    if let Ok(secs) = t.parse::<i64>() {
        return Ok(Some(secs * 1000));
    }
    let bad = || {
        Failure::bad_request(format!(
            "{t:?} is not a time like 2026-01-02T03:04:05 or Unix seconds"
        ))
    };
    let t = t.trim_end_matches('Z');
    let (date, clock) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let h: Vec<i64> = clock
        .split(':')
        .map(|p| {
            p.split('.')
                .next()
                .unwrap_or("0")
                .parse()
                .map_err(|_| bad())
        })
        .collect::<Result<_, _>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), h.as_slice()) else {
        return Err(bad());
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(Some((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000))
}

pub(super) async fn list(c: &mut Call<'_>) -> Answer {
    let (page, size, p) = c.page()?;
    let q = query(c)?;
    let (entries, total) = c.accounts.audit_log(&c.who, None, q, p).await?;
    Ok(listing(
        c,
        entries.iter().map(render).collect(),
        total,
        page,
        size,
    ))
}

pub(super) async fn project_logs(c: &mut Call<'_>, project: &str) -> Answer {
    let (page, size, p) = c.page()?;
    let q = query(c)?;
    let key = c.project_key(project);
    let (entries, total) = c.accounts.audit_log(&c.who, Some(&key), q, p).await?;
    Ok(listing(
        c,
        entries.iter().map(render).collect(),
        total,
        page,
        size,
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_parse() {
        assert_eq!(super::parse_time("").ok(), Some(None));
        assert_eq!(super::parse_time("86400").ok(), Some(Some(86_400_000)));
        assert_eq!(
            super::parse_time("1970-01-02T00:00:01").ok(),
            Some(Some(86_401_000))
        );
        assert_eq!(
            super::parse_time("2000-03-01 00:00:00").ok(),
            Some(Some(951_868_800_000))
        );
        assert!(super::parse_time("yesterday").is_err());
    }
}
