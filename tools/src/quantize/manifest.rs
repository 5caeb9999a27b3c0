//! The release manifest written next to a quantized model — everything a
//! model spec needs, how the file was made (source, type, importance matrix
//! and its calibration texts) and, once measured, how good it is — and the
//! spec JSON the guest takes as an override.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::QuantizeError;

/// The release manifest written next to a quantized model: everything a
/// model spec needs, and how the file was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's name.
    pub file_name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
    /// llama.cpp's type name (`Q3_K_S`).
    pub quantization: String,
    /// The input's file name.
    pub source_file_name: String,
    /// The input's size in bytes.
    pub source_size: u64,
    /// The input's SHA-256.
    pub source_sha256: String,
    /// The importance matrix's SHA-256, when one was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imatrix_sha256: Option<String>,
    /// The texts the importance matrix was computed from (its `imatrix.datasets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<String>,
    /// What `bittybot quality --manifest` measured against the reference model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<serde_json::Value>,
    /// The llama.cpp that quantized it.
    pub llama_cpp_version: String,
    /// The download URL, when a URL base was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The model spec override the guest accepts (`guest/src/spec.rs`): only
/// the typed facts; the display size and the free-space margin are derived
/// by the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecJson {
    /// Download URL.
    pub url: String,
    /// File name in the models folder.
    pub file_name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl Manifest {
    /// The model spec for this release, downloaded from `url` (default: the
    /// manifest's own URL).
    pub fn spec(&self, url: Option<&str>) -> Result<SpecJson, QuantizeError> {
        let url = match url.or(self.url.as_deref()) {
            Some(u) => u.to_owned(),
            None => return Err(QuantizeError::NoUrl(self.file_name.clone())),
        };
        check_url(&url)?;
        Ok(SpecJson { url, file_name: self.file_name.clone(), size: self.size, sha256: self.sha256.clone() })
    }

    /// The spec as the JSON text the guest takes as an override.
    pub fn spec_json(&self, url: Option<&str>) -> Result<String, QuantizeError> {
        let spec = self.spec(url)?;
        serde_json::to_string_pretty(&spec).map_err(|e| QuantizeError::Manifest {
            path: PathBuf::from(&self.file_name),
            reason: e.to_string(),
        })
    }
}

/// Where the manifest of `output` goes: `OUTPUT.manifest.json`.
pub fn manifest_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".manifest.json");
    output.with_file_name(name)
}

/// Read a manifest written by [`quantize`].
pub fn read_manifest(path: &Path) -> Result<Manifest, QuantizeError> {
    let fail = |reason: String| QuantizeError::Manifest { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let m: Manifest =
        serde_json::from_str(&text).map_err(|e| fail(format!("not a release manifest: {e}")))?;
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex(&m.sha256) {
        return Err(fail(format!("sha256 `{}` is not 64 lowercase hex digits", m.sha256)));
    }
    if m.size == 0 {
        return Err(fail("size is 0".into()));
    }
    Ok(m)
}

pub(super) fn check_url(url: &str) -> Result<(), QuantizeError> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "https://".len()
        && !url.contains(char::is_whitespace);
    if ok { Ok(()) } else { Err(QuantizeError::Url(url.to_owned())) }
}

/// `base/name`, the name percent-encoded where a URL needs it.
pub(super) fn release_url(base: &str, name: &str) -> Result<String, QuantizeError> {
    check_url(base)?;
    let mut url = base.trim_end_matches('/').to_owned();
    url.push('/');
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_manifest_paths() {
        assert_eq!(
            release_url("https://example.org/rel/", "tiny aya+q3.gguf").unwrap(),
            "https://example.org/rel/tiny%20aya%2Bq3.gguf"
        );
        assert!(matches!(release_url("ftp://x", "a.gguf"), Err(QuantizeError::Url(_))));
        assert_eq!(manifest_path(Path::new("/m/q.gguf")), Path::new("/m/q.gguf.manifest.json"));
        let m = Manifest {
            file_name: "q.gguf".into(),
            size: 5,
            sha256: "ab".repeat(32),
            quantization: "Q3_K_S".into(),
            source_file_name: "f.gguf".into(),
            source_size: 9,
            source_sha256: "cd".repeat(32),
            imatrix_sha256: None,
            calibration: Vec::new(),
            quality: None,
            llama_cpp_version: "x".into(),
            url: None,
        };
        assert_eq!(m.spec(None), Err(QuantizeError::NoUrl("q.gguf".into())));
        let spec: serde_json::Value =
            serde_json::from_str(&m.spec_json(Some("http://h/q.gguf")).unwrap()).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"url": "http://h/q.gguf", "file_name": "q.gguf", "size": 5, "sha256": "ab".repeat(32)})
        );
    }
}
