//! The ONNX Runtime backend (cargo feature `ort`), for Jetson's TensorRT and
//! CUDA execution providers.
//!
//! The library is loaded at run time (`load-dynamic`): from `--ort-lib`, or
//! `ORT_DYLIB_PATH`. Nothing is downloaded or linked at build time, so one
//! binary works with whatever ONNX Runtime the board has (JetPack ships
//! its own builds, which lag PyPI). The C API level compiled in (`api-19`)
//! accepts ONNX Runtime 1.19 and newer.
//!
//! Execution providers are registered one by one in the order asked for
//! (`tensorrt,cuda,cpu`), so we know — and log — which ones the session
//! really has; ONNX Runtime's own fallback would silently drop to CPU.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;

use emogate_models::merge::MergePlan;
use emogate_models::onnx::{FloatType, OnnxModel};

use super::{Backend, BackendError, InputFact, Runtime};
use crate::{Tensor, TensorData};

/// An execution provider a session may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl std::str::FromStr for Provider {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tensorrt" | "trt" => Ok(Provider::TensorRt),
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            other => Err(BackendError::Config {
                field: "--ep".into(),
                message: format!(
                    "unknown execution provider `{other}`; expected tensorrt, cuda or cpu"
                ),
            }),
        }
    }
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::TensorRt => "TensorRT",
            Provider::Cuda => "CUDA",
            Provider::Cpu => "CPU",
        }
    }
}

/// How to create ONNX Runtime sessions.
#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// `libonnxruntime.so[.VERSION]`; `None` reads `ORT_DYLIB_PATH`.
    pub library: Option<PathBuf>,
    /// Providers in order of preference. CPU is always the last resort.
    pub providers: Vec<Provider>,
    /// Fail instead of falling back when a requested provider cannot be registered.
    pub strict: bool,
    /// TensorRT: build fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT: where engines and timing caches are kept between runs
    /// (building an engine takes minutes on a Jetson; the cache makes later
    /// starts take seconds).
    pub trt_cache_dir: Option<PathBuf>,
    /// Intra-op threads (0: ONNX Runtime's default).
    pub threads: usize,
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            library: None,
            providers: vec![Provider::Cpu],
            strict: false,
            trt_fp16: true,
            trt_cache_dir: None,
            threads: 0,
        }
    }
}

/// Parses `tensorrt,cuda,cpu`.
pub fn parse_providers(list: &str) -> Result<Vec<Provider>, BackendError> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Loads the ONNX Runtime library and creates its environment, once per
/// process (ONNX Runtime allows one environment per process). A failure is
/// not remembered: a later call with a corrected path may succeed.
fn load_library(
    options: &OrtOptions,
) -> Result<&'static ort::environment::Environment, BackendError> {
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = LOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let config = |message: String| BackendError::Config {
        field: "ONNX Runtime library".into(),
        message,
    };
    let path = options
        .library
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or_else(|| {
            config(
                "ONNX Runtime not found: pass --ort-lib PATH or set ORT_DYLIB_PATH to libonnxruntime.so \
                 (pip's onnxruntime wheel ships it as onnxruntime/capi/libonnxruntime.so.<version>)"
                    .into(),
            )
        })?;
    if !path.is_file() {
        return Err(config(format!(
            "ONNX Runtime not found: {} is not a file",
            path.display()
        )));
    }
    let builder = ort::init_from(&path).map_err(|e| {
        config(format!(
            "cannot load ONNX Runtime from {}: {e}",
            path.display()
        ))
    })?;
    let env = builder.with_name("emogate").build().map_err(|e| {
        config(format!(
            "cannot start ONNX Runtime from {}: {e}",
            path.display()
        ))
    })?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(ENVIRONMENT.get_or_init(|| env))
}

