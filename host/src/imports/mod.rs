//! One module per imported WIT interface, each holding exactly that
//! interface's `Host` implementation on its own small context.

pub mod download;
pub mod files;
pub mod inference;
pub mod platform;
pub mod storage;

/// The `types` interface defines only types.
pub struct TypesCtx;

impl crate::bindings::types::Host for TypesCtx {}
