//! Fault injection on `emogate-convert`'s outputs, with the real binary:
//!
//! * kill -9 in the middle of `merge` and of `quantize`, at several
//!   points (as soon as a temp file appears, while the side file is being
//!   written, and at fractions of a full run's time): the output's name
//!   holds the previous output (model and side file, byte for byte) or
//!   nothing, never a partial output or a model paired with another run's
//!   side file; the killed runs' temp files are removed by the next run;
//! * a full disk (a 4 MB tmpfs when the test may mount one; always
//!   `RLIMIT_FSIZE` with `SIGXFSZ` ignored, which fails writes with EFBIG
//!   like a quota): a clear error naming the output, nothing left behind,
//!   the inputs untouched;
//! * a read-only output folder (a read-only tmpfs as root, where file
//!   modes do not stop writes; `chmod 0555` otherwise);
//! * an output on another filesystem than `$TMPDIR`: the temp file is made
//!   beside the output, so the final rename works.
//!
//! The model is a synthetic decoder (`emogate_tools::synth`, about 20 MB of
//! random weights in an external-data side file): large enough that a
//! write takes a moment, small enough that the file runs in seconds.
//! Tests that need to mount print why they skip when they cannot, and fail
//! instead under `EMOGATE_REQUIRE_TMPFS=1` (set by .ci/run, which runs as root).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use emogate_models::onnx::OnnxModel;
use emogate_models::staging;
use emogate_tools::synth::{DecoderSpec, write_decoder, write_gate_proj_adapter};

const BIN: &str = env!("CARGO_BIN_EXE_emogate-convert");

#[path = "../../tests/support/runner.rs"]
mod runner;

/// About 5 M parameters (20 MB of f32), most of them in the MLPs.
fn spec() -> DecoderSpec {
    DecoderSpec {
        layers: 4,
        hidden: 256,
        intermediate: 1024,
        heads: 4,
        kv_heads: 2,
        vocab: 4096,
        labels: 7,
        seq_len: 8,
    }
}

/// A synthetic base model and two different adapters in a temp dir, and
/// an empty `out/` folder.
struct Case {
    tmp: tempfile::TempDir,
    model: PathBuf,
    adapters: [PathBuf; 2],
}

impl Case {
    fn new() -> Case {
        let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let model = write_decoder(&tmp.path().join("base"), &spec(), 7, &mut |_| {}).unwrap();
        let adapters = [11, 12].map(|seed| {
            let dir = tmp.path().join(format!("adapter-{seed}"));
            write_gate_proj_adapter(&dir, &spec(), 8, 16.0, seed).unwrap();
            dir
        });
        std::fs::create_dir(tmp.path().join("out")).unwrap();
        Case {
            tmp,
            model,
            adapters,
        }
    }

    fn out_dir(&self) -> PathBuf {
        self.tmp.path().join("out")
    }

    /// Every input file (the base model's and the adapters' folders).
    fn inputs(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut all = files(self.model.parent().unwrap());
        for a in &self.adapters {
            all.extend(files(a));
        }
        all
    }
}

/// `merge` of `adapter` into `model`, written to `out`, without fsync.
fn merge(model: &Path, adapter: &Path, out: &Path) -> Command {
    let mut cmd = runner::command(BIN);
    cmd.arg("merge")
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .arg("--out")
        .arg(out)
        .arg("--no-sync");
    cmd
}

/// `quantize` of `model` to `out` (`kind`: `--int8`, `--fp16`, ...).
fn quantize(model: &Path, out: &Path, kind: &[&str]) -> Command {
    let mut cmd = runner::command(BIN);
    cmd.arg("quantize")
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(kind)
        .arg("--no-sync");
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("emogate-convert starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The regular files directly in `dir`, by path, with their contents.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn is_ours(name: &str) -> bool {
    name.ends_with(staging::SUFFIX)
}

/// The outputs in `dir`, our temp files left out.
fn outputs(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut all = files(dir);
    all.retain(|p, _| !is_ours(&p.file_name().unwrap().to_string_lossy()));
    all
}

/// When to send SIGKILL.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as one of our temp files exists.
    FirstTemp,
    /// Once our temp files hold this many bytes on disk (allocated blocks,
    /// not the length: the side file is sized before it is filled).
    TempBytes(u64),
    /// After this fraction of a full run's wall time.
    Fraction(f64),
}

