//! Audio samples: every capture format becomes mono `f32` in [-1, 1], the
//! one representation the resampler and feature extractors accept.
//!
//! Also a small WAV reader, so file inputs and fixtures need no codec
//! library: PCM 8/16/24/32-bit, IEEE float 32/64-bit, plain or
//! `WAVE_FORMAT_EXTENSIBLE`.

use std::path::Path;

/// Errors of audio decoding and conversion, naming the file or value.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A parameter is out of range.
    #[error("{what} is {got}; expected {expected}")]
    Invalid {
        what: &'static str,
        got: String,
        expected: String,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A WAV file is malformed or uses an encoding this reader does not decode.
    #[error("{}: {message}", path.display())]
    Wav {
        path: std::path::PathBuf,
        message: String,
    },
}

impl AudioError {
    fn invalid(what: &'static str, got: impl ToString, expected: impl Into<String>) -> Self {
        AudioError::Invalid {
            what,
            got: got.to_string(),
            expected: expected.into(),
        }
    }
}

/// A sample format that converts to `f32` in [-1, 1].
///
/// Integers are scaled by their full-scale value (2^(bits−1)), as audio
/// drivers and libsndfile do, so `i16::MIN` maps to exactly −1.
pub trait Sample: Copy {
    fn to_f32(self) -> f32;
}

impl Sample for i16 {
    fn to_f32(self) -> f32 {
        f32::from(self) / 32_768.0
    }
}

impl Sample for i32 {
    fn to_f32(self) -> f32 {
        (f64::from(self) / 2_147_483_648.0) as f32
    }
}

impl Sample for u8 {
    /// 8-bit audio is unsigned with its zero at 128.
    fn to_f32(self) -> f32 {
        (f32::from(self) - 128.0) / 128.0
    }
}

impl Sample for f32 {
    /// Float sources can overshoot (or be NaN after a driver glitch); a
    /// model never saw either in training, so clip and zero them.
    fn to_f32(self) -> f32 {
        if self.is_nan() {
            0.0
        } else {
            self.clamp(-1.0, 1.0)
        }
    }
}

/// Appends `input` converted to `f32` in [-1, 1] to `out`.
pub fn to_f32<S: Sample>(input: &[S], out: &mut Vec<f32>) {
    out.extend(input.iter().map(|s| s.to_f32()));
}

/// Appends the mono mix (mean of the channels) of interleaved `input` to `out`.
///
/// The mean, not the sum, keeps a signal present on all channels at its
/// level and can never clip.
///
/// # Errors
/// [`AudioError::Invalid`] if `channels` is 0 or does not divide the length.
pub fn downmix_into(input: &[f32], channels: usize, out: &mut Vec<f32>) -> Result<(), AudioError> {
    if channels == 0 {
        return Err(AudioError::invalid("channel count", 0, "at least 1"));
    }
    if !input.len().is_multiple_of(channels) {
        return Err(AudioError::invalid(
            "interleaved sample count",
            input.len(),
            format!("a multiple of the channel count {channels}"),
        ));
    }
    if channels == 1 {
        out.extend_from_slice(input);
        return Ok(());
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        input
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
    Ok(())
}

/// The mono mix of interleaved `input`; see [`downmix_into`].
///
/// # Errors
/// As [`downmix_into`].
pub fn downmix(input: &[f32], channels: usize) -> Result<Vec<f32>, AudioError> {
    let mut out = Vec::with_capacity(input.len() / channels.max(1));
    downmix_into(input, channels, &mut out)?;
    Ok(out)
}

/// A decoded WAV file.
#[derive(Debug, Clone, PartialEq)]
pub struct Wav {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved samples in [-1, 1].
    pub samples: Vec<f32>,
}

impl Wav {
    /// The mono mix of all channels.
    pub fn to_mono(&self) -> Vec<f32> {
        let channels = usize::from(self.channels).max(1);
        self.samples
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() / channels as f32)
            .collect()
    }
}

