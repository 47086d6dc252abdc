//! Merging a PEFT LoRA adapter into an ONNX model's weights.
//!
//! [`MergePlan::new`] resolves every adapter module to one linear layer of
//! the graph (see [`crate::onnx::linear`]), copies weights that other nodes
//! also read, and records the edits; [`MergePlan::updates`] then yields the merged
//! tensors one by one, so [`merge_to_file`] streams a model of any size in
//! bounded memory, and the engine can merge in memory with the same code.
//!
//! The arithmetic is PEFT's `merge_and_unload()`:
//! `W' = W + s·B·A` with `s = α/r` (or `α/√r` with rsLoRA); with DoRA,
//! `W' = m / ‖W + s·B·A‖_row · (W + s·B·A)`; with `lora_bias`,
//! `b' = b + s·b_B`; `modules_to_save` tensors replace the base ones.
//! Values are merged in `f32` (norms in `f64`) and written back in the
//! weight's own type.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::onnx::linear::{Layout, LinearIndex, LinearSite, Resolution};
use crate::onnx::proto::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
use crate::onnx::{
    FloatType, GraphIndex, NameAllocator, OnnxModel, SaveOptions, SaveSummary, TensorBytes,
    TensorUpdate, initializer_positions, read_counts, save_model,
};
use crate::peft::{Adapter, LoraModule, Replacement};

/// One adapter module, resolved and ready to merge.
#[derive(Debug, Clone)]
struct Job {
    module: String,
    site: LinearSite,
    /// The initializer the merged weight is written to (a fresh copy when
    /// the original is shared with nodes that are not adapted).
    target_weight: String,
    target_bias: Option<String>,
    copied: bool,
    change: Change,
}

#[derive(Debug, Clone)]
enum Change {
    Lora(LoraModule),
    Replace(Replacement),
}

/// What was done to one module; printed as a table and saved as JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModuleReport {
    /// Module path as the adapter names it.
    pub module: String,
    /// `lora`, `dora` or `replace` (`modules_to_save`).
    pub kind: &'static str,
    pub node: String,
    pub op: String,
    /// The initializer written.
    pub weight: String,
    /// Set when the weight was shared and had to be copied first.
    pub copied_from: Option<String>,
    pub layout: Layout,
    pub dtype: FloatType,
    /// Stored dims of the weight.
    pub shape: Vec<i64>,
    pub rank: Option<usize>,
    pub alpha: Option<f64>,
    pub scale: Option<f64>,
    /// ‖W' − W‖ / ‖W‖ (Frobenius).
    pub relative_change: f64,
    pub bias: Option<String>,
}

/// Everything [`merge_to_file`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub output: PathBuf,
    pub modules: Vec<ModuleReport>,
    pub save: SaveSummary,
}

/// The resolved merge: an edited graph plus the tensors still to compute.
pub struct MergePlan<'a> {
    model: &'a OnnxModel,
    /// The base graph's index: weights and biases are read from there.
    index: GraphIndex<'a>,
    /// The base proto with copies of shared weights added and rewired.
    pub proto: ModelProto,
    jobs: Vec<Job>,
}

