"""Ships Silero VAD (16 kHz) as an If-free ONNX model, with a speech fixture and its parity record.

    python3 -m venv /work/venv-vad
    /work/venv-vad/bin/pip install -r models/vad/requirements.txt
    /work/venv-vad/bin/python models/vad/make_silero_vad.py            # writes the model and the
                                                                       # reference, then checks
    /work/venv-vad/bin/python models/vad/make_silero_vad.py --new-wav  # also re-speaks the WAV
                                                                       # (needs espeak-ng)
    /work/venv-vad/bin/python models/vad/make_silero_vad.py --check    # re-derives, compares

Where the model comes from: the PyPI wheel `silero-vad` 6.2.3 (MIT, Silero Team), which ships
several ONNX exports of the same network. `silero_vad_op18_ifless.onnx` (sha256 pinned below)
holds both the 16 kHz and the 8 kHz networks behind one top-level `If` on the `sr` input, and
plain operators inside (its LSTM cell is unrolled into Gemm/Sigmoid/Tanh). tract runs no `If`
whose condition is a run-time input, so this script keeps the 16 kHz branch: the branch's nodes
become the graph, `sr` goes away, and only the initializers those nodes read are kept. Nothing
is recomputed or re-weighted: the operators and weights are the wheel's.

What it writes:
- `models/vad/LICENSE`: the wheel's LICENSE file (MIT, Silero Team), verbatim.
- `models/vad/silero_vad_16k.onnx`: inputs `input` [1, 576] (the 64 samples before the chunk,
  then the 512-sample chunk, 16 kHz, float in [-1, 1]) and `state` [2, 1, 128] (the LSTM's h
  and c, zeros at the start); outputs `output` [1, 1] (speech probability) and `stateN`
  [2, 1, 128] (the state for the next chunk).
- `tests/fixtures/vad/speech-silence-noise.wav` (only when missing, or with `--new-wav`):
  16 kHz mono 16-bit PCM: espeak-ng speaking a sentence (resampled from its 22.05 kHz by FFT
  truncation, trailing silence trimmed), then 1.5 s of digital silence, then 2 s of seeded white
  noise at RMS 0.05 (-26 dBFS). espeak-ng's output differs between its versions, so the WAV is
  the fixture: CI never runs espeak-ng, and `--check` leaves the WAV alone.
- `tests/fixtures/vad/reference.json`: the speech probability of every whole 512-sample chunk of
  that WAV as the ORIGINAL runtime path computes it: silero-vad's own `OnnxWrapper`
  (`load_silero_vad(onnx=True)`: the wheel's default `silero_vad.onnx`, with the `If`, on
  ONNX Runtime, one thread), fed chunk after chunk as a stream. Also the parity of the derived
  model (ONNX Runtime, fed as the engine feeds it) against that reference.

`--check` re-derives the model in memory and compares its sha256 with the committed file, and the
LICENSE with the wheel's, then
recomputes the reference from the committed WAV and compares it with the committed JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT_MODEL = ROOT / "models/vad/silero_vad_16k.onnx"
FIXTURES = ROOT / "tests/fixtures/vad"
OUT_WAV = FIXTURES / "speech-silence-noise.wav"
OUT_REFERENCE = FIXTURES / "reference.json"
OUT_LICENSE = ROOT / "models/vad/LICENSE"

WHEEL = "silero-vad==6.2.3"
SOURCE_NAME = "silero_vad_op18_ifless.onnx"
SOURCE_SHA256 = "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"
DEFAULT_NAME = "silero_vad.onnx"
DEFAULT_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"

RATE = 16000
CHUNK = 512
CONTEXT = 64
THRESHOLD = 0.5

TEXT = "The quick brown fox jumps over the lazy dog."
ESPEAK_ARGS = ["-v", "en-us", "-s", "175"]
SILENCE_S = 1.5
NOISE_S = 2.0
NOISE_RMS = 0.05
NOISE_SEED = 20261201


def package_file(name: str, sha256: str) -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        sys.exit(f"silero_vad is not installed: pip install {WHEEL}")
    path = Path(spec.origin).parent / "data" / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        sys.exit(f"{path}: sha256 {digest}, expected {sha256} ({WHEEL})")
    return path


def license_text() -> bytes:
    """The wheel's LICENSE, verbatim: MIT asks that it go with every copy."""
    from importlib.metadata import distribution

    text = distribution("silero-vad").read_text("licenses/LICENSE")
    if text is None or "MIT License" not in text:
        sys.exit(f"{WHEEL}: no MIT LICENSE in its metadata")
    return text.encode()


