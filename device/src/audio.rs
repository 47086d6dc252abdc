//! Audio samples: every capture format becomes mono `f32` in [-1, 1], the
//! one representation the resampler and feature extractors accept.
//!
//! Also [`read_wav`], WAV files through `hound` for file inputs and
//! fixtures, converted the same way.

use std::io::{BufReader, Read, Seek, SeekFrom};
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

/// Reads a WAV file (through `hound`): PCM 8, 16, 24 or 32-bit, or 32-bit
/// IEEE float, plain or `WAVE_FORMAT_EXTENSIBLE`.
///
/// # Errors
/// [`AudioError::Io`] if the file cannot be read; [`AudioError::Wav`] naming
/// the file, the field and what was expected when it is malformed,
/// truncated or in an encoding not decoded here (compressed formats,
/// 64-bit float).
pub fn read_wav(path: &Path) -> Result<Wav, AudioError> {
    let io = |source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    decode_wav(BufReader::new(file), len, path)
}

const WAV_FORMS: &str = "PCM (8, 16, 24 or 32-bit) or 32-bit IEEE float samples";

/// Decodes WAV data of `len` bytes from `reader`; `origin` names it in
/// errors.
fn decode_wav<R: Read + Seek>(mut input: R, len: u64, origin: &Path) -> Result<Wav, AudioError> {
    let wav_err = |message: String| AudioError::Wav {
        path: origin.to_path_buf(),
        message,
    };
    let mut reader = match hound::WavReader::new(&mut input) {
        Ok(reader) => reader,
        Err(hound::Error::IoError(e)) if ran_out(&e) => {
            return Err(wav_err(format!(
                "header is cut off before the `data` chunk; expected a RIFF/WAVE file of {WAV_FORMS}"
            )));
        }
        Err(hound::Error::IoError(source)) => {
            return Err(AudioError::Io {
                path: origin.to_path_buf(),
                source,
            });
        }
        // hound does not say which encoding it met; the tag tells the
        // user what the file is (MP3 in WAV, ADPCM), not only what it
        // is not.
        Err(hound::Error::Unsupported) => {
            let tag = match format_tag(&mut input) {
                Some(tag) => format!("format tag {tag} ({})", tag_name(tag)),
                None => "format tag (`fmt ` chunk)".into(),
            };
            return Err(wav_err(format!(
                "{tag}: expected PCM (1), IEEE float (3) or extensible (65534) holding {WAV_FORMS}"
            )));
        }
        Err(other) => {
            return Err(wav_err(format!(
                "header: {}; expected a RIFF/WAVE file of {WAV_FORMS}",
                hound_reason(&other)
            )));
        }
    };
    let spec = reader.spec();
    if spec.sample_rate == 0 {
        return Err(wav_err("sample rate 0: expected a positive rate".into()));
    }
    let bits = spec.bits_per_sample;
    let declared = reader.len() as usize;
    // The header's sample count is not checked against the file by hound:
    // reserve no more than the file can hold, so a corrupt count cannot
    // ask for gigabytes.
    let bytes_per_sample = usize::from(bits.div_ceil(8)).max(1);
    let fits = usize::try_from(len).unwrap_or(usize::MAX) / bytes_per_sample;
    let mut samples = Vec::with_capacity(declared.min(fits));
    let truncated = |read: usize| {
        wav_err(format!(
            "the `data` chunk is truncated: it declares {declared} samples, the file holds {read}"
        ))
    };
    let sample_err = |read: usize, e: hound::Error| match e {
        hound::Error::IoError(e) if ran_out(&e) => truncated(read),
        hound::Error::IoError(source) => AudioError::Io {
            path: origin.to_path_buf(),
            source,
        },
        other => wav_err(format!("sample {read}: {}", hound_reason(&other))),
    };
    match (spec.sample_format, bits) {
        (hound::SampleFormat::Int, 8 | 16 | 24 | 32) => {
            // Integers scale by their full-scale value, as in [`Sample`].
            let scale = 1.0 / f64::from(1u32 << (bits - 1));
            for s in reader.samples::<i32>() {
                let s = s.map_err(|e| sample_err(samples.len(), e))?;
                samples.push((f64::from(s) * scale) as f32);
            }
        }
        (hound::SampleFormat::Float, 32) => {
            for s in reader.samples::<f32>() {
                let s = s.map_err(|e| sample_err(samples.len(), e))?;
                samples.push(s.to_f32());
            }
        }
        (hound::SampleFormat::Int, _) => {
            return Err(wav_err(format!(
                "bits per sample {bits} for PCM: expected 8, 16, 24 or 32"
            )));
        }
        (hound::SampleFormat::Float, _) => {
            return Err(wav_err(format!(
                "bits per sample {bits} for IEEE float: expected 32"
            )));
        }
    }
    Ok(Wav {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        samples,
    })
}

