//! The tract backend: pure Rust, no system libraries, the embedded default.

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

/// A model optimized and planned by tract.
pub struct TractBackend {
    label: String,
    plan: Plan,
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
        let plan = model.into_optimized()?.into_runnable()?;
        Ok(TractBackend {
            label,
            plan,
            bound: TVec::new(),
        })
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
        let outputs = self.plan.run(values).map_err(|e| BackendError::Run {
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