def derive(source: Path) -> bytes:
    """The 16 kHz branch of the wheel's If-free export, as a graph of its own."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    ifs = [n for n in graph.node if n.op_type == "If"]
    if len(ifs) != 1 or [o for o in ifs[0].output] != ["output", "stateN"]:
        sys.exit(f"{source}: expected one top-level If producing output and stateN")
    branch_if = ifs[0]
    # The condition is Equal(Gather(Reshape(sr)), 16000): find which branch is 16 kHz.
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    equal = next(n for n in graph.node if n.output[0] == branch_if.input[0])
    if equal.op_type != "Equal" or int(consts[equal.input[1]]) != RATE:
        sys.exit(f"{source}: the If's condition is not `sr == {RATE}`")
    then = next(a.g for a in branch_if.attribute if a.name == "then_branch")
    for node in then.node:
        if node.op_type in ("If", "Loop", "Scan"):
            sys.exit(f"{source}: the 16 kHz branch has a {node.op_type} node")
    rename = dict(zip([o.name for o in then.output], ["output", "stateN"]))
    nodes = [_copy_node(node, rename) for node in then.node]
    used = {i for n in nodes for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used]
    inputs = [i for i in graph.input if i.name in used]
    if [i.name for i in inputs] != ["input", "state"]:
        sys.exit(f"{source}: the 16 kHz branch reads {[i.name for i in inputs]}")
    new_graph = helper.make_graph(
        nodes,
        "silero_vad_16k",
        inputs,
        list(graph.output),
        initializer=initializers,
    )
    # The branch's value_info (shape hints for intermediate values) is left out: its symbolic
    # `batch` does not unify with the concrete [1, 576] input tract is given.
    derived = helper.make_model(
        new_graph,
        opset_imports=list(model.opset_import),
        producer_name="emogate models/vad/make_silero_vad.py",
        producer_version="1",
        doc_string=(
            f"Silero VAD 16 kHz (MIT, Silero Team): the then-branch (sr == 16000) of "
            f"{SOURCE_NAME} from the PyPI wheel {WHEEL}, sha256 {SOURCE_SHA256}."
        ),
    )
    derived.ir_version = model.ir_version
    onnx.checker.check_model(derived, full_check=True)
    return derived.SerializeToString(deterministic=True)


def _copy_node(node, rename: dict[str, str]):
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(node)
    del copy.output[:]
    copy.output.extend(rename.get(o, o) for o in node.output)
    return copy


def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    version = out.stdout.split("  Data at:")[0].strip()
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "espeak-ng"], capture_output=True, text=True
    )
    if dpkg.returncode == 0:
        version += f" (Debian package espeak-ng {dpkg.stdout.strip()})"
    return version


def resample_fft(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal by truncating its spectrum."""
    n_out = int(round(len(x) * rate_out / rate_in))
    spectrum = np.fft.rfft(x.astype(np.float64))
    keep = n_out // 2 + 1
    out = np.zeros(keep, dtype=np.complex128)
    k = min(keep, len(spectrum))
    out[:k] = spectrum[:k]
    return np.fft.irfft(out, n_out) * (n_out / len(x))


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    with wave.open(str(path)) as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: expected mono 16-bit PCM")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return w.getframerate(), data


def speak() -> tuple[np.ndarray, dict]:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", *ESPEAK_ARGS, "-w", str(path), TEXT], check=True)
        rate, pcm = read_wav(path)
    speech = resample_fft(pcm / 32768.0, rate, RATE)
    loud = np.nonzero(np.abs(speech) > 1e-3)[0]
    speech = speech[: loud[-1] + 1]
    silence = np.zeros(int(SILENCE_S * RATE))
    rng = np.random.default_rng(NOISE_SEED)
    noise = rng.standard_normal(int(NOISE_S * RATE)) * NOISE_RMS
    signal = np.concatenate([speech, silence, noise])
    pcm16 = np.clip(np.round(signal * 32768.0), -32768, 32767).astype("<i2")
    a, b = len(speech), len(speech) + len(silence)
    segments = {"speech": [0, a], "silence": [a, b], "noise": [b, len(signal)]}
    return pcm16, segments


