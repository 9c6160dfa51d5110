//! The acoustic echo canceller backend: WebRTC's AEC3 (the pure-Rust `aec3`
//! crate) on 16 kHz mono, 10 ms frames, with what the output callback really
//! played as its reference.
//!
//! Data flow (`colloquy run --echo aec`):
//! ```text
//! output callback ──(mono f32 at the device rate, silence included)──▶ reference ring
//! session thread: reference ring ─▶ resample to 16 kHz ─▶ aligner (FIFO) ─▶ 10 ms render frames ─▶ AEC3
//!                 20 ms capture frame ─▶ 2 × (release render ─▶ high-pass ─▶ AEC3) ─▶ VAD, STT
//! ```
//! The reference is written when the output callback hands the samples to
//! the device, so it leads its echo by the output latency + the room + the
//! input latency (about 900 ms on PulseAudio's ALSA plugin). By default the
//! aligner ([`super::align`]) releases every reference sample as it arrives
//! (render frames before each capture frame, the order `aec3`'s examples
//! use) and AEC3's own delay estimator finds the delay, seeded with the
//! devices' reported latencies ([`Aec3Canceller::set_device_latency_ms`]).
//! `COLLOQUY_AEC_ALIGN=on` holds the reference back to a bulk lag measured
//! on the signals instead (one render frame per capture frame, the echo
//! about 80 ms behind): tried on PulseAudio recordings, it converged later
//! and did not cancel better, so it is off (docs/devices.md).
//! Capture is not held back: no added latency beyond AEC3's own framing.
//!
//! Only AEC3 runs (linear filter + residual echo suppressor): no noise
//! suppression and no gain control (AGC2 would raise the residual echo and
//! change the user's level before the VAD).
//!
//! Until AEC3 has converged (its fullband ERLE estimate below
//! [`CONVERGED_ERLE_DB`]: the first few hundred ms of the first reply, or
//! after the echo path changed) its residual can be as loud as speech; then
//! the energy gate ([`super::EchoGate`]) judges the cleaned frames against
//! the played level, as `--echo gate` does. Once converged the gate is
//! bypassed and a voice well under the echo gets through.
//!
//! # Real-time
//! Runs on the session's processing thread, never in a device callback: no
//! lock, no log, no await. Not allocation-free: `aec3` clones one small
//! render tensor per 10 ms inside `analyze_render`; every buffer of ours is
//! sized up front.
//!
//! # Invariants
//! 1. Until the first reference sample arrives, capture frames pass unchanged
//!    (holds mod.rs invariant 3).
//! 2. Reference samples are fed in the order played, each at most once;
//!    samples the ring or the aligner dropped (the processing side stalled)
//!    are counted and AEC3 re-estimates the delay.
//! 3. Capture frames keep their timeline position; each 20 ms frame is two
//!    consecutive 10 ms AEC3 frames.
//! 4. The speech probability is vetoed only by the gate and only while AEC3's
//!    ERLE estimate is under [`CONVERGED_ERLE_DB`].
//! 6. With `COLLOQUY_AEC_DISTRUST=on` (off by default: not yet verified on
//!    devices that it keeps a barge-in within 500 ms), when AEC3's delay
//!    estimate moves, the echo path has moved under a
//!    converged filter (its ERLE estimate lags the truth): the next frame
//!    tells AEC3 so (its ERLE estimate restarts) and the gate judges the
//!    cleaned frames for [`DISTRUST_FRAMES`] and until ERLE is back over
//!    [`CONVERGED_ERLE_DB`].
//! 5. Render frames reach AEC3 only before the capture frame whose release
//!    point covers them (align.rs; by default: all arrived).

use super::align::RenderAligner;
use super::dump::{EchoDump, FrameNote};
use super::{EchoControl, EchoGate, EchoStats};
use crate::audio::{EdgeResampler, InputConsumer, ResampleError};
use crate::frame::{AudioFrame, FRAME_SAMPLES, SAMPLE_RATE};
use aec3::api::config::EchoCanceller3Config;
use aec3::api::control::EchoControl as _;
use aec3::audio_processing::aec3::echo_canceller3::EchoCanceller3;
use aec3::audio_processing::audio_buffer::AudioBuffer;
use aec3::audio_processing::high_pass_filter::HighPassFilter;
use aec3::audio_processing::stream_config::StreamConfig;
use std::sync::atomic::Ordering;

/// Samples in one AEC3 frame (10 ms at 16 kHz).
pub const AEC_FRAME: usize = SAMPLE_RATE as usize / 100;

/// AEC3's fullband ERLE estimate (dB) from which the canceller is trusted
/// alone (invariant 4).
pub const CONVERGED_ERLE_DB: f64 = 10.0;

