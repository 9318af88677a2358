//! Manifest parsing and validation: OCI image manifests and indexes, Docker schema2
//! manifests and manifest lists. The registry stores manifests byte for byte; this module
//! only reads them to learn what they reference and to refuse what is not a manifest.

use crate::digest::Digest;
use crate::media;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Largest manifest the registry accepts by default (the spec's "at least 4 megabytes").
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("Docker schema1 manifests are not supported: push with a client that writes schema2 or OCI manifests (Docker 1.10+, podman, skopeo)")]
    Schema1,
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("mediaType {field:?} in the manifest does not match Content-Type {header:?}")]
    MediaTypeMismatch { field: String, header: String },
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Invalid(String),
}

/// A reference from a manifest to content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
    pub urls: Vec<String>,
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A single image or artifact: config + layers.
    Image,
    /// An index or manifest list: a list of manifests.
    Index,
}

/// What the registry needs to know about a pushed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type the manifest is served with.
    pub media_type: String,
    pub kind: Kind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    /// The `artifactType` a referrers listing shows for this manifest: its own, else (for
    /// images) the config's media type, else none.
    pub fn referrer_artifact_type(&self) -> Option<&str> {
        match (&self.artifact_type, self.kind, &self.config) {
            (Some(a), _, _) if !a.is_empty() => Some(a),
            (_, Kind::Image, Some(c)) => Some(&c.media_type),
            _ => None,
        }
    }

    /// Blobs this manifest needs in the repository: the config, and every layer except
    /// those with `urls` (clients fetch those from there). A layer's media type alone
    /// ("foreign", "nondistributable") never exempts it: without `urls` there is nowhere
    /// else to fetch it from.
    pub fn blob_references(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter().filter(|d| d.urls.is_empty()))
    }

    /// Every descriptor of the manifest (config, layers, index entries, subject), for
    /// checks that apply to all of them.
    pub fn descriptors(&self) -> impl Iterator<Item = &Descriptor> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .chain(self.manifests.iter())
            .chain(self.subject.iter())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    annotations: Option<BTreeMap<String, String>>,
    // schema1 markers
    fs_layers: Option<serde_json::Value>,
    signatures: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
    urls: Option<Vec<String>>,
    platform: Option<Platform>,
}

impl RawDescriptor {
    fn validate(self, what: &str) -> Result<Descriptor, ManifestError> {
        let bad = |why: &str| ManifestError::Invalid(format!("{what}: {why}"));
        let media_type = self
            .media_type
            .filter(|m| !m.is_empty())
            .ok_or_else(|| bad("mediaType is required"))?;
        let digest = self
            .digest
            .ok_or_else(|| bad("digest is required"))?
            .parse::<Digest>()
            .map_err(|e| bad(&e.to_string()))?;
        let size = self.size.ok_or_else(|| bad("size is required"))?;
        let size = u64::try_from(size).map_err(|_| bad("size must not be negative"))?;
        Ok(Descriptor {
            media_type,
            digest,
            size,
            artifact_type: self.artifact_type,
            annotations: self.annotations,
            urls: self.urls.unwrap_or_default(),
            platform: self.platform,
        })
    }
}

/// Content types a client may send that say nothing about the manifest kind.
fn is_generic_content_type(ct: &str) -> bool {
    ct.is_empty() || ct == "application/json" || ct == "application/octet-stream"
}

