//! Notification events, Distribution's shape (§6 of its notifications): what happened
//! (`push`, `pull`, `mount`, `delete`), to what, on whose request. The registry builds
//! an event's outbox rows ([`NewEvent`], one per endpoint that wants it) before it writes
//! the change, and the metadata write inserts them in the same transaction, so an event
//! exists if and only if its change committed. Pulls change nothing: their rows go to an
//! in-process queue written in batches (`pull_events.rs`), and a change's write first
//! flushes the pulls queued before it. Delivery is a job (`jobs/notify.rs`), never done
//! on the request path; it also bounds each endpoint's backlog ([`Registry::trim_events`]).
//! Events dropped (queue full, backlog over its cap) are counted in [`DroppedEvents`].
//!
//! Who asked: the HTTP layer (its `request_scope` middleware) fills a plain
//! [`RequestInfo`] and runs the request inside [`RequestInfo::scope`] (a tokio
//! task-local), so registry methods need no extra
//! parameter and this module stays free of HTTP types. Events emitted outside a request
//! (none today) carry an empty `request`.

use super::pull_events::PullQueue;
use super::Registry;
use crate::config::events::Endpoint;
use crate::meta::NewEvent;
pub use crate::meta::{OutboxEntry, Trimmed};
use oci::manifest::Descriptor;
use oci::{Digest, RepoName, Tag};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// The request behind an event, as the HTTP layer saw it.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// A fresh id per request.
    pub id: String,
    /// The client: first valid `X-Forwarded-For` address, else `X-Real-Ip`, else the
    /// peer `ip:port`.
    pub addr: String,
    /// The `Host` the client asked for.
    pub host: String,
    pub method: String,
    pub user_agent: String,
    /// Who made it: the authenticated user, else the Basic-auth user name, else none.
    pub actor: Option<String>,
    /// Absolute base of URLs (`http://host:port[/prefix]`), for `target.url`.
    pub url_base: String,
}

tokio::task_local! {
    static REQUEST: RequestInfo;
}

impl RequestInfo {
    /// Run `f` with this request as the one events are attributed to.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        REQUEST.scope(self, f).await
    }

    fn current() -> RequestInfo {
        REQUEST.try_with(RequestInfo::clone).unwrap_or_default()
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Push,
    Pull,
    Mount,
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Mount => "mount",
            Action::Delete => "delete",
        }
    }
}

fn zero(n: &u64) -> bool {
    *n == 0
}

/// A descriptor in `target.references`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reference {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub size: u64,
    pub digest: String,
}

/// What an event is about; empty fields are left out, as Distribution does.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Target {
    #[serde(rename = "mediaType", skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    #[serde(skip_serializing_if = "zero")]
    pub size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(skip_serializing_if = "zero")]
    pub length: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repository: String,
    #[serde(rename = "fromRepository", skip_serializing_if = "String::is_empty")]
    pub from_repository: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tag: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone, Serialize)]
struct Request {
    id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    addr: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    host: String,
    method: String,
    useragent: String,
}

#[derive(Debug, Clone, Serialize)]
struct Actor {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// Where events come from: this registry instance.
#[derive(Debug, Clone, Serialize)]
pub struct Source {
    /// `hostname:port` of `http.addr`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// Generated when the process starts.
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

#[derive(Debug, Clone, Serialize)]
struct Event<'a> {
    id: String,
    timestamp: String,
    action: Action,
    target: &'a Target,
    request: Request,
    actor: Actor,
    source: &'a Source,
}

/// One endpoint's filter and the bell that wakes its delivery worker.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub name: String,
    pub ignored_media_types: Vec<String>,
    pub ignored_actions: Vec<String>,
    pub wake: Arc<Notify>,
}

impl Subscriber {
    pub fn new(e: &Endpoint) -> Subscriber {
        Subscriber {
            name: e.name.clone(),
            ignored_media_types: e.ignored_media_types.clone(),
            ignored_actions: e.ignored_actions.clone(),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Distribution 2.8 only applies `ignore.actions` when a media type is also ignored
    /// (a bug); Berth applies each list on its own.
    fn wants(&self, action: Action, target: &Target) -> bool {
        !self.ignored_actions.iter().any(|a| a == action.as_str())
            && !self
                .ignored_media_types
                .iter()
                .any(|m| !target.media_type.is_empty() && m == &target.media_type)
    }
}

/// Where the registry sends events: the endpoints and what they want.
#[derive(Debug, Clone)]
pub struct EventSink {
    pub subscribers: Vec<Subscriber>,
    pub include_references: bool,
    pub source: Source,
}

/// Why an event was dropped before delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A pull event found the queue to the outbox full (the database not keeping up).
    QueueFull,
    /// The endpoint's backlog was over its `maxevents`.
    OutboxFull,
    /// The event waited longer than the endpoint's `maxage`.
    OutboxExpired,
}

impl DropReason {
    const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::OutboxFull,
        DropReason::OutboxExpired,
    ];

    /// The `reason` label of `berth_notification_events_dropped_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::OutboxFull => "outbox_full",
            DropReason::OutboxExpired => "outbox_expired",
        }
    }
}

