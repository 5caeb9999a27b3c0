//! BittyBot's Android host: the JNI library behind the Java class
//! `ai.bittybot.BittyBot` (sources in `android-host/java/`), a thin layer
//! over [`bittybot_host::Service`].
//!
//! Build and test on the desktop JVM: `scripts/jvm-test.sh` (it runs
//! `cargo build --release -p bittybot-android`, compiles the Java API and
//! `java-test/` with `javac`, and runs the test on the real library, guest
//! and demo model). Android: `scripts/build-android.sh` (needs an NDK).
//!
//! Every `extern "system"` entry point converts its arguments, calls one
//! method of a registered `Instance` and returns. Each runs inside
//! `EnvUnowned::with_env`, which wraps it in `catch_unwind`; the
//! `ThrowBittyBot` error policy turns an error into a `BittyBotException`
//! with a kind and a panic into one of kind `panic`. Handles are ids in a
//! registry of live instances (`registry.rs`), so a closed or made-up handle
//! is a `closed` exception, never a dangling pointer.
//!
//! Threads: listeners run on the service thread, which attaches itself to
//! the JVM on its first callback and detaches when it ends (`close()`).

mod errors;
mod listeners;
mod registry;

use jni::EnvUnowned;
use jni::objects::{JClass, JObject, JString};
use jni::sys::{jboolean, jfloat, jint, jlong};

use crate::errors::{Failure, ThrowBittyBot, optional_string, required_string, session_kind};
use crate::listeners::{JavaReplyListener, JavaStateListener};

/// `static long nativeCreate(String dataDir, String guestPath)`: a new instance; `guestPath` null = built-in guest.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeCreate<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    data_dir: JString<'l>,
    guest: JString<'l>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, Failure> {
        let data_dir = required_string(env, &data_dir, "dataDir")?;
        let guest = optional_string(env, &guest)?;
        Ok(registry::create(data_dir.into(), guest.map(Into::into)))
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeSetModelPath(long handle, String path)`: the model file to load (before `start`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeSetModelPath<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    path: JString<'l>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let path = required_string(env, &path, "path")?;
        registry::get(handle)?.set_model_path(path.into())
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeSetModelSpec(long handle, String json)`: the model spec to download (before `start`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeSetModelSpec<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    json: JString<'l>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let json = required_string(env, &json, "json")?;
        registry::get(handle)?.set_model_spec(json)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeAllowDownloads(long handle, String urlPrefix, boolean allowPrivate)`: widen the network policy (before `start`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeAllowDownloads<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    prefix: JString<'l>,
    allow_private: jboolean,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let prefix = required_string(env, &prefix, "urlPrefix")?;
        registry::get(handle)?.allow_downloads(prefix, allow_private)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeConfigure(long handle, int kind, int maxTokens, float temperature)`; negative = unchanged.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeConfigure<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    kind: jint,
    max_tokens: jint,
    temperature: jfloat,
) {
    env.with_env(|_env| -> Result<(), Failure> {
        registry::get(handle)?.configure(session_kind(kind)?, max_tokens, temperature)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeStart(long handle, StateListener listener)`: returns at once; states go to `listener`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeStart<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    listener: JObject<'l>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let instance = registry::get(handle)?;
        instance.start(JavaStateListener::new(env, &listener)?)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeSend(long handle, int kind, String text, ReplyBridge reply)`: queues a turn.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeSend<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    kind: jint,
    text: JString<'l>,
    reply: JObject<'l>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let instance = registry::get(handle)?;
        let (kind, text) = (session_kind(kind)?, required_string(env, &text, "text")?);
        instance.send(kind, text, JavaReplyListener::new(env, &reply)?)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeCancel(long handle)`: cancels the reply in progress and queued turns.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeCancel<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    env.with_env(|_env| -> Result<(), Failure> { registry::get(handle)?.cancel() }).resolve::<ThrowBittyBot>()
}

/// `static void nativeReset(long handle, int kind)`: forgets a session's history.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeReset<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    kind: jint,
) {
    env.with_env(|_env| -> Result<(), Failure> { registry::get(handle)?.reset(session_kind(kind)?) })
        .resolve::<ThrowBittyBot>()
}

/// `static void nativeSetTranslationPair(long handle, String from, String to)`; `from` null = detect.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeSetTranslationPair<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
    from: JString<'l>,
    to: JString<'l>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let (from, to) = (optional_string(env, &from)?, required_string(env, &to, "to")?);
        registry::get(handle)?.set_translation_pair(from, to)
    })
    .resolve::<ThrowBittyBot>()
}

/// `static void nativeClose(long handle)`: stops the instance and frees the handle.
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeClose<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    env.with_env(|_env| -> Result<(), Failure> { registry::close(handle) }).resolve::<ThrowBittyBot>()
}

/// `static native void nativeTestPanic()`: the JVM test's entry point (built
/// only with the `jvm-test` feature, never into an app); panics so the test
/// can check that a panic becomes a `BittyBotException` of kind `panic`.
#[cfg(feature = "jvm-test")]
#[unsafe(no_mangle)]
pub extern "system" fn Java_ai_bittybot_BittyBot_nativeTestPanic<'l>(
    mut env: EnvUnowned<'l>,
    _class: JClass<'l>,
) {
    env.with_env(|_env| -> Result<(), Failure> { panic!("forced panic (test entry point)") })
        .resolve::<ThrowBittyBot>()
}
