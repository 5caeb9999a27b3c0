//! Errors of the entry points and how they reach Java: a [`Failure`]
//! (a stable kind and a message) becomes `ai.bittybot.BittyBotException`,
//! a panic becomes one of kind `panic`, and a Java exception already
//! pending (e.g. from a failed JNI call) is left to propagate as it is.

use bittybot_host::{ErrorKind, ServiceError, SessionKind};
use jni::errors::ErrorPolicy;
use jni::objects::{JString, JThrowable};
use jni::refs::Reference as _;
use jni::sys::jint;
use jni::{Env, JValue, jni_sig, jni_str};

/// Why an entry point failed: the exception's `kind()` and message.
#[derive(Debug)]
pub struct Failure {
    /// An [`ErrorKind`] string, or `jni` for a failed JNI call.
    pub kind: &'static str,
    /// For people.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure { kind: kind.as_str(), message: message.into() }
    }
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        Failure { kind: e.kind.as_str(), message: e.message }
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure { kind: "jni", message: e.to_string() }
    }
}

/// The error policy of every entry point: errors and panics become a
/// `BittyBotException`, and the entry point returns 0/null.
#[derive(Debug)]
pub struct ThrowBittyBot;

impl<T: Default> ErrorPolicy<T, Failure> for ThrowBittyBot {
    type Captures<'unowned_env_local: 'native_method, 'native_method> = ();

    fn on_error<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        err: Failure,
    ) -> jni::errors::Result<T> {
        throw(env, err.kind, &err.message)?;
        Ok(T::default())
    }

    fn on_panic<'unowned_env_local: 'native_method, 'native_method>(
        env: &mut Env<'unowned_env_local>,
        _cap: &mut Self::Captures<'unowned_env_local, 'native_method>,
        payload: Box<dyn std::any::Any + Send + 'static>,
    ) -> jni::errors::Result<T> {
        let message = bittybot_host::panic_message(payload.as_ref());
        throw(env, ErrorKind::Panic.as_str(), &format!("native code panicked: {message}"))?;
        Ok(T::default())
    }
}

/// Throw `new BittyBotException(kind, message)`, unless an exception is already pending.
fn throw(env: &mut Env<'_>, kind: &str, message: &str) -> jni::errors::Result<()> {
    if env.exception_check() {
        return Ok(());
    }
    let kind = env.new_string(kind)?;
    let message = env.new_string(message)?;
    let exception = env.new_object(
        jni_str!("ai/bittybot/BittyBotException"),
        jni_sig!("(Ljava/lang/String;Ljava/lang/String;)V"),
        &[JValue::Object(&kind), JValue::Object(&message)],
    )?;
    let exception = env.cast_local::<JThrowable>(exception)?;
    match env.throw(exception) {
        Ok(()) | Err(jni::errors::Error::JavaException) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A Java string argument that must not be null.
pub fn required_string(env: &Env<'_>, s: &JString<'_>, name: &str) -> Result<String, Failure> {
    optional_string(env, s)?
        .ok_or_else(|| Failure::new(ErrorKind::InvalidArgument, format!("{name} must not be null")))
}

/// A Java string argument that may be null.
pub fn optional_string(env: &Env<'_>, s: &JString<'_>) -> Result<Option<String>, Failure> {
    if s.is_null() {
        return Ok(None);
    }
    Ok(Some(s.try_to_string(env)?))
}

/// `BittyBot.CHAT` (0) or `BittyBot.TRANSLATION` (1).
pub fn session_kind(kind: jint) -> Result<SessionKind, Failure> {
    match kind {
        0 => Ok(SessionKind::Chat),
        1 => Ok(SessionKind::Translation),
        other => Err(Failure::new(
            ErrorKind::InvalidArgument,
            format!("unknown session kind {other} (BittyBot.CHAT = 0, BittyBot.TRANSLATION = 1)"),
        )),
    }
}
