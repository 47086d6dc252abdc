//! The structure-aware ONNX target: a graph built from `arbitrary` choices
//! (nodes of the ops the graph layer cares about, names in the exporters'
//! styles, initializers of any element type with too little, enough or too
//! much data, inline or external, dynamo `name_scopes` metadata, an
//! embedded manifest), encoded, written and loaded like a real model. Raw
//! protobuf bytes rarely decode into such graphs; these reach the linear
//! index, the parameter index and the tensor readers.

use std::path::Path;

use arbitrary::{Result, Unstructured};
use emogate_models::onnx::build;
use emogate_models::onnx::linear::LinearIndex;
use emogate_models::onnx::proto::{
    GraphProto, NodeProto, StringStringEntryProto, TensorProto, tensor_proto::DataLocation,
};
use prost::Message;

use super::targets::{exercise_onnx, scratch};

/// Value names in the styles the exporters use (and a few odd ones).
const NAMES: &[&str] = &[
    "x",
    "logits",
    "onnx::MatMul_873",
    "val_159",
    "model.layers.0.mlp.gate_proj.weight",
    "/m/model/layers.0/mlp/gate_proj/MatMul_output_0",
    "/m/model/layers.1/self_attn/q_proj/MatMul_output_0",
    "score.weight",
    "bias",
    "",
    "../escape",
    "layers.5.mlp.down_proj",
];

/// Node names: legacy exporter paths, dynamo names, odd ones.
const NODE_NAMES: &[&str] = &[
    "/m/model/layers.0/mlp/gate_proj/MatMul",
    "/m/model/layers.1/self_attn/q_proj/MatMul",
    "/m/score/Gemm",
    "node_linear_4",
    "",
    "/",
    "//MatMul",
    "/m/model/layers.99999999999999999999/mlp/MatMul",
];

const OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Add",
    "Transpose",
    "Cast",
    "Constant",
    "Identity",
    "Softmax",
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "Gather",
    "Mul",
    "QuantizeLinear",
    "DequantizeLinear",
    "MatMulInteger",
];

/// ONNX element types (float, uint8, int8, int32, int64, string, bool,
/// float16, double, bfloat16) and one that is none.
const DATA_TYPES: &[i32] = &[1, 2, 3, 6, 7, 8, 9, 10, 11, 16, 0, 99];

const LOCATIONS: &[&str] = &[
    "model.onnx.data",
    "",
    "../model.onnx.data",
    "/etc/passwd",
    "missing.data",
];

// The specs below are read from the input with `Unstructured` by hand, not
// `#[derive(Arbitrary)]`: the derive's proc macro would change the features
// of `syn` in the main workspace, which includes this file in its
// regression test, and rebuild half of it.

#[derive(Debug)]
struct GraphSpec {
    nodes: Vec<NodeSpec>,
    initializers: Vec<InitSpec>,
    inputs: Vec<(u8, Vec<Option<i8>>)>,
    outputs: Vec<u8>,
    manifest: Option<String>,
    side_file: Vec<u8>,
    resolve: Vec<u8>,
}

#[derive(Debug)]
struct NodeSpec {
    name: u8,
    op: u8,
    inputs: Vec<u8>,
    outputs: Vec<u8>,
    trans_b: Option<i64>,
    alpha: Option<f32>,
    name_scopes: Option<Vec<u8>>,
}

#[derive(Debug)]
struct InitSpec {
    name: u8,
    data_type: u8,
    dims: Vec<i8>,
    data: DataSpec,
}

#[derive(Debug)]
enum DataSpec {
    None,
    Raw(Vec<u8>),
    Floats(Vec<f32>),
    Ints(Vec<i32>),
    External {
        location: u8,
        offset: Option<u16>,
        length: Option<u16>,
    },
}

/// Up to `max` items read by `item`.
fn list<T>(
    u: &mut Unstructured,
    max: usize,
    mut item: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| item(u)).collect()
}

fn maybe<T>(
    u: &mut Unstructured,
    item: impl FnOnce(&mut Unstructured) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.arbitrary::<bool>()? {
        Some(item(u)?)
    } else {
        None
    })
}

impl NodeSpec {
    fn read(u: &mut Unstructured) -> Result<Self> {
        Ok(Self {
            name: u.arbitrary()?,
            op: u.arbitrary()?,
            inputs: list(u, 4, |u| u.arbitrary())?,
            outputs: list(u, 2, |u| u.arbitrary())?,
            trans_b: maybe(u, |u| u.arbitrary())?,
            alpha: maybe(u, |u| u.arbitrary())?,
            name_scopes: maybe(u, |u| list(u, 8, |u| u.arbitrary()))?,
        })
    }
}

