//! An affect model ready to run: the ONNX file, its manifest, a backend,
//! and the gate_proj adapters it can switch between.
//!
//! Two ways to switch adapters, chosen by [`Switching`]:
//!
//! * **slots** (the default when every adapter given at load fits): the
//!   runtime plans the adapter slot graph ([`emogate_models::slots`]) once,
//!   and a switch only computes the slot factors and binds them to the
//!   running backend: milliseconds, whatever the model's size, and no
//!   second copy of the model in memory.
//! * **replan**: the adapter is merged in memory with the converter's own
//!   merge code ([`emogate_models::merge::MergePlan`]) and the runtime plans
//!   the merged model. No branch costs time on each window, but a switch
//!   costs a full load and plan, and the old and new backends live at once.
//!
//! Either way a switch is made ready first ([`AffectModel::prepare`], or
//! [`Preparer::prepare`] on another thread while the current backend keeps
//! serving windows) and then installed between two windows
//! ([`AffectModel::install`]), so no window is lost or run twice. The set of
//! adapters can change while the model runs ([`Preparer::insert_adapter`],
//! [`Preparer::remove_adapter`]): a config reload adds and drops them without
//! touching the running backend. An adapter added later that does not fit
//! the slots (a new layer, a higher rank, DoRA) is switched to by
//! re-planning, and so is every switch after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use emogate_models::manifest::{InputSpec, Manifest};
use emogate_models::merge::MergePlan;
use emogate_models::onnx::OnnxModel;
use emogate_models::peft::Adapter;
use emogate_models::slots::{SlotGraph, Unfit};

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
    #[error(
        "{}: adapter `{name}` was prepared for the slot graph, which is no longer running",
        path.display()
    )]
    SlotsGone { path: PathBuf, name: String },
}

/// How an [`AffectModel`] switches adapters (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Switching {
    /// The slot graph when the adapters fit it, else `Replan`.
    #[default]
    Slots,
    /// Merge and plan the model again on every switch.
    Replan,
}

impl std::str::FromStr for Switching {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "slots" => Ok(Switching::Slots),
            "replan" => Ok(Switching::Replan),
            other => Err(format!("`{other}`: expected slots or replan")),
        }
    }
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
    /// How adapters are switched.
    pub switching: Switching,
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
    blueprint: Arc<Blueprint>,
    active: Option<String>,
    backend: Box<dyn Backend>,
    /// Whether `backend` runs the blueprint's slot graph.
    slotted: bool,
}

/// A switch made ready off the inference thread ([`AffectModel::prepare`],
/// [`Preparer::prepare`]), for [`AffectModel::install`].
pub struct Prepared {
    /// A new backend (`None`: keep the running slot graph).
    backend: Option<Box<dyn Backend>>,
    /// Slot factors to bind (`None`: `backend` is a merged model).
    factors: Option<Vec<Tensor>>,
}

impl Prepared {
    /// Whether this switch planned a new backend (rather than only
    /// computing slot factors).
    pub fn replanned(&self) -> bool {
        self.backend.is_some()
    }
}

/// Everything but the running backend: what a new backend is built from.
struct Blueprint {
    onnx: OnnxModel,
    manifest: Manifest,
    runtime: Box<dyn Runtime>,
    /// Loaded adapters by name. Behind a lock because a config reload
    /// changes the set while backends are being prepared; an adapter is
    /// shared (`Arc`) so a merge never holds the lock.
    adapters: RwLock<BTreeMap<String, Arc<Adapter>>>,
    /// `feed[i]` = index into the manifest's inputs for graph input `i`.
    feed: Vec<usize>,
    /// For each manifest output, its index among the graph's outputs.
    outputs: Vec<usize>,
    /// Every graph input and output has a symbolic leading (batch) axis.
    free_batch: bool,
    /// The slot graph, when adapters are switched through slots.
    slots: Option<SlotGraph>,
    /// Cleared for good when an adapter that does not fit the slots is
    /// prepared: from then on every switch re-plans. One-way, so that a
    /// factors-only switch is never installed after the slot graph's
    /// backend was replaced (switches install in the order they were
    /// prepared).
    slots_live: AtomicBool,
}

