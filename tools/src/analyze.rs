//! `analyze`: where tuning moved a model's weights.
//!
//! A base and a tuned model (ONNX files of any exporter, or safetensors
//! checkpoints, in any mix), or a base and a PEFT adapter, are compared
//! module by module. Modules pair up through merge's resolver
//! ([`emogate_models::onnx::linear::resolve_among`]), so a dynamo export
//! pairs with a legacy one. Tensors are read one pair at a time: peak
//! memory is a few tensors whatever the model size.
//!
//! Per module (weight and bias together) and per module type and layer:
//! parameter count, `‖ΔW‖_F/‖W‖_F`, the share of the total `‖ΔW‖²`,
//! `cos(W, W')` and, for 2-D weights whose smaller side is at most
//! [`RankOptions::max_dim`], how many directions ΔW uses:
//!
//! **Stable rank** (the default): `srank = ‖ΔW‖_F² / σ_max(ΔW)²`, between
//! 1 (one direction) and rank(ΔW), 0 for no change. σ_max² is the largest
//! eigenvalue of the Gram matrix G of ΔW's smaller side (n×n, n ≤
//! `max_dim`), by power iteration on (G/tr G)⁴ from a fixed start vector
//! until the Rayleigh quotient changes by less than [`POWER_TOLERANCE`]
//! (relative) in one step, at most [`POWER_MAX_STEPS`] steps
//! ([`top_eigenvalue`]). A Rayleigh quotient never exceeds the largest
//! eigenvalue, so an unconverged estimate can only err upward in srank.
//! Cost: O(n²·m) for G (m the larger side) and O(n³) for the two squarings.
//!
//! **Effective rank** (Roy & Vetterli, 2007), only with
//! [`RankOptions::spectrum`] (`--spectrum`): with σᵢ the singular values of
//! ΔW and pᵢ = σᵢ/Σσⱼ, `erank = exp(−Σ pᵢ ln pᵢ)` — 1 for a rank-one change,
//! k for k equal singular values, 0 for no change. The σᵢ² are the
//! eigenvalues of G, found by cyclic Jacobi rotations in f64
//! ([`sym_eigenvalues`]), a dozen lines with no dependency and accurate for
//! PSD matrices; it costs about ten O(n³) sweeps per matrix, which is why it
//! is not the default.
//!
//! With `--adapter`, ΔW = s·B·A is never formed: `‖s·B·A‖² =
//! s²·tr((BᵀB)(AAᵀ))`, `⟨W, s·B·A⟩ = s·Σₖ (Bᵀ·(W·Aᵀ))ₖₖ`, and the σᵢ² of B·A
//! are the eigenvalues of the r×r `S^½·(AAᵀ)·S^½` with `S = BᵀB`: both ranks
//! come exactly from that r×r spectrum and are ≤ r.
//!
//! Tensors are spread over [`RankOptions::threads`] worker threads
//! (`std::thread::scope`); results are combined in the base's tensor order,
//! so the report does not depend on the thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emogate_models::checkpoint::{Checkpoint, is_checkpoint};
use emogate_models::onnx::FloatType;
use emogate_models::onnx::OnnxModel;
use emogate_models::onnx::linear::{Resolution, resolve_among};
use emogate_models::onnx::params::{ParamIndex, Role, layer_of, module_type, stored_to_torch};
use emogate_models::peft::Adapter;
use serde::Serialize;

use crate::error::{Error, Result};

/// Matrices whose smaller side exceeds this get no rank by default.
pub const DEFAULT_RANK_MAX_DIM: usize = 256;
/// Power iteration stops when the Rayleigh quotient's relative change in
/// one step is below this.
pub const POWER_TOLERANCE: f64 = 1e-12;
/// Power iteration stops after this many steps at the latest.
pub const POWER_MAX_STEPS: usize = 10_000;

/// Which rank measures `analyze` computes, for which weights, on how many threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankOptions {
    /// 2-D weights whose smaller side exceeds this get no rank (`null`).
    pub max_dim: usize,
    /// Also the effective rank (entropy of the full spectrum; Jacobi).
    pub spectrum: bool,
    /// Worker threads over tensors (at least 1).
    pub threads: usize,
}

impl Default for RankOptions {
    fn default() -> Self {
        RankOptions {
            max_dim: DEFAULT_RANK_MAX_DIM,
            spectrum: false,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// A model's tensors, from an ONNX file or a safetensors checkpoint.
pub enum Weights {
    Onnx {
        model: Box<OnnxModel>,
        index: ParamIndex,
    },
    Checkpoint(Checkpoint),
}

/// One tensor as [`Weights`] lists it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub module: String,
    pub paths: std::collections::BTreeSet<String>,
    pub role: Role,
    /// PyTorch's orientation.
    pub dims: Vec<usize>,
}

impl Weights {
    /// Opens an ONNX model or a safetensors checkpoint.
    ///
    /// # Errors
    /// [`Error::Model`] naming the file.
    pub fn open(path: &Path) -> Result<Self> {
        if is_checkpoint(path) {
            return Checkpoint::open(path)
                .map(Weights::Checkpoint)
                .map_err(|e| Error::model(format!("opening checkpoint {}", path.display()), e));
        }
        let model = OnnxModel::load(path)
            .map_err(|e| Error::model(format!("loading {}", path.display()), e))?;
        let index = ParamIndex::build(model.graph());
        Ok(Weights::Onnx {
            model: Box::new(model),
            index,
        })
    }

    /// Every float tensor.
    pub fn entries(&self) -> Vec<Entry> {
        match self {
            Weights::Onnx { index, .. } => index
                .params
                .iter()
                .map(|p| Entry {
                    module: p.module.clone(),
                    paths: p.paths.clone(),
                    role: p.role,
                    dims: p.torch_dims(),
                })
                .collect(),
            Weights::Checkpoint(c) => c
                .tensors
                .iter()
                .map(|t| Entry {
                    module: t.module.clone(),
                    paths: t.paths.clone(),
                    role: t.role,
                    dims: t.shape.clone(),
                })
                .collect(),
        }
    }

    /// Tensor `i`'s values in PyTorch's orientation and scale.
    ///
    /// # Errors
    /// [`Error::Model`] naming the file.
    pub fn read(&self, i: usize) -> Result<Vec<f32>> {
        match self {
            Weights::Onnx { model, index } => {
                let p = &index.params[i];
                let t = model
                    .graph()
                    .initializer
                    .iter()
                    .find(|t| t.name() == p.initializer)
                    .expect("indexed from this graph");
                let (_, v) = model
                    .float_values(t)
                    .map_err(|e| Error::model(format!("reading {}", model.path().display()), e))?;
                Ok(stored_to_torch(p, v))
            }
            Weights::Checkpoint(c) => c
                .read(i)
                .map_err(|e| Error::model(format!("reading {}", c.path.display()), e)),
        }
    }
}

/// Sums over one module, type, layer or the whole model.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sums {
    pub params: usize,
    /// ‖W‖².
    pub base_sq: f64,
    /// ‖W'‖².
    pub tuned_sq: f64,
    /// ⟨W, W'⟩.
    pub dot: f64,
    /// ‖ΔW‖².
    pub delta_sq: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.params += o.params;
        self.base_sq += o.base_sq;
        self.tuned_sq += o.tuned_sq;
        self.dot += o.dot;
        self.delta_sq += o.delta_sq;
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Module path, type name, or `layer N`.
    pub name: String,
    pub params: usize,
    /// ‖ΔW‖_F / ‖W‖_F.
    pub relative_change: f64,
    /// ‖ΔW‖_F.
    pub delta_norm: f64,
    /// ‖W‖_F.
    pub base_norm: f64,
    /// This row's ‖ΔW‖² over the model's.
    pub share: f64,
    /// cos(W, W').
    pub cosine: f64,
    /// Stable rank ‖ΔW‖_F²/σ_max(ΔW)² of the 2-D weight (modules only).
    pub stable_rank: Option<f64>,
    /// Effective rank (Roy & Vetterli) of the 2-D weight's ΔW (modules
    /// only; with `--spectrum`).
    pub effective_rank: Option<f64>,
    /// Upper bound on ΔW's rank: the adapter's r, or min(out, in).
    pub max_rank: Option<usize>,
    /// The sums behind the ratios (for exact re-aggregation).
    pub sums: Sums,
}

/// What `analyze` prints and writes.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeReport {
    pub base: PathBuf,
    pub tuned: PathBuf,
    /// `tuned` (a model) or `adapter`.
    pub against: &'static str,
    pub total: Row,
    pub modules: Vec<Row>,
    pub by_type: Vec<Row>,
    pub by_layer: Vec<Row>,
    /// Base modules without a counterpart (or with another shape), and why.
    pub unpaired: Vec<String>,
    pub rank_max_dim: usize,
    /// Whether effective ranks were computed (`--spectrum`).
    pub spectrum: bool,
}

