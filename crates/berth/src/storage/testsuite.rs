//! The contract every [`BlobStore`] backend must meet, run by each backend's tests.

use super::{BlobStore, ByteRange, ByteStream, StorageError, UploadProgress};
use bytes::Bytes;
use futures_util::StreamExt;
use oci::{Algorithm, Digest};
use std::io;

fn stream_of(parts: Vec<&'static [u8]>) -> ByteStream {
    Box::pin(futures_util::stream::iter(
        parts.into_iter().map(|p| Ok(Bytes::from_static(p))),
    ))
}

async fn collect(s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = s;
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("read chunk"));
    }
    out
}

fn fresh() -> UploadProgress {
    UploadProgress {
        size: 0,
        hasher: Algorithm::Sha256.hasher(),
    }
}

pub async fn run(store: &dyn BlobStore) {
    let data: &[u8] = b"hello, berth";
    let digest = Digest::of(Algorithm::Sha256, data);

    // Nothing is there to begin with.
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
    assert!(matches!(
        store.get((&digest).into(), None).await.err(),
        Some(StorageError::BlobNotFound)
    ));
    assert!(matches!(
        store.upload_size("nope").await,
        Err(StorageError::UploadNotFound)
    ));

    // Upload in two appends, hashing as we go.
    store.create_upload("u1").await.expect("create");
    let p = store
        .append_upload("u1", fresh(), stream_of(vec![b"hello", b", "]), u64::MAX)
        .await
        .expect("append 1");
    assert_eq!(p.size, 7);
    // An append at the wrong offset is refused and changes nothing.
    let stale = fresh();
    assert!(matches!(
        store
            .append_upload("u1", stale, stream_of(vec![b"x"]), u64::MAX)
            .await,
        Err(StorageError::OffsetMismatch {
            expected: 0,
            actual: 7
        })
    ));
    let p = store
        .append_upload("u1", p, stream_of(vec![b"berth"]), u64::MAX)
        .await
        .expect("append 2");
    assert_eq!(p.size, data.len() as u64);
    assert_eq!(p.hasher.digest(), digest);

    // A failing body or an exceeded limit leaves the upload as it was.
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"more")),
        Err(io::Error::other("client went away")),
    ]));
    assert!(matches!(
        store
            .append_upload("u1", p.clone(), failing, u64::MAX)
            .await,
        Err(StorageError::Body(_))
    ));
    assert!(matches!(
        store
            .append_upload("u1", p.clone(), stream_of(vec![b"toolong"]), 14)
            .await,
        Err(StorageError::TooLarge { limit: 14 })
    ));
    assert_eq!(store.upload_size("u1").await.expect("size"), 12);
    // What was written so far can be read back while the upload is open.
    let part = store
        .read_upload("u1", ByteRange { start: 2, end: 8 })
        .await
        .expect("read upload");
    assert_eq!(collect(part).await, b"llo, be");
    assert!(matches!(
        store
            .read_upload("nope", ByteRange { start: 0, end: 0 })
            .await
            .err(),
        Some(StorageError::UploadNotFound)
    ));

    // Rehashing from storage gives the same state as hashing while writing.
    let re = store
        .rehash_upload("u1", Algorithm::Sha256)
        .await
        .expect("rehash");
    assert_eq!(re.size, 12);
    assert_eq!(re.hasher.digest(), digest);
    let re512 = store
        .rehash_upload("u1", Algorithm::Sha512)
        .await
        .expect("rehash");
    assert_eq!(re512.hasher.digest(), Digest::of(Algorithm::Sha512, data));

    // Commit makes it visible. From then on the upload cannot be written, sized, hashed
    // or read (a client retrying into the session must start over), but its bytes are
    // kept for a commit again until the upload is deleted.
    store.commit_upload("u1", &digest).await.expect("commit");
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), Some(12));
    assert!(matches!(
        store
            .append_upload("u1", p.clone(), stream_of(vec![b"trailing"]), u64::MAX)
            .await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(matches!(
        store.upload_size("u1").await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(matches!(
        store.rehash_upload("u1", Algorithm::Sha256).await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(matches!(
        store
            .read_upload("u1", ByteRange { start: 0, end: 0 })
            .await
            .err(),
        Some(StorageError::UploadNotFound)
    ));
    assert_eq!(
        collect(store.get((&digest).into(), None).await.expect("get")).await,
        data,
        "an append after the commit left the committed blob as it was"
    );
    assert!(store.delete((&digest).into()).await.expect("delete"));
    store
        .commit_upload("u1", &digest)
        .await
        .expect("commit again");
    assert_eq!(
        collect(store.get((&digest).into(), None).await.expect("get")).await,
        data
    );
    store.delete_upload("u1").await.expect("delete upload");
    assert!(matches!(
        store.upload_size("u1").await,
        Err(StorageError::UploadNotFound)
    ));
    assert!(
        matches!(
            store.commit_upload("u1", &digest).await,
            Err(StorageError::UploadNotFound)
        ),
        "deleting an upload removes its kept bytes too"
    );
    assert_eq!(
        collect(store.get((&digest).into(), None).await.expect("get")).await,
        data
    );
    let part = store
        .get((&digest).into(), Some(ByteRange { start: 7, end: 11 }))
        .await
        .expect("range");
    assert_eq!(collect(part).await, b"berth");

    // Committing the same content again (dedup) is fine.
    store.create_upload("u2").await.expect("create");
    store
        .append_upload("u2", fresh(), stream_of(vec![b"hello, berth"]), u64::MAX)
        .await
        .expect("append");
    store
        .commit_upload("u2", &digest)
        .await
        .expect("commit again");
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), Some(12));

    // Hiding (garbage collection's first step): gone from its digest, back on unhide.
    let h = store.hide(&digest).await.expect("hide").expect("hidden");
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
    assert!(store.hide(&digest).await.expect("hide again").is_none());
    assert_eq!(store.hidden().await.expect("hidden"), vec![h.clone()]);
    assert!(store.unhide(&h).await.expect("unhide"));
    assert!(!store.unhide(&h).await.expect("unhide twice"));
    assert!(store.hidden().await.expect("hidden").is_empty());
    assert_eq!(
        collect(store.get((&digest).into(), None).await.expect("get")).await,
        data
    );
    // A blob committed again while hidden stays; the hidden copy goes.
    let h = store.hide(&digest).await.expect("hide").expect("hidden");
    store
        .commit_upload("u2", &digest)
        .await
        .expect("commit while hidden");
    assert!(!store.unhide(&h).await.expect("unhide over a new commit"));
    assert!(store.hidden().await.expect("hidden").is_empty());
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), Some(12));
    // Purged: gone for good.
    let h = store.hide(&digest).await.expect("hide").expect("hidden");
    assert!(store.purge(&h).await.expect("purge"));
    assert!(!store.purge(&h).await.expect("purge twice"));
    assert!(!store.unhide(&h).await.expect("unhide purged"));
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
    // The kept upload can commit the blob again.
    store
        .commit_upload("u2", &digest)
        .await
        .expect("commit again from the kept upload");
    store.delete_upload("u2").await.expect("delete upload");
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), Some(12));

    // Uploads are listed, open or committed, once each, until deleted.
    store.create_upload("u3").await.expect("create");
    store.create_upload("u4").await.expect("create");
    store
        .append_upload("u4", fresh(), stream_of(vec![b"hello, berth"]), u64::MAX)
        .await
        .expect("append");
    store.commit_upload("u4", &digest).await.expect("commit");
    let mut listed = store.list_uploads().await.expect("list uploads");
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        listed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
        ["u3", "u4"]
    );
    for u in &listed {
        assert!(u.modified.elapsed().unwrap_or_default() < std::time::Duration::from_secs(600));
        // One upload's time, without listing them all, agrees with the listing.
        assert_eq!(
            store.upload_written(&u.id).await.expect("written"),
            Some(u.modified)
        );
    }
    store.delete_upload("u4").await.expect("delete upload");
    assert_eq!(store.upload_written("u4").await.expect("written"), None);

    // Cancel and delete.
    store.delete_upload("u3").await.expect("delete upload");
    assert!(
        store.list_uploads().await.expect("list uploads").is_empty(),
        "deleted uploads are not listed"
    );
    store
        .delete_upload("u3")
        .await
        .expect("delete upload twice");
    // Committed blobs are listed, with their size and a commit time.
    let listed = store.list().await.expect("list");
    let entry = listed
        .iter()
        .find(|b| b.digest == digest)
        .expect("committed blob is listed");
    assert_eq!(entry.size, data.len() as u64);
    assert!(entry.modified.elapsed().unwrap_or_default() < std::time::Duration::from_secs(600));
    assert!(store.delete((&digest).into()).await.expect("delete"));
    assert!(
        !store
            .list()
            .await
            .expect("list")
            .iter()
            .any(|b| b.digest == digest),
        "a deleted blob is not listed"
    );
    assert!(!store.delete((&digest).into()).await.expect("delete twice"));
    assert_eq!(store.stat((&digest).into()).await.expect("stat"), None);
}