impl<'a> MergePlan<'a> {
    /// Resolves every module of `adapter` in `model`.
    ///
    /// # Errors
    /// [`Error::Unresolved`] listing the modules that match no linear layer
    /// or several; [`Error::Field`] for a weight whose shape disagrees with
    /// the adapter or that two modules would both change.
    pub fn new(model: &'a OnnxModel, adapter: &Adapter) -> Result<Self> {
        let graph_index = GraphIndex::new(model.graph());
        let index = LinearIndex::from_index(&graph_index);
        let mut unmatched = Vec::new();
        let mut ambiguous = Vec::new();
        let mut jobs = Vec::new();
        let changes = adapter
            .modules
            .iter()
            .map(|(m, l)| (m.clone(), Change::Lora(l.clone())))
            .chain(
                adapter
                    .replacements
                    .iter()
                    .map(|(m, r)| (m.clone(), Change::Replace(r.clone()))),
            );
        for (module, change) in changes {
            match index.resolve(&module) {
                Resolution::Found(i) => {
                    let site = index.sites[i].clone();
                    jobs.push(Job {
                        module,
                        target_weight: site.weight.clone(),
                        target_bias: site.bias.clone(),
                        copied: false,
                        site,
                        change,
                    })
                }
                Resolution::Unmatched => unmatched.push(module),
                Resolution::Ambiguous(hits) => {
                    ambiguous.push((module, hits.iter().map(|h| index.describe(*h)).collect()))
                }
            }
        }
        if !unmatched.is_empty() || !ambiguous.is_empty() {
            return Err(Error::Unresolved {
                model: model.path().to_path_buf(),
                unmatched,
                ambiguous,
            });
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for job in &jobs {
            if let Some(other) = seen.insert(job.site.node_name.as_str(), job.module.as_str()) {
                return Err(Error::field(
                    model.path(),
                    format!("node `{}`", job.site.node_name),
                    format!(
                        "is matched by two adapter modules, `{other}` and `{}`",
                        job.module
                    ),
                ));
            }
        }
        let mut plan = MergePlan {
            model,
            index: graph_index,
            proto: model.proto.clone(),
            jobs,
        };
        plan.check_shapes()?;
        plan.sort_by_storage();
        plan.unshare_weights();
        Ok(plan)
    }

    /// Number of tensors [`MergePlan::updates`] will yield modules for.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the adapter changes nothing.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn initializer(&self, name: &str) -> Result<&'a TensorProto> {
        self.index.initializer(name).ok_or_else(|| {
            Error::field(
                self.model.path(),
                format!("initializer `{name}`"),
                "is not in the graph",
            )
        })
    }

    /// Orders the work by where each weight sits in its side file, so the
    /// writer streams the output front to back.
    fn sort_by_storage(&mut self) {
        let key = |job: &Job| -> (Option<std::path::PathBuf>, u64) {
            self.initializer(&job.site.weight)
                .ok()
                .and_then(|t| self.model.external_data(t).ok().flatten())
                .map(|e| (Some(e.file), e.offset))
                .unwrap_or((None, 0))
        };
        let keys: Vec<_> = self.jobs.iter().map(key).collect();
        let mut order: Vec<usize> = (0..self.jobs.len()).collect();
        order.sort_by(|a, b| keys[*a].cmp(&keys[*b]));
        let mut jobs: Vec<Option<Job>> = self.jobs.drain(..).map(Some).collect();
        self.jobs = order.into_iter().filter_map(|i| jobs[i].take()).collect();
    }

