//! An affect model ready to run: the ONNX file, its manifest, a backend,
//! and the gate_proj adapters it can switch between.
//!
//! Adapters are merged in memory with the converter's own merge code
//! ([`emogate_models::merge::MergePlan`]). Switching builds the new backend
//! first ([`AffectModel::prepare`], which may run on another thread while
//! the current one keeps serving windows) and then swaps it in between two
//! windows ([`AffectModel::install`]), so no window is lost or run twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emogate_models::manifest::{InputSpec, Manifest};
use emogate_models::merge::MergePlan;
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;

use crate::Tensor;
use crate::backend::tract::TractRuntime;
use crate::backend::{Backend, BackendError, InputFact, Runtime};

/// Errors of loading and running an affect model.
#[derive(Debug, thiserror::Error)]
pub enum AffectError {
    #[error(transparent)]
    Model(#[from] emogate_models::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{}: no manifest: embed one with `emogate-convert manifest set` or pass --manifest FILE.json", path.display())]
    NoManifest { path: PathBuf },
    #[error("adapter `{name}` is not loaded (loaded: {loaded})")]
    UnknownAdapter { name: String, loaded: String },
    #[error("--adapter `{spec}`: expected NAME=DIR")]
    AdapterSpec { spec: String },
}

/// Which runtime runs the model.
#[derive(Debug, Clone)]
pub enum BackendChoice {
    Tract {
        threads: usize,
    },
    #[cfg(feature = "ort")]
    Ort(crate::backend::ort::OrtOptions),
}

impl BackendChoice {
    /// The runtime that loads models for this choice.
    pub fn runtime(&self) -> Box<dyn Runtime> {
        match self {
            BackendChoice::Tract { threads } => Box::new(TractRuntime { threads: *threads }),
            #[cfg(feature = "ort")]
            BackendChoice::Ort(options) => Box::new(crate::backend::ort::OrtRuntime {
                options: options.clone(),
            }),
        }
    }
}

impl Default for BackendChoice {
    fn default() -> Self {
        BackendChoice::Tract { threads: 1 }
    }
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct ModelSpec {
    pub path: PathBuf,
    /// A sidecar manifest, for models that carry none (or to override it).
    pub manifest: Option<PathBuf>,
    pub backend: BackendChoice,
    /// Named adapter folders (`--adapter calm=DIR`).
    pub adapters: Vec<(String, PathBuf)>,
    /// The adapter active at start; `None` runs the base model.
    pub active: Option<String>,
}

/// Parses `NAME=DIR`.
pub fn parse_adapter_spec(spec: &str) -> Result<(String, PathBuf), AffectError> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(AffectError::AdapterSpec { spec: spec.into() }),
    }
}

/// A loaded model.
pub struct AffectModel {
    blueprint: std::sync::Arc<Blueprint>,
    active: Option<String>,
    backend: Box<dyn Backend>,
}

/// Everything but the running backend: what a new backend is built from.
struct Blueprint {
    onnx: OnnxModel,
    manifest: Manifest,
    runtime: Box<dyn Runtime>,
    adapters: BTreeMap<String, Adapter>,
    /// `feed[i]` = index into the manifest's inputs for graph input `i`.
    feed: Vec<usize>,
    /// For each manifest output, its index among the graph's outputs.
    outputs: Vec<usize>,
}

impl AffectModel {
    /// Loads the model, its manifest (embedded or sidecar) and adapters,
    /// checks the manifest against the graph, and plans the backend.
    ///
    /// # Errors
    /// [`AffectError`] naming the file and field at fault.
    pub fn load(spec: &ModelSpec) -> Result<Self, AffectError> {
        let onnx = OnnxModel::load(&spec.path)?;
        let manifest = match &spec.manifest {
            Some(path) => Manifest::from_file(path)?,
            None => Manifest::from_model(&onnx)?.ok_or_else(|| AffectError::NoManifest {
                path: spec.path.clone(),
            })?,
        };
        manifest.check_against(&onnx)?;
        let graph = onnx.graph();
        let feed = emogate_models::onnx::runtime_inputs(graph)
            .map(|i| {
                manifest
                    .inputs
                    .iter()
                    .position(|m| m.name() == i.name())
                    .expect("check_against verified every graph input is fed")
            })
            .collect();
        let outputs = manifest
            .outputs
            .iter()
            .map(|o| {
                graph
                    .output
                    .iter()
                    .position(|g| g.name() == o.name)
                    .expect("check_against verified every output exists")
            })
            .collect();
        let mut adapters = BTreeMap::new();
        for (name, dir) in &spec.adapters {
            adapters.insert(name.clone(), Adapter::load(dir)?);
        }
        let blueprint = Blueprint {
            onnx,
            manifest,
            runtime: spec.backend.runtime(),
            adapters,
            feed,
            outputs,
        };
        let backend = blueprint.prepare(spec.active.as_deref())?;
        Ok(AffectModel {
            blueprint: std::sync::Arc::new(blueprint),
            active: spec.active.clone(),
            backend,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.blueprint.manifest
    }

    pub fn onnx(&self) -> &OnnxModel {
        &self.blueprint.onnx
    }

    /// The active adapter.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Names of the loaded adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.blueprint.adapters.keys().cloned().collect()
    }

    /// The backend's name (`tract`, `ort`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The execution providers the backend runs on, best first.
    pub fn providers(&self) -> Vec<&'static str> {
        self.backend.providers()
    }