/// Reads a WAV file.
///
/// # Errors
/// [`AudioError::Io`] if the file cannot be read; [`AudioError::Wav`] naming
/// the file and the field when it is malformed or not PCM/float.
pub fn read_wav(path: &Path) -> Result<Wav, AudioError> {
    let bytes = std::fs::read(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_wav(&bytes, path)
}

/// Decodes WAV bytes; `origin` names where they came from in errors.
///
/// # Errors
/// [`AudioError::Wav`] as for [`read_wav`].
pub fn parse_wav(bytes: &[u8], origin: &Path) -> Result<Wav, AudioError> {
    parse(bytes).map_err(|message| AudioError::Wav {
        path: origin.to_path_buf(),
        message,
    })
}

/// How the samples of a data chunk are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    U8,
    I16,
    I24,
    I32,
    F32,
    F64,
}

impl Encoding {
    fn bytes(self) -> usize {
        match self {
            Encoding::U8 => 1,
            Encoding::I16 => 2,
            Encoding::I24 => 3,
            Encoding::I32 | Encoding::F32 => 4,
            Encoding::F64 => 8,
        }
    }

    fn decode(self, b: &[u8]) -> f32 {
        match self {
            Encoding::U8 => b[0].to_f32(),
            Encoding::I16 => i16::from_le_bytes([b[0], b[1]]).to_f32(),
            // Shifting into the top of an i32 sign-extends and scales at once.
            Encoding::I24 => i32::from_le_bytes([0, b[0], b[1], b[2]]).to_f32(),
            Encoding::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_f32(),
            Encoding::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_f32(),
            Encoding::F64 => (f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                as f32)
                .to_f32(),
        }
    }
}

const PCM: u16 = 1;
const FLOAT: u16 = 3;
const EXTENSIBLE: u16 = 0xFFFE;
/// Bytes 2..16 of every `KSDATAFORMAT_SUBTYPE_*` GUID whose first two
/// bytes are a plain format tag.
const SUBTYPE_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

struct Format {
    channels: u16,
    sample_rate: u32,
    block_align: usize,
    encoding: Encoding,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse(bytes: &[u8]) -> Result<Wav, String> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        let head = String::from_utf8_lossy(&bytes[..bytes.len().min(12)]).into_owned();
        return Err(format!(
            "header {head:?}: expected a RIFF/WAVE file (`RIFF`, size, `WAVE`)"
        ));
    }
    let mut format = None;
    let mut data = None;
    let mut pos = 12usize;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(bytes, pos + 4);
        let body = pos + 8;
        let remaining = bytes.len() - body;
        // Streaming writers that never seek back leave the size at 0xFFFFFFFF.
        let len = if id == b"data" && size == u32::MAX {
            remaining
        } else {
            size as usize
        };
        if len > remaining {
            return Err(format!(
                "chunk {:?} declares {len} bytes but only {remaining} remain: the file is truncated",
                String::from_utf8_lossy(id)
            ));
        }
        match id {
            b"fmt " => format = Some(parse_fmt(&bytes[body..body + len])?),
            b"data" => data = Some(&bytes[body..body + len]),
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body + len + (len & 1);
    }
    let format = format.ok_or("no `fmt ` chunk: expected one before the data")?;
    let data = data.ok_or("no `data` chunk: expected one holding the samples")?;
    let width = format.encoding.bytes();
    let mut samples = Vec::with_capacity(data.len() / width);
    // A trailing partial frame (a writer killed mid-write) is dropped.
    for frame in data.chunks_exact(format.block_align) {
        samples.extend(
            frame
                .chunks_exact(width)
                .take(usize::from(format.channels))
                .map(|b| format.encoding.decode(b)),
        );
    }
    Ok(Wav {
        sample_rate: format.sample_rate,
        channels: format.channels,
        samples,
    })
}

