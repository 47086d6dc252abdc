"""SynthAffect: procedurally generated faces and voices, one expression per emotion label.

No face or speech dataset can be had offline here, so emogate-ref is trained on drawings and
synthetic voices whose expression follows each label's textbook cues:

- faces (96x96 gray, drawn with anti-aliased shapes): mouth curvature and opening, brow height
  and slant, eye opening, nose wrinkle; plus random head position and size, lighting, contrast,
  blinks and sensor noise;
- voices (2 s, 16 kHz): a harmonic source with a formant filter, where the label sets pitch
  level and range, contour, syllable rate, loudness, breathiness, tremolo and spectral tilt;
  plus random vowels, speaker pitch, gain and noise.

The model learns these cues, not real people: it is a reference for the pipeline, the merge
and quantization numerics, and a demo whose output follows what it is shown.
"""

from __future__ import annotations

import numpy as np

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]

# Russell-circumplex targets (valence, arousal) in [-1, 1].
VALENCE_AROUSAL = {
    "angry": (-0.6, 0.8),
    "disgust": (-0.7, 0.3),
    "fear": (-0.6, 0.7),
    "happy": (0.8, 0.5),
    "sad": (-0.7, -0.5),
    "surprise": (0.4, 0.8),
    "neutral": (0.0, 0.0),
}

# Face cues: smile (-1 frown .. 1 smile), mouth_open (0..1), brow_raise (-1..1),
# brow_slant (+ inner ends up, as in sadness and fear; - inner ends down, as in anger),
# eye_open (0.4 narrowed .. 1.5 wide), wrinkle (nose wrinkle, 0..1).
FACE_CUES = {
    "angry": dict(smile=-0.35, mouth_open=0.05, brow_raise=-0.6, brow_slant=-1.0, eye_open=0.7, wrinkle=0.2),
    "disgust": dict(smile=-0.55, mouth_open=0.2, brow_raise=-0.3, brow_slant=-0.3, eye_open=0.55, wrinkle=1.0),
    "fear": dict(smile=-0.25, mouth_open=0.45, brow_raise=0.8, brow_slant=0.9, eye_open=1.4, wrinkle=0.0),
    "happy": dict(smile=1.0, mouth_open=0.25, brow_raise=0.2, brow_slant=0.0, eye_open=0.8, wrinkle=0.0),
    "sad": dict(smile=-0.75, mouth_open=0.0, brow_raise=0.0, brow_slant=1.0, eye_open=0.6, wrinkle=0.0),
    "surprise": dict(smile=0.0, mouth_open=1.0, brow_raise=1.0, brow_slant=0.1, eye_open=1.5, wrinkle=0.0),
    "neutral": dict(smile=0.0, mouth_open=0.0, brow_raise=0.0, brow_slant=0.0, eye_open=1.0, wrinkle=0.0),
}

# Voice cues: f0 (Hz, before the speaker's offset), spread (semitones of excursion), slope
# (semitones over the 2 s), rate (syllables/s), loud (linear gain), breath (noise share),
# tremolo (depth in semitones at 6-9 Hz), tilt (harmonic roll-off exponent; low = harsh).
VOICE_CUES = {
    "angry": dict(f0=175.0, spread=3.0, slope=-2.0, rate=4.5, loud=1.0, breath=0.02, tremolo=0.0, tilt=0.6),
    "disgust": dict(f0=125.0, spread=2.0, slope=-1.0, rate=2.2, loud=0.55, breath=0.10, tremolo=0.0, tilt=1.1),
    "fear": dict(f0=260.0, spread=2.0, slope=1.0, rate=5.0, loud=0.5, breath=0.12, tremolo=0.8, tilt=1.2),
    "happy": dict(f0=225.0, spread=6.0, slope=1.5, rate=4.0, loud=0.8, breath=0.03, tremolo=0.0, tilt=0.9),
    "sad": dict(f0=115.0, spread=1.0, slope=-3.0, rate=1.8, loud=0.3, breath=0.10, tremolo=0.0, tilt=1.6),
    "surprise": dict(f0=240.0, spread=7.0, slope=6.0, rate=2.8, loud=0.85, breath=0.04, tremolo=0.0, tilt=0.9),
    "neutral": dict(f0=150.0, spread=1.5, slope=0.0, rate=3.0, loud=0.6, breath=0.04, tremolo=0.0, tilt=1.0),
}

