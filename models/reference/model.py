"""emogate-ref: the reference audio-visual affect model (PyTorch definition).

A small two-stream model meant to run in real time on a Jetson Orin Nano class device:

    face  f32 [1, 64, 64, 1]  NHWC gray, (p/255 - 0.5) / 0.5
      -> Transpose to NCHW
      -> conv 3x3 s2 (1->24) SiLU                       [24, 32, 32]
      -> depthwise 3x3 s2 + pointwise (24->48) SiLU     [48, 16, 16]
      -> depthwise 3x3 s2 + pointwise (48->d) SiLU      [d, 8, 8]
      -> 2x2 average pool                               [d, 4, 4]  -> 16 tokens
    audio f32 [1, 64, 201]    NCT log-mel, ln(mel + 1e-6)
      -> per-mel affine (learned, init x*0.25 + 1.5)
      -> conv1d k5 s2 (64->d) SiLU                      [d, 101]
      -> depthwise k5 s2 + pointwise (d->d) SiLU        [d, 51]
      -> depthwise k3 s2 (no pad) + pointwise SiLU      [d, 25]    -> 25 tokens
    tokens = concat(face + modality_embed[0], audio + modality_embed[1]) + pos_embed   [1, 41, d]
    N x LLaMA-style block:  x += attn(rms_norm(x));  x += mlp(rms_norm(x))
        attn: q_proj/k_proj/v_proj/o_proj (no bias, no rotary, eager softmax(QK^T/sqrt(dh)) V)
        mlp:  down_proj(silu(gate_proj(x)) * up_proj(x))   (SwiGLU, no bias)
    final RMSNorm -> mean over tokens -> emotion_head (d->7) softmax -> `probabilities` [1, 7]
                                      -> va_head (d->2) tanh        -> `valence_arousal` [1, 2]

Module paths (PEFT target names) look like `blocks.0.mlp.gate_proj`.
Only ops tract handles well appear in the exported graph: Conv, AveragePool, MatMul, Gemm,
Softmax, ReduceMean, Pow, Sqrt, Div, Mul, Add, Sigmoid, Tanh, Reshape, Transpose, Concat.
All shapes are static; the batch size is fixed at 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class RefConfig:
    face_size: int = 64  # square gray face crop
    n_mels: int = 64
    audio_frames: int = 201  # 2 s at 16 kHz, hop 160, center=True
    dim: int = 96  # token width d
    depth: int = 2  # fusion blocks
    heads: int = 4  # head dim 24
    ffn: int = 256  # SwiGLU hidden size (8/3 * d)
    num_labels: int = 7
    num_va: int = 2
    face_channels: tuple[int, int] = (24, 48)
    eps: float = 1e-5

    @property
    def face_tokens(self) -> int:
        return (self.face_size // 16) ** 2  # three stride-2 convs and a 2x2 pool

    @property
    def audio_tokens(self) -> int:
        t = self.audio_frames
        t = (t + 2 * 2 - 5) // 2 + 1  # conv k5 s2 p2
        t = (t + 2 * 2 - 5) // 2 + 1  # dw k5 s2 p2
        t = (t - 3) // 2 + 1  # dw k3 s2 p0
        return t

    @property
    def tokens(self) -> int:
        return self.face_tokens + self.audio_tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["face_channels"] = list(self.face_channels)
        d.update(face_tokens=self.face_tokens, audio_tokens=self.audio_tokens, tokens=self.tokens)
        return d


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, written with Pow/ReduceMean/Add/Sqrt/Div/Mul."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.pow(2).mean(dim=-1, keepdim=True)
        return x / torch.sqrt(var + self.eps) * self.weight


class SiLU(nn.Module):
    """x * sigmoid(x), spelled out so the exported graph holds Sigmoid + Mul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class FaceStem(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        c1, c2 = cfg.face_channels
        d = cfg.dim
        self.conv0 = nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.dw1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1, groups=c1)
        self.pw1 = nn.Conv2d(c1, c2, 1)
        self.dw2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1, groups=c2)
        self.pw2 = nn.Conv2d(c2, d, 1)
        self.pool = nn.AvgPool2d(2)
        self.act = SiLU()
        self.dim = d
        self.tokens = cfg.face_tokens

    def forward(self, face: torch.Tensor) -> torch.Tensor:  # [1, H, W, 1]
        x = face.permute(0, 3, 1, 2)  # NCHW
        x = self.act(self.conv0(x))
        x = self.act(self.pw1(self.dw1(x)))
        x = self.act(self.pw2(self.dw2(x)))
        x = self.pool(x)  # [1, d, 4, 4]
        return x.reshape(x.shape[0], self.dim, self.tokens).transpose(1, 2)  # [B, 16, d]


