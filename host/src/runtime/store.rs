//! The store of one guest instance and what it is linked with.
//!
//! The guest gets WASI p2 minus everything ambient: no preopened folders
//! (its files go through the `storage` import), no network, no environment,
//! no arguments; stdout and stderr go to the host's stderr. Its sleeps are
//! clamped to the time left in the current call (wasmtime-wasi's own
//! `subscribe-duration` / `subscribe-instant` are shadowed), its memory is
//! capped, and the epoch callback stops it when a call's guest time is
//! spent (see `clock.rs`).

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine, StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::clocks::WasiClocksView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host as MonotonicClock;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::clock::CallClock;
use crate::imports::TypesCtx;
use crate::imports::download::DownloadCtx;
use crate::imports::files::FilesCtx;
use crate::imports::inference::InferenceCtx;
use crate::imports::platform::PlatformCtx;
use crate::imports::storage::StorageCtx;

/// How often the epoch advances; the granularity of the call budget.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The WASI clocks interface wasmtime-wasi 48 registers (guests importing
/// any 0.2.x resolve to it).
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The store's data: small contexts, one per imported interface.
pub(crate) struct StoreData {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) inference: InferenceCtx,
    pub(crate) platform: PlatformCtx,
    pub(crate) storage: StorageCtx,
    pub(crate) files: FilesCtx,
    pub(crate) download: DownloadCtx,
    pub(crate) types: TypesCtx,
    pub(crate) limits: StoreLimits,
    pub(crate) clock: CallClock,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The guest's WASI context: nothing ambient.
pub(crate) fn wasi() -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(wasmtime_wasi::cli::stderr())
        .stderr(wasmtime_wasi::cli::stderr())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The store's resource limits.
pub(crate) fn store_limits(memory: usize) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size(memory)
        .instances(4)
        .tables(16)
        .memories(4)
        .trap_on_grow_failure(true)
        .build()
}

macro_rules! has_data {
    ($($name:ident => $ty:ty),* $(,)?) => {
        $(
            struct $name;
            impl HasData for $name {
                type Data<'a> = &'a mut $ty;
            }
        )*
    };
}

has_data! {
    InferenceData => InferenceCtx,
    PlatformData => PlatformCtx,
    StorageData => StorageCtx,
    FilesData => FilesCtx,
    DownloadData => DownloadCtx,
    TypesData => TypesCtx,
}

/// A sleep of `ns` nanoseconds, clamped to the call's remaining guest time;
/// with none left the call stops here.
fn clamped_sleep(
    mut s: StoreContextMut<'_, StoreData>,
    ns: u64,
) -> wasmtime::Result<(Resource<DynPollable>,)> {
    if let Some(why) = s.data().clock.over_budget() {
        return Err(wasmtime::Error::msg(why));
    }
    let left = s.data().clock.remaining().as_nanos() as u64;
    let mut clocks = s.data_mut().clocks();
    Ok((MonotonicClock::subscribe_duration(&mut clocks, ns.min(left))?,))
}

/// The linker: WASI (with clamped sleeps) and the `bittybot:core` imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<StoreData>> {
    let mut linker = Linker::<StoreData>::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    linker.allow_shadowing(true);
    {
        let mut clocks = linker.instance(WASI_CLOCKS)?;
        clocks.func_wrap("subscribe-duration", |s, (ns,): (u64,)| clamped_sleep(s, ns))?;
        clocks.func_wrap("subscribe-instant", |mut s: StoreContextMut<'_, StoreData>, (when,): (u64,)| {
            let now = MonotonicClock::now(&mut s.data_mut().clocks())?;
            clamped_sleep(s, when.saturating_sub(now))
        })?;
    }
    linker.allow_shadowing(false);
    use crate::bindings::{download, files, inference, platform, storage, types};
    inference::add_to_linker::<_, InferenceData>(&mut linker, |s| &mut s.inference)?;
    platform::add_to_linker::<_, PlatformData>(&mut linker, |s| &mut s.platform)?;
    storage::add_to_linker::<_, StorageData>(&mut linker, |s| &mut s.storage)?;
    files::add_to_linker::<_, FilesData>(&mut linker, |s| &mut s.files)?;
    download::add_to_linker::<_, DownloadData>(&mut linker, |s| &mut s.download)?;
    types::add_to_linker::<_, TypesData>(&mut linker, |s| &mut s.types)?;
    Ok(linker)
}

/// The process-wide engine, with epoch interruption driven by a ticker thread.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            // The configuration is fixed; failing here is a host build bug.
            Err(e) => panic!("wasmtime engine configuration rejected: {e:#}"),
        };
        let ticker = engine.weak();
        let _ = std::thread::Builder::new().name("bittybot-epoch".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
        engine
    })
}