fn parse_fmt(b: &[u8]) -> Result<Format, String> {
    if b.len() < 16 {
        return Err(format!(
            "`fmt ` chunk of {} bytes: expected at least 16",
            b.len()
        ));
    }
    let mut tag = u16_at(b, 0);
    let channels = u16_at(b, 2);
    let sample_rate = u32_at(b, 4);
    let block_align = usize::from(u16_at(b, 12));
    let bits = u16_at(b, 14);
    if tag == EXTENSIBLE {
        if b.len() < 40 {
            return Err(format!(
                "extensible `fmt ` chunk of {} bytes: expected 40",
                b.len()
            ));
        }
        if b[26..40] != SUBTYPE_TAIL {
            return Err("extensible sub-format GUID is not a KSDATAFORMAT_SUBTYPE: expected PCM or IEEE float".into());
        }
        tag = u16_at(b, 24);
    }
    let encoding = match (tag, bits) {
        (PCM, 8) => Encoding::U8,
        (PCM, 16) => Encoding::I16,
        (PCM, 24) => Encoding::I24,
        (PCM, 32) => Encoding::I32,
        (FLOAT, 32) => Encoding::F32,
        (FLOAT, 64) => Encoding::F64,
        (PCM, _) => {
            return Err(format!(
                "bits per sample {bits} for PCM: expected 8, 16, 24 or 32"
            ));
        }
        (FLOAT, _) => {
            return Err(format!(
                "bits per sample {bits} for IEEE float: expected 32 or 64"
            ));
        }
        _ => {
            return Err(format!(
                "format tag {tag} ({}): expected PCM (1), IEEE float (3) or extensible (65534)",
                tag_name(tag)
            ));
        }
    };
    if channels == 0 {
        return Err("channel count 0: expected at least 1".into());
    }
    if sample_rate == 0 {
        return Err("sample rate 0: expected a positive rate".into());
    }
    let expected_align = usize::from(channels) * encoding.bytes();
    if block_align != expected_align {
        return Err(format!(
            "block align {block_align}: expected {expected_align} ({channels} channels × {} bytes)",
            encoding.bytes()
        ));
    }
    Ok(Format {
        channels,
        sample_rate,
        block_align,
        encoding,
    })
}

