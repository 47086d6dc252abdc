//! Making models smaller: fp16 conversion and int8 weight quantization.
//!
//! Three modes, each a graph rewrite of an f32 model:
//!
//! * [`Mode::Fp16`] ([`fp16`]) — float initializers and values become f16;
//!   the graph's inputs and outputs stay f32 behind `Cast` nodes (by
//!   default); normalization (LayerNormalization and RMSNorm/LayerNorm
//!   patterns built from Pow/ReduceMean/Sqrt/Div), Softmax and anything the
//!   user names stay f32. Weights beyond the f16 range are clamped and counted.
//! * [`Mode::Int8`] ([`int8`]) — weight-only, symmetric, per output channel,
//!   zero point 0, in QDQ form: an int8 initializer feeding a
//!   `DequantizeLinear` (with the channel `axis`) that feeds the `MatMul`,
//!   `Gemm` or `Conv`. TensorRT's ONNX parser accepts this form.
//! * [`Mode::Int8Dynamic`] ([`int8`]) — `DynamicQuantizeLinear` +
//!   `MatMulInteger`, the graph ONNX Runtime's `quantize_dynamic` writes;
//!   for CPU runtimes (TensorRT rejects `MatMulInteger`).
//!
//! Which layers are touched is chosen by module path ([`Selection`]), found
//! by [`crate::onnx::linear`] as the merge finds them (legacy node names,
//! dynamo name-scope metadata, parameter-named initializers). [`quantize_to_file`] writes the result
//! with [`crate::onnx::save_model`] (temp file, fsync, rename) and returns a
//! [`QuantizeReport`].

mod elem_types;
pub mod fp16;
pub mod gptq;
pub mod int8;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use regex::Regex;

use crate::error::{Error, Result};
use crate::onnx::proto::tensor_proto::DataType;
use crate::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use crate::onnx::{NodeExt, OnnxModel, SaveOptions, SaveSummary, onnx_type_name, save_model};

pub use elem_types::infer_elem_types;

/// Metadata key recording how a model was quantized.
pub const QUANTIZE_KEY: &str = "emogate.quantize";

/// Ops that only appear in models that are already quantized.
pub const QUANTIZED_OPS: &[&str] = &[
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "MatMulNBits",
];

/// What to do to the model.
#[derive(Debug, Clone)]
pub enum Mode {
    Fp16(fp16::Fp16Options),
    Int8(int8::Int8Options),
    Int8Dynamic(int8::Int8Options),
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Fp16(_) => "fp16",
            Mode::Int8(_) => "int8",
            Mode::Int8Dynamic(_) => "int8-dynamic",
        }
    }
}

/// Which modules a conversion touches, by module path (regular
/// expressions, matched anywhere in the path, e.g. `gate_proj` or
/// `^blocks\.0\.`). Empty `modules` means all; `exclude` wins.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub modules: Vec<String>,
    pub exclude: Vec<String>,
}

/// A compiled [`Selection`] that remembers which patterns matched.
pub(crate) struct Selector {
    modules: Vec<(String, Regex, bool)>,
    exclude: Vec<(String, Regex, bool)>,
}

impl Selector {
    pub(crate) fn new(selection: &Selection, model: &Path) -> Result<Self> {
        let compile = |flag: &str, patterns: &[String]| -> Result<Vec<(String, Regex, bool)>> {
            patterns
                .iter()
                .map(|p| {
                    Regex::new(p).map(|r| (p.clone(), r, false)).map_err(|e| {
                        Error::field(
                            model,
                            format!("{flag} `{p}`"),
                            format!("is not a valid regular expression: {e}"),
                        )
                    })
                })
                .collect()
        };
        Ok(Selector {
            modules: compile("--modules", &selection.modules)?,
            exclude: compile("--exclude-modules", &selection.exclude)?,
        })
    }