/// The most faces [`AffectModel::max_batch`] puts in one forward pass.
pub const MAX_BATCH: usize = 8;

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
        let leading_free = |v: &emogate_models::onnx::proto::ValueInfoProto| {
            emogate_models::manifest::value_dims(v).is_some_and(|d| d.len() > 1 && d[0].is_none())
        };
        let free_batch = emogate_models::onnx::runtime_inputs(graph).all(leading_free)
            && graph.output.iter().all(leading_free);
        let mut adapters = BTreeMap::new();
        for (name, dir) in &spec.adapters {
            let adapter = Adapter::load(dir)?;
            // Resolution errors name the module and the layers there are.
            MergePlan::new(&onnx, &adapter)?;
            adapters.insert(name.clone(), Arc::new(adapter));
        }
        let slots = match spec.switching {
            _ if adapters.is_empty() => None,
            Switching::Replan => None,
            Switching::Slots => {
                let all: Vec<&Adapter> = adapters.values().map(|a| a.as_ref()).collect();
                match SlotGraph::new(&onnx, &all) {
                    Ok(slots) => Some(slots),
                    Err(Unfit(why)) => {
                        tracing::warn!(
                            model = %spec.path.display(),
                            reason = %why,
                            "adapters do not fit a slot graph: each switch re-plans the model"
                        );
                        None
                    }
                }
            }
        };
        let blueprint = Blueprint {
            onnx,
            manifest,
            runtime: spec.backend.runtime(),
            adapters: RwLock::new(adapters),
            feed,
            outputs,
            free_batch,
            slots_live: AtomicBool::new(slots.is_some()),
            slots,
        };
        let (backend, slotted) = match &blueprint.slots {
            Some(slots) => {
                let mut facts = blueprint.input_facts();
                facts.extend(
                    slots
                        .inputs()
                        .iter()
                        .map(|i| InputFact::F32(i.dims.clone())),
                );
                let mut backend =
                    blueprint
                        .runtime
                        .load_graph(&blueprint.onnx, slots.proto(), &facts)?;
                let adapter = spec
                    .active
                    .as_deref()
                    .map(|name| blueprint.adapter(name))
                    .transpose()?;
                let factors = blueprint.factors(slots, adapter.as_deref())?;
                backend.bind(&factors)?;
                (backend, true)
            }
            None => {
                let prepared = blueprint.prepare(spec.active.as_deref())?;
                (
                    prepared
                        .backend
                        .expect("without slots a backend is planned"),
                    false,
                )
            }
        };
        Ok(AffectModel {
            blueprint: Arc::new(blueprint),
            active: spec.active.clone(),
            backend,
            slotted,
        })
    }

    /// Whether adapter switches only bind new slot factors (no re-plan).
    pub fn switches_by_slots(&self) -> bool {
        self.slotted && self.blueprint.slots_live.load(Ordering::Acquire)
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

    /// Names of the loaded adapters, sorted.
    pub fn adapter_names(&self) -> Vec<String> {
        self.blueprint.adapter_names()
    }

    /// The backend's name (`tract`, `ort`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The kernels the running backend chose (tract only).
    pub fn kernels(&self) -> Option<crate::backend::tract::KernelReport> {
        self.backend.kernels()
    }

    /// The execution providers the backend runs on, best first.
    pub fn providers(&self) -> Vec<&'static str> {
        self.backend.providers()
    }

    /// How many items (faces) one [`AffectModel::run`] may take along the
    /// batch axis: up to [`MAX_BATCH`] when the graph's inputs and outputs
    /// all have a symbolic leading axis and the backend runs any batch
    /// ([`Backend::max_batch`]: ONNX Runtime); else 1.
    ///
    /// tract plans a model for the manifest's shapes (batch 1) once, which
    /// is what makes it fast, so on tract faces run one after another. A
    /// plan for a batch of 3 ran the shipped face model 1.4–1.75× slower
    /// per face than the plan for one (tract 0.23.9 lowers its convolutions
    /// through im2col and separate bias additions when the batch is over 1;
    /// docs/benchmarks.md, "Faces end to end"), so tract does not batch.
    pub fn max_batch(&self) -> usize {
        if self.blueprint.free_batch {
            self.backend.max_batch().min(MAX_BATCH)
        } else {
            1
        }
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

    /// Makes a switch to `adapter` (`None`: the base model) ready: its slot
    /// factors, or a backend with it merged. Does not touch the running
    /// backend, so it can run while windows are still being served.
    ///
    /// # Errors
    /// [`AffectError::UnknownAdapter`], merge errors, backend errors.
    pub fn prepare(&self, adapter: Option<&str>) -> Result<Prepared, AffectError> {
        self.blueprint.prepare(adapter)
    }

    /// A handle that builds backends on another thread while this model
    /// keeps serving windows.
    pub fn preparer(&self) -> Preparer {
        Preparer(Arc::clone(&self.blueprint))
    }

    /// Installs a switch made by [`AffectModel::prepare`]: binds the slot
    /// factors, or swaps in the new backend (dropping the old one).
    ///
    /// # Errors
    /// [`AffectError::SlotsGone`] for factors prepared for a slot graph
    /// that no longer runs (switches must install in the order they were
    /// prepared); [`BackendError`] when the runtime refuses the factors.
    /// The running backend is unchanged then.
    pub fn install(
        &mut self,
        active: Option<String>,
        prepared: Prepared,
    ) -> Result<(), AffectError> {
        match (prepared.backend, prepared.factors) {
            (Some(backend), None) => {
                self.backend = backend;
                self.slotted = false;
            }
            (backend, Some(factors)) => match backend {
                Some(mut backend) => {
                    backend.bind(&factors)?;
                    self.backend = backend;
                    self.slotted = true;
                }
                None if self.slotted => self.backend.bind(&factors)?,
                None => {
                    return Err(AffectError::SlotsGone {
                        path: self.path().to_path_buf(),
                        name: active.unwrap_or_else(|| "base".into()),
                    });
                }
            },
            (None, None) => unreachable!("Prepared is made with a backend or factors"),
        }
        self.active = active;
        Ok(())
    }

    /// Prepares and installs `adapter`; returns how long the switch took.
    pub fn switch(&mut self, adapter: Option<&str>) -> Result<Duration, AffectError> {
        let started = Instant::now();
        let prepared = self.prepare(adapter)?;
        self.install(adapter.map(str::to_string), prepared)?;
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

/// What [`Preparer::prepare`] does once it has looked the adapter up: merge
/// `adapter` into `onnx` in memory (none: the base model) and load the
/// result on `runtime`. Public for benchmarks of models that carry no
/// manifest (`engine/benches/adapter_switch.rs`), so that they time this very code.
///
/// # Errors
/// Merge errors ([`AffectError::Model`]), backend errors.
pub fn prepare_backend(
    runtime: &dyn Runtime,
    onnx: &OnnxModel,
    adapter: Option<&Adapter>,
    inputs: &[InputFact],
) -> Result<Box<dyn Backend>, AffectError> {
    let merged = adapter.map(|a| MergePlan::new(onnx, a)).transpose()?;
    Ok(runtime.load(onnx, merged.as_ref(), inputs)?)
}

/// An adapter loaded and checked against the model by
/// [`Preparer::load_adapter`], not yet available for switching.
pub struct LoadedAdapter(Arc<Adapter>);

/// Builds backends for an [`AffectModel`] from any thread (see
/// [`AffectModel::preparer`]).
#[derive(Clone)]
pub struct Preparer(Arc<Blueprint>);

impl Preparer {
    /// Same as [`AffectModel::prepare`].
    pub fn prepare(&self, adapter: Option<&str>) -> Result<Prepared, AffectError> {
        self.0.prepare(adapter)
    }

    /// Names of the loaded adapters, sorted.
    pub fn adapter_names(&self) -> Vec<String> {
        self.0.adapter_names()
    }

    /// Whether an adapter of this name is loaded.
    pub fn has_adapter(&self, name: &str) -> bool {
        self.0.read_adapters().contains_key(name)
    }

    /// Checks that `name` is loaded.
    ///
    /// # Errors
    /// [`AffectError::UnknownAdapter`] listing the loaded names.
    pub fn check_adapter(&self, name: &str) -> Result<(), AffectError> {
        self.0.adapter(name).map(|_| ())
    }

    /// Loads the PEFT folder `dir` and checks it against the model,
    /// without making it available yet ([`Preparer::insert_adapter`] does):
    /// a reload loads every new adapter first, so that one bad folder
    /// changes nothing.
    ///
    /// # Errors
    /// [`AffectError::Model`] naming the folder and the file or field at
    /// fault, or a module the model does not have.
    pub fn load_adapter(&self, dir: &Path) -> Result<LoadedAdapter, AffectError> {
        // Read before any lock is taken: safetensors can take a while and
        // must not hold up a merge.
        let adapter = Arc::new(Adapter::load(dir)?);
        MergePlan::new(&self.0.onnx, &adapter)?;
        Ok(LoadedAdapter(adapter))
    }

    /// Makes `adapter` available as `name`, replacing one of that name.
    /// Backends already made are not touched.
    pub fn insert_adapter(&self, name: &str, adapter: LoadedAdapter) {
        self.0
            .adapters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), adapter.0);
    }

    /// Drops adapter `name`; returns whether it was loaded. A backend
    /// running it keeps running: the caller decides whether that is allowed.
    pub fn remove_adapter(&self, name: &str) -> bool {
        self.0
            .adapters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }
}

