//! Whole-repository operations of the management API (Harbor's repository, artifact and
//! tag endpoints): delete a repository, put a tag on a manifest or take it off. Each goes
//! through the paths of the Distribution API requests that do the same (`manifests.rs`,
//! `blobs.rs`), so validation, `storage.delete.enabled` and the notification events are
//! theirs.

use super::{Registry, RegistryError, Result};
use crate::meta::{GcManifest, MetaError, NewEvent, RepositoryClearing};
use oci::{Digest, Reference, RepoName, Tag};
use std::collections::HashSet;

/// Rounds of a repository delete (a push landing between its steps costs one), and
/// attempts at its last step while blobs keep being linked under it.
const ATTEMPTS: usize = 5;

/// The digests of `manifests` in an order that deletes each before the manifests it
/// points at (an index before its children, a referrer before its subject), so while a
/// repository goes, no manifest left in it points at one already gone.
fn deletion_order(manifests: Vec<GcManifest>) -> Vec<Digest> {
    let mut left = manifests;
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let pointed_at: HashSet<&Digest> = left
            .iter()
            .flat_map(|m| {
                m.references
                    .iter()
                    .filter(|(_, is_manifest)| *is_manifest)
                    .map(|(d, _)| d)
                    .chain(m.subject.as_ref())
            })
            .collect();
        let (free, held): (Vec<&GcManifest>, Vec<&GcManifest>) =
            left.iter().partition(|m| !pointed_at.contains(&m.digest));
        if free.is_empty() {
            // Digests cannot make a cycle; should one be stored anyway, all go.
            out.extend(held.iter().map(|m| m.digest.clone()));
            break;
        }
        out.extend(free.iter().map(|m| m.digest.clone()));
        let held: HashSet<Digest> = held.iter().map(|m| m.digest.clone()).collect();
        left.retain(|m| held.contains(&m.digest));
    }
    out
}

impl Registry {
    /// Delete every manifest (and so every tag) of `repo`, as DELETE
    /// /v2/.../manifests/<digest> does each (notification events included,
    /// storage.delete.enabled required), then unlink its blobs (with a blob delete event
    /// each, as DELETE /v2/.../blobs/<digest>) so the repository disappears from the
    /// catalog; returns how many manifests went. Blobs themselves go with garbage
    /// collection, as for any delete. [`RegistryError::NameUnknown`] if there is no such
    /// repository.
    ///
    /// The blobs are unlinked in one metadata transaction that first checks the
    /// repository holds no manifest: a manifest pushed meanwhile is never left pointing
    /// at unlinked blobs; it is deleted in another round instead.
    pub async fn delete_repository(&self, repo: &RepoName) -> Result<u64> {
        self.check_delete_enabled()?;
        if !self.meta.repository_exists(repo).await? {
            return Err(RegistryError::NameUnknown);
        }
        // Refused before anything goes if a tag is immutable (each manifest's delete
        // checks again, for tags pushed meanwhile).
        let guard = self.immutable_guard(repo).await?;
        if !guard.is_empty() {
            let mut last: Option<String> = None;
            loop {
                let page = self
                    .meta
                    .list_tags(repo, last.as_deref(), 1000)
                    .await?
                    .unwrap_or_default();
                for name in &page {
                    if let Ok(t) = name.parse::<Tag>() {
                        if guard.rule_for(&t).is_some() {
                            return Err(guard.denied(repo, &t, "deleted"));
                        }
                    }
                }
                match page.last() {
                    Some(l) if page.len() == 1000 => last = Some(l.clone()),
                    _ => break,
                }
            }
        }
        let mut deleted = 0;
        for _ in 0..ATTEMPTS {
            let manifests = self.meta.gc_manifests(repo).await?;
            for d in deletion_order(manifests) {
                // `None`: deleted by someone else meanwhile.
                if let Some(events) = self.delete_manifest_and_tags(repo, &d).await? {
                    self.wake(&events);
                    deleted += 1;
                }
            }
            #[cfg(test)]
            super::gc::race::point("delete-repository:manifests-deleted").await;
            if self.unlink_all_blobs(repo).await? {
                return Ok(deleted);
            }
            tracing::debug!(%repo, "a manifest was pushed while the repository was being deleted; deleting again");
        }
        Err(RegistryError::Meta(MetaError::Busy(format!(
            "manifests kept being pushed to {repo} during each of {ATTEMPTS} rounds of deleting it; \
             {deleted} manifests were deleted, the repository is still there: try again"
        ))))
    }