class AudioStem(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        d = cfg.dim
        # log-mel values span about [-14, 5]; bring them near [-2, 2] (learned per mel band).
        self.in_scale = nn.Parameter(torch.full((1, cfg.n_mels, 1), 0.25))
        self.in_shift = nn.Parameter(torch.full((1, cfg.n_mels, 1), 1.5))
        self.conv0 = nn.Conv1d(cfg.n_mels, d, 5, stride=2, padding=2)
        self.dw1 = nn.Conv1d(d, d, 5, stride=2, padding=2, groups=d)
        self.pw1 = nn.Conv1d(d, d, 1)
        self.dw2 = nn.Conv1d(d, d, 3, stride=2, padding=0, groups=d)
        self.pw2 = nn.Conv1d(d, d, 1)
        self.act = SiLU()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:  # [1, n_mels, T]
        x = audio * self.in_scale + self.in_shift
        x = self.act(self.conv0(x))
        x = self.act(self.pw1(self.dw1(x)))
        x = self.act(self.pw2(self.dw2(x)))  # [1, d, 25]
        return x.transpose(1, 2)  # [1, 25, d]


class Attention(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.head_dim = d // cfg.heads
        self.tokens = cfg.tokens
        self.dim = d
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [1, T, d]
        b, t, h, hd = x.shape[0], self.tokens, self.heads, self.head_dim
        q = self.q_proj(x).reshape(b, t, h, hd).transpose(1, 2)  # [1, h, T, hd]
        k = self.k_proj(x).reshape(b, t, h, hd).transpose(1, 2)
        v = self.v_proj(x).reshape(b, t, h, hd).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # [1, h, T, T]
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, v)  # [1, h, T, hd]
        out = out.transpose(1, 2).reshape(b, t, self.dim)
        return self.o_proj(out)


class MLP(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn, bias=False)
        self.down_proj = nn.Linear(cfg.ffn, cfg.dim, bias=False)
        self.act = SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class EmogateRef(nn.Module):
    def __init__(self, cfg: RefConfig | None = None):
        super().__init__()
        cfg = cfg or RefConfig()
        self.cfg = cfg
        d = cfg.dim
        self.face_stem = FaceStem(cfg)
        self.audio_stem = AudioStem(cfg)
        self.modality_embed = nn.Parameter(torch.zeros(2, d))  # 0: face, 1: audio
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm = RMSNorm(d, cfg.eps)
        self.emotion_head = nn.Linear(d, cfg.num_labels)
        self.va_head = nn.Linear(d, cfg.num_va)

    def forward(self, face: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.face_stem(face) + self.modality_embed[0]
        a = self.audio_stem(audio) + self.modality_embed[1]
        x = torch.cat([f, a], dim=1) + self.pos_embed  # [1, 41, d]
        for blk in self.blocks:
            x = blk(x)
        pooled = self.norm(x).mean(dim=1)  # [1, d]
        probabilities = torch.softmax(self.emotion_head(pooled), dim=-1)
        valence_arousal = torch.tanh(self.va_head(pooled))
        return probabilities, valence_arousal


@torch.no_grad()
def init_random(model: EmogateRef, seed: int) -> EmogateRef:
    """Seeded random weights (the model is untrained). Scales keep activations O(1) and make the
    outputs clearly non-uniform, so adapters and numeric mistakes show up in the outputs."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    depth = model.cfg.depth
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            fan_in = mod.weight[0].numel()
            normal(mod.weight, math.sqrt(2.0 / fan_in))
            normal(mod.bias, 0.05)
        elif isinstance(mod, nn.Linear):
            std = 1.0 / math.sqrt(mod.in_features)
            if name.endswith(("o_proj", "down_proj")):
                std /= math.sqrt(2 * depth)
            if name == "emotion_head":
                std *= 2.0
            normal(mod.weight, std)
            if mod.bias is not None:
                normal(mod.bias, 0.1)
        elif isinstance(mod, RMSNorm):
            normal(mod.weight, 0.1, 1.0)
    normal(model.modality_embed, 0.2)
    normal(model.pos_embed, 0.2)
    normal(model.audio_stem.in_scale, 0.01, 0.25)
    normal(model.audio_stem.in_shift, 0.05, 1.5)
    return model


def build(seed: int, cfg: RefConfig | None = None) -> EmogateRef:
    """Seeded random weights: the starting point of the base (experiment/grid.py, seed 7001)."""
    return init_random(EmogateRef(cfg), seed).eval()


BASE_WEIGHTS = Path(__file__).resolve().parent / "base" / "emogate-base.safetensors"


def base(weights: Path = BASE_WEIGHTS) -> EmogateRef:
    """The base model: experiment/grid.py's committed weights (pretrained on non-affective
    SynthAffect targets; its emotion/VA heads are the random init)."""
    from safetensors.torch import load_file

    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: run models/reference/experiment/grid.py base")
    model = EmogateRef(RefConfig())
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


def count_macs(cfg: RefConfig | None = None) -> dict[str, int]:
    """Multiply-accumulates of one forward pass (convs, linears, attention matmuls), by hooks."""
    cfg = cfg or RefConfig()
    model = EmogateRef(cfg).eval()
    macs = {"face_stem": 0, "audio_stem": 0, "blocks": 0, "heads": 0}

    def part(name: str) -> str:
        if name.startswith("face_stem"):
            return "face_stem"
        if name.startswith("audio_stem"):
            return "audio_stem"
        if name.startswith("blocks"):
            return "blocks"
        return "heads"

    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            k = mod.weight[0].numel()  # (in/groups) * kernel
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name, k=k: macs.__setitem__(part(n), macs[part(n)] + o.numel() * k)))
        elif isinstance(mod, nn.Linear):
            hooks.append(
                mod.register_forward_hook(lambda m, i, o, n=name: macs.__setitem__(part(n), macs[part(n)] + o.numel() * m.in_features))
            )
    with torch.no_grad():
        model(torch.zeros(1, cfg.face_size, cfg.face_size, 1), torch.zeros(1, cfg.n_mels, cfg.audio_frames))
    for h in hooks:
        h.remove()
    # QK^T and PV: 2 * T * T * d per block
    macs["blocks"] += cfg.depth * 2 * cfg.tokens * cfg.tokens * cfg.dim
    macs["total"] = sum(macs.values())
    return macs