/// Loads models into ONNX Runtime sessions ([`Runtime`]).
#[derive(Debug, Clone, Default)]
pub struct OrtRuntime {
    pub options: OrtOptions,
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(
        &self,
        model: &OnnxModel,
        merged: Option<&MergePlan<'_>>,
        _inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError> {
        let merge_err = |e: emogate_models::Error| BackendError::Load {
            path: model.path().to_path_buf(),
            message: format!("merging the adapter: {e}"),
        };
        let Some(plan) = merged else {
            return Ok(Box::new(OrtBackend::load(
                model.path(),
                Vec::new(),
                &self.options,
            )?));
        };
        if plan.changes_graph() {
            // Weight copies changed the graph: give ONNX Runtime a file.
            return self.load_merged_file(plan);
        }
        // Same graph: override just the merged initializers.
        let (proto, updates, _) = plan.merged_proto().map_err(merge_err)?;
        let Some(graph) = proto.graph.as_ref() else {
            return self.load_merged_file(plan);
        };
        let mut overrides = Vec::new();
        for update in updates {
            let Some(tensor) = graph.initializer.iter().find(|t| t.name() == update.name) else {
                return self.load_merged_file(plan);
            };
            let ty = model.float_type(tensor).map_err(merge_err)?;
            if ty != FloatType::F32 {
                // Overrides must match the initializer's type; only f32 is
                // passed that way, others go through a file.
                return self.load_merged_file(plan);
            }
            let shape = tensor.dims.iter().map(|d| *d as usize).collect();
            overrides.push((
                update.name.clone(),
                Tensor::f32(shape, ty.decode(&update.bytes.as_bytes())),
            ));
        }
        Ok(Box::new(OrtBackend::load(
            model.path(),
            overrides,
            &self.options,
        )?))
    }
}

impl OrtRuntime {
    /// Merges into a temp file and opens that (ONNX Runtime maps the file;
    /// the temp folder can go once the session exists).
    fn load_merged_file(&self, plan: &MergePlan<'_>) -> Result<Box<dyn Backend>, BackendError> {
        let model = plan.model();
        let load_err = |message: String| BackendError::Load {
            path: model.path().to_path_buf(),
            message,
        };
        let dir = tempfile::tempdir().map_err(|e| load_err(format!("temporary folder: {e}")))?;
        let out = dir.path().join("merged.onnx");
        plan.write_to_file(&out, &Default::default())
            .map_err(|e| load_err(format!("merging the adapter: {e}")))?;
        Ok(Box::new(OrtBackend::load(&out, Vec::new(), &self.options)?))
    }
}

/// A model in an ONNX Runtime session.
pub struct OrtBackend {
    label: String,
    session: Session,
    /// The providers registered, in priority order (CPU last).
    pub providers: Vec<Provider>,
}

impl OrtBackend {
    /// Creates a session for the model at `path`, replacing the initializers
    /// in `overrides` (merged adapter weights) without rewriting the file.
    ///
    /// # Errors
    /// [`BackendError::Config`] when the library cannot be loaded or a
    /// requested provider is unavailable under `strict`;
    /// [`BackendError::Load`] when the session cannot be created.
    pub fn load(
        path: &Path,
        overrides: Vec<(String, Tensor)>,
        options: &OrtOptions,
    ) -> Result<Self, BackendError> {
        let env = load_library(options)?;
        let load_err = |message: String| BackendError::Load {
            path: path.to_path_buf(),
            message,
        };
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        if options.threads > 0 {
            builder = builder
                .with_intra_threads(options.threads)
                .map_err(|e| load_err(e.to_string()))?;
        }
        let mut registered = Vec::new();
        for provider in &options.providers {
            let outcome = match provider {
                Provider::TensorRt => {
                    let mut trt = ep::TensorRT::default().with_fp16(options.trt_fp16);
                    if let Some(dir) = &options.trt_cache_dir {
                        let dir = dir.display().to_string();
                        trt = trt
                            .with_engine_cache(true)
                            .with_engine_cache_path(&dir)
                            .with_timing_cache(true)
                            .with_timing_cache_path(&dir);
                    }
                    trt.register(&mut builder)
                }
                Provider::Cuda => ep::CUDA::default().register(&mut builder),
                Provider::Cpu => ep::CPU::default().register(&mut builder),
            };
            match outcome {
                Ok(()) => registered.push(*provider),
                Err(e) if options.strict => {
                    return Err(BackendError::Config {
                        field: "--ep-strict".into(),
                        message: format!(
                            "{} execution provider was requested but cannot be used: {e}",
                            provider.name()
                        ),
                    });
                }
                Err(e) => tracing::warn!(
                    provider = provider.name(),
                    error = %e,
                    "execution provider unavailable, falling back to the next one"
                ),
            }
        }
        if !registered.contains(&Provider::Cpu) {
            registered.push(Provider::Cpu);
        }
        for (name, tensor) in overrides {
            let value =
                to_ort(&tensor).map_err(|e| load_err(format!("initializer `{name}`: {e}")))?;
            builder = builder
                .with_initializer(&name, value)
                .map_err(|e| load_err(format!("overriding initializer `{name}`: {e}")))?;
        }
        let session = builder
            .commit_from_file(path)
            .map_err(|e| load_err(e.to_string()))?;
        let requested = options.providers.first().copied().unwrap_or(Provider::Cpu);
        let running = registered[0];
        if running != requested {
            tracing::warn!(
                requested = requested.name(),
                running = running.name(),
                "session does not run on the requested execution provider"
            );
        }
        tracing::info!(
            model = %path.display(),
            providers = ?registered.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "ONNX Runtime session ready"
        );
        Ok(OrtBackend {
            label: path.display().to_string(),
            session,
            providers: registered,
        })
    }
}

fn to_ort(tensor: &Tensor) -> ort::Result<ort::value::DynValue> {
    let shape: Vec<i64> = tensor.shape.iter().map(|d| *d as i64).collect();
    Ok(match &tensor.data {
        TensorData::F32(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
        TensorData::I64(v) => OrtTensor::from_array((shape, v.clone()))?.into_dyn(),
    })
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn providers(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.name()).collect()
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut values = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            let value = to_ort(input).map_err(|e| BackendError::Input {
                model: self.label.clone(),
                index,
                message: e.to_string(),
            })?;
            values.push(ort::session::SessionInputValue::from(value));
        }
        let run_err = |message: String| BackendError::Run {
            model: self.label.clone(),
            message,
        };
        let outputs = self
            .session
            .run(values.as_slice())
            .map_err(|e| run_err(e.to_string()))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (_, value) in outputs.iter() {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(format!("output is not f32: {e}")))?;
            result.push(Tensor::f32(
                shape.iter().map(|d| *d as usize).collect(),
                data.to_vec(),
            ));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_lists_and_names_unknown_ones() {
        assert_eq!(
            parse_providers("tensorrt,cuda,cpu").unwrap(),
            vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu]
        );
        let e = parse_providers("cuda,npu").unwrap_err().to_string();
        assert!(
            e.contains("--ep") && e.contains("`npu`") && e.contains("tensorrt, cuda or cpu"),
            "{e}"
        );
    }
}
