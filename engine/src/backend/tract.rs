//! The tract backend: pure Rust, no system libraries, the embedded default.

use std::path::{Path, PathBuf};

use emogate_models::onnx::proto::ModelProto;
use tract_onnx::prelude::*;

use super::{Backend, BackendError, Tensor, TensorData};

type Plan = std::sync::Arc<TypedRunnableModel>;

/// A model optimized and planned by tract.
pub struct TractBackend {
    label: String,
    plan: Plan,
}

impl TractBackend {
    /// Loads an ONNX file (external data is read from its folder).
    ///
    /// # Errors
    /// [`BackendError::Load`] naming the file and tract's reason.
    pub fn load(path: &Path) -> Result<Self, BackendError> {
        let load = |message: String| BackendError::Load {
            path: path.to_path_buf(),
            message,
        };
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load(format!("{e:#}")))?;
        Self::plan(model, path.display().to_string()).map_err(|e| load(format!("{e:#}")))
    }

    /// Loads an edited model from memory; external data still resolves
    /// relative to `dir` (the folder of the file it was read from).
    ///
    /// # Errors
    /// [`BackendError::Load`] naming `dir` and tract's reason.
    pub fn from_proto(proto: &ModelProto, dir: &Path) -> Result<Self, BackendError> {
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
        let onnx = tract_onnx::onnx();
        let dir_str = dir
            .to_str()
            .ok_or_else(|| load("folder is not UTF-8".into()))?;
        let model = onnx
            .parse(&tract_proto, Some(dir_str))
            .map(|parsed| parsed.model)
            .map_err(|e| load(format!("{e:#}")))?;
        Self::plan(model, dir.display().to_string()).map_err(|e| load(format!("{e:#}")))
    }

    fn plan(model: InferenceModel, label: String) -> TractResult<Self> {
        let plan = model.into_optimized()?.into_runnable()?;
        Ok(TractBackend { label, plan })
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let mut values = TVec::new();
        for (index, input) in inputs.iter().enumerate() {
            let t = match &input.data {
                TensorData::F32(v) => {
                    tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), v.clone())
                        .map(|a| a.into_tensor())
                }
                TensorData::I64(v) => {
                    tract_ndarray::ArrayD::from_shape_vec(input.shape.clone(), v.clone())
                        .map(|a| a.into_tensor())
                }
            }
            .map_err(|e| BackendError::Input {
                model: self.label.clone(),
                index,
                message: e.to_string(),
            })?;
            values.push(t.into_tvalue());
        }
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
