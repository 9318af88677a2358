//! The contract every metadata backend must meet, run by each backend's tests.

use super::{
    ManifestDeletion, MetaStore, NewEvent, NewManifest, SessionCapReached, SessionCaps,
    UploadSession,
};
use oci::{Algorithm, Digest, Reference, RepoName, Tag};

fn repo(s: &str) -> RepoName {
    s.parse().expect("repo name")
}
fn tag(s: &str) -> Tag {
    s.parse().expect("tag")
}
fn d(s: &str) -> Digest {
    Digest::of(Algorithm::Sha256, s.as_bytes())
}
/// The record of a blob committed at its digest's own path.
pub fn by_digest(size: u64) -> Option<super::BlobRecord> {
    Some(super::BlobRecord { size, key: None })
}

fn manifest(content: &str, subject: Option<Digest>, artifact_type: Option<&str>) -> NewManifest {
    NewManifest {
        digest: d(content),
        media_type: oci::media::OCI_MANIFEST.to_string(),
        content: content.as_bytes().to_vec(),
        subject,
        artifact_type: artifact_type.map(str::to_string),
        annotations: Some(r#"{"k":"v"}"#.to_string()),
        references: vec![(d("layer"), false)],
        required_blobs: Vec::new(),
        required_manifests: Vec::new(),
    }
}

pub async fn run(m: &dyn MetaStore) {
    let a = repo("team/app");
    let b = repo("team/other");

    // Blobs and links.
    assert!(!m.repository_exists(&a).await.expect("exists"));
    assert_eq!(m.known_blob(&d("layer")).await.expect("known"), None);
    m.link_blob(&a, &d("layer"), 5, &[]).await.expect("link");
    m.link_blob(&a, &d("layer"), 5, &[])
        .await
        .expect("link twice");
    assert!(m.repository_exists(&a).await.expect("exists"));
    assert_eq!(
        m.linked_blob(&a, &d("layer")).await.expect("linked"),
        by_digest(5)
    );
    assert_eq!(m.linked_blob(&b, &d("layer")).await.expect("linked"), None);
    assert_eq!(
        m.known_blob(&d("layer")).await.expect("known"),
        by_digest(5)
    );
    assert_eq!(
        m.linked_blobs(&a, &[d("layer"), d("nope")])
            .await
            .expect("linked"),
        vec![Some(5), None]
    );

    // A manifest whose required content is gone is not written at all.
    let mut needs = manifest("needs-blob", None, None);
    needs.required_blobs = vec![d("layer"), d("never-linked")];
    needs.required_manifests = vec![d("no-such-manifest")];
    match m.put_manifest(&a, &needs, &[tag("needs")], &[]).await {
        Err(super::MetaError::MissingReferences(gone)) => {
            assert_eq!(gone, vec![d("never-linked"), d("no-such-manifest")])
        }
        other => panic!("expected MissingReferences, got {other:?}"),
    }
    assert!(m
        .get_manifest(&a, &Reference::Tag(tag("needs")))
        .await
        .expect("get")
        .is_none());

    // Manifests and tags.
    let m1 = manifest("m1", None, None);
    m.put_manifest(&a, &m1, &[tag("v1"), tag("latest")], &[])
        .await
        .expect("put");
    m.put_manifest(&a, &m1, &[tag("v1")], &[])
        .await
        .expect("put again");
    let got = m
        .get_manifest(&a, &Reference::Tag(tag("latest")))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.digest, m1.digest);
    assert_eq!(got.content, b"m1");
    assert!(m
        .get_manifest(&b, &Reference::Digest(m1.digest.clone()))
        .await
        .expect("get")
        .is_none());
    assert_eq!(
        m.manifests_exist(&a, &[m1.digest.clone(), d("x")])
            .await
            .expect("exist"),
        vec![true, false]
    );
    // Tags list in byte order, paginated.
    let m2 = manifest("m2", None, None);
    m.put_manifest(&a, &m2, &[tag("A"), tag("b"), tag("v1")], &[])
        .await
        .expect("retag");
    assert_eq!(
        m.list_tags(&a, None, 100).await.expect("tags"),
        Some(vec!["A".into(), "b".into(), "latest".into(), "v1".into()])
    );
    assert_eq!(
        m.list_tags(&a, Some("b"), 1).await.expect("tags"),
        Some(vec!["latest".into()])
    );
    assert_eq!(m.list_tags(&b, None, 10).await.expect("tags"), None);
    let v1 = m
        .get_manifest(&a, &Reference::Tag(tag("v1")))
        .await
        .expect("get")
        .expect("v1");
    assert_eq!(v1.digest, m2.digest, "a tag moves to the newest push");

    // Referrers.
    let sig = manifest("sig", Some(m1.digest.clone()), Some("application/x.sig"));
    let sbom = manifest("sbom", Some(m1.digest.clone()), Some("application/x.sbom"));
    m.put_manifest(&a, &sig, &[], &[]).await.expect("sig");
    m.put_manifest(&a, &sbom, &[], &[]).await.expect("sbom");
    let all = m
        .referrers(&a, &m1.digest, None, None, 100, u64::MAX)
        .await
        .expect("referrers");
    assert_eq!(all.len(), 2);
    let only = m
        .referrers(
            &a,
            &m1.digest,
            Some("application/x.sig"),
            None,
            100,
            u64::MAX,
        )
        .await
        .expect("referrers");
    assert_eq!(only.len(), 1);
    let first = m
        .referrers(&a, &m1.digest, None, None, 1, u64::MAX)
        .await
        .expect("referrers page");
    let rest = m
        .referrers(
            &a,
            &m1.digest,
            None,
            Some(first[0].digest.as_str()),
            10,
            u64::MAX,
        )
        .await
        .expect("referrers page");
    assert_eq!(first.len() + rest.len(), 2);
    assert!(first[0].digest < rest[0].digest);
    // A byte budget: the entry past it is returned (so the caller sees more follow),
    // and the first entry always comes with the one after it.
    let one = all[0].listed_bytes();
    for (budget, want) in [(0, 2), (one, 2), (u64::MAX, 2)] {
        let got = m
            .referrers(&a, &m1.digest, None, None, 100, budget)
            .await
            .expect("referrers by bytes");
        assert_eq!(got.len(), want, "budget {budget}");
    }
    let got = m
        .referrers(&a, &m1.digest, None, Some(first[0].digest.as_str()), 100, 0)
        .await
        .expect("referrers by bytes");
    assert_eq!(got.len(), 1, "the last entry alone");
    assert_eq!(only[0].digest, sig.digest);
    assert_eq!(only[0].size, 3);
    assert_eq!(only[0].annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert!(m
        .referrers(&b, &m1.digest, None, None, 100, u64::MAX)
        .await
        .expect("referrers")
        .is_empty());

    // Deletes: a tag alone, then a manifest with its tags.
    assert!(m.delete_tag(&a, &tag("A"), &[]).await.expect("delete tag"));
    assert!(!m
        .delete_tag(&a, &tag("A"), &[])
        .await
        .expect("delete tag twice"));
    assert!(m
        .get_manifest(&a, &Reference::Digest(m2.digest.clone()))
        .await
        .expect("get")
        .is_some());
    assert_eq!(
        m.delete_manifest(&a, &m1.digest, None, &[])
            .await
            .expect("delete manifest"),
        ManifestDeletion::Deleted
    );
    assert_eq!(
        m.delete_manifest(&a, &m1.digest, None, &[])
            .await
            .expect("delete twice"),
        ManifestDeletion::NotFound
    );
    assert_eq!(
        m.delete_manifest(&b, &m1.digest, None, &[])
            .await
            .expect("unknown repo"),
        ManifestDeletion::NotFound
    );
    assert_eq!(
        m.list_tags(&a, None, 100).await.expect("tags"),
        Some(vec!["b".into(), "v1".into()])
    );
    assert!(m.unlink_blob(&a, &d("layer"), &[]).await.expect("unlink"));
    assert!(!m
        .unlink_blob(&a, &d("layer"), &[])
        .await
        .expect("unlink twice"));

    // Catalog pagination.
    for i in 0..5 {
        m.link_blob(&repo(&format!("cat/r{i}")), &d("x"), 1, &[])
            .await
            .expect("link");
    }
    let first = m
        .list_repositories(Some("cat/"), 3, None)
        .await
        .expect("list");
    assert_eq!(first, vec!["cat/r0", "cat/r1", "cat/r2"]);
    let next = m
        .list_repositories(Some("cat/r2"), 3, None)
        .await
        .expect("list");
    assert_eq!(next, vec!["cat/r3", "cat/r4", "team/app"]);

    // Upload sessions.
    let s = UploadSession {
        id: "abc-123".into(),
        repository: a.clone(),
        algorithm: Algorithm::Sha512,
        created_at: 42,
    };
    m.create_upload(&s, SessionCaps::default())
        .await
        .expect("create upload")
        .expect("under the caps");
    assert_eq!(m.get_upload("abc-123").await.expect("get upload"), Some(s));
    assert_eq!(m.get_upload("zzz").await.expect("get upload"), None);
    let keep = UploadSession {
        id: "keep".into(),
        repository: a.clone(),
        algorithm: Algorithm::Sha256,
        created_at: 1,
    };
    m.create_upload(&keep, SessionCaps::default())
        .await
        .expect("create upload")
        .expect("under the caps");
    m.delete_upload("abc-123").await.expect("delete upload");
    assert_eq!(m.get_upload("abc-123").await.expect("get upload"), None);

    // Users, projects, members, robots, signing keys, audit log, catalog by project.
    super::testsuite_access::run(m).await;
    // Repository summaries, artifacts, project usage; emptied repositories go.
    super::testsuite_catalog::run(m).await;
}

/// After `run` and a reopen, the state it left is still there.
pub async fn check_persisted(m: &dyn MetaStore) {
    let a = repo("team/app");
    assert_eq!(
        m.list_tags(&a, None, 100).await.expect("tags"),
        Some(vec!["b".into(), "v1".into()])
    );
    assert!(m.get_upload("keep").await.expect("upload").is_some());
}

/// The outbox and housekeeping contract: per-endpoint order, leases, completion, old
/// uploads, tags of a manifest.
pub async fn run_events(m: &dyn MetaStore) {
    assert!(m.claim("a", "me", 30).await.expect("claim").is_none());
    // One batch, kept in its order: "one" for a and b, then "two" for a.
    m.enqueue(&[row("a", "one"), row("b", "one"), row("a", "two")])
        .await
        .expect("enqueue");
    m.enqueue(&[]).await.expect("enqueue nothing");
    assert_eq!(m.pending("a").await.expect("pending"), 2);
    assert_eq!(m.pending("b").await.expect("pending"), 1);

    // The head of an endpoint is claimed first; another owner cannot take it or skip it.
    let first = m.claim("a", "me", 30).await.expect("claim").expect("entry");
    assert_eq!((first.payload.as_str(), first.attempts), ("one", 1));
    assert!(m.claim("a", "other", 30).await.expect("claim").is_none());
    // The owner may claim it again (a retry), counting the attempt.
    let again = m.claim("a", "me", 30).await.expect("claim").expect("entry");
    assert_eq!((again.seq, again.attempts), (first.seq, 2));
    // Completing by another owner does nothing; by the owner removes it.
    m.complete(first.seq, "other").await.expect("complete");
    assert_eq!(m.pending("a").await.expect("pending"), 2);
    m.complete(first.seq, "me").await.expect("complete");
    let second = m.claim("a", "me", 30).await.expect("claim").expect("entry");
    assert_eq!(second.payload, "two");
    // A released entry can be claimed by anyone at once; an expired lease too.
    m.release(second.seq, "me").await.expect("release");
    let taken = m
        .claim("a", "other", 0)
        .await
        .expect("claim")
        .expect("entry");
    assert_eq!(taken.seq, second.seq);
    let expired = m.claim("a", "me", 30).await.expect("claim").expect("entry");
    assert_eq!(expired.seq, second.seq);
    // Endpoints are independent.
    let b = m
        .claim("b", "other", 30)
        .await
        .expect("claim")
        .expect("entry");
    assert_eq!(b.payload, "one");

    // Uploads by age.
    let r = repo("purge/me");
    for (id, at) in [("old-1", 100), ("old-2", 200), ("new", 10_000)] {
        m.create_upload(
            &UploadSession {
                id: id.into(),
                repository: r.clone(),
                algorithm: Algorithm::Sha256,
                created_at: at,
            },
            SessionCaps::default(),
        )
        .await
        .expect("create upload")
        .expect("under the caps");
    }
    // Caps on open sessions: per repository, then overall; refused ones leave no row.
    let session = |id: &str, r: &RepoName| UploadSession {
        id: id.into(),
        repository: r.clone(),
        algorithm: Algorithm::Sha256,
        created_at: 20_000,
    };
    let per_repository = |n| SessionCaps {
        total: u64::MAX,
        per_repository: n,
    };
    assert_eq!(
        m.create_upload(&session("capped-1", &r), per_repository(3))
            .await
            .expect("create"),
        Err(SessionCapReached::Repository(3))
    );
    assert!(m.get_upload("capped-1").await.expect("get").is_none());
    let other = repo("purge/other");
    assert_eq!(
        m.create_upload(&session("other-1", &other), per_repository(3))
            .await
            .expect("create"),
        Ok(())
    );
    assert_eq!(
        m.create_upload(&session("other-2", &other), per_repository(2))
            .await
            .expect("create"),
        Ok(())
    );
    let total = SessionCaps {
        total: 5,
        per_repository: 100,
    };
    assert_eq!(
        m.create_upload(&session("other-3", &other), total)
            .await
            .expect("create"),
        Err(SessionCapReached::Total(5)),
        "at least five sessions are open by now"
    );
    assert!(m.get_upload("other-3").await.expect("get").is_none());
    for id in ["other-1", "other-2"] {
        m.delete_upload(id).await.expect("delete");
    }
    let old = m.uploads_created_before(1000, 100).await.expect("old");
    let ids: Vec<&str> = old
        .iter()
        .filter(|s| s.repository == r)
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ids, ["old-1", "old-2"]);
    assert!(old.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    assert_eq!(
        m.uploads_created_before(1000, 1).await.expect("old").len(),
        1
    );

    // Tags of a manifest.
    let man = manifest("tagged", None, None);
    m.link_blob(&r, &d("layer"), 5, &[]).await.expect("link");
    m.put_manifest(&r, &man, &[tag("z"), tag("a")], &[])
        .await
        .expect("put");
    let tags = m.tags_of(&r, &man.digest).await.expect("tags");
    assert_eq!(tags, vec![tag("a"), tag("z")]);
    assert!(m.tags_of(&r, &d("other")).await.expect("tags").is_empty());
}

fn row(endpoint: &str, payload: &str) -> NewEvent {
    NewEvent {
        endpoint: endpoint.to_string(),
        payload: payload.to_string(),
    }
}

/// Bounding an endpoint's backlog: the oldest entries go first, a leased entry never, an
/// endpoint under its caps is left alone, and other endpoints are untouched.
pub async fn outbox_trim(m: &dyn MetaStore) {
    let batch: Vec<NewEvent> = (0..10)
        .map(|i| row("trim-a", &format!("a{i}")))
        .chain((0..3).map(|i| row("trim-b", &format!("b{i}"))))
        .collect();
    m.enqueue(&batch).await.expect("enqueue");
    // Under the caps: nothing happens.
    assert_eq!(
        m.trim("trim-a", 10, Some(0)).await.expect("trim"),
        super::Trimmed::default()
    );
    // The head is being delivered: it stays and counts towards the cap, so the oldest
    // unleased entries after it go.
    let head = m
        .claim("trim-a", "me", 60)
        .await
        .expect("claim")
        .expect("head");
    assert_eq!(head.payload, "a0");
    let t = m.trim("trim-a", 4, None).await.expect("trim");
    assert_eq!((t.over_cap, t.expired), (6, 0));
    assert_eq!(m.pending("trim-a").await.expect("pending"), 4);
    assert_eq!(m.pending("trim-b").await.expect("pending"), 3);
    // Delivery goes on where it was, then with the newest entries, in order.
    m.complete(head.seq, "me").await.expect("complete");
    assert_eq!(drain(m, "trim-a").await, ["a7", "a8", "a9"]);

    // By age: everything created before the cutoff goes, except a leased entry.
    m.enqueue(&[row("trim-b", "b3")]).await.expect("enqueue");
    let leased = m
        .claim("trim-b", "me", 60)
        .await
        .expect("claim")
        .expect("head");
    let t = m
        .trim("trim-b", 100, Some(super::now() + 10))
        .await
        .expect("trim");
    assert_eq!((t.over_cap, t.expired), (0, 3));
    assert_eq!(m.pending("trim-b").await.expect("pending"), 1);
    m.complete(leased.seq, "me").await.expect("complete");
    // A cutoff older than every entry drops nothing.
    m.enqueue(&[row("trim-b", "b4")]).await.expect("enqueue");
    assert_eq!(
        m.trim("trim-b", 100, Some(0)).await.expect("trim"),
        super::Trimmed::default()
    );
    assert_eq!(drain(m, "trim-b").await, ["b4"]);
}

fn events(what: &str) -> Vec<NewEvent> {
    ["tx-a", "tx-b"]
        .iter()
        .map(|e| NewEvent {
            endpoint: e.to_string(),
            payload: what.to_string(),
        })
        .collect()
}

/// Every pending payload of `endpoint`, in order (claimed and completed, so it drains).
async fn drain(m: &dyn MetaStore, endpoint: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(e) = m.claim(endpoint, "drain", 30).await.expect("claim") {
        m.complete(e.seq, "drain").await.expect("complete");
        out.push(e.payload);
    }
    out
}

/// A change and its events are one transaction: the events are in the outbox if and only
/// if the change was written, in the order of the writes.
pub async fn transactional_events(m: &dyn MetaStore) {
    let r = repo("tx/app");
    let other = repo("tx/other");
    // Refused writes record nothing.
    let mut needs = manifest("tx-needs", None, None);
    needs.required_blobs = vec![d("tx-absent")];
    assert!(matches!(
        m.put_manifest(&r, &needs, &[tag("t")], &events("refused put"))
            .await,
        Err(super::MetaError::MissingReferences(_))
    ));
    assert_eq!(
        m.mount_blob(&other, &d("tx-absent"), None, &events("refused mount"))
            .await
            .expect("mount"),
        None
    );
    assert!(!m
        .delete_tag(&r, &tag("nope"), &events("refused tag delete"))
        .await
        .expect("delete tag"));
    assert_eq!(
        m.delete_manifest(&r, &d("nope"), Some(&[]), &events("refused delete"))
            .await
            .expect("delete"),
        ManifestDeletion::NotFound
    );
    assert!(!m
        .unlink_blob(&r, &d("nope"), &events("refused unlink"))
        .await
        .expect("unlink"));
    assert_eq!(m.pending("tx-a").await.expect("pending"), 0);
    assert_eq!(m.known_blob(&d("tx-absent")).await.expect("known"), None);

    // Committed writes record theirs, for each endpoint.
    m.link_blob(&r, &d("tx-layer"), 3, &events("push blob"))
        .await
        .expect("link");
    let mut man = manifest("tx-man", None, None);
    man.required_blobs = vec![d("tx-layer")];
    m.put_manifest(&r, &man, &[tag("t")], &events("push manifest"))
        .await
        .expect("put");
    // A mount needs the blob linked in `from` when given.
    assert_eq!(
        m.mount_blob(
            &other,
            &d("tx-layer"),
            Some(&other),
            &events("refused from")
        )
        .await
        .expect("mount"),
        None
    );
    assert_eq!(
        m.mount_blob(&other, &d("tx-layer"), Some(&r), &events("mount"))
            .await
            .expect("mount"),
        by_digest(3)
    );
    assert_eq!(
        m.linked_blob(&other, &d("tx-layer")).await.expect("linked"),
        by_digest(3)
    );
    m.put_manifest(&r, &man, &[tag("u")], &[])
        .await
        .expect("put without events");
    assert!(m
        .delete_tag(&r, &tag("u"), &events("delete tag"))
        .await
        .expect("delete tag"));
    // The tags the events were built from must be the manifest's tags at the delete: a
    // tag moved to another manifest meanwhile refuses it, and nothing is written.
    m.put_manifest(&r, &man, &[tag("v")], &[])
        .await
        .expect("tag v");
    let tags_read = m.tags_of(&r, &man.digest).await.expect("tags of");
    assert_eq!(tags_read, vec![tag("t"), tag("v")]);
    let other_man = manifest("tx-other", None, None);
    m.put_manifest(&r, &other_man, &[tag("v")], &[])
        .await
        .expect("move tag v");
    assert_eq!(
        m.delete_manifest(&r, &man.digest, Some(&tags_read), &events("stale delete"))
            .await
            .expect("stale delete"),
        ManifestDeletion::TagsChanged(vec![tag("t")])
    );
    assert!(m
        .get_manifest(&r, &Reference::Digest(man.digest.clone()))
        .await
        .expect("get")
        .is_some());
    assert_eq!(
        m.tags_of(&r, &man.digest).await.expect("tags of"),
        vec![tag("t")]
    );
    // A tag added meanwhile refuses it too (it would be deleted unreported).
    assert_eq!(
        m.delete_manifest(&r, &man.digest, Some(&[]), &events("stale delete"))
            .await
            .expect("stale delete"),
        ManifestDeletion::TagsChanged(vec![tag("t")])
    );
    assert_eq!(
        m.delete_manifest(
            &r,
            &man.digest,
            Some(&[tag("t")]),
            &events("delete manifest")
        )
        .await
        .expect("delete"),
        ManifestDeletion::Deleted
    );
    assert_eq!(
        m.list_tags(&r, None, 100).await.expect("tags"),
        Some(vec!["v".into()]),
        "the moved tag is live"
    );
    assert!(m
        .unlink_blob(&other, &d("tx-layer"), &events("delete blob"))
        .await
        .expect("unlink"));
    let want = [
        "push blob",
        "push manifest",
        "mount",
        "delete tag",
        "delete manifest",
        "delete blob",
    ];
    assert_eq!(drain(m, "tx-a").await, want);
    assert_eq!(drain(m, "tx-b").await, want);
}

/// The [`super::Housekeeping`] contract: accounting and garbage collection's guarded deletes.
pub async fn housekeeping(m: &dyn MetaStore) {
    use super::Stats;
    let a = repo("gc/app");
    assert_eq!(m.stats().await.expect("stats"), Stats::default());
    m.link_blob(&a, &d("layer"), 5, &[]).await.expect("link");
    m.link_blob(&a, &d("loose"), 7, &[]).await.expect("link");
    let mut child = manifest("child", None, None);
    child.references = vec![(d("layer"), false)];
    m.put_manifest(&a, &child, &[], &[]).await.expect("child");
    let mut index = manifest("index", None, None);
    index.references = vec![(d("child"), true)];
    m.put_manifest(&a, &index, &[tag("latest")], &[])
        .await
        .expect("index");
    let orphan = manifest("orphan", None, None);
    m.put_manifest(&a, &orphan, &[], &[]).await.expect("orphan");
    m.create_upload(
        &UploadSession {
            id: "gc-upload".into(),
            repository: a.clone(),
            algorithm: Algorithm::Sha256,
            created_at: 1,
        },
        SessionCaps::default(),
    )
    .await
    .expect("upload")
    .expect("under the caps");
    assert_eq!(
        m.stats().await.expect("stats"),
        Stats {
            repositories: 1,
            manifests: 3,
            blobs: 2,
            blob_bytes: 12,
            uploads: 1,
        }
    );

    // GC's view: digest order, tags and references.
    let all = m.gc_manifests(&a).await.expect("gc manifests");
    let mut want = vec![d("child"), d("index"), d("orphan")];
    want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(
        all.iter().map(|g| g.digest.clone()).collect::<Vec<_>>(),
        want
    );
    let by = |x: &str| all.iter().find(|g| g.digest == d(x)).expect("listed");
    assert!(by("index").tagged && !by("child").tagged && !by("orphan").tagged);
    assert_eq!(by("index").references, vec![(d("child"), true)]);
    assert_eq!(by("child").references, vec![(d("layer"), false)]);

    // Untagged deletes keep tagged and referenced manifests.
    assert!(!m.gc_delete_untagged(&a, &d("index")).await.expect("tagged"));
    assert!(!m.gc_delete_untagged(&a, &d("child")).await.expect("child"));
    assert!(m
        .gc_delete_untagged(&a, &d("orphan"))
        .await
        .expect("orphan"));
    assert_eq!(m.gc_manifests(&a).await.expect("gc").len(), 2);

    // Blobs: referenced ones and recently linked ones are kept.
    let future = super::now() + 3600;
    let past = super::now() - 3600;
    let lease = std::time::Duration::from_secs(30);
    assert!(!m
        .gc_forget_blob(&d("layer"), future, "gc-1", lease)
        .await
        .expect("referenced"));
    assert!(!m
        .gc_forget_blob(&d("loose"), past, "gc-1", lease)
        .await
        .expect("recent"));
    assert!(m
        .gc_forget_blob(&d("loose"), future, "gc-1", lease)
        .await
        .expect("forget"));
    // The forget claimed the digest: recording it again waits for the collector to
    // release it, and another collector cannot forget it meanwhile.
    let claim = super::collecting_claim(&d("loose"));
    match m.link_blob(&a, &d("loose"), 7, &[]).await {
        Err(super::MetaError::Collecting(x)) => assert_eq!(x, d("loose")),
        other => panic!("expected Collecting, got {other:?}"),
    }
    assert!(!m
        .gc_forget_blob(&d("loose"), future, "gc-2", lease)
        .await
        .expect("held by gc-1"));
    match m.claim_job(&claim, "gc-2", lease).await.expect("claim") {
        Err(holder) => assert_eq!(holder.owner, "gc-1"),
        Ok(()) => panic!("the forget's claim is held by gc-1"),
    }
    assert_eq!(m.known_blob(&d("loose")).await.expect("known"), None);
    assert_eq!(m.linked_blob(&a, &d("loose")).await.expect("linked"), None);
    m.release_job(&claim, "gc-1").await.expect("release");

    // A forgotten blob cannot be mounted back: the mount records no blob.
    assert_eq!(
        m.mount_blob(&repo("gc/other"), &d("loose"), None, &[])
            .await
            .expect("mount"),
        None
    );
    assert_eq!(m.known_blob(&d("loose")).await.expect("known"), None);
    assert_eq!(
        m.known_blob(&d("layer")).await.expect("known"),
        by_digest(5)
    );
    // Released: the blob can be recorded again.
    m.link_blob(&a, &d("loose"), 7, &[])
        .await
        .expect("linked once the claim is released");
    assert_eq!(
        m.known_blob(&d("loose")).await.expect("known"),
        by_digest(7)
    );

    // A batch: one transaction forgets what nothing needs (a stored file no row records
    // included) and claims each of those; the rest is kept, unclaimed.
    let b = repo("gc/batch");
    for (x, size) in [("b1", 1), ("b2", 2), ("b3", 3)] {
        m.link_blob(&b, &d(x), size, &[]).await.expect("link");
    }
    let mut img = manifest("batch image", None, None);
    img.references = vec![(d("b2"), false)];
    m.put_manifest(&b, &img, &[tag("v1")], &[])
        .await
        .expect("image");
    let batch = [d("b1"), d("b2"), d("b3"), d("stray")];
    let mut forgotten = m
        .gc_forget_blobs(&batch, future, "gc-3", lease)
        .await
        .expect("forget a batch");
    forgotten.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let mut want = vec![d("b1"), d("b3"), d("stray")];
    want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(forgotten, want);
    assert_eq!(m.known_blob(&d("b1")).await.expect("known"), None);
    assert_eq!(m.known_blob(&d("b2")).await.expect("known"), by_digest(2));
    assert_eq!(m.linked_blob(&b, &d("b3")).await.expect("linked"), None);
    let claims: Vec<String> = want.iter().map(super::collecting_claim).collect();
    match m.link_blob(&b, &d("b3"), 3, &[]).await {
        Err(super::MetaError::Collecting(x)) => assert_eq!(x, d("b3")),
        other => panic!("expected Collecting, got {other:?}"),
    }
    // Renewed together by their owner only; a kept blob was never claimed.
    assert_eq!(
        m.renew_jobs(&claims, "gc-3", lease).await.expect("renew"),
        3
    );
    assert_eq!(
        m.renew_jobs(&claims, "gc-4", lease).await.expect("renew"),
        0
    );
    let kept = vec![super::collecting_claim(&d("b2"))];
    assert_eq!(m.renew_jobs(&kept, "gc-3", lease).await.expect("renew"), 0);
    // Released together: the blobs can be recorded again.
    m.release_jobs(&claims, "gc-4").await.expect("not gc-4's");
    assert!(m.link_blob(&b, &d("b1"), 1, &[]).await.is_err());
    m.release_jobs(&claims, "gc-3").await.expect("release");
    m.link_blob(&b, &d("b1"), 1, &[])
        .await
        .expect("linked again");
    m.link_blob(&b, &d("b3"), 3, &[])
        .await
        .expect("linked again");

    // A claim that ran out is not renewed: its holder learns that it lost it.
    // (Leases count whole seconds: 2 s lasts at least 1 s more, and is surely over 3.1 s
    // after its last renewal.)
    let short = std::time::Duration::from_secs(2);
    let name = vec!["gc-blob lapse-test".to_string()];
    m.claim_job(&name[0], "gc-5", short)
        .await
        .expect("claim")
        .expect("free");
    assert_eq!(m.renew_jobs(&name, "gc-5", short).await.expect("renew"), 1);
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(m.renew_jobs(&name, "gc-5", lease).await.expect("renew"), 0);
    m.release_jobs(&name, "gc-5").await.expect("release");
}

/// The pull-through cache's bookkeeping: touch, list expired, expire (re-checked).
/// Blobs recorded at keys of their own (migration 0016): the first key recorded for a
/// digest wins (no key included), every read returns it, and the digest-path forget of
/// garbage collection never takes a keyed row.
pub async fn blob_keys(m: &dyn MetaStore) {
    let a = repo("keys/a");
    let b = repo("keys/b");
    let keyed = |size, key: &str| {
        Some(super::BlobRecord {
            size,
            key: Some(key.to_string()),
        })
    };
    // The first key wins; a later key, or none, leaves it.
    let won = m
        .link_blob_at(&a, &d("k1"), 10, Some("objects/1"), &[])
        .await
        .expect("link at a key");
    assert_eq!(won.as_deref(), Some("objects/1"));
    let lost = m
        .link_blob_at(&b, &d("k1"), 10, Some("objects/2"), &[])
        .await
        .expect("link another copy");
    assert_eq!(lost.as_deref(), Some("objects/1"), "the first key stays");
    m.link_blob(&b, &d("k1"), 10, &[])
        .await
        .expect("link by digest");
    assert_eq!(
        m.linked_blob(&b, &d("k1")).await.expect("linked"),
        keyed(10, "objects/1")
    );
    assert_eq!(
        m.known_blob(&d("k1")).await.expect("known"),
        keyed(10, "objects/1")
    );
    // No key first: a later key is surplus.
    m.link_blob(&a, &d("k2"), 20, &[]).await.expect("link");
    let kept = m
        .link_blob_at(&a, &d("k2"), 20, Some("objects/3"), &[])
        .await
        .expect("link at a key");
    assert_eq!(kept, None, "the digest's own path stays");
    assert_eq!(m.known_blob(&d("k2")).await.expect("known"), by_digest(20));
    // Mounts carry the key.
    let c = repo("keys/c");
    assert_eq!(
        m.mount_blob(&c, &d("k1"), Some(&a), &[])
            .await
            .expect("mount from a"),
        keyed(10, "objects/1")
    );
    assert_eq!(
        m.mount_blob(&c, &d("k1"), None, &[]).await.expect("mount"),
        keyed(10, "objects/1")
    );
    // A key names one blob only.
    assert!(
        m.link_blob_at(&a, &d("k3"), 30, Some("objects/1"), &[])
            .await
            .is_err(),
        "a key recorded for another digest is refused"
    );
    assert_eq!(m.known_blob(&d("k3")).await.expect("known"), None);
    // The digest-path forget keeps a keyed row, however old and unlinked.
    for r in [&a, &b, &c] {
        m.unlink_blob(r, &d("k1"), &[]).await.expect("unlink");
    }
    m.unlink_blob(&a, &d("k2"), &[]).await.expect("unlink");
    let future = i64::MAX / 2;
    let lease = std::time::Duration::from_secs(60);
    let forgotten = m
        .gc_forget_blobs(&[d("k1"), d("k2")], future, "gc-keys", lease)
        .await
        .expect("forget");
    assert_eq!(forgotten, vec![d("k2")]);
    m.release_job(&super::collecting_claim(&d("k2")), "gc-keys")
        .await
        .expect("release");
    let relinked = m
        .link_blob_at(&a, &d("k1"), 10, Some("objects/4"), &[])
        .await
        .expect("relink");
    assert_eq!(relinked.as_deref(), Some("objects/1"), "the row was kept");

    // Garbage collection's keyed side: keyed rows are listed in digest order; the keyed
    // forget takes those nothing references and nothing recorded since the cutoff, and
    // returns their keys; it never takes a row at the digest's path.
    m.link_blob_at(&a, &d("k4"), 40, Some("objects/5"), &[])
        .await
        .expect("link");
    let mut image = manifest("keyed image", None, None);
    image.references = vec![(d("k4"), false)];
    m.put_manifest(&a, &image, &[tag("v1")], &[])
        .await
        .expect("image");
    m.link_blob(&a, &d("k5"), 50, &[]).await.expect("link");
    let listed = m.gc_keyed_blobs(None, 100).await.expect("keyed");
    let mut want = vec![(d("k1"), "objects/1"), (d("k4"), "objects/5")];
    want.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    let got: Vec<(Digest, &str)> = listed
        .iter()
        .filter(|b| b.key.starts_with("objects/"))
        .filter(|b| [d("k1"), d("k4")].contains(&b.digest))
        .map(|b| (b.digest.clone(), b.key.as_str()))
        .collect();
    assert_eq!(got, want);
    let first = &listed[0].digest;
    assert!(m
        .gc_keyed_blobs(Some(first), 100)
        .await
        .expect("page")
        .iter()
        .all(|b| b.digest.as_str() > first.as_str()));
    let past = 0;
    let none = m
        .gc_forget_keyed(&[d("k1"), d("k4"), d("k5")], past)
        .await
        .expect("forget nothing");
    assert!(none.is_empty(), "recorded after the cutoff: kept");
    let forgotten = m
        .gc_forget_keyed(&[d("k1"), d("k4"), d("k5")], future)
        .await
        .expect("forget");
    assert_eq!(forgotten.len(), 1, "{forgotten:?}");
    assert_eq!(forgotten[0].digest, d("k1"));
    assert_eq!(forgotten[0].key, "objects/1");
    assert_eq!(forgotten[0].size, 10);
    assert_eq!(m.known_blob(&d("k1")).await.expect("known"), None);
    assert_eq!(
        m.known_blob(&d("k4")).await.expect("known"),
        keyed(40, "objects/5"),
        "referenced by a manifest"
    );
    assert_eq!(m.known_blob(&d("k5")).await.expect("known"), by_digest(50));
    // Forgotten, the digest takes a new key: nothing waits for the collector.
    let again = m
        .link_blob_at(&b, &d("k1"), 10, Some("objects/6"), &[])
        .await
        .expect("a new push");
    assert_eq!(again.as_deref(), Some("objects/6"));
}

pub async fn proxy_cache(m: &dyn MetaStore) {
    let r = repo("cache/app");
    let img = manifest("cached image", None, None);
    m.link_blob(&r, &d("layer"), 5, &[]).await.expect("link");
    m.put_manifest(&r, &img, &[tag("v1")], &[])
        .await
        .expect("put");
    m.cache_touch(&r, &img.digest, true, 100, 0)
        .await
        .expect("touch");
    m.cache_touch(&r, &d("layer"), false, 200, 0)
        .await
        .expect("touch");
    // A touch within the freshness window is skipped; a later one moves it forward.
    m.cache_touch(&r, &img.digest, true, 150, 99)
        .await
        .expect("fresh");
    let expired = m.cache_expired(160, 10).await.expect("expired");
    assert_eq!(expired.len(), 1);
    assert!(expired[0].is_manifest && expired[0].last_used == 100);
    m.cache_touch(&r, &img.digest, true, 300, 250)
        .await
        .expect("touch");
    assert!(
        !m.cache_expire(&expired[0], 160).await.expect("expire"),
        "used meanwhile: kept"
    );
    assert!(m
        .get_manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .expect("get")
        .is_some());
    let all = m.cache_expired(1000, 10).await.expect("expired");
    assert_eq!(all.len(), 2, "oldest first: blob, then manifest");
    assert!(!all[0].is_manifest);
    for e in &all {
        assert!(m.cache_expire(e, 1000).await.expect("expire"));
    }
    assert!(m
        .get_manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .expect("get")
        .is_none());
    assert_eq!(m.linked_blob(&r, &d("layer")).await.expect("linked"), None);
    assert!(
        !m.repository_exists(&r).await.expect("exists"),
        "emptied repository is gone"
    );
    assert!(m
        .cache_expired(i64::MAX, 10)
        .await
        .expect("none")
        .is_empty());
}

/// Background job claims: one holder at a time, renewals by the holder, release only by
/// the holder, and a claim nobody renews runs out.
pub async fn job_claims(m: &dyn MetaStore) {
    use std::time::Duration;
    let long = Duration::from_secs(600);
    assert_eq!(
        m.claim_job("purge", "node-a", long).await.expect("claim"),
        Ok(())
    );
    let held = m
        .claim_job("purge", "node-b", long)
        .await
        .expect("claim")
        .expect_err("node-a holds it");
    assert_eq!(held.owner, "node-a");
    assert!(held.lease_until >= held.now + 590, "{held:?}");
    assert!(held.claimed_at <= held.now);
    // Another job is claimed on its own.
    assert_eq!(
        m.claim_job("expiry", "node-b", long).await.expect("claim"),
        Ok(())
    );
    // The holder renews; the first claim time stays.
    assert_eq!(
        m.claim_job("purge", "node-a", long).await.expect("renew"),
        Ok(())
    );
    let again = m
        .claim_job("purge", "node-b", long)
        .await
        .expect("claim")
        .expect_err("still node-a");
    assert_eq!(again.claimed_at, held.claimed_at);
    // Only the holder releases.
    m.release_job("purge", "node-b").await.expect("release");
    assert!(m
        .claim_job("purge", "node-b", long)
        .await
        .expect("claim")
        .is_err());
    m.release_job("purge", "node-a").await.expect("release");
    assert_eq!(
        m.claim_job("purge", "node-b", long).await.expect("claim"),
        Ok(())
    );
    // A claim nobody renews runs out (whole seconds of the database's clock).
    assert_eq!(
        m.claim_job("gc", "dead-node", Duration::from_secs(1))
            .await
            .expect("claim"),
        Ok(())
    );
    assert!(m
        .claim_job("gc", "node-c", long)
        .await
        .expect("claim")
        .is_err());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        m.claim_job("gc", "node-c", long).await.expect("claim"),
        Ok(())
    );
}

