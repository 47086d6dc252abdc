//! `scripts/gate-locus` on a tiny plan made from the reference model and its
//! two shipped adapters: the table is generated, `--check` accepts it, and
//! `--check` rejects a table that differs by one character.
//!
//! Ignored by default (about a minute in a debug build: some 70 converter
//! runs). Run with
//! `cargo test -p emogate-tests --test gate_locus_script -- --ignored`
//! after `cargo build -p emogate-tools` (it uses target/debug/emogate-convert).

use std::path::PathBuf;
use std::process::Command;

use emogate_tests::repo_root;
use emogate_tools::npz::{NpyArray, NpyData, write_npz};
use emogate_tools::rng::Rng;

#[test]
#[ignore = "about a minute; run with --ignored"]
fn gate_locus_regenerates_and_checks_a_tiny_plan() {
    let root = repo_root();
    let convert = root.join("target/debug/emogate-convert");
    assert!(
        convert.exists(),
        "build emogate-convert first: {}",
        convert.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = root.join("models/reference/base/emogate-base.onnx");
    let adapters = root.join("models/reference/adapters");
    // "full" runs: the base with each adapter merged, as model files.
    for (seed, name) in [(1, "affect-gate"), (2, "affect-all")] {
        let out = d.join(format!("runs/full/s{seed}/model.onnx"));
        let ok = Command::new(&convert)
            .args(["merge", "--model"])
            .arg(&base)
            .arg("--adapter")
            .arg(adapters.join(name))
            .arg("--out")
            .arg(&out)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let plan = serde_json::json!({
        "base": base,
        "eval": {"generator": "seeded noise (test)", "seed": 5, "per_class": 2},
        "runs": [
            {"name": "full", "seed": 1, "trainable_params": 279801, "model": "runs/full/s1/model.onnx"},
            {"name": "full", "seed": 2, "trainable_params": 279801, "model": "runs/full/s2/model.onnx"},
            {"name": "lora-all", "seed": 1, "trainable_params": 1792, "adapter": adapters.join("affect-gate")},
            {"name": "lora-all", "seed": 2, "trainable_params": 1792, "adapter": adapters.join("affect-all")},
            {"name": "lora-gate", "seed": 1, "trainable_params": 1792, "adapter": adapters.join("affect-gate")}
        ]
    });
    std::fs::write(d.join("plan.json"), plan.to_string()).unwrap();
    // 14 seeded samples of the model's inputs, 2 per class.
    let mut rng = Rng::new(5);
    let n = 14;
    let mut noise = |len: usize| NpyData::F32((0..len).map(|_| rng.normal() as f32).collect());
    write_npz(
        &d.join("inputs.npz"),
        &[
            NpyArray {
                name: "face".into(),
                shape: vec![n, 1, 64, 64, 1],
                data: noise(n * 64 * 64),
            },
            NpyArray {
                name: "audio".into(),
                shape: vec![n, 1, 64, 201],
                data: noise(n * 64 * 201),
            },
            NpyArray {
                name: "labels".into(),
                shape: vec![n],
                data: NpyData::I64((0..n as i64).map(|i| i % 7).collect()),
            },
        ],
    )
    .unwrap();
    let script = |extra: &[&str]| {
        Command::new("python3")
            .arg(root.join("scripts/gate-locus"))
            .arg("--plan")
            .arg(d.join("plan.json"))
            .arg("--inputs")
            .arg(d.join("inputs.npz"))
            .arg("--convert")
            .arg(&convert)
            .args(extra)
            .output()
            .unwrap()
    };
    let table: PathBuf = d.join("gate-locus.md");
    let out = script(&["--out", table.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&table).unwrap();
    for section in [
        "## Adaptation",
        "## Transfer",
        "## Ablation",
        "## Weight shift",
        "| gate_proj |",
        // Weight-shift rows are module types, not raw initializer names.
        "| heads |",
        "| norms |",
        "| embeddings |",
        "/14",
    ] {
        assert!(text.contains(section), "missing {section}:\n{text}");
    }
    assert!(
        script(&["--check", table.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::write(&table, text.replacen("/14", "/15", 1)).unwrap();
    let out = script(&["--check", table.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
