//! Which runtime runs the model, from command-line and config values: one
//! place for `emogate run` and the benchmark binaries.

use std::path::PathBuf;

use emogate_infer::BackendChoice;

/// The runtime settings a user gives (flags, then the config file).
#[derive(Debug, Clone, Default)]
pub struct BackendSettings {
    /// `tract` (default) or `ort`.
    pub backend: Option<String>,
    /// Inference threads (default 1).
    pub threads: Option<usize>,
    /// ONNX Runtime execution providers, best first (`tensorrt,cuda,cpu`).
    pub ep: Option<String>,
    /// Fail instead of falling back when a provider cannot be used.
    pub ep_strict: bool,
    /// `libonnxruntime.so` (default: `$ORT_DYLIB_PATH`).
    pub ort_lib: Option<PathBuf>,
    /// TensorRT engine and timing cache folder.
    pub trt_cache: Option<PathBuf>,
}

/// A backend setting that cannot be honoured.
#[derive(Debug, thiserror::Error)]
pub enum BackendSettingError {
    #[error("--backend `{0}`: expected tract or ort")]
    Unknown(String),
    #[error(
        "--backend ort: this emogate was built without ONNX Runtime support; rebuild with `--features ort`"
    )]
    NotBuilt,
    #[error(transparent)]
    Provider(#[from] emogate_infer::backend::BackendError),
}

impl BackendSettings {
    /// The threads to use (1 unless set).
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or(1)
    }

    /// The [`BackendChoice`] these settings describe.
    ///
    /// # Errors
    /// [`BackendSettingError::Unknown`] for a backend name other than
    /// `tract` or `ort`; [`BackendSettingError::NotBuilt`] for `ort` in a
    /// build without the `ort` feature; [`BackendSettingError::Provider`]
    /// for an unknown execution provider.
    pub fn choice(&self) -> Result<BackendChoice, BackendSettingError> {
        let threads = self.threads();
        match self.backend.as_deref().unwrap_or("tract") {
            "tract" => Ok(BackendChoice::Tract { threads }),
            #[cfg(feature = "ort")]
            "ort" => {
                use emogate_infer::backend::ort::{OrtOptions, parse_providers};
                Ok(BackendChoice::Ort(OrtOptions {
                    library: self.ort_lib.clone(),
                    providers: parse_providers(self.ep.as_deref().unwrap_or("cpu"))?,
                    strict: self.ep_strict,
                    trt_fp16: true,
                    trt_cache_dir: self.trt_cache.clone(),
                    threads,
                }))
            }
            #[cfg(not(feature = "ort"))]
            "ort" => Err(BackendSettingError::NotBuilt),
            other => Err(BackendSettingError::Unknown(other.into())),
        }
    }
}
