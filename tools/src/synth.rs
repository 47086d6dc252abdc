//! Synthetic models of real shapes, for benchmarks that must not ship
//! gigabytes of weights: the model is written on the fly, its weights
//! streamed to a side file, with seeded pseudo-random values.
//!
//! [`DecoderSpec::qwen2_5_0_5b`] is shaped like Qwen2.5-0.5B (24 layers,
//! hidden 896, intermediate 4864, 14 query and 2 key/value heads, vocab
//! 151 936): about 2 GB of f32 weights. The graph is a real, runnable
//! decoder (RMSNorm, grouped-query attention without rotary or mask, SwiGLU
//! MLP, a 7-way emotion head) with the legacy exporter's naming
//! (`/model/layers.0/mlp/gate_proj/MatMul`, weights `onnx::MatMul_N`
//! stored `[in, out]`), so converters resolve it like a real export.

use std::io::Write;
use std::path::{Path, PathBuf};

use emogate_models::onnx::build::{
    attr_int, attr_ints, entry, model, node, tensor_header, tensor_raw, value_info,
};
use emogate_models::onnx::proto::tensor_proto::{DataLocation, DataType};
use emogate_models::onnx::proto::{GraphProto, NodeProto, TensorProto};
use prost::Message;

use crate::atomic::{self, AtomicFile};
use crate::error::{Error, Result};
use crate::rng::Rng;

const FLOAT: i32 = DataType::Float as i32;
const INT64: i32 = DataType::Int64 as i32;
/// Bytes of one f32 weight.
const F32_BYTES: usize = std::mem::size_of::<f32>();
/// ONNX opset the decoder is written for.
const OPSET: i64 = 17;
/// Weights are generated and written this many bytes at a time.
const WRITE_CHUNK: usize = 64 * 1024;
/// Tensors start at multiples of this in the side file, as ONNX Runtime's
/// own writer aligns them (mmap-friendly).
const TENSOR_ALIGN: u64 = 4096;
/// RMSNorm's epsilon (Qwen2's `rms_norm_eps`).
const RMS_EPS: f32 = 1e-6;
/// The exponent RMSNorm squares with (`Pow(x, 2)`, as the exporter writes it).
const SQUARE: f32 = 2.0;
/// Weight bounds: embeddings and biases small, as after training; linear
/// layers and RMSNorm scales by their own rules at the call.
const EMBED_BOUND: f32 = 0.02;
const BIAS_BOUND: f32 = 0.02;
const NORM_SCALE_BOUND: f32 = 1.0;
/// LoRA `B` starts near zero (PEFT initializes it to zero; a little noise
/// makes the merge visible).
const LORA_B_BOUND: f32 = 0.01;
/// safetensors pads its JSON header to a multiple of this.
const SAFETENSORS_ALIGN: usize = 8;

/// The shape of a synthetic decoder.
#[derive(Debug, Clone, Copy)]
pub struct DecoderSpec {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub labels: usize,
    pub seq_len: usize,
}

impl DecoderSpec {
    /// Qwen2.5-0.5B's shape (about 2 GB of f32 weights).
    pub fn qwen2_5_0_5b() -> Self {
        DecoderSpec {
            layers: 24,
            hidden: 896,
            intermediate: 4864,
            heads: 14,
            kv_heads: 2,
            vocab: 151_936,
            labels: 7,
            seq_len: 16,
        }
    }

    /// A tiny model of the same structure, for tests.
    pub fn tiny() -> Self {
        DecoderSpec {
            layers: 2,
            hidden: 32,
            intermediate: 64,
            heads: 4,
            kv_heads: 2,
            vocab: 64,
            labels: 7,
            seq_len: 8,
        }
    }

    /// Number of f32 weights.
    pub fn parameters(&self) -> usize {
        let h = self.hidden;
        let kv = h / self.heads * self.kv_heads;
        let attn = h * h * 2 + h * kv * 2 + h + kv * 2;
        let mlp = 3 * h * self.intermediate;
        self.vocab * h + self.layers * (attn + mlp + 2 * h) + h + h * self.labels
    }
}

