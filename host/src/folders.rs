//! The guest's folders: `models/` and `state/` under the app's data
//! directory, plus the one model file the host was started with. Every
//! file name the guest sends is checked to stay inside its folder.

use std::path::{Path, PathBuf};

use crate::bindings::types::{FileRef, ModelSource, Root};

/// Where the guest's folders are on this device.
#[derive(Debug, Clone)]
pub struct Folders {
    /// Model files.
    pub models: PathBuf,
    /// Settings and caches.
    pub state: PathBuf,
    /// The model file chosen by the user of the host (e.g. `-m FILE`).
    pub provided_model: Option<PathBuf>,
}

/// A file name the guest may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a single plain path component.
    #[error("`{0}` is not a plain file name (no folders, no `..`)")]
    NotPlain(String),
    /// No model file was given to the host.
    #[error("no model file was provided to the host")]
    NoProvidedModel,
}

impl Folders {
    /// The folders under a data directory.
    pub fn under(data_dir: &Path, provided_model: Option<PathBuf>) -> Self {
        Folders { models: data_dir.join("models"), state: data_dir.join("state"), provided_model }
    }

    /// Create the folders if needed.
    pub fn create(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.models)?;
        std::fs::create_dir_all(&self.state)
    }

    fn root(&self, root: Root) -> &Path {
        match root {
            Root::Models => &self.models,
            Root::State => &self.state,
        }
    }

    /// The host path of a guest file reference.
    pub fn resolve(&self, file: &FileRef) -> Result<PathBuf, NameError> {
        check_plain_name(&file.name)?;
        Ok(self.root(file.root).join(&file.name))
    }

    /// The host path of a model source.
    pub fn model_path(&self, source: &ModelSource) -> Result<PathBuf, NameError> {
        match source {
            ModelSource::Managed(name) => {
                check_plain_name(name)?;
                Ok(self.models.join(name))
            }
            ModelSource::Provided => self.provided_model.clone().ok_or(NameError::NoProvidedModel),
        }
    }
}

/// Accept only a single normal path component.
pub fn check_plain_name(name: &str) -> Result<(), NameError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    if plain { Ok(()) } else { Err(NameError::NotPlain(name.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_resolve() {
        let f = Folders::under(Path::new("/data"), None);
        let ok = f.resolve(&FileRef { root: Root::State, name: "settings.json".into() }).unwrap();
        assert_eq!(ok, Path::new("/data/state/settings.json"));
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\0b"] {
            assert!(f.resolve(&FileRef { root: Root::Models, name: bad.into() }).is_err(), "{bad:?}");
        }
        assert_eq!(f.model_path(&ModelSource::Provided), Err(NameError::NoProvidedModel));
    }
}