    /// Unlink every blob of `repo` and remove the repository, with a delete event per
    /// blob, unless it holds a manifest (`false`: nothing written). The events name the
    /// links read before the write, which re-reads them and refuses if they changed; then
    /// the events are rebuilt.
    async fn unlink_all_blobs(&self, repo: &RepoName) -> Result<bool> {
        let mut links = if self.events_enabled() {
            Some(self.meta.linked_digests(repo).await?)
        } else {
            None
        };
        #[cfg(test)]
        super::gc::race::point("delete-repository:links-read").await;
        for _ in 0..ATTEMPTS {
            let events: Vec<NewEvent> = links
                .iter()
                .flatten()
                .flat_map(|d| self.blob_delete_events(repo, d))
                .collect();
            self.pulls_first(&events).await;
            match self
                .meta
                .clear_repository(repo, links.as_deref(), &events)
                .await?
            {
                RepositoryClearing::Cleared(_) => {
                    self.wake(&events);
                    return Ok(true);
                }
                RepositoryClearing::HasManifests => return Ok(false),
                RepositoryClearing::LinksChanged(now) => {
                    tracing::debug!(%repo, "blob links changed while the repository was being cleared; trying again");
                    links = Some(now);
                }
            }
        }
        Err(RegistryError::Meta(MetaError::Busy(format!(
            "the blob links of {repo} changed during each of {ATTEMPTS} attempts to remove them; \
             its manifests are deleted, its blobs still linked: try again"
        ))))
    }