/// Writes weights to the side file and records their headers.
struct Weights {
    out: AtomicFile,
    location: String,
    offset: u64,
    rng: Rng,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl Weights {
    fn add(&mut self, name: &str, dims: &[i64], bound: f32) -> Result<String> {
        let count: i64 = dims.iter().product();
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        for _ in 0..count {
            buf.extend_from_slice(&self.rng.symmetric_f32(bound).to_le_bytes());
            if buf.len() >= WRITE_CHUNK {
                self.write(&buf)?;
                buf.clear();
            }
        }
        self.write(&buf)?;
        let length = count as u64 * F32_BYTES as u64;
        let mut t = tensor_header(name, FLOAT, dims);
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            entry("location", &self.location),
            entry("offset", &self.offset.to_string()),
            entry("length", &length.to_string()),
        ];
        self.offset += length;
        let pad = self.offset.next_multiple_of(TENSOR_ALIGN) - self.offset;
        self.write(&vec![0u8; pad as usize])?;
        self.offset += pad;
        self.initializers.push(t);
        Ok(name.to_string())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("writing", self.out.path(), e))
    }

    /// A weight named like the legacy exporter's anonymous initializers.
    fn anonymous(&mut self, op: &str, dims: &[i64], bound: f32) -> Result<String> {
        self.counter += 1;
        self.add(&format!("onnx::{op}_{}", self.counter), dims, bound)
    }
}

/// The decoder's graph file in its folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Its weights, beside it.
pub const DATA_FILE: &str = "model.onnx.data";

