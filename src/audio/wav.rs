//! WAV files in and out (`hound`): reading any PCM/float WAV with checks that
//! turn every malformed file into a clear error, and writing the stereo
//! conversation timeline (left = user, right = bot).
//!
//! # Invariants
//! 1. `read_wav` never panics and never allocates more than the file can hold:
//!    a header that claims more audio than the file contains is refused before
//!    any sample is read.
//! 2. Every error names the file and what was wrong with it.

use super::resample::{f32_to_i16, EdgeResampler};
use crate::frame::SAMPLE_RATE;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Longest input accepted, in seconds (a cap against absurd headers).
pub const MAX_SECONDS: u64 = 4 * 3600;

/// What was wrong with a WAV file.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: cannot open: {cause}")]
    Open {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a readable WAV file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: unsupported WAV format: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: the header claims {claimed} bytes of audio but the file holds only {actual}; the file is truncated or its header is corrupt")]
    Truncated {
        path: PathBuf,
        claimed: u64,
        actual: u64,
    },
    #[error("{path}: contains no audio samples")]
    Empty { path: PathBuf },
    #[error("{path}: {seconds} s of audio is longer than the {MAX_SECONDS} s limit")]
    TooLong { path: PathBuf, seconds: u64 },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Decoded audio of a WAV file, interleaved, full-scale floats.
#[derive(Clone, Debug)]
pub struct WavAudio {
    pub path: PathBuf,
    pub sample_rate: u32,
    pub channels: u16,
    pub samples: Vec<f32>,
}

impl WavAudio {
    /// Frames (samples per channel).
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1) as usize
    }

    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.frames() as u64 * 1000 / self.sample_rate.max(1) as u64
    }
}

/// Reads and checks a WAV file (invariants 1 and 2). Accepts 8/16/24/32-bit
/// integer and 32-bit float, 1–8 channels, 8–192 kHz.
pub fn read_wav(path: &Path) -> Result<WavAudio, WavError> {
    let p = || path.to_path_buf();
    let file = File::open(path).map_err(|cause| WavError::Open { path: p(), cause })?;
    let file_len = file
        .metadata()
        .map_err(|cause| WavError::Open { path: p(), cause })?
        .len();
    let reader =
        hound::WavReader::new(std::io::BufReader::new(file)).map_err(|e| WavError::Malformed {
            path: p(),
            reason: e.to_string(),
        })?;
    let spec = reader.spec();
    if !(1..=8).contains(&spec.channels) {
        return Err(WavError::Unsupported {
            path: p(),
            reason: format!("{} channels (supported: 1 to 8)", spec.channels),
        });
    }
    if !(8_000..=192_000).contains(&spec.sample_rate) {
        return Err(WavError::Unsupported {
            path: p(),
            reason: format!(
                "sample rate {} Hz (supported: 8000 to 192000 Hz)",
                spec.sample_rate
            ),
        });
    }
    let bytes_per_sample = u64::from(spec.bits_per_sample).div_ceil(8);
    let total_samples = u64::from(reader.len());
    let claimed = total_samples * bytes_per_sample;
    if claimed > file_len {
        return Err(WavError::Truncated {
            path: p(),
            claimed,
            actual: file_len,
        });
    }
    if total_samples == 0 {
        return Err(WavError::Empty { path: p() });
    }
    let seconds = total_samples / u64::from(spec.channels) / u64::from(spec.sample_rate);
    if seconds > MAX_SECONDS {
        return Err(WavError::TooLong { path: p(), seconds });
    }
    let malformed = |e: hound::Error| WavError::Malformed {
        path: p(),
        reason: e.to_string(),
    };
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .map(|s| {
                s.map(|v| {
                    if v.is_finite() {
                        v.clamp(-1.0, 1.0)
                    } else {
                        0.0
                    }
                })
            })
            .collect::<Result<_, _>>()
            .map_err(malformed)?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(malformed)?
        }
        (fmt, bits) => {
            return Err(WavError::Unsupported {
                path: p(),
                reason: format!(
                    "{bits}-bit {fmt:?} samples (supported: 8/16/24/32-bit integer, 32-bit float)"
                ),
            })
        }
    };
    if samples.is_empty() {
        return Err(WavError::Empty { path: p() });
    }
    Ok(WavAudio {
        path: p(),
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        samples,
    })
}

/// Converts decoded audio to 16 kHz mono PCM16 (not real-time; allocates).
pub fn resample_to_16k(audio: &WavAudio) -> Result<Vec<i16>, WavError> {
    let mut r =
        EdgeResampler::new(audio.sample_rate, audio.channels, SAMPLE_RATE).map_err(|e| {
            WavError::Unsupported {
                path: audio.path.clone(),
                reason: e.to_string(),
            }
        })?;
    let mut out = Vec::with_capacity(
        audio.frames() * SAMPLE_RATE as usize / audio.sample_rate as usize + 1024,
    );
    r.process(&audio.samples, |s| {
        out.extend(s.iter().map(|&v| f32_to_i16(v)))
    });
    r.finish(|s| out.extend(s.iter().map(|&v| f32_to_i16(v))));
    Ok(out)
}

/// Resamples mono PCM16 from `rate` to 16 kHz (not real-time; allocates).
pub fn mono_i16_to_16k(samples: &[i16], rate: u32) -> Result<Vec<i16>, super::ResampleError> {
    if rate == SAMPLE_RATE {
        return Ok(samples.to_vec());
    }
    let mut r = EdgeResampler::new(rate, 1, SAMPLE_RATE)?;
    let input: Vec<f32> = samples
        .iter()
        .map(|&s| super::resample::i16_to_f32(s))
        .collect();
    let mut out = Vec::with_capacity(samples.len() * SAMPLE_RATE as usize / rate as usize + 1024);
    r.process(&input, |s| out.extend(s.iter().map(|&v| f32_to_i16(v))));
    r.finish(|s| out.extend(s.iter().map(|&v| f32_to_i16(v))));
    Ok(out)
}

/// Writes the stereo conversation timeline at 16 kHz: left = user, right = bot.
pub struct TimelineWriter {
    path: PathBuf,
    writer: hound::WavWriter<BufWriter<File>>,
}

impl TimelineWriter {
    /// Creates (or replaces) `path`.
    pub fn create(path: &Path) -> Result<Self, WavError> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| WavError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
        })
    }

    /// Appends one frame's worth of user and bot samples (same length).
    pub fn write(&mut self, user: &[i16], bot: &[i16]) -> Result<(), WavError> {
        for (&l, &r) in user.iter().zip(bot) {
            for s in [l, r] {
                self.writer.write_sample(s).map_err(|e| WavError::Write {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    /// Finishes the header.
    pub fn finish(self) -> Result<(), WavError> {
        let path = self.path;
        self.writer.finalize().map_err(|e| WavError::Write {
            path,
            reason: e.to_string(),
        })
    }
}