FACE_SIZE = 96
VOICE_SR = 16000


def _soft(d: np.ndarray) -> np.ndarray:
    """Coverage from a signed distance in pixels (negative inside): 1-pixel linear edge."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _ellipse(xx, yy, cx, cy, rx, ry) -> np.ndarray:
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return _soft((r - 1.0) * min(rx, ry))


def _segment(xx, yy, x0, y0, x1, y1, half_width) -> np.ndarray:
    px, py = xx - x0, yy - y0
    dx, dy = x1 - x0, y1 - y0
    h = np.clip((px * dx + py * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    d = np.sqrt((px - h * dx) ** 2 + (py - h * dy) ** 2)
    return _soft(d - half_width)


def draw_face(
    smile: float,
    mouth_open: float = 0.0,
    brow_raise: float = 0.0,
    brow_slant: float = 0.0,
    eye_open: float = 1.0,
    wrinkle: float = 0.0,
    cx: float = 48.0,
    cy: float = 50.0,
    scale: float = 1.0,
    background: float = 55.0,
    skin: float = 185.0,
    size: int = FACE_SIZE,
) -> np.ndarray:
    """One face, size x size float64 gray in [0, 255] (not rounded)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    img = background + 35.0 * yy / size  # background gradient

    def paint(alpha, value):
        nonlocal img
        img = img * (1.0 - alpha) + value * alpha

    s = scale
    paint(_ellipse(xx, yy, cx, cy + 30.0 * s, 12.0 * s, 10.0 * s), skin - 35.0)  # neck
    paint(_ellipse(xx, yy, cx, cy, 30.0 * s, 37.0 * s), skin)  # head
    paint(_ellipse(xx, yy, cx, cy - 33.0 * s, 27.0 * s, 9.0 * s) * (yy < cy - 26.0 * s), 70.0)  # hair
    for side in (-1.0, 1.0):
        ex, ey = cx + side * 12.0 * s, cy - 9.0 * s
        paint(_ellipse(xx, yy, ex, ey, 6.0 * s, (4.0 * eye_open + 0.3) * s), 245.0)  # eye white
        paint(_ellipse(xx, yy, ex, ey, 2.6 * s, min(2.6, 4.0 * eye_open) * s), 30.0)  # pupil
        by = ey - (7.0 + 3.0 * brow_raise) * s
        k = 2.5 * brow_slant * s  # inner end up by k, outer end down by k
        x_out, x_in = ex + side * 6.0 * s, ex - side * 6.0 * s
        paint(_segment(xx, yy, x_out, by + k, x_in, by - k, 1.3 * s), 60.0)  # brow
        if wrinkle > 0.0:  # nose wrinkle: short creases beside the bridge
            wx = cx + side * 4.0 * s
            paint(_segment(xx, yy, wx, cy - 1.0 * s, wx + side * 2.5 * s, cy + 2.0 * s, 0.7 * s) * wrinkle, skin - 70.0)
    paint(_segment(xx, yy, cx, cy - 3.0 * s, cx - 1.5 * s, cy + 7.0 * s, 1.2 * s), skin - 45.0)  # nose
    # mouth: y(x) = my - c u^2, u = (x - cx)/w in [-1, 1]; c > 0 lifts the corners (smile).
    # An open mouth is a dark ellipse under the curve.
    w, my = 14.0 * s * (1.0 - 0.25 * mouth_open), cy + 17.0 * s
    if mouth_open > 0.05:
        paint(_ellipse(xx, yy, cx, my + 0.5 * mouth_open * s, w * 0.75, (1.0 + 6.0 * mouth_open) * s), 25.0)
    c = 7.0 * smile * s
    u = (xx - cx) / w
    ym = my + 0.5 * c - c * u**2
    d_curve = np.abs(yy - ym) / np.sqrt(1.0 + (2.0 * c * u / w) ** 2) - (1.4 + 0.8 * max(smile, 0.0)) * s
    d_ends = np.maximum(np.abs(xx - cx) - w, 0.0)
    paint(_soft(np.maximum(d_curve, d_ends)), 45.0)
    return np.clip(img, 0.0, 255.0)