/// Writes a decoder of `spec` to `dir/model.onnx` + `dir/model.onnx.data`,
/// calling `progress(layer)` as layers are written. Returns the model path.
/// Each file appears only once complete (the data file first).
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_decoder(
    dir: &Path,
    spec: &DecoderSpec,
    seed: u64,
    progress: &mut dyn FnMut(usize),
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let mut w = Weights {
        out: AtomicFile::create(&dir.join(DATA_FILE))?,
        location: DATA_FILE.into(),
        offset: 0,
        rng: Rng::new(seed),
        initializers: Vec::new(),
        counter: 0,
    };
    let (h, i_dim) = (spec.hidden as i64, spec.intermediate as i64);
    let head_dim = h / spec.heads as i64;
    let kv = head_dim * spec.kv_heads as i64;
    let group = (spec.heads / spec.kv_heads) as i64;
    let mut nodes: Vec<NodeProto> = Vec::new();
    let mut consts: Vec<TensorProto> = Vec::new();
    let int_const = |consts: &mut Vec<TensorProto>, name: &str, values: &[i64]| -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        consts.push(tensor_raw(name, INT64, &[values.len() as i64], raw));
        name.to_string()
    };
    let f32_scalar = |consts: &mut Vec<TensorProto>, name: &str, v: f32| -> String {
        consts.push(tensor_raw(name, FLOAT, &[], v.to_le_bytes().to_vec()));
        name.to_string()
    };
    let two = f32_scalar(&mut consts, "const.two", SQUARE);
    let eps = f32_scalar(&mut consts, "const.eps", RMS_EPS);
    let inv_sqrt_d = f32_scalar(
        &mut consts,
        "const.inv_sqrt_head_dim",
        1.0 / (head_dim as f32).sqrt(),
    );
    let q_shape = int_const(
        &mut consts,
        "const.q_shape",
        &[1, -1, spec.heads as i64, head_dim],
    );
    let kv_shape = int_const(
        &mut consts,
        "const.kv_shape",
        &[1, -1, spec.kv_heads as i64, 1, head_dim],
    );
    let kv_expand = int_const(&mut consts, "const.kv_expand", &[1, 1, 1, group, 1]);
    let merged_heads = int_const(
        &mut consts,
        "const.merged_heads",
        &[1, -1, spec.heads as i64, head_dim],
    );
    let flat = int_const(&mut consts, "const.flat", &[1, -1, h]);

    let embed = w.add(
        "model.embed_tokens.weight",
        &[spec.vocab as i64, h],
        EMBED_BOUND,
    )?;
    nodes.push(node(
        "/model/embed_tokens/Gather",
        "Gather",
        &[&embed, "input_ids"],
        &["h.0"],
    ));
    let mut hidden = "h.0".to_string();

    let rms =
        |nodes: &mut Vec<NodeProto>, w: &mut Weights, scope: &str, x: &str| -> Result<String> {
            let p = |s: &str| format!("{scope}/{s}");
            let weight = w.add(
                &format!("{}.weight", scope.trim_start_matches('/').replace('/', ".")),
                &[h],
                NORM_SCALE_BOUND,
            )?;
            nodes.push(node(&p("Pow"), "Pow", &[x, &two], &[&p("Pow_out")]));
            let mut mean = node(
                &p("ReduceMean"),
                "ReduceMean",
                &[&p("Pow_out")],
                &[&p("ReduceMean_out")],
            );
            mean.attribute = vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)];
            nodes.push(mean);
            nodes.push(node(
                &p("Add"),
                "Add",
                &[&p("ReduceMean_out"), &eps],
                &[&p("Add_out")],
            ));
            nodes.push(node(
                &p("Sqrt"),
                "Sqrt",
                &[&p("Add_out")],
                &[&p("Sqrt_out")],
            ));
            nodes.push(node(
                &p("Div"),
                "Div",
                &[x, &p("Sqrt_out")],
                &[&p("Div_out")],
            ));
            nodes.push(node(
                &p("Mul"),
                "Mul",
                &[&p("Div_out"), &weight],
                &[&p("Mul_out")],
            ));
            Ok(p("Mul_out"))
        };
    let linear = |nodes: &mut Vec<NodeProto>,
                  w: &mut Weights,
                  scope: &str,
                  x: &str,
                  din: i64,
                  dout: i64,
                  bias: bool|
     -> Result<String> {
        let weight = w.anonymous("MatMul", &[din, dout], 1.0 / (din as f32).sqrt())?;
        let mm = format!("{scope}/MatMul");
        nodes.push(node(&mm, "MatMul", &[x, &weight], &[&format!("{mm}_out")]));
        if !bias {
            return Ok(format!("{mm}_out"));
        }
        let b = w.add(
            &format!("{}.bias", scope.trim_start_matches('/').replace('/', ".")),
            &[dout],
            BIAS_BOUND,
        )?;
        let add = format!("{scope}/Add");
        nodes.push(node(
            &add,
            "Add",
            &[&b, &format!("{mm}_out")],
            &[&format!("{add}_out")],
        ));
        Ok(format!("{add}_out"))
    };

    for layer in 0..spec.layers {
        let s = format!("/model/layers.{layer}");
        let p = |x: &str| format!("{s}/{x}");
        let normed = rms(&mut nodes, &mut w, &p("input_layernorm"), &hidden)?;
        let q = linear(
            &mut nodes,
            &mut w,
            &p("self_attn/q_proj"),
            &normed,
            h,
            h,
            true,
        )?;
        let k = linear(
            &mut nodes,
            &mut w,
            &p("self_attn/k_proj"),
            &normed,
            h,
            kv,
            true,
        )?;
        let v = linear(
            &mut nodes,
            &mut w,
            &p("self_attn/v_proj"),
            &normed,
            h,
            kv,
            true,
        )?;
        let a = |x: &str| format!("{s}/self_attn/{x}");
        // q: [1,T,H] → [1,heads,T,d]; k, v: [1,T,kv] → repeated to [1,heads,T,d].
        nodes.push(node(
            &a("q_reshape"),
            "Reshape",
            &[&q, &q_shape],
            &[&a("q4")],
        ));
        let mut tq = node(&a("q_transpose"), "Transpose", &[&a("q4")], &[&a("qh")]);
        tq.attribute = vec![attr_ints("perm", &[0, 2, 1, 3])];
        nodes.push(tq);
        for (name, src) in [("k", &k), ("v", &v)] {
            nodes.push(node(
                &a(&format!("{name}_reshape")),
                "Reshape",
                &[src, &kv_shape],
                &[&a(&format!("{name}5"))],
            ));
            nodes.push(node(
                &a(&format!("{name}_expand")),
                "Expand",
                &[&a(&format!("{name}5")), &kv_expand],
                &[&a(&format!("{name}x"))],
            ));
            nodes.push(node(
                &a(&format!("{name}_merge")),
                "Reshape",
                &[&a(&format!("{name}x")), &merged_heads],
                &[&a(&format!("{name}4"))],
            ));
            let mut t = node(
                &a(&format!("{name}_transpose")),
                "Transpose",
                &[&a(&format!("{name}4"))],
                &[&a(&format!("{name}h"))],
            );
            t.attribute = vec![attr_ints(
                "perm",
                if name == "k" {
                    &[0, 2, 3, 1]
                } else {
                    &[0, 2, 1, 3]
                },
            )];
            nodes.push(t);
        }
        nodes.push(node(
            &a("scores"),
            "MatMul",
            &[&a("qh"), &a("kh")],
            &[&a("scores_out")],
        ));
        nodes.push(node(
            &a("scale"),
            "Mul",
            &[&a("scores_out"), &inv_sqrt_d],
            &[&a("scaled")],
        ));
        let mut sm = node(&a("Softmax"), "Softmax", &[&a("scaled")], &[&a("probs")]);
        sm.attribute = vec![attr_int("axis", -1)];
        nodes.push(sm);
        nodes.push(node(
            &a("context"),
            "MatMul",
            &[&a("probs"), &a("vh")],
            &[&a("ctx")],
        ));
        let mut tc = node(
            &a("ctx_transpose"),
            "Transpose",
            &[&a("ctx")],
            &[&a("ctx_t")],
        );
        tc.attribute = vec![attr_ints("perm", &[0, 2, 1, 3])];
        nodes.push(tc);
        nodes.push(node(
            &a("ctx_flat"),
            "Reshape",
            &[&a("ctx_t"), &flat],
            &[&a("ctx_f")],
        ));
        let o = linear(
            &mut nodes,
            &mut w,
            &p("self_attn/o_proj"),
            &a("ctx_f"),
            h,
            h,
            false,
        )?;
        nodes.push(node(
            &p("attn_residual"),
            "Add",
            &[&hidden, &o],
            &[&p("attn_res")],
        ));
        let normed2 = rms(
            &mut nodes,
            &mut w,
            &p("post_attention_layernorm"),
            &p("attn_res"),
        )?;
        let gate = linear(
            &mut nodes,
            &mut w,
            &p("mlp/gate_proj"),
            &normed2,
            h,
            i_dim,
            false,
        )?;
        let up = linear(
            &mut nodes,
            &mut w,
            &p("mlp/up_proj"),
            &normed2,
            h,
            i_dim,
            false,
        )?;
        nodes.push(node(
            &p("mlp/act_fn/Sigmoid"),
            "Sigmoid",
            &[&gate],
            &[&p("mlp/sig")],
        ));
        nodes.push(node(
            &p("mlp/act_fn/Mul"),
            "Mul",
            &[&gate, &p("mlp/sig")],
            &[&p("mlp/silu")],
        ));
        nodes.push(node(
            &p("mlp/Mul"),
            "Mul",
            &[&p("mlp/silu"), &up],
            &[&p("mlp/gated")],
        ));
        let down = linear(
            &mut nodes,
            &mut w,
            &p("mlp/down_proj"),
            &p("mlp/gated"),
            i_dim,
            h,
            false,
        )?;
        nodes.push(node(
            &p("mlp_residual"),
            "Add",
            &[&p("attn_res"), &down],
            &[&p("out")],
        ));
        hidden = p("out");
        progress(layer + 1);
    }
    let normed = rms(&mut nodes, &mut w, "/model/norm", &hidden)?;
    let score = w.anonymous("MatMul", &[h, spec.labels as i64], 1.0 / (h as f32).sqrt())?;
    nodes.push(node(
        "/score/MatMul",
        "MatMul",
        &[&normed, &score],
        &["logits"],
    ));
    w.out.commit(true)?;

    let mut initializers = consts;
    initializers.extend(w.initializers);
    let graph = GraphProto {
        name: Some("synthetic_decoder".into()),
        node: nodes,
        initializer: initializers,
        input: vec![value_info(
            "input_ids",
            INT64,
            &[Some(1), Some(spec.seq_len as i64)],
        )],
        output: vec![value_info(
            "logits",
            FLOAT,
            &[Some(1), Some(spec.seq_len as i64), Some(spec.labels as i64)],
        )],
        ..Default::default()
    };
    let path = dir.join(MODEL_FILE);
    atomic::write_bytes(&path, &model(graph, OPSET).encode_to_vec())?;
    Ok(path)
}

