//! A missing ONNX Runtime library is named in the error (feature `ort`).
//!
//! This is the file's only test, on purpose: cargo runs each test file as
//! its own process, so nothing has loaded ONNX Runtime before it. In a
//! process where another test already loaded the library, the loaded
//! environment would be reused and the missing path never looked at (see
//! `load_library` in `infer/src/backend/ort.rs`): the test could not fail.
//! Add other ONNX Runtime tests to `ort_backend.rs`, not here.
#![cfg(feature = "ort")]

use std::path::PathBuf;

use emogate_infer::backend::ort::{OrtBackend, OrtOptions};
use emogate_tests::repo_root as root;

#[test]
fn missing_library_is_named() {
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
        Ok(_) => panic!(
            "loaded a model with --ort-lib /nonexistent/libonnxruntime.so: \
             ONNX Runtime was already loaded in this process (another test in this file?)"
        ),
    };
    assert!(
        e.contains("ONNX Runtime not found") && e.contains("/nonexistent/libonnxruntime.so"),
        "{e}"
    );
}
