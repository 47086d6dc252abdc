//! The tract backend: pure Rust, no system libraries, the embedded default.
//!
//! [`TractRuntime`] loads a model (from its file, or an edited graph from
//! memory), binds the manifest's input shapes, lets tract optimize it, then
//! swaps two of tract's slow operators for ours ([`ops`]) before planning.
//! [`TractBackend`] runs the plan, keeping one evaluation state across
//! windows; [`TractBackend::profile`] times every node of it.

pub mod ops;

use std::path::{Path, PathBuf};
use std::sync::Once;

use emogate_models::onnx::proto::ModelProto;
use tract_onnx::prelude::*;

use emogate_models::merge::MergePlan;
use emogate_models::onnx::{FloatType, OnnxModel, TensorBytes};
use tract_onnx::tract_core::ops::konst::Const;

use super::{Backend, BackendError, InputFact, Runtime};
use crate::{Tensor, TensorData};

type Plan = std::sync::Arc<TypedRunnableModel>;

/// How tract plans a model.
#[derive(Debug, Clone, Default)]
pub struct TractOptions {
    /// Shapes of the inputs in graph order; binds dynamic dimensions so
    /// tract can optimize for the sizes the manifest feeds.
    pub inputs: Option<Vec<InputFact>>,
    /// Threads for matrix products (tract is single-threaded by default;
    /// big fusion blocks benefit, tiny convolutions do not). Process-wide.
    pub threads: usize,
    /// Keep tract's own Softmax and RmsNorm ([`ops`] explains why they are
    /// replaced by default); for comparisons and parity tests.
    pub stock_ops: bool,
}

/// Loads models into tract ([`Runtime`]).
#[derive(Debug, Clone, Default)]
pub struct TractRuntime {
    /// Threads for matrix products; see [`TractOptions::threads`].
    pub threads: usize,
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn load(
        &self,
        model: &OnnxModel,
        merged: Option<&MergePlan<'_>>,
        inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError> {
        let options = TractOptions {
            inputs: Some(inputs.to_vec()),
            threads: self.threads,
            stock_ops: false,
        };
        let backend = match merged {
            None => TractBackend::load_with(model.path(), &options)?,
            Some(plan) if !plan.changes_graph() => {
                match TractBackend::load_with_weights(model, plan, &options)? {
                    Some(backend) => backend,
                    None => TractBackend::from_merged_proto(model, plan, &options)?,
                }
            }
            Some(plan) => TractBackend::from_merged_proto(model, plan, &options)?,
        };
        Ok(Box::new(backend))
    }

    fn load_graph(
        &self,
        model: &OnnxModel,
        graph: &ModelProto,
        inputs: &[InputFact],
    ) -> Result<Box<dyn Backend>, BackendError> {
        let options = TractOptions {
            inputs: Some(inputs.to_vec()),
            threads: self.threads,
            stock_ops: false,
        };
        let mut backend = TractBackend::from_proto(graph, model.dir(), &options)?;
        backend.label = model.path().display().to_string();
        Ok(Box::new(backend))
    }
}

impl TractBackend {
    /// Loads the base model and swaps the merged weights into the constants
    /// tract made of their initializers: no copy of the ONNX graph is made
    /// or re-encoded. `Ok(None)` when a weight cannot be swapped that way
    /// (not f32, or tract merged its constant with an identical one that
    /// another node also reads); the caller then loads the merged graph.
    fn load_with_weights(
        model: &OnnxModel,
        plan: &MergePlan<'_>,
        options: &TractOptions,
    ) -> Result<Option<Self>, BackendError> {
        let path = model.path();
        let load = |message: String| BackendError::Load {
            path: path.to_path_buf(),
            message,
        };
        let mut inference = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load(format!("{e:#}")))?;
        let initializers = emogate_models::onnx::initializers_by_name(model.graph());
        for item in plan.updates() {
            let (updates, _) = item.map_err(|e| load(format!("merging the adapter: {e}")))?;
            for update in updates {
                let Some(proto) = initializers.get(update.name.as_str()) else {
                    return Ok(None);
                };
                let ty = model
                    .float_type(proto)
                    .map_err(|e| load(format!("merging the adapter: {e}")))?;
                if ty != FloatType::F32 {
                    return Ok(None);
                }
                // Every ONNX use of the initializer must read this one
                // constant, and nothing else may: tract folds identical
                // constants into one node at load.
                let uses = model
                    .graph()
                    .node
                    .iter()
                    .flat_map(|n| &n.input)
                    .filter(|i| **i == update.name)
                    .count();
                let Ok(id) = inference.node_id_by_name(&update.name) else {
                    return Ok(None);
                };
                let node = inference.node(id);
                if node.op_as::<Const>().is_none() || node.outputs[0].successors.len() != uses {
                    return Ok(None);
                }
                let dims: Vec<usize> = proto.dims.iter().map(|d| *d as usize).collect();
                let values = match update.bytes {
                    TensorBytes::F32(v) => v,
                    raw => ty.decode(&raw.as_bytes()),
                };
                let tensor = tract_ndarray::ArrayD::from_shape_vec(dims, values)
                    .map_err(|e| load(format!("merged weight `{}`: {e}", update.name)))?
                    .into_arc_tensor();
                let fact = TypedFact::try_from(tensor.clone())
                    .map_err(|e| load(format!("merged weight `{}`: {e:#}", update.name)))?;
                let op = Const::new(tensor)
                    .map_err(|e| load(format!("merged weight `{}`: {e:#}", update.name)))?;
                let node = inference.node_mut(id);
                node.op = Box::new(op);
                node.outputs[0].fact = fact.into();
            }
        }
        Self::plan(inference, path.display().to_string(), options)
            .map(Some)
            .map_err(|e| load(format!("{e:#}")))
    }