def write_wav(path: Path, pcm16: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".wav.tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm16.tobytes())
    tmp.replace(path)


def reference_probabilities(samples: np.ndarray) -> list[float]:
    """silero-vad's own streaming path: OnnxWrapper on its default model, chunk after chunk."""
    import torch
    from silero_vad import load_silero_vad

    package_file(DEFAULT_NAME, DEFAULT_SHA256)
    model = load_silero_vad(onnx=True)
    model.reset_states()
    probs = []
    for start in range(0, len(samples) - CHUNK + 1, CHUNK):
        chunk = torch.from_numpy(samples[start : start + CHUNK].copy())
        probs.append(float(model(chunk, RATE).item()))
    return probs


def derived_probabilities(model_bytes: bytes, samples: np.ndarray) -> list[float]:
    """The derived model on ONNX Runtime, fed as the engine feeds it: context + chunk, state."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    probs = []
    for start in range(0, len(samples) - CHUNK + 1, CHUNK):
        chunk = samples[start : start + CHUNK]
        x = np.concatenate([context, chunk])[None, :]
        out, state = session.run(None, {"input": x, "state": state})
        context = chunk[-CONTEXT:]
        probs.append(float(out[0, 0]))
    return probs


def build_reference(model_bytes: bytes, segments: dict, espeak: str) -> dict:
    import onnxruntime
    import silero_vad
    import torch

    rate, pcm = read_wav(OUT_WAV)
    if rate != RATE:
        sys.exit(f"{OUT_WAV}: {rate} Hz, expected {RATE}")
    samples = (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    reference = reference_probabilities(samples)
    derived = derived_probabilities(model_bytes, samples)
    diff = max(abs(a - b) for a, b in zip(reference, derived))
    return {
        "about": "Silero VAD speech probability per whole 512-sample chunk of "
        "speech-silence-noise.wav, by silero-vad's OnnxWrapper (load_silero_vad(onnx=True)) "
        "on ONNX Runtime, streamed chunk after chunk from a zero state and zero context. "
        "Written by models/vad/make_silero_vad.py.",
        "wav": OUT_WAV.name,
        "wav_sha256": hashlib.sha256(OUT_WAV.read_bytes()).hexdigest(),
        "sample_rate": RATE,
        "chunk": CHUNK,
        "context": CONTEXT,
        "threshold": THRESHOLD,
        "segments": segments,
        "speech_source": {"tool": espeak, "args": ESPEAK_ARGS, "text": TEXT},
        "noise": {"kind": "white, numpy default_rng", "seed": NOISE_SEED, "rms": NOISE_RMS},
        "reference": {
            "package": WHEEL,
            "model": DEFAULT_NAME,
            "model_sha256": DEFAULT_SHA256,
            "runtime": f"onnxruntime {onnxruntime.__version__} (torch {torch.__version__} "
            f"for the wrapper's tensors, silero_vad {silero_vad.__version__})",
        },
        "parity": {
            "derived_model_sha256": hashlib.sha256(model_bytes).hexdigest(),
            "derived_on_onnxruntime_max_abs_diff": diff,
        },
        "probabilities": reference,
    }


def segments_of(old: dict | None) -> tuple[dict, str]:
    if old is None:
        sys.exit(f"{OUT_REFERENCE} is missing: run with --new-wav (needs espeak-ng)")
    return old["segments"], old["speech_source"]["tool"]


def encode(reference: dict) -> bytes:
    return (json.dumps(reference, indent=1) + "\n").encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="re-derive and compare, write nothing")
    mode.add_argument("--new-wav", action="store_true", help="re-speak the WAV with espeak-ng")
    args = parser.parse_args()

    model_bytes = derive(package_file(SOURCE_NAME, SOURCE_SHA256))
    old = json.loads(OUT_REFERENCE.read_text()) if OUT_REFERENCE.exists() else None
    if args.check:
        failures = []
        if not OUT_MODEL.exists() or OUT_MODEL.read_bytes() != model_bytes:
            got = hashlib.sha256(OUT_MODEL.read_bytes()).hexdigest() if OUT_MODEL.exists() else "missing"
            failures.append(
                f"{OUT_MODEL}: sha256 {got}, re-derived {hashlib.sha256(model_bytes).hexdigest()}"
            )
        if not OUT_LICENSE.exists() or OUT_LICENSE.read_bytes() != license_text():
            failures.append(f"{OUT_LICENSE}: differs from the wheel's LICENSE")
        segments, espeak = segments_of(old)
        if encode(build_reference(model_bytes, segments, espeak)) != OUT_REFERENCE.read_bytes():
            failures.append(f"{OUT_REFERENCE}: differs from the one recomputed from the WAV")
        if failures:
            sys.exit("\n".join(failures))
        print(f"ok: {OUT_MODEL.name} sha256 {hashlib.sha256(model_bytes).hexdigest()}")
        print(f"ok: {OUT_REFERENCE.name} recomputed from {OUT_WAV.name}")
        return

    tmp_model = OUT_MODEL.with_suffix(".onnx.tmp")
    tmp_model.write_bytes(model_bytes)
    tmp_model.replace(OUT_MODEL)
    OUT_LICENSE.write_bytes(license_text())
    if args.new_wav or not OUT_WAV.exists():
        pcm16, segments = speak()
        write_wav(OUT_WAV, pcm16)
        espeak = espeak_version()
    else:
        segments, espeak = segments_of(old)
    reference = build_reference(model_bytes, segments, espeak)
    tmp = OUT_REFERENCE.with_suffix(".json.tmp")
    tmp.write_bytes(encode(reference))
    tmp.replace(OUT_REFERENCE)

    probs = np.array(reference["probabilities"])
    for name, (a, b) in segments.items():
        # The chunks wholly inside the segment.
        chunks = probs[-(-a // CHUNK) : b // CHUNK]
        print(
            f"{name:8} samples {a}..{b}: {len(chunks)} chunks, "
            f"fraction >= {THRESHOLD}: {np.mean(chunks >= THRESHOLD):.3f}, "
            f"mean p {chunks.mean():.3f}"
        )
    print(f"derived model: {len(model_bytes)} bytes, sha256 {hashlib.sha256(model_bytes).hexdigest()}")
    print(f"derived on ONNX Runtime vs OnnxWrapper: max |dp| {reference['parity']['derived_on_onnxruntime_max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()
