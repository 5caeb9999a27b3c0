//! TEMPORARY stub until the real reader lands (same API).
/// A value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value { U32(u32), Str(String), Array(Array) }
/// An array.
#[derive(Debug, Clone, PartialEq)]
pub enum Array { Str(Vec<String>), U32(Vec<u32>) }
/// Tensor.
#[derive(Debug, Clone)]
pub struct TensorInfo { pub name: String, pub dims: Vec<u64>, pub ggml_type: u32, pub offset: u64, pub size: u64 }
/// File.
#[derive(Debug, Clone)]
pub struct Gguf { pub tensors: Vec<TensorInfo>, pub metadata: Vec<(String, Value)> }
/// Shape.
pub struct ModelShape { pub architecture: String, pub file_size: u64, pub n_layer: u32, pub n_embd: u32, pub n_head: u32, pub n_head_kv: u32, pub head_dim: u32, pub n_vocab: u32, pub n_ctx_train: u32 }
/// Err.
#[derive(Debug, thiserror::Error)]
#[error("gguf")]
pub struct GgufError;
impl Gguf {
    /// Read.
    pub fn read(_r: &mut impl std::io::Read, _s: u64) -> Result<Gguf, GgufError> { Err(GgufError) }
    /// Arch.
    pub fn architecture(&self) -> Option<&str> { None }
    /// Get.
    pub fn get(&self, _k: &str) -> Option<&Value> { None }
    /// Uint.
    pub fn uint(&self, _k: &str) -> Option<u64> { None }
    /// Tensor.
    pub fn tensor(&self, _k: &str) -> Option<&TensorInfo> { None }
    /// Shape.
    pub fn shape(&self) -> Result<ModelShape, GgufError> { Err(GgufError) }
    /// Validate.
    pub fn validate_model(&self, _a: &[&str]) -> Result<(), GgufError> { Ok(()) }
}