impl InitSpec {
    fn read(u: &mut Unstructured) -> Result<Self> {
        Ok(Self {
            name: u.arbitrary()?,
            data_type: u.arbitrary()?,
            dims: list(u, 4, |u| u.arbitrary())?,
            data: match u.int_in_range(0..=4u8)? {
                0 => DataSpec::None,
                1 => DataSpec::Raw(list(u, 256, |u| u.arbitrary())?),
                2 => DataSpec::Floats(list(u, 64, |u| u.arbitrary())?),
                3 => DataSpec::Ints(list(u, 64, |u| u.arbitrary())?),
                _ => DataSpec::External {
                    location: u.arbitrary()?,
                    offset: maybe(u, |u| u.arbitrary())?,
                    length: maybe(u, |u| u.arbitrary())?,
                },
            },
        })
    }
}

impl GraphSpec {
    fn read(u: &mut Unstructured) -> Result<Self> {
        Ok(Self {
            nodes: list(u, 32, NodeSpec::read)?,
            initializers: list(u, 32, InitSpec::read)?,
            inputs: list(u, 4, |u| {
                Ok((u.arbitrary()?, list(u, 4, |u| u.arbitrary())?))
            })?,
            outputs: list(u, 2, |u| u.arbitrary())?,
            manifest: maybe(u, |u| u.arbitrary::<String>())?,
            resolve: list(u, 4, |u| u.arbitrary())?,
            side_file: u.bytes(u.len())?.to_vec(),
        })
    }
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn node(spec: &NodeSpec) -> NodeProto {
    let inputs: Vec<&str> = spec
        .inputs
        .iter()
        .take(4)
        .map(|&i| pick(NAMES, i))
        .collect();
    let outputs: Vec<&str> = spec
        .outputs
        .iter()
        .take(2)
        .map(|&i| pick(NAMES, i))
        .collect();
    let mut node = build::node(
        pick(NODE_NAMES, spec.name),
        pick(OPS, spec.op),
        &inputs,
        &outputs,
    );
    if let Some(t) = spec.trans_b {
        node.attribute.push(build::attr_int("transB", t));
    }
    if let Some(a) = spec.alpha {
        node.attribute.push(build::attr_float("alpha", a));
    }
    if let Some(scopes) = &spec.name_scopes {
        let chain: Vec<String> = scopes
            .iter()
            .take(8)
            .map(|&i| pick(NAMES, i).replace('/', "."))
            .collect();
        node.metadata_props.push(build::entry(
            "pkg.torch.onnx.name_scopes",
            &format!("{chain:?}"),
        ));
    }
    node
}

fn initializer(spec: &InitSpec) -> TensorProto {
    let dims: Vec<i64> = spec.dims.iter().take(4).map(|&d| i64::from(d)).collect();
    let data_type = DATA_TYPES[usize::from(spec.data_type) % DATA_TYPES.len()];
    let mut t = build::tensor_header(pick(NAMES, spec.name), data_type, &dims);
    match &spec.data {
        DataSpec::None => {}
        DataSpec::Raw(raw) => t.raw_data = Some(raw.clone().into()),
        DataSpec::Floats(f) => t.float_data = f.clone(),
        DataSpec::Ints(i) => t.int32_data = i.clone(),
        DataSpec::External {
            location,
            offset,
            length,
        } => {
            t.set_data_location(DataLocation::External);
            let mut entry = |k: &str, v: String| {
                t.external_data.push(StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v),
                })
            };
            entry("location", pick(LOCATIONS, *location).into());
            if let Some(o) = offset {
                entry("offset", o.to_string());
            }
            if let Some(l) = length {
                entry("length", l.to_string());
            }
        }
    }
    t
}

/// Builds the graph `data` describes, writes it (and its side file) to
/// `dir`, and runs it through [`exercise_onnx`] and module resolution.
pub fn onnx_graph(dir: &Path, data: &[u8]) {
    let Ok(spec) = GraphSpec::read(&mut Unstructured::new(data)) else {
        return;
    };
    let graph = GraphProto {
        name: Some("fuzz".into()),
        node: spec.nodes.iter().map(node).collect(),
        initializer: spec.initializers.iter().map(initializer).collect(),
        input: spec
            .inputs
            .iter()
            .take(4)
            .map(|(n, dims)| {
                let dims: Vec<Option<i64>> =
                    dims.iter().take(4).map(|d| d.map(i64::from)).collect();
                build::value_info(pick(NAMES, *n), 1, &dims)
            })
            .collect(),
        output: spec
            .outputs
            .iter()
            .take(2)
            .map(|&n| build::value_info(pick(NAMES, n), 1, &[Some(1)]))
            .collect(),
        ..Default::default()
    };
    let linear = LinearIndex::build(&graph);
    for &i in spec.resolve.iter().take(4) {
        let _ = linear.resolve(pick(NAMES, i));
    }
    let mut model = build::model(graph, 17);
    if let Some(manifest) = &spec.manifest {
        model.metadata_props.push(build::entry(
            emogate_models::manifest::MANIFEST_KEY,
            manifest,
        ));
    }
    scratch(dir, "model.onnx.data", &spec.side_file);
    let path = scratch(dir, "model.onnx", &model.encode_to_vec());
    exercise_onnx(&path);
}