/// Capture frames (20 ms) the energy gate judges the cleaned frames after
/// AEC3's delay estimate moved (invariant 6): 1 s.
pub const DISTRUST_FRAMES: u32 = 50;

/// Why the canceller could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AecError {
    #[error("echo canceller reference at the output device's rate: {0}; pick another output device with --output, or use --echo gate")]
    Reference(#[from] ResampleError),
}

/// `EchoCanceller3` owned by one thread at a time.
///
/// `aec3` 0.4.0 keeps its block processor as `Box<dyn BlockProcessorBackend>`
/// without a `Send` bound, so the canceller is not `Send` although everything
/// it holds is: the only implementor outside `aec3`'s own tests is
/// `BlockProcessor`, which is `Send` (checked at compile time below), and no
/// `Rc` or thread-local state is shared with anything outside the value.
struct SendEc(EchoCanceller3);

// SAFETY: see the type's docs; the value is moved between threads whole and
// used by one thread at a time (`&mut self` methods only).
unsafe impl Send for SendEc {}

const _: fn() = || {
    fn send<T: Send>() {}
    send::<aec3::audio_processing::aec3::block_processor::BlockProcessor>();
    send::<AudioBuffer>();
};

impl std::ops::Deref for SendEc {
    type Target = EchoCanceller3;
    fn deref(&self) -> &EchoCanceller3 {
        &self.0
    }
}

impl std::ops::DerefMut for SendEc {
    fn deref_mut(&mut self) -> &mut EchoCanceller3 {
        &mut self.0
    }
}

/// AEC3 on the capture path (see the module docs).
pub struct Aec3Canceller {
    ec: SendEc,
    render: AudioBuffer,
    capture: AudioBuffer,
    stream: StreamConfig,
    hpf: HighPassFilter,
    /// One channel of 10 ms (the high-pass filter works on `Vec<Vec<f32>>`).
    hpf_buf: Vec<Vec<f32>>,
    out: Vec<f32>,
    reference: InputConsumer,
    resampler: EdgeResampler,
    pop_buf: Vec<f32>,
    /// Holds the reference until its echo is due (align.rs).
    aligner: RenderAligner,
    /// One 10 ms render frame released by the aligner.
    block: Vec<f32>,
    /// One 10 ms capture frame as f32 (the aligner's envelope).
    cap_f32: Vec<f32>,
    armed: bool,
    processed: u64,
    render_frames: u64,
    latency_hint_ms: Option<u32>,
    /// AEC3's delay at the last frame; a change is a path change (invariant 6).
    last_delay_ms: Option<i32>,
    /// The next capture frame tells AEC3 the echo path changed.
    path_changed: bool,
    /// Frames left in which the guard judges regardless of ERLE.
    distrust: u32,
    path_changes: u64,
    /// `COLLOQUY_AEC_DISTRUST=on`: invariant 6 applies (off by default).
    distrust_on_move: bool,
    /// The energy gate on cleaned frames while AEC3 converges (invariant 4).
    guard: EchoGate,
    /// `COLLOQUY_ECHO_DUMP`: what AEC3 was given and returned (dump.rs).
    dump: Option<Box<EchoDump>>,
}

impl Aec3Canceller {
    /// A canceller reading its reference (mono, `reference_rate` Hz) from
    /// `reference`.
    pub fn new(reference: InputConsumer, reference_rate: u32) -> Result<Self, AecError> {
        let resampler = EdgeResampler::new(reference_rate, 1, SAMPLE_RATE)?;
        let rate = SAMPLE_RATE as usize;
        Ok(Self {
            ec: SendEc(EchoCanceller3::new(Self::config(), rate as i32, 1, 1)),
            render: AudioBuffer::from_sample_rates(rate, 1, rate, 1, rate),
            capture: AudioBuffer::from_sample_rates(rate, 1, rate, 1, rate),
            stream: StreamConfig::new(rate, 1, false),
            hpf: HighPassFilter::new(rate as i32, 1),
            hpf_buf: vec![vec![0.0; AEC_FRAME]],
            out: vec![0.0; AEC_FRAME],
            pop_buf: vec![0.0; resampler.chunk_frames() * 4],
            resampler,
            reference,
            aligner: RenderAligner::from_env(),
            block: vec![0.0; AEC_FRAME],
            cap_f32: vec![0.0; AEC_FRAME],
            armed: false,
            processed: 0,
            render_frames: 0,
            latency_hint_ms: None,
            last_delay_ms: None,
            path_changed: false,
            distrust: 0,
            path_changes: 0,
            distrust_on_move: std::env::var("COLLOQUY_AEC_DISTRUST").is_ok_and(|v| v == "on"),
            guard: EchoGate::new(),
            dump: EchoDump::from_env(),
        })
    }