/// Writes a PEFT LoRA adapter on every layer's `gate_proj` of `spec`,
/// as `save_pretrained` lays it out.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_gate_proj_adapter(
    dir: &Path,
    spec: &DecoderSpec,
    rank: usize,
    alpha: f64,
    seed: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": ["gate_proj"],
        "use_rslora": false,
        "use_dora": false,
        "lora_bias": false,
        "bias": "none",
        "fan_in_fan_out": false,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": null,
        "task_type": "SEQ_CLS",
    });
    atomic::write_json(&dir.join("adapter_config.json"), &config)?;
    let mut rng = Rng::new(seed);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in 0..spec.layers {
        let key = format!("base_model.model.model.layers.{layer}.mlp.gate_proj");
        let a: Vec<u8> = (0..rank * spec.hidden)
            .flat_map(|_| {
                rng.symmetric_f32(1.0 / (spec.hidden as f32).sqrt())
                    .to_le_bytes()
            })
            .collect();
        let b: Vec<u8> = (0..spec.intermediate * rank)
            .flat_map(|_| rng.symmetric_f32(LORA_B_BOUND).to_le_bytes())
            .collect();
        tensors.push((format!("{key}.lora_A.weight"), vec![rank, spec.hidden], a));
        tensors.push((
            format!("{key}.lora_B.weight"),
            vec![spec.intermediate, rank],
            b,
        ));
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)
}

