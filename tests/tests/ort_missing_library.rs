//! A missing ONNX Runtime library is named in the error (feature `ort`).
//!
//! The check runs in a child process of its own: the test re-executes this
//! test binary with [`CHILD_ENV`] set and only this test selected. In a
//! process where another test already loaded the library, the loaded
//! environment would be reused and the missing path never looked at (see
//! `load_library` in `infer/src/backend/ort.rs`): the test could pass
//! without checking anything. The child also refuses to start its check
//! when an ONNX Runtime library is already mapped into it, so the test
//! cannot pass vacuously even if someone adds tests here.
#![cfg(feature = "ort")]

use std::path::PathBuf;
use std::process::Command;

use emogate_infer::backend::ort::{OrtBackend, OrtOptions};
use emogate_tests::repo_root as root;

/// Set in the child that runs the check.
const CHILD_ENV: &str = "EMOGATE_ORT_MISSING_LIBRARY_CHILD";
/// The child prints this after its assertions passed.
const PASSED: &str = "ort-missing-library-check: passed";

/// The ONNX Runtime libraries mapped into this process (from /proc/self/maps).
fn loaded_onnxruntime() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps is readable");
    let mut libs: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("libonnxruntime"))
        .map(str::to_string)
        .collect();
    libs.dedup();
    libs
}

fn check_in_this_process() {
    let already = loaded_onnxruntime();
    assert!(
        already.is_empty(),
        "ONNX Runtime is already loaded in this process ({already:?}): the missing path would never be looked at"
    );
    let options = OrtOptions {
        library: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
        ..OrtOptions::default()
    };
    let e = match OrtBackend::load(
        &root().join("models/reference/emogate-ref.onnx"),
        Vec::new(),
        &options,
    ) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded a model with --ort-lib /nonexistent/libonnxruntime.so"),
    };
    assert!(
        e.contains("ONNX Runtime not found") && e.contains("/nonexistent/libonnxruntime.so"),
        "{e}"
    );
    println!("{PASSED}");
}

#[test]
fn missing_library_is_named() {
    if std::env::var_os(CHILD_ENV).is_some() {
        check_in_this_process();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(&exe)
        .args([
            "--exact",
            "missing_library_is_named",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("re-running the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(PASSED),
        "the child check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}