    fn check_shapes(&self) -> Result<()> {
        for job in &self.jobs {
            let w = self.initializer(&job.site.weight)?;
            let (out, inp) = logical_dims(&w.dims, job.site.layout);
            let (want_out, want_in, what) = match &job.change {
                Change::Lora(l) => (
                    l.out_features as i64,
                    l.in_features as i64,
                    format!(
                        "lora_A is [{}, {}] and lora_B is [{}, {}]",
                        l.rank, l.in_features, l.out_features, l.rank
                    ),
                ),
                Change::Replace(r) => match &r.weight {
                    Some((shape, _)) if shape.len() == 2 => (
                        shape[0] as i64,
                        shape[1] as i64,
                        format!("the saved weight is {shape:?}"),
                    ),
                    Some((shape, _)) => {
                        return Err(Error::field(
                            self.model.path(),
                            format!("modules_to_save `{}`", job.module),
                            format!("weight has shape {shape:?}; expected a 2-D [out, in] weight"),
                        ));
                    }
                    None => (out, inp, String::new()),
                },
            };
            if (out, inp) != (want_out, want_in) {
                return Err(Error::field(
                    self.model.path(),
                    format!("adapter module `{}`", job.module),
                    format!(
                        "{what} (out={want_out}, in={want_in}), but weight `{}` of node `{}` has dims {:?}, \
                         i.e. out={out}, in={inp} as {} reads it",
                        job.site.weight, job.site.node_name, w.dims, job.site.op
                    ),
                ));
            }
            let needs_bias = match &job.change {
                Change::Lora(l) => l.bias.is_some(),
                Change::Replace(r) => r.bias.is_some(),
            };
            if needs_bias && job.site.bias.is_none() {
                return Err(Error::field(
                    self.model.path(),
                    format!("adapter module `{}`", job.module),
                    format!(
                        "carries a bias but node `{}` has no bias initializer to merge it into",
                        job.site.node_name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Gives each adapted layer weights of its own when another node (or a
    /// subgraph) also reads them: tied or deduplicated weights must not
    /// change for the layers the adapter does not touch.
    fn unshare_weights(&mut self) {
        let graph = self.proto.graph.as_mut().expect("checked at load");
        let index = &self.index;
        let mut uses = read_counts(graph);
        let mut names = NameAllocator::new(graph);
        for job in &mut self.jobs {
            let mut rename = |name: &str, what: &str, graph: &mut GraphProto| -> String {
                let new = names.fresh(&format!("{name}.{}.{what}", job.module));
                // Sites name initializers of this very graph.
                let original = index.initializer(name).expect("indexed");
                graph.initializer.push(empty_like(original, &new));
                new
            };
            if uses.get(&job.site.weight).copied().unwrap_or(0) > 1 {
                let new = rename(&job.site.weight, "weight", graph);
                replace_input(&mut graph.node[job.site.reader], &job.site.weight, &new);
                *uses.get_mut(&job.site.weight).expect("counted") -= 1;
                job.target_weight = new;
                job.copied = true;
            }
            if let Some(bias) = job.site.bias.clone()
                && uses.get(&bias).copied().unwrap_or(0) > 1
            {
                {
                    let new = rename(&bias, "bias", graph);
                    // Rewire only this layer's reader (the Gemm, or the Add
                    // after the MatMul), not another layer's that shares it.
                    if let Some(reader) = job.site.bias_reader {
                        replace_input(&mut graph.node[reader], &bias, &new);
                        *uses.get_mut(&bias).expect("counted") -= 1;
                        job.target_bias = Some(new);
                    }
                }
            }
        }
        // Originals that every reader left behind are dead weight.
        graph
            .initializer
            .retain(|t| uses.get(t.name()).is_none_or(|n| *n > 0));
    }

    /// Computes the merged tensors one module at a time. Each item carries
    /// the updated tensors (weight, then bias) and the module's report line.
    pub fn updates(&self) -> impl Iterator<Item = Result<(Vec<TensorUpdate>, ModuleReport)>> + '_ {
        self.jobs.iter().map(move |job| self.merge_job(job))
    }

    fn merge_job(&self, job: &Job) -> Result<(Vec<TensorUpdate>, ModuleReport)> {
        let tensor = self.initializer(&job.site.weight)?;
        let (dtype, mut w) = self.model.float_values(tensor)?;
        let (out, inp) = logical_dims(&tensor.dims, job.site.layout);
        let (out, inp) = (out as usize, inp as usize);
        let mut updates = Vec::new();
        let (kind, rank, alpha, scale, relative_change) = match &job.change {
            Change::Lora(lora) => {
                let rel = if job.site.alpha == 1.0 {
                    apply_lora(&mut w, job.site.layout, out, inp, lora)
                } else {
                    // Gemm's alpha scales the stored weight: merge the effective
                    // weight alpha·W, then store it divided by alpha again.
                    w.iter_mut().for_each(|v| *v *= job.site.alpha);
                    let rel = apply_lora(&mut w, job.site.layout, out, inp, lora);
                    w.iter_mut().for_each(|v| *v /= job.site.alpha);
                    rel
                };
                let kind = if lora.magnitude.is_some() {
                    "dora"
                } else {
                    "lora"
                };
                (
                    kind,
                    Some(lora.rank),
                    Some(lora.alpha),
                    Some(lora.scale),
                    rel,
                )
            }
            Change::Replace(rep) => {
                let before = w.clone();
                if let Some((_, values)) = &rep.weight {
                    w = to_layout(values, out, inp, job.site.layout);
                    w.iter_mut().for_each(|v| *v /= job.site.alpha);
                }
                ("replace", None, None, None, relative_diff(&before, &w))
            }
        };
        updates.push(TensorUpdate {
            name: job.target_weight.clone(),
            bytes: if dtype == FloatType::F32 {
                TensorBytes::F32(w)
            } else {
                dtype.encode(&w).into()
            },
        });
        let new_bias = match &job.change {
            Change::Lora(l) => l.bias.as_ref().map(|b| (b, l.scale)),
            Change::Replace(r) => r.bias.as_ref().map(|b| (b, f64::NAN)),
        };
        if let (Some((delta, scale)), Some(bias_name)) = (new_bias, &job.site.bias) {
            let bias_tensor = self.initializer(bias_name)?;
            let (bias_type, mut bias) = self.model.float_values(bias_tensor)?;
            if bias.len() != delta.len() {
                return Err(Error::field(
                    self.model.path(),
                    format!("bias `{bias_name}`"),
                    format!(
                        "has {} values but the adapter's bias for `{}` has {}",
                        bias.len(),
                        job.module,
                        delta.len()
                    ),
                ));
            }
            // Gemm adds beta·b: store the module's bias divided by beta.
            let beta = job.site.beta as f64;
            if scale.is_nan() {
                bias.iter_mut()
                    .zip(delta)
                    .for_each(|(b, d)| *b = (*d as f64 / beta) as f32);
            } else {
                bias.iter_mut()
                    .zip(delta)
                    .for_each(|(b, d)| *b += (scale * *d as f64 / beta) as f32);
            }
            updates.push(TensorUpdate {
                name: job.target_bias.clone().unwrap_or_else(|| bias_name.clone()),
                bytes: bias_type.encode(&bias).into(),
            });
        }
        Ok((
            updates,
            ModuleReport {
                module: job.module.clone(),
                kind,
                node: job.site.node_name.clone(),
                op: job.site.op.clone(),
                weight: job.target_weight.clone(),
                copied_from: job.copied.then(|| job.site.weight.clone()),
                layout: job.site.layout,
                dtype,
                shape: tensor.dims.clone(),
                rank,
                alpha,
                scale,
                relative_change,
                bias: job.target_bias.clone(),
            },
        ))
    }
}

impl<'a> MergePlan<'a> {
    /// Merges in memory: the edited proto with every merged tensor inline
    /// (`raw_data`), the rest untouched — external tensors keep pointing at
    /// the base model's side files, so only the changed weights are held.
    /// This is what the engine uses to switch adapters without a file.
    ///
    /// # Errors
    /// Anything [`MergePlan::updates`] reports.
    pub fn merged_proto(&self) -> Result<(ModelProto, Vec<TensorUpdate>, Vec<ModuleReport>)> {
        let mut proto = self.proto.clone();
        let mut all = Vec::new();
        let mut reports = Vec::new();
        for item in self.updates() {
            let (updates, report) = item?;
            all.extend(updates);
            reports.push(report);
        }
        let graph = proto.graph.as_mut().expect("checked at load");
        let positions = initializer_positions(graph);
        for update in &all {
            let i = *positions.get(&update.name).ok_or_else(|| {
                Error::field(
                    self.model.path(),
                    format!("initializer `{}`", update.name),
                    "is not in the graph",
                )
            })?;
            let tensor = &mut graph.initializer[i];
            tensor.data_location = None;
            tensor.external_data.clear();
            tensor.float_data.clear();
            tensor.int32_data.clear();
            tensor.double_data.clear();
            tensor.raw_data = Some(update.bytes.as_bytes().into_owned().into());
        }
        Ok((proto, all, reports))
    }

    /// The model the plan merges into.
    pub fn model(&self) -> &'a OnnxModel {
        self.model
    }

    /// Writes the merged model to `out` on this thread (no adapter
    /// metadata: for a runtime that needs a file; the converter uses
    /// [`merge_to_file`]).
    ///
    /// # Errors
    /// Anything [`MergePlan::updates`] and [`save_model`] report.
    pub fn write_to_file(&self, out: &Path, options: &SaveOptions) -> Result<SaveSummary> {
        let updates = self.updates().flat_map(|item| match item {
            Ok((updates, _)) => updates.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        });
        save_model(self.model, self.proto.clone(), updates, out, options)
    }

    /// Whether the plan had to add weight copies (which changes the graph,
    /// so the merged weights cannot simply override initializers).
    pub fn changes_graph(&self) -> bool {
        self.jobs
            .iter()
            .any(|j| j.copied || j.target_bias != j.site.bias)
    }
}

/// Options for [`merge_to_file`].
#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    pub save: SaveOptions,
    /// Merge threads (default: the machine's cores).
    pub threads: Option<usize>,
}

/// Merges `adapter` into `model` and writes the result to `out`, calling
/// `progress(done, total)` after each module.
///
/// # Errors
/// Everything [`MergePlan::new`] and [`save_model`] report. On error no
/// output file is left behind.
pub fn merge_to_file(
    model: &OnnxModel,
    adapter: &Adapter,
    out: &Path,
    options: &MergeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MergeReport> {
    let plan = MergePlan::new(model, adapter)?;
    let mut proto = plan.proto.clone();
    proto
        .metadata_props
        .retain(|p| p.key() != "emogate.merged_adapter");
    proto.metadata_props.push(StringStringEntryProto {
        key: Some("emogate.merged_adapter".into()),
        value: Some(
            serde_json::json!({
                "adapter": adapter.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
                "base_model": adapter.config.base_model_name_or_path,
                "modules": adapter.modules.keys().chain(adapter.replacements.keys()).collect::<Vec<_>>(),
            })
            .to_string(),
        ),
    });
    let total = plan.len();
    let threads = options.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let threads = threads.clamp(1, total.max(1));
    let jobs = &plan.jobs;
    let plan_ref = &plan;
    let (reports, save) = std::thread::scope(|scope| {
        // Worker `w` merges jobs w, w+T, w+2T, … and hands each result over a
        // one-slot channel: results come back in order, at most two per
        // worker are alive at once, and merging overlaps with writing.
        let receivers: Vec<_> = (0..threads)
            .map(|w| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                scope.spawn(move || {
                    for job in jobs.iter().skip(w).step_by(threads) {
                        if tx.send(plan_ref.merge_job(job)).is_err() {
                            break;
                        }
                    }
                });
                rx
            })
            .collect();
        let mut reports = Vec::with_capacity(total);
        let mut pending: std::collections::VecDeque<TensorUpdate> = Default::default();
        let mut next = 0;
        let updates = std::iter::from_fn(|| {
            loop {
                if let Some(u) = pending.pop_front() {
                    return Some(Ok(u));
                }
                if next == total {
                    return None;
                }
                let received = receivers[next % threads].recv();
                next += 1;
                match received {
                    Ok(Ok((updates, report))) => {
                        pending.extend(updates);
                        reports.push(report);
                        progress(reports.len(), total);
                    }
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(_) => {
                        return Some(Err(Error::field(
                            model.path(),
                            "merge",
                            "a merge worker stopped unexpectedly",
                        )));
                    }
                }
            }
        });
        let save = save_model(model, proto, updates, out, &options.save);
        // Dropping the receivers lets workers blocked on `send` finish.
        drop(receivers);
        save.map(|s| (reports, s))
    })?;
    Ok(MergeReport {
        model: model.path().to_path_buf(),
        adapter: adapter.dir.clone(),
        output: out.to_path_buf(),
        modules: reports,
        save,
    })
}

/// `(out, in)` of a stored 2-D weight.
fn logical_dims(dims: &[i64], layout: Layout) -> (i64, i64) {
    let (d0, d1) = (
        dims.first().copied().unwrap_or(0),
        dims.get(1).copied().unwrap_or(0),
    );
    match layout {
        Layout::InOut => (d1, d0),
        Layout::OutIn => (d0, d1),
    }
}

/// Adds `s·B·A` (and DoRA's rescale) to `w` stored in `layout`; returns
/// ‖ΔW‖/‖W‖.
fn apply_lora(w: &mut [f32], layout: Layout, out: usize, inp: usize, lora: &LoraModule) -> f64 {
    let r = lora.rank;
    let before_norm = w.chunks(4096).map(sum_of_squares).sum::<f64>().sqrt();
    let original = lora.magnitude.is_some().then(|| w.to_vec());
    let scale = lora.scale as f32;
    let mut delta_sq = 0f64;
    // Rows are contiguous in memory: accumulate each row's update in a
    // scratch buffer (vectorizes), then add it to the weight.
    let (rows, cols) = match layout {
        Layout::OutIn => (out, inp),
        Layout::InOut => (inp, out),
    };
    // `coef(row, k)` multiplies row `k` of `basis`, a [r, cols] matrix.
    type Coef<'a> = Box<dyn Fn(usize, usize) -> f32 + 'a>;
    let (basis, coef): (Vec<f32>, Coef) = match layout {
        Layout::OutIn => (lora.a.clone(), Box::new(|o, k| scale * lora.b[o * r + k])),
        Layout::InOut => {
            let mut bt = vec![0f32; r * out];
            for o in 0..out {
                for k in 0..r {
                    bt[k * out + o] = lora.b[o * r + k];
                }
            }
            (bt, Box::new(|i, k| scale * lora.a[k * inp + i]))
        }
    };
    // Register blocking: a block of LANES output values stays in registers
    // while the r basis rows stream past, instead of a load/store per k.
    const LANES: usize = 32;
    let mut coefs = vec![0f32; r];
    // Per-lane Σ ΔW² for the current row (vectorizes; summed in f64 per row).
    let mut squares = [0f32; LANES];
    for row_index in 0..rows {
        coefs
            .iter_mut()
            .enumerate()
            .for_each(|(k, c)| *c = coef(row_index, k));
        let row = &mut w[row_index * cols..(row_index + 1) * cols];
        let mut start = 0;
        while start < cols {
            let width = LANES.min(cols - start);
            let mut acc = [0f32; LANES];
            for (k, c) in coefs.iter().enumerate() {
                let b = &basis[k * cols + start..k * cols + start + width];
                acc[..width]
                    .iter_mut()
                    .zip(b)
                    .for_each(|(a, b)| *a += c * b);
            }
            row[start..start + width]
                .iter_mut()
                .zip(&acc[..width])
                .for_each(|(w, d)| *w += d);
            squares.iter_mut().zip(&acc).for_each(|(s, d)| *s += d * d);
            start += width;
        }
        delta_sq += squares.iter().map(|s| *s as f64).sum::<f64>();
        squares.fill(0.0);
    }
    if let (Some(m), Some(original)) = (&lora.magnitude, original) {
        // DoRA: each output row of W + ΔW is rescaled to the learned magnitude.
        let mut norms = vec![0f64; out];
        for (idx, v) in w.iter().enumerate() {
            norms[row_of(idx, layout, out, inp)] += (*v as f64).powi(2);
        }
        let factors: Vec<f64> = norms
            .iter()
            .zip(m)
            .map(|(n, m)| *m as f64 / n.sqrt())
            .collect();
        for (idx, v) in w.iter_mut().enumerate() {
            *v = (*v as f64 * factors[row_of(idx, layout, out, inp)]) as f32;
        }
        return relative_diff(&original, w);
    }
    if before_norm == 0.0 {
        0.0
    } else {
        delta_sq.sqrt() / before_norm
    }
}

/// Σ v² of a short slice, in eight independent lanes so it vectorizes
/// (a single running sum must keep IEEE order and cannot).
fn sum_of_squares(values: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        lanes.iter_mut().zip(c).for_each(|(l, v)| *l += v * v);
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    lanes.iter().map(|l| *l as f64).sum::<f64>() + tail as f64
}

/// The output channel of flat index `idx`.
fn row_of(idx: usize, layout: Layout, out: usize, inp: usize) -> usize {
    match layout {
        Layout::OutIn => idx / inp,
        Layout::InOut => idx % out,
    }
}

/// Lays out a row-major `[out, in]` tensor as `layout`.
pub(crate) fn to_layout(values: &[f32], out: usize, inp: usize, layout: Layout) -> Vec<f32> {
    match layout {
        Layout::OutIn => values.to_vec(),
        Layout::InOut => {
            let mut t = vec![0f32; values.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = values[o * inp + i];
                }
            }
            t
        }
    }
}

fn relative_diff(before: &[f32], after: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (b, a) in before.iter().zip(after) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn replace_input(node: &mut crate::onnx::proto::NodeProto, from: &str, to: &str) {
    for input in node.input.iter_mut().filter(|i| *i == from) {
        *input = to.to_string();
    }
}

/// A tensor with the same name-independent header and no data: the data
/// comes from the merge, and must never alias the original's storage.
fn empty_like(t: &TensorProto, name: &str) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: t.dims.clone(),
        data_type: t.data_type,
        doc_string: t.doc_string.clone(),
        ..Default::default()
    }
}