/// Events dropped before delivery, by endpoint and reason (for metrics).
#[derive(Debug)]
pub struct DroppedEvents {
    counts: Vec<(String, [AtomicU64; 3])>,
}

impl DroppedEvents {
    pub fn new(endpoints: impl IntoIterator<Item = String>) -> DroppedEvents {
        DroppedEvents {
            counts: endpoints
                .into_iter()
                .map(|e| (e, Default::default()))
                .collect(),
        }
    }

    pub(super) fn add(&self, endpoint: &str, reason: DropReason, n: u64) {
        if let Some((_, c)) = self.counts.iter().find(|(e, _)| e == endpoint) {
            c[reason as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// `(endpoint, reason, count)` for every endpoint and reason, zeros included.
    pub fn snapshot(&self) -> Vec<(String, &'static str, u64)> {
        self.counts
            .iter()
            .flat_map(|(e, c)| {
                DropReason::ALL.iter().map(move |r| {
                    (
                        e.clone(),
                        r.as_str(),
                        c[*r as usize].load(Ordering::Relaxed),
                    )
                })
            })
            .collect()
    }
}

/// The registry's notification state: where events go, the pull queue, the drop counts.
pub(super) struct Events {
    sink: EventSink,
    pulls: PullQueue,
    dropped: Arc<DroppedEvents>,
}

/// `time` as RFC 3339 with nanoseconds in UTC (Go's `RFC3339Nano`: trailing zeros of the
/// fraction dropped).
pub fn rfc3339_nano(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let nanos = d.subsec_nanos();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

impl Registry {
    /// Send events to `sink`'s endpoints (through the outbox). Pull events wait in a queue
    /// until [`Registry::flush_pull_events`] (the `jobs::pull_events` worker) writes them.
    pub fn with_events(mut self, sink: EventSink) -> Registry {
        if sink.subscribers.is_empty() {
            self.events = None;
            return self;
        }
        let dropped = Arc::new(DroppedEvents::new(
            sink.subscribers.iter().map(|s| s.name.clone()),
        ));
        let wakes = sink
            .subscribers
            .iter()
            .map(|s| (s.name.clone(), s.wake.clone()))
            .collect();
        let pulls = PullQueue::new(
            self.meta.clone(),
            wakes,
            dropped.clone(),
            super::pull_events::CAPACITY,
        );
        self.events = Some(Events {
            sink,
            pulls,
            dropped,
        });
        self
    }

    /// Events dropped before delivery, when notifications are on.
    pub fn dropped_events(&self) -> Option<&DroppedEvents> {
        self.events.as_ref().map(|e| e.dropped.as_ref())
    }

    /// Write the queued pull events to the outbox (see `pull_events.rs`); how many pulls
    /// were written.
    pub async fn flush_pull_events(&self) -> super::Result<usize> {
        match &self.events {
            Some(e) => Ok(e.pulls.flush().await?),
            None => Ok(0),
        }
    }

    /// Wait until queued pull events are due to be flushed (forever without endpoints).
    pub async fn pull_events_due(&self) {
        match &self.events {
            Some(e) => e.pulls.ready().await,
            None => std::future::pending().await,
        }
    }

    /// Before a change's events are written: flush the pull events queued so far, so an
    /// endpoint gets a pull before a change made after it. A failure is logged and the
    /// change goes on (those pulls then follow it).
    pub(super) async fn pulls_first(&self, rows: &[NewEvent]) {
        let Some(e) = &self.events else { return };
        if rows.is_empty() {
            return;
        }
        if let Err(err) = e.pulls.flush().await {
            tracing::warn!(error = %err, "cannot write queued pull events before a change's events; they follow it");
        }
    }

    /// Bound `endpoint`'s backlog to its newest `max_events`, dropping events older than
    /// `max_age` too; what was dropped is counted. Never drops an event being delivered.
    pub async fn trim_events(
        &self,
        endpoint: &str,
        max_events: u64,
        max_age: Option<Duration>,
    ) -> super::Result<Trimmed> {
        let before = max_age.map(|a| crate::meta::now().saturating_sub(a.as_secs() as i64));
        let t = self.meta.trim(endpoint, max_events, before).await?;
        if let Some(e) = &self.events {
            e.dropped.add(endpoint, DropReason::OutboxFull, t.over_cap);
            e.dropped
                .add(endpoint, DropReason::OutboxExpired, t.expired);
        }
        Ok(t)
    }

    /// Claim the next event pending for `endpoint` (see `meta::Outbox::claim`).
    pub async fn claim_event(
        &self,
        endpoint: &str,
        owner: &str,
        lease_secs: i64,
    ) -> super::Result<Option<OutboxEntry>> {
        Ok(self.meta.claim(endpoint, owner, lease_secs).await?)
    }

    /// The endpoint accepted the event: it leaves the outbox.
    pub async fn complete_event(&self, seq: i64, owner: &str) -> super::Result<()> {
        Ok(self.meta.complete(seq, owner).await?)
    }

    /// Hand a claimed event back (on shutdown), so it is delivered first next time.
    pub async fn release_event(&self, seq: i64, owner: &str) -> super::Result<()> {
        Ok(self.meta.release(seq, owner).await?)
    }

    /// Whether any endpoint listens (so callers can skip building events).
    pub(super) fn events_enabled(&self) -> bool {
        self.events.is_some()
    }

    /// Whether manifest events carry their references.
    pub(super) fn include_references(&self) -> bool {
        self.events
            .as_ref()
            .is_some_and(|e| e.sink.include_references)
    }

    /// The outbox rows of one event: one per endpoint that wants it, none when no endpoint
    /// does (or none is configured). Built before the change is written, so the rows
    /// commit in the same metadata transaction as the change (a crash loses neither
    /// alone, and a refused change records nothing).
    pub(super) fn event_rows(&self, action: Action, target: &Target) -> Vec<NewEvent> {
        let Some(sink) = self.events.as_ref().map(|e| &e.sink) else {
            return Vec::new();
        };
        let names: Vec<&str> = sink
            .subscribers
            .iter()
            .filter(|s| s.wants(action, target))
            .map(|s| s.name.as_str())
            .collect();
        if names.is_empty() {
            return Vec::new();
        }
        let req = RequestInfo::current();
        let event = Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: rfc3339_nano(SystemTime::now()),
            action,
            target,
            request: Request {
                id: req.id,
                addr: req.addr,
                host: req.host,
                method: req.method,
                useragent: req.user_agent,
            },
            actor: Actor { name: req.actor },
            source: &sink.source,
        };
        let payload = match to_json_indented(&event) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a notification event; it is dropped");
                return Vec::new();
            }
        };
        names
            .into_iter()
            .map(|n| NewEvent {
                endpoint: n.to_string(),
                payload: payload.clone(),
            })
            .collect()
    }

    /// After the rows were committed: wake the delivery worker of each endpoint they are for.
    pub(super) fn wake(&self, rows: &[NewEvent]) {
        let Some(e) = &self.events else { return };
        for s in &e.sink.subscribers {
            if rows.iter().any(|r| r.endpoint == s.name) {
                s.wake.notify_one();
            }
        }
    }

    /// Record an event that describes no change (a pull) for every endpoint that wants
    /// it: queued for the next batch, never waiting for the database (see
    /// `pull_events.rs`); dropped and counted when the queue is full.
    pub(super) fn emit(&self, action: Action, target: Target) {
        let Some(e) = &self.events else { return };
        let rows = self.event_rows(action, &target);
        if !rows.is_empty() {
            e.pulls.push(rows);
        }
    }

    /// The target of a blob event in `repo`.
    pub(super) fn blob_target(&self, repo: &RepoName, digest: &Digest, size: u64) -> Target {
        let base = REQUEST.try_with(|r| r.url_base.clone()).unwrap_or_default();
        Target {
            media_type: "application/octet-stream".into(),
            size,
            digest: digest.to_string(),
            length: size,
            repository: repo.to_string(),
            url: format!("{base}/v2/{repo}/blobs/{digest}"),
            ..Target::default()
        }
    }

    /// The target of a manifest push or pull.
    pub(super) fn manifest_target(
        &self,
        repo: &RepoName,
        digest: &Digest,
        media_type: &str,
        content: &[u8],
        tag: Option<&Tag>,
    ) -> Target {
        let base = REQUEST.try_with(|r| r.url_base.clone()).unwrap_or_default();
        let references = if self.include_references() {
            oci::manifest::parse(Some(media_type), content)
                .map(|m| {
                    m.config
                        .iter()
                        .chain(m.layers.iter())
                        .chain(m.manifests.iter())
                        .map(reference)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let size = content.len() as u64;
        Target {
            media_type: media_type.to_string(),
            size,
            digest: digest.to_string(),
            length: size,
            repository: repo.to_string(),
            url: format!("{base}/v2/{repo}/manifests/{digest}"),
            tag: tag.map(Tag::to_string).unwrap_or_default(),
            references,
            ..Target::default()
        }
    }
}

/// JSON with Go's `MarshalIndent(v, "", "   ")` layout.
pub fn to_json_indented(v: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn reference(d: &Descriptor) -> Reference {
    Reference {
        media_type: d.media_type.clone(),
        size: d.size,
        digest: d.digest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_like_go() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_683_990_245);
        assert_eq!(rfc3339_nano(t), "2023-05-13T15:04:05Z");
        let t = t + Duration::from_nanos(123_450_000);
        assert_eq!(rfc3339_nano(t), "2023-05-13T15:04:05.12345Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339_nano(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn filters_apply_on_their_own() {
        let mut s = Subscriber {
            name: "a".into(),
            ignored_media_types: vec![],
            ignored_actions: vec!["pull".into()],
            wake: Arc::new(Notify::new()),
        };
        let blob = Target {
            media_type: "application/octet-stream".into(),
            ..Target::default()
        };
        assert!(!s.wants(Action::Pull, &blob));
        assert!(s.wants(Action::Push, &blob));
        s.ignored_media_types = vec!["application/octet-stream".into()];
        assert!(!s.wants(Action::Push, &blob));
        assert!(s.wants(Action::Delete, &Target::default()));
    }
}
