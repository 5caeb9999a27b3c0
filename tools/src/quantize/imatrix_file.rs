//! Importance matrices as llama.cpp's quantizer takes them: llama-imatrix's
//! GGUF format (`<tensor>.in_sum2` / `<tensor>.counts`, read with the host's
//! GGUF reader) or the legacy `imatrix.dat`; each value the mean squared
//! activation of its column.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bittybot_host::gguf::{Array, Gguf, Value};

use super::QuantizeError;

/// ggml's F32 type id.
const GGML_TYPE_F32: u32 = 0;

/// An importance matrix as llama.cpp's quantizer takes it.
pub struct Imatrix {
    /// Per tensor: the mean squared activation of each column.
    pub entries: Vec<(CString, Vec<f32>)>,
    /// The texts it was computed from.
    pub datasets: Vec<String>,
    /// Chunks evaluated.
    pub chunks: u32,
}

/// Load an imatrix the way `llama-quantize` does: the GGUF format
/// (`NAME.in_sum2` / `NAME.counts`), else the legacy `.dat` format.
pub fn load(path: &Path) -> Result<Imatrix, QuantizeError> {
    let fail = |reason: String| QuantizeError::Imatrix { path: path.to_owned(), reason };
    let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut magic = [0u8; 4];
    let is_gguf = file.read_exact(&mut magic).is_ok() && &magic == b"GGUF";
    file.seek(SeekFrom::Start(0)).map_err(|e| fail(e.to_string()))?;
    let imatrix = if is_gguf { imatrix_gguf(&mut file) } else { imatrix_legacy(&mut file) };
    let imatrix = imatrix.map_err(fail)?;
    if imatrix.entries.is_empty() {
        return Err(fail("it holds no entries".into()));
    }
    if let Some((name, _)) = imatrix.entries.iter().find(|(_, v)| v.iter().any(|x| !x.is_finite())) {
        return Err(fail(format!("entry `{}` holds a value that is not finite", name.to_string_lossy())));
    }
    Ok(imatrix)
}

fn read_f32s(file: &mut std::fs::File, offset: u64, count: usize) -> Result<Vec<f32>, String> {
    let mut bytes = vec![0u8; count * 4];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| e.to_string())?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn imatrix_gguf(file: &mut std::fs::File) -> Result<Imatrix, String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let gguf = Gguf::read(&mut std::io::BufReader::new(&mut *file), size).map_err(|e| e.to_string())?;
    if gguf.get("imatrix.datasets").is_none()
        || gguf.get("imatrix.chunk_count").is_none()
        || gguf.get("imatrix.chunk_size").is_none()
    {
        return Err("a GGUF imatrix without its metadata (imatrix.datasets, chunk_count, chunk_size)".into());
    }
    let mut entries = Vec::new();
    for t in &gguf.tensors {
        let Some(name) = t.name.strip_suffix(".in_sum2") else { continue };
        let Some(counts) = gguf.tensor(&format!("{name}.counts")) else {
            return Err(format!("`{name}` has sums but no counts"));
        };
        if t.ggml_type != GGML_TYPE_F32 || counts.ggml_type != GGML_TYPE_F32 {
            return Err(format!("sums and counts of `{name}` must be F32"));
        }
        let sums = read_f32s(file, t.offset, (t.size / 4) as usize)?;
        let counts = read_f32s(file, counts.offset, (counts.size / 4) as usize)?;
        if counts.is_empty() || sums.is_empty() || sums.len() % counts.len() != 0 {
            return Err(format!("`{name}`: {} sums do not split into {} counts", sums.len(), counts.len()));
        }
        let per = sums.len() / counts.len();
        let values = sums
            .chunks(per)
            .zip(&counts)
            .flat_map(|(row, &c)| {
                let c = c.round();
                row.iter().map(move |&s| if c > 0.0 { s / c } else { 1.0 })
            })
            .collect();
        entries.push((CString::new(name).map_err(|e| e.to_string())?, values));
    }
    let chunks = gguf.uint("imatrix.chunk_count").unwrap_or(0) as u32;
    let datasets = match gguf.get("imatrix.datasets") {
        Some(Value::Array(Array::Str(d))) => d.clone(),
        _ => Vec::new(),
    };
    Ok(Imatrix { entries, datasets, chunks })
}

fn imatrix_legacy(file: &mut std::fs::File) -> Result<Imatrix, String> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let mut at = 0usize;
    let i32_at = |at: &mut usize| -> Option<i32> {
        let b = bytes.get(*at..*at + 4)?;
        *at += 4;
        Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let bad = || "neither a GGUF imatrix nor a legacy imatrix.dat".to_owned();
    let n = i32_at(&mut at).filter(|&n| n >= 1).ok_or_else(bad)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        let len = i32_at(&mut at).and_then(|l| usize::try_from(l).ok()).ok_or_else(bad)?;
        let name = bytes.get(at..at + len).ok_or_else(bad)?.to_vec();
        at += len;
        let ncall = i32_at(&mut at).ok_or_else(bad)?;
        let nval =
            i32_at(&mut at).and_then(|v| usize::try_from(v).ok()).filter(|&v| v >= 1).ok_or_else(bad)?;
        let data = bytes.get(at..at + nval * 4).ok_or_else(bad)?;
        at += nval * 4;
        let values = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map(|s| if ncall > 0 { s / ncall as f32 } else { s })
            .collect();
        let name = CString::new(name.split(|&b| b == 0).next().unwrap_or_default()).map_err(|_| bad())?;
        entries.push((name, values));
    }
    // Optional trailer: chunk count, then the dataset name.
    let chunks = i32_at(&mut at).unwrap_or(0).max(0) as u32;
    let mut datasets = Vec::new();
    if let Some(len) = i32_at(&mut at).and_then(|l| usize::try_from(l).ok()).filter(|&l| l > 0)
        && let Some(d) = bytes.get(at..at + len)
    {
        datasets.push(String::from_utf8_lossy(d).into_owned());
    }
    Ok(Imatrix { entries, datasets, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_imatrix_values_are_means() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.dat");
        let mut b = Vec::new();
        b.extend(1i32.to_le_bytes());
        b.extend(3i32.to_le_bytes());
        b.extend(b"w.x");
        b.extend(2i32.to_le_bytes()); // ncall
        b.extend(2i32.to_le_bytes()); // nval
        b.extend(4f32.to_le_bytes());
        b.extend(8f32.to_le_bytes());
        b.extend(7i32.to_le_bytes()); // chunks
        b.extend(2i32.to_le_bytes());
        b.extend(b"ds");
        std::fs::write(&p, &b).unwrap();
        let m = imatrix_legacy(&mut std::fs::File::open(&p).unwrap()).unwrap();
        assert_eq!(m.entries, vec![(CString::new("w.x").unwrap(), vec![2.0, 4.0])]);
        assert_eq!((m.chunks, m.datasets), (7, vec!["ds".to_owned()]));
        std::fs::write(&p, &b[..10]).unwrap();
        assert!(imatrix_legacy(&mut std::fs::File::open(&p).unwrap()).is_err());
    }
}