def random_face(label: str, rng: np.random.Generator) -> np.ndarray:
    """A 96x96 uint8 face showing `label`, with random cue strength, pose, lighting and noise."""
    return random_face_factors(label, rng)[0]


def random_face_factors(label: str, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """`random_face` (the same draws from `rng`), plus its non-affective latent factors: head
    position and size, background and skin tone, exposure gain and offset, sensor noise. They do
    not depend on the label; the base model is pretrained to predict them."""
    cues = dict(FACE_CUES[label])
    strength = rng.uniform(0.6, 1.2)  # how pronounced the expression is
    for k in ("smile", "mouth_open", "brow_raise", "brow_slant", "wrinkle"):
        cues[k] = cues[k] * strength + rng.normal(0.0, 0.12)
    cues["eye_open"] = 1.0 + (cues["eye_open"] - 1.0) * strength + rng.normal(0.0, 0.08)
    if rng.random() < 0.08:  # blink
        cues["eye_open"] = rng.uniform(0.05, 0.3)
    cues["mouth_open"] = max(cues["mouth_open"], 0.0)
    cues["wrinkle"] = float(np.clip(cues["wrinkle"], 0.0, 1.0))
    cues["eye_open"] = float(np.clip(cues["eye_open"], 0.05, 1.7))
    factors = dict(
        cx=48.0 + rng.normal(0.0, 4.0),
        cy=50.0 + rng.normal(0.0, 4.0),
        scale=rng.uniform(0.8, 1.15),
        background=rng.uniform(20.0, 120.0),
        skin=rng.uniform(140.0, 215.0),
    )
    img = draw_face(**cues, **factors)
    gain, bias = rng.uniform(0.7, 1.3), rng.uniform(-30.0, 30.0)  # exposure
    noise = rng.uniform(0.0, 6.0)
    img = (img - 128.0) * gain + 128.0 + bias + rng.normal(0.0, noise, img.shape)
    factors.update(gain=gain, bias=bias, noise=noise)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), {k: float(v) for k, v in factors.items()}