    /// Loads the merged graph (weight copies added) from memory.
    fn from_merged_proto(
        model: &OnnxModel,
        plan: &MergePlan<'_>,
        options: &TractOptions,
    ) -> Result<Self, BackendError> {
        let (proto, _, _) = plan.merged_proto().map_err(|e| BackendError::Load {
            path: model.path().to_path_buf(),
            message: format!("merging the adapter: {e}"),
        })?;
        TractBackend::from_proto(&proto, model.dir(), options)
    }
}

/// What tract chose for a planned model: the matrix-product kernels its
/// nodes run and the CPU features it detected. On a Jetson the kernels
/// should be tract's NEON ones (`arm64simd_…`); a `generic_…` kernel there
/// means a slow, portable fallback.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KernelReport {
    /// The CPU architecture this binary was built for.
    pub arch: &'static str,
    /// Whether the CPU has native f16 arithmetic (aarch64 FEAT_FP16),
    /// which tract's f16 kernels need.
    pub fp16_cpu: bool,
    /// Matrix-product kernel name → how many nodes can run it (a node
    /// lists one kernel per shape mode tract may pick at run time).
    pub matmul: std::collections::BTreeMap<String, usize>,
    /// Operator name of every node of the optimized plan → count.
    pub ops: std::collections::BTreeMap<String, usize>,
}

impl TractBackend {
    /// The kernels the optimized plan runs (see [`KernelReport`]).
    pub fn kernels(&self) -> KernelReport {
        use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
        let mut report = KernelReport {
            arch: std::env::consts::ARCH,
            fp16_cpu: tract_linalg::has_fp16(),
            ..KernelReport::default()
        };
        for node in self.plan.model().nodes() {
            *report.ops.entry(node.op.name().to_string()).or_default() += 1;
            if let Some(mm) = node.op_as::<OptMatMul>() {
                for kernel in &mm.mmm {
                    *report.matmul.entry(kernel.name().to_string()).or_default() += 1;
                }
            }
        }
        report
    }
}

/// One node of the plan and what it cost, from [`TractBackend::profile`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeTime {
    /// The node's name in the optimized plan (tract keeps the ONNX node's
    /// name and appends what its rewrites made of it).
    pub name: String,
    /// The operator tract runs (`OptMatMul`, `EmogateSoftmax`...).
    pub op: String,
    /// Median wall time per run, microseconds.
    pub micros: f64,
}

/// Where a run's time goes, node by node ([`TractBackend::profile`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Profile {
    /// Every node in plan order.
    pub nodes: Vec<NodeTime>,
    /// Wall time of each timed run, milliseconds, sorted.
    pub runs_ms: Vec<f64>,
}

/// A model optimized and planned by tract.
pub struct TractBackend {
    label: String,
    plan: Plan,
    /// Reused by every run: spawning a state allocates one slot per node.
    state: TypedSimpleState,
    /// Values of the last inputs, fed after the caller's ([`Backend::bind`]).
    bound: TVec<TValue>,
}

