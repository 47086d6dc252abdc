//! The algebraic identities of `analyze`, `transfer`, `ablate` and `eval`
//! (issue 11's "Proof" list), on the merge fixtures (tiny Llama/Qwen2
//! exported by both exporters, PEFT's merged logits) and on numpy's
//! answers for a small safetensors checkpoint.

use std::path::{Path, PathBuf};

use emogate_infer::backend::{Backend, tract::TractBackend};
use emogate_models::merge::{MergeOptions, merge_to_file};
use emogate_models::onnx::params::{ParamIndex, stored_to_torch};
use emogate_models::onnx::{OnnxModel, build};
use emogate_models::peft::Adapter;
use emogate_models::surgery::ModuleFilter;
use emogate_tests::{Expected, fixtures, max_abs_diff};
use emogate_tools::analyze::{RankOptions, analyze_adapter, analyze_models};
use emogate_tools::eval::{EvalOptions, EvalSource, eval};
use emogate_tools::graft::{AblateMode, ablate, transfer};
use emogate_tools::npz::{NpyArray, NpyData, write_npz};
use emogate_tools::verify::BackendKind;

fn merge_dir() -> PathBuf {
    fixtures().join("merge")
}

fn expected(kind: &str) -> Expected {
    Expected::all()
        .into_iter()
        .find(|e| format!("{}-{}", e.base, e.kind) == kind)
        .unwrap_or_else(|| panic!("fixture {kind}"))
}

fn merged(model: &Path, adapter: &Path, out: &Path) -> emogate_models::merge::MergeReport {
    let m = OnnxModel::load(model).unwrap();
    let a = Adapter::load(adapter).unwrap();
    merge_to_file(&m, &a, out, &MergeOptions::default(), &mut |_, _| {}).unwrap()
}

