//! The byte-level reader of a GGUF file: bounded by the declared size and
//! a budget for metadata, so no value the file declares makes the host
//! read or allocate more than that.

use std::io::Read;

use super::{Array, GgufError, MAX_ARRAY, MAX_STRING, METADATA_BUDGET, Value, malformed};

/// A reader that never reads past the declared file size.
pub(super) struct Src<'a, R> {
    r: &'a mut R,
    pos: u64,
    size: u64,
    budget: u64,
}

impl<'a, R: Read> Src<'a, R> {
    /// Read `r`, a file of `size` bytes, from its start, within the metadata budget.
    pub(super) fn new(r: &'a mut R, size: u64) -> Self {
        Src { r, pos: 0, size, budget: METADATA_BUDGET }
    }

    /// Bytes read so far.
    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    fn remaining(&self) -> u64 {
        self.size.saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated(format!(
                "{what} needs {n} bytes at offset {}, the file has {}",
                self.pos, self.size
            )));
        }
        let mut buf = vec![0; n as usize];
        self.r.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                GgufError::Truncated(format!("{what} at offset {}", self.pos))
            }
            _ => GgufError::Io(e.to_string()),
        })?;
        self.pos += n;
        Ok(buf)
    }

    pub(super) fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let v = self.bytes(N as u64, what)?;
        Ok(v.try_into().expect("N bytes"))
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    fn charge(&mut self, bytes: u64) -> Result<(), GgufError> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            GgufError::Unsupported(format!(
                "the metadata would take more than {} MiB of memory",
                METADATA_BUDGET >> 20
            ))
        })?;
        Ok(())
    }

    pub(super) fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(malformed(format!("{what}: a string of {len} bytes")));
        }
        self.charge(len + 32)?;
        String::from_utf8(self.bytes(len, what)?).map_err(|_| malformed(format!("{what} is not UTF-8")))
    }

    pub(super) fn scalar(&mut self, code: u32, what: &str) -> Result<Value, GgufError> {
        Ok(match code {
            0 => Value::U8(u8::from_le_bytes(self.fixed(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.fixed(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.fixed(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.fixed(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.fixed(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.fixed(what)?)),
            7 => match u8::from_le_bytes(self.fixed(what)?) {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(malformed(format!("{what}: bool {b}"))),
            },
            8 => Value::Str(self.string(what)?),
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.fixed(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.fixed(what)?)),
            _ => return Err(malformed(format!("{what}: value type {code}"))),
        })
    }

    pub(super) fn array(&mut self, what: &str) -> Result<Array, GgufError> {
        let code = self.u32(what)?;
        let n = self.u64(what)?;
        let elem = match code {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(malformed(format!("{what}: an array of arrays"))),
            _ => return Err(malformed(format!("{what}: array type {code}"))),
        };
        if n > MAX_ARRAY || n.saturating_mul(elem) > self.remaining() {
            return Err(GgufError::Truncated(format!("{what}: {n} elements do not fit in the file")));
        }
        if code == 8 {
            self.charge(n * 24)?;
            let mut v = Vec::with_capacity(n as usize);
            for _ in 0..n {
                v.push(self.string(what)?);
            }
            return Ok(Array::Str(v));
        }
        self.charge(n * elem)?;
        let raw = self.bytes(n * elem, what)?;
        macro_rules! each {
            ($t:ty, $variant:ident) => {
                Array::$variant(
                    raw.chunks_exact(elem as usize)
                        .map(|b| <$t>::from_le_bytes(b.try_into().expect("size")))
                        .collect(),
                )
            };
        }
        Ok(match code {
            0 => Array::U8(raw),
            1 => each!(i8, I8),
            2 => each!(u16, U16),
            3 => each!(i16, I16),
            4 => each!(u32, U32),
            5 => each!(i32, I32),
            6 => each!(f32, F32),
            7 => Array::Bool(
                raw.iter()
                    .map(|&b| if b <= 1 { Ok(b == 1) } else { Err(malformed(format!("{what}: bool {b}"))) })
                    .collect::<Result<_, _>>()?,
            ),
            10 => each!(u64, U64),
            11 => each!(i64, I64),
            _ => each!(f64, F64),
        })
    }
}
