//! Manifests: validation against the repository's content, storage with tags, content
//! negotiation on reads, and deletes.

use super::events::{Action, Target};
use super::{Registry, RegistryError, Result};
use crate::meta::{ManifestDeletion, MetaError, NewManifest, StoredManifest};
use oci::manifest::{Descriptor, Kind};
use oci::{media, Digest, Reference, RepoName, Tag};

/// Attempts at deleting a manifest while its tags keep changing under the delete.
const DELETE_ATTEMPTS: usize = 5;

/// The result of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    /// Tags now pointing at it.
    pub tags: Vec<Tag>,
}

/// The media types a client accepts (from `Accept`); empty means anything.
#[derive(Debug, Clone, Default)]
pub struct Accept(pub Vec<String>);

impl Accept {
    pub fn allows(&self, media_type: &str) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|a| {
                a == media_type
                    || a == "*/*"
                    || a.strip_suffix("/*")
                        .is_some_and(|prefix| media_type.split('/').next() == Some(prefix))
            })
    }

    fn names_an_image_manifest(&self) -> bool {
        self.0.iter().any(|a| media::is_image_manifest(a))
    }
}

/// The metadata record of a parsed manifest.
pub(super) fn manifest_record(
    parsed: &oci::manifest::Manifest,
    digest: Digest,
    content: Vec<u8>,
    required_blobs: Vec<Digest>,
    required_manifests: Vec<Digest>,
) -> NewManifest {
    let references = parsed
        .config
        .iter()
        .chain(parsed.layers.iter())
        .map(|d| (d.digest.clone(), false))
        .chain(parsed.manifests.iter().map(|d| {
            let is_manifest =
                media::is_index(&d.media_type) || media::is_image_manifest(&d.media_type);
            (d.digest.clone(), is_manifest)
        }))
        .collect();
    NewManifest {
        digest,
        media_type: parsed.media_type.clone(),
        subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
        artifact_type: parsed.referrer_artifact_type().map(str::to_string),
        annotations: parsed
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_string(a).ok()),
        references,
        required_blobs,
        required_manifests,
        content,
    }
}