#[derive(Default)]
struct ModuleAcc {
    sums: Sums,
    ranks: Ranks,
    max_rank: Option<usize>,
}

/// The rank measures of one ΔW.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ranks {
    stable: Option<f64>,
    effective: Option<f64>,
}

impl Ranks {
    /// Both measures from ΔW's squared singular values (all of them).
    fn from_spectrum(sigma_sq: &[f64], spectrum: bool) -> Self {
        Ranks {
            stable: Some(stable_rank_of(sigma_sq)),
            effective: spectrum.then(|| effective_rank(sigma_sq)),
        }
    }

    /// The measures of a row-major `[out, in]` ΔW.
    fn of_matrix(delta: &[f64], out: usize, inp: usize, spectrum: bool) -> Self {
        let (g, n) = gram(delta, out, inp);
        let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
        Ranks {
            stable: Some(if trace > 0.0 {
                trace / top_eigenvalue(&g, n)
            } else {
                0.0
            }),
            effective: spectrum.then(|| effective_rank(&sym_eigenvalues(&g, n))),
        }
    }
}

fn row(name: String, s: &Sums, total_delta: f64, ranks: Ranks, max_rank: Option<usize>) -> Row {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Row {
        name,
        params: s.params,
        relative_change: ratio(s.delta_sq, s.base_sq).sqrt(),
        delta_norm: s.delta_sq.sqrt(),
        base_norm: s.base_sq.sqrt(),
        share: ratio(s.delta_sq, total_delta),
        cosine: {
            let d = (s.base_sq * s.tuned_sq).sqrt();
            if d > 0.0 {
                s.dot / d
            } else if s.delta_sq == 0.0 {
                1.0
            } else {
                0.0
            }
        },
        stable_rank: ranks.stable,
        effective_rank: ranks.effective,
        max_rank,
        sums: s.clone(),
    }
}

fn finish(
    base: &Path,
    tuned: &Path,
    against: &'static str,
    modules: BTreeMap<String, ModuleAcc>,
    unpaired: Vec<String>,
    ranks: RankOptions,
) -> AnalyzeReport {
    let mut total = Sums::default();
    let mut types: BTreeMap<String, Sums> = BTreeMap::new();
    let mut layers: BTreeMap<usize, Sums> = BTreeMap::new();
    for (m, acc) in &modules {
        total.add(&acc.sums);
        types
            .entry(module_type(m).to_string())
            .or_default()
            .add(&acc.sums);
        if let Some(l) = layer_of(m) {
            layers.entry(l).or_default().add(&acc.sums);
        }
    }
    let td = total.delta_sq;
    AnalyzeReport {
        base: base.to_path_buf(),
        tuned: tuned.to_path_buf(),
        against,
        total: row("total".into(), &total, td, Ranks::default(), None),
        modules: modules
            .iter()
            .map(|(m, a)| row(m.clone(), &a.sums, td, a.ranks, a.max_rank))
            .collect(),
        by_type: types
            .iter()
            .map(|(t, s)| row(t.clone(), s, td, Ranks::default(), None))
            .collect(),
        by_layer: layers
            .iter()
            .map(|(l, s)| row(format!("layer {l}"), s, td, Ranks::default(), None))
            .collect(),
        unpaired,
        rank_max_dim: ranks.max_dim,
        spectrum: ranks.spectrum,
    }
}

/// What one base tensor contributes.
enum Outcome {
    Unpaired(String),
    Paired {
        sums: Sums,
        max_rank: Option<usize>,
        ranks: Ranks,
    },
}

