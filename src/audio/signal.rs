//! Test signals for benchmarks and allocation tests: real recordings laid
//! end to end as one side of a conversation, over a noise floor, so the VAD
//! and the turn detector see what a microphone gives them (a room's hiss
//! between words, never digital silence). Also converts such audio to what a
//! browser sends (48 kHz stereo floats).
//!
//! Not real-time: everything here allocates; it builds inputs up front.
//!
//! # Invariants
//! 1. Deterministic: the same recordings, gaps, level and seed give the same
//!    samples on every machine (own PRNG, no platform randomness).
//! 2. The noise floor covers the whole signal, speech and gaps alike, at the
//!    requested RMS level (dBFS, full scale = 32768).

use super::resample::{f32_to_i16, i16_to_f32, EdgeResampler, ResampleError};
use crate::frame::SAMPLE_RATE;

/// A small xorshift generator: deterministic on every platform (invariant 1).
struct XorShift(u64);

impl XorShift {
    fn next_unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // Uniform in [-1, 1).
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Adds uniform white noise of RMS `dbfs` (e.g. -55.0) to `samples` in
/// place (holds invariant 2).
pub fn add_noise_floor(samples: &mut [i16], dbfs: f32, seed: u64) {
    // A uniform variable on [-a, a] has RMS a/√3.
    let amplitude = 32768.0 * 10f32.powf(dbfs / 20.0) * 3f32.sqrt();
    let mut rng = XorShift(seed | 1);
    for s in samples {
        let noisy = *s as f32 + rng.next_unit() * amplitude;
        *s = noisy.clamp(i16::MIN as f32, i16::MAX as f32) as i16;
    }
}

/// The recordings (16 kHz mono) one after another with `gap_ms` between
/// them, repeated until `total_ms`, with a noise floor of `noise_dbfs` over
/// everything.
pub fn conversation(
    recordings: &[Vec<i16>],
    gap_ms: u64,
    total_ms: u64,
    noise_dbfs: f32,
) -> Vec<i16> {
    let total = (total_ms * SAMPLE_RATE as u64 / 1000) as usize;
    let gap = (gap_ms * SAMPLE_RATE as u64 / 1000) as usize;
    let mut out = Vec::with_capacity(total + gap);
    // Lead-in of room noise before the first words, as at a call's start.
    out.resize(gap / 2, 0);
    'fill: while !recordings.is_empty() {
        for r in recordings {
            out.extend_from_slice(r);
            out.resize(out.len() + gap, 0);
            if out.len() >= total {
                break 'fill;
            }
        }
    }
    out.resize(total, 0);
    add_noise_floor(&mut out, noise_dbfs, 0x5eed);
    out
}

/// Converts 16 kHz mono PCM16 into interleaved floats at `rate` with
/// `channels` identical channels: what a browser or a sound card delivers.
pub fn interleaved(samples: &[i16], rate: u32, channels: u16) -> Result<Vec<f32>, ResampleError> {
    let mono: Vec<f32> = samples.iter().map(|&s| i16_to_f32(s)).collect();
    let mut up = Vec::with_capacity(samples.len() * rate as usize / SAMPLE_RATE as usize + 4096);
    if rate == SAMPLE_RATE {
        up = mono;
    } else {
        let mut r = EdgeResampler::new(SAMPLE_RATE, 1, rate)?;
        r.process(&mono, |s| up.extend_from_slice(s));
        r.finish(|s| up.extend_from_slice(s));
    }
    let mut out = Vec::with_capacity(up.len() * channels as usize);
    for v in up {
        // Round-trip through i16 as a PCM device would quantise.
        let q = i16_to_f32(f32_to_i16(v));
        out.extend(std::iter::repeat_n(q, channels as usize));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms_dbfs(s: &[i16]) -> f32 {
        let ms = s.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / s.len() as f64;
        (20.0 * (ms.sqrt() / 32768.0).log10()) as f32
    }

    #[test]
    fn the_noise_floor_has_the_requested_level_and_is_deterministic() {
        let mut a = vec![0i16; 16_000];
        add_noise_floor(&mut a, -50.0, 7);
        let level = rms_dbfs(&a);
        assert!((level + 50.0).abs() < 0.5, "{level} dBFS");
        let mut b = vec![0i16; 16_000];
        add_noise_floor(&mut b, -50.0, 7);
        assert_eq!(a, b);
    }

    #[test]
    fn a_conversation_has_the_requested_length_and_no_digital_silence() {
        let words = vec![vec![8000i16; 1600]; 2];
        let c = conversation(&words, 500, 3000, -55.0);
        assert_eq!(c.len(), 48_000);
        // Every 20 ms stretch carries some noise.
        assert!(c.chunks(320).all(|f| f.iter().any(|&s| s != 0)));
    }

    #[test]
    fn interleaved_48k_stereo_has_three_times_the_frames_in_two_channels() {
        let s = vec![1000i16; 16_000];
        let out = interleaved(&s, 48_000, 2).expect("resample");
        let frames = out.len() / 2;
        assert!((frames as i64 - 48_000).abs() < 1024, "{frames}");
        assert_eq!(out[100], out[101]);
    }
}
