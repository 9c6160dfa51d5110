//! Whisper-style log-mel features for Smart Turn v3: the last 8 s of 16 kHz
//! audio, left-padded with zeros, normalised to zero mean and unit variance,
//! then an 80-band Slaney mel power spectrogram (n_fft 400, hop 160, periodic
//! Hann window, reflect padding), log10, clamped to 8 below its peak and
//! scaled as Whisper does: `(log + 4) / 4`. Output: 80 × 800, mel-major.
//!
//! The reference is pipecat's `_whisper_features.py` (pipecat-ai 1.14.0, a
//! numpy port of Hugging Face's `WhisperFeatureExtractor`);
//! `tests/eot_features.rs` checks this code against values it produced
//! (`assets/eot/features-reference.json`, made by `scripts/eot-features-reference.py`).
//!
//! # Invariants
//! 1. The output always has `N_MELS * N_FRAMES` values, whatever the input
//!    length (empty input included): longer input keeps its last 8 s,
//!    shorter input is left-padded with zeros.
//! 2. Computation is in f64 up to the final cast, as the reference does after
//!    its float32 normalisation.

use realfft::RealFftPlanner;
use std::sync::OnceLock;

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_MELS: usize = 80;
/// Frames kept (the last of 801 is dropped, as the reference does).
pub const N_FRAMES: usize = 800;
/// Samples the model sees: 8 s.
pub const WINDOW_SAMPLES: usize = 8 * SAMPLE_RATE;
const N_BINS: usize = N_FFT / 2 + 1;

/// One triangular mel filter: first FFT bin and its weights.
struct Filter {
    first: usize,
    weights: Vec<f64>,
}

fn hz_to_mel(f: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if f >= 1000.0 {
        15.0 + (f / 1000.0).ln() * logstep
    } else {
        3.0 * f / 200.0
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if m >= 15.0 {
        1000.0 * (logstep * (m - 15.0)).exp()
    } else {
        200.0 * m / 3.0
    }
}

/// The Slaney-normalised filterbank, as `_build_mel_filterbank` builds it.
fn filters() -> &'static [Filter] {
    static FILTERS: OnceLock<Vec<Filter>> = OnceLock::new();
    FILTERS.get_or_init(|| {
        let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
        let edges: Vec<f64> = (0..N_MELS + 2)
            .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64))
            .collect();
        let nyquist = (SAMPLE_RATE / 2) as f64;
        let fft_freq = |k: usize| nyquist * k as f64 / (N_BINS - 1) as f64;
        (0..N_MELS)
            .map(|m| {
                let enorm = 2.0 / (edges[m + 2] - edges[m]);
                let w: Vec<f64> = (0..N_BINS)
                    .map(|k| {
                        let f = fft_freq(k);
                        let down = (f - edges[m]) / (edges[m + 1] - edges[m]);
                        let up = (edges[m + 2] - f) / (edges[m + 2] - edges[m + 1]);
                        down.min(up).max(0.0) * enorm
                    })
                    .collect();
                let first = w.iter().position(|&x| x > 0.0).unwrap_or(0);
                let last = w.iter().rposition(|&x| x > 0.0).unwrap_or(0);
                Filter {
                    first,
                    weights: w[first..=last.max(first)].to_vec(),
                }
            })
            .collect()
    })
}

/// The model's input for `audio` (16 kHz mono i16): `N_MELS * N_FRAMES`
/// values, mel-major (invariant 1).
pub fn log_mel(audio: &[i16]) -> Vec<f32> {
    let tail = &audio[audio.len().saturating_sub(WINDOW_SAMPLES)..];
    let mut x = vec![0f32; WINDOW_SAMPLES];
    for (d, &s) in x[WINDOW_SAMPLES - tail.len()..].iter_mut().zip(tail) {
        *d = s as f32 / 32768.0;
    }
    // Zero mean, unit variance over the padded window (the reference does
    // this in float32; the sums here are f64 and the result f32).
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let scale = 1.0 / (var as f32 + 1e-7).sqrt();
    let mean = mean as f32;
    let x: Vec<f64> = x.iter().map(|&v| ((v - mean) * scale) as f64).collect();

    // Reflect padding by n_fft / 2 on both sides (numpy's "reflect").
    let pad = N_FFT / 2;
    let len = x.len();
    let mut padded = Vec::with_capacity(len + 2 * pad);
    padded.extend((1..=pad).rev().map(|i| x[i]));
    padded.extend_from_slice(&x);
    padded.extend((0..pad).map(|i| x[len - 2 - i]));

    let window: Vec<f64> = (0..N_FFT)
        .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
        .collect();
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
    let mut frame = fft.make_input_vec();
    let mut spectrum = fft.make_output_vec();
    let mut scratch = fft.make_scratch_vec();
    let mut power = vec![0f64; N_BINS];
    let filters = filters();
    let mut mel = vec![0f64; N_MELS * N_FRAMES];
    for t in 0..N_FRAMES {
        let start = t * HOP;
        for (i, f) in frame.iter_mut().enumerate() {
            *f = padded[start + i] * window[i];
        }
        // The lengths come from the plan itself: this cannot fail.
        if fft
            .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
            .is_err()
        {
            continue;
        }
        for (p, c) in power.iter_mut().zip(&spectrum) {
            *p = c.norm_sqr();
        }
        for (m, f) in filters.iter().enumerate() {
            let e: f64 = f
                .weights
                .iter()
                .zip(&power[f.first..])
                .map(|(w, p)| w * p)
                .sum();
            mel[m * N_FRAMES + t] = e.max(1e-10).log10();
        }
    }
    let peak = mel.iter().copied().fold(f64::MIN, f64::max);
    mel.iter()
        .map(|&v| ((v.max(peak - 8.0) + 4.0) / 4.0) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_length_gives_the_model_shape() {
        for n in [0usize, 1, 16_000, WINDOW_SAMPLES, WINDOW_SAMPLES + 12_345] {
            let audio: Vec<i16> = (0..n).map(|i| ((i * 37) % 2000) as i16 - 1000).collect();
            let f = log_mel(&audio);
            assert_eq!(f.len(), N_MELS * N_FRAMES, "input of {n} samples");
            assert!(f.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn filters_cover_the_band_and_are_area_normalised() {
        let f = filters();
        assert_eq!(f.len(), N_MELS);
        // Slaney normalisation: each triangle's weights sum to about
        // 2 / (width in Hz) × (bins per Hz)⁻¹ … i.e. roughly constant area.
        assert!(f.iter().all(|x| !x.weights.is_empty()));
        assert!(f.windows(2).all(|w| w[0].first <= w[1].first));
    }
}