    /// AEC3's defaults (mono, 16 kHz): the delay estimator, linear filter and
    /// suppressor tuned by WebRTC. Kept in one place for the benches.
    pub fn config() -> EchoCanceller3Config {
        EchoCanceller3Config::default()
    }

    /// Whether the cleaned frames are trusted without the energy gate: AEC3
    /// has converged and its delay has not moved in the last
    /// [`DISTRUST_FRAMES`] (invariants 4 and 6).
    pub fn trusted(&self) -> bool {
        self.armed
            && self.distrust == 0
            && self.ec.metrics().echo_return_loss_enhancement >= CONVERGED_ERLE_DB
    }

    /// Times AEC3's delay estimate moved (invariant 6).
    pub fn path_changes(&self) -> u64 {
        self.path_changes
    }

    /// 10 ms render frames fed so far.
    pub fn render_frames(&self) -> u64 {
        self.render_frames
    }

    /// Moves every pending reference sample into the aligner (holds
    /// invariant 2): resampled to 16 kHz, recorded as it arrived.
    fn pull_reference(&mut self) {
        loop {
            let n = self.reference.pop(&mut self.pop_buf);
            if n == 0 {
                break;
            }
            self.armed = true;
            let Self {
                aligner,
                resampler,
                pop_buf,
                dump,
                ..
            } = self;
            resampler.process(&pop_buf[..n], |samples| {
                if let Some(d) = dump.as_mut() {
                    d.render(samples);
                }
                aligner.push_reference(samples);
            });
        }
    }

    /// Feeds AEC3 the reference frames the aligner releases for the capture
    /// frame `samples` (10 ms, before cancelling): in step with the capture,
    /// the echo about `align::TARGET_DELAY_SAMPLES` behind (invariant 5).
    fn feed_render(&mut self, samples: &[i16]) {
        for (o, &s) in self.cap_f32.iter_mut().zip(samples) {
            *o = s as f32 / 32768.0;
        }
        let until = self.aligner.on_capture(&self.cap_f32);
        while self.aligner.pop_frame(until, &mut self.block) {
            self.render.copy_from(&[&self.block[..]], &self.stream);
            self.render.split_into_frequency_bands();
            self.ec.analyze_render(&mut self.render);
            self.render_frames += 1;
        }
    }

    /// One 10 ms capture frame through the high-pass filter and AEC3, in place.
    fn process_10ms(&mut self, samples: &mut [i16]) {
        let x = &mut self.hpf_buf[0];
        for (o, &s) in x.iter_mut().zip(samples.iter()) {
            *o = s as f32 / 32768.0;
        }
        self.hpf.process(&mut self.hpf_buf);
        self.capture
            .copy_from(&[&self.hpf_buf[0][..]], &self.stream);
        self.ec.analyze_capture(&mut self.capture);
        self.capture.split_into_frequency_bands();
        // A pending path change resets AEC3's ERLE estimate (invariant 6).
        let changed = std::mem::take(&mut self.path_changed);
        self.ec.process_capture(&mut self.capture, changed);
        self.capture.merge_frequency_bands();
        self.capture
            .copy_to_stream(&self.stream, &mut [&mut self.out[..]]);
        for (s, &y) in samples.iter_mut().zip(self.out.iter()) {
            *s = (y * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
        }
    }
}

impl EchoControl for Aec3Canceller {
    fn name(&self) -> &'static str {
        "aec"
    }

    fn process(&mut self, frame: &mut AudioFrame) {
        self.pull_reference();
        if !self.armed {
            return; // invariant 1
        }
        let input = self.dump.is_some().then_some(frame.samples);
        // Invariant 3: two consecutive 10 ms frames, positions unchanged.
        for half in frame.samples.chunks_exact_mut(AEC_FRAME) {
            self.feed_render(half);
            self.process_10ms(half);
        }
        self.processed += 1;
        // Invariant 6: a new delay means the echo path moved (on PulseAudio:
        // an underrun shifted the playback by 4–20 ms) while AEC3's ERLE
        // estimate still says converged.
        let delay = self.ec.metrics().delay_ms;
        if self.distrust_on_move && self.last_delay_ms.is_some_and(|d| d != delay) {
            self.path_changed = true;
            self.distrust = DISTRUST_FRAMES;
            self.path_changes += 1;
        } else {
            self.distrust = self.distrust.saturating_sub(1);
        }
        self.last_delay_ms = Some(delay);
        if let (Some(d), Some(input)) = (self.dump.as_mut(), input) {
            let m = self.ec.metrics();
            let note = FrameNote {
                start: frame.start,
                render_fed: d.render_len(),
                erle_db: m.echo_return_loss_enhancement,
                erl_db: m.echo_return_loss,
                delay_ms: m.delay_ms,
                guarded: false,
                hint_ms: self.latency_hint_ms.unwrap_or(0),
                lag_ms: self
                    .aligner
                    .lag_samples()
                    .map_or(i32::MIN, |l| (l / 16) as i32),
                held: self.aligner.held(),
            };
            d.frame(&input, &frame.samples, note);
        }
    }

