"""The runtime's preprocessing in numpy: what `emogate run` feeds emogate-ref, computed the same way.

Training, the evaluation set (`make_dataset.py`) and the expected counts (`experiment/expected.py`)
all build model inputs here, so the model is trained on the numbers the engine serves it:

- `face_input`: a gray uint8 frame (the whole frame: the engine does not crop) resized to 64x64 by
  area averaging exactly as `infer/src/pre/video.rs` does it (per-axis coverage weights computed
  in f64 and rounded to f32, a horizontal then a vertical pass accumulated in f32 in tap order),
  then `(p/255 - 0.5)/0.5` in f32. Enlarging axes use bilinear with half-pixel centres, as there.
- `log_mel`: `infer/src/pre/mel.rs`: zero centre padding of n_fft/2, periodic Hann in f64,
  |rfft|^2 in f64, librosa's Slaney filterbank rounded to f32 (as librosa stores it), the band
  energies summed in f64, `ln(E + 1e-6)` rounded to f32. That is librosa 0.11's melspectrogram
  with the manifest's arguments (checked in `check_against_librosa`).
- `pcm16` / `from_pcm16`: audio as a 16-bit WAV carries it and as `device/src/audio.rs` reads it
  back (`i16 / 32768`).

numpy only (no torch, no librosa): `make_dataset.py` runs in CI with a pinned numpy.
`tests/fixtures/prep/` (written by `make_prep_fixture.py`) holds media and these features; the
Rust test `tests/tests/prep_matches_python.rs` runs the engine's featurizer on the same media and
requires agreement to 1e-5.
"""

from __future__ import annotations

import math

import numpy as np

FACE_SIZE = 64
SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 64
FMIN, FMAX = 0.0, 8000.0
LOG_OFFSET = 1e-6
WINDOW_SAMPLES = 32000  # 2.0 s


def _axis_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """video.rs `Axis::plan`: per output index, the source indices and f32 weights, padded to
    the largest tap count with weight 0 on index 0 (adding 0*x to an f32 sum leaves it unchanged)."""
    scale = src / dst
    taps: list[list[tuple[int, float]]] = []
    for o in range(dst):
        t: list[tuple[int, float]] = []
        if src > dst:
            a, b = o * scale, (o + 1) * scale
            for s in range(math.floor(a), min(math.ceil(b), src)):
                cover = min(b, s + 1.0) - max(a, float(s))
                if cover > 1e-9:
                    t.append((s, cover / scale))
        else:
            x = max((o + 0.5) * scale - 0.5, 0.0)
            x0 = min(math.floor(x), src - 1)
            f = x - x0
            if x0 + 1 < src and f > 0.0:
                t += [(x0, 1.0 - f), (x0 + 1, f)]
            else:
                t.append((x0, 1.0))
        taps.append(t)
    k = max(len(t) for t in taps)
    index = np.zeros((k, dst), np.int64)
    weight = np.zeros((k, dst), np.float32)
    for o, t in enumerate(taps):
        for j, (s, w) in enumerate(t):
            index[j, o], weight[j, o] = s, np.float32(w)
    return index, weight


_TAPS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    if (src, dst) not in _TAPS:
        _TAPS[(src, dst)] = _axis_taps(src, dst)
    return _TAPS[(src, dst)]


def resize_gray(gray: np.ndarray, height: int = FACE_SIZE, width: int = FACE_SIZE) -> np.ndarray:
    """uint8 [H, W] -> f32 [height, width] in 0..255, as video.rs renders a Gray8 frame."""
    img = gray.astype(np.float32)
    ci, cw = _taps(img.shape[1], width)
    tmp = np.zeros((img.shape[0], width), np.float32)
    for j in range(ci.shape[0]):  # tap order, f32 multiply then add (no fused multiply-add)
        tmp = tmp + cw[j][None, :] * img[:, ci[j]]
    ri, rw = _taps(img.shape[0], height)
    out = np.zeros((height, width), np.float32)
    for j in range(ri.shape[0]):
        out = out + rw[j][:, None] * tmp[ri[j], :]
    return out


def face_input(gray: np.ndarray) -> np.ndarray:
    """uint8 [H, W] gray frame -> the model's `face` [64, 64, 1] f32: (p/255 - 0.5)/0.5."""
    p = resize_gray(gray)
    return ((p / np.float32(255.0) - np.float32(0.5)) / np.float32(0.5)).astype(np.float32)[:, :, None]


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    mels = hz / f_sp
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-300) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filters() -> np.ndarray:
    """librosa.filters.mel(sr=16000, n_fft=400, n_mels=64, fmin=0, fmax=8000, htk=False,
    norm='slaney') in float32, built the way librosa (and mel.rs) builds it."""
    n_bins = N_FFT // 2 + 1
    fftfreqs = np.arange(n_bins) * (SAMPLE_RATE / N_FFT)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array(FMIN)), _hz_to_mel(np.array(FMAX)), N_MELS + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((N_MELS, n_bins), np.float32)
    for i in range(N_MELS):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:N_MELS + 2] - mel_f[:N_MELS])
    weights *= enorm[:, None]
    return weights


_FILTERS = mel_filters().astype(np.float64)
_WINDOW = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann, f64


def log_mel(samples: np.ndarray) -> np.ndarray:
    """f32 samples -> [64, frames] f32 log-mel (201 frames for 2 s)."""
    y = np.pad(np.asarray(samples, np.float32).astype(np.float64), N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP]
    spec = np.fft.rfft(frames * _WINDOW, axis=-1)
    power = spec.real**2 + spec.imag**2  # [T, 201]
    return np.log(_FILTERS @ power.T + LOG_OFFSET).astype(np.float32)


def pcm16(y: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 as a WAV stores it (round, clip)."""
    return np.clip(np.round(np.asarray(y, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> np.ndarray:
    """int16 -> f32 as the engine's WAV reader converts it (i16 / 32768)."""
    return (pcm.astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def audio_input(y: np.ndarray) -> np.ndarray:
    """float voice -> 16-bit PCM -> the model's `audio` [64, 201]: what a WAV of it gives the engine."""
    return log_mel(from_pcm16(pcm16(y)))


def check_against_librosa() -> dict[str, float]:
    """Largest differences from librosa 0.11 (filterbank and log-mel); needs librosa."""
    import librosa  # noqa: PLC0415 (optional: only for this check)

    ref_f = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX, htk=False, norm="slaney")
    rng = np.random.default_rng(3)
    y = (0.3 * np.sin(2 * np.pi * 220 * np.arange(WINDOW_SAMPLES) / SAMPLE_RATE) + 0.01 * rng.normal(size=WINDOW_SAMPLES)).astype(np.float32)
    ref = np.log(librosa.feature.melspectrogram(
        y=y, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX,
        htk=False, norm="slaney", power=2.0, center=True, pad_mode="constant", window="hann") + LOG_OFFSET)
    return {"filters": float(np.abs(ref_f - mel_filters()).max()), "log_mel": float(np.abs(ref - log_mel(y)).max())}
