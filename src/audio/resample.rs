//! Edge resampling with `rubato`: any rate and channel count in, mono at the
//! target rate out. Used at the transport edges (device rate ↔ 16 kHz).
//!
//! # Real-time
//! [`EdgeResampler::process`] is the real-time method: it mixes down into a
//! pre-sized buffer and calls rubato's `process_into_buffer`, so it allocates
//! nothing, takes no lock and does not log.
//!
//! # Invariants
//! 1. Output is continuous: samples are emitted in order with no gap; at most
//!    one input chunk (≈ 20 ms) is held back inside the resampler.
//! 2. When the rates are equal no resampler is built; samples pass through
//!    after mix-down, bit for bit.

use rubato::{FftFixedInOut, Resampler};

/// Why a resampler could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("unsupported sample rate {0} Hz (supported: 8000 to 192000 Hz)")]
    Rate(u32),
    #[error("unsupported channel count {0} (supported: 1 to 8)")]
    Channels(u16),
    #[error("resampler: {0}")]
    Rubato(String),
}

/// Converts interleaved audio at one rate to mono at another.
pub struct EdgeResampler {
    channels: usize,
    resampler: Option<FftFixedInOut<f32>>,
    /// Mono input waiting for a full chunk.
    pending: Vec<f32>,
    pending_len: usize,
    chunk_in: usize,
    out: Vec<Vec<f32>>,
}

impl EdgeResampler {
    /// A resampler from `in_rate` Hz with `channels` interleaved channels to
    /// mono `out_rate` Hz.
    pub fn new(in_rate: u32, channels: u16, out_rate: u32) -> Result<Self, ResampleError> {
        for r in [in_rate, out_rate] {
            if !(8_000..=192_000).contains(&r) {
                return Err(ResampleError::Rate(r));
            }
        }
        if !(1..=8).contains(&channels) {
            return Err(ResampleError::Channels(channels));
        }
        let (resampler, chunk_in, out_max) = if in_rate == out_rate {
            (None, (in_rate / 50) as usize, 0)
        } else {
            let r = FftFixedInOut::<f32>::new(
                in_rate as usize,
                out_rate as usize,
                (in_rate / 50) as usize,
                1,
            )
            .map_err(|e| ResampleError::Rubato(e.to_string()))?;
            let chunk = r.input_frames_next();
            let out_max = r.output_frames_max();
            (Some(r), chunk, out_max)
        };
        Ok(Self {
            channels: channels as usize,
            resampler,
            pending: vec![0.0; chunk_in],
            pending_len: 0,
            chunk_in,
            out: vec![vec![0.0; out_max]],
        })
    }

    /// Input samples (per channel) consumed per internal chunk.
    pub fn chunk_frames(&self) -> usize {
        self.chunk_in
    }

    /// Most output samples one `emit` call can receive.
    pub fn frames_max(&self) -> usize {
        self.out[0].len().max(self.chunk_in)
    }

    /// Feeds interleaved samples; calls `emit` with each run of mono output
    /// samples as they become available (holds invariant 1). Real-time safe.
    pub fn process(&mut self, interleaved: &[f32], mut emit: impl FnMut(&[f32])) {
        let ch = self.channels;
        let frames = interleaved.len() / ch;
        for i in 0..frames {
            let frame = &interleaved[i * ch..(i + 1) * ch];
            let mono = if ch == 1 {
                frame[0]
            } else {
                frame.iter().sum::<f32>() / ch as f32
            };
            self.pending[self.pending_len] = mono;
            self.pending_len += 1;
            if self.pending_len == self.chunk_in {
                self.pending_len = 0;
                match self.resampler.as_mut() {
                    None => emit(&self.pending),
                    Some(r) => {
                        if let Ok((_, produced)) = r.process_into_buffer(
                            std::slice::from_ref(&self.pending),
                            &mut self.out,
                            None,
                        ) {
                            emit(&self.out[0][..produced]);
                        }
                    }
                }
            }
        }
    }

    /// Pushes out what is held back (end of stream), padding with silence.
    /// Not real-time: may allocate.
    pub fn finish(&mut self, mut emit: impl FnMut(&[f32])) {
        if self.pending_len == 0 {
            return;
        }
        let n = self.pending_len;
        self.pending[n..].fill(0.0);
        self.pending_len = 0;
        match self.resampler.as_mut() {
            None => emit(&self.pending[..n]),
            Some(r) => {
                let ratio = r.output_frames_next() as f64 / self.chunk_in as f64;
                if let Ok((_, produced)) =
                    r.process_into_buffer(std::slice::from_ref(&self.pending), &mut self.out, None)
                {
                    let keep = ((n as f64 * ratio).ceil() as usize).min(produced);
                    emit(&self.out[0][..keep]);
                }
            }
        }
    }
}

/// Converts a full-scale float sample to PCM16 with saturation.
#[inline]
pub fn f32_to_i16(s: f32) -> i16 {
    (s * 32768.0).clamp(-32768.0, 32767.0) as i16
}

/// Converts PCM16 to full-scale float.
#[inline]
pub fn i16_to_f32(s: i16) -> f32 {
    s as f32 / 32768.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f32, secs: f32, channels: usize) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n)
            .flat_map(|i| {
                let v = 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin();
                std::iter::repeat_n(v, channels)
            })
            .collect()
    }

    fn resample_all(r: &mut EdgeResampler, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        for chunk in input.chunks(1000) {
            r.process(chunk, |s| out.extend_from_slice(s));
        }
        r.finish(|s| out.extend_from_slice(s));
        out
    }

    #[test]
    fn stereo_44k1_to_16k_keeps_duration_and_level() {
        let input = tone(44_100, 440.0, 1.0, 2);
        let mut r = EdgeResampler::new(44_100, 2, 16_000).expect("build");
        let out = resample_all(&mut r, &input);
        assert!((out.len() as i64 - 16_000).abs() <= 16, "len {}", out.len());
        // A 0.5-amplitude sine has RMS ≈ 0.354 (skip the filter's start-up).
        let tail = &out[1600..14_000];
        let rms = (tail.iter().map(|s| s * s).sum::<f32>() / tail.len() as f32).sqrt();
        assert!((rms - 0.3536).abs() < 0.02, "rms {rms}");
    }

    #[test]
    fn equal_rates_pass_through_bit_exact() {
        let input = tone(16_000, 300.0, 0.1, 1);
        let mut r = EdgeResampler::new(16_000, 1, 16_000).expect("build");
        assert_eq!(resample_all(&mut r, &input), input);
    }

    #[test]
    fn bad_rates_and_channels_are_refused() {
        assert!(matches!(
            EdgeResampler::new(4_000, 1, 16_000),
            Err(ResampleError::Rate(4000))
        ));
        assert!(matches!(
            EdgeResampler::new(16_000, 0, 16_000),
            Err(ResampleError::Channels(0))
        ));
        assert!(matches!(
            EdgeResampler::new(16_000, 9, 16_000),
            Err(ResampleError::Channels(9))
        ));
    }
}