/// What a kill found.
struct Kill {
    /// The process was still running when it was killed.
    mid_run: bool,
    /// Our temp files at that moment.
    temps: Vec<String>,
}

/// Bytes on disk of our temp files in `dir`, but those named in `stale`.
fn temp_bytes(dir: &Path, stale: &[String]) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    is_ours(&name) && !stale.contains(&name)
                })
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Starts `cmd`, sends SIGKILL at `at`, and reports what it hit: the temp
/// files it had made (those of earlier killed runs are left out, of the
/// trigger too: the run removes them before writing).
fn kill_at(mut cmd: Command, dir: &Path, at: KillAt, full_run: Duration) -> Kill {
    let stale: Vec<String> = names(dir).into_iter().filter(|n| is_ours(n)).collect();
    let new_temps = || -> Vec<String> {
        names(dir)
            .into_iter()
            .filter(|n| is_ours(n) && !stale.contains(n))
            .collect()
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let deadline = started + full_run * 20 + Duration::from_secs(10);
    loop {
        if child.try_wait().unwrap().is_some() {
            return Kill {
                mid_run: false,
                temps: Vec::new(),
            };
        }
        let due = match at {
            KillAt::FirstTemp => !new_temps().is_empty(),
            KillAt::TempBytes(n) => temp_bytes(dir, &stale) >= n,
            KillAt::Fraction(f) => started.elapsed() >= full_run.mul_f64(f),
        };
        if due || Instant::now() > deadline {
            let temps = new_temps();
            // SIGKILL: nothing of ours runs after it, no destructor, no handler.
            child.kill().unwrap();
            let status = child.wait().unwrap();
            return Kill {
                // Killed, not exited on its own just before.
                mid_run: status.code().is_none(),
                temps,
            };
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Kills `make()` at several points while it replaces the output that
/// `previous` wrote; then checks that a complete run cleans up.
fn killed_runs_leave_the_previous_output(
    what: &str,
    out: &Path,
    previous: impl Fn(&Path) -> Command,
    make: impl Fn(&Path) -> Command,
) {
    let dir = out.parent().unwrap();
    let o = run(previous(out));
    assert!(o.status.success(), "{what}: first run: {}", stderr(&o));
    let before = outputs(dir);
    assert!(
        before.len() == 2,
        "{what}: expected the model and its side file: {:?}",
        names(dir)
    );
    // A full run's time (written elsewhere), to spread the timed kills over.
    let scratch = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    let t0 = Instant::now();
    let o = run(make(&scratch.path().join(out.file_name().unwrap())));
    let full_run = t0.elapsed();
    assert!(o.status.success(), "{what}: timed run: {}", stderr(&o));
    // What a complete run writes, by file name (runs are deterministic).
    let complete: BTreeMap<PathBuf, Vec<u8>> = outputs(scratch.path())
        .into_iter()
        .map(|(p, b)| (dir.join(p.file_name().unwrap()), b))
        .collect();
    let after_bytes: u64 = complete.values().map(|b| b.len() as u64).sum();

    let points = [
        KillAt::FirstTemp,
        KillAt::TempBytes(after_bytes / 4),
        KillAt::TempBytes(after_bytes / 2),
        KillAt::TempBytes(after_bytes * 9 / 10),
        KillAt::Fraction(0.3),
        KillAt::Fraction(0.6),
        KillAt::Fraction(0.9),
    ];
    let mut hits = 0;
    for at in points {
        // A polled point can be overtaken on a loaded machine (the run ends
        // between our look and the kill): try it again, up to 3 times.
        let attempts = if matches!(at, KillAt::Fraction(_)) {
            1
        } else {
            3
        };
        for _ in 0..attempts {
            let kill = kill_at(make(out), dir, at, full_run);
            let now = outputs(dir);
            // The previous model and side file, no model at all (the new side
            // file was being renamed into place), or the complete new pair (the
            // run finished its renames between our look and the kill): never a
            // partial file or a mixed pair.
            assert!(
                now == before || now == complete || !now.contains_key(out),
                "{what}: killed at {at:?} (temps {:?}): the output changed: {:?}",
                kill.temps,
                names(dir)
            );
            eprintln!(
                "{what}: kill at {at:?} of a {:.0} ms run: mid-run {}, temp files {:?}",
                full_run.as_secs_f64() * 1e3,
                kill.mid_run,
                kill.temps
            );
            if kill.mid_run && !kill.temps.is_empty() {
                hits += 1;
                break;
            }
        }
    }
    // Timed kills can miss on a loaded machine; the polled ones rarely do.
    assert!(
        hits >= 3,
        "{what}: only {hits} of {} kill points landed while a temp file was being written",
        points.len()
    );
    // The last kill must leave temp files for the next run to remove (a
    // run that completed above already removed the earlier ones).
    let last = kill_at(make(out), dir, KillAt::TempBytes(after_bytes / 2), full_run);
    assert!(last.mid_run, "{what}: the run ended before the last kill");
    let stale: Vec<_> = names(dir).into_iter().filter(|n| is_ours(n)).collect();
    assert!(
        !stale.is_empty(),
        "{what}: the killed runs left no temp file"
    );

    // The next run replaces the output and removes the dead runs' temp files.
    let o = run(make(out));
    assert!(
        o.status.success(),
        "{what}: run after the kills: {}",
        stderr(&o)
    );
    let left: Vec<_> = names(dir).into_iter().filter(|n| is_ours(n)).collect();
    assert!(left.is_empty(), "{what}: stale temp files remain: {left:?}");
    let now = outputs(dir);
    assert_eq!(now.len(), 2, "{what}: {:?}", names(dir));
    assert!(
        now == complete,
        "{what}: the output is not the complete new one"
    );
    OnnxModel::load(out).unwrap_or_else(|e| panic!("{what}: the new output: {e}"));
}

#[test]
fn kill_9_during_merge_leaves_the_previous_output() {
    let case = Case::new();
    let inputs = case.inputs();
    let out = case.out_dir().join("merged.onnx");
    killed_runs_leave_the_previous_output(
        "merge",
        &out,
        |out| merge(&case.model, &case.adapters[0], out),
        |out| merge(&case.model, &case.adapters[1], out),
    );
    assert!(case.inputs() == inputs, "an input changed");
}

#[test]
fn kill_9_during_quantize_leaves_the_previous_output() {
    let case = Case::new();
    let inputs = case.inputs();
    let out = case.out_dir().join("quantized.onnx");
    killed_runs_leave_the_previous_output(
        "quantize",
        &out,
        |out| quantize(&case.model, out, &["--fp16"]),
        // absmax scales: MSE's scale search takes seconds on this model.
        |out| quantize(&case.model, out, &["--int8", "--int8-scale", "absmax"]),
    );
    assert!(case.inputs() == inputs, "an input changed");
}

/// `cmd` with its file size limited to `bytes` and `SIGXFSZ` ignored, so
/// that a write past the limit fails with EFBIG ("File too large").
fn with_file_size_limit(mut cmd: Command, bytes: u64) -> Command {
    // SAFETY: only async-signal-safe calls (setrlimit, signal) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // An ignored signal stays ignored across exec.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd
}

/// A failed run: exit status 1, `needles` in its error, nothing in `dir`,
/// inputs unchanged.
fn assert_clean_failure(
    what: &str,
    o: &Output,
    needles: &[&str],
    dir: &Path,
    case: &Case,
    inputs: &BTreeMap<PathBuf, Vec<u8>>,
) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{what}: {e}");
    for n in needles {
        assert!(e.contains(n), "{what}: expected {n:?} in: {e}");
    }
    assert!(!e.contains("panicked"), "{what}: {e}");
    assert!(
        names(dir).is_empty(),
        "{what}: left behind: {:?}",
        names(dir)
    );
    assert!(case.inputs() == *inputs, "{what}: an input changed");
}

#[test]
fn a_file_size_limit_fails_cleanly() {
    let case = Case::new();
    let inputs = case.inputs();
    let dir = case.out_dir();
    let out = dir.join("m.onnx");
    // 4 MB: the side file (about 20 MB merged, 10 MB fp16) passes it.
    for (what, cmd) in [
        ("merge", merge(&case.model, &case.adapters[0], &out)),
        ("quantize", quantize(&case.model, &out, &["--fp16"])),
    ] {
        let o = run(with_file_size_limit(cmd, 4 << 20));
        assert_clean_failure(
            what,
            &o,
            &["m.onnx", "File too large"],
            &dir,
            &case,
            &inputs,
        );
    }
}

/// Says why a test skips; under `EMOGATE_REQUIRE_TMPFS` (CI sets it: it
/// runs as root) a skip is a failure, since libtest hides a passing test's
/// output and the skip would go unseen.
fn skip(test: &str, why: &str) {
    if std::env::var_os("EMOGATE_REQUIRE_TMPFS").is_some() {
        panic!("{test}: {why}; EMOGATE_REQUIRE_TMPFS is set, so this is a failure");
    }
    eprintln!("SKIPPED {test}: {why}; set EMOGATE_REQUIRE_TMPFS=1 to make this a failure");
}

/// A tmpfs mounted for a test, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Mounts a tmpfs with `options` on `dir`, or says why it cannot.
fn tmpfs(dir: &Path, options: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(dir).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root: cannot mount a tmpfs".into());
    }
    match Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(dir)
        .output()
    {
        Ok(o) if o.status.success() => Ok(Mount(dir.to_path_buf())),
        Ok(o) => Err(format!(
            "mount -t tmpfs -o {options} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run mount: {e}")),
    }
}

#[test]
fn a_full_disk_fails_cleanly() {
    let case = Case::new();
    let dir = case.tmp.path().join("small-disk");
    let _mount = match tmpfs(&dir, "size=4m") {
        Ok(m) => m,
        Err(why) => {
            skip("a_full_disk_fails_cleanly", &why);
            return;
        }
    };
    let inputs = case.inputs();
    let out = dir.join("m.onnx");
    for (what, cmd) in [
        ("merge", merge(&case.model, &case.adapters[0], &out)),
        ("quantize", quantize(&case.model, &out, &["--fp16"])),
    ] {
        let o = run(cmd);
        assert_clean_failure(
            what,
            &o,
            &["m.onnx", "No space left on device"],
            &dir,
            &case,
            &inputs,
        );
    }
}

#[test]
fn a_read_only_output_folder_fails_cleanly() {
    let case = Case::new();
    let dir = case.tmp.path().join("read-only");
    // As root, file modes do not stop writes: mount a read-only tmpfs.
    let (_mount, needle) = if unsafe { libc::geteuid() } == 0 {
        match tmpfs(&dir, "ro,size=1m") {
            Ok(m) => (Some(m), "Read-only file system"),
            Err(why) => {
                skip("a_read_only_output_folder_fails_cleanly", &why);
                return;
            }
        }
    } else {
        std::fs::create_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        (None, "Permission denied")
    };
    let inputs = case.inputs();
    let out = dir.join("m.onnx");
    for (what, cmd) in [
        ("merge", merge(&case.model, &case.adapters[0], &out)),
        ("quantize", quantize(&case.model, &out, &["--fp16"])),
    ] {
        let o = run(cmd);
        assert_clean_failure(what, &o, &["read-only", needle], &dir, &case, &inputs);
    }
}

#[test]
fn an_output_on_another_filesystem_than_tmpdir_is_renamed_into_place() {
    let case = Case::new();
    let tmpdir = case.tmp.path().join("tmpdir");
    std::fs::create_dir(&tmpdir).unwrap();
    let dir = case.tmp.path().join("other-fs");
    let _mount = match tmpfs(&dir, "size=128m") {
        Ok(m) => m,
        Err(why) => {
            skip(
                "an_output_on_another_filesystem_than_tmpdir_is_renamed_into_place",
                &why,
            );
            return;
        }
    };
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(
        dev(&tmpdir),
        dev(&dir),
        "the tmpfs is not another filesystem"
    );
    let inputs = case.inputs();
    for (what, mut cmd, out) in [
        (
            "merge",
            merge(&case.model, &case.adapters[0], &dir.join("merged.onnx")),
            dir.join("merged.onnx"),
        ),
        (
            "quantize",
            quantize(&case.model, &dir.join("fp16.onnx"), &["--fp16"]),
            dir.join("fp16.onnx"),
        ),
    ] {
        cmd.env("TMPDIR", &tmpdir);
        let o = run(cmd);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        OnnxModel::load(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(names(&tmpdir).is_empty(), "{what}: {:?}", names(&tmpdir));
    }
    let left: Vec<_> = names(&dir).into_iter().filter(|n| is_ours(n)).collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(names(&dir).len(), 4, "{:?}", names(&dir));
    assert!(case.inputs() == inputs, "an input changed");
}