/// The `fmt ` chunk's format tag (for an extensible one, its sub-format's),
/// found by walking the RIFF chunks; `None` when the file does not get
/// that far. Only used to name an encoding hound refused.
fn format_tag<R: Read + Seek>(input: &mut R) -> Option<u16> {
    let read_u16 = |input: &mut R| {
        let mut b = [0u8; 2];
        input
            .read_exact(&mut b)
            .ok()
            .map(|()| u16::from_le_bytes(b))
    };
    input.seek(SeekFrom::Start(12)).ok()?;
    // Few chunks come before `fmt `; the bound keeps a garbage file from
    // being walked for long.
    for _ in 0..64 {
        let mut head = [0u8; 8];
        input.read_exact(&mut head).ok()?;
        let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if &head[..4] == b"fmt " {
            let tag = read_u16(input)?;
            if tag != 0xFFFE || size < 26 {
                return Some(tag);
            }
            // WAVE_FORMAT_EXTENSIBLE: the sub-format GUID at byte 24 of
            // the chunk starts with the plain tag.
            input.seek(SeekFrom::Current(22)).ok()?;
            return read_u16(input);
        }
        // Chunks are padded to an even length.
        let skip = i64::from(size) + i64::from(size & 1);
        input.seek(SeekFrom::Current(skip)).ok()?;
    }
    None
}

/// Names of compressed formats met in the wild, so the error says what the
/// file is rather than only that it is not PCM.
fn tag_name(tag: u16) -> &'static str {
    match tag {
        1 => "PCM",
        2 => "Microsoft ADPCM",
        3 => "IEEE float",
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

/// Whether a read failed because the data ended, not because the OS
/// failed: hound reports running out of bytes as an `io::Error` of its
/// own making (kind `Other`), which carries no OS error code.
fn ran_out(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::UnexpectedEof || e.raw_os_error().is_none()
}

/// hound's reason without its "Ill-formed WAVE file: " prefix (the
/// caller says what was expected).
fn hound_reason(e: &hound::Error) -> String {
    match e {
        hound::Error::FormatError(reason) => (*reason).to_string(),
        other => other.to_string(),
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
        // An unknown chunk before the data must be skipped.
        b.extend_from_slice(b"LIST");
        b.extend_from_slice(&4u32.to_le_bytes());
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

    const PCM: u16 = 1;
    const FLOAT: u16 = 3;
    const EXTENSIBLE: u16 = 0xFFFE;
    /// Bytes 2..16 of every `KSDATAFORMAT_SUBTYPE_*` GUID whose first two
    /// bytes are a plain format tag.
    const SUBTYPE_TAIL: [u8; 14] = [
        0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
    ];

    fn parse_wav(bytes: &[u8], origin: &Path) -> Result<Wav, AudioError> {
        decode_wav(std::io::Cursor::new(bytes), bytes.len() as u64, origin)
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
    }

    #[test]
    fn reads_what_hound_writes() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 48_000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = std::io::Cursor::new(Vec::new());
        let mut w = hound::WavWriter::new(&mut cursor, spec).expect("writer");
        for s in [4_194_304i32, -8_388_608, 0, 2_097_152] {
            w.write_sample(s).expect("sample");
        }
        w.finalize().expect("finalize");
        let wav = parse_ok(cursor.get_ref());
        assert_eq!((wav.sample_rate, wav.channels), (48_000, 2));
        assert_eq!(wav.samples, [0.5, -1.0, 0.0, 0.25]);
        assert_eq!(wav.to_mono(), [-0.25, 0.125]);
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
            "song.wav: format tag 85 (MP3): expected PCM (1), IEEE float (3) or extensible (65534) \
             holding PCM (8, 16, 24 or 32-bit) or 32-bit IEEE float samples"
        );
        let mut f = fmt_body(EXTENSIBLE, 1, 16000, 16);
        f.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        f.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        f.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        f.extend_from_slice(&2u16.to_le_bytes()); // sub-format: ADPCM
        f.extend_from_slice(&SUBTYPE_TAIL);
        let err = parse_wav(&wav_bytes(&f, &[0; 4]), Path::new("adpcm.wav"))
            .expect_err("extensible ADPCM");
        assert!(
            err.to_string()
                .starts_with("adpcm.wav: format tag 2 (Microsoft ADPCM)"),
            "{err}"
        );
        let err = parse_wav(
            &wav_bytes(&fmt_body(FLOAT, 1, 16000, 64), &0.125f64.to_le_bytes()),
            Path::new("f64.wav"),
        )
        .expect_err("64-bit float");
        let m = err.to_string();
        assert!(
            m.starts_with("f64.wav: header: bits per sample") && m.contains("32-bit IEEE float"),
            "{m}"
        );
        let err = parse_wav(
            &wav_bytes(&fmt_body(PCM, 1, 16000, 12), &[0; 4]),
            Path::new("x.wav"),
        )
        .expect_err("12-bit PCM");
        assert!(err.to_string().starts_with("x.wav: header: "), "{err}");
        let err = parse_wav(b"OggS\0\0\0\0\0\0\0\0", Path::new("a.ogg")).expect_err("not RIFF");
        assert!(err.to_string().starts_with("a.ogg: header"), "{err}");
        let err = parse_wav(b"RIFF", Path::new("cut.wav")).expect_err("cut header");
        assert!(err.to_string().contains("cut off"), "{err}");
    }

    #[test]
    fn truncated_data_is_an_error() {
        let mut b = wav_bytes(&fmt_body(PCM, 1, 8000, 16), &[0; 8]);
        b.truncate(b.len() - 2);
        let err = parse_wav(&b, Path::new("cut.wav")).expect_err("truncated");
        assert!(
            err.to_string()
                .contains("truncated: it declares 4 samples, the file holds 3"),
            "{err}"
        );
    }

    #[test]
    fn a_huge_declared_length_is_truncation_not_an_allocation() {
        let mut b = wav_bytes(&fmt_body(PCM, 1, 8000, 16), &[0; 4]);
        let at = b.len() - 8;
        b[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        let err = parse_wav(&b, Path::new("big.wav")).expect_err("truncated");
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
