#!/usr/bin/env python3
"""The reference experiment (issue #11): a base pretrained without emotion, then affect tuning.

    PY=/work/venv-gatetrain/bin/python            # pip install -r models/reference/experiment/requirements.txt
    $PY models/reference/experiment/grid.py data   # SynthAffect training features -> --cache (not committed)
    $PY models/reference/experiment/grid.py base   # the base: non-affective targets only
    $PY models/reference/experiment/grid.py tune --name lora-gate --seed 1
    $PY models/reference/experiment/grid.py all    # data, base, then every run, 2 at a time; writes plan.json

- **Data.** SynthAffect (`synth.py`) faces and voices through the runtime's preprocessing in numpy
  (`prep.py`: the engine's area resize and log-mel, audio through 16-bit PCM as a WAV carries it).
  The base set and the tuning set come from different seeds; the held-out evaluation set is
  `make_dataset.py`'s (another seed again), never seen here.
- **Base.** `model.py`'s architecture trained to predict only non-affective latent factors
  (face: position, size, background, skin tone, exposure gain/offset, sensor noise; voice: speaker
  pitch offset, recording gain, room noise level, vowel shares) with a training-only linear head on
  the pooled features. Emotion labels are drawn uniformly, so the base sees every expression but is
  never told which. Its emotion and valence/arousal heads stay at their random init (seed 7001).
- **Tuning.** From the base, new emotion and valence/arousal heads (re-initialized per seed) in
  every run, trained with the original train.py's loss (NLL + VA MSE) and modality dropout (15% face
  zeroed, 15% audio zeroed). Runs: RUNS below. LoRA runs are PEFT adapters
  (`modules_to_save=["emotion_head", "va_head"]`); full fine-tuning and heads-only are stored as
  ONNX exports (PEFT 0.21 raises NoMatchingPeftModuleError for a LoRA config that targets no
  module, so heads-only cannot be a PEFT adapter).
- Every process uses one thread (`torch.set_num_threads(1)`).

Float sums in PyTorch's CPU kernels depend on the machine, so the committed artifacts, not a
rerun, are the reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent  # models/reference/experiment
REF = HERE.parent
sys.dont_write_bytecode = True
sys.path.insert(0, str(REF))
import prep  # noqa: E402
import synth  # noqa: E402

BASE_DIR = REF / "base"
BASE_ONNX = BASE_DIR / "emogate-base.onnx"
BASE_WEIGHTS = BASE_DIR / "emogate-base.safetensors"
RUNS_DIR = HERE / "runs"
PLAN = HERE / "plan.json"
DEFAULT_CACHE = Path(os.environ.get("EMOGATE_GRID_CACHE", "/tmp/emogate-grid-cache"))

INIT_SEED = 7001  # the base's random init (as train.py's)
BASE_DATA_SEED = 9101
TUNE_DATA_SEED = 9102
BASE_SAMPLES = 3150
TUNE_SAMPLES = 2100
SEEDS = (1, 2, 3)
HEADS = ["emotion_head", "va_head"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
RANK = 6  # every LoRA run, alpha = 2 r (scale 2)

# name -> LoRA target modules (None: full fine-tuning; []: heads only) and rank/alpha overrides.
# lora-attn-matched: q/k/v at r 3 and o at r 2 give 2 x (3 x 3 + 2) x 192 = 4,224 LoRA parameters,
# exactly lora-gate's 2 x 6 x (96 + 256) = 4,224.
RUNS: dict[str, dict] = {
    "full": {"targets": None},
    "lora-all": {"targets": ATTN + MLP},
    "lora-gate": {"targets": ["gate_proj"]},
    "lora-up": {"targets": ["up_proj"]},
    "lora-down": {"targets": ["down_proj"]},
    "lora-attn": {"targets": ATTN},
    "lora-qv": {"targets": ["q_proj", "v_proj"]},
    "lora-attn-matched": {"targets": ATTN, "r": 3, "rank_pattern": {"o_proj": 2}, "alpha_pattern": {"o_proj": 4}},
    "heads": {"targets": []},  # stored as ONNX: PEFT cannot make an adapter of modules_to_save alone
}

FACE_FACTORS = ["cx", "cy", "scale", "background", "skin", "gain", "bias", "noise"]
VOICE_FACTORS = ["speaker", "gain_db", "noise_log", "vowel0", "vowel1", "vowel2", "vowel3", "vowel4"]


# ----------------------------------------------------------------------------------------- data
def _make_chunk(args: tuple[int, int, np.ndarray]) -> dict[str, np.ndarray]:
    seed, chunk, labels = args
    rng = np.random.default_rng([seed, chunk])
    n = len(labels)
    out = {"face": np.empty((n, 64, 64, 1), np.float32), "audio": np.empty((n, 64, 201), np.float32),
           "face_factors": np.empty((n, len(FACE_FACTORS)), np.float32),
           "voice_factors": np.empty((n, len(VOICE_FACTORS)), np.float32)}
    for i, c in enumerate(labels):
        name = synth.LABELS[c]
        img, ff = synth.random_face_factors(name, rng)
        y, vf = synth.random_voice_factors(name, rng)
        out["face"][i] = prep.face_input(img)
        out["audio"][i] = prep.audio_input(y)
        out["face_factors"][i] = [ff[k] for k in FACE_FACTORS]
        out["voice_factors"][i] = [vf[k] for k in VOICE_FACTORS]
    return out


def make_set(n: int, seed: int, workers: int) -> dict[str, np.ndarray]:
    import multiprocessing

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(synth.LABELS)  # uniform labels
    rng.shuffle(labels)
    chunks = [(seed, i, labels[i * 150:(i + 1) * 150]) for i in range((n + 149) // 150)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        parts = pool.map(_make_chunk, chunks)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    data["label"] = labels.astype(np.int64)
    data["va"] = np.array([synth.VALENCE_AROUSAL[synth.LABELS[c]] for c in labels], np.float32)
    return data


def cached_set(cache: Path, name: str, n: int, seed: int, workers: int) -> dict[str, np.ndarray]:
    path = cache / f"{name}-{seed}-{n}.npz"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        data = make_set(n, seed, workers)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **data)
        os.replace(tmp, path)
        print(f"{name}: {n} samples (seed {seed}) in {time.time() - t0:.0f} s -> {path}", flush=True)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------- training
def _torch():
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return torch


def drop_modalities(torch, face, audio, g, p: float = 0.15):
    """train.py's modality dropout: zero the face for a share p of the batch and the audio for
    another p (never both). Returns the masks too (1 where the modality is present)."""
    r = torch.rand(face.shape[0], generator=g)
    has_face = (r >= p).float()
    has_audio = ((r < p) | (r >= 2 * p)).float()
    return face * has_face[:, None, None, None], audio * has_audio[:, None, None], has_face, has_audio


def pooled(model, face, audio):
    """EmogateRef's features before the heads (the forward pass up to the token mean)."""
    f = model.face_stem(face) + model.modality_embed[0]
    a = model.audio_stem(audio) + model.modality_embed[1]
    x = __import__("torch").cat([f, a], dim=1) + model.pos_embed
    for blk in model.blocks:
        x = blk(x)
    return model.norm(x).mean(dim=1)


