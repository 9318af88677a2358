//! The catalog part of the metadata contract ([`super::Catalog`]: repository summaries,
//! artifacts with tags, sizes and children, project usage) and the life of a repository
//! (an emptied one leaves the catalog; clearing one; tags removed only from their
//! manifest), run by [`super::testsuite::run`] on every backend. It uses its own names
//! (`shelf/...`, `use/...`, `gone/...`), so it holds on a store that already has the
//! rest of the suite's repositories.

use super::{
    ArtifactFilter, ArtifactInfo, ManifestDeletion, MetaStore, NewEvent, NewManifest, Page,
    RepositoryClearing,
};
use oci::{Algorithm, Digest, RepoName, Tag};

fn repo(s: &str) -> RepoName {
    s.parse().expect("repo name")
}

fn tag(s: &str) -> Tag {
    s.parse().expect("tag")
}

fn d(s: &str) -> Digest {
    Digest::of(Algorithm::Sha256, s.as_bytes())
}

fn page(offset: u64, limit: u32) -> Page {
    Page { offset, limit }
}

/// A manifest named `content` (its bytes) referencing `references`.
fn manifest(content: &str, references: Vec<(Digest, bool)>) -> NewManifest {
    NewManifest {
        digest: d(content),
        media_type: oci::media::OCI_MANIFEST.to_string(),
        content: content.as_bytes().to_vec(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references,
        required_blobs: Vec::new(),
        required_manifests: Vec::new(),
    }
}

fn digests(list: &[ArtifactInfo]) -> Vec<Digest> {
    list.iter().map(|a| a.digest.clone()).collect()
}

fn sorted(mut v: Vec<Digest>) -> Vec<Digest> {
    v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    v
}

pub async fn run(m: &dyn MetaStore) {
    summaries(m).await;
    artifacts(m).await;
    usage(m).await;
    emptied_repositories(m).await;
    clearing(m).await;
    tags_at(m).await;
}

async fn summaries(m: &dyn MetaStore) {
    for name in [
        "shelf/c",
        "shelf/a",
        "shelf/bb",
        "shelf/b/c",
        "shelfx/z",
        "shelf-y/q",
    ] {
        m.link_blob(&repo(name), &d("shelf blob"), 4, &[])
            .await
            .expect("link");
    }
    let a = repo("shelf/a");
    m.put_manifest(&a, &manifest("shelf one", vec![]), &[tag("t")], &[])
        .await
        .expect("put");
    m.put_manifest(&a, &manifest("shelf two", vec![]), &[], &[])
        .await
        .expect("put");

    let names = |list: &[super::RepositorySummary]| -> Vec<String> {
        list.iter().map(|s| s.name.clone()).collect()
    };
    // A project is a whole first component, listed by name.
    let (all, n) = m
        .repository_summaries("shelf", None, Page::all())
        .await
        .expect("summaries");
    assert_eq!(names(&all), ["shelf/a", "shelf/b/c", "shelf/bb", "shelf/c"]);
    assert_eq!(n, 4);
    // Pages keep the total.
    let (p, n) = m
        .repository_summaries("shelf", None, page(1, 2))
        .await
        .expect("page");
    assert_eq!(
        (names(&p), n),
        (vec!["shelf/b/c".into(), "shelf/bb".into()], 4)
    );
    let (p, n) = m
        .repository_summaries("shelf", None, page(10, 2))
        .await
        .expect("past the end");
    assert_eq!((p.len(), n), (0, 4));
    // Names containing a text, counted the same way.
    let (p, n) = m
        .repository_summaries("shelf", Some("b"), Page::all())
        .await
        .expect("filtered");
    assert_eq!(
        (names(&p), n),
        (vec!["shelf/b/c".into(), "shelf/bb".into()], 2)
    );
    let (p, n) = m
        .repository_summaries("shelf", Some("b"), page(1, 5))
        .await
        .expect("filtered page");
    assert_eq!((names(&p), n), (vec!["shelf/bb".into()], 2));
    for project in ["nope", "shelf/b", "shel"] {
        let (p, n) = m
            .repository_summaries(project, None, Page::all())
            .await
            .expect("none");
        assert_eq!((p.len(), n), (0, 0), "{project}");
    }

    // Counts and times.
    let by = |name: &str| all.iter().find(|s| s.name == name).expect("listed").clone();
    let shelf_a = by("shelf/a");
    assert_eq!(shelf_a.artifact_count, 2);
    assert!(shelf_a.updated_at >= shelf_a.created_at);
    let blobs_only = by("shelf/c");
    assert_eq!(blobs_only.artifact_count, 0);
    assert_eq!(blobs_only.updated_at, blobs_only.created_at);
    assert_ne!(shelf_a.id, blobs_only.id);
    assert_eq!(
        m.repository_summary(&a).await.expect("summary"),
        Some(shelf_a)
    );
    assert_eq!(
        m.repository_summary(&repo("shelf/none"))
            .await
            .expect("summary"),
        None
    );
}

async fn artifacts(m: &dyn MetaStore) {
    let r = repo("shelf/art");
    let (cfg, l1, l2) = (d("art config"), d("art layer 1"), d("art layer 2"));
    m.link_blob(&r, &cfg, 3, &[]).await.expect("link");
    m.link_blob(&r, &l1, 10, &[]).await.expect("link");
    m.link_blob(&r, &l2, 20, &[]).await.expect("link");
    let img1 = manifest(
        "art image one",
        vec![(cfg.clone(), false), (l1.clone(), false)],
    );
    let img2 = manifest(
        "art image two",
        vec![(cfg.clone(), false), (l2.clone(), false)],
    );
    let img3 = manifest("art image three", vec![(cfg.clone(), false)]);
    m.put_manifest(&r, &img1, &[tag("v1"), tag("stable")], &[])
        .await
        .expect("img1");
    m.put_manifest(&r, &img2, &[tag("v2-rc")], &[])
        .await
        .expect("img2");
    m.put_manifest(&r, &img3, &[], &[]).await.expect("img3");
    // The index lists its children against digest order (so their order is what is
    // stored, not what sorts), and a blob entry (as BuildKit's cache indexes do).
    let kids: Vec<Digest> = sorted(vec![
        img1.digest.clone(),
        img2.digest.clone(),
        img3.digest.clone(),
    ])
    .into_iter()
    .rev()
    .collect();
    let mut refs: Vec<(Digest, bool)> = kids.iter().map(|k| (k.clone(), true)).collect();
    refs.insert(1, (l2.clone(), false));
    let mut index = manifest("art index", refs);
    index.media_type = oci::media::OCI_INDEX.to_string();
    m.put_manifest(&r, &index, &[tag("latest")], &[])
        .await
        .expect("index");
    let mut sig = manifest("art signature", vec![(cfg.clone(), false)]);
    sig.subject = Some(img1.digest.clone());
    sig.artifact_type = Some("application/x.sig".into());
    sig.annotations = Some(r#"{"k":"v"}"#.into());
    m.put_manifest(&r, &sig, &[], &[]).await.expect("sig");

    let none = ArtifactFilter::default();
    let (all, n) = m
        .artifacts(&r, &none, Page::all())
        .await
        .expect("artifacts");
    assert_eq!(n, 5);
    assert_eq!(
        sorted(digests(&all)),
        sorted(vec![
            img1.digest.clone(),
            img2.digest.clone(),
            img3.digest.clone(),
            index.digest.clone(),
            sig.digest.clone()
        ])
    );
    // Newest first, then by digest.
    assert!(all.windows(2).all(|w| w[0].created_at > w[1].created_at
        || (w[0].created_at == w[1].created_at && w[0].digest.as_str() < w[1].digest.as_str())));
    let get = |x: &Digest| all.iter().find(|a| a.digest == *x).expect("listed").clone();

    // Images: their own size and their blobs'; tags by name.
    let one = get(&img1.digest);
    assert_eq!(one.size, img1.content.len() as u64 + 3 + 10);
    assert_eq!(
        one.tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["stable", "v1"]
    );
    assert!(one.tags.iter().all(|t| t.updated_at > 0));
    assert!(one.children.is_empty());
    assert_eq!(one.media_type, oci::media::OCI_MANIFEST);
    assert_eq!(get(&img3.digest).size, img3.content.len() as u64 + 3);
    assert!(get(&img3.digest).tags.is_empty());
    // An index: its own size, its children's manifests' sizes (and the blob it lists),
    // its children in order.
    let ix = get(&index.digest);
    assert_eq!(
        ix.size,
        (index.content.len() + img1.content.len() + img2.content.len() + img3.content.len()) as u64
            + 20
    );
    assert_eq!(ix.children, kids);
    assert_eq!(ix.media_type, oci::media::OCI_INDEX);
    // A referrer: subject, artifact type, annotations.
    let s = get(&sig.digest);
    assert_eq!(s.subject.as_ref(), Some(&img1.digest));
    assert_eq!(s.artifact_type.as_deref(), Some("application/x.sig"));
    assert_eq!(s.annotations.as_deref(), Some(r#"{"k":"v"}"#));
    assert_eq!(s.size, sig.content.len() as u64 + 3);
    assert_eq!(one.subject, None);
    assert_eq!(m.artifact(&r, &sig.digest).await.expect("one"), Some(s));
    assert_eq!(m.artifact(&r, &index.digest).await.expect("one"), Some(ix));

    // Pages keep the order and the total.
    let mut walked = Vec::new();
    for offset in (0..6).step_by(2) {
        let (p, n) = m.artifacts(&r, &none, page(offset, 2)).await.expect("page");
        assert_eq!(n, 5);
        assert!(p.len() <= 2);
        walked.extend(p);
    }
    assert_eq!(walked, all);

    // Filters.
    let r = &r;
    let filtered = |tagged: Option<bool>, contains: Option<&str>| {
        let f = ArtifactFilter {
            tagged,
            tag_contains: contains.map(str::to_string),
        };
        async move {
            let (list, n) = m.artifacts(r, &f, Page::all()).await.expect("filtered");
            assert_eq!(n, list.len() as u64);
            sorted(digests(&list))
        }
    };
    assert_eq!(
        filtered(Some(true), None).await,
        sorted(vec![
            img1.digest.clone(),
            img2.digest.clone(),
            index.digest.clone()
        ])
    );
    assert_eq!(
        filtered(Some(false), None).await,
        sorted(vec![img3.digest.clone(), sig.digest.clone()])
    );
    assert_eq!(
        filtered(None, Some("v")).await,
        sorted(vec![img1.digest.clone(), img2.digest.clone()])
    );
    assert_eq!(
        filtered(Some(true), Some("rc")).await,
        vec![img2.digest.clone()]
    );
    assert!(filtered(None, Some("zzz")).await.is_empty());
    assert!(filtered(Some(false), Some("v")).await.is_empty());
    // A filtered page keeps the filtered total, and lists every tag of its artifacts.
    let f = ArtifactFilter {
        tagged: None,
        tag_contains: Some("v1".into()),
    };
    let (p, n) = m.artifacts(r, &f, page(0, 1)).await.expect("page");
    assert_eq!((n, digests(&p)), (1, vec![img1.digest.clone()]));
    assert_eq!(p[0].tags.len(), 2);
    let (p, n) = m
        .artifacts(
            r,
            &ArtifactFilter {
                tagged: Some(true),
                tag_contains: None,
            },
            page(1, 1),
        )
        .await
        .expect("page");
    assert_eq!((n, p.len()), (3, 1));

    // Unknown things.
    assert_eq!(m.artifact(r, &d("nothing")).await.expect("none"), None);
    assert_eq!(
        m.artifact(&repo("shelf/none"), &img1.digest)
            .await
            .expect("none"),
        None
    );
    assert_eq!(
        m.artifact(&repo("shelf/a"), &img1.digest)
            .await
            .expect("another repository's"),
        None
    );
    let (p, n) = m
        .artifacts(&repo("shelf/none"), &none, Page::all())
        .await
        .expect("none");
    assert_eq!((p.len(), n), (0, 0));
}

async fn usage(m: &dyn MetaStore) {
    // `shared` is linked into two repositories of `use` (counted once there) and into
    // `use2`; `use/c/d` is deeper but still in `use`; `use` alone is in no project.
    let links: [(&str, &str, u64); 7] = [
        ("use/a", "use big", 100),
        ("use/a", "use shared", 50),
        ("use/b", "use shared", 50),
        ("use/b", "use small", 7),
        ("use/c/d", "use big", 100),
        ("use2/x", "use shared", 50),
        ("use", "use huge", 1000),
    ];
    for (r, blob, size) in links {
        m.link_blob(&repo(r), &d(blob), size, &[])
            .await
            .expect("link");
    }
    let asked: Vec<String> = ["use2", "use", "none", "use/a", "use"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        m.project_usage(Some(&asked)).await.expect("usage"),
        vec![
            ("use2".to_string(), 1, 50),
            ("use".to_string(), 3, 157),
            ("none".to_string(), 0, 0),
            ("use/a".to_string(), 0, 0),
            ("use".to_string(), 3, 157),
        ]
    );
    assert!(m.project_usage(Some(&[])).await.expect("usage").is_empty());
    let every = m.project_usage(None).await.expect("usage");
    assert!(
        every.windows(2).all(|w| w[0].0 < w[1].0),
        "by name, once each"
    );
    let of = |p: &str| every.iter().find(|u| u.0 == p).cloned();
    assert_eq!(of("use"), Some(("use".to_string(), 3, 157)));
    assert_eq!(of("use2"), Some(("use2".to_string(), 1, 50)));
    assert_eq!(of("none"), None);
    assert!(every.iter().all(|u| !u.0.is_empty() && !u.0.contains('/')));
    // The whole-store grouping agrees with asking for each project.
    let names: Vec<String> = every.iter().map(|u| u.0.clone()).collect();
    assert_eq!(m.project_usage(Some(&names)).await.expect("usage"), every);
}

/// A repository exists while it holds a manifest or a blob link: each write that takes
/// the last one away takes the repository too, and it leaves the catalog.
async fn emptied_repositories(m: &dyn MetaStore) {
    let listed = |name: &'static str| async move {
        let within = vec!["gone".to_string()];
        m.list_repositories(None, 100, Some(&within))
            .await
            .expect("list")
            .contains(&name.to_string())
    };
    // The last link unlinked.
    let a = repo("gone/a");
    m.link_blob(&a, &d("gone 1"), 1, &[]).await.expect("link");
    m.link_blob(&a, &d("gone 2"), 1, &[]).await.expect("link");
    assert!(m.unlink_blob(&a, &d("gone 1"), &[]).await.expect("unlink"));
    assert!(listed("gone/a").await, "a link is left");
    assert!(m.unlink_blob(&a, &d("gone 2"), &[]).await.expect("unlink"));
    assert!(!m.repository_exists(&a).await.expect("exists"));
    assert!(!listed("gone/a").await);
    assert_eq!(m.list_tags(&a, None, 10).await.expect("tags"), None);

    // The last manifest deleted (its tags with it), after the links.
    let b = repo("gone/b");
    m.link_blob(&b, &d("gone 1"), 1, &[]).await.expect("link");
    let man = manifest("gone manifest", vec![(d("gone 1"), false)]);
    m.put_manifest(&b, &man, &[tag("t")], &[])
        .await
        .expect("put");
    assert!(m.unlink_blob(&b, &d("gone 1"), &[]).await.expect("unlink"));
    assert!(listed("gone/b").await, "a manifest is left");
    assert_eq!(
        m.delete_manifest(&b, &man.digest, Some(&[tag("t")]), &[])
            .await
            .expect("delete"),
        ManifestDeletion::Deleted
    );
    assert!(!listed("gone/b").await);
    // Pushed again, it is back.
    m.put_manifest(&b, &man, &[], &[]).await.expect("put");
    assert!(listed("gone/b").await);

    // Garbage collection: an untagged manifest deleted, a blob forgotten.
    assert!(m
        .gc_delete_untagged(&b, &man.digest)
        .await
        .expect("gc delete"));
    assert!(!listed("gone/b").await);
    let c = repo("gone/c");
    let keep = repo("gone/keep");
    m.link_blob(&c, &d("gone forgotten"), 1, &[])
        .await
        .expect("link");
    m.link_blob(&keep, &d("gone forgotten"), 1, &[])
        .await
        .expect("link");
    m.link_blob(&keep, &d("gone kept"), 1, &[])
        .await
        .expect("link");
    assert!(m
        .gc_forget_blob(
            &d("gone forgotten"),
            super::now() + 3600,
            "gc",
            std::time::Duration::from_secs(30)
        )
        .await
        .expect("forget"));
    assert!(!listed("gone/c").await);
    assert!(listed("gone/keep").await, "another link is left");
    // A refused unlink, or a delete of nothing, changes nothing.
    assert!(!m.unlink_blob(&keep, &d("nope"), &[]).await.expect("unlink"));
    assert!(listed("gone/keep").await);
}

/// Clearing a repository: refused while it holds manifests, and while its links are not
/// the ones the caller named (the events name those); the events with the write.
async fn clearing(m: &dyn MetaStore) {
    let ev = |what: &str| {
        vec![NewEvent {
            endpoint: "clear-events".into(),
            payload: what.to_string(),
        }]
    };
    let r = repo("gone/clear");
    let (x, y) = (d("clear x"), d("clear y"));
    m.link_blob(&r, &y, 1, &[]).await.expect("link");
    m.link_blob(&r, &x, 1, &[]).await.expect("link");
    assert_eq!(
        m.linked_digests(&r).await.expect("links"),
        sorted(vec![x.clone(), y.clone()])
    );
    assert!(m
        .linked_digests(&repo("gone/none"))
        .await
        .expect("links")
        .is_empty());
    let man = manifest("clear manifest", vec![(x.clone(), false)]);
    m.put_manifest(&r, &man, &[], &[]).await.expect("put");
    let both = [x.clone(), y.clone()];
    assert_eq!(
        m.clear_repository(&r, Some(&both), &ev("refused"))
            .await
            .expect("clear"),
        RepositoryClearing::HasManifests
    );
    assert_eq!(
        m.delete_manifest(&r, &man.digest, None, &[])
            .await
            .expect("delete"),
        ManifestDeletion::Deleted
    );
    assert_eq!(
        m.clear_repository(&r, Some(std::slice::from_ref(&x)), &ev("stale"))
            .await
            .expect("clear"),
        RepositoryClearing::LinksChanged(sorted(vec![x.clone(), y.clone()]))
    );
    assert_eq!(m.pending("clear-events").await.expect("pending"), 0);
    assert!(m.repository_exists(&r).await.expect("exists"));
    assert_eq!(
        m.clear_repository(&r, Some(&[y.clone(), x.clone(), y.clone()]), &ev("cleared"))
            .await
            .expect("clear"),
        RepositoryClearing::Cleared(2)
    );
    assert!(!m.repository_exists(&r).await.expect("exists"));
    assert_eq!(m.linked_blob(&r, &x).await.expect("linked"), None);
    assert_eq!(
        m.known_blob(&x).await.expect("known"),
        None,
        "only link gone"
    );
    assert_eq!(m.pending("clear-events").await.expect("pending"), 1);
    let e = m
        .claim("clear-events", "me", 30)
        .await
        .expect("claim")
        .expect("event");
    assert_eq!(e.payload, "cleared");
    m.complete(e.seq, "me").await.expect("complete");
    // Unknown: nothing to clear. Without `links`, whatever is linked goes.
    assert_eq!(
        m.clear_repository(&r, Some(&[]), &[]).await.expect("clear"),
        RepositoryClearing::Cleared(0)
    );
    m.link_blob(&r, &x, 1, &[]).await.expect("link");
    assert_eq!(
        m.clear_repository(&r, None, &[]).await.expect("clear"),
        RepositoryClearing::Cleared(1)
    );
    assert!(!m.repository_exists(&r).await.expect("exists"));
}

/// A tag removed only from the manifest it points at.
async fn tags_at(m: &dyn MetaStore) {
    let r = repo("gone/tags");
    let one = manifest("tags one", vec![]);
    let two = manifest("tags two", vec![]);
    m.put_manifest(&r, &one, &[tag("t")], &[])
        .await
        .expect("put");
    m.put_manifest(&r, &two, &[], &[]).await.expect("put");
    let ev = vec![NewEvent {
        endpoint: "tag-events".into(),
        payload: "untag".into(),
    }];
    assert!(!m
        .delete_tag_at(&r, &tag("t"), &two.digest, &ev)
        .await
        .expect("elsewhere"));
    assert!(!m
        .delete_tag_at(&r, &tag("absent"), &one.digest, &ev)
        .await
        .expect("absent"));
    assert!(!m
        .delete_tag_at(&repo("gone/none"), &tag("t"), &one.digest, &ev)
        .await
        .expect("unknown repository"));
    assert_eq!(m.pending("tag-events").await.expect("pending"), 0);
    assert_eq!(
        m.tags_of(&r, &one.digest).await.expect("tags"),
        vec![tag("t")]
    );
    assert!(m
        .delete_tag_at(&r, &tag("t"), &one.digest, &ev)
        .await
        .expect("untag"));
    assert!(m.tags_of(&r, &one.digest).await.expect("tags").is_empty());
    assert_eq!(m.pending("tag-events").await.expect("pending"), 1);
    let e = m
        .claim("tag-events", "me", 30)
        .await
        .expect("claim")
        .expect("event");
    m.complete(e.seq, "me").await.expect("complete");
    // The manifest stays: a tag never held the repository alone.
    assert!(m.repository_exists(&r).await.expect("exists"));
}
