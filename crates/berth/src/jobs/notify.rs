//! Webhook delivery: one worker per endpoint takes events from the outbox in order,
//! POSTs each as Distribution's envelope `{"events":[event]}`, and removes it once the
//! endpoint answers 2xx or 3xx. A failed POST is retried, forever, as Distribution does:
//! at once while consecutive failures stay below `threshold`, then every `backoff`. An
//! event is claimed with a lease in the database, so a crash leaves it pending and it is
//! sent after the restart (or by another node) once the lease expires.
//!
//! The worker also bounds its endpoint's backlog (`maxevents`, `maxage`): about once a
//! second, before an attempt, it has the oldest undelivered events over the caps dropped
//! (never the one it holds), and logs once per burst of drops rather than per event.

use super::{JobError, Worker, WorkerState};
use crate::config::events::{Endpoint, EnvelopeVersion};
use crate::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub const MEDIA_TYPE_V1: &str = "application/vnd.docker.distribution.events.v1+json";
pub const MEDIA_TYPE_V2: &str = "application/vnd.docker.distribution.events.v2+json";

/// How often an idle worker looks at the outbox without being woken (events queued by
/// another node, leases that expired).
const POLL: Duration = Duration::from_secs(2);

/// Least time between two checks of the backlog against the endpoint's caps.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Delivers one endpoint's events.
pub struct NotifyWorker {
    registry: Arc<Registry>,
    endpoint: Endpoint,
    client: reqwest::Client,
    /// Who holds the leases this worker takes (the process's instance id).
    owner: String,
    wake: Arc<Notify>,
    /// Consecutive failures.
    failures: u32,
    /// Pause before the next attempt.
    backoff: Option<Duration>,
    /// The event being delivered, to hand back on shutdown.
    claimed: Option<i64>,
    /// When the backlog was last checked against the caps.
    last_trim: Option<Instant>,
    /// Events dropped in the current burst (logged when it starts and when it ends).
    burst: u64,
}

impl NotifyWorker {
    pub fn new(
        registry: Arc<Registry>,
        endpoint: Endpoint,
        owner: String,
        wake: Arc<Notify>,
    ) -> Result<NotifyWorker, JobError> {
        let client = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                JobError(format!(
                    "cannot set up the HTTP client for notification endpoint {}: {e}",
                    endpoint.name
                ))
            })?;
        Ok(NotifyWorker {
            registry,
            endpoint,
            client,
            owner,
            wake,
            failures: 0,
            backoff: None,
            claimed: None,
            last_trim: None,
            burst: 0,
        })
    }

    /// Seconds a claim is held: long enough for one attempt and the pause before the next.
    fn lease_secs(&self) -> i64 {
        (self.endpoint.timeout.max(self.endpoint.backoff).as_secs() + 5) as i64
    }

    /// Drop what is over the endpoint's caps, if a check is due.
    async fn trim(&mut self) -> Result<(), JobError> {
        let unbounded = self.endpoint.max_events == u64::MAX && self.endpoint.max_age.is_none();
        if unbounded || self.last_trim.is_some_and(|t| t.elapsed() < TRIM_EVERY) {
            return Ok(());
        }
        self.last_trim = Some(Instant::now());
        let ep = &self.endpoint;
        let t = self
            .registry
            .trim_events(&ep.name, ep.max_events, ep.max_age)
            .await
            .map_err(|e| JobError(format!("cannot bound the notification outbox: {e}")))?;
        let n = t.over_cap + t.expired;
        if n > 0 && self.burst == 0 {
            tracing::warn!(
                endpoint = %ep.name,
                over_cap = t.over_cap,
                expired = t.expired,
                "notification endpoint {} is not keeping up: dropping its oldest undelivered events (maxevents {}, maxage {:?})",
                ep.name,
                ep.max_events,
                ep.max_age,
            );
        } else if n == 0 && self.burst > 0 {
            tracing::warn!(
                endpoint = %ep.name,
                dropped = self.burst,
                "notification endpoint {}: {} undelivered events were dropped in all",
                ep.name,
                self.burst,
            );
        }
        self.burst = if n > 0 { self.burst + n } else { 0 };
        Ok(())
    }

    async fn post(&self, body: String) -> Result<(), String> {
        let media_type = match self.endpoint.envelope {
            EnvelopeVersion::V1 => MEDIA_TYPE_V1,
            EnvelopeVersion::V2 => MEDIA_TYPE_V2,
        };
        let mut req = self
            .client
            .post(&self.endpoint.url)
            .header("content-type", media_type)
            .body(body);
        for (k, v) in &self.endpoint.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("response status {status} unaccepted"))
        }
    }
}

/// Distribution's envelope around one event (already indented as a top-level value).
pub fn envelope(event: &str) -> String {
    let mut out = String::from("{\n   \"events\": [\n");
    for (i, line) in event.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("      ");
        out.push_str(line);
    }
    out.push_str("\n   ]\n}");
    out
}

#[async_trait::async_trait]
impl Worker for NotifyWorker {
    fn name(&self) -> String {
        format!("notify:{}", self.endpoint.name)
    }

    async fn work(&mut self) -> Result<WorkerState, JobError> {
        if let Some(pause) = self.backoff.take() {
            // The backlog keeps its bounds while the endpoint is backed off.
            let until = Instant::now() + pause;
            loop {
                self.trim().await?;
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(left.min(TRIM_EVERY)).await;
            }
        }
        self.trim().await?;
        let entry = self
            .registry
            .claim_event(&self.endpoint.name, &self.owner, self.lease_secs())
            .await
            .map_err(|e| JobError(format!("cannot read the notification outbox: {e}")))?;
        let Some(entry) = entry else {
            return Ok(WorkerState::Idle);
        };
        self.claimed = Some(entry.seq);
        match self.post(envelope(&entry.payload)).await {
            Ok(()) => {
                self.failures = 0;
                self.registry
                    .complete_event(entry.seq, &self.owner)
                    .await
                    .map_err(|e| JobError(format!("cannot mark a notification delivered: {e}")))?;
                self.claimed = None;
            }
            Err(e) => {
                self.failures += 1;
                tracing::error!(
                    endpoint = %self.endpoint.name,
                    attempts = entry.attempts,
                    "retryingsink: error writing events: httpSink{{{}}}: {e}, retrying",
                    self.endpoint.url
                );
                if self.failures >= self.endpoint.threshold {
                    tracing::warn!(
                        endpoint = %self.endpoint.name,
                        "httpSink{{{}}} encountered too many errors, backing off",
                        self.endpoint.url
                    );
                    self.backoff = Some(self.endpoint.backoff);
                }
            }
        }
        Ok(WorkerState::Busy)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }

    async fn stop(&mut self) {
        if let Some(seq) = self.claimed.take() {
            if let Err(e) = self.registry.release_event(seq, &self.owner).await {
                tracing::warn!(error = %e, "cannot release a notification claim; it is retried when the lease expires");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn envelope_is_indented_like_go() {
        let event = "{\n   \"id\": \"x\",\n   \"action\": \"push\"\n}";
        assert_eq!(
            super::envelope(event),
            "{\n   \"events\": [\n      {\n         \"id\": \"x\",\n         \"action\": \"push\"\n      }\n   ]\n}"
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&super::envelope(event)).expect("valid JSON");
        assert_eq!(parsed["events"][0]["action"], "push");
    }
}