/// `import_file`: a file from outside the store comes in under its digest only if its
/// content matches; the source is left as it was.
pub async fn import_file(store: &dyn BlobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    std::fs::write(&good, b"imported bytes").expect("write");
    let digest = Digest::of(Algorithm::Sha256, b"imported bytes");
    let (size, _) = store.import_file(&good, &digest).await.expect("import");
    assert_eq!(size, 14);
    assert_eq!(
        collect(store.get((&digest).into(), None).await.expect("get")).await,
        b"imported bytes"
    );
    // Importing the same content again is not an error.
    store
        .import_file(&good, &digest)
        .await
        .expect("import again");
    assert_eq!(
        std::fs::read(&good).expect("source kept"),
        b"imported bytes"
    );

    // Content that does not match its digest is refused and nothing is stored.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, b"changed bytes").expect("write");
    let claimed = Digest::of(Algorithm::Sha256, b"original bytes");
    assert!(matches!(
        store.import_file(&bad, &claimed).await,
        Err(StorageError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat((&claimed).into()).await.expect("stat"), None);

    // A missing source names the file.
    let missing = dir.path().join("missing");
    assert!(matches!(
        store.import_file(&missing, &claimed).await,
        Err(StorageError::Source { .. })
    ));
}

/// Stores that keep blobs only at their digests (filesystem, memory) refuse a recorded
/// key instead of reading something else, and a committed blob stays readable by digest.
pub async fn refuses_keys(store: &dyn BlobStore) {
    let data: &'static [u8] = b"kept at its digest";
    let digest = Digest::of(Algorithm::Sha256, data);
    store.create_upload("keyed").await.expect("create");
    store
        .append_upload("keyed", fresh(), stream_of(vec![data]), u64::MAX)
        .await
        .expect("append");
    store.commit_upload("keyed", &digest).await.expect("commit");
    store.delete_upload("keyed").await.expect("delete upload");
    let keyed = super::BlobRef {
        digest: &digest,
        key: Some("objects/ke/keyed"),
    };
    assert!(store.stat(keyed).await.is_err());
    assert!(store.get(keyed, None).await.is_err());
    assert!(store.delete(keyed).await.is_err());
    assert_eq!(store.redirect_url(keyed), None);
    assert_eq!(
        store.stat((&digest).into()).await.expect("stat"),
        Some(data.len() as u64)
    );
}
