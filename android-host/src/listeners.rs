//! The Java listeners, called from the service thread.
//!
//! The service thread is attached to the JVM on its first callback (a
//! permanent attachment, detached when the thread ends at `close()`); each
//! callback runs in its own local reference frame. Listener objects are
//! held as global references. A Java exception thrown by a callback is
//! caught and cleared by the attachment (`Error::CaughtJavaException`):
//! from `onChunk` it cancels the reply, which then ends with `onError`
//! of kind `listener`; from any other callback it is printed to stderr.

use bittybot_host::{
    GenerationStats, MemoryOutlook, ReplyListener, ServiceError, ServiceState, StateListener, StopReason,
};
use jni::objects::JObject;
use jni::refs::{Global, Reference as _};
use jni::vm::JavaVM;
use jni::{Env, JValue, jni_sig, jni_str};

use crate::errors::Failure;

/// A global reference to a non-null listener and the VM to call it in.
struct Target {
    vm: JavaVM,
    object: Global<JObject<'static>>,
}

impl Target {
    fn new(env: &mut Env<'_>, object: &JObject<'_>, what: &str) -> Result<Self, Failure> {
        if object.is_null() {
            return Err(Failure::new(
                bittybot_host::ErrorKind::InvalidArgument,
                format!("{what} must not be null"),
            ));
        }
        Ok(Target { vm: env.get_java_vm()?, object: env.new_global_ref(object)? })
    }

    /// Run `f` with the thread attached; a Java exception comes back as an error.
    fn call(
        &self,
        f: impl FnOnce(&mut Env<'_>, &JObject<'static>) -> jni::errors::Result<()>,
    ) -> Result<(), String> {
        self.vm.attach_current_thread(|env| f(env, self.object.as_obj())).map_err(|e| match e {
            jni::errors::Error::CaughtJavaException { name, msg, .. } => format!("{name}: {msg}"),
            other => other.to_string(),
        })
    }
}

fn report(what: &str, result: Result<(), String>) {
    if let Err(e) = result {
        eprintln!("bittybot: {what} failed: {e}");
    }
}

/// An `ai.bittybot.StateListener`.
pub struct JavaStateListener(Target);

impl JavaStateListener {
    /// Hold `listener` (non-null) for calls from the service thread.
    pub fn new(env: &mut Env<'_>, listener: &JObject<'_>) -> Result<Self, Failure> {
        Ok(JavaStateListener(Target::new(env, listener, "listener")?))
    }
}

impl StateListener for JavaStateListener {
    fn on_state(&self, state: &ServiceState) {
        let result = self.0.call(|env, l| {
            match state {
                ServiceState::Checking => env.call_method(l, jni_str!("onChecking"), jni_sig!("()V"), &[])?,
                ServiceState::Downloading { done, total, bytes_per_s, .. } => env.call_method(
                    l,
                    jni_str!("onDownloading"),
                    jni_sig!("(JJD)V"),
                    &[JValue::Long(clamp(*done)), JValue::Long(clamp(*total)), JValue::Double(*bytes_per_s)],
                )?,
                ServiceState::Verifying { done, total } => env.call_method(
                    l,
                    jni_str!("onVerifying"),
                    jni_sig!("(JJ)V"),
                    &[JValue::Long(clamp(*done)), JValue::Long(clamp(*total))],
                )?,
                ServiceState::Loading => env.call_method(l, jni_str!("onLoading"), jni_sig!("()V"), &[])?,
                ServiceState::Ready(info) => {
                    let summary = env.new_string(info.summary())?;
                    env.call_method(
                        l,
                        jni_str!("onReady"),
                        jni_sig!("(Ljava/lang/String;)V"),
                        &[JValue::Object(&summary)],
                    )?
                }
                ServiceState::Error(e) => call_error(env, l, e)?,
            };
            Ok(())
        });
        report("the state listener", result);
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn call_error<'l>(
    env: &mut Env<'l>,
    l: &JObject<'_>,
    e: &ServiceError,
) -> jni::errors::Result<jni::JValueOwned<'l>> {
    let kind = env.new_string(e.kind.as_str())?;
    let message = env.new_string(&e.message)?;
    env.call_method(
        l,
        jni_str!("onError"),
        jni_sig!("(Ljava/lang/String;Ljava/lang/String;)V"),
        &[JValue::Object(&kind), JValue::Object(&message)],
    )
}

/// An `ai.bittybot.ReplyBridge` (which builds the `Stats` object in Java
/// and forwards to the app's `ReplyListener`).
pub struct JavaReplyListener(Target);

impl JavaReplyListener {
    /// Hold `bridge` (non-null) for calls from the service thread.
    pub fn new(env: &mut Env<'_>, bridge: &JObject<'_>) -> Result<Self, Failure> {
        Ok(JavaReplyListener(Target::new(env, bridge, "listener")?))
    }
}

fn stop_name(stop: StopReason) -> &'static str {
    match stop {
        StopReason::EndOfGeneration => "end-of-generation",
        StopReason::MaxTokens => "max-tokens",
        StopReason::StopString => "stop-string",
        StopReason::Cancelled => "cancelled",
    }
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl ReplyListener for JavaReplyListener {
    fn on_chunk(&mut self, text: &str) -> Result<(), String> {
        self.0.call(|env, l| {
            let text = env.new_string(text)?;
            env.call_method(
                l,
                jni_str!("onChunk"),
                jni_sig!("(Ljava/lang/String;)V"),
                &[JValue::Object(&text)],
            )?;
            Ok(())
        })
    }

    fn on_done(&mut self, s: &GenerationStats) {
        let result = self.0.call(|env, l| {
            let stop = env.new_string(stop_name(s.stop))?;
            env.call_method(
                l,
                jni_str!("onDone"),
                jni_sig!("(Ljava/lang/String;IIIIDDDDDZZ)V"),
                &[
                    JValue::Object(&stop),
                    JValue::Int(int(s.prompt_tokens)),
                    JValue::Int(int(s.generated_tokens)),
                    JValue::Int(int(s.kv_tokens)),
                    JValue::Int(int(s.dropped_turns)),
                    JValue::Double(s.ttft_ms),
                    JValue::Double(s.prompt_ms),
                    JValue::Double(s.decode_ms),
                    JValue::Double(s.prompt_tokens_per_s),
                    JValue::Double(s.decode_tokens_per_s),
                    JValue::Bool(s.prefix_cached),
                    JValue::Bool(s.outlook == MemoryOutlook::Resident),
                ],
            )?;
            Ok(())
        });
        report("the reply listener's onDone", result);
    }

    fn on_error(&mut self, e: &ServiceError) {
        let result = self.0.call(|env, l| call_error(env, l, e).map(|_| ()));
        report("the reply listener's onError", result);
    }
}