def train_base(cache: Path, workers: int, epochs: int, lr: float) -> dict:
    torch = _torch()
    import torch.nn.functional as F
    from model import build
    from safetensors.torch import save_file

    data = cached_set(cache, "base", BASE_SAMPLES, BASE_DATA_SEED, workers)
    torch.manual_seed(INIT_SEED)
    model = build(INIT_SEED)
    head_init = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in HEADS}
    ff, vf = data["face_factors"], data["voice_factors"]
    stats = {"face_mean": ff.mean(0), "face_std": ff.std(0) + 1e-6, "voice_mean": vf.mean(0), "voice_std": vf.std(0) + 1e-6}
    face_t = torch.from_numpy((ff - stats["face_mean"]) / stats["face_std"])
    voice_t = torch.from_numpy((vf - stats["voice_mean"]) / stats["voice_std"])
    aux = torch.nn.Linear(model.cfg.dim, len(FACE_FACTORS) + len(VOICE_FACTORS))  # training only
    params = [p for n, p in model.named_parameters() if n.split(".")[0] not in HEADS] + list(aux.parameters())
    for n, p in model.named_parameters():
        p.requires_grad_(n.split(".")[0] not in HEADS)
    n, batch = len(data["label"]), 64
    steps = epochs * (n // batch)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(BASE_DATA_SEED)
    face, audio = torch.from_numpy(data["face"]), torch.from_numpy(data["audio"])
    nf = len(FACE_FACTORS)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        t0, total = time.time(), 0.0
        for b in range(n // batch):
            idx = order[b * batch:(b + 1) * batch]
            f, a, hf, ha = drop_modalities(torch, face[idx], audio[idx], g)
            out = aux(pooled(model, f, a))
            lf = ((out[:, :nf] - face_t[idx]) ** 2).mean(1) * hf
            lv = ((out[:, nf:] - voice_t[idx]) ** 2).mean(1) * ha
            loss = (lf + lv).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item()
        print(f"base epoch {epoch + 1}/{epochs}: factor MSE (standardized) {total / (n // batch):.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    sd = model.state_dict()
    for k, v in head_init.items():  # the heads were frozen: still the random init
        assert torch.equal(sd[k], v), k
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(BASE_WEIGHTS),
              metadata={"data_seed": str(BASE_DATA_SEED), "samples": str(n), "epochs": str(epochs),
                        "targets": ",".join(FACE_FACTORS + VOICE_FACTORS)})
    # How well the factors are predicted (R^2 on the training set, a sanity check only).
    with torch.no_grad():
        out = aux(pooled(model, face, audio)).numpy()
    tgt = np.concatenate([face_t.numpy(), voice_t.numpy()], 1)
    r2 = 1.0 - ((out - tgt) ** 2).mean(0) / tgt.var(0)
    return {"r2": dict(zip(FACE_FACTORS + VOICE_FACTORS, [round(float(x), 3) for x in r2]))}


def load_base():
    torch = _torch()
    from model import EmogateRef, RefConfig
    from safetensors.torch import load_file

    model = EmogateRef(RefConfig())
    model.load_state_dict(load_file(str(BASE_WEIGHTS)))
    return model.eval()


def new_heads(torch, model, seed: int) -> None:
    """Fresh emotion and VA heads (the init.py scales), seeded per run seed."""
    g = torch.Generator().manual_seed(8000 + seed)
    with torch.no_grad():
        for head, gain in (("emotion_head", 2.0), ("va_head", 1.0)):
            lin = getattr(model, head)
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * gain / math.sqrt(lin.in_features))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)


