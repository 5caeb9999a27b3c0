//! The host side of the `bittybot:core` WIT package, generated once here.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "bittybot",
    imports: {
        // Only a host failure (the resource table full) makes these trap.
        "bittybot:core/files.[constructor]hasher": trappable,
        "bittybot:core/files.[constructor]warmup": trappable,
        "bittybot:core/download.[constructor]transfer": trappable,
    },
    additional_derives: [PartialEq],
    with: {
        "bittybot:core/inference.sampler": crate::imports::inference::SamplerHandle,
        "bittybot:core/inference.kv-snapshot": crate::imports::inference::SnapshotHandle,
        "bittybot:core/files.hasher": crate::imports::files::HashJob,
        "bittybot:core/files.warmup": crate::imports::files::WarmupJob,
        "bittybot:core/download.transfer": crate::imports::download::TransferJob,
    },
});

pub use bittybot::core::{download, files, inference, platform, storage, types};
pub use exports::bittybot::core::app;