/// A completed upload is remembered (for a repeated closing PUT), its session gone.
pub async fn completed_uploads(m: &dyn MetaStore) {
    let session = UploadSession {
        id: "done-upload".into(),
        repository: repo("team/app"),
        algorithm: Algorithm::Sha256,
        created_at: super::now(),
    };
    m.create_upload(&session, SessionCaps::default())
        .await
        .expect("create")
        .expect("under caps");
    assert_eq!(
        m.completed_upload("done-upload").await.expect("completed"),
        None
    );
    m.complete_upload(&session, &d("done"), 4)
        .await
        .expect("complete");
    assert_eq!(m.get_upload("done-upload").await.expect("get"), None);
    assert_eq!(
        m.completed_upload("done-upload").await.expect("completed"),
        Some(super::CompletedUpload {
            repository: repo("team/app"),
            digest: d("done"),
            size: 4,
        })
    );
    // Completing again (a second node finishing the same session) is not an error.
    m.complete_upload(&session, &d("done"), 4)
        .await
        .expect("again");
    assert_eq!(m.completed_upload("other").await.expect("completed"), None);
}

/// The garbage collection record: runs (one per scheduled tick), their ends and logs,
/// newest first, and the API's schedule.
pub async fn gc_runs(m: &dyn MetaStore) {
    use super::{GcRunEnd, GcRunsKept, GcSchedule, Page};
    let keep = GcRunsKept {
        runs: 100,
        logs: 100,
    };
    assert_eq!(m.gc_runs(Page::all()).await.expect("runs"), (Vec::new(), 0));
    let first = m
        .gc_run_start("MANUAL", None, r#"{"dry_run":false}"#, "cli", keep)
        .await
        .expect("start")
        .expect("recorded");
    let tick = m
        .gc_run_start("SCHEDULE", Some(1_700_000_000), "{}", "node-a", keep)
        .await
        .expect("start")
        .expect("recorded");
    // Another node firing on the same tick records nothing.
    assert_eq!(
        m.gc_run_start("SCHEDULE", Some(1_700_000_000), "{}", "node-b", keep)
            .await
            .expect("start"),
        None
    );
    // Manual runs have no tick: any number of them.
    let third = m
        .gc_run_start("MANUAL", None, "{}", "api", keep)
        .await
        .expect("start")
        .expect("recorded");
    assert!(first < tick && tick < third);
    m.gc_run_alive(first).await.expect("alive");
    m.gc_run_end(
        first,
        &GcRunEnd {
            status: "Success".into(),
            deleted_blobs: 3,
            deleted_manifests: 1,
            freed_bytes: 5 << 30,
            error: None,
            log: "line one\nline two\n".into(),
        },
    )
    .await
    .expect("end");
    let run = m.gc_run(first).await.expect("run").expect("found");
    assert_eq!(
        (
            run.status.as_str(),
            run.deleted_blobs,
            run.deleted_manifests,
            run.freed_bytes
        ),
        ("Success", 3, 1, 5 << 30)
    );
    assert_eq!((run.kind.as_str(), run.owner.as_str()), ("MANUAL", "cli"));
    assert_eq!(run.parameters, r#"{"dry_run":false}"#);
    assert!(run.updated_at >= run.started_at);
    assert_eq!(
        m.gc_run_log(first).await.expect("log").as_deref(),
        Some("line one\nline two\n")
    );
    assert_eq!(m.gc_run_log(99).await.expect("log"), None);
    assert_eq!(m.gc_run(99).await.expect("run"), None);
    let ticked = m.gc_run(tick).await.expect("run").expect("found");
    assert_eq!(ticked.scheduled_for, Some(1_700_000_000));
    assert_eq!(ticked.status, "Running");
    let (page, total) = m
        .gc_runs(Page {
            offset: 0,
            limit: 2,
        })
        .await
        .expect("runs");
    assert_eq!(total, 3);
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![third, tick]
    );

    // A stop is recorded for a running run; an unknown run is not found.
    assert!(!m.gc_run_stop_requested(tick).await.expect("asked"));
    assert!(m.gc_run_stop(tick).await.expect("stop"));
    assert!(m.gc_run_stop_requested(tick).await.expect("asked"));
    assert!(!m.gc_run_stop(99).await.expect("stop"));
    // A finished run is not asked to stop.
    assert!(m.gc_run_stop(first).await.expect("stop"));
    assert!(!m.gc_run_stop_requested(first).await.expect("asked"));

    // History is bounded: the newest runs stay, with the newest logs.
    let small = GcRunsKept { runs: 4, logs: 2 };
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = m
            .gc_run_start("MANUAL", None, "{}", &format!("bulk {i}"), small)
            .await
            .expect("start")
            .expect("recorded");
        m.gc_run_end(
            id,
            &GcRunEnd {
                status: "Success".into(),
                log: format!("log {i}\n"),
                ..GcRunEnd::default()
            },
        )
        .await
        .expect("end");
        ids.push(id);
    }
    // The last start pruned before the last end wrote its log.
    let (kept, total) = m.gc_runs(Page::all()).await.expect("runs");
    assert_eq!(total, 4);
    assert_eq!(
        kept.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2], ids[1]]
    );
    assert_eq!(
        m.gc_run_log(ids[4]).await.expect("log").as_deref(),
        Some("log 4\n")
    );
    assert_eq!(
        m.gc_run_log(ids[3]).await.expect("log").as_deref(),
        Some("log 3\n")
    );
    assert_eq!(
        m.gc_run_log(ids[2]).await.expect("log").as_deref(),
        Some("")
    );
    assert_eq!(m.gc_run(first).await.expect("run"), None);

    assert_eq!(m.gc_schedule().await.expect("schedule"), None);
    for (kind, cron) in [("Daily", "0 0 0 * * *"), ("None", "")] {
        m.set_gc_schedule(&GcSchedule {
            kind: kind.into(),
            cron: cron.into(),
            parameters: r#"{"delete_untagged":true}"#.into(),
            updated_at: 0,
        })
        .await
        .expect("set");
        let s = m.gc_schedule().await.expect("schedule").expect("set");
        assert_eq!((s.kind.as_str(), s.cron.as_str()), (kind, cron));
        assert!(s.updated_at > 0);
    }
}