/// `analyze --base B --tuned T`.
///
/// # Errors
/// Loading and reading errors naming the file.
pub fn analyze_models(
    base_path: &Path,
    tuned_path: &Path,
    ranks: RankOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AnalyzeReport> {
    let base = Weights::open(base_path)?;
    let tuned = Weights::open(tuned_path)?;
    let (be, te) = (base.entries(), tuned.entries());
    let outcomes = parallel_map(be.len(), ranks.threads, progress, |i| {
        pair_outcome(&base, &tuned, &be, &te, i, tuned_path, ranks)
    })?;
    let mut modules: BTreeMap<String, ModuleAcc> = BTreeMap::new();
    let mut unpaired = Vec::new();
    for (e, outcome) in be.iter().zip(outcomes) {
        match outcome {
            Outcome::Unpaired(why) => unpaired.push(why),
            Outcome::Paired {
                sums,
                max_rank,
                ranks,
            } => {
                let acc = modules.entry(e.module.clone()).or_default();
                acc.sums.add(&sums);
                if max_rank.is_some() {
                    acc.max_rank = max_rank;
                    acc.ranks = ranks;
                }
            }
        }
    }
    if let (
        Weights::Onnx {
            model: bm,
            index: bi,
        },
        Weights::Onnx {
            model: tm,
            index: ti,
        },
    ) = (&base, &tuned)
    {
        compare_unnamed(bm, bi, tm, ti, &mut modules)?;
    }
    Ok(finish(
        base_path, tuned_path, "tuned", modules, unpaired, ranks,
    ))
}

/// `f(0..n)` on `threads` scoped worker threads, each taking the next
/// index; results in index order. `progress(done, n)` runs on the calling
/// thread. The first error wins and stops the workers taking more.
fn parallel_map<T: Send>(
    n: usize,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize),
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<T>)>();
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            let tx = tx.clone();
            let (next, failed, f) = (&next, &failed, &f);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = f(i);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        progress(0, n);
        let mut done = 0;
        for (i, r) in rx {
            done += 1;
            progress(done, n);
            match r {
                Ok(v) => slots[i] = Some(v),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// Pairs base tensor `i` with its counterpart in `tuned` and compares them.
fn pair_outcome(
    base: &Weights,
    tuned: &Weights,
    be: &[Entry],
    te: &[Entry],
    i: usize,
    tuned_path: &Path,
    ranks: RankOptions,
) -> Result<Outcome> {
    let e = &be[i];
    let of_role: Vec<usize> = (0..te.len()).filter(|j| te[*j].role == e.role).collect();
    let j = match resolve_among(of_role.iter().map(|j| &te[*j].paths), &e.module) {
        Resolution::Found(k) => of_role[k],
        Resolution::Unmatched => {
            return Ok(Outcome::Unpaired(format!(
                "{} {}: not in {}",
                e.module,
                e.role.name(),
                tuned_path.display()
            )));
        }
        Resolution::Ambiguous(h) => {
            return Ok(Outcome::Unpaired(format!(
                "{} {}: ambiguous in {} ({} candidates)",
                e.module,
                e.role.name(),
                tuned_path.display(),
                h.len()
            )));
        }
    };
    if te[j].dims != e.dims {
        return Ok(Outcome::Unpaired(format!(
            "{} {}: shape {:?} in the base, {:?} in {}",
            e.module,
            e.role.name(),
            e.dims,
            te[j].dims,
            tuned_path.display()
        )));
    }
    let matrix = e.role == Role::Weight && e.dims.len() == 2;
    let max_rank = matrix.then(|| e.dims[0].min(e.dims[1]));
    let needs_rank = max_rank.is_some_and(|r| r <= ranks.max_dim);
    if let (Weights::Checkpoint(bc), Weights::Checkpoint(tc), false) = (base, tuned, needs_rank) {
        // Both stored as PyTorch holds them: stream the sums over the
        // mapped bytes, a chunk at a time, instead of decoding whole
        // tensors (an embedding is hundreds of MB).
        return Ok(Outcome::Paired {
            sums: streamed_sums(bc, i, tc, j)?,
            max_rank,
            ranks: Ranks::default(),
        });
    }
    let w = base.read(i)?;
    let t = tuned.read(j)?;
    let mut sums = Sums {
        params: w.len(),
        ..Sums::default()
    };
    add_pairs(&mut sums, &w, &t);
    let ranks = if needs_rank {
        let delta: Vec<f64> = w
            .iter()
            .zip(&t)
            .map(|(a, b)| f64::from(*b) - f64::from(*a))
            .collect();
        Ranks::of_matrix(&delta, e.dims[0], e.dims[1], ranks.spectrum)
    } else {
        Ranks::default()
    };
    Ok(Outcome::Paired {
        sums,
        max_rank,
        ranks,
    })
}

/// Independent partial sums per quantity in [`add_pairs`]: a single running
/// sum is one long dependency chain; with lanes the chains are independent,
/// two packed f64 registers per quantity on SSE2.
const PAIR_LANES: usize = 4;

/// The partial sums of [`add_pairs`]: ‖W‖², ‖W'‖², ⟨W,W'⟩, ‖ΔW‖² per lane.
#[derive(Default)]
struct PairLanes {
    base: [f64; PAIR_LANES],
    tuned: [f64; PAIR_LANES],
    dot: [f64; PAIR_LANES],
    delta: [f64; PAIR_LANES],
}

impl PairLanes {
    /// Adds the pairs of `w` and `t` (the same length, a multiple of
    /// [`PAIR_LANES`]): value `i` goes to lane `i % PAIR_LANES`.
    #[inline(always)]
    fn add_block(&mut self, w: &[f32], t: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU has it.
        unsafe {
            self.add_block_sse2(w, t)
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.add_block_portable(w, t)
    }

    /// [`PairLanes::add_block`] in plain Rust. LLVM keeps it scalar (its
    /// SLP vectorizer leaves these four-lane reductions alone, at
    /// opt-level 2 and 3): 3.3 ns a pair, 60 % of `analyze`'s time on two
    /// 2 GB checkpoints.
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn add_block_portable(&mut self, w: &[f32], t: &[f32]) {
        let (mut base, mut tuned, mut dot, mut delta) =
            (self.base, self.tuned, self.dot, self.delta);
        let (wc, _) = w.as_chunks::<PAIR_LANES>();
        let (tc, _) = t.as_chunks::<PAIR_LANES>();
        for (x, y) in wc.iter().zip(tc) {
            for k in 0..PAIR_LANES {
                let (a, b) = (f64::from(x[k]), f64::from(y[k]));
                base[k] += a * a;
                tuned[k] += b * b;
                dot[k] += a * b;
                delta[k] += (b - a) * (b - a);
            }
        }
        (self.base, self.tuned, self.dot, self.delta) = (base, tuned, dot, delta);
    }

    /// [`PairLanes::add_block_portable`] in SSE2 ([`Sse2Lanes`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn add_block_sse2(&mut self, w: &[f32], t: &[f32]) {
        use std::arch::x86_64::_mm_set_ps;
        let mut lanes = Sse2Lanes::from(self);
        let (wc, _) = w.as_chunks::<PAIR_LANES>();
        let (tc, _) = t.as_chunks::<PAIR_LANES>();
        for (x, y) in wc.iter().zip(tc) {
            lanes.step(
                _mm_set_ps(x[3], x[2], x[1], x[0]),
                _mm_set_ps(y[3], y[2], y[1], y[0]),
            );
        }
        lanes.store(self);
    }

    /// [`PairLanes::add_block`] over little-endian f32 bytes (lengths a
    /// multiple of 16), loaded in place: decoding into a buffer first was
    /// a copy of every value, 20 % of `analyze`'s time.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse2")]
    fn add_block_le_sse2(&mut self, w: &[u8], t: &[u8]) {
        use std::arch::x86_64::_mm_loadu_ps;
        let mut lanes = Sse2Lanes::from(self);
        let (wc, _) = w.as_chunks::<{ 4 * PAIR_LANES }>();
        let (tc, _) = t.as_chunks::<{ 4 * PAIR_LANES }>();
        for (x, y) in wc.iter().zip(tc) {
            // SAFETY: unaligned loads of 16 bytes from 16-byte arrays; x86_64
            // is little-endian, as the stored values are.
            let (xs, ys) = unsafe {
                (
                    _mm_loadu_ps(x.as_ptr().cast()),
                    _mm_loadu_ps(y.as_ptr().cast()),
                )
            };
            lanes.step(xs, ys);
        }
        lanes.store(self);
    }

    /// A value pair after the full lanes (lane 0).
    fn add_one(&mut self, a: f32, b: f32) {
        let (a, b) = (f64::from(a), f64::from(b));
        self.base[0] += a * a;
        self.tuned[0] += b * b;
        self.dot[0] += a * b;
        self.delta[0] += (b - a) * (b - a);
    }

    fn into_sums(self, s: &mut Sums) {
        s.base_sq += self.base.iter().sum::<f64>();
        s.tuned_sq += self.tuned.iter().sum::<f64>();
        s.dot += self.dot.iter().sum::<f64>();
        s.delta_sq += self.delta.iter().sum::<f64>();
    }
}

/// [`PairLanes`] in SSE2 registers: lanes 0-1 and 2-3 of each sum in a
/// register each, the same operations in the same order per lane as the
/// scalar code (no fused multiply-add), so the same sums bit for bit.
#[cfg(target_arch = "x86_64")]
struct Sse2Lanes {
    base: [std::arch::x86_64::__m128d; 2],
    tuned: [std::arch::x86_64::__m128d; 2],
    dot: [std::arch::x86_64::__m128d; 2],
    delta: [std::arch::x86_64::__m128d; 2],
}

#[cfg(target_arch = "x86_64")]
impl Sse2Lanes {
    #[target_feature(enable = "sse2")]
    fn from(p: &PairLanes) -> Self {
        use std::arch::x86_64::_mm_set_pd;
        let load = |v: &[f64; PAIR_LANES]| [_mm_set_pd(v[1], v[0]), _mm_set_pd(v[3], v[2])];
        Sse2Lanes {
            base: load(&p.base),
            tuned: load(&p.tuned),
            dot: load(&p.dot),
            delta: load(&p.delta),
        }
    }

    /// Adds four pairs: `xs` from the base, `ys` from the tuned model.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn step(&mut self, xs: std::arch::x86_64::__m128, ys: std::arch::x86_64::__m128) {
        use std::arch::x86_64::{_mm_add_pd, _mm_cvtps_pd, _mm_movehl_ps, _mm_mul_pd, _mm_sub_pd};
        let a = [_mm_cvtps_pd(xs), _mm_cvtps_pd(_mm_movehl_ps(xs, xs))];
        let b = [_mm_cvtps_pd(ys), _mm_cvtps_pd(_mm_movehl_ps(ys, ys))];
        for h in 0..2 {
            self.base[h] = _mm_add_pd(self.base[h], _mm_mul_pd(a[h], a[h]));
            self.tuned[h] = _mm_add_pd(self.tuned[h], _mm_mul_pd(b[h], b[h]));
            self.dot[h] = _mm_add_pd(self.dot[h], _mm_mul_pd(a[h], b[h]));
            let d = _mm_sub_pd(b[h], a[h]);
            self.delta[h] = _mm_add_pd(self.delta[h], _mm_mul_pd(d, d));
        }
    }

    #[target_feature(enable = "sse2")]
    fn store(&self, p: &mut PairLanes) {
        use std::arch::x86_64::{__m128d, _mm_storeh_pd, _mm_storel_pd};
        let store = |r: &[__m128d; 2], v: &mut [f64; PAIR_LANES]| {
            let [lo, hi] = v.as_chunks_mut::<2>().0 else {
                return;
            };
            // SAFETY: each store writes one f64 to an element of `v`.
            unsafe {
                _mm_storel_pd(&mut lo[0], r[0]);
                _mm_storeh_pd(&mut lo[1], r[0]);
                _mm_storel_pd(&mut hi[0], r[1]);
                _mm_storeh_pd(&mut hi[1], r[1]);
            }
        };
        store(&self.base, &mut p.base);
        store(&self.tuned, &mut p.tuned);
        store(&self.dot, &mut p.dot);
        store(&self.delta, &mut p.delta);
    }
}

/// Adds `Σ` over value pairs to `s` (not `params`), in f64, in
/// [`PAIR_LANES`] independent partial sums.
fn add_pairs(s: &mut Sums, w: &[f32], t: &[f32]) {
    let mut acc = PairLanes::default();
    let n = w.len().min(t.len());
    let full = n / PAIR_LANES * PAIR_LANES;
    acc.add_block(&w[..full], &t[..full]);
    for (a, b) in w[full..n].iter().zip(&t[full..n]) {
        acc.add_one(*a, *b);
    }
    acc.into_sums(s);
}

/// Values decoded at a time by [`add_pairs_le_f32`] where it decodes (not
/// on x86_64): a block of each side stays in L1 between its decoding and
/// its sums. The tests use it on every target.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
const DECODE_BLOCK: usize = 1024;

/// [`add_pairs`] over little-endian f32 bytes (the same lanes and order, so
/// the same sums bit for bit): loaded in place on x86_64, decoded a block at
/// a time into the stack elsewhere.
fn add_pairs_le_f32(s: &mut Sums, w: &[u8], t: &[u8]) {
    let mut acc = PairLanes::default();
    let n = w.len().min(t.len()) / 4;
    let full = n / PAIR_LANES * PAIR_LANES;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU has it.
    unsafe {
        acc.add_block_le_sse2(&w[..full * 4], &t[..full * 4]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut x = [0f32; DECODE_BLOCK];
        let mut y = [0f32; DECODE_BLOCK];
        for (wb, tb) in w[..full * 4]
            .chunks(DECODE_BLOCK * 4)
            .zip(t[..full * 4].chunks(DECODE_BLOCK * 4))
        {
            let m = decode_le(wb, &mut x).min(decode_le(tb, &mut y));
            acc.add_block(&x[..m], &y[..m]);
        }
    }
    let value = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    for (x, y) in w[full * 4..n * 4]
        .chunks_exact(4)
        .zip(t[full * 4..n * 4].chunks_exact(4))
    {
        acc.add_one(value(x), value(y));
    }
    acc.into_sums(s);
}

/// Little-endian f32 bytes into `out`; returns how many were decoded.
#[cfg(not(target_arch = "x86_64"))]
fn decode_le(bytes: &[u8], out: &mut [f32; DECODE_BLOCK]) -> usize {
    let mut n = 0;
    for (v, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        n += 1;
    }
    n
}

/// Values decoded per step of [`streamed_sums`].
const STREAM_CHUNK: usize = 1 << 16;

/// The sums of two checkpoint tensors of one shape, decoded a chunk at a
/// time from the mapped bytes; their pages are released afterwards.
fn streamed_sums(base: &Checkpoint, i: usize, tuned: &Checkpoint, j: usize) -> Result<Sums> {
    let what = |c: &Checkpoint| format!("reading {}", c.path.display());
    let (bt, tt) = (base.tensors[i].dtype, tuned.tensors[j].dtype);
    let bb = base.bytes(i).map_err(|e| Error::model(what(base), e))?;
    let tb = tuned.bytes(j).map_err(|e| Error::model(what(tuned), e))?;
    let mut s = Sums {
        params: bb.len() / bt.size(),
        ..Sums::default()
    };
    for (x, y) in bb
        .chunks(STREAM_CHUNK * bt.size())
        .zip(tb.chunks(STREAM_CHUNK * tt.size()))
    {
        if (bt, tt) == (FloatType::F32, FloatType::F32) {
            // The common case, without decoding into a buffer first: a copy
            // of every value costs as much as the sums.
            add_pairs_le_f32(&mut s, x, y);
        } else {
            add_pairs(&mut s, &bt.decode(x), &tt.decode(y));
        }
        // Resident memory stays at a chunk, not the tensor.
        base.release_part(i, x);
        tuned.release_part(j, y);
    }
    base.release(i);
    tuned.release(j);
    Ok(s)
}

/// Trained tensors that are neither a linear layer nor named like a
/// parameter (`pos_embed`, `audio_stem.in_scale`, a folded embedding row
/// `select`) are still changed by full fine-tuning: two ONNX files of the
/// same export are compared on every other float initializer of two or
/// more values that both hold under the same name and shape, each its own
/// module. Across exporters such names do not correspond and are skipped.
fn compare_unnamed(
    base: &OnnxModel,
    base_index: &ParamIndex,
    tuned: &OnnxModel,
    tuned_index: &ParamIndex,
    modules: &mut BTreeMap<String, ModuleAcc>,
) -> Result<()> {
    let known = |i: &ParamIndex| -> std::collections::HashSet<String> {
        i.params.iter().map(|p| p.initializer.clone()).collect()
    };
    let (bk, tk) = (known(base_index), known(tuned_index));
    let tuned_by_name = emogate_models::onnx::initializers_by_name(tuned.graph());
    for t in &base.graph().initializer {
        let name = t.name();
        let numel: i64 = t.dims.iter().product();
        if bk.contains(name)
            || tk.contains(name)
            || numel < 2
            || FloatType::from_onnx(t.data_type()).is_none()
        {
            continue;
        }
        let Some(u) = tuned_by_name.get(name) else {
            continue;
        };
        if u.dims != t.dims || FloatType::from_onnx(u.data_type()).is_none() {
            continue;
        }
        let read = |m: &OnnxModel, x| {
            m.float_values(x)
                .map(|(_, v)| v)
                .map_err(|e| Error::model(format!("reading {}", m.path().display()), e))
        };
        let (w, v) = (read(base, t)?, read(tuned, u)?);
        let mut s = Sums {
            params: w.len(),
            ..Sums::default()
        };
        add_pairs(&mut s, &w, &v);
        let module = name
            .strip_suffix(".weight")
            .or_else(|| name.strip_suffix(".bias"))
            .unwrap_or(name);
        modules.entry(module.to_string()).or_default().sums.add(&s);
    }
    Ok(())
}

/// `analyze --base B --adapter DIR`: ΔW from the factors, never formed.
///
/// # Errors
/// Loading errors naming the file; [`Error::Field`] for a DoRA adapter
/// (its ΔW is not s·B·A: merge it, then use `--tuned`) and for modules
/// the base lacks.
pub fn analyze_adapter(
    base_path: &Path,
    adapter_dir: &Path,
    ranks: RankOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<AnalyzeReport> {
    let base = Weights::open(base_path)?;
    let adapter = Adapter::load(adapter_dir)
        .map_err(|e| Error::model(format!("loading adapter {}", adapter_dir.display()), e))?;
    let be = base.entries();
    let weights: Vec<usize> = (0..be.len())
        .filter(|i| be[*i].role == Role::Weight)
        .collect();
    let find = |module: &str| -> Result<usize> {
        match resolve_among(weights.iter().map(|i| &be[*i].paths), module) {
            Resolution::Found(k) => Ok(weights[k]),
            _ => Err(Error::field(
                base_path,
                format!("adapter module `{module}`"),
                "matches no single weight of the base",
            )),
        }
    };
    let mut modules: BTreeMap<String, ModuleAcc> = BTreeMap::new();
    let total = adapter.modules.len() + adapter.replacements.len();
    for (n, (module, lora)) in adapter.modules.iter().enumerate() {
        progress(n, total);
        if lora.magnitude.is_some() {
            return Err(Error::field(
                adapter_dir,
                format!("module `{module}`"),
                "is DoRA; its change is not s·B·A: merge the adapter and analyze with --tuned",
            ));
        }
        let i = find(module)?;
        let (out, inp, r) = (lora.out_features, lora.in_features, lora.rank);
        if be[i].dims != [out, inp] {
            return Err(Error::field(
                adapter_dir,
                format!("module `{module}`"),
                format!("is [{out}, {inp}] but the base weight is {:?}", be[i].dims),
            ));
        }
        let w = base.read(i)?;
        let s = lora.scale;
        // AAᵀ and BᵀB (r×r).
        let mut aat = vec![0f64; r * r];
        let mut btb = vec![0f64; r * r];
        for k in 0..r {
            for l in 0..r {
                aat[k * r + l] = (0..inp)
                    .map(|x| f64::from(lora.a[k * inp + x]) * f64::from(lora.a[l * inp + x]))
                    .sum();
                btb[k * r + l] = (0..out)
                    .map(|o| f64::from(lora.b[o * r + k]) * f64::from(lora.b[o * r + l]))
                    .sum();
            }
        }
        let delta_sq = s
            * s
            * (0..r)
                .map(|k| (0..r).map(|l| btb[k * r + l] * aat[l * r + k]).sum::<f64>())
                .sum::<f64>();
        // ⟨W, B·A⟩ = Σ_o Σ_k B[o,k]·(W·Aᵀ)[o,k].
        let mut dot_delta = 0f64;
        let mut base_sq = 0f64;
        for o in 0..out {
            let row = &w[o * inp..(o + 1) * inp];
            base_sq += row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
            for k in 0..r {
                let wa: f64 = row
                    .iter()
                    .zip(&lora.a[k * inp..(k + 1) * inp])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                dot_delta += f64::from(lora.b[o * r + k]) * wa;
            }
        }
        dot_delta *= s;
        let mut sums = Sums {
            params: w.len(),
            base_sq,
            tuned_sq: base_sq + 2.0 * dot_delta + delta_sq,
            dot: base_sq + dot_delta,
            delta_sq,
        };
        if let Some(bias) = &lora.bias {
            // lora_bias adds s·b_B to the layer's bias.
            let db: f64 = bias.iter().map(|b| (s * f64::from(*b)).powi(2)).sum();
            sums.delta_sq += db;
            sums.params += bias.len();
        }
        // σ² of B·A: eigenvalues of S^½ (AAᵀ) S^½, S = BᵀB.
        let (vals, vecs) = sym_eigen(&btb, r);
        let mut half = vec![0f64; r * r];
        for k in 0..r {
            for l in 0..r {
                half[k * r + l] = (0..r)
                    .map(|m| vecs[k * r + m] * vals[m].max(0.0).sqrt() * vecs[l * r + m])
                    .sum();
            }
        }
        let tmp = matmul(&half, &aat, r);
        let kmat = matmul(&tmp, &half, r);
        let sig2: Vec<f64> = sym_eigenvalues(&kmat, r)
            .into_iter()
            .map(|v| v * s * s)
            .collect();
        modules.insert(
            module.clone(),
            ModuleAcc {
                sums,
                ranks: Ranks::from_spectrum(&sig2, ranks.spectrum),
                max_rank: Some(r),
            },
        );
    }
    for (module, rep) in &adapter.replacements {
        let i = find(module)?;
        let w = base.read(i)?;
        let Some((shape, values)) = &rep.weight else {
            continue;
        };
        if *shape != be[i].dims {
            return Err(Error::field(
                adapter_dir,
                format!("modules_to_save `{module}`"),
                format!("is {shape:?} but the base weight is {:?}", be[i].dims),
            ));
        }
        let mut s = Sums {
            params: w.len(),
            ..Sums::default()
        };
        add_pairs(&mut s, &w, values);
        let (out, inp) = (shape[0], shape.get(1).copied().unwrap_or(1));
        let rank_of = if shape.len() == 2 && out.min(inp) <= ranks.max_dim {
            let delta: Vec<f64> = w
                .iter()
                .zip(values)
                .map(|(a, b)| f64::from(*b) - f64::from(*a))
                .collect();
            Ranks::of_matrix(&delta, out, inp, ranks.spectrum)
        } else {
            Ranks::default()
        };
        modules.insert(
            module.clone(),
            ModuleAcc {
                sums: s,
                ranks: rank_of,
                max_rank: (shape.len() == 2).then_some(out.min(inp)),
            },
        );
    }
    progress(total, total);
    Ok(finish(
        base_path,
        adapter_dir,
        "adapter",
        modules,
        Vec::new(),
        ranks,
    ))
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let x = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += x * b[k * n + j];
            }
        }
    }
    c
}

