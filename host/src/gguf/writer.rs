//! Writing the small GGUF files the tools produce.

use std::io::Write;

use super::{Array, DEFAULT_ALIGNMENT, GGML_TYPE_F32, Value, pad};

/// Writes a GGUF (version 3) file of metadata and F32 tensors.
#[derive(Debug, Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    macro_rules! each {
        ($code:expr, $v:expr) => {{
            out.extend(($code as u32).to_le_bytes());
            out.extend(($v.len() as u64).to_le_bytes());
            for x in $v {
                out.extend(x.to_le_bytes());
            }
        }};
    }
    match a {
        Array::U8(v) => each!(0, v),
        Array::I8(v) => each!(1, v),
        Array::U16(v) => each!(2, v),
        Array::I16(v) => each!(3, v),
        Array::U32(v) => each!(4, v),
        Array::I32(v) => each!(5, v),
        Array::F32(v) => each!(6, v),
        Array::Bool(v) => each!(7, v.iter().map(|&b| u8::from(b)).collect::<Vec<_>>()),
        Array::Str(v) => {
            out.extend(8u32.to_le_bytes());
            out.extend((v.len() as u64).to_le_bytes());
            for s in v {
                put_str(out, s);
            }
        }
        Array::U64(v) => each!(10, v),
        Array::I64(v) => each!(11, v),
        Array::F64(v) => each!(12, v),
    }
}

impl Writer {
    /// An empty file.
    pub fn new() -> Self {
        Writer::default()
    }

    /// Add a key-value.
    pub fn kv(&mut self, key: &str, value: Value) {
        self.metadata.push((key.to_owned(), value));
    }

    /// Add an F32 tensor of `dims` (innermost first).
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], data: Vec<f32>) {
        self.tensors.push((name.to_owned(), dims.to_vec(), data));
    }

    /// Write the file.
    pub fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend(v.code().to_le_bytes());
            match v {
                Value::U8(x) => out.extend(x.to_le_bytes()),
                Value::I8(x) => out.extend(x.to_le_bytes()),
                Value::U16(x) => out.extend(x.to_le_bytes()),
                Value::I16(x) => out.extend(x.to_le_bytes()),
                Value::U32(x) => out.extend(x.to_le_bytes()),
                Value::I32(x) => out.extend(x.to_le_bytes()),
                Value::F32(x) => out.extend(x.to_le_bytes()),
                Value::Bool(x) => out.push(u8::from(*x)),
                Value::Str(s) => put_str(&mut out, s),
                Value::Array(a) => put_array(&mut out, a),
                Value::U64(x) => out.extend(x.to_le_bytes()),
                Value::I64(x) => out.extend(x.to_le_bytes()),
                Value::F64(x) => out.extend(x.to_le_bytes()),
            }
        }
        let mut offset = 0u64;
        for (name, dims, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(GGML_TYPE_F32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = pad(offset + data.len() as u64 * 4, DEFAULT_ALIGNMENT).expect("small");
        }
        for (_, _, data) in &self.tensors {
            out.resize(pad(out.len() as u64, DEFAULT_ALIGNMENT).expect("small") as usize, 0);
            for x in data {
                out.extend(x.to_le_bytes());
            }
        }
        w.write_all(&out)
    }
}