def lora_config(spec: dict):
    from peft import LoraConfig

    r = spec.get("r", RANK)
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=spec["targets"], modules_to_save=list(HEADS),
                      lora_dropout=0.0, bias="none", rank_pattern=spec.get("rank_pattern", {}),
                      alpha_pattern=spec.get("alpha_pattern", {}))


def tune(name: str, seed: int, cache: Path, workers: int, epochs: int, lr: float | None) -> dict:
    torch = _torch()
    import torch.nn.functional as F

    spec = RUNS[name]
    data = cached_set(cache, "tune", TUNE_SAMPLES, TUNE_DATA_SEED, workers)
    model = load_base()
    torch.manual_seed(seed)
    new_heads(torch, model, seed)
    if spec["targets"] is None:  # full fine-tuning
        net = model
        for p in net.parameters():
            p.requires_grad_(True)
        lr = lr or 1e-3
    elif not spec["targets"]:  # heads only: PEFT 0.21 refuses a config that adapts no module
        net = model
        for n_, p in net.named_parameters():
            p.requires_grad_(n_.split(".")[0] in HEADS)
        lr = lr or 5e-3
    else:
        from peft import get_peft_model

        net = get_peft_model(model, lora_config(spec))
        lr = lr or 5e-3
    params = [p for p in net.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    n, batch = len(data["label"]), 64
    steps = epochs * (n // batch)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01 if spec["targets"] is None else 0.0)
    print(f"{name} s{seed}: {trainable} trainable parameters, peak LR {lr}", flush=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(TUNE_DATA_SEED * 10 + seed)
    face, audio = torch.from_numpy(data["face"]), torch.from_numpy(data["audio"])
    labels, va = torch.from_numpy(data["label"]), torch.from_numpy(data["va"])
    t_start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=g)
        total, correct = 0.0, 0
        for b in range(n // batch):
            idx = order[b * batch:(b + 1) * batch]
            f, a, _, _ = drop_modalities(torch, face[idx], audio[idx], g)
            probs, va_hat = net(f, a)
            loss = F.nll_loss(torch.log(probs + 1e-9), labels[idx]) + F.mse_loss(va_hat, va[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            total += loss.item()
            correct += int((probs.argmax(-1) == labels[idx]).sum())
        print(f"{name} s{seed} epoch {epoch + 1}/{epochs}: loss {total / (n // batch):.3f}, "
              f"train top-1 {correct / ((n // batch) * batch):.3f}", flush=True)
    net.eval()
    out = RUNS_DIR / name / f"s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    entry = {"name": name, "seed": seed, "trainable_params": trainable}
    if not spec["targets"]:  # full fine-tuning and heads only: an ONNX export
        from export import export_onnx

        export_onnx(model, out / "model.onnx")
        entry["model"] = f"runs/{name}/s{seed}/model.onnx"
    else:
        net.save_pretrained(str(out))
        readme = out / "README.md"  # PEFT's model-card template: not ours
        if readme.exists():
            readme.unlink()
        entry["adapter"] = f"runs/{name}/s{seed}"
    entry["train_seconds"] = round(time.time() - t_start, 1)
    entry["lr"] = lr
    entry["epochs"] = epochs
    (out / "run.json").write_text(json.dumps(entry, indent=1) + "\n")
    return entry


# ------------------------------------------------------------------------------------------ all
def export_base() -> None:
    from export import export_onnx

    export_onnx(load_base(), BASE_ONNX)


def write_plan(eval_seed: int, per_class: int) -> None:
    runs = []
    for name in RUNS:
        for seed in SEEDS:
            p = RUNS_DIR / name / f"s{seed}" / "run.json"
            if p.exists():
                e = json.loads(p.read_text())
                runs.append({k: e[k] for k in ("name", "seed", "trainable_params", "adapter", "model") if k in e})
    plan = {
        "base": "../base/emogate-base.onnx",
        "eval": {"generator": "models/reference/make_dataset.py", "seed": eval_seed, "per_class": per_class},
        "training": {"script": "models/reference/experiment/grid.py", "base_samples": BASE_SAMPLES,
                     "base_data_seed": BASE_DATA_SEED, "tune_samples": TUNE_SAMPLES, "tune_data_seed": TUNE_DATA_SEED,
                     "lora_rank": RANK, "lora_alpha": 2 * RANK, "modules_to_save": HEADS,
                     "targets": {k: v["targets"] for k, v in RUNS.items()}},
        "notes": [
            "full and heads are stored as ONNX models (model), the LoRA runs as PEFT adapters of the base (adapter)",
            "heads: PEFT 0.21 raises NoMatchingPeftModuleError for a LoRA config that targets no module, so heads-only cannot be a PEFT adapter",
            "trainable_params counts what the run trained, the new emotion_head and va_head (873 parameters) included",
        ],
        "runs": runs,
    }
    PLAN.write_text(json.dumps(plan, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=["data", "base", "tune", "all", "plan"])
    ap.add_argument("--name", choices=list(RUNS))
    ap.add_argument("--seed", type=int, choices=SEEDS)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--base-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default 1e-3 full, 5e-3 LoRA/heads)")
    ap.add_argument("--jobs", type=int, default=2, help="training processes at once (all)")
    args = ap.parse_args()
    from make_dataset import EVAL_SEED, PER_CLASS

    if args.cmd == "data":
        cached_set(args.cache, "base", BASE_SAMPLES, BASE_DATA_SEED, args.workers)
        cached_set(args.cache, "tune", TUNE_SAMPLES, TUNE_DATA_SEED, args.workers)
    elif args.cmd == "base":
        info = train_base(args.cache, args.workers, args.base_epochs, 3e-3)
        export_base()
        print(json.dumps(info))
    elif args.cmd == "tune":
        print(json.dumps(tune(args.name, args.seed, args.cache, args.workers, args.epochs, args.lr)))
    elif args.cmd == "plan":
        write_plan(EVAL_SEED, PER_CLASS)
    else:
        jobs = [(name, seed) for seed in SEEDS for name in RUNS]
        running: list[subprocess.Popen] = []
        t0 = time.time()
        while jobs or running:
            running = [p for p in running if p.poll() is None]
            while jobs and len(running) < args.jobs:
                name, seed = jobs.pop(0)
                if (RUNS_DIR / name / f"s{seed}" / "run.json").exists():
                    continue
                log = open(args.cache / f"{name}-s{seed}.log", "w")
                running.append(subprocess.Popen(
                    [sys.executable, __file__, "tune", "--name", name, "--seed", str(seed), "--cache", str(args.cache),
                     "--epochs", str(args.epochs)], stdout=log, stderr=subprocess.STDOUT))
                print(f"[{time.time() - t0:.0f} s] started {name} s{seed}", flush=True)
            time.sleep(2)
        write_plan(EVAL_SEED, PER_CLASS)
        print(f"grid done in {time.time() - t0:.0f} s; wrote {PLAN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
