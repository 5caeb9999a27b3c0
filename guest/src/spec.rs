//! The model the app ships with: where it comes from, how big it is, how to
//! know it is intact. The constants are those of the self-quantized Tiny Aya
//! Global Q3_K_S release (README, "Model distribution"); derived values (display size, free space
//! needed) are computed from the byte count, never typed by hand.
//!
//! A spec can be overridden at run time with JSON (tests, other models):
//! `{"url": …, "file_name": …, "size": …, "sha256": …}` plus optional
//! `free_space_margin`, `min_total_ram`, `retries`, `retry_base_ms`.
//! `bittybot spec --from-manifest` writes exactly this format.

use serde::{Deserialize, Serialize};

/// Extra free space a download needs beyond the file: room for the file
/// system, the settings and the prompt caches.
pub const FREE_SPACE_MARGIN: u64 = 256 * 1024 * 1024;
/// Physical memory below which Tiny Aya Q3_K_S will not run well: the file
/// is mapped (1.66 GB) and the app needs ~2.1 GB available on a 5.5 GB phone.
pub const MIN_TOTAL_RAM: u64 = 4_000_000_000;
/// Retries after a failed attempt.
pub const RETRIES: u32 = 3;
/// First retry delay; it doubles each time.
pub const RETRY_BASE_MS: u32 = 1000;

/// A model to download and verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Download URL.
    pub url: String,
    /// File name in the models folder.
    pub file_name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Extra free space needed besides the file.
    #[serde(default = "default_margin")]
    pub free_space_margin: u64,
    /// Physical memory the model needs.
    #[serde(default = "default_min_ram")]
    pub min_total_ram: u64,
    /// Retries after a failed attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// First retry delay in ms (doubles each retry).
    #[serde(default = "default_retry_base")]
    pub retry_base_ms: u32,
}

fn default_margin() -> u64 {
    FREE_SPACE_MARGIN
}
fn default_min_ram() -> u64 {
    MIN_TOTAL_RAM
}
fn default_retries() -> u32 {
    RETRIES
}
fn default_retry_base() -> u32 {
    RETRY_BASE_MS
}

impl ModelSpec {
    /// The shipping model: Tiny Aya Global, self-quantized to Q3_K_S.
    pub fn tiny_aya_q3_k_s() -> Self {
        ModelSpec {
            url: "https://github.com/sneptech/bittybot/releases/download/v0.1.0-q3ks/tiny-aya-global-q3_k_s.gguf"
                .into(),
            file_name: "tiny-aya-global-q3_k_s.gguf".into(),
            size: 1_660_984_928,
            sha256: "381ef5cec4cab609f30914b6978af962354aadb1d8254829713815a198da9026".into(),
            free_space_margin: FREE_SPACE_MARGIN,
            min_total_ram: MIN_TOTAL_RAM,
            retries: RETRIES,
            retry_base_ms: RETRY_BASE_MS,
        }
    }

    /// Parse and check an override.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: ModelSpec = serde_json::from_str(text).map_err(|e| format!("model spec: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The built-in spec, or the override when one is given.
    pub fn resolve(override_json: Option<&str>) -> Result<Self, String> {
        match override_json {
            Some(t) => Self::from_json(t),
            None => Ok(Self::tiny_aya_q3_k_s()),
        }
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), String> {
        let scheme_ok = self.url.starts_with("https://") || self.url.starts_with("http://");
        if !scheme_ok || self.url.len() < 10 || self.url.contains(char::is_whitespace) {
            return Err(format!("model spec: url `{}` is not an http(s) URL", self.url));
        }
        let name = &self.file_name;
        if name.is_empty()
            || name.contains(['/', '\\', '\0'])
            || name.starts_with('.')
            || !name.ends_with(".gguf")
        {
            return Err(format!("model spec: file_name `{name}` must be a plain `*.gguf` file name"));
        }
        if self.size == 0 {
            return Err("model spec: size must be more than 0 bytes".into());
        }
        let hex = self.sha256.len() == 64
            && self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(format!("model spec: sha256 `{}` is not 64 lowercase hex digits", self.sha256));
        }
        if self.retries > 20 {
            return Err("model spec: retries must be at most 20".into());
        }
        Ok(())
    }

    /// The size for people, in decimal units as phones show storage.
    pub fn display_size(&self) -> String {
        display_bytes(self.size)
    }

    /// Free space a fresh download needs.
    pub fn free_space_needed(&self) -> u64 {
        self.size.saturating_add(self.free_space_margin)
    }

    /// The spec as the app sees it, with the derived values.
    pub fn to_wit(&self) -> crate::wit::app::ModelSpec {
        crate::wit::app::ModelSpec {
            url: self.url.clone(),
            file_name: self.file_name.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
            display_size: self.display_size(),
            free_space_needed: self.free_space_needed(),
            min_total_ram: self.min_total_ram,
        }
    }

    /// Name of the partial download.
    pub fn part_name(&self) -> String {
        format!("{}.part", self.file_name)
    }
}

/// Bytes in decimal units with two decimals above a kilobyte (`1.66 GB`).
pub fn display_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.995 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipping_constants_and_derived_values() {
        let s = ModelSpec::tiny_aya_q3_k_s();
        s.validate().unwrap();
        assert_eq!(s.size, 1_660_984_928);
        assert_eq!(s.display_size(), "1.66 GB");
        assert_eq!(s.free_space_needed(), 1_660_984_928 + 256 * 1024 * 1024);
        assert_eq!(s.part_name(), "tiny-aya-global-q3_k_s.gguf.part");
    }

    #[test]
    fn display_sizes() {
        assert_eq!(display_bytes(999), "999 B");
        assert_eq!(display_bytes(98_362_432), "98.36 MB");
        assert_eq!(display_bytes(999_999), "1.00 MB");
        assert_eq!(display_bytes(6_705_330_848), "6.71 GB");
    }

    #[test]
    fn overrides_are_validated() {
        let ok = r#"{"url":"http://127.0.0.1:1/m.gguf","file_name":"m.gguf","size":5,
                     "sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}"#;
        let s = ModelSpec::from_json(ok).unwrap();
        assert_eq!((s.retries, s.free_space_margin), (RETRIES, FREE_SPACE_MARGIN));
        let bad = [
            (r#"{"url":"ftp://x/y","file_name":"m.gguf","size":5,"sha256":"00"}"#.to_owned(), "url"),
            (ok.replace("m.gguf\"", "../m.gguf\""), "file_name"),
            (ok.replace("\"size\":5", "\"size\":0"), "size"),
            (ok.replace("ba78", "BA78"), "sha256"),
            (ok.replace("}", ",\"colour\":1}"), "unknown field"),
            ("not json".to_owned(), "model spec"),
        ];
        for (json, needle) in bad {
            let err = ModelSpec::from_json(&json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