    fn gate(&mut self, p: f32, frame: &AudioFrame) -> f32 {
        // Invariants 4 and 6.
        if self.trusted() {
            return p;
        }
        if let Some(d) = self.dump.as_mut() {
            d.mark_guarded();
        }
        self.guard.gate(p, frame)
    }

    fn set_playback_level(&mut self, now: u64, mean_square: f32) {
        self.guard.set_playback_level(now, mean_square);
    }

    fn set_device_latency_ms(&mut self, ms: u32) {
        // A seed only: applied by AEC3 at its next delay reset; the matched
        // filters keep estimating. (On PulseAudio the reported latencies,
        // about 31 ms, were far from the reference's real lead, about
        // 900 ms: align.rs measures that lag on the signals.)
        if self.latency_hint_ms != Some(ms) {
            self.latency_hint_ms = Some(ms);
            self.ec.set_audio_buffer_delay(ms.min(500) as i32);
        }
    }

    fn stats(&self) -> EchoStats {
        let armed = self.armed && self.processed > 0;
        let m = armed.then(|| self.ec.metrics());
        EchoStats {
            rejected: self.guard.rejected(),
            processed: self.processed,
            erle_db: m.map(|m| m.echo_return_loss_enhancement),
            delay_ms: m.map(|m| m.delay_ms),
            reference_overruns: self.reference.stats().overruns.load(Ordering::Relaxed)
                + self.aligner.dropped(),
        }
    }
}

// Compile-time check: the frame splits into whole AEC3 frames.
const _: () = assert!(FRAME_SAMPLES % AEC_FRAME == 0);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::input_ring;

    fn noise(n: usize, amp: f32, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x as f32 / u32::MAX as f32) * 2.0 - 1.0) * amp
            })
            .collect()
    }

    fn energy(x: &[i16]) -> f64 {
        x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>()
    }

    #[test]
    fn without_a_reference_frames_pass_unchanged() {
        let (_p, c) = input_ring(48_000);
        let mut aec = Aec3Canceller::new(c, 48_000).expect("build");
        let x = noise(FRAME_SAMPLES, 0.2, 3);
        let mut f = AudioFrame::silent(0);
        for (s, v) in f.samples.iter_mut().zip(&x) {
            *s = (v * 32767.0) as i16;
        }
        let before = f;
        aec.process(&mut f);
        assert!(f == before);
        assert_eq!(aec.stats().processed, 0);
    }

    #[test]
    fn a_delayed_copy_of_the_reference_is_removed() {
        // Echo = the reference delayed 60 ms and 6 dB down; after 3 s the
        // echo must be at least 20 dB quieter than it came in.
        let (mut p, c) = input_ring(16_000 * 30);
        let mut aec = Aec3Canceller::new(c, 16_000).expect("build");
        let secs = 6;
        // Band-limited noise (a crude low-pass) as a speech stand-in.
        let src = noise(16_000 * secs, 0.3, 11);
        let mut lp = 0.0f32;
        let src: Vec<f32> = src
            .iter()
            .map(|&v| {
                lp = 0.7 * lp + 0.3 * v;
                lp
            })
            .collect();
        let delay = 16 * 60;
        let mut start = 0u64;
        let (mut e_in, mut e_out) = (0.0f64, 0.0f64);
        for (i, chunk) in src.chunks_exact(FRAME_SAMPLES).enumerate() {
            p.push(chunk);
            let mut f = AudioFrame::silent(start);
            for (k, s) in f.samples.iter_mut().enumerate() {
                let t = i * FRAME_SAMPLES + k;
                let v = if t >= delay {
                    src[t - delay] * 0.5
                } else {
                    0.0
                };
                *s = (v * 32767.0) as i16;
            }
            let in_e = energy(&f.samples);
            aec.process(&mut f);
            assert_eq!(f.start, start);
            if i * FRAME_SAMPLES >= 16_000 * 3 {
                e_in += in_e;
                e_out += energy(&f.samples);
            }
            start += FRAME_SAMPLES as u64;
        }
        let erle = 10.0 * (e_in / e_out.max(1.0)).log10();
        assert!(erle > 20.0, "echo reduced by only {erle:.1} dB");
        assert!(aec.render_frames() > 0);
    }
}