/// The Gram matrix of a row-major `[out, in]` matrix's smaller side
/// (`M·Mᵀ` when out ≤ in, else `Mᵀ·M`), and its size n.
pub fn gram(m: &[f64], out: usize, inp: usize) -> (Vec<f64>, usize) {
    let n = out.min(inp);
    let mut g = vec![0f64; n * n];
    if out <= inp {
        for a in 0..n {
            let ra = &m[a * inp..(a + 1) * inp];
            for b in a..n {
                let v = dot_f64(ra, &m[b * inp..(b + 1) * inp]);
                g[a * n + b] = v;
                g[b * n + a] = v;
            }
        }
    } else {
        // Mᵀ·M as a sum of outer products of M's rows: row-major access.
        for o in 0..out {
            let r = &m[o * inp..(o + 1) * inp];
            for a in 0..n {
                let x = r[a];
                if x == 0.0 {
                    continue;
                }
                for (gb, y) in g[a * n..(a + 1) * n].iter_mut().zip(r) {
                    *gb += x * y;
                }
            }
        }
    }
    (g, n)
}

fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    const LANES: usize = 4;
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let tail: f64 = a[full..n].iter().zip(&b[full..n]).map(|(x, y)| x * y).sum();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU has it.
    let acc = unsafe { dot_lanes_sse2(&a[..full], &b[..full]) };
    #[cfg(not(target_arch = "x86_64"))]
    let acc = {
        let mut acc = [0f64; LANES];
        for (x, y) in a[..full]
            .chunks_exact(LANES)
            .zip(b[..full].chunks_exact(LANES))
        {
            for k in 0..LANES {
                acc[k] += x[k] * y[k];
            }
        }
        acc
    };
    acc.iter().sum::<f64>() + tail
}

