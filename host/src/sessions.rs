//! The app's two conversations — one chat, one translation session — each
//! opened on first use with the settings given so far, in order. The CLI's
//! interactive chat and the [`Service`](crate::Service) (so the Android
//! library) both keep their sessions here.

use crate::bindings::app::{SessionKind, SessionOptions};
use crate::errors::RuntimeError;
use crate::runtime::{Runtime, Session};

/// One kind's session and the settings to apply when it opens.
#[derive(Debug, Default)]
struct Slot {
    session: Option<Session>,
    options: Vec<SessionOptions>,
    languages: Option<(Option<String>, String)>,
}

/// The chat and translation sessions of an app.
#[derive(Debug, Default)]
pub struct Sessions {
    chat: Slot,
    translation: Slot,
}

impl Sessions {
    fn slot(&mut self, kind: SessionKind) -> &mut Slot {
        match kind {
            SessionKind::Chat => &mut self.chat,
            SessionKind::Translation => &mut self.translation,
        }
    }

    /// Change a session's settings: now if it is open, else when it opens.
    pub fn configure(
        &mut self,
        rt: &mut Runtime,
        kind: SessionKind,
        options: SessionOptions,
    ) -> Result<(), RuntimeError> {
        let slot = self.slot(kind);
        match &slot.session {
            Some(s) => rt.configure(s, &options),
            None => {
                slot.options.push(options);
                Ok(())
            }
        }
    }

    /// The translation session's language pair: now if it is open, else when it opens.
    pub fn set_languages(
        &mut self,
        rt: &mut Runtime,
        source: Option<String>,
        target: String,
    ) -> Result<(), RuntimeError> {
        let slot = self.slot(SessionKind::Translation);
        match &slot.session {
            Some(s) => rt.set_languages(s, source.as_deref(), &target),
            None => {
                slot.languages = Some((source, target));
                Ok(())
            }
        }
    }

    /// Forget a session's conversation (nothing to do if it never opened).
    pub fn reset(&mut self, rt: &mut Runtime, kind: SessionKind) -> Result<(), RuntimeError> {
        match &self.slot(kind).session {
            Some(s) => rt.reset(s),
            None => Ok(()),
        }
    }

    /// The session of `kind`, opened now if needed with the settings given so far.
    pub fn session(&mut self, rt: &mut Runtime, kind: SessionKind) -> Result<&Session, RuntimeError> {
        let slot = self.slot(kind);
        if slot.session.is_none() {
            let session = rt.open_session(kind)?;
            let mut applied = Ok(());
            for options in slot.options.drain(..) {
                applied = applied.and_then(|()| rt.configure(&session, &options));
            }
            if let Some((source, target)) = slot.languages.take() {
                applied = applied.and_then(|()| rt.set_languages(&session, source.as_deref(), &target));
            }
            slot.session = Some(session);
            applied?;
        }
        slot.session.as_ref().ok_or_else(|| RuntimeError::Trap("no session".into()))
    }

    /// Close both sessions.
    pub fn close(&mut self, rt: &mut Runtime) {
        for slot in [&mut self.chat, &mut self.translation] {
            if let Some(s) = slot.session.take() {
                let _ = rt.close_session(s);
            }
        }
    }

    /// Drop the sessions without a runtime (it is gone); their settings stay for the next one.
    pub fn forget(&mut self) {
        self.chat.session = None;
        self.translation.session = None;
    }
}
