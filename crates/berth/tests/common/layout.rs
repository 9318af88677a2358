//! Images built by the tests themselves, for clients to push (nothing comes from the
//! internet): deterministic tar layers, incompressible filler bytes, and OCI image layouts
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) that skopeo, podman and umoci read.

use super::push::{digest_of, sha256, OCI_INDEX, OCI_MANIFEST};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `len` incompressible bytes determined by `seed` (so layers are really streamed, not
/// squeezed into a few kilobytes by gzip).
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    use sha2::Digest as _;
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u64;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(seed.as_bytes());
        h.update(counter.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

/// An uncompressed tar of `files` with fixed headers (mode, mtime); the directories of
/// their paths are created as entries first.
pub fn plain_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    for (path, data) in files {
        let mut parent = Path::new(path).parent();
        let mut to_create = Vec::new();
        while let Some(p) = parent {
            if p.as_os_str().is_empty() || !dirs.insert(p.to_path_buf()) {
                break;
            }
            to_create.push(p.to_path_buf());
            parent = p.parent();
        }
        for dir in to_create.into_iter().rev() {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            builder
                .append_data(&mut h, format!("{}/", dir.display()), std::io::empty())
                .expect("tar dir");
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        builder.append_data(&mut h, path, *data).expect("tar file");
    }
    builder.into_inner().expect("tar")
}

/// A gzip-compressed `plain_tar` of `files`, and the tar's own digest (the layer's
/// diff_id).
pub fn layer_tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, oci::Digest) {
    layer_tar_gz_at(files, flate2::Compression::default())
}

/// [`layer_tar_gz`] at gzip `level` (`Compression::none()` for large incompressible
/// layers: still a valid gzip stream, without the compressor's time).
pub fn layer_tar_gz_at(
    files: &[(&str, &[u8])],
    level: flate2::Compression,
) -> (Vec<u8>, oci::Digest) {
    let tar = plain_tar(files);
    let diff_id = sha256(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    (gz.finish().expect("gzip"), diff_id)
}

/// An OCI image layout written by the test.
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<Value>,
}

impl Layout {
    /// An empty layout in `dir` (created if needed).
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("layout dir");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        let layout = Layout {
            dir: dir.to_path_buf(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    /// The layout in `dir` as written before, its tags kept.
    pub fn open(dir: &Path) -> Layout {
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
                .expect("index.json");
        Layout {
            dir: dir.to_path_buf(),
            refs: index["manifests"].as_array().cloned().unwrap_or_default(),
        }
    }

    fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.refs});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }

    /// Store `bytes` as a blob; returns its descriptor with `media_type`.
    pub fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(digest.hex()), bytes).expect("blob");
        json!({"mediaType": media_type, "digest": digest.as_str(), "size": bytes.len()})
    }

    /// An image index over `(manifest descriptor, architecture)`, with `annotations` when
    /// they are not null.
    pub fn put_index(&self, manifests: &[(Value, &str)], annotations: Value) -> Value {
        let manifests: Vec<Value> = manifests
            .iter()
            .map(|(d, arch)| {
                let mut d = d.clone();
                d["platform"] = json!({"architecture": arch, "os": "linux"});
                d
            })
            .collect();
        let mut index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        if !annotations.is_null() {
            index["annotations"] = annotations;
        }
        self.put_blob(OCI_INDEX, &serde_json::to_vec(&index).expect("json"))
    }

    /// Tag `descriptor` as `tag` in index.json.
    pub fn tag(&mut self, descriptor: &Value, tag: &str) {
        let mut d = descriptor.clone();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.refs.push(d);
        self.write_index();
    }

    /// The bytes of the blob `descriptor` points at.
    pub fn blob(&self, descriptor: &Value) -> Vec<u8> {
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest_of(descriptor).hex());
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The JSON blob (manifest, index, config) `descriptor` points at.
    pub fn json(&self, descriptor: &Value) -> Value {
        serde_json::from_slice(&self.blob(descriptor)).expect("json")
    }

    /// The layer digests of the image manifest `manifest` (a descriptor).
    pub fn layers_of(&self, manifest: &Value) -> Vec<oci::Digest> {
        self.json(manifest)["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(digest_of)
            .collect()
    }

    /// Store an image manifest over `config` and `layers` (descriptors already stored);
    /// `pretty` JSON keeps a registry honest about storing the bytes it was given.
    pub fn put_manifest(&self, config: Value, layers: Vec<Value>, pretty: bool) -> Value {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        let bytes = if pretty {
            serde_json::to_vec_pretty(&manifest)
        } else {
            serde_json::to_vec(&manifest)
        };
        self.put_blob(OCI_MANIFEST, &bytes.expect("json"))
    }
}