/// [`dot_f64`]'s four partial sums in SSE2 (lanes 0-1 and 2-3 in a
/// register each, per lane the scalar loop's operations in its order), for
/// the [`gram`] of the ranks: LLVM leaves the scalar loop unvectorized.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn dot_lanes_sse2(a: &[f64], b: &[f64]) -> [f64; 4] {
    use std::arch::x86_64::{
        _mm_add_pd, _mm_mul_pd, _mm_set_pd, _mm_setzero_pd, _mm_storeh_pd, _mm_storel_pd,
    };
    let (mut lo, mut hi) = (_mm_setzero_pd(), _mm_setzero_pd());
    let (ac, _) = a.as_chunks::<4>();
    let (bc, _) = b.as_chunks::<4>();
    for (x, y) in ac.iter().zip(bc) {
        lo = _mm_add_pd(
            lo,
            _mm_mul_pd(_mm_set_pd(x[1], x[0]), _mm_set_pd(y[1], y[0])),
        );
        hi = _mm_add_pd(
            hi,
            _mm_mul_pd(_mm_set_pd(x[3], x[2]), _mm_set_pd(y[3], y[2])),
        );
    }
    let mut acc = [0f64; 4];
    let [l, h] = acc.as_chunks_mut::<2>().0 else {
        return acc;
    };
    // SAFETY: each store writes one f64 to an element of `acc`.
    unsafe {
        _mm_storel_pd(&mut l[0], lo);
        _mm_storeh_pd(&mut l[1], lo);
        _mm_storel_pd(&mut h[0], hi);
        _mm_storeh_pd(&mut h[1], hi);
    }
    acc
}