/// Immutable tag rules: stored per project with a cap, enabled ones found by project
/// name, gone with their project; and the guard on pushes: a guarded tag moves to
/// another digest only never, while the same digest may be pushed again.
pub async fn immutable_rules(m: &dyn MetaStore) {
    use super::NewRule;
    let p = m
        .create_project("frozen", false, None)
        .await
        .expect("create")
        .expect("free");
    let other = m
        .create_project("thawed", false, None)
        .await
        .expect("create")
        .expect("free");
    let rule = |n: i64, disabled: bool| NewRule {
        priority: n,
        disabled,
        selectors: format!(r#"{{"rule":{n}}}"#),
    };
    let a = m
        .add_immutable_rule(p.id, &rule(1, false), 2)
        .await
        .expect("add")
        .expect("under the cap");
    let b = m
        .add_immutable_rule(p.id, &rule(2, true), 2)
        .await
        .expect("add")
        .expect("under the cap");
    assert_eq!(
        m.add_immutable_rule(p.id, &rule(3, false), 2)
            .await
            .expect("add"),
        None,
        "at the cap"
    );
    let all = m.immutable_rules(p.id).await.expect("list");
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b]);
    assert!(all[1].disabled && !all[0].disabled);
    assert_eq!(all[0].selectors, r#"{"rule":1}"#);
    let active = m.active_immutable_rules("frozen").await.expect("active");
    assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a]);
    assert!(m
        .active_immutable_rules("thawed")
        .await
        .expect("none")
        .is_empty());
    assert!(m
        .active_immutable_rules("nowhere")
        .await
        .expect("none")
        .is_empty());
    // Another project's id does not reach the rule.
    assert!(!m
        .update_immutable_rule(other.id, b, &rule(5, false))
        .await
        .expect("update"));
    assert!(m
        .update_immutable_rule(p.id, b, &rule(5, false))
        .await
        .expect("update"));
    assert_eq!(
        m.active_immutable_rules("frozen")
            .await
            .expect("active")
            .len(),
        2
    );
    assert!(!m.delete_immutable_rule(other.id, a).await.expect("delete"));
    assert!(m.delete_immutable_rule(p.id, a).await.expect("delete"));
    assert!(!m.delete_immutable_rule(p.id, a).await.expect("gone"));

    // The guard: a guarded tag is created, and pushed again at the same digest, but
    // never moved; nothing of a refused push is written.
    let r = repo("frozen/app");
    let one = manifest("immutable one", None, None);
    let two = manifest("immutable two", None, None);
    m.put_manifest_guarded(&r, &one, &[tag("v1")], &[tag("v1")], &[])
        .await
        .expect("a new tag");
    m.put_manifest_guarded(&r, &one, &[tag("v1")], &[tag("v1")], &[])
        .await
        .expect("the same digest again");
    match m
        .put_manifest_guarded(&r, &two, &[tag("latest"), tag("v1")], &[tag("v1")], &[])
        .await
    {
        Err(super::MetaError::ImmutableTag(t)) => assert_eq!(t, tag("v1")),
        other => panic!("expected ImmutableTag, got {other:?}"),
    }
    let got = m
        .get_manifest(&r, &Reference::Tag(tag("v1")))
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(got.digest, one.digest);
    assert!(m
        .get_manifest(&r, &Reference::Tag(tag("latest")))
        .await
        .expect("get")
        .is_none());
    assert!(m
        .get_manifest(&r, &Reference::Digest(two.digest.clone()))
        .await
        .expect("get")
        .is_none());
    // Unguarded, the same tag moves.
    m.put_manifest(&r, &two, &[tag("v1")], &[])
        .await
        .expect("moved");
    // Deleting the project takes its rules with it.
    m.delete_manifest(&r, &one.digest, None, &[])
        .await
        .expect("delete");
    m.delete_manifest(&r, &two.digest, None, &[])
        .await
        .expect("delete");
    assert_eq!(
        m.delete_project(p.id).await.expect("delete project"),
        super::ProjectDeletion::Deleted
    );
    assert!(m.immutable_rules(p.id).await.expect("list").is_empty());
    m.delete_project(other.id).await.expect("delete project");
}