def synth_voice(
    f0: float,
    spread: float,
    slope: float,
    rate: float,
    loud: float,
    breath: float,
    tremolo: float,
    tilt: float,
    rng: np.random.Generator,
    seconds: float = 2.0,
    sr: int = VOICE_SR,
    factors: dict | None = None,
) -> np.ndarray:
    """A voiced utterance, float64 in about [-1, 1]. If `factors` is given, the share of each
    of the five vowels among the formant targets is stored in it (`vowel0`..`vowel4`)."""
    n = int(sr * seconds)
    t = np.arange(n) / sr
    # pitch in semitones around f0: a linear contour, smooth random excursions, tremolo
    knots = np.linspace(0.0, seconds, int(seconds * rate * 2) + 2)
    excursion = np.interp(t, knots, rng.normal(0.0, spread / 2.0, knots.size))
    semis = slope * (t / seconds - 0.5) + excursion
    if tremolo > 0.0:
        semis = semis + tremolo * np.sin(2 * np.pi * rng.uniform(6.0, 9.0) * t)
    f0t = f0 * 2.0 ** (semis / 12.0)
    phase = 2 * np.pi * np.cumsum(f0t) / sr
    # syllables: Hann bumps at the given rate, with random lengths and gaps
    env = np.zeros(n)
    pos = rng.uniform(0.0, 0.15)
    while pos < seconds:
        length = rng.uniform(0.5, 0.85) / rate
        a, b = pos, min(pos + length, seconds)
        m = (t >= a) & (t < b)
        env[m] += rng.uniform(0.6, 1.0) * np.sin(np.pi * (t[m] - a) / length) ** 2
        pos += length + rng.uniform(0.1, 0.5) / rate
    # a random vowel per syllable run: formants drift between random vowel targets
    vowels = np.array([[750, 1200, 2600], [300, 2250, 3000], [320, 900, 2300], [480, 1800, 2500], [550, 1000, 2450]])
    which = rng.integers(0, len(vowels), knots.size)
    picks = vowels[which]
    if factors is not None:
        for v in range(len(vowels)):
            factors[f"vowel{v}"] = float(np.mean(which == v))
    F = [np.interp(t, knots, picks[:, i] * rng.uniform(0.9, 1.1)) for i in range(3)]
    B, G = [90.0, 120.0, 180.0], [1.0, 0.6, 0.3]
    # harmonic amplitudes at a 5 ms control rate, interpolated to audio rate
    ctrl = np.arange(0, n, 80)
    k = np.arange(1, 31)[:, None]
    fk = k * f0t[ctrl][None, :]  # [30, n/80]
    amp = 0.05 + sum(g * np.exp(-0.5 * ((fk - fc[ctrl][None, :]) / bw) ** 2) for fc, bw, g in zip(F, B, G))
    amp = amp * (fk < 7500.0) / k**tilt
    y = np.zeros(n)
    for i in range(amp.shape[0]):
        y += np.interp(t, t[ctrl], amp[i]) * np.sin((i + 1) * phase)
    y = y / (np.abs(y).max() + 1e-9)
    noise = rng.normal(0.0, 1.0, n)
    y = (y * (1.0 - breath) + breath * 3.0 * noise * np.sqrt(0.2 + env)) * env
    return loud * y


def random_voice(label: str, rng: np.random.Generator, seconds: float = 2.0) -> np.ndarray:
    """2 s of float32 audio in [-1, 1] speaking with `label`'s prosody, a random speaker and room."""
    return random_voice_factors(label, rng, seconds)[0]


def random_voice_factors(label: str, rng: np.random.Generator, seconds: float = 2.0) -> tuple[np.ndarray, dict[str, float]]:
    """`random_voice` (the same draws from `rng`), plus its non-affective latent factors: the
    speaker's pitch offset (semitones), recording gain (dB), room noise level (log10) and the
    vowel shares. They do not depend on the label; the base model is pretrained to predict them."""
    cues = dict(VOICE_CUES[label])
    speaker = rng.normal(0.0, 2.0)  # semitones: speakers differ in pitch
    cues["f0"] *= 2.0 ** (speaker / 12.0)
    cues["spread"] *= rng.uniform(0.7, 1.3)
    cues["slope"] += rng.normal(0.0, 1.0)
    cues["rate"] *= rng.uniform(0.8, 1.2)
    gain_db = rng.normal(0.0, 3.0)
    cues["loud"] *= 10.0 ** (gain_db / 20.0)  # +-3 dB recording gain
    cues["breath"] = float(np.clip(cues["breath"] + rng.normal(0.0, 0.02), 0.0, 0.5))
    cues["tilt"] += rng.normal(0.0, 0.1)
    factors: dict[str, float] = {}
    y = synth_voice(**cues, rng=rng, seconds=seconds, factors=factors)
    noise_log = rng.uniform(-4.0, -2.3)
    y = y + rng.normal(0.0, 10.0 ** noise_log, y.size)  # room and mic noise
    factors.update(speaker=float(speaker), gain_db=float(gain_db), noise_log=float(noise_log))
    return np.clip(y, -1.0, 1.0).astype(np.float32), factors