impl Blueprint {
    fn read_adapters(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Adapter>>> {
        // A panic while holding the lock cannot leave the map half
        // updated (inserts and removes are single calls), so go on.
        self.adapters.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn adapter_names(&self) -> Vec<String> {
        self.read_adapters().keys().cloned().collect()
    }

    fn adapter(&self, name: &str) -> Result<Arc<Adapter>, AffectError> {
        let adapters = self.read_adapters();
        adapters
            .get(name)
            .cloned()
            .ok_or_else(|| AffectError::UnknownAdapter {
                name: name.into(),
                loaded: if adapters.is_empty() {
                    "none".into()
                } else {
                    adapters.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }

    fn prepare(&self, name: Option<&str>) -> Result<Prepared, AffectError> {
        let adapter = name.map(|name| self.adapter(name)).transpose()?;
        if let Some(slots) = &self.slots
            && self.slots_live.load(Ordering::Acquire)
        {
            match slots.factors(&self.onnx, adapter.as_deref()) {
                Ok(factors) => {
                    return Ok(Prepared {
                        backend: None,
                        factors: Some(to_tensors(factors)),
                    });
                }
                Err(Unfit(why)) => {
                    tracing::warn!(
                        adapter = name.unwrap_or("base"),
                        reason = %why,
                        "adapter does not fit the slot graph: switching by re-planning from now on"
                    );
                    self.slots_live.store(false, Ordering::Release);
                }
            }
        }
        Ok(Prepared {
            backend: Some(prepare_backend(
                self.runtime.as_ref(),
                &self.onnx,
                adapter.as_deref(),
                &self.input_facts(),
            )?),
            factors: None,
        })
    }

    fn factors(
        &self,
        slots: &SlotGraph,
        adapter: Option<&Adapter>,
    ) -> Result<Vec<Tensor>, AffectError> {
        slots
            .factors(&self.onnx, adapter)
            .map(to_tensors)
            .map_err(|Unfit(why)| {
                AffectError::Backend(BackendError::Load {
                    path: self.onnx.path().to_path_buf(),
                    message: format!("binding adapter slots: {why}"),
                })
            })
    }

    /// Input shapes in graph order, from the manifest.
    fn input_facts(&self) -> Vec<InputFact> {
        self.feed
            .iter()
            .map(|i| InputFact::F32(Manifest::input_shape(&self.manifest.inputs[*i])))
            .collect()
    }
}

/// Slot factors as tensors, in the slot graph's input order.
pub fn to_tensors(factors: emogate_models::slots::Factors) -> Vec<Tensor> {
    factors
        .0
        .into_iter()
        .map(|(dims, values)| Tensor::f32(dims, values))
        .collect()
}