impl TractBackend {
    /// Loads an ONNX file (external data is read from its folder).
    ///
    /// # Errors
    /// [`BackendError::Load`] naming the file and tract's reason.
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        Self::load_with(path, &TractOptions::default())
    }

    /// [`TractBackend::load`] with options.
    pub fn load_with(path: &Path, options: &TractOptions) -> Result<Self, BackendError> {
        let load = |message: String| BackendError::Load {
            path: path.to_path_buf(),
            message,
        };
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load(format!("{e:#}")))?;
        Self::plan(model, path.display().to_string(), options).map_err(|e| load(format!("{e:#}")))
    }

    /// Loads an edited model from memory; external data still resolves
    /// relative to `dir` (the folder of the file it was read from).
    ///
    /// # Errors
    /// [`BackendError::Load`] naming `dir` and tract's reason.
    pub fn from_proto(
        proto: &ModelProto,
        dir: &Path,
        options: &TractOptions,
    ) -> Result<Self, BackendError> {
        use prost::Message;
        let load = |message: String| BackendError::Load {
            path: PathBuf::from(dir),
            message,
        };
        // emogate-models and tract each have their own generated ONNX types;
        // the wire format is the bridge.
        let bytes = proto.encode_to_vec();
        let tract_proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| load(format!("re-decoding the edited model: {e}")))?;
        let dir_str = dir
            .to_str()
            .ok_or_else(|| load("folder is not UTF-8".into()))?;
        let model = tract_onnx::onnx()
            .parse(&tract_proto, Some(dir_str))
            .map(|parsed| parsed.model)
            .map_err(|e| load(format!("{e:#}")))?;
        Self::plan(model, dir.display().to_string(), options).map_err(|e| load(format!("{e:#}")))
    }

    fn plan(mut model: InferenceModel, label: String, options: &TractOptions) -> TractResult<Self> {
        if options.threads > 1 {
            static EXECUTOR: Once = Once::new();
            let n = options.threads;
            EXECUTOR.call_once(|| {
                tract_linalg::multithread::set_default_executor(
                    tract_linalg::multithread::Executor::multithread(n),
                )
            });
        }
        if let Some(inputs) = &options.inputs {
            for (i, fact) in inputs.iter().enumerate() {
                let fact = match fact {
                    InputFact::F32(shape) => f32::fact(shape).into(),
                    InputFact::I64(shape) => i64::fact(shape).into(),
                };
                model = model.with_input_fact(i, fact)?;
            }
        }
        let mut typed = model.into_optimized()?;
        if !options.stock_ops {
            let replaced = ops::use_faster_ops(&mut typed)?;
            tracing::debug!(model = %label, ?replaced, "tract operators replaced");
        }
        let plan = typed.into_runnable()?;
        let state = plan.spawn()?;
        Ok(TractBackend {
            label,
            plan,
            state,
            bound: TVec::new(),
        })
    }
}

