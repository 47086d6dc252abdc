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
use std::sync::{Arc, OnceLock};

use half::{bf16, f16};
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::Tensor as OrtTensor;
use prost::Message;

use emogate_models::merge::MergePlan;
use emogate_models::onnx::build::entry;
use emogate_models::onnx::proto::ModelProto;
use emogate_models::onnx::proto::tensor_proto::DataLocation;
use emogate_models::onnx::{
    FloatType, OnnxModel, TensorBytes, TensorUpdate, initializer_positions, initializers_by_name,
    is_external, visit_initializers,
};

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

    /// Nothing is written to disk: the merged weights reach ONNX Runtime
    /// as replacements of side-file tensors, or inside a model encoded in
    /// memory.
    fn load(
        &self,
        model: &OnnxModel,
        merged: Option<&MergePlan<'_>>,
        _inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError> {
        let Some(plan) = merged else {
            return Ok(Box::new(OrtBackend::load(
                model.path(),
                Vec::new(),
                &self.options,
            )?));
        };
        // Before any ONNX Runtime value is made below: making one loads the
        // library, and without this ort would look for it under its
        // default name (ignoring --ort-lib) and panic when absent.
        load_library(&self.options)?;
        let mut updates = Vec::new();
        for item in plan.updates() {
            updates.extend(item.map_err(|e| merge_error(model, e))?.0);
        }
        // `AddInitializer` overrides are no use here: ONNX Runtime folds
        // constants from the model's own values, so a weight read through a
        // foldable node (the legacy exporter's unfolded `Transpose(W)`)
        // would keep its base values there. `AddExternalInitializers` swaps
        // tensors before any optimization, but only tensors stored in a
        // side file; anything else gets the merged model from memory.
        let by_name = initializers_by_name(model.graph());
        let replaceable = !plan.changes_graph()
            && updates
                .iter()
                .all(|u| by_name.get(u.name.as_str()).is_some_and(|t| is_external(t)));
        if replaceable {
            let mut replacements = Vec::with_capacity(updates.len());
            for update in updates {
                let tensor = by_name[update.name.as_str()];
                let ty = model
                    .float_type(tensor)
                    .map_err(|e| merge_error(model, e))?;
                let value = typed_value(&tensor.dims, ty, update.bytes).map_err(|message| {
                    BackendError::Load {
                        path: model.path().to_path_buf(),
                        message: format!("merged initializer `{}`: {message}", update.name),
                    }
                })?;
                replacements.push((update.name, value));
            }
            // ONNX Runtime reads the base file and its side files itself.
            return Ok(Box::new(OrtBackend::create(
                model.path(),
                ModelSource::File(model.path()),
                Initializers::SideFileReplacements(replacements),
                &self.options,
            )?));
        }
        Ok(Box::new(OrtBackend::create(
            model.path(),
            merged_in_memory(plan, updates)?,
            Initializers::Overrides(Vec::new()),
            &self.options,
        )?))
    }

    fn load_graph(
        &self,
        model: &OnnxModel,
        graph: &ModelProto,
        _inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError> {
        load_library(&self.options)?;
        Ok(Box::new(OrtBackend::create(
            model.path(),
            in_memory(model, graph.clone(), Vec::new())?,
            Initializers::Overrides(Vec::new()),
            &self.options,
        )?))
    }
}

/// Where a session's model comes from.
enum ModelSource<'a> {
    /// A model file; ONNX Runtime finds its side files next to it.
    File(&'a Path),
    /// An encoded `ModelProto` and the bytes of every side file its
    /// external tensors name (`location`, contents).
    Memory {
        model: Vec<u8>,
        side_files: Vec<(String, Arc<[u8]>)>,
    },
}

/// Values that replace a model's initializers, by name.
enum Initializers {
    /// `AddInitializer`: not seen by graph optimizations, which read the
    /// model's own values (see [`OrtBackend::load`]).
    Overrides(Vec<(String, ort::value::DynValue)>),
    /// `AddExternalInitializers`: swapped into the graph before any
    /// optimization; each must name a tensor stored in a side file and
    /// match its element type and dims.
    SideFileReplacements(Vec<(String, ort::value::DynValue)>),
}

/// One tensor's little-endian `bytes` as an ONNX Runtime value of type `ty`.
fn typed_value(
    dims: &[i64],
    ty: FloatType,
    bytes: TensorBytes,
) -> Result<ort::value::DynValue, String> {
    let count = dims
        .iter()
        .try_fold(1usize, |n, d| usize::try_from(*d).ok()?.checked_mul(n))
        .ok_or_else(|| format!("dims {dims:?} are not a valid shape"))?;
    if bytes.len() != count * ty.size() {
        return Err(format!(
            "{} bytes of merged {ty:?} values for dims {dims:?}, which need {}",
            bytes.len(),
            count * ty.size()
        ));
    }
    let shape = dims.to_vec();
    let value = match (ty, bytes) {
        // The merge hands f32 weights over as values: no decode pass.
        (FloatType::F32, TensorBytes::F32(values)) => {
            OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        (FloatType::F32, bytes) => {
            OrtTensor::from_array((shape, FloatType::F32.decode(&bytes.as_bytes())))
                .map(|t| t.into_dyn())
        }
        (FloatType::F16, bytes) => {
            let values: Vec<f16> = bytes
                .as_bytes()
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect();
            OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        (FloatType::Bf16, bytes) => {
            let values: Vec<bf16> = bytes
                .as_bytes()
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect();
            OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
        (FloatType::F64, bytes) => {
            let values: Vec<f64> = bytes
                .as_bytes()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            OrtTensor::from_array((shape, values)).map(|t| t.into_dyn())
        }
    };
    value.map_err(|e| e.to_string())
}

/// The name under which the merged tensors of a model with side files are
/// handed to ONNX Runtime as one more in-memory "file".
const MERGED_DATA: &str = "emogate-merged-weights.bin";

/// The merged model (the plan's graph with `updates` in place), encoded in
/// memory, for a merge that changed the graph (copies of shared weights) or
/// changed inline tensors, which side-file replacements cannot reach.
///
/// A model without side files is encoded whole, merged tensors inline.
///
/// Given from memory, ONNX Runtime cannot find a model's side files: it
/// resolves them against the model file's folder, and there is none. The
/// session entry that names that folder
/// (`session.model_external_initializers_file_folder_path`) is in 1.31 but
/// not in 1.19, and the `ort` crate does not tell which version it loaded;
/// both take side files from memory (`AddExternalInitializersFromFilesInMemory`,
/// which copies the tensors out). So a model with side files gets them read
/// into memory for the session's creation, and its merged tensors go into
/// one more in-memory file rather than inline, so that the encoded model
/// stays as small as the base one (protobuf cannot encode 2 GB).
fn merged_in_memory(
    plan: &MergePlan<'_>,
    updates: Vec<TensorUpdate>,
) -> Result<ModelSource<'static>, BackendError> {
    in_memory(plan.model(), plan.proto.clone(), updates)
}

/// `proto`, an edited graph of `model` whose external tensors are
/// `model`'s side files, with `updates` replacing initializers, as a
/// model source in memory (see [`merged_in_memory`]).
fn in_memory(
    model: &OnnxModel,
    mut proto: ModelProto,
    updates: Vec<TensorUpdate>,
) -> Result<ModelSource<'static>, BackendError> {
    let load_err = |message: String| BackendError::Load {
        path: model.path().to_path_buf(),
        message,
    };
    let external = model.uses_external_data();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| load_err("the merged model has no graph".into()))?;
    let mut side_files: Vec<(String, Arc<[u8]>)> = Vec::new();
    if external {
        let mut locations = Vec::new();
        let mut failure = None;
        visit_initializers(graph, &mut |t| {
            if failure.is_some() || !is_external(t) {
                return;
            }
            match model.external_data(t) {
                Ok(Some(data)) if !locations.iter().any(|(l, _)| *l == data.location) => {
                    locations.push((data.location, data.file))
                }
                Ok(_) => {}
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(merge_error(model, e));
        }
        for (location, file) in locations {
            let bytes = std::fs::read(&file).map_err(|e| {
                load_err(format!(
                    "reading the side file {} into memory: {e}",
                    file.display()
                ))
            })?;
            side_files.push((location, bytes.into()));
        }
    }
    // A name no base tensor uses, so the in-memory files cannot clash.
    let mut merged_name = MERGED_DATA.to_string();
    while side_files.iter().any(|(l, _)| *l == merged_name) {
        merged_name.insert(0, '_');
    }
    let positions = initializer_positions(graph);
    let mut merged_data: Vec<u8> = Vec::new();
    for update in updates {
        let i = *positions.get(&update.name).ok_or_else(|| {
            load_err(format!(
                "merged initializer `{}` is not in the graph",
                update.name
            ))
        })?;
        let tensor = &mut graph.initializer[i];
        tensor.float_data.clear();
        tensor.int32_data.clear();
        tensor.double_data.clear();
        tensor.external_data.clear();
        let bytes = update.bytes.as_bytes();
        if external {
            let offset = merged_data.len();
            merged_data.extend_from_slice(&bytes);
            tensor.raw_data = None;
            tensor.data_location = Some(DataLocation::External as i32);
            tensor.external_data = vec![
                entry("location", &merged_name),
                entry("offset", &offset.to_string()),
                entry("length", &bytes.len().to_string()),
            ];
        } else {
            tensor.data_location = None;
            tensor.raw_data = Some(bytes.into_owned().into());
        }
    }
    if external {
        side_files.push((merged_name, merged_data.into()));
    }
    Ok(ModelSource::Memory {
        model: proto.encode_to_vec(),
        side_files,
    })
}

fn merge_error(model: &OnnxModel, e: emogate_models::Error) -> BackendError {
    BackendError::Load {
        path: model.path().to_path_buf(),
        message: format!("merging the adapter: {e}"),
    }
}

/// A model in an ONNX Runtime session.
pub struct OrtBackend {
    label: String,
    session: Session,
    /// The providers registered, in priority order (CPU last).
    pub providers: Vec<Provider>,
    /// Values of the last inputs, fed after the caller's ([`Backend::bind`]).
    bound: Vec<ort::value::DynValue>,
}

impl OrtBackend {
    /// Creates a session for the model at `path`, replacing the initializers
    /// in `overrides` without rewriting the file.
    ///
    /// ONNX Runtime's graph optimizations read the model's own values, not
    /// these: an override of a weight that a constant-folded node reads
    /// (e.g. `Transpose(W)`) does not reach that node. Merged adapters go
    /// through [`OrtRuntime`] instead, which does not have that limit.
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
        // Values can only be made once the library is loaded.
        load_library(options)?;
        let mut values = Vec::with_capacity(overrides.len());
        for (name, tensor) in overrides {
            let value = to_ort(&tensor).map_err(|e| BackendError::Load {
                path: path.to_path_buf(),
                message: format!("initializer `{name}`: {e}"),
            })?;
            values.push((name, value));
        }
        Self::create(
            path,
            ModelSource::File(path),
            Initializers::Overrides(values),
            options,
        )
    }

    /// Creates a session for `source` (the model at `path`, or its merged
    /// form in memory), with `initializers` replacing the model's.
    /// `path` names the model in errors and logs.
    fn create(
        path: &Path,
        source: ModelSource<'_>,
        initializers: Initializers,
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
        match initializers {
            Initializers::Overrides(values) => {
                for (name, value) in values {
                    builder = builder
                        .with_initializer(&name, value)
                        .map_err(|e| load_err(format!("overriding initializer `{name}`: {e}")))?;
                }
            }
            Initializers::SideFileReplacements(values) => {
                for (name, value) in values {
                    builder = builder
                        .with_external_initializer(&name, value)
                        .map_err(|e| load_err(format!("replacing initializer `{name}`: {e}")))?;
                }
            }
        }
        let session = match source {
            ModelSource::File(file) => builder.commit_from_file(file),
            ModelSource::Memory { model, side_files } => {
                // ONNX Runtime copies the tensors out of these buffers while
                // it creates the session (its C API says they may be freed
                // then); the builder holds them until it is dropped below.
                for (location, bytes) in side_files {
                    builder = builder
                        .with_external_initializer_file_in_memory(&location, bytes)
                        .map_err(|e| {
                            load_err(format!("giving side file `{location}` from memory: {e}"))
                        })?;
                }
                builder.commit_from_memory(&model)
            }
        }
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
            bound: Vec::new(),
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

    /// ONNX Runtime takes any shape a run brings.
    fn max_batch(&self) -> usize {
        usize::MAX
    }

    fn providers(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.name()).collect()
    }

    fn bind(&mut self, values: &[Tensor]) -> Result<(), BackendError> {
        let first = self.session.inputs().len().saturating_sub(values.len());
        self.bound = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                to_ort(v).map_err(|e| BackendError::Input {
                    model: self.label.clone(),
                    index: first + i,
                    message: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut values = Vec::with_capacity(inputs.len() + self.bound.len());
        for (index, input) in inputs.iter().enumerate() {
            let value = to_ort(input).map_err(|e| BackendError::Input {
                model: self.label.clone(),
                index,
                message: e.to_string(),
            })?;
            values.push(ort::session::SessionInputValue::from(value));
        }
        values.extend(self.bound.iter().map(ort::session::SessionInputValue::from));
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

    #[test]
    fn merged_values_that_do_not_fit_their_dims_are_refused() {
        // Checked before any ONNX Runtime call: no library needed.
        let message = |dims: &[i64], ty, bytes: Vec<u8>| match typed_value(dims, ty, bytes.into()) {
            Ok(_) => panic!("{dims:?} {ty:?}: accepted"),
            Err(e) => e,
        };
        let e = message(&[2, 3], FloatType::F16, vec![0; 10]);
        assert!(
            e.contains("10 bytes") && e.contains("[2, 3]") && e.contains("need 12"),
            "{e}"
        );
        let e = message(&[-1, 3], FloatType::F32, Vec::new());
        assert!(e.contains("[-1, 3] are not a valid shape"), "{e}");
    }
}
