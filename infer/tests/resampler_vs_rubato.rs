//! Why emogate keeps its own resampler instead of rubato: measured here, on
//! the job the pipeline gives it (48 kHz microphone periods of 10 ms to the
//! model's 16 kHz, streamed), against rubato's fixed-ratio `Fft` resampler
//! (its recommendation for a fixed ratio) set for low delay (10 ms chunks).
//!
//! The test prints both and asserts what `infer/src/pre/resample.rs` says
//! in its header: rubato rejects aliases far better (about −150 dB against
//! our −92 dB, both below 16-bit noise), but every rubato setting whose
//! passband is as flat as ours adds more latency from a sample's capture
//! to its resampled value, and it only takes fixed-size chunks.

use emogate_infer::pre::resample::Resampler;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

const FROM: usize = 48_000;
const TO: usize = 16_000;
const CHUNK: usize = FROM / 100;

/// What one resampler did with a streamed signal: its output, and per
/// output sample the latency (ms) from the signal time it stands for to the
/// end of the input chunk that made it available.
struct Streamed {
    out: Vec<f32>,
    latency_ms: Vec<f64>,
}

fn ours(signal: &[f32]) -> Streamed {
    let mut r = Resampler::new(FROM as u32, TO as u32).expect("valid rates");
    let (mut out, mut latency_ms) = (Vec::new(), Vec::new());
    for (c, chunk) in signal.chunks(CHUNK).enumerate() {
        r.process(chunk, &mut out);
        let available_ms = ((c + 1) * CHUNK) as f64 * 1e3 / FROM as f64;
        // Output n is the signal at time n / TO.
        while latency_ms.len() < out.len() {
            latency_ms.push(available_ms - latency_ms.len() as f64 * 1e3 / TO as f64);
        }
    }
    Streamed { out, latency_ms }
}

fn rubato_fft(signal: &[f32]) -> Streamed {
    rubato_fft_chunk(signal, CHUNK)
}

fn rubato_fft_chunk(signal: &[f32], rchunk: usize) -> Streamed {
    let mut r = Fft::<f32>::new(FROM, TO, rchunk, 1, FixedSync::Input).expect("valid rates");
    let delay = r.output_delay();
    let mut buffer = vec![0f32; r.output_frames_max()];
    let (mut raw, mut latency_ms) = (Vec::new(), Vec::new());
    for (c, chunk) in signal.chunks_exact(rchunk).enumerate() {
        let input = InterleavedSlice::new(chunk, 1, rchunk).expect("one channel");
        let frames = buffer.len();
        let mut output = InterleavedSlice::new_mut(&mut buffer, 1, frames).expect("one channel");
        let (_, produced) = r
            .process_into_buffer(&input, &mut output, None)
            .expect("fixed-size chunk");
        raw.extend_from_slice(&buffer[..produced]);
        // The microphone hands over 10 ms periods: a chunk is processed
        // once the period that completes it has arrived.
        let available_ms = ((c + 1) * rchunk).div_ceil(CHUNK) as f64 * 10.0;
        // Output n is the signal at time (n - delay) / TO.
        while latency_ms.len() < raw.len() {
            let n = latency_ms.len() as f64 - delay as f64;
            latency_ms.push(available_ms - n * 1e3 / TO as f64);
        }
    }
    // Align with the signal: drop the startup delay.
    let out = raw.get(delay..).unwrap_or_default().to_vec();
    let latency_ms = latency_ms.get(delay..).unwrap_or_default().to_vec();
    Streamed { out, latency_ms }
}

fn sine(freq: f64, seconds: f64) -> Vec<f32> {
    (0..(seconds * FROM as f64) as usize)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / FROM as f64).sin()) as f32)
        .collect()
}

/// RMS of the steady part (a quarter second trimmed at each end).
fn rms(x: &[f32]) -> f64 {
    let skip = TO / 4;
    let x = &x[skip..x.len().saturating_sub(skip)];
    (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn our_resampler_trades_alias_rejection_for_less_latency_than_rubato() {
    let input_rms = 0.5 / 2f64.sqrt();
    let mut rows = Vec::new();
    for (name, run) in [
        ("emogate", ours as fn(&[f32]) -> Streamed),
        ("rubato 10 ms", rubato_fft),
        ("rubato 5 ms", |s: &[f32]| rubato_fft_chunk(s, 240)),
        ("rubato 2 ms", |s: &[f32]| rubato_fft_chunk(s, 96)),
    ] {
        // 10 kHz lies above the 8 kHz output Nyquist: all that comes out is alias.
        let alias_db = 20.0 * (rms(&run(&sine(10_000.0, 2.0)).out) / input_rms).log10();
        // 1 kHz and 5 kHz lie in the speech band the models listen to.
        let gain_db = [1_000.0, 5_000.0]
            .map(|f| 20.0 * (rms(&run(&sine(f, 2.0)).out) / input_rms).log10().abs());
        let latency = median(run(&sine(1_000.0, 2.0)).latency_ms);
        println!(
            "{name:<12} alias {alias_db:7.1} dB   |gain| 1 kHz {:.4} dB, 5 kHz {:.4} dB   latency p50 {latency:.2} ms",
            gain_db[0], gain_db[1]
        );
        rows.push((alias_db, gain_db[0].max(gain_db[1]), latency));
    }
    let ours = rows[0];
    assert!(
        ours.0 <= -85.0,
        "ours lets {:.1} dB of alias through",
        ours.0
    );
    assert!(
        ours.1 <= 0.01,
        "our passband gain is off by {:.4} dB",
        ours.1
    );
    // Every rubato setting with a passband as flat as ours is slower.
    for theirs in rows[1..].iter().filter(|r| r.1 <= 0.01) {
        assert!(
            ours.2 < theirs.2,
            "latency: ours {ours:?}, rubato {theirs:?}"
        );
    }
}