/// Eigenvalues of the Gram matrix of a row-major `[out, in]` matrix's
/// smaller side: its squared singular values.
pub fn gram_eigenvalues(m: &[f64], out: usize, inp: usize) -> Vec<f64> {
    let (g, n) = gram(m, out, inp);
    sym_eigenvalues(&g, n)
}

/// The largest eigenvalue of a symmetric positive semi-definite `n×n`
/// matrix: power iteration on `(G/tr G)⁴` (two squarings: each step moves
/// four of plain power iteration) from a fixed start vector, until the
/// Rayleigh quotient changes by less than [`POWER_TOLERANCE`] (relative)
/// in a step, or [`POWER_MAX_STEPS`] steps. The Rayleigh quotient of a
/// vector never exceeds the largest eigenvalue.
pub fn top_eigenvalue(g: &[f64], n: usize) -> f64 {
    let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
    if n == 0 || trace <= 0.0 {
        return 0.0;
    }
    let scaled: Vec<f64> = g.iter().map(|x| x / trace).collect();
    let sq = matmul(&scaled, &scaled, n);
    let p4 = matmul(&sq, &sq, n);
    // Start: a fixed pseudo-random vector (never orthogonal to the top
    // eigenvector but on a set of measure zero), normalized.
    let mut rng = crate::rng::Rng::new(0x5eed_5a4c);
    let mut v: Vec<f64> = (0..n).map(|_| 1.0 + rng.normal()).collect();
    let norm = |x: &[f64]| x.iter().map(|a| a * a).sum::<f64>().sqrt();
    let nv = norm(&v);
    v.iter_mut().for_each(|x| *x /= nv);
    let mut w = vec![0f64; n];
    let mut last = 0f64;
    let mut mu = 0f64;
    for _ in 0..POWER_MAX_STEPS {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = dot_f64(&p4[i * n..(i + 1) * n], &v);
        }
        mu = dot_f64(&v, &w); // vᵀ·P⁴·v with ‖v‖ = 1
        let nw = norm(&w);
        if nw == 0.0 {
            return 0.0;
        }
        v.iter_mut().zip(&w).for_each(|(a, b)| *a = b / nw);
        if (mu - last).abs() <= POWER_TOLERANCE * mu {
            break;
        }
        last = mu;
    }
    // The Rayleigh quotient of G itself at the converged vector.
    let gv: Vec<f64> = (0..n)
        .map(|i| dot_f64(&g[i * n..(i + 1) * n], &v))
        .collect();
    let rq = dot_f64(&v, &gv);
    // μ^¼·tr G is the same quantity by another route; the larger of two
    // lower bounds is the better one.
    rq.max(mu.max(0.0).powf(0.25) * trace)
}

/// The stable rank `Σσᵢ² / max σᵢ²` of squared singular values.
pub fn stable_rank_of(sigma_sq: &[f64]) -> f64 {
    let top = sigma_sq.iter().copied().fold(0.0, f64::max);
    if top <= 0.0 {
        return 0.0;
    }
    sigma_sq.iter().map(|x| x.max(0.0)).sum::<f64>() / top
}