    /// Runs one window. `inputs` follow the manifest's input order; the
    /// result follows the manifest's output order.
    ///
    /// # Errors
    /// [`BackendError`] from the runtime.
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, AffectError> {
        if inputs.len() != self.blueprint.manifest.inputs.len() {
            return Err(AffectError::Backend(BackendError::Input {
                model: self.blueprint.onnx.path().display().to_string(),
                index: inputs.len(),
                message: format!(
                    "got {} inputs, the manifest describes {}",
                    inputs.len(),
                    self.blueprint.manifest.inputs.len()
                ),
            }));
        }
        let ordered: Vec<Tensor> = self
            .blueprint
            .feed
            .iter()
            .map(|i| inputs[*i].clone())
            .collect();
        let outputs = self.backend.run(&ordered)?;
        let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
        self.blueprint
            .outputs
            .iter()
            .map(|i| {
                outputs.get_mut(*i).and_then(Option::take).ok_or_else(|| {
                    AffectError::Backend(BackendError::Run {
                        model: self.blueprint.onnx.path().display().to_string(),
                        message: format!("the backend returned no output #{i}"),
                    })
                })
            })
            .collect()
    }

    /// Builds a backend with `adapter` merged (or the base model for
    /// `None`). Does not touch the running backend, so it can run while
    /// windows are still being served.
    ///
    /// # Errors
    /// [`AffectError::UnknownAdapter`], merge errors, backend errors.
    pub fn prepare(&self, adapter: Option<&str>) -> Result<Box<dyn Backend>, AffectError> {
        self.blueprint.prepare(adapter)
    }

    /// A handle that builds backends on another thread while this model
    /// keeps serving windows.
    pub fn preparer(&self) -> Preparer {
        Preparer(std::sync::Arc::clone(&self.blueprint))
    }

    /// Swaps in a backend made by [`AffectModel::prepare`].
    pub fn install(&mut self, active: Option<String>, backend: Box<dyn Backend>) {
        self.backend = backend;
        self.active = active;
    }

    /// Prepares and installs `adapter`; returns how long the switch took.
    pub fn switch(&mut self, adapter: Option<&str>) -> Result<Duration, AffectError> {
        let started = Instant::now();
        let backend = self.prepare(adapter)?;
        self.install(adapter.map(str::to_string), backend);
        Ok(started.elapsed())
    }

    /// The shape of manifest input `spec`.
    pub fn input_shape(spec: &InputSpec) -> Vec<usize> {
        Manifest::input_shape(spec)
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        self.blueprint.onnx.path()
    }
}

/// Builds backends for an [`AffectModel`] from any thread (see
/// [`AffectModel::preparer`]).
#[derive(Clone)]
pub struct Preparer(std::sync::Arc<Blueprint>);

impl Preparer {
    /// Same as [`AffectModel::prepare`].
    pub fn prepare(&self, adapter: Option<&str>) -> Result<Box<dyn Backend>, AffectError> {
        self.0.prepare(adapter)
    }
}

impl Blueprint {
    fn prepare(&self, adapter: Option<&str>) -> Result<Box<dyn Backend>, AffectError> {
        let inputs = self.input_facts();
        let merged = match adapter {
            None => None,
            Some(name) => {
                let adapter =
                    self.adapters
                        .get(name)
                        .ok_or_else(|| AffectError::UnknownAdapter {
                            name: name.into(),
                            loaded: if self.adapters.is_empty() {
                                "none".into()
                            } else {
                                self.adapters.keys().cloned().collect::<Vec<_>>().join(", ")
                            },
                        })?;
                Some(MergePlan::new(&self.onnx, adapter)?)
            }
        };
        Ok(self.runtime.load(&self.onnx, merged.as_ref(), &inputs)?)
    }

    /// Input shapes in graph order, from the manifest.
    fn input_facts(&self) -> Vec<InputFact> {
        self.feed
            .iter()
            .map(|i| InputFact::F32(Manifest::input_shape(&self.manifest.inputs[*i])))
            .collect()
    }
}