impl TractBackend {
    /// Runs the plan `warmup + runs` times on `inputs` (then the bound
    /// values) and times every node of the timed runs. The clock reads add
    /// about 50 ns per node; compare [`Profile::runs_ms`] with untimed runs
    /// to see it.
    ///
    /// # Errors
    /// As [`Backend::run`].
    pub fn profile(
        &mut self,
        inputs: &[Tensor],
        warmup: usize,
        runs: usize,
    ) -> Result<Profile, BackendError> {
        let nodes = self.plan.model().nodes().len();
        let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); nodes];
        let mut runs_ms = Vec::with_capacity(runs);
        for run in 0..warmup + runs {
            let mut values = TVec::with_capacity(inputs.len() + self.bound.len());
            for (index, input) in inputs.iter().enumerate() {
                values.push(to_tract(input, &self.label, index)?.into_tvalue());
            }
            values.extend(self.bound.iter().cloned());
            let timed = run >= warmup;
            let started = std::time::Instant::now();
            self.state
                .run_plan_with_eval(values, |context, state, node, inputs| {
                    let t = std::time::Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(context, state, node, inputs);
                    if timed {
                        times[node.id].push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    out
                })
                .map_err(|e| BackendError::Run {
                    model: self.label.clone(),
                    message: format!("{e:#}"),
                })?;
            if timed {
                runs_ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        runs_ms.sort_by(f64::total_cmp);
        let nodes = self
            .plan
            .model()
            .nodes()
            .iter()
            .zip(&mut times)
            .filter(|(_, t)| !t.is_empty())
            .map(|(node, t)| {
                t.sort_by(f64::total_cmp);
                NodeTime {
                    name: node.name.clone(),
                    op: node.op.name().to_string(),
                    micros: t[t.len() / 2],
                }
            })
            .collect();
        Ok(Profile { nodes, runs_ms })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn kernels(&self) -> Option<KernelReport> {
        Some(TractBackend::kernels(self))
    }

    fn bind(&mut self, values: &[Tensor]) -> Result<(), BackendError> {
        let first = self.plan.model().inputs.len().saturating_sub(values.len());
        self.bound = values
            .iter()
            .enumerate()
            .map(|(i, v)| to_tract(v, &self.label, first + i).map(|t| t.into_tvalue()))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut values = TVec::with_capacity(inputs.len() + self.bound.len());
        for (index, input) in inputs.iter().enumerate() {
            values.push(to_tract(input, &self.label, index)?.into_tvalue());
        }
        values.extend(self.bound.iter().cloned());
        let outputs = self.state.run(values).map_err(|e| BackendError::Run {
            model: self.label.clone(),
            message: format!("{e:#}"),
        })?;
        outputs
            .iter()
            .map(|o| {
                let shape = o.shape().to_vec();
                let as_f32 = o.cast_to::<f32>().map_err(|e| BackendError::Run {
                    model: self.label.clone(),
                    message: format!(
                        "output of type {:?} cannot be read as f32: {e}",
                        o.datum_type()
                    ),
                })?;
                let values = as_f32
                    .to_plain_array_view::<f32>()
                    .map_err(|e| BackendError::Run {
                        model: self.label.clone(),
                        message: e.to_string(),
                    })?
                    .iter()
                    .copied()
                    .collect();
                Ok(Tensor::f32(shape, values))
            })
            .collect()
    }
}

/// One of our tensors as tract's; `index` names the input in errors.
fn to_tract(
    input: &Tensor,
    label: &str,
    index: usize,
) -> Result<tract_onnx::prelude::Tensor, BackendError> {
    match &input.data {
        TensorData::F32(v) => tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), v.clone())
            .map(|a| a.into_tensor()),
        TensorData::I64(v) => tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), v.clone())
            .map(|a| a.into_tensor()),
    }
    .map_err(|e| BackendError::Input {
        model: label.to_string(),
        index,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use emogate_models::manifest::Manifest;
    use emogate_models::peft::Adapter;

    use super::*;

    fn reference() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/reference"))
    }

    /// Seeded inputs of the manifest's shapes, in -1..1.
    fn inputs(manifest: &Manifest) -> (Vec<InputFact>, Vec<Tensor>) {
        let mut state = 0x9e37_79b9_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        manifest
            .inputs
            .iter()
            .map(|spec| {
                let shape = Manifest::input_shape(spec);
                let values = (0..shape.iter().product::<usize>())
                    .map(|_| next())
                    .collect();
                (InputFact::F32(shape.clone()), Tensor::f32(shape, values))
            })
            .unzip()
    }

    /// The reference model's plan runs this CPU's own matrix-product
    /// kernels, never tract's portable `generic_` fallback where the CPU
    /// has better: on aarch64 (CI runs this under qemu, as a Cortex-A76)
    /// tract's NEON (`arm64simd_`, `arm64fp16_`) kernels, or its SVE or SME
    /// ones on a CPU that has those (qemu's default CPU does).
    #[test]
    fn the_plan_runs_this_cpus_own_kernels() {
        let model = OnnxModel::load(reference().join("emogate-ref.onnx")).expect("model");
        let manifest = Manifest::from_model(&model)
            .expect("manifest")
            .expect("embedded manifest");
        let (facts, _) = inputs(&manifest);
        let options = TractOptions {
            inputs: Some(facts),
            threads: 1,
            ..TractOptions::default()
        };
        let report = TractBackend::load_with(model.path(), &options)
            .expect("loads")
            .kernels();
        assert_eq!(report.arch, std::env::consts::ARCH);
        assert!(
            report.ops.get("OptMatMul").is_some_and(|n| *n > 0),
            "{report:?}"
        );
        assert!(!report.matmul.is_empty(), "{report:?}");
        // Our softmax and RmsNorm run in place of tract's (ops.rs).
        assert_eq!(report.ops.get("EmogateRmsNorm"), Some(&5), "{report:?}");
        assert!(!report.ops.contains_key("RmsNorm"), "{report:?}");
        assert!(
            report.ops.get("EmogateSoftmax").is_some_and(|n| *n >= 1),
            "{report:?}"
        );
        #[cfg(target_arch = "aarch64")]
        assert!(
            report
                .matmul
                .keys()
                .all(|k| ["arm64", "sve_", "sme_"].iter().any(|p| k.starts_with(p))),
            "not all aarch64 kernels: {report:?}"
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            assert!(
                report.matmul.keys().all(|k| !k.starts_with("generic")),
                "portable kernels on an FMA CPU: {report:?}"
            );
        }
    }

    /// The plan with our Softmax and RmsNorm gives what tract's own ops
    /// give, on the reference model.
    #[test]
    fn replaced_ops_give_what_tracts_give() {
        let model = OnnxModel::load(reference().join("emogate-ref.onnx")).expect("model");
        let manifest = Manifest::from_model(&model)
            .expect("manifest")
            .expect("embedded manifest");
        let (facts, tensors) = inputs(&manifest);
        let run = |stock_ops| {
            let options = TractOptions {
                inputs: Some(facts.clone()),
                threads: 1,
                stock_ops,
            };
            let mut backend = TractBackend::load_with(model.path(), &options).expect("loads");
            let first = backend.run(&tensors).expect("runs");
            // The state kept between runs gives the same answer again.
            assert_eq!(first, backend.run(&tensors).expect("runs"));
            first
        };
        let (stock, ours) = (run(true), run(false));
        for (a, b) in stock.iter().zip(&ours) {
            let diff = a
                .as_f32()
                .expect("f32")
                .iter()
                .zip(b.as_f32().expect("f32"))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-6, "outputs differ by {diff}");
        }
    }

    /// [`TractBackend::profile`] times every node that ran and the runs.
    #[test]
    fn the_profile_covers_the_plan() {
        let model = OnnxModel::load(reference().join("emogate-ref.onnx")).expect("model");
        let manifest = Manifest::from_model(&model)
            .expect("manifest")
            .expect("embedded manifest");
        let (facts, tensors) = inputs(&manifest);
        let options = TractOptions {
            inputs: Some(facts),
            ..TractOptions::default()
        };
        let mut backend = TractBackend::load_with(model.path(), &options).expect("loads");
        let profile = backend.profile(&tensors, 1, 5).expect("profiles");
        assert_eq!(profile.runs_ms.len(), 5);
        assert!(profile.nodes.iter().any(|n| n.op == "EmogateSoftmax"));
        assert!(profile.nodes.iter().all(|n| n.micros >= 0.0));
        let nodes: f64 = profile.nodes.iter().map(|n| n.micros).sum::<f64>() / 1e3;
        // Each node counted once: their medians add up to less than the
        // slowest run (with room for the machine's noise).
        let slowest = profile.runs_ms[4];
        assert!(
            nodes <= slowest * 1.5,
            "nodes {nodes} ms, runs {slowest} ms"
        );
    }

    /// The constant swap is the path adapters take, and it gives what the
    /// merged graph gives.
    #[test]
    fn swapped_weights_match_the_merged_graph() {
        let model =
            OnnxModel::load(reference().join("base/emogate-base.onnx")).expect("base model");
        let manifest = Manifest::from_model(&model)
            .expect("manifest")
            .expect("embedded manifest");
        let (facts, tensors) = inputs(&manifest);
        let options = TractOptions {
            inputs: Some(facts),
            threads: 1,
            ..TractOptions::default()
        };
        for name in ["affect-gate", "affect-all"] {
            let adapter = Adapter::load(reference().join("adapters").join(name)).expect("adapter");
            let plan = MergePlan::new(&model, &adapter).expect("plan");
            assert!(!plan.changes_graph());
            let mut swapped = TractBackend::load_with_weights(&model, &plan, &options)
                .expect("loads")
                .expect("every gate_proj weight is swapped in place");
            let mut merged =
                TractBackend::from_merged_proto(&model, &plan, &options).expect("loads");
            let mut base = TractBackend::load_with(model.path(), &options).expect("loads");
            let (a, b, c) = (
                swapped.run(&tensors).expect("runs"),
                merged.run(&tensors).expect("runs"),
                base.run(&tensors).expect("runs"),
            );
            let values = |t: &[Tensor]| -> Vec<f32> {
                t.iter()
                    .flat_map(|t| t.as_f32().expect("f32").to_vec())
                    .collect()
            };
            let (a, b, c) = (values(&a), values(&b), values(&c));
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= 1e-6,
                "{name}: swapped vs merged graph differ by {diff}"
            );
            assert_ne!(a, c, "{name}: the adapter changed nothing");
        }
    }
}