/// The stable rank `‖M‖_F² / σ_max(M)²` of a row-major `[out, in]` matrix
/// (0 for a zero matrix), σ_max² by [`top_eigenvalue`] of its [`gram`].
pub fn stable_rank(m: &[f64], out: usize, inp: usize) -> f64 {
    let (g, n) = gram(m, out, inp);
    let trace: f64 = (0..n).map(|i| g[i * n + i]).sum();
    if trace <= 0.0 {
        return 0.0;
    }
    trace / top_eigenvalue(&g, n)
}

/// Eigenvalues of a symmetric `n×n` matrix (cyclic Jacobi).
pub fn sym_eigenvalues(m: &[f64], n: usize) -> Vec<f64> {
    sym_eigen(m, n).0
}

/// Eigenvalues and eigenvectors (columns of the row-major result) of a
/// symmetric matrix, by cyclic Jacobi rotations until the off-diagonal mass
/// is below 1e-24 of the total (eigenvalues to about 1e-12 of the largest; or 100 sweeps),
/// skipping rotations whose element is already negligible.
pub fn sym_eigen(m: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = m.to_vec();
    let mut v = vec![0f64; n * n];
    (0..n).for_each(|i| v[i * n + i] = 1.0);
    let total: f64 = a.iter().map(|x| x * x).sum();
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        if off <= 1e-24 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0
                    || apq.abs() <= 1e-18 * (a[p * n + p].abs() * a[q * n + q].abs()).sqrt()
                {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// Roy & Vetterli's effective rank from squared singular values.
pub fn effective_rank(sigma_sq: &[f64]) -> f64 {
    let sig: Vec<f64> = sigma_sq.iter().map(|x| x.max(0.0).sqrt()).collect();
    let sum: f64 = sig.iter().sum();
    if sum <= 0.0 {
        return 0.0;
    }
    let h: f64 = sig
        .iter()
        .filter(|s| **s > 0.0)
        .map(|s| {
            let p = s / sum;
            -p * p.ln()
        })
        .sum();
    h.exp()
}

/// The report as a text table: the modules, then per type and per layer.
pub fn table(r: &AnalyzeReport, group_by_layer: bool) -> String {
    let mut s = format!(
        "base  {}\n{:<5} {}\n",
        r.base.display(),
        r.against,
        r.tuned.display()
    );
    // srank: stable rank ‖ΔW‖_F²/σ_max²; erank (--spectrum): Roy & Vetterli.
    let rank = |x: Option<f64>| x.map(|e| format!("{e:.2}")).unwrap_or_else(|| "-".into());
    let line = |s: &mut String, row: &Row| {
        s.push_str(&format!(
            "{:<44} {:>10} {:>11.4e} {:>7.2}% {:>10.6} {:>7}",
            row.name,
            row.params,
            row.relative_change,
            100.0 * row.share,
            row.cosine,
            rank(row.stable_rank)
        ));
        if r.spectrum {
            s.push_str(&format!(" {:>7}", rank(row.effective_rank)));
        }
        s.push('\n');
    };
    let head = |s: &mut String, first: &str| {
        s.push_str(&format!(
            "{:<44} {:>10} {:>11} {:>8} {:>10} {:>7}",
            first, "params", "|dW|/|W|", "share", "cos", "srank"
        ));
        if r.spectrum {
            s.push_str(&format!(" {:>7}", "erank"));
        }
        s.push('\n');
    };
    head(&mut s, "module");
    r.modules.iter().for_each(|m| line(&mut s, m));
    s.push('\n');
    if group_by_layer {
        head(&mut s, "layer");
        r.by_layer.iter().for_each(|m| line(&mut s, m));
    } else {
        head(&mut s, "module type");
        r.by_type.iter().for_each(|m| line(&mut s, m));
    }
    line(&mut s, &r.total);
    for u in &r.unpaired {
        s.push_str(&format!("unpaired: {u}\n"));
    }
    s
}

/// An SVG heat map of ‖ΔW‖/‖W‖ per module type (rows) and layer (columns),
/// with a colour scale legend; modules outside layers (heads, embeddings)
/// get a column of their own.
pub fn heat_map_svg(r: &AnalyzeReport) -> String {
    let mut cells: BTreeMap<(String, Option<usize>), Sums> = BTreeMap::new();
    for m in &r.modules {
        cells
            .entry((module_type(&m.name).to_string(), layer_of(&m.name)))
            .or_default()
            .add(&m.sums);
    }
    let types: Vec<String> = {
        let mut t: Vec<String> = cells.keys().map(|k| k.0.clone()).collect();
        t.dedup();
        t.sort();
        t.dedup();
        t
    };
    let mut cols: Vec<Option<usize>> = cells.keys().map(|k| k.1).collect();
    cols.sort();
    cols.dedup();
    let value = |s: &Sums| {
        if s.base_sq > 0.0 {
            (s.delta_sq / s.base_sq).sqrt()
        } else {
            0.0
        }
    };
    let max = cells.values().map(value).fold(0.0, f64::max);
    let (cw, ch, left, top) = (44.0, 24.0, 150.0, 60.0);
    let width = left + cw * cols.len() as f64 + 140.0;
    let height = top + ch * types.len() as f64 + 50.0;
    let colour = |v: f64| {
        // White → orange → dark red.
        let t = if max > 0.0 {
            (v / max).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let stops = [
            (255.0, 255.0, 255.0),
            (253.0, 141.0, 60.0),
            (128.0, 0.0, 38.0),
        ];
        let (a, b, u) = if t < 0.5 {
            (stops[0], stops[1], t * 2.0)
        } else {
            (stops[1], stops[2], (t - 0.5) * 2.0)
        };
        let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
        format!(
            "#{:02x}{:02x}{:02x}",
            mix(a.0, b.0),
            mix(a.1, b.1),
            mix(a.2, b.2)
        )
    };
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">‖ΔW‖/‖W‖ per module type and layer: {}</text>\n",
        esc(&r.tuned.display().to_string())
    );
    for (c, col) in cols.iter().enumerate() {
        let x = left + cw * c as f64 + cw / 2.0;
        let label = col.map(|l| l.to_string()).unwrap_or_else(|| "–".into());
        svg.push_str(&format!(
            "<text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            top - 8.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">layer</text>\n",
        left + cw * cols.len() as f64 / 2.0,
        top - 26.0
    ));
    for (rw, t) in types.iter().enumerate() {
        let y = top + ch * rw as f64;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 6.0,
            y + ch * 0.65,
            esc(t)
        ));
        for (c, col) in cols.iter().enumerate() {
            if let Some(s) = cells.get(&(t.clone(), *col)) {
                let v = value(s);
                svg.push_str(&format!(
                    "<rect x=\"{}\" y=\"{y}\" width=\"{cw}\" height=\"{ch}\" fill=\"{}\" stroke=\"#ccc\"><title>{} layer {}: {v:.4e}</title></rect>\n",
                    left + cw * c as f64,
                    colour(v),
                    esc(t),
                    col.map(|l| l.to_string()).unwrap_or_else(|| "-".into())
                ));
            }
        }
    }
    // Legend: a vertical gradient from 0 to the maximum.
    let lx = left + cw * cols.len() as f64 + 30.0;
    let steps = 20;
    let lh = ch * types.len().max(4) as f64;
    for k in 0..steps {
        let v = max * (steps - 1 - k) as f64 / (steps - 1) as f64;
        svg.push_str(&format!(
            "<rect x=\"{lx}\" y=\"{}\" width=\"16\" height=\"{}\" fill=\"{}\"/>\n",
            top + lh * k as f64 / steps as f64,
            lh / steps as f64 + 0.5,
            colour(v)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\">{max:.3e}</text>\n",
        lx + 20.0,
        top + 10.0
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\">0</text>\n",
        lx + 20.0,
        top + lh
    ));
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_and_effective_rank() {
        // diag(4, 1) rotated: eigenvalues 4 and 1.
        let (c, s) = (0.6f64, 0.8f64);
        let m = [
            4.0 * c * c + s * s,
            (4.0 - 1.0) * c * s,
            (4.0 - 1.0) * c * s,
            4.0 * s * s + c * c,
        ];
        let mut e = sym_eigenvalues(&m, 2);
        e.sort_by(f64::total_cmp);
        assert!(
            (e[0] - 1.0).abs() < 1e-12 && (e[1] - 4.0).abs() < 1e-12,
            "{e:?}"
        );
        // σ = 2, 1: p = 2/3, 1/3.
        let h: f64 = -(2.0f64 / 3.0) * (2.0f64 / 3.0).ln() - (1.0f64 / 3.0) * (1.0f64 / 3.0).ln();
        assert!((effective_rank(&[4.0, 1.0]) - h.exp()).abs() < 1e-12);
        assert!((effective_rank(&[9.0, 9.0, 9.0]) - 3.0).abs() < 1e-12);
        assert_eq!(effective_rank(&[0.0, 0.0]), 0.0);
    }

    /// `Σₖ sₖ·uₖ·vₖᵀ` with orthonormal uₖ (columns of a rotation) and vₖ:
    /// singular values exactly `s`.
    fn known_spectrum(out: usize, inp: usize, s: &[f64]) -> Vec<f64> {
        // Orthonormal vectors: Householder reflections I − 2·h·hᵀ/‖h‖².
        let reflect = |n: usize, seed: f64| {
            let h: Vec<f64> = (0..n)
                .map(|i| (seed * (i as f64 + 1.0)).sin() + 0.1)
                .collect();
            let hh: f64 = h.iter().map(|x| x * x).sum();
            move |k: usize, i: usize| f64::from(u8::from(k == i)) - 2.0 * h[k] * h[i] / hh
        };
        let (u, v) = (reflect(out, 0.7), reflect(inp, 1.3));
        let mut m = vec![0f64; out * inp];
        for (k, sk) in s.iter().enumerate() {
            for o in 0..out {
                for i in 0..inp {
                    m[o * inp + i] += sk * u(k, o) * v(k, i);
                }
            }
        }
        m
    }

    #[test]
    fn stable_rank_of_a_matrix_with_a_known_spectrum() {
        // σ = 3, 1, 0.5: srank = (9 + 1 + 0.25)/9; both orientations.
        for (out, inp) in [(5, 12), (12, 5), (7, 7)] {
            let m = known_spectrum(out, inp, &[3.0, 1.0, 0.5]);
            let sr = stable_rank(&m, out, inp);
            assert!((sr - 10.25 / 9.0).abs() < 1e-10, "{out}x{inp}: {sr}");
            let r = Ranks::of_matrix(&m, out, inp, true);
            assert_eq!(r.stable, Some(sr));
            let sig2 = [9.0, 1.0, 0.25];
            // The zero eigenvalues come out of Jacobi as ~1e-16, whose
            // square roots (~1e-8) enter the entropy: 1e-6, not 1e-12.
            let e = r.effective.unwrap();
            assert!((e - effective_rank(&sig2)).abs() < 1e-6, "{e}");
        }
        // Rank one: exactly 1. Two equal singular values (the slowest case
        // for power iteration: no gap): exactly 2. No change: 0.
        assert!((stable_rank(&known_spectrum(6, 9, &[2.5]), 6, 9) - 1.0).abs() < 1e-12);
        assert!((stable_rank(&known_spectrum(6, 9, &[2.0, 2.0]), 6, 9) - 2.0).abs() < 1e-9);
        assert_eq!(stable_rank(&[0.0; 12], 3, 4), 0.0);
        assert_eq!(stable_rank_of(&[4.0, 1.0, 0.0]), 1.25);
        assert_eq!(
            Ranks::from_spectrum(&[4.0, 1.0], false),
            Ranks {
                stable: Some(1.25),
                effective: None
            }
        );
    }

    #[test]
    fn simd_lanes_equal_the_scalar_lanes_bit_for_bit() {
        let w: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.71).cos() * 3.0).collect();
        let t: Vec<f32> = w.iter().map(|x| x * 0.97 - 0.013).collect();
        let (mut simd, mut scalar) = (PairLanes::default(), PairLanes::default());
        simd.add_block(&w, &t);
        scalar.add_block_portable(&w, &t);
        assert_eq!(
            (simd.base, simd.tuned, simd.dot, simd.delta),
            (scalar.base, scalar.tuned, scalar.dot, scalar.delta)
        );
        let (a, b): (Vec<f64>, Vec<f64>) = w
            .iter()
            .zip(&t)
            .take(1023)
            .map(|(x, y)| (f64::from(*x), f64::from(*y)))
            .unzip();
        let mut lanes = [0f64; 4];
        for (x, y) in a[..1020].chunks_exact(4).zip(b[..1020].chunks_exact(4)) {
            for k in 0..4 {
                lanes[k] += x[k] * y[k];
            }
        }
        let tail: f64 = a[1020..].iter().zip(&b[1020..]).map(|(x, y)| x * y).sum();
        assert_eq!(dot_f64(&a, &b), lanes.iter().sum::<f64>() + tail);
    }

    #[test]
    fn add_pairs_matches_a_plain_sum() {
        // Two whole decode blocks and a part one ending off a lane boundary.
        let w: Vec<f32> = (0..2 * DECODE_BLOCK + 7)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let t: Vec<f32> = w.iter().map(|x| x * 1.01 + 0.002).collect();
        let mut s = Sums::default();
        add_pairs(&mut s, &w, &t);
        let plain = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
            w.iter()
                .zip(&t)
                .map(|(a, b)| f(f64::from(*a), f64::from(*b)))
                .sum()
        };
        // The in-place f32 byte variant gives the same sums, bit for bit.
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut b = Sums::default();
        add_pairs_le_f32(&mut b, &bytes(&w), &bytes(&t));
        assert_eq!(
            (b.base_sq, b.tuned_sq, b.dot, b.delta_sq),
            (s.base_sq, s.tuned_sq, s.dot, s.delta_sq)
        );
        for (got, want) in [
            (s.base_sq, plain(&|a, _| a * a)),
            (s.tuned_sq, plain(&|_, b| b * b)),
            (s.dot, plain(&|a, b| a * b)),
            (s.delta_sq, plain(&|a, b| (b - a) * (b - a))),
        ] {
            assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
        }
    }
}