/// Names of compressed formats met in the wild, so the error says what the
/// file is rather than only that it is not PCM.
fn tag_name(tag: u16) -> &'static str {
    match tag {
        2 => "Microsoft ADPCM",
        6 => "A-law",
        7 => "µ-law",
        0x11 => "IMA ADPCM",
        0x31 => "GSM 6.10",
        0x50 => "MPEG",
        0x55 => "MP3",
        0x161..=0x163 => "WMA",
        0x2000 => "AC-3",
        0xF1AC => "FLAC",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a WAV file with a `fmt ` body and raw data bytes.
    fn wav_bytes(fmt: &[u8], data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&((4 + 8 + fmt.len() + 8 + data.len()) as u32).to_le_bytes());
        b.extend_from_slice(b"WAVE");
        b.extend_from_slice(b"fmt ");
        b.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        b.extend_from_slice(fmt);
        // An unknown chunk of odd length must be skipped with its pad byte.
        b.extend_from_slice(b"LIST");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&[1, 2, 3, 0]);
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    fn fmt_body(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let align = channels * bits / 8;
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f
    }

    fn parse_ok(bytes: &[u8]) -> Wav {
        parse_wav(bytes, Path::new("mem.wav")).expect("valid test WAV")
    }

    #[test]
    fn integer_formats_scale_to_unit_range() {
        assert_eq!(i16::MIN.to_f32(), -1.0);
        assert_eq!(16_384i16.to_f32(), 0.5);
        assert_eq!(i32::MIN.to_f32(), -1.0);
        assert_eq!(0u8.to_f32(), -1.0);
        assert_eq!(128u8.to_f32(), 0.0);
        assert_eq!(f32::NAN.to_f32(), 0.0);
        assert_eq!(3.0f32.to_f32(), 1.0);
        let mut out = Vec::new();
        to_f32(&[0i16, -16_384], &mut out);
        assert_eq!(out, [0.0, -0.5]);
    }

    #[test]
    fn downmix_is_channel_mean() {
        let mono = downmix(&[1.0, 0.0, 0.5, 0.5, -1.0, 1.0], 2).expect("even length");
        assert_eq!(mono, [0.5, 0.5, 0.0]);
        assert_eq!(downmix(&[0.25, 0.5], 1).expect("mono"), [0.25, 0.5]);
    }

    #[test]
    fn downmix_rejects_ragged_input() {
        let err = downmix(&[0.0; 5], 2).expect_err("5 samples are not stereo frames");
        assert!(
            err.to_string().contains("multiple of the channel count 2"),
            "{err}"
        );
        assert!(downmix(&[0.0; 4], 0).is_err());
    }

    #[test]
    fn reads_pcm16_stereo() {
        let data: Vec<u8> = [16_384i16, -32_768, 0, 8_192]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let wav = parse_ok(&wav_bytes(&fmt_body(PCM, 2, 8000, 16), &data));
        assert_eq!((wav.sample_rate, wav.channels), (8000, 2));
        assert_eq!(wav.samples, [0.5, -1.0, 0.0, 0.25]);
        assert_eq!(wav.to_mono(), [-0.25, 0.125]);
    }

    #[test]
    fn reads_pcm8_pcm24_pcm32_and_floats() {
        let wav = parse_ok(&wav_bytes(&fmt_body(PCM, 1, 8000, 8), &[0, 128, 192]));
        assert_eq!(wav.samples, [-1.0, 0.0, 0.5]);
        // 0x400000 is half of 24-bit full scale; 0x800000 is the minimum.
        let wav = parse_ok(&wav_bytes(
            &fmt_body(PCM, 1, 8000, 24),
            &[0, 0, 0x40, 0, 0, 0x80],
        ));
        assert_eq!(wav.samples, [0.5, -1.0]);
        let wav = parse_ok(&wav_bytes(
            &fmt_body(PCM, 1, 8000, 32),
            &(-1_073_741_824i32).to_le_bytes(),
        ));
        assert_eq!(wav.samples, [-0.5]);
        let data: Vec<u8> = [0.25f32, -0.75]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let wav = parse_ok(&wav_bytes(&fmt_body(FLOAT, 1, 16000, 32), &data));
        assert_eq!(wav.samples, [0.25, -0.75]);
        let wav = parse_ok(&wav_bytes(
            &fmt_body(FLOAT, 1, 16000, 64),
            &0.125f64.to_le_bytes(),
        ));
        assert_eq!(wav.samples, [0.125]);
    }

    #[test]
    fn reads_extensible_float() {
        let mut f = fmt_body(EXTENSIBLE, 1, 16000, 32);
        f.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        f.extend_from_slice(&32u16.to_le_bytes()); // valid bits
        f.extend_from_slice(&4u32.to_le_bytes()); // channel mask: front centre
        f.extend_from_slice(&FLOAT.to_le_bytes());
        f.extend_from_slice(&SUBTYPE_TAIL);
        let wav = parse_ok(&wav_bytes(&f, &0.5f32.to_le_bytes()));
        assert_eq!(wav.samples, [0.5]);
    }

    #[test]
    fn unsupported_formats_are_named() {
        let err = parse_wav(
            &wav_bytes(&fmt_body(0x55, 1, 16000, 16), &[0; 4]),
            Path::new("song.wav"),
        )
        .expect_err("MP3 in WAV is not decoded");
        assert_eq!(
            err.to_string(),
            "song.wav: format tag 85 (MP3): expected PCM (1), IEEE float (3) or extensible (65534)"
        );
        let err = parse_wav(
            &wav_bytes(&fmt_body(PCM, 1, 16000, 12), &[0; 4]),
            Path::new("x.wav"),
        )
        .expect_err("12-bit PCM");
        assert!(err.to_string().contains("bits per sample 12"), "{err}");
        let err = parse_wav(b"OggS\0\0\0\0\0\0\0\0", Path::new("a.ogg")).expect_err("not RIFF");
        assert!(err.to_string().starts_with("a.ogg: header"), "{err}");
    }

    #[test]
    fn truncated_data_is_an_error() {
        let mut b = wav_bytes(&fmt_body(PCM, 1, 8000, 16), &[0; 8]);
        b.truncate(b.len() - 2);
        let err = parse_wav(&b, Path::new("cut.wav")).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_wav(Path::new("/nonexistent/emogate.wav")).expect_err("no such file");
        assert!(
            err.to_string().starts_with("/nonexistent/emogate.wav: "),
            "{err}"
        );
    }
}