/// Storage quotas: usage counted when a quota is set, each blob charged once per project
/// however many of its repositories link it, a link past the limit refused with nothing
/// written (mounts included), and usage given back exactly by unlinks, repository
/// clearing and garbage collection.
pub async fn quotas(m: &dyn MetaStore) {
    let p = m
        .create_project("quota", false, None)
        .await
        .expect("create")
        .expect("free");
    let (a, b) = (repo("quota/a"), repo("quota/b"));
    let used = |q: Option<super::Quota>| q.expect("quota").used;
    m.link_blob(&a, &d("q1"), 10, &[]).await.expect("link");
    assert_eq!(m.quota(p.id).await.expect("quota"), None, "none until set");
    let q = m
        .set_quota(p.id, Some(25))
        .await
        .expect("set")
        .expect("project");
    assert_eq!(
        (q.hard, q.used, q.project.as_str()),
        (Some(25), 10, "quota")
    );
    // Once per project, whichever repositories link it.
    m.link_blob(&b, &d("q1"), 10, &[]).await.expect("link");
    m.link_blob(&a, &d("q1"), 10, &[]).await.expect("again");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 10);
    m.link_blob(&a, &d("q2"), 10, &[]).await.expect("link");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 20);
    // Past the limit: refused, nothing written.
    match m.link_blob(&a, &d("q3"), 6, &[]).await {
        Err(super::MetaError::QuotaExceeded {
            project,
            hard,
            used,
            size,
        }) => assert_eq!((project.as_str(), hard, used, size), ("quota", 25, 20, 6)),
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(m.known_blob(&d("q3")).await.expect("known"), None);
    assert_eq!(m.linked_blob(&a, &d("q3")).await.expect("linked"), None);
    // Up to the limit exactly is fine.
    m.link_blob(&a, &d("q3"), 5, &[])
        .await
        .expect("to the byte");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 25);
    // A mount of a blob new to the project is charged too; other projects are free.
    m.link_blob(&repo("elsewhere/x"), &d("q4"), 6, &[])
        .await
        .expect("no quota there");
    assert!(matches!(
        m.mount_blob(&a, &d("q4"), Some(&repo("elsewhere/x")), &[])
            .await,
        Err(super::MetaError::QuotaExceeded { .. })
    ));
    assert_eq!(m.linked_blob(&a, &d("q4")).await.expect("linked"), None);
    // Given back when the project's last link goes.
    assert!(m.unlink_blob(&b, &d("q1"), &[]).await.expect("unlink"));
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 25);
    assert!(m.unlink_blob(&a, &d("q1"), &[]).await.expect("unlink"));
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 15);
    m.mount_blob(&a, &d("q4"), Some(&repo("elsewhere/x")), &[])
        .await
        .expect("mount")
        .expect("mounted");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 21);
    // Clearing a repository counts the project again.
    m.link_blob(&b, &d("q2"), 10, &[]).await.expect("link");
    assert!(matches!(
        m.clear_repository(&a, None, &[]).await.expect("clear"),
        super::RepositoryClearing::Cleared(3)
    ));
    assert_eq!(
        used(m.quota(p.id).await.expect("quota")),
        10,
        "q2 is still in b"
    );
    // Garbage collection gives back what it forgets.
    let lease = std::time::Duration::from_secs(30);
    let future = super::now() + 3600;
    assert!(m
        .gc_forget_blob(&d("q2"), future, "gc-q", lease)
        .await
        .expect("forget"));
    m.release_job(&super::collecting_claim(&d("q2")), "gc-q")
        .await
        .expect("release");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 0);
    // A blob two of its repositories link is given back once.
    m.link_blob(&a, &d("q6"), 3, &[]).await.expect("link");
    m.link_blob(&b, &d("q6"), 3, &[]).await.expect("link");
    m.link_blob(&b, &d("q7"), 4, &[]).await.expect("link");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 7);
    assert!(m
        .gc_forget_blob(&d("q6"), future, "gc-q", lease)
        .await
        .expect("forget"));
    m.release_job(&super::collecting_claim(&d("q6")), "gc-q")
        .await
        .expect("release");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 4);
    assert!(m.unlink_blob(&b, &d("q7"), &[]).await.expect("unlink"));
    // No limit: still counted.
    let q = m
        .set_quota(p.id, None)
        .await
        .expect("set")
        .expect("project");
    assert_eq!((q.hard, q.used), (None, 0));
    m.link_blob(&a, &d("q5"), 1000, &[])
        .await
        .expect("no limit");
    assert_eq!(used(m.quota(p.id).await.expect("quota")), 1000);
    let (all, n) = m.quotas(super::Page::all()).await.expect("quotas");
    assert_eq!((all.len(), n), (1, 1));
    assert_eq!(all[0].project_id, p.id);
    assert_eq!(m.set_quota(-1, Some(1)).await.expect("set"), None);
    // Going with the project.
    assert!(m.unlink_blob(&a, &d("q5"), &[]).await.expect("unlink"));
    assert_eq!(
        m.delete_project(p.id).await.expect("delete"),
        super::ProjectDeletion::Deleted
    );
    assert_eq!(m.quota(p.id).await.expect("quota"), None);
}