    /// Put `tag` on the manifest `digest` of `repo` (as a PUT of the same manifest under
    /// the tag would, with its notification event: a tag on another manifest moves);
    /// [`RegistryError::ManifestUnknown`] if absent; `Ok(false)` (nothing written, no
    /// event) if the tag already points there.
    pub async fn add_tag(&self, repo: &RepoName, digest: &Digest, tag: &Tag) -> Result<bool> {
        let m = self
            .meta
            .get_manifest(repo, &Reference::Digest(digest.clone()))
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown(digest.to_string()))?;
        if self.meta.tags_of(repo, digest).await?.contains(tag) {
            return Ok(false);
        }
        // The stored digest, not one computed anew: a sha512 manifest keeps its digest
        // (a PUT by tag would store the content under its sha256).
        self.store_manifest(
            repo,
            m.digest,
            Some(tag),
            Some(&m.media_type),
            m.content,
            Vec::new(),
        )
        .await?;
        Ok(true)
    }

    /// Remove `tag` if it points at `digest`, with the tag-delete event of DELETE
    /// /v2/.../manifests/<tag> (storage.delete.enabled required). The check and the
    /// delete are one transaction. [`RegistryError::ManifestUnknown`] if `repo` has no
    /// manifest `digest`; [`RegistryError::TagUnknown`] if the tag is absent or points at
    /// another manifest.
    pub async fn remove_tag(&self, repo: &RepoName, digest: &Digest, tag: &Tag) -> Result<()> {
        self.check_delete_enabled()?;
        // A protected tag name is never deleted (see `immutable.rs`).
        let guard = self.immutable_guard(repo).await?;
        let protected = guard.rule_for(tag).is_some();
        if protected && self.meta.tags_of(repo, digest).await?.contains(tag) {
            return Err(guard.denied(repo, tag, "deleted"));
        }
        let events = self.tag_delete_events(repo, tag);
        if !protected {
            self.pulls_first(&events).await;
            if self.meta.delete_tag_at(repo, tag, digest, &events).await? {
                self.wake(&events);
                return Ok(());
            }
        }
        let present = self
            .meta
            .manifests_exist(repo, std::slice::from_ref(digest))
            .await?;
        if present.first().copied().unwrap_or(false) {
            Err(RegistryError::TagUnknown {
                tag: tag.clone(),
                digest: digest.clone(),
            })
        } else {
            Err(RegistryError::ManifestUnknown(digest.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::events::{EventSink, Source, Subscriber};
    use super::super::gc::race::Pause;
    use super::super::{Accept, Registry, RegistryError, Settings};
    use super::deletion_order;
    use crate::meta::sqlite::SqliteMeta;
    use crate::meta::{ArtifactFilter, Catalog, GcManifest, Page, Repositories};
    use crate::storage::memory::MemoryBlobStore;
    use crate::storage::BlobStore;
    use oci::{Algorithm, Digest, Reference, RepoName, Tag};
    use std::sync::Arc;

    const IMAGE: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";

    struct Setup {
        registry: Arc<Registry>,
        meta: Arc<SqliteMeta>,
        blobs: Arc<MemoryBlobStore>,
        config: Digest,
        layer: Digest,
        _dir: tempfile::TempDir,
    }

    fn repo(s: &str) -> RepoName {
        s.parse().expect("repo")
    }

    fn tag(s: &str) -> Tag {
        s.parse().expect("tag")
    }

    /// A registry over memory blobs and SQLite metadata, with one event endpoint
    /// ("hook"), deletes enabled or not.
    async fn setup(delete_enabled: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = Arc::new(
            SqliteMeta::open(&dir.path().join("berth.db"))
                .await
                .expect("meta"),
        );
        let blobs = Arc::new(MemoryBlobStore::new());
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
                blobs.clone(),
                meta.clone(),
                Settings {
                    delete_enabled,
                    ..Settings::default()
                },
            )
            .with_events(sink),
        );
        Setup {
            registry,
            meta,
            blobs,
            config: Digest::of(Algorithm::Sha256, CONFIG),
            layer: Digest::of(Algorithm::Sha256, LAYER),
            _dir: dir,
        }
    }

    const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;
    const LAYER: &[u8] = b"layer bytes";

    impl Setup {
        async fn put_blob(&self, r: &RepoName, bytes: &'static [u8]) -> Digest {
            let d = Digest::of(Algorithm::Sha256, bytes);
            self.registry
                .put_blob(
                    r,
                    &d,
                    Box::pin(futures_util::stream::once(async move {
                        Ok(bytes::Bytes::from_static(bytes))
                    })),
                )
                .await
                .expect("blob");
            d
        }

        /// The image's content: the config and the layer, told apart by `n`, with a
        /// subject when given.
        fn image(&self, n: u32, subject: Option<&Digest>) -> Vec<u8> {
            let subject = subject
                .map(|s| format!(r#","subject":{{"mediaType":"{IMAGE}","digest":"{s}","size":1}}"#))
                .unwrap_or_default();
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{IMAGE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}],"annotations":{{"n":"{n}"}}{subject}}}"#,
                self.config,
                CONFIG.len(),
                self.layer,
                LAYER.len()
            )
            .into_bytes()
        }

        /// Push `content` (of `media_type`) to `r` under `tag`, or by digest.
        async fn push(
            &self,
            r: &RepoName,
            media_type: &str,
            content: Vec<u8>,
            tag: Option<&str>,
        ) -> Digest {
            let reference = match tag {
                Some(t) => Reference::Tag(t.parse().expect("tag")),
                None => Reference::Digest(Digest::of(Algorithm::Sha256, &content)),
            };
            self.registry
                .put_manifest(r, &reference, Some(media_type), content, vec![])
                .await
                .expect("push")
                .digest
        }

        /// Every pending change event of "hook" (pulls, which the test's own reads make,
        /// aside), as `action repository digest|tag:name`.
        async fn events(&self) -> Vec<String> {
            let mut out = Vec::new();
            while let Some(e) = self
                .registry
                .claim_event("hook", "test", 60)
                .await
                .expect("claim")
            {
                self.registry
                    .complete_event(e.seq, "test")
                    .await
                    .expect("complete");
                let v: serde_json::Value = serde_json::from_str(&e.payload).expect("json");
                if v["action"] == "pull" {
                    continue;
                }
                let t = &v["target"];
                let what = match t["tag"].as_str().filter(|t| !t.is_empty()) {
                    Some(tag) if v["action"] != "push" => format!("tag:{tag}"),
                    Some(tag) => format!("{}:{tag}", t["digest"].as_str().unwrap_or("")),
                    None => t["digest"].as_str().unwrap_or("").to_string(),
                };
                out.push(format!(
                    "{} {} {what}",
                    v["action"].as_str().unwrap_or(""),
                    t["repository"].as_str().unwrap_or("")
                ));
            }
            out
        }

        async fn catalog(&self) -> Vec<String> {
            self.registry
                .catalog(None, None, None)
                .await
                .expect("catalog")
                .items
        }
    }

    fn index(children: &[&Digest]) -> Vec<u8> {
        let entries: Vec<String> = children
            .iter()
            .map(|d| format!(r#"{{"mediaType":"{IMAGE}","digest":"{d}","size":1}}"#))
            .collect();
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[{}]}}"#,
            entries.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn indexes_and_referrers_go_before_what_they_point_at() {
        let d = |s: &str| Digest::of(Algorithm::Sha256, s.as_bytes());
        let m = |name: &str, subject: Option<&str>, children: &[&str]| GcManifest {
            digest: d(name),
            tagged: false,
            subject: subject.map(d),
            created_at: 0,
            references: children
                .iter()
                .map(|c| (d(c), true))
                .chain([(d("a blob"), false)])
                .collect(),
        };
        let order = deletion_order(vec![
            m("image", None, &[]),
            m("index", None, &["image", "other"]),
            m("other", None, &[]),
            m("signature", Some("index"), &[]),
            m("sbom", Some("image"), &[]),
            m("outer", None, &["index"]),
        ]);
        assert_eq!(order.len(), 6);
        let at = |name: &str| order.iter().position(|x| *x == d(name)).expect("listed");
        assert!(at("outer") < at("index") && at("signature") < at("index"));
        assert!(at("index") < at("image") && at("index") < at("other"));
        assert!(at("sbom") < at("image"));
    }

    /// Every manifest and tag goes with its events, then every blob link with its events;
    /// the repository leaves the catalog, its blob files stay for garbage collection, and
    /// a repository sharing a blob keeps it.
    #[tokio::test]
    async fn delete_repository_deletes_manifests_tags_and_links() {
        let s = setup(true).await;
        let app = repo("team/app");
        let other = repo("team/other");
        s.put_blob(&app, CONFIG).await;
        s.put_blob(&app, LAYER).await;
        s.put_blob(&other, LAYER).await;
        let a = s.push(&app, IMAGE, s.image(1, None), Some("v1")).await;
        s.registry
            .add_tag(&app, &a, &tag("v1b"))
            .await
            .expect("tag");
        let b = s.push(&app, IMAGE, s.image(2, None), None).await;
        let i = s.push(&app, INDEX, index(&[&a, &b]), Some("latest")).await;
        let sig = s.push(&app, IMAGE, s.image(3, Some(&a)), None).await;
        s.events().await;

        assert_eq!(s.registry.delete_repository(&app).await.expect("delete"), 4);
        let events = s.events().await;
        let at = |e: String| {
            events
                .iter()
                .position(|x| *x == e)
                .unwrap_or_else(|| panic!("{e} in {events:?}"))
        };
        let deleted = |what: &str| format!("delete team/app {what}");
        // The index and the referrer before the images they point at; each manifest's
        // tags right after it; the blobs last.
        assert!(at(deleted(i.as_str())) < at(deleted(a.as_str())));
        assert!(at(deleted(i.as_str())) < at(deleted(b.as_str())));
        assert!(at(deleted(sig.as_str())) < at(deleted(a.as_str())));
        assert_eq!(at(deleted("tag:latest")), at(deleted(i.as_str())) + 1);
        assert_eq!(at(deleted("tag:v1")), at(deleted(a.as_str())) + 1);
        assert_eq!(at(deleted("tag:v1b")), at(deleted(a.as_str())) + 2);
        let mut blobs = [s.config.to_string(), s.layer.to_string()];
        blobs.sort();
        assert_eq!(
            events[events.len() - 2..],
            blobs.iter().map(|d| deleted(d)).collect::<Vec<_>>()[..]
        );
        assert_eq!(events.len(), 4 + 3 + 2, "{events:?}");

        assert_eq!(s.catalog().await, ["team/other"]);
        assert!(matches!(
            s.registry
                .get_manifest(&app, &Reference::Digest(a.clone()), &Accept::default())
                .await,
            Err(RegistryError::ManifestUnknown(_))
        ));
        assert!(matches!(
            s.registry.stat_blob(&app, &s.layer).await,
            Err(RegistryError::BlobUnknown(_))
        ));
        assert!(matches!(
            s.registry.list_tags(&app, None, None).await,
            Err(RegistryError::NameUnknown)
        ));
        assert!(s
            .meta
            .repository_summary(&app)
            .await
            .expect("summary")
            .is_none());
        assert_eq!(
            s.registry.stat_blob(&other, &s.layer).await.expect("kept"),
            LAYER.len() as u64
        );
        for d in [&s.config, &s.layer] {
            assert!(
                s.blobs.stat(d.into()).await.expect("stat").is_some(),
                "GC's to take"
            );
        }
        assert!(matches!(
            s.registry.delete_repository(&app).await,
            Err(RegistryError::NameUnknown)
        ));

        // A repository of blobs alone goes too, with its blob events.
        s.events().await;
        assert_eq!(
            s.registry.delete_repository(&other).await.expect("delete"),
            0
        );
        assert_eq!(s.events().await, [format!("delete team/other {}", s.layer)]);
        assert!(s.catalog().await.is_empty());
        // Pushed again, it is a new repository.
        s.put_blob(&app, CONFIG).await;
        assert_eq!(s.catalog().await, ["team/app"]);
    }

    #[tokio::test]
    async fn delete_repository_needs_deletes_enabled() {
        let s = setup(false).await;
        let app = repo("team/app");
        s.put_blob(&app, CONFIG).await;
        s.put_blob(&app, LAYER).await;
        let a = s.push(&app, IMAGE, s.image(1, None), Some("v1")).await;
        s.events().await;
        assert!(matches!(
            s.registry.delete_repository(&app).await,
            Err(RegistryError::Unsupported(_))
        ));
        assert!(matches!(
            s.registry.remove_tag(&app, &a, &tag("v1")).await,
            Err(RegistryError::Unsupported(_))
        ));
        assert_eq!(s.catalog().await, ["team/app"]);
        assert!(s.events().await.is_empty());
        // Tagging is a push: allowed.
        assert!(s.registry.add_tag(&app, &a, &tag("v2")).await.expect("tag"));
    }

    /// A manifest pushed after the delete removed the manifests it listed, before the
    /// blobs are unlinked: the unlink refuses (the push would be left without its blobs),
    /// and the next round deletes the new manifest too.
    #[tokio::test]
    async fn a_manifest_pushed_during_a_repository_delete_goes_too() {
        let s = setup(true).await;
        let app = repo("team/app");
        s.put_blob(&app, CONFIG).await;
        s.put_blob(&app, LAYER).await;
        s.push(&app, IMAGE, s.image(1, None), Some("v1")).await;

        let pause = Pause::at("delete-repository:manifests-deleted");
        let (r, name) = (s.registry.clone(), app.clone());
        let delete = tokio::spawn(
            pause
                .clone()
                .scope(async move { r.delete_repository(&name).await }),
        );
        pause.reached.notified().await;
        let late = s.push(&app, IMAGE, s.image(2, None), Some("late")).await;
        pause.resume.notify_one();
        // The second round passes the point again: let it through.
        pause.reached.notified().await;
        pause.resume.notify_one();
        assert_eq!(delete.await.expect("join").expect("delete"), 2);
        assert!(s.catalog().await.is_empty());
        assert!(s
            .events()
            .await
            .contains(&format!("delete team/app {late}")));
    }

    /// A blob pushed after the delete read the links its events name: the unlink refuses
    /// them, and goes again with an event for the new blob too.
    #[tokio::test]
    async fn a_blob_pushed_during_a_repository_delete_is_reported_unlinked() {
        let s = setup(true).await;
        let app = repo("team/app");
        s.put_blob(&app, CONFIG).await;
        s.events().await;

        let pause = Pause::at("delete-repository:links-read");
        let (r, name) = (s.registry.clone(), app.clone());
        let delete = tokio::spawn(
            pause
                .clone()
                .scope(async move { r.delete_repository(&name).await }),
        );
        pause.reached.notified().await;
        s.put_blob(&app, LAYER).await;
        pause.resume.notify_one();
        assert_eq!(delete.await.expect("join").expect("delete"), 0);
        assert!(s.catalog().await.is_empty());
        let mut want = vec![
            format!("push team/app {}", s.layer),
            format!("delete team/app {}", s.config),
            format!("delete team/app {}", s.layer),
        ];
        want[1..].sort();
        assert_eq!(s.events().await, want);
    }

    #[tokio::test]
    async fn add_tag_tags_a_stored_manifest_as_a_push_does() {
        let s = setup(true).await;
        let app = repo("team/app");
        s.put_blob(&app, CONFIG).await;
        s.put_blob(&app, LAYER).await;
        let a = s.push(&app, IMAGE, s.image(1, None), Some("v1")).await;
        let b = s.push(&app, IMAGE, s.image(2, None), Some("moving")).await;
        s.events().await;

        assert!(matches!(
            s.registry
                .add_tag(&app, &Digest::of(Algorithm::Sha256, b"nothing"), &tag("x"))
                .await,
            Err(RegistryError::ManifestUnknown(_))
        ));
        assert!(matches!(
            s.registry.add_tag(&repo("team/none"), &a, &tag("x")).await,
            Err(RegistryError::ManifestUnknown(_))
        ));
        assert!(s.registry.add_tag(&app, &a, &tag("v2")).await.expect("tag"));
        assert_eq!(s.events().await, [format!("push team/app {a}:v2")]);
        assert!(!s
            .registry
            .add_tag(&app, &a, &tag("v2"))
            .await
            .expect("again"));
        assert!(s.events().await.is_empty(), "nothing happened");
        // A tag on another manifest moves, as a push under it would move it.
        assert!(s
            .registry
            .add_tag(&app, &a, &tag("moving"))
            .await
            .expect("move"));
        assert_eq!(s.events().await, [format!("push team/app {a}:moving")]);
        let got = s
            .registry
            .get_manifest(&app, &Reference::Tag(tag("moving")), &Accept::default())
            .await
            .expect("moved");
        assert_eq!(got.digest, a);
        let (list, total) = s
            .meta
            .artifacts(&app, &ArtifactFilter::default(), Page::all())
            .await
            .expect("artifacts");
        assert_eq!(total, 2);
        let tags_of = |d: &Digest| -> Vec<String> {
            list.iter()
                .find(|x| x.digest == *d)
                .expect("listed")
                .tags
                .iter()
                .map(|t| t.name.clone())
                .collect()
        };
        assert_eq!(tags_of(&a), ["moving", "v1", "v2"]);
        assert!(tags_of(&b).is_empty());

        // A sha512 manifest keeps its digest: no sha256 copy appears.
        let content = s.image(3, None);
        let long = Digest::of(Algorithm::Sha512, &content);
        s.registry
            .put_manifest(
                &app,
                &Reference::Digest(long.clone()),
                Some(IMAGE),
                content,
                vec![],
            )
            .await
            .expect("sha512 push");
        assert!(s
            .registry
            .add_tag(&app, &long, &tag("long"))
            .await
            .expect("tag"));
        let got = s
            .registry
            .get_manifest(&app, &Reference::Tag(tag("long")), &Accept::default())
            .await
            .expect("tagged");
        assert_eq!(got.digest, long);
        let (_, total) = s
            .meta
            .artifacts(&app, &ArtifactFilter::default(), Page::all())
            .await
            .expect("artifacts");
        assert_eq!(total, 3);
    }

    #[tokio::test]
    async fn remove_tag_takes_the_tag_off_that_manifest_only() {
        let s = setup(true).await;
        let app = repo("team/app");
        s.put_blob(&app, CONFIG).await;
        s.put_blob(&app, LAYER).await;
        let a = s.push(&app, IMAGE, s.image(1, None), Some("v1")).await;
        let b = s.push(&app, IMAGE, s.image(2, None), Some("other")).await;
        s.events().await;

        // The tag is on another manifest, or nowhere: a clear error, nothing changed.
        for t in ["other", "absent"] {
            match s.registry.remove_tag(&app, &a, &tag(t)).await {
                Err(RegistryError::TagUnknown { tag: got, digest }) => {
                    assert_eq!((got.as_str(), &digest), (t, &a))
                }
                other => panic!("expected TagUnknown, got {other:?}"),
            }
        }
        let unknown = Digest::of(Algorithm::Sha256, b"nothing");
        assert!(matches!(
            s.registry.remove_tag(&app, &unknown, &tag("v1")).await,
            Err(RegistryError::ManifestUnknown(_))
        ));
        assert!(s.events().await.is_empty());
        assert_eq!(
            s.registry
                .get_manifest(&app, &Reference::Tag(tag("other")), &Accept::default())
                .await
                .expect("kept")
                .digest,
            b
        );

        s.registry
            .remove_tag(&app, &a, &tag("v1"))
            .await
            .expect("untag");
        assert_eq!(s.events().await, ["delete team/app tag:v1"]);
        assert!(matches!(
            s.registry
                .get_manifest(&app, &Reference::Tag(tag("v1")), &Accept::default())
                .await,
            Err(RegistryError::ManifestUnknown(_))
        ));
        // The manifest stays, untagged.
        let left = s.meta.artifact(&app, &a).await.expect("artifact");
        assert!(left.expect("kept").tags.is_empty());
        assert!(s.meta.repository_exists(&app).await.expect("exists"));
    }
}