/// Writes f32 tensors in the safetensors format (header length, JSON
/// header, data), through a temp file and a rename.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(SAFETENSORS_ALIGN) {
        text.push(b' ');
    }
    let mut out = AtomicFile::create(path)?;
    let written = out
        .write_all(&(text.len() as u64).to_le_bytes())
        .and_then(|()| out.write_all(&text))
        .and_then(|()| tensors.iter().try_for_each(|(_, _, b)| out.write_all(b)));
    written.map_err(|e| Error::io("writing", path, e))?;
    out.commit(false)
}

/// The tensors of a Hugging Face checkpoint of `spec`'s shape, in file
/// order: name, shape, the uniform bound of its values.
pub fn checkpoint_tensors(spec: &DecoderSpec) -> Vec<(String, Vec<usize>, f32)> {
    let h = spec.hidden;
    let kv = h / spec.heads * spec.kv_heads;
    let lin = |n: usize| 1.0 / (n as f32).sqrt();
    let mut t = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![spec.vocab, h],
        EMBED_BOUND,
    )];
    for l in 0..spec.layers {
        let p = format!("model.layers.{l}");
        t.push((
            format!("{p}.input_layernorm.weight"),
            vec![h],
            NORM_SCALE_BOUND,
        ));
        for (m, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
            t.push((format!("{p}.self_attn.{m}.weight"), vec![out, h], lin(h)));
            t.push((format!("{p}.self_attn.{m}.bias"), vec![out], BIAS_BOUND));
        }
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h], lin(h)));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            NORM_SCALE_BOUND,
        ));
        t.push((
            format!("{p}.mlp.gate_proj.weight"),
            vec![spec.intermediate, h],
            lin(h),
        ));
        t.push((
            format!("{p}.mlp.up_proj.weight"),
            vec![spec.intermediate, h],
            lin(h),
        ));
        t.push((
            format!("{p}.mlp.down_proj.weight"),
            vec![h, spec.intermediate],
            lin(spec.intermediate),
        ));
    }
    t.push(("model.norm.weight".to_string(), vec![h], NORM_SCALE_BOUND));
    t.push(("score.weight".to_string(), vec![spec.labels, h], lin(h)));
    t
}

/// Writes a safetensors checkpoint of `spec`'s shape (f32), streamed: the
/// values are seeded by `seed`; with `shift = Some((seed2, scale))` each
/// value also gets `scale ×` a second seeded uniform draw in ±bound, and
/// gate_proj 10× that (a "tuned" checkpoint whose change concentrates in
/// gate_proj). Calls `progress(done, total)` per tensor.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_checkpoint(
    path: &Path,
    spec: &DecoderSpec,
    seed: u64,
    shift: Option<(u64, f32)>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let tensors = checkpoint_tensors(spec);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, shape, _) in &tensors {
        let len = shape.iter().product::<usize>() * F32_BYTES;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(SAFETENSORS_ALIGN) {
        text.push(b' ');
    }
    let mut out = AtomicFile::create(path)?;
    let io = |e| Error::io("writing", path, e);
    out.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&text).map_err(io)?;
    let mut base = Rng::new(seed);
    let mut delta = shift.map(|(s, _)| Rng::new(s));
    let mut buf = Vec::with_capacity(WRITE_CHUNK);
    for (k, (name, shape, bound)) in tensors.iter().enumerate() {
        let scale = match shift {
            Some((_, s)) if name.contains("gate_proj") => 10.0 * s,
            Some((_, s)) => s,
            None => 0.0,
        };
        for _ in 0..shape.iter().product::<usize>() {
            let mut v = base.symmetric_f32(*bound);
            if let Some(d) = delta.as_mut() {
                v += scale * d.symmetric_f32(*bound);
            }
            buf.extend_from_slice(&v.to_le_bytes());
            if buf.len() >= WRITE_CHUNK {
                out.write_all(&buf).map_err(io)?;
                buf.clear();
            }
        }
        progress(k + 1, tensors.len());
    }
    out.write_all(&buf).map_err(io)?;
    out.commit(false)
}