/// Tag retention's records: one policy per project, runs with their ticks and bounded
/// history, tasks and logs, the manifests a run looks at, and pull times.
pub async fn retentions(m: &dyn MetaStore) {
    use super::{Page, PullTime, RetentionTask};
    let p = m
        .create_project("kept", false, None)
        .await
        .expect("create")
        .expect("free");
    let id = m
        .create_retention(p.id, r#"{"rules":[]}"#, "")
        .await
        .expect("create")
        .expect("first");
    assert_eq!(
        m.create_retention(p.id, "{}", "").await.expect("create"),
        None,
        "one per project"
    );
    let got = m.retention(id).await.expect("get").expect("found");
    assert_eq!(
        (got.project.as_str(), got.policy.as_str(), got.cron.as_str()),
        ("kept", r#"{"rules":[]}"#, "")
    );
    assert_eq!(
        m.project_retention(p.id)
            .await
            .expect("of project")
            .map(|r| r.id),
        Some(id)
    );
    assert!(m
        .scheduled_retentions()
        .await
        .expect("scheduled")
        .is_empty());
    assert!(m
        .update_retention(id, "{}", "0 0 3 * * *")
        .await
        .expect("update"));
    assert!(!m
        .update_retention(id + 100, "{}", "")
        .await
        .expect("update"));
    let scheduled = m.scheduled_retentions().await.expect("scheduled");
    assert_eq!(scheduled.len(), 1);
    assert_eq!(scheduled[0].cron, "0 0 3 * * *");

    // Runs: a tick is taken once; history bounded to the newest `keep`.
    let first = m
        .retention_run_start(id, "SCHEDULE", Some(100), false, "node a", 3)
        .await
        .expect("start")
        .expect("tick free");
    assert_eq!(
        m.retention_run_start(id, "SCHEDULE", Some(100), false, "node b", 3)
            .await
            .expect("start"),
        None,
        "another node took the tick"
    );
    assert!(!m.retention_run_alive(first).await.expect("alive"));
    assert!(m.retention_run_stop(id, first).await.expect("stop"));
    assert!(!m
        .retention_run_stop(id + 100, first)
        .await
        .expect("other policy"));
    assert!(
        m.retention_run_alive(first).await.expect("alive"),
        "asked to stop"
    );
    m.retention_run_end(first, "Stopped").await.expect("end");
    let run = m
        .retention_run(id, first)
        .await
        .expect("run")
        .expect("found");
    assert_eq!(
        (run.status.as_str(), run.kind.as_str(), run.dry_run),
        ("Stopped", "SCHEDULE", false)
    );
    assert!(run.ended_at.is_some());
    let task = RetentionTask {
        repository: "kept/app".into(),
        status: "Succeed".into(),
        total: 5,
        retained: 2,
        started_at: 1,
        ended_at: 2,
        log: "deleted x\n".into(),
        ..RetentionTask::default()
    };
    let t = m.retention_task_add(first, &task).await.expect("task");
    let (tasks, n) = m.retention_tasks(first, Page::all()).await.expect("tasks");
    assert_eq!(
        (n, tasks[0].total, tasks[0].retained, tasks[0].log.as_str()),
        (1, 5, 2, "")
    );
    let full = m
        .retention_task(first, t)
        .await
        .expect("task")
        .expect("found");
    assert_eq!(full.log, "deleted x\n");
    let outcomes = m.retention_outcomes().await.expect("outcomes");
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        (
            outcomes[0].project.as_str(),
            outcomes[0].status.as_str(),
            outcomes[0].deleted
        ),
        ("kept", "Stopped", 3)
    );
    assert_eq!(m.retention_task(first + 1, t).await.expect("task"), None);
    let mut ids = vec![first];
    for _ in 0..3 {
        ids.push(
            m.retention_run_start(id, "MANUAL", None, true, "api", 3)
                .await
                .expect("start")
                .expect("manual runs never collide"),
        );
    }
    let (runs, total) = m.retention_runs(id, Page::all()).await.expect("runs");
    assert_eq!(total, 3, "the oldest went");
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids[1..].iter().rev().copied().collect::<Vec<_>>()
    );
    assert_eq!(
        m.retention_task(first, t).await.expect("task"),
        None,
        "with its tasks"
    );

    // What a run looks at: push times (a tag's counts), pull times, tags, children.
    let r = repo("kept/app");
    m.link_blob(&r, &d("layer"), 5, &[]).await.expect("link");
    let child = manifest("ret-child", None, None);
    m.put_manifest(&r, &child, &[], &[]).await.expect("child");
    let mut index = manifest("ret-index", None, None);
    index.references = vec![(d("ret-child"), true)];
    m.put_manifest(&r, &index, &[tag("v1"), tag("a")], &[])
        .await
        .expect("index");
    let sig = manifest("ret-sig", Some(d("ret-index")), None);
    m.put_manifest(&r, &sig, &[], &[]).await.expect("referrer");
    let seen = m.retention_manifests(&r).await.expect("manifests");
    assert_eq!(seen.len(), 3);
    let by = |c: &str| {
        seen.iter()
            .find(|x| x.digest == d(c))
            .expect("listed")
            .clone()
    };
    assert_eq!(
        by("ret-index").tags,
        vec!["a".to_string(), "v1".to_string()]
    );
    assert_eq!(by("ret-index").children, vec![d("ret-child")]);
    assert_eq!(by("ret-sig").subject, Some(d("ret-index")));
    assert!(by("ret-child").tags.is_empty() && by("ret-child").pulled_at.is_none());
    // Pull times move forward only; unknown manifests are skipped.
    let pull = |digest: &str, at: i64| PullTime {
        repository: "kept/app".into(),
        digest: d(digest).to_string(),
        at,
    };
    m.record_pulls(&[
        pull("ret-index", 500),
        pull("nothing", 9),
        pull("ret-child", 7),
    ])
    .await
    .expect("record");
    m.record_pulls(&[pull("ret-index", 400)])
        .await
        .expect("record");
    let seen = m.retention_manifests(&r).await.expect("manifests");
    let at = |c: &str| {
        seen.iter()
            .find(|x| x.digest == d(c))
            .and_then(|x| x.pulled_at)
    };
    assert_eq!(
        (at("ret-index"), at("ret-child"), at("ret-sig")),
        (Some(500), Some(7), None)
    );
    m.record_pulls(&[]).await.expect("nothing to record");

    // Retention's delete keeps what an index lists, and what was re-tagged.
    assert_eq!(
        m.delete_unreferenced_manifest(&r, &d("ret-child"), &[], &[])
            .await
            .expect("delete"),
        super::ManifestDeletion::Referenced
    );
    assert_eq!(
        m.delete_unreferenced_manifest(&r, &d("ret-index"), &[tag("v1")], &[])
            .await
            .expect("delete"),
        super::ManifestDeletion::TagsChanged(vec![tag("a"), tag("v1")])
    );
    assert_eq!(m.retention_manifests(&r).await.expect("manifests").len(), 3);
    assert_eq!(
        m.delete_unreferenced_manifest(&r, &d("ret-index"), &[tag("v1"), tag("a")], &[])
            .await
            .expect("delete"),
        super::ManifestDeletion::Deleted
    );
    assert_eq!(
        m.delete_unreferenced_manifest(&r, &d("ret-child"), &[], &[])
            .await
            .expect("delete"),
        super::ManifestDeletion::Deleted,
        "no longer listed"
    );

    // The policy goes with its history.
    assert!(m.delete_retention(id).await.expect("delete"));
    assert_eq!(m.retention(id).await.expect("get"), None);
    assert_eq!(m.retention_run(id, ids[3]).await.expect("run"), None);
    assert!(!m.delete_retention(id).await.expect("again"));
}

