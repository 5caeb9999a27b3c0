//! Load planning: the settings a model is loaded with. Explicit options win,
//! then tuned thread counts from settings.json, then the device policy (the
//! CPU topology for threads, memory fit for the context and KV type).

use crate::device::{self, ThreadSource};
use crate::host::{CpuTopology, KvType, LoadSettings, MemoryInfo, ModelShape};
use crate::memfit;
use crate::settings::TunedThreads;
use crate::wit::app::{AppError, LoadOptions, MemoryOutlook};

/// Sessions per model: one chat and one translation conversation.
pub const SEQUENCES: u32 = 2;
/// Default logical batch.
pub const DEFAULT_N_BATCH: u32 = 512;

/// How a model is to be loaded, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// What the host is asked for.
    pub settings: LoadSettings,
    /// Where the thread counts came from.
    pub threads_source: ThreadSource,
    /// Whether the model will stay resident.
    pub outlook: MemoryOutlook,
    /// Remarks for the app.
    pub notes: Vec<String>,
}

/// Plan the load of a model of `shape` on this device.
pub fn plan(
    o: &LoadOptions,
    shape: &ModelShape,
    topology: &CpuTopology,
    memory: &MemoryInfo,
    tuned: Option<TunedThreads>,
) -> Result<Plan, AppError> {
    let threads = device::choose_threads(
        &topology.cores,
        topology.online,
        tuned.map(|t| (t.decode, t.batch)),
        o.threads,
        o.threads_batch,
    );
    let n_batch = o.n_batch.unwrap_or(DEFAULT_N_BATCH);
    let fit_shape = memfit::Shape {
        file_size: shape.file_size,
        n_layer: shape.n_layer,
        n_head_kv: shape.n_head_kv,
        head_dim: shape.head_dim,
        n_embd: shape.n_embd,
        n_vocab: shape.n_vocab,
    };
    let fit = memfit::choose(
        &fit_shape,
        memory.available,
        memory.total,
        SEQUENCES,
        n_batch.min(512),
        shape.n_ctx_train,
    );
    let mut notes = Vec::new();
    let (n_ctx, kv_type, outlook) = match fit {
        memfit::Fit::TooBig { need, total } => {
            return Err(AppError::LoadFailed(format!(
                "{} needs {} MiB of memory; this device has {} MiB",
                shape.file_name,
                memfit::mib(need),
                memfit::mib(total)
            )));
        }
        memfit::Fit::Fits { n_ctx, kv_type, need, available } => {
            notes.push(format!(
                "context {n_ctx} per session, KV {}: {} MiB needed, {} MiB available",
                crate::profile::kv_type_name(kv_type),
                memfit::mib(need),
                memfit::mib(available)
            ));
            (n_ctx, kv_type, MemoryOutlook::Resident)
        }
        memfit::Fit::Tight { n_ctx, kv_type, need, available } => {
            notes.push(format!(
                "low memory: {} MiB needed with context {n_ctx}, {} MiB available; the model cannot \
                 stay resident and replies will be slow",
                memfit::mib(need),
                memfit::mib(available)
            ));
            (n_ctx, kv_type, MemoryOutlook::Paging)
        }
    };
    // An explicit context wins over the fit (the outlook still says what the fit found).
    let n_ctx = o.n_ctx.unwrap_or(n_ctx);
    let kv_type = if o.n_ctx.is_some() { KvType::F16 } else { kv_type };
    Ok(Plan {
        settings: LoadSettings {
            n_ctx,
            n_batch,
            n_seq_max: SEQUENCES,
            threads: threads.decode,
            threads_batch: threads.batch,
            use_mmap: o.use_mmap.unwrap_or(true),
            kv_type,
        },
        threads_source: threads.source,
        outlook,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{CpuCore, ModelSource};

    fn options() -> LoadOptions {
        LoadOptions {
            source: ModelSource::Provided,
            n_ctx: None,
            n_batch: None,
            threads: None,
            threads_batch: None,
            use_mmap: None,
        }
    }

    fn tiny_aya() -> ModelShape {
        ModelShape {
            file_name: "tiny-aya-global-q3_k_s.gguf".into(),
            architecture: "cohere2".into(),
            file_size: 1_660_984_928,
            n_layer: 36,
            n_embd: 2048,
            n_head: 16,
            n_head_kv: 4,
            head_dim: 128,
            n_vocab: 262_144,
            n_ctx_train: 8192,
        }
    }

    /// Exynos 1280: CPUs 0-5 A55 @ 2.0 GHz, 6-7 A78 @ 2.4 GHz.
    fn exynos() -> CpuTopology {
        let cores = (0..8)
            .map(|id| CpuCore {
                id,
                online: true,
                max_freq_khz: Some(if id < 6 { 2_002_000 } else { 2_400_000 }),
                capacity: None,
                cluster: None,
            })
            .collect();
        CpuTopology { cores, online: 8 }
    }

    #[test]
    fn the_phone_gets_two_threads_and_a_resident_context() {
        let mem = MemoryInfo { total: 5_500_000_000, available: 2_300_000_000 };
        let p = plan(&options(), &tiny_aya(), &exynos(), &mem, None).unwrap();
        assert_eq!((p.settings.threads, p.threads_source), (2, ThreadSource::Topology));
        assert_eq!(p.outlook, MemoryOutlook::Resident);
        assert_eq!(p.settings.n_seq_max, SEQUENCES);
    }

    #[test]
    fn tuned_threads_and_explicit_options_win() {
        let mem = MemoryInfo { total: 24 << 30, available: 20 << 30 };
        let tuned = Some(TunedThreads { decode: 3, batch: 5 });
        let p = plan(&options(), &tiny_aya(), &exynos(), &mem, tuned).unwrap();
        assert_eq!(
            (p.settings.threads, p.settings.threads_batch, p.threads_source),
            (3, 5, ThreadSource::Tuned)
        );
        let mut o = options();
        o.n_ctx = Some(777);
        o.threads = Some(1);
        let p = plan(&o, &tiny_aya(), &exynos(), &mem, tuned).unwrap();
        assert_eq!(
            (p.settings.n_ctx, p.settings.threads, p.threads_source),
            (777, 1, ThreadSource::Explicit)
        );
    }

    #[test]
    fn too_little_memory_pages_and_says_so_too_small_a_device_refuses() {
        let tight = MemoryInfo { total: 5_500_000_000, available: 1_200_000_000 };
        let p = plan(&options(), &tiny_aya(), &exynos(), &tight, None).unwrap();
        assert_eq!(p.outlook, MemoryOutlook::Paging);
        assert!(p.notes[0].contains("cannot stay resident"), "{:?}", p.notes);
        let tiny = MemoryInfo { total: 1 << 30, available: 700 << 20 };
        assert!(matches!(
            plan(&options(), &tiny_aya(), &exynos(), &tiny, None),
            Err(AppError::LoadFailed(_))
        ));
    }
}