    /// Whether a layer known by `paths` is selected.
    pub(crate) fn selects<'a>(&mut self, paths: impl IntoIterator<Item = &'a str> + Clone) -> bool {
        let hit = |list: &mut Vec<(String, Regex, bool)>| {
            let mut any = false;
            for (_, re, matched) in list.iter_mut() {
                if paths.clone().into_iter().any(|p| re.is_match(p)) {
                    *matched = true;
                    any = true;
                }
            }
            any
        };
        let included = self.modules.is_empty() || hit(&mut self.modules);
        let excluded = hit(&mut self.exclude);
        included && !excluded
    }

    /// Fails when a pattern matched no module, listing some that exist.
    pub(crate) fn check_all_matched(&self, model: &Path, known: &[String]) -> Result<()> {
        for (flag, list) in [
            ("--modules", &self.modules),
            ("--exclude-modules", &self.exclude),
        ] {
            if let Some((p, _, _)) = list.iter().find(|(_, _, m)| !m) {
                let mut sample: Vec<&str> = known.iter().map(String::as_str).collect();
                sample.sort();
                sample.dedup();
                let shown = sample
                    .iter()
                    .take(12)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::field(
                    model,
                    format!("{flag} `{p}`"),
                    format!(
                        "matches no module of the model; module paths look like: {}{}",
                        if shown.is_empty() {
                            "(none found)"
                        } else {
                            &shown
                        },
                        if sample.len() > 12 { ", …" } else { "" }
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One tensor the conversion changed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    /// The initializer as named in the input.
    pub name: String,
    /// The module it belongs to, when known.
    pub module: Option<String>,
    /// The op reading it (`MatMul`, `Gemm`, `Conv`, … or `-` for fp16).
    pub op: String,
    pub shape: Vec<i64>,
    pub from: String,
    pub to: String,
    /// The channel axis of per-channel scales.
    pub axis: Option<i64>,
    /// Values clamped to the target's range.
    pub clamped: u64,
}

/// Everything [`quantize_to_file`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizeReport {
    pub model: PathBuf,
    pub output: PathBuf,
    pub mode: &'static str,
    /// Bytes of the model file plus its side files, before and after.
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// Bytes of all initializers' values, before and after.
    pub weight_bytes_before: u64,
    pub weight_bytes_after: u64,
    pub tensors: Vec<TensorReport>,
    /// Values clamped to the target range (f16: ±65504).
    pub values_clamped: u64,
    /// Nonzero values that became zero (f16 underflow).
    pub values_flushed_to_zero: u64,
    /// Nodes left in f32 by fp16 conversion, by reason.
    pub kept_f32: Vec<KeptNode>,
    /// Layers left alone, with why (excluded, too small, not f32, …).
    pub skipped: Vec<Skipped>,
    /// Things the user must know (e.g. TensorRT will reject the graph).
    pub warnings: Vec<String>,
    pub save: Option<SaveSummary>,
}

/// A node fp16 conversion kept in f32.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptNode {
    pub node: String,
    pub op: String,
    pub reason: String,
}

/// A layer a conversion did not touch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub weight: String,
    pub module: Option<String>,
    pub reason: String,
}

impl QuantizeReport {
    pub(crate) fn new(model: &OnnxModel, mode: &Mode) -> Self {
        QuantizeReport {
            model: model.path().to_path_buf(),
            output: PathBuf::new(),
            mode: mode.name(),
            file_bytes_before: 0,
            file_bytes_after: 0,
            weight_bytes_before: 0,
            weight_bytes_after: 0,
            tensors: Vec::new(),
            values_clamped: 0,
            values_flushed_to_zero: 0,
            kept_f32: Vec::new(),
            skipped: Vec::new(),
            warnings: Vec::new(),
            save: None,
        }
    }
}

/// Converts `model` and writes the result to `out` (with `<out>.data` when
/// the input used external data or the output would pass 2 GB).
///
/// # Errors
/// [`Error::Field`] for a model already quantized or in f16, weights of an
/// unsupported type, a selection pattern matching nothing, an opset too old
/// for the chosen form; [`Error::Io`] for failed reads and writes.
pub fn quantize_to_file(
    model: &OnnxModel,
    mode: &Mode,
    out: &Path,
    save: &SaveOptions,
) -> Result<QuantizeReport> {
    let (proto, mut report) = quantize(model, mode)?;
    let mut options = save.clone();
    if model.uses_external_data() {
        // Keep the input's layout: large tensors in a side file.
        options.inline_limit = 0;
    }
    let summary = save_model(model, proto, std::iter::empty(), out, &options)?;
    report.output = out.to_path_buf();
    report.file_bytes_after = file_bytes(out, summary.data.as_deref())?;
    report.save = Some(summary);
    Ok(report)
}

/// Converts `model` in memory. Every initializer of the result is inline;
/// [`quantize_to_file`] moves large ones to a side file as needed.
///
/// # Errors
/// As [`quantize_to_file`], without the writing.
pub fn quantize(model: &OnnxModel, mode: &Mode) -> Result<(ModelProto, QuantizeReport)> {
    check_not_quantized(model, mode)?;
    let mut report = QuantizeReport::new(model, mode);
    report.file_bytes_before = input_file_bytes(model)?;
    let mut proto = model.proto.clone();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| Error::field(model.path(), "graph", "the model has no graph"))?;
    inline_all(model, graph)?;
    report.weight_bytes_before = weight_bytes(graph);
    match mode {
        Mode::Fp16(o) => fp16::convert(model, graph, o, &mut report)?,
        Mode::Int8(o) => int8::quantize_qdq(model, graph, o, &mut report)?,
        Mode::Int8Dynamic(o) => int8::quantize_dynamic(model, graph, o, &mut report)?,
    }
    report.weight_bytes_after = weight_bytes(graph);
    if report.tensors.is_empty() {
        return Err(Error::field(
            model.path(),
            "graph",
            format!(
                "{} conversion found nothing to convert{}",
                mode.name(),
                if report.skipped.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; skipped: {}",
                        report
                            .skipped
                            .iter()
                            .take(6)
                            .map(|s| format!("`{}` ({})", s.weight, s.reason))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        ));
    }
    proto.metadata_props.retain(|p| p.key() != QUANTIZE_KEY);
    proto.metadata_props.push(StringStringEntryProto {
        key: Some(QUANTIZE_KEY.into()),
        value: Some(
            serde_json::json!({
                "mode": mode.name(),
                "tensors": report.tensors.len(),
                "values_clamped": report.values_clamped,
            })
            .to_string(),
        ),
    });
    Ok((proto, report))
}

/// Refuses models that are already quantized or converted.
fn check_not_quantized(model: &OnnxModel, mode: &Mode) -> Result<()> {
    let graph = model.graph();
    if let Some(p) = model
        .proto
        .metadata_props
        .iter()
        .find(|p| p.key() == QUANTIZE_KEY)
    {
        return Err(Error::field(
            model.path(),
            format!("metadata_props[\"{QUANTIZE_KEY}\"]"),
            format!(
                "the model was already converted by emogate-convert quantize ({}); convert the original f32 model instead",
                p.value()
            ),
        ));
    }
    if let Some(n) = graph
        .node
        .iter()
        .find(|n| QUANTIZED_OPS.contains(&n.op_type()))
    {
        return Err(Error::field(
            model.path(),
            format!("node `{}`", n.name()),
            format!(
                "is a {} node: the model is already quantized; convert the original f32 model instead",
                n.op_type()
            ),
        ));
    }
    for t in model.all_initializers() {
        let ty = t.data_type();
        let unsupported = ty == DataType::Float16 as i32 || ty == DataType::Bfloat16 as i32;
        if unsupported && t.dims.iter().product::<i64>() > 1 {
            return Err(Error::field(
                model.path(),
                format!("initializer `{}` data_type", t.name()),
                format!(
                    "is {}; {} conversion expects an f32 model (weights in float32)",
                    onnx_type_name(ty),
                    mode.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Reads every external initializer into `raw_data`.
fn inline_all(model: &OnnxModel, graph: &mut GraphProto) -> Result<()> {
    crate::onnx::visit_initializers_mut(graph, &mut |t: &mut TensorProto| -> Result<()> {
        if crate::onnx::is_external(t) {
            let bytes = model.raw_bytes(t)?.unwrap_or_default();
            t.external_data.clear();
            t.data_location = None;
            t.raw_data = Some(Bytes::from(bytes));
        }
        Ok(())
    })
}

/// Bytes per element of an ONNX type (0 for strings and unknowns).
pub fn elem_size(code: i32) -> usize {
    match DataType::try_from(code) {
        Ok(DataType::Float | DataType::Int32 | DataType::Uint32) => 4,
        Ok(DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64) => 8,
        Ok(DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16) => 2,
        Ok(DataType::Int8 | DataType::Uint8 | DataType::Bool) => 1,
        Ok(DataType::Complex128) => 16,
        _ => 0,
    }
}

/// Bytes of the values of all initializers (as stored, dims × element size).
pub fn weight_bytes(graph: &GraphProto) -> u64 {
    let mut total = 0u64;
    crate::onnx::visit_initializers(graph, &mut |t| {
        total += t.dims.iter().product::<i64>().max(0) as u64 * elem_size(t.data_type()) as u64;
    });
    total
}

fn input_file_bytes(model: &OnnxModel) -> Result<u64> {
    let mut files: HashSet<PathBuf> = HashSet::new();
    for t in model.all_initializers() {
        if let Some(ext) = model.external_data(t)? {
            files.insert(ext.file);
        }
    }
    let mut total = std::fs::metadata(model.path())
        .map_err(|e| Error::io(model.path(), e))?
        .len();
    for f in files {
        total += std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
    }
    Ok(total)
}

fn file_bytes(model: &Path, data: Option<&Path>) -> Result<u64> {
    let mut total = std::fs::metadata(model)
        .map_err(|e| Error::io(model, e))?
        .len();
    if let Some(d) = data {
        total += std::fs::metadata(d).map_err(|e| Error::io(d, e))?.len();
    }
    Ok(total)
}

/// Refuses graphs with control flow: their bodies would need the same
/// rewrite, which is not supported.
pub(crate) fn refuse_subgraphs(model: &OnnxModel, graph: &GraphProto, what: &str) -> Result<()> {
    if let Some(n) = graph.node.iter().find(|n| n.has_subgraphs()) {
        return Err(Error::field(
            model.path(),
            format!("node `{}`", n.name()),
            format!(
                "is a {} with a subgraph; {what} of models with control flow (If/Loop/Scan) is not supported",
                n.op_type()
            ),
        ));
    }
    Ok(())
}

/// Refuses a model whose default-domain opset is below `min`, which `form`
/// (the ops the conversion writes) needs.
///
/// # Errors
/// [`Error::Field`] on `opset_import`, naming the opset found and the one needed.
pub(crate) fn require_opset(model: &OnnxModel, min: i64, form: &str) -> Result<()> {
    let opset = default_opset(&model.proto.opset_import);
    if opset < min {
        return Err(Error::field(
            model.path(),
            "opset_import",
            format!(
                "the model imports opset {opset}; {form} needs opset {min} or newer (re-export with a newer opset_version)"
            ),
        ));
    }
    Ok(())
}

/// The default-domain opset the model imports.
pub(crate) fn default_opset(proto_opsets: &[crate::onnx::proto::OperatorSetIdProto]) -> i64 {
    proto_opsets
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(0)
}