/// Every param of a model in PyTorch's orientation, by module and role.
fn torch_params(path: &Path) -> Vec<(String, &'static str, Vec<f32>)> {
    let m = OnnxModel::load(path).unwrap();
    let idx = ParamIndex::build(m.graph());
    let mut out: Vec<_> = idx
        .params
        .iter()
        .map(|p| {
            let t = m
                .graph()
                .initializer
                .iter()
                .find(|t| t.name() == p.initializer)
                .unwrap();
            (
                p.module.clone(),
                p.role.name(),
                stored_to_torch(p, m.float_values(t).unwrap().1),
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

/// Every initializer's stored bytes, by name.
fn stored(path: &Path) -> Vec<(String, Vec<u8>)> {
    let m = OnnxModel::load(path).unwrap();
    let mut v: Vec<_> = m
        .graph()
        .initializer
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                m.raw_bytes(t).unwrap().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Both rank measures for weights up to 256 wide, on two threads.
const SPECTRUM: RankOptions = RankOptions {
    max_dim: 256,
    spectrum: true,
    threads: 2,
};

fn run(path: &Path, e: &Expected) -> Vec<f32> {
    let mut b = TractBackend::load(path).unwrap();
    b.run(&[e.input_tensor()]).unwrap()[0]
        .as_f32()
        .unwrap()
        .to_vec()
}

#[test]
fn analyze_of_a_model_against_itself_reports_no_change() {
    let base = merge_dir().join("llama.legacy/model.onnx");
    let r = analyze_models(&base, &base, SPECTRUM, &mut |_, _| {}).unwrap();
    assert!(r.unpaired.is_empty(), "{:?}", r.unpaired);
    assert!(r.modules.len() > 10);
    for m in &r.modules {
        assert_eq!(m.sums.delta_sq, 0.0, "{}", m.name);
        assert_eq!(m.relative_change, 0.0);
        assert!((m.cosine - 1.0).abs() < 1e-12, "{}", m.name);
        if let Some(e) = m.effective_rank {
            assert_eq!(e, 0.0);
        }
        if let Some(e) = m.stable_rank {
            assert_eq!(e, 0.0);
        }
    }
    // A dynamo export against the legacy export of the same weights: every
    // module pairs up by path, and nothing changed.
    let dynamo = merge_dir().join("llama.dynamo/model.onnx");
    let r = analyze_models(&dynamo, &base, SPECTRUM, &mut |_, _| {}).unwrap();
    assert!(r.unpaired.is_empty(), "{:?}", r.unpaired);
    assert!(
        r.modules
            .iter()
            .filter(|m| m.name.ends_with("gate_proj"))
            .count()
            == 2
    );
    assert_eq!(r.total.sums.delta_sq, 0.0);
    assert_eq!(r.total.params, 80640);
}

#[test]
fn analyze_equals_merges_relative_change_per_module() {
    for (fixture, export) in [
        ("llama-plain", "llama.dynamo"),
        ("qwen2-rslora", "qwen2.legacy"),
        ("llama-save_score", "llama.legacy"),
    ] {
        let e = expected(fixture);
        let base = merge_dir().join(export).join("model.onnx");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.onnx");
        let report = merged(&base, &e.adapter(), &out);
        let tuned = analyze_models(&base, &out, SPECTRUM, &mut |_, _| {}).unwrap();
        let factors = analyze_adapter(&base, &e.adapter(), SPECTRUM, &mut |_, _| {}).unwrap();
        for m in &report.modules {
            let find = |rows: &[emogate_tools::analyze::Row]| {
                rows.iter()
                    .find(|r| r.name.ends_with(&m.module) || m.module.ends_with(&r.name))
                    .unwrap_or_else(|| panic!("{fixture}: {} not analyzed", m.module))
                    .relative_change
            };
            // Merge's number is of the weight alone; a module_to_save with a
            // bias adds it in analyze, so compare weights-only modules.
            let a = find(&tuned.modules);
            let b = find(&factors.modules);
            let tol = 1e-5 * m.relative_change.max(1e-3);
            assert!(
                (a - m.relative_change).abs() <= tol,
                "{fixture} {}: tuned {a} merge {}",
                m.module,
                m.relative_change
            );
            assert!(
                (b - m.relative_change).abs() <= tol,
                "{fixture} {}: factors {b} merge {}",
                m.module,
                m.relative_change
            );
        }
        // The adapter's ranks are bounded by r, and those from the r×r
        // factors equal those of the merged model's ΔW.
        for row in &factors.modules {
            if let (Some(er), Some(r)) = (row.effective_rank, row.max_rank) {
                assert!(er <= r as f64 + 1e-9, "{}: {er} > {r}", row.name);
            }
            if let (Some(sr), Some(r)) = (row.stable_rank, row.max_rank) {
                assert!(
                    (1.0 - 1e-9..=r as f64 + 1e-9).contains(&sr),
                    "{}: srank {sr}, r {r}",
                    row.name
                );
                let merged = tuned
                    .modules
                    .iter()
                    .find(|t| t.name.ends_with(&row.name) || row.name.ends_with(&t.name))
                    .and_then(|t| t.stable_rank);
                if let Some(m) = merged {
                    // The merged weights are f32: ΔW carries rounding noise.
                    assert!(
                        (m - sr).abs() <= 1e-3 * sr,
                        "{fixture} {}: srank {m} merged, {sr} factors",
                        row.name
                    );
                }
            }
        }
    }
}

#[test]
fn analyze_of_a_sharded_checkpoint_matches_numpy() {
    let dir = fixtures().join("analyze");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let r = analyze_models(
        &dir.join("base.safetensors"),
        &dir.join("tuned/model.safetensors.index.json"),
        SPECTRUM,
        &mut |_, _| {},
    )
    .unwrap();
    let modules = want["modules"].as_object().unwrap();
    assert_eq!(r.modules.len(), modules.len());
    for row in &r.modules {
        let w = &modules[&row.name];
        assert_eq!(
            row.params as u64,
            w["params"].as_u64().unwrap(),
            "{}",
            row.name
        );
        for (got, key) in [
            (row.sums.delta_sq, "delta_sq"),
            (row.sums.base_sq, "base_sq"),
            (row.sums.tuned_sq, "tuned_sq"),
            (row.sums.dot, "dot"),
        ] {
            let want = w[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{} {key}: {got} vs numpy {want}",
                row.name
            );
        }
        match (row.stable_rank, w["stable_rank"].as_f64()) {
            (Some(g), Some(n)) => {
                assert!(
                    (g - n).abs() < 1e-9 * n,
                    "{}: srank {g} vs numpy {n}",
                    row.name
                )
            }
            (None, None) => {}
            other => panic!("{}: srank {other:?}", row.name),
        }
        match (row.effective_rank, w["effective_rank"].as_f64()) {
            (Some(g), Some(n)) => {
                assert!((g - n).abs() < 1e-6, "{}: erank {g} vs numpy {n}", row.name)
            }
            (None, None) => {}
            other => panic!("{}: {other:?}", row.name),
        }
    }
}

#[test]
fn transferring_every_module_reproduces_the_donor_bit_for_bit() {
    let e = expected("llama-save_score");
    let base = merge_dir().join("llama.legacy/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let donor = dir.path().join("donor.onnx");
    merged(&base, &e.adapter(), &donor);
    let out = dir.path().join("all.onnx");
    let r = transfer(&donor, &base, ".*", &out, false).unwrap();
    assert!(r.copies.iter().all(|c| c.bit_exact));
    assert_eq!(stored(&out), stored(&donor));
    // Across exporters: the dynamo export's tensors, as PyTorch holds them.
    let dyn_base = merge_dir().join("llama.dynamo/model.onnx");
    let dyn_donor = dir.path().join("dyn_donor.onnx");
    merged(&dyn_base, &e.adapter(), &dyn_donor);
    let cross = dir.path().join("cross.onnx");
    transfer(&dyn_donor, &base, ".*", &cross, false).unwrap();
    let (a, b) = (torch_params(&cross), torch_params(&dyn_donor));
    assert_eq!(a.len(), b.len());
    for ((ma, ra, va), (mb, rb, vb)) in a.iter().zip(&b) {
        assert!(
            ma.ends_with(mb.as_str()) || mb.ends_with(ma.as_str()),
            "{ma} vs {mb}"
        );
        assert_eq!((ra, va), (rb, vb), "{ma}");
    }
}

#[test]
fn gate_then_the_rest_equals_everything_at_once() {
    let base = merge_dir().join("qwen2.legacy/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    // A donor that differs from the base in every tensor.
    let donor = dir.path().join("donor.onnx");
    let mut all = ModuleFilter::new(".*").unwrap();
    all.weights_only = false;
    ablate(&base, &all, &AblateMode::Noise(0.01), &donor, false).unwrap();
    let at_once = dir.path().join("at_once.onnx");
    transfer(&donor, &base, ".*", &at_once, false).unwrap();
    let gate = dir.path().join("gate.onnx");
    transfer(&donor, &base, "gate_proj", &gate, false).unwrap();
    let rest: Vec<String> = ParamIndex::build(OnnxModel::load(&base).unwrap().graph())
        .modules()
        .into_iter()
        .filter(|m| !m.ends_with("gate_proj"))
        .map(|m| regex::escape(&m))
        .collect();
    let both = dir.path().join("both.onnx");
    transfer(
        &donor,
        &gate,
        &format!("^({})$", rest.join("|")),
        &both,
        false,
    )
    .unwrap();
    assert_eq!(stored(&both), stored(&at_once));
    assert_ne!(stored(&gate), stored(&at_once));
}

#[test]
fn revert_everything_gives_the_base_and_untouched_modules_change_nothing() {
    let e = expected("llama-plain");
    let base = merge_dir().join("llama.legacy/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let tuned = dir.path().join("tuned.onnx");
    merged(&base, &e.adapter(), &tuned);
    let revert = AblateMode::Revert(base.clone());
    let out = dir.path().join("reverted.onnx");
    ablate(
        &tuned,
        &ModuleFilter::new(".*").unwrap(),
        &revert,
        &out,
        false,
    )
    .unwrap();
    assert_eq!(stored(&out), stored(&base));
    assert_eq!(run(&out, &e), run(&base, &e));
    // The adapter changed gate_proj only: reverting the rest is a no-op.
    let rest = dir.path().join("rest.onnx");
    ablate(
        &tuned,
        &ModuleFilter::new("q_proj|k_proj|v_proj|o_proj|up_proj|down_proj|norm|embed").unwrap(),
        &revert,
        &rest,
        false,
    )
    .unwrap();
    assert_eq!(stored(&rest), stored(&tuned));
    // Selecting nothing is an error that lists the modules.
    let err = ablate(
        &tuned,
        &ModuleFilter::new("nothing_here").unwrap(),
        &revert,
        &rest,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("matches no module") && err.contains("mlp.gate_proj"),
        "{err}"
    );
}

#[test]
fn zeroing_gate_up_or_down_gives_the_same_outputs() {
    let e = expected("llama-plain");
    let base = merge_dir().join("llama.legacy/model.onnx");
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for m in ["gate_proj", "up_proj", "down_proj"] {
        let out = dir.path().join(format!("{m}.onnx"));
        let r = ablate(
            &base,
            &ModuleFilter::new(m).unwrap(),
            &AblateMode::Zero,
            &out,
            false,
        )
        .unwrap();
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("deletes the whole MLP")),
            "{m}"
        );
        outs.push(run(&out, &e));
    }
    assert!(
        max_abs_diff(&outs[0], &outs[1]) <= 1e-6 && max_abs_diff(&outs[0], &outs[2]) <= 1e-6,
        "{outs:?}"
    );
    assert!(max_abs_diff(&outs[0], &e.base_logits) > 1e-3);
    // Seeded modes are reproducible.
    let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
    for p in [&a, &b] {
        ablate(
            &base,
            &ModuleFilter::new("gate_proj").unwrap(),
            &AblateMode::Reinit(3),
            p,
            false,
        )
        .unwrap();
    }
    assert_eq!(stored(&a), stored(&b));
}

#[test]
fn gate_proj_from_a_dynamo_merge_into_the_legacy_base_matches_peft() {
    let e = expected("llama-plain");
    let dir = tempfile::tempdir().unwrap();
    let dyn_merged = dir.path().join("dyn.onnx");
    merged(
        &merge_dir().join("llama.dynamo/model.onnx"),
        &e.adapter(),
        &dyn_merged,
    );
    let out = dir.path().join("grafted.onnx");
    let r = transfer(
        &dyn_merged,
        &merge_dir().join("llama.legacy/model.onnx"),
        "gate_proj",
        &out,
        false,
    )
    .unwrap();
    assert_eq!(r.copies.len(), 2);
    let logits = run(&out, &e);
    let diff = max_abs_diff(&logits, &e.merged_logits);
    assert!(diff <= 1e-4, "max |grafted - PEFT| = {diff}");
}

/// A model whose class scores are its input (`y = x · I`): its argmax is
/// known for every input.
fn identity_classifier(dir: &Path, classes: usize) -> PathBuf {
    let mut eye = vec![0f32; classes * classes];
    (0..classes).for_each(|i| eye[i * classes + i] = 1.0);
    let raw: Vec<u8> = eye.iter().flat_map(|v| v.to_le_bytes()).collect();
    let k = classes as i64;
    let graph = emogate_models::onnx::proto::GraphProto {
        name: Some("identity".into()),
        node: vec![build::node("scores", "MatMul", &["x", "eye"], &["y"])],
        initializer: vec![build::tensor_raw("eye", 1, &[k, k], raw)],
        input: vec![build::value_info("x", 1, &[Some(1), Some(k)])],
        output: vec![build::value_info("y", 1, &[Some(1), Some(k)])],
        ..Default::default()
    };
    let model = build::model(graph, 17);
    let path = dir.join("identity.onnx");
    std::fs::write(&path, prost::Message::encode_to_vec(&model)).unwrap();
    path
}

#[test]
fn eval_of_known_predictions_is_exact_and_refuses_bad_labels() {
    let dir = tempfile::tempdir().unwrap();
    let model = identity_classifier(dir.path(), 3);
    // Predictions (argmax of x): 0 0 1 1 2 2 0 1; labels: 0 1 1 1 2 0 0 2.
    let preds = [0usize, 0, 1, 1, 2, 2, 0, 1];
    let labels = [0i64, 1, 1, 1, 2, 0, 0, 2];
    let x: Vec<f32> = preds
        .iter()
        .flat_map(|p| (0..3).map(move |c| if c == *p { 1.0 } else { 0.0 }))
        .collect();
    let write = |name: &str, labels: Vec<i64>, n: usize| {
        let p = dir.path().join(name);
        write_npz(
            &p,
            &[
                NpyArray {
                    name: "x".into(),
                    shape: vec![n, 1, 3],
                    data: NpyData::F32(x[..n * 3].to_vec()),
                },
                NpyArray {
                    name: "labels".into(),
                    shape: vec![labels.len()],
                    data: NpyData::I64(labels),
                },
            ],
        )
        .unwrap();
        p
    };
    let options = |p: PathBuf| EvalOptions {
        model: model.clone(),
        compare: None,
        source: EvalSource::Npz(p),
        zero_input: None,
        backend: BackendKind::Tract,
        threads: 1,
        save_inputs: None,
        min_acc: Some(0.9),
    };
    let r = eval(&options(write("ok.npz", labels.to_vec(), 8))).unwrap();
    let s = &r.models[0].scores;
    // Confusion: class 0: 2 of 3 right (one → 2), class 1: 2 of 3 (one → 0), class 2: 1 of 2 (one → 1).
    assert_eq!(
        s.confusion,
        vec![vec![2, 0, 1], vec![1, 2, 0], vec![0, 1, 1]]
    );
    assert_eq!(s.correct, 5);
    assert_eq!(s.accuracy.value, 5.0 / 8.0);
    let uar = (2.0 / 3.0 + 2.0 / 3.0 + 0.5) / 3.0;
    assert!((s.uar.value - uar).abs() < 1e-12);
    // F1 per class: 2·tp/(support + predicted): 4/6, 4/6, 2/4.
    let f1 = (4.0 / 6.0 + 4.0 / 6.0 + 0.5) / 3.0;
    assert!((s.macro_f1.value - f1).abs() < 1e-12);
    assert!(!r.passed, "0.625 < --min-acc 0.9");
    // Labels that do not fit are errors naming the array.
    let e = eval(&options(write("short.npz", labels[..7].to_vec(), 8)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("array `labels`") && e.contains("8 samples"),
        "{e}"
    );
    let mut bad = labels.to_vec();
    bad[4] = 3;
    let e = eval(&options(write("range.npz", bad, 8)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels`[4]") && e.contains("3 classes"), "{e}");
    bad = labels.to_vec();
    bad[0] = -1;
    let e = eval(&options(write("neg.npz", bad, 8)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels`[0]"), "{e}");
}

#[test]
fn adapters_cut_down_and_grafted_from_adapters_behave_like_merge() {
    let e = expected("llama-save_score");
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    let r = emogate_tools::graft::subset_adapter(&e.adapter(), r"layers\.0\.|score", &sub).unwrap();
    assert_eq!(r.saved_modules, ["score"]);
    let a = Adapter::load(&sub).unwrap();
    assert_eq!(
        a.modules.keys().collect::<Vec<_>>(),
        ["model.layers.0.mlp.gate_proj"]
    );
    assert_eq!(a.replacements.len(), 1);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sub.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["model.layers.0.mlp.gate_proj"])
    );
    assert_eq!(config["modules_to_save"], serde_json::json!(["score"]));
    // An existing output is never overwritten; a pattern matching nothing lists the modules.
    let err = emogate_tools::graft::subset_adapter(&e.adapter(), "score", &sub)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exists"), "{err}");
    let err = emogate_tools::graft::subset_adapter(&e.adapter(), "nothing", &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.gate_proj"), "{err}");
    // A run killed mid-write leaves its staging folder (unlocked, as a dead
    // process's is); the next run into the same folder removes it, and a
    // successful run leaves only its output.
    let dead = dir.path().join(".sub2.k1LLed.emogate-tmp");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("adapter_model.safetensors"), b"partial").unwrap();
    emogate_tools::graft::subset_adapter(&e.adapter(), "score", &dir.path().join("sub2")).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["sub", "sub2"]);
    // transfer from an adapter donor, every module: the merge itself.
    let base = merge_dir().join("llama.legacy/model.onnx");
    let (grafted, full) = (dir.path().join("g.onnx"), dir.path().join("m.onnx"));
    transfer(&e.adapter(), &base, ".*", &grafted, false).unwrap();
    merged(&base, &e.adapter(), &full);
    assert_eq!(stored(&grafted), stored(&full));
}