impl Registry {
    /// Validate and store a manifest pushed to `reference`, also tagging it with `extra_tags`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        content: Vec<u8>,
        extra_tags: Vec<Tag>,
    ) -> Result<PushedManifest> {
        // Before hashing (and before any other complaint about the content).
        let limit = self.settings.max_manifest_bytes;
        if content.len() > limit {
            return Err(RegistryError::ManifestTooLarge { limit });
        }
        let (digest, tag) = match reference {
            Reference::Digest(d) => {
                let digest = Digest::of(d.algorithm(), &content);
                if d != &digest {
                    return Err(RegistryError::DigestInvalid(format!(
                        "the manifest's content has digest {digest}, not {d}"
                    )));
                }
                (digest, None)
            }
            Reference::Tag(t) => (Digest::of(oci::Algorithm::Sha256, &content), Some(t)),
        };
        self.store_manifest(repo, digest, tag, content_type, content, extra_tags)
            .await
    }

    /// [`Registry::put_manifest`] of `content`, whose digest is `digest`, under `tag`
    /// (the pushed reference) and `extra_tags`: validation, the push event, the write.
    /// Also how a stored manifest is tagged again (`repositories.rs`), so it is held to
    /// the limits of a push.
    pub(super) async fn store_manifest(
        &self,
        repo: &RepoName,
        digest: Digest,
        tag: Option<&Tag>,
        content_type: Option<&str>,
        content: Vec<u8>,
        extra_tags: Vec<Tag>,
    ) -> Result<PushedManifest> {
        let limit = self.settings.max_manifest_bytes;
        if content.len() > limit {
            return Err(RegistryError::ManifestTooLarge { limit });
        }
        let parsed = oci::manifest::parse(content_type, &content)
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;

        // URLs are checked on every descriptor that has them, config included (a layer
        // with URLs is the only one that may be absent, below).
        for d in parsed.descriptors() {
            if let Some(url) = d.urls.iter().find(|u| !self.settings.layer_urls.permits(u)) {
                return Err(RegistryError::ManifestInvalid(format!(
                    "descriptor {} names URL {url:?}, which is not an http(s) URL without a fragment allowed by validation.manifests.urls",
                    d.digest
                )));
            }
        }
        // What must still be there when the manifest is written (re-checked in the write
        // transaction).
        let mut required_blobs = Vec::new();
        let mut required_manifests = Vec::new();
        match parsed.kind {
            Kind::Image => {
                let wanted: Vec<&Descriptor> = parsed.blob_references().collect();
                let digests: Vec<Digest> = wanted.iter().map(|d| d.digest.clone()).collect();
                let sizes = self.meta.linked_blobs(repo, &digests).await?;
                let mut missing = Vec::new();
                for (d, size) in wanted.iter().zip(sizes) {
                    match size {
                        None => missing.push(d.digest.clone()),
                        Some(s) if s != d.size => {
                            return Err(RegistryError::ManifestInvalid(format!(
                                "descriptor for {} says {} bytes, the stored blob has {s}",
                                d.digest, d.size
                            )))
                        }
                        Some(_) => {}
                    }
                }
                if !missing.is_empty() {
                    return Err(RegistryError::ManifestBlobUnknown(missing));
                }
                required_blobs = digests;
            }
            Kind::Index => {
                // Entries are manifests, except in indexes such as BuildKit's registry cache,
                // which list blobs: an entry of another type may be either.
                let digests: Vec<Digest> =
                    parsed.manifests.iter().map(|d| d.digest.clone()).collect();
                let present = self.meta.manifests_exist(repo, &digests).await?;
                let mut missing = Vec::new();
                for (d, present) in parsed.manifests.iter().zip(present) {
                    if present {
                        required_manifests.push(d.digest.clone());
                        continue;
                    }
                    let is_manifest =
                        media::is_index(&d.media_type) || media::is_image_manifest(&d.media_type);
                    if is_manifest || self.meta.linked_blob(repo, &d.digest).await?.is_none() {
                        missing.push(d.digest.clone());
                    } else {
                        required_blobs.push(d.digest.clone());
                    }
                }
                if !missing.is_empty() {
                    return Err(RegistryError::ManifestBlobUnknown(missing));
                }
            }
        }

        let mut tags: Vec<Tag> = tag.into_iter().cloned().collect();
        for t in extra_tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        let events = if self.events_enabled() {
            let target = self.manifest_target(repo, &digest, &parsed.media_type, &content, tag);
            self.event_rows(Action::Push, &target)
        } else {
            Vec::new()
        };
        let record = manifest_record(
            &parsed,
            digest.clone(),
            content,
            required_blobs,
            required_manifests,
        );
        let subject = record.subject.clone();
        // Tags an immutable tag rule protects: the write refuses to move them.
        let guard = self.immutable_guard(repo).await?;
        let guarded: Vec<Tag> = if guard.is_empty() {
            Vec::new()
        } else {
            tags.iter()
                .filter(|t| guard.rule_for(t).is_some())
                .cloned()
                .collect()
        };
        self.pulls_first(&events).await;
        self.meta
            .put_manifest_guarded(repo, &record, &tags, &guarded, &events)
            .await
            .map_err(|e| match e {
                MetaError::MissingReferences(gone) => RegistryError::ManifestBlobUnknown(gone),
                MetaError::ImmutableTag(t) => guard.denied(repo, &t, "moved to another manifest"),
                other => other.into(),
            })?;
        self.wake(&events);
        Ok(PushedManifest {
            digest,
            subject,
            tags,
        })
    }

    /// Fetch a manifest. An index asked for by tag by a client that accepts only image
    /// manifests gets the linux/amd64 image it lists, as Distribution does for old clients
    /// (in proxy mode fetched from the upstream when not cached yet).
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<StoredManifest> {
        self.proxy_manifest(repo, reference).await?;
        let m = self.find_manifest(repo, reference, accept).await?;
        if self.events_enabled() {
            let tag = match reference {
                Reference::Tag(t) => Some(t),
                Reference::Digest(_) => None,
            };
            let target = self.manifest_target(repo, &m.digest, &m.media_type, &m.content, tag);
            self.emit(Action::Pull, target);
        }
        Ok(m)
    }

    /// The digest `reference` names in `repo` (no pull event: for the management API).
    pub async fn resolve(&self, repo: &RepoName, reference: &Reference) -> Result<Digest> {
        match reference {
            Reference::Digest(d) => {
                if self
                    .meta
                    .manifests_exist(repo, std::slice::from_ref(d))
                    .await?[0]
                {
                    Ok(d.clone())
                } else {
                    Err(RegistryError::ManifestUnknown(reference.to_string()))
                }
            }
            Reference::Tag(_) => self
                .meta
                .get_manifest(repo, reference)
                .await?
                .map(|m| m.digest)
                .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    async fn find_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<StoredManifest> {
        let m = self
            .meta
            .get_manifest(repo, reference)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))?;
        if accept.allows(&m.media_type)
            || !media::is_index(&m.media_type)
            || !accept.names_an_image_manifest()
            || matches!(reference, Reference::Digest(_))
        {
            return Ok(m);
        }
        let Ok(index) = oci::manifest::parse(Some(&m.media_type), &m.content) else {
            return Ok(m);
        };
        let child = index.manifests.iter().find(|d| {
            accept.allows(&d.media_type)
                && d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        });
        if let Some(child) = child {
            let by_digest = Reference::Digest(child.digest.clone());
            // A pull-through cache may not hold the child yet: fetch it like any manifest
            // by digest. If the upstream cannot give it, the client gets the index.
            // (`proxy_manifest` does nothing where `repo` is read through no cache.)
            if let Err(e) = self.proxy_manifest(repo, &by_digest).await {
                tracing::warn!(%repo, digest = %child.digest, "serving the index: its linux/amd64 child cannot be fetched: {e}");
            }
            if let Some(c) = self.meta.get_manifest(repo, &by_digest).await? {
                return Ok(c);
            }
        }
        Ok(m)
    }

    /// Delete a manifest by digest (with its tags), or only a tag.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.check_delete_enabled()?;
        let deleted = match reference {
            Reference::Tag(t) => {
                // A protected tag name is never deleted, whatever it points at (so a
                // tag pushed while this runs cannot be the one deleted).
                let guard = self.immutable_guard(repo).await?;
                if guard.rule_for(t).is_some() {
                    return match self.meta.get_manifest(repo, reference).await? {
                        Some(_) => Err(guard.denied(repo, t, "deleted")),
                        None => Err(RegistryError::ManifestUnknown(reference.to_string())),
                    };
                }
                let events = self.tag_delete_events(repo, t);
                self.pulls_first(&events).await;
                let deleted = self.meta.delete_tag(repo, t, &events).await?;
                deleted.then_some(events)
            }
            Reference::Digest(d) => self.delete_manifest_and_tags(repo, d).await?,
        };
        match deleted {
            Some(events) => {
                self.wake(&events);
                Ok(())
            }
            None => Err(RegistryError::ManifestUnknown(reference.to_string())),
        }
    }

    /// Delete a manifest with its tags. Distribution reports the manifest, then each tag
    /// that pointed at it. The metadata store deletes only if the tags the events name are
    /// still exactly the manifest's (re-read inside its transaction), so a tag moved to
    /// another manifest meanwhile is never reported deleted (a mirror following the
    /// events would delete a live tag); on a change the events are rebuilt from the tags
    /// it found, at most [`DELETE_ATTEMPTS`] times. `None` if there is no such manifest.
    pub(super) async fn delete_manifest_and_tags(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<Vec<crate::meta::NewEvent>>> {
        // With immutable tag rules, the tags are read (and re-checked by the delete's
        // transaction) even without events: a protected one keeps the manifest.
        let guard = self.immutable_guard(repo).await?;
        let mut tags = if self.events_enabled() || !guard.is_empty() {
            Some(self.meta.tags_of(repo, d).await?)
        } else {
            None
        };
        #[cfg(test)]
        super::gc::race::point("delete:tags-read").await;
        for _ in 0..DELETE_ATTEMPTS {
            if let Some(t) = tags.iter().flatten().find(|t| guard.rule_for(t).is_some()) {
                return Err(guard.denied(repo, t, "deleted"));
            }
            let mut targets = Vec::new();
            if let Some(tags) = &tags {
                targets.push(Target {
                    digest: d.to_string(),
                    repository: repo.to_string(),
                    ..Target::default()
                });
                targets.extend(tags.iter().map(|t| Target {
                    repository: repo.to_string(),
                    tag: t.to_string(),
                    ..Target::default()
                }));
            }
            let events = self.delete_event_rows(&targets);
            self.pulls_first(&events).await;
            match self
                .meta
                .delete_manifest(repo, d, tags.as_deref(), &events)
                .await?
            {
                ManifestDeletion::Deleted => return Ok(Some(events)),
                ManifestDeletion::NotFound => return Ok(None),
                ManifestDeletion::TagsChanged(now) => {
                    tracing::debug!(%repo, digest = %d, "tags changed while the manifest was deleted; trying again");
                    tags = Some(now);
                }
                ManifestDeletion::Referenced => {
                    return Err(RegistryError::Meta(MetaError::Corrupt(
                        "the metadata store kept a manifest as referenced on a plain delete".into(),
                    )))
                }
            }
        }
        Err(RegistryError::Meta(MetaError::Busy(format!(
            "the tags of {d} in {repo} changed during each of {DELETE_ATTEMPTS} attempts to delete it; nothing was deleted, try again"
        ))))
    }

    /// The outbox rows of deleting tag `t` alone (Distribution names the repository and
    /// the tag).
    pub(super) fn tag_delete_events(&self, repo: &RepoName, t: &Tag) -> Vec<crate::meta::NewEvent> {
        if !self.events_enabled() {
            return Vec::new();
        }
        self.delete_event_rows(&[Target {
            repository: repo.to_string(),
            tag: t.to_string(),
            ..Target::default()
        }])
    }

    pub(super) fn delete_event_rows(&self, targets: &[Target]) -> Vec<crate::meta::NewEvent> {
        targets
            .iter()
            .flat_map(|t| self.event_rows(Action::Delete, t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Accept;

    #[test]
    fn accept_matching() {
        let any = Accept::default();
        assert!(any.allows(oci::media::OCI_INDEX));
        let some = Accept(vec![
            oci::media::DOCKER_MANIFEST.into(),
            "application/vnd.oci.*".into(),
        ]);
        assert!(some.allows(oci::media::DOCKER_MANIFEST));
        assert!(!some.allows(oci::media::OCI_INDEX));
        let wild = Accept(vec!["application/*".into()]);
        assert!(wild.allows(oci::media::OCI_INDEX));
        assert!(!wild.allows("text/plain"));
        assert!(Accept(vec!["*/*".into()]).allows("text/plain"));
    }

    /// A tag moved to another manifest between the delete's read of the tags and its
    /// transaction: the delete is tried again with the fresh tags, and no event reports
    /// the moved (live) tag deleted.
    #[tokio::test]
    async fn a_tag_moved_during_a_delete_is_not_reported_deleted() {
        use super::super::events::{EventSink, Source, Subscriber};
        use super::super::gc::race::Pause;
        use crate::meta::sqlite::SqliteMeta;
        use crate::registry::{Registry, Settings};
        use crate::storage::memory::MemoryBlobStore;
        use oci::{Algorithm, Digest, Reference, RepoName, Tag};
        use std::sync::Arc;

        let dir = tempfile::tempdir().expect("tempdir");
        let meta = SqliteMeta::open(&dir.path().join("berth.db"))
            .await
            .expect("meta");
        let sink = EventSink {
            subscribers: vec![Subscriber {
                name: "hook".into(),
                ignored_media_types: vec![],
                ignored_actions: vec![],
                wake: Arc::new(tokio::sync::Notify::new()),
            }],
            include_references: false,
            source: Source {
                addr: "localhost:5000".into(),
                instance_id: "test".into(),
            },
        };
        let registry = Arc::new(
            Registry::new(
                Arc::new(MemoryBlobStore::new()),
                Arc::new(meta),
                Settings {
                    delete_enabled: true,
                    ..Settings::default()
                },
            )
            .with_events(sink),
        );
        let repo: RepoName = "app".parse().expect("repo");
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let config_digest = Digest::of(Algorithm::Sha256, config);
        registry
            .put_blob(
                &repo,
                &config_digest,
                Box::pin(futures_util::stream::once(async move {
                    Ok(bytes::Bytes::from_static(config))
                })),
            )
            .await
            .expect("config");
        let manifest = |n: u32| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[],"annotations":{{"n":"{n}"}}}}"#,
                config.len()
            )
            .into_bytes()
        };
        let tag = |t: &str| t.parse::<Tag>().expect("tag");
        let push = |n: u32, t: &'static str| {
            let registry = registry.clone();
            let repo = repo.clone();
            let content = manifest(n);
            async move {
                registry
                    .put_manifest(
                        &repo,
                        &Reference::Tag(t.parse().expect("tag")),
                        Some("application/vnd.oci.image.manifest.v1+json"),
                        content,
                        vec![],
                    )
                    .await
                    .expect("push")
                    .digest
            }
        };
        let old = push(1, "live").await;
        push(1, "stays-with-old").await;

        let pause = Pause::at("delete:tags-read");
        let (r, rp, d) = (registry.clone(), repo.clone(), old.clone());
        let delete = tokio::spawn(
            pause
                .clone()
                .scope(async move { r.delete_manifest(&rp, &Reference::Digest(d)).await }),
        );
        pause.reached.notified().await;
        let new = push(2, "live").await;
        pause.resume.notify_one();
        delete.await.expect("join").expect("delete");

        let live = registry
            .get_manifest(&repo, &Reference::Tag(tag("live")), &Accept::default())
            .await
            .expect("the moved tag still resolves");
        assert_eq!(live.digest, new);
        let mut deleted = Vec::new();
        while let Some(e) = registry
            .claim_event("hook", "test", 60)
            .await
            .expect("claim")
        {
            registry
                .complete_event(e.seq, "test")
                .await
                .expect("complete");
            let v: serde_json::Value = serde_json::from_str(&e.payload).expect("json");
            if v["action"] == "delete" {
                let t = &v["target"];
                deleted.push(format!(
                    "{}{}",
                    t["digest"].as_str().unwrap_or(""),
                    t["tag"]
                        .as_str()
                        .filter(|t| !t.is_empty())
                        .map(|t| format!("tag:{t}"))
                        .unwrap_or_default()
                ));
            }
        }
        assert_eq!(
            deleted,
            vec![old.to_string(), "tag:stays-with-old".to_string()],
            "the delete events name the manifest and only the tag deleted with it"
        );
    }
}