/// Upstream registries: unique names, settings replaced without touching the health
/// check's verdict, projects bound to them as proxy caches, and a registry in use kept.
pub async fn registries(m: &dyn MetaStore) {
    use super::{Conflict, NewRegistry, ProjectDeletion, RegistryDeletion};
    let hub = NewRegistry {
        name: "hub".into(),
        kind: "docker-hub".into(),
        url: "https://registry-1.docker.io".into(),
        description: "Docker Hub".into(),
        access_key: Some("puller".into()),
        access_secret: Some("s3cret".into()),
        insecure: false,
        ca_certificate: None,
    };
    let private = NewRegistry {
        name: "private".into(),
        kind: "docker-registry".into(),
        url: "https://registry.internal:5000".into(),
        description: String::new(),
        access_key: None,
        access_secret: None,
        insecure: true,
        ca_certificate: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ),
    };
    assert!(m.registries().await.expect("list").is_empty());
    let a = m.add_registry(&hub).await.expect("add").expect("free");
    let b = m.add_registry(&private).await.expect("add").expect("free");
    assert_ne!(a, b);
    let taken = NewRegistry {
        url: "https://elsewhere.example".into(),
        ..hub.clone()
    };
    assert_eq!(m.add_registry(&taken).await.expect("add"), Err(Conflict));

    let all = m.registries().await.expect("list");
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![a, b]);
    assert_eq!((&all[0].registry, &all[1].registry), (&hub, &private));
    for r in &all {
        assert_eq!((r.status.as_str(), r.checked_at), ("unknown", None));
        assert!(r.created_at > 0);
        assert_eq!(r.created_at, r.updated_at);
    }
    assert_eq!(m.registry(b).await.expect("get").as_ref(), Some(&all[1]));
    assert_eq!(m.registry(a.max(b) + 100).await.expect("get"), None);

    // A health check's verdict, kept when the settings change.
    m.set_registry_status(a, "healthy", 1_700_000_000)
        .await
        .expect("status");
    m.set_registry_status(b, "unhealthy", 1_700_000_001)
        .await
        .expect("status");
    let changed = NewRegistry {
        url: "https://mirror.gcr.io".into(),
        description: "through a mirror".into(),
        access_key: None,
        access_secret: None,
        insecure: true,
        ..hub.clone()
    };
    assert_eq!(
        m.update_registry(a, &changed).await.expect("update"),
        Ok(true)
    );
    let got = m.registry(a).await.expect("get").expect("found");
    assert_eq!(got.registry, changed);
    assert_eq!(
        (got.status.as_str(), got.checked_at),
        ("healthy", Some(1_700_000_000))
    );
    assert_eq!(got.created_at, all[0].created_at);
    assert!(got.updated_at >= got.created_at);
    let b_now = m.registry(b).await.expect("get").expect("found");
    assert_eq!(
        (b_now.status.as_str(), b_now.checked_at),
        ("unhealthy", Some(1_700_000_001))
    );
    // Renamed to another registry's name: refused, nothing changed.
    let clash = NewRegistry {
        name: "private".into(),
        ..changed.clone()
    };
    assert_eq!(
        m.update_registry(a, &clash).await.expect("update"),
        Err(Conflict)
    );
    assert_eq!(
        m.registry(a).await.expect("get").expect("found").registry,
        changed
    );
    assert_eq!(
        m.update_registry(a.max(b) + 100, &changed)
            .await
            .expect("update"),
        Ok(false)
    );
    // A free new name is taken.
    let renamed = NewRegistry {
        name: "docker-hub".into(),
        ..changed.clone()
    };
    assert_eq!(
        m.update_registry(a, &renamed).await.expect("update"),
        Ok(true)
    );
    assert_eq!(
        m.registry(a)
            .await
            .expect("get")
            .expect("found")
            .registry
            .name,
        "docker-hub"
    );

    // Proxy-cache projects.
    let project = |name: &'static str| async move {
        m.create_project(name, true, None)
            .await
            .expect("create")
            .expect("free")
    };
    let hub_cache = project("hub-cache").await;
    let gcr_cache = project("gcr-cache").await;
    let plain = project("plain-project").await;
    let unknown = hub_cache.id.max(gcr_cache.id).max(plain.id) + 100;
    assert_eq!(m.project_registry_id(hub_cache.id).await.expect("id"), None);
    assert!(m.set_project_registry(hub_cache.id, a).await.expect("bind"));
    assert!(m.set_project_registry(gcr_cache.id, a).await.expect("bind"));
    assert!(!m
        .set_project_registry(plain.id, a.max(b) + 100)
        .await
        .expect("bind to no registry"));
    assert!(!m
        .set_project_registry(unknown, a)
        .await
        .expect("bind no project"));
    assert_eq!(
        m.project_registry_id(hub_cache.id).await.expect("id"),
        Some(a)
    );
    assert_eq!(m.project_registry_id(plain.id).await.expect("id"), None);
    assert_eq!(m.project_registry_id(unknown).await.expect("id"), None);

    let upstream = m.registry(a).await.expect("get").expect("found");
    let proxies = m.proxy_projects().await.expect("proxies");
    assert_eq!(
        proxies
            .iter()
            .map(|p| (p.project_id, p.project.as_str()))
            .collect::<Vec<_>>(),
        vec![(gcr_cache.id, "gcr-cache"), (hub_cache.id, "hub-cache")]
    );
    assert!(proxies.iter().all(|p| p.registry == upstream));
    let one = m
        .proxy_project("hub-cache")
        .await
        .expect("proxy")
        .expect("a proxy cache");
    assert_eq!((one.project_id, &one.registry), (hub_cache.id, &upstream));
    assert_eq!(m.proxy_project("plain-project").await.expect("proxy"), None);
    assert_eq!(
        m.proxy_project("no-such-project").await.expect("proxy"),
        None
    );

    // A registry in use stays; an unused one goes.
    assert_eq!(
        m.delete_registry(a).await.expect("delete"),
        RegistryDeletion::InUse(vec!["gcr-cache".into(), "hub-cache".into()])
    );
    assert!(m.registry(a).await.expect("get").is_some());
    assert_eq!(
        m.delete_registry(b).await.expect("delete"),
        RegistryDeletion::Deleted
    );
    assert_eq!(m.registry(b).await.expect("get"), None);
    assert_eq!(
        m.delete_registry(b).await.expect("delete"),
        RegistryDeletion::NotFound
    );
    for p in [&hub_cache, &gcr_cache, &plain] {
        assert_eq!(
            m.delete_project(p.id).await.expect("delete project"),
            ProjectDeletion::Deleted
        );
    }
    assert!(m.proxy_projects().await.expect("proxies").is_empty());
    assert_eq!(
        m.delete_registry(a).await.expect("delete"),
        RegistryDeletion::Deleted
    );
    assert!(m.registries().await.expect("list").is_empty());
}