/// Parse and validate `bytes` pushed with `content_type`.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
    let header = content_type.map(media::essence).unwrap_or("");
    if header == media::DOCKER_SCHEMA1 || header == media::DOCKER_SCHEMA1_SIGNED {
        return Err(ManifestError::Schema1);
    }
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
    let field = raw.media_type.clone().filter(|m| !m.is_empty());
    if matches!(
        field.as_deref(),
        Some(media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED)
    ) || raw.fs_layers.is_some()
        || raw.signatures.is_some()
        || raw.schema_version.as_ref().and_then(|v| v.as_i64()) == Some(1)
    {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version.as_ref().and_then(|v| v.as_i64()) != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let media_type =
        match (&field, header) {
            (Some(f), h) if is_generic_content_type(h) || f == h => f.clone(),
            (Some(f), h) => {
                return Err(ManifestError::MediaTypeMismatch {
                    field: f.clone(),
                    header: h.to_string(),
                })
            }
            (None, h) if !is_generic_content_type(h) => h.to_string(),
            (None, _) if raw.manifests.is_some() => media::OCI_INDEX.to_string(),
            (None, _) if raw.config.is_some() => media::OCI_MANIFEST.to_string(),
            (None, _) => return Err(ManifestError::Invalid(
                "cannot tell the manifest type: no mediaType, Content-Type, config or manifests"
                    .into(),
            )),
        };
    let kind = if media::is_image_manifest(&media_type) {
        Kind::Image
    } else if media::is_index(&media_type) {
        Kind::Index
    } else {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    };

    let subject = raw.subject.map(|s| s.validate("subject")).transpose()?;
    let mut m = Manifest {
        media_type,
        kind,
        config: None,
        layers: Vec::new(),
        manifests: Vec::new(),
        subject,
        artifact_type: raw.artifact_type.filter(|a| !a.is_empty()),
        annotations: raw.annotations,
    };
    match kind {
        Kind::Image => {
            if raw.manifests.is_some() {
                return Err(ManifestError::Invalid(
                    "an image manifest must not have a manifests list".into(),
                ));
            }
            let config = raw
                .config
                .ok_or_else(|| ManifestError::Invalid("config descriptor is required".into()))?;
            m.config = Some(config.validate("config")?);
            m.layers = raw
                .layers
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, d)| d.validate(&format!("layers[{i}]")))
                .collect::<Result<_, _>>()?;
        }
        Kind::Index => {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(ManifestError::Invalid(
                    "an index must not have config or layers".into(),
                ));
            }
            m.manifests = raw
                .manifests
                .ok_or_else(|| ManifestError::Invalid("manifests list is required".into()))?
                .into_iter()
                .enumerate()
                .map(|(i, d)| d.validate(&format!("manifests[{i}]")))
                .collect::<Result<_, _>>()?;
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":0}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{D}","size":0}}]{extra}}}"#,
            media::OCI_MANIFEST
        )
    }

    #[test]
    fn image_manifest() {
        let m = parse(Some(media::OCI_MANIFEST), image("").as_bytes()).expect("valid test input");
        assert_eq!(m.kind, Kind::Image);
        assert_eq!(m.blob_references().count(), 2);
        assert_eq!(
            m.referrer_artifact_type(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let with_subject = image(&format!(
            r#","artifactType":"application/x.sig","subject":{{"mediaType":"{}","digest":"{D}","size":1}},"annotations":{{"a":"b"}}"#,
            media::OCI_MANIFEST
        ));
        let m = parse(None, with_subject.as_bytes()).expect("valid test input");
        assert_eq!(m.referrer_artifact_type(), Some("application/x.sig"));
        assert_eq!(m.subject.expect("valid test input").digest.as_str(), D);
    }

    #[test]
    fn index_and_inference() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            media::OCI_MANIFEST
        );
        let m = parse(Some(media::OCI_INDEX), idx.as_bytes()).expect("valid test input");
        assert_eq!(m.kind, Kind::Index);
        assert_eq!(m.media_type, media::OCI_INDEX);
        let m = parse(None, idx.as_bytes()).expect("valid test input");
        assert_eq!(m.media_type, media::OCI_INDEX);
        assert_eq!(m.referrer_artifact_type(), None);
    }

    #[test]
    fn rejects() {
        let cases: &[(Option<&str>, String)] = &[
            (None, "not json".into()),
            (Some(media::DOCKER_SCHEMA1_SIGNED), "{}".into()),
            (None, r#"{"schemaVersion":1,"fsLayers":[]}"#.into()),
            (None, r#"{"schemaVersion":3,"config":{}}"#.into()),
            (Some(media::OCI_INDEX), image("")),
            (
                Some("application/x-unknown"),
                r#"{"schemaVersion":2,"config":{}}"#.into(),
            ),
            (None, image("").replace(r#""size":0}]"#, r#""size":-1}]"#)),
            (None, image("").replace(D, "sha256:1234")),
            (None, r#"{"schemaVersion":2}"#.into()),
        ];
        for (ct, body) in cases {
            assert!(parse(*ct, body.as_bytes()).is_err(), "{ct:?} {body}");
        }
        assert_eq!(
            parse(None, r#"{"schemaVersion":1,"fsLayers":[]}"#.as_bytes())
                .expect_err("must be rejected"),
            ManifestError::Schema1
        );
    }
}
