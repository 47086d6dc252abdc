//! Every input that ever failed a fuzz target (`tests/fuzz/regressions/TARGET/`)
//! and the committed seed corpus (`tests/fuzz/seeds/TARGET/`), replayed
//! through the same target functions and the same rule as the fuzzer
//! (`tests/fuzz/src/{rule,targets,graph}.rs`, included here), without the
//! fuzzer: no panic, each input within the time bound, memory within the
//! bounded allocator's limit (a refused allocation aborts this binary),
//! errors naming the file. See docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../fuzz/src/graph.rs"]
mod graph;
#[path = "../fuzz/src/rule.rs"]
mod rule;
#[path = "../fuzz/src/targets.rs"]
mod targets;

#[global_allocator]
static ALLOCATOR: rule::Bounded = rule::Bounded;

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing a corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let mut replayed = 0;
    for &(name, target) in targets::TARGETS {
        for input in inputs(&root.join(kind).join(name)) {
            let data = std::fs::read(&input).expect("reading a corpus input");
            let started = Instant::now();
            rule::bounded(data.len(), || target(scratch.path(), &data));
            let took = started.elapsed();
            assert!(
                took <= rule::TIME_BOUND,
                "{name}: {} took {took:?}, over the bound of {:?}",
                input.display(),
                rule::TIME_BOUND
            );
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn every_input_that_ever_failed_a_fuzz_target_now_passes() {
    replay("regressions");
}

#[test]
fn the_seed_corpus_passes_every_target() {
    assert!(replay("seeds") > 0, "no seeds found under tests/fuzz/seeds");
}
