//! The bodies of the device callbacks: they only move samples between the
//! device buffer and the lock-free rings, and publish a few counters.
//!
//! Kept apart from `cpal` so they can be benchmarked (`benches/local_callback.rs`)
//! and tested without a sound card: the cpal closures in `mod.rs` call
//! [`InputCallback::process`] and [`OutputCallback::process`] and nothing else.
//!
//! # Real-time
//! Both `process` methods take no lock, allocate nothing, never block and never
//! log: scratch buffers are sized up front ([`SCRATCH_FRAMES`]) and a device
//! buffer larger than the scratch is handled in chunks.
//!
//! # Invariants
//! 1. Every input sample the device delivers is either pushed into the input
//!    ring or counted as an overrun (by the ring).
//! 2. Every output frame is filled: the ring's mono sample duplicated into all
//!    device channels, or silence when the ring is empty.
//! 3. An underrun is counted only for a gap inside a reply: silence played
//!    while the bot is speaking, after the reply's audio started and before
//!    more of it followed. The silence after a reply's last sample is not one.
//! 4. `playback_level` holds the loudest per-callback mean square played since
//!    the driver last took it (an f32 stored as bits; for non-negative floats
//!    the bit order is the numeric order, so `fetch_max` works).
//! 5. With a reference ring (`--echo aec`), every mono sample the output
//!    callback hands to the device — silence included — is pushed into it in
//!    play order (or counted as an overrun by the ring), so the echo
//!    canceller's reference is what was really played.
//! 6. When the device's playback timestamps show that it played silence
//!    between two callbacks (the process was late: an underrun in the audio
//!    server, which no callback sees), that silence is pushed into the
//!    reference too, so the reference keeps the device's timeline and the
//!    echo delay the canceller tracks stays constant. Jumps over
//!    [`GAP_TOLERANCE_NS`] are filled, at most one second per callback.

use crate::audio::{InputProducer, OutputConsumer};
use crate::echo::ReferenceProducer;
use cpal::{FromSample, Sample};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Frames converted or played per chunk (scratch size, fixed up front).
pub const SCRATCH_FRAMES: usize = 8192;

/// Playback-timestamp jitter tolerated before a jump counts as a gap (ns).
pub const GAP_TOLERANCE_NS: u64 = 8_000_000;

/// State shared between the driver and the callbacks.
#[derive(Debug, Default)]
pub struct CallbackShared {
    /// Set by the input callback at its first non-empty buffer.
    pub capture_started: AtomicBool,
    /// Input callbacks run so far.
    pub input_callbacks: AtomicU64,
    /// Output callbacks run so far.
    pub output_callbacks: AtomicU64,
    /// Input frames (one sample per channel) delivered by the device so far.
    pub input_frames: AtomicU64,
    /// Output frames handed to the device so far.
    pub output_frames: AtomicU64,
    /// Frames of silence the device played between callbacks (its playback
    /// timestamps jumped: an underrun below us), filled into the reference
    /// (invariant 6).
    pub output_gap_frames: AtomicU64,
    /// Set by the driver while the coordinator says the bot is speaking.
    pub bot_speaking: AtomicBool,
    /// Invariant 4: loudest playback mean square since the driver took it.
    pub playback_level: AtomicU32,
    /// Output latency the device reported at its last callback (µs: from
    /// the callback to the playback of its first sample).
    pub output_latency_us: AtomicU64,
    /// Input latency the device reported at its last callback (µs: from the
    /// capture of its first sample to the callback).
    pub input_latency_us: AtomicU64,
}

impl CallbackShared {
    /// Takes the loudest playback level since the last call (invariant 4).
    pub fn take_playback_level(&self) -> f32 {
        f32::from_bits(self.playback_level.swap(0, Ordering::AcqRel))
    }

    /// The devices' last reported output + input latency (ms).
    pub fn device_latency_ms(&self) -> u32 {
        let us = self.output_latency_us.load(Ordering::Relaxed)
            + self.input_latency_us.load(Ordering::Relaxed);
        (us / 1000).min(u32::MAX as u64) as u32
    }
}

/// The input callback body: device samples (interleaved, any format) into the
/// input ring as f32.
pub struct InputCallback {
    producer: InputProducer,
    scratch: Vec<f32>,
    channels: usize,
    shared: Arc<CallbackShared>,
}

impl InputCallback {
    pub fn new(producer: InputProducer, channels: u16, shared: Arc<CallbackShared>) -> Self {
        Self {
            producer,
            scratch: vec![0.0; SCRATCH_FRAMES * channels.max(1) as usize],
            channels: channels.max(1) as usize,
            shared,
        }
    }

    /// Pushes `data` into the ring (holds invariant 1). Real-time safe.
    pub fn process<T>(&mut self, data: &[T])
    where
        T: Sample,
        f32: FromSample<T>,
    {
        self.shared.input_callbacks.fetch_add(1, Ordering::Relaxed);
        if data.is_empty() {
            return;
        }
        self.shared
            .input_frames
            .fetch_add((data.len() / self.channels) as u64, Ordering::Relaxed);
        for chunk in data.chunks(self.scratch.len()) {
            let out = &mut self.scratch[..chunk.len()];
            for (o, &s) in out.iter_mut().zip(chunk) {
                *o = f32::from_sample_(s);
            }
            self.producer.push(out);
        }
        if !self.shared.capture_started.load(Ordering::Relaxed) {
            self.shared.capture_started.store(true, Ordering::Release);
        }
    }

    /// Records the latency the device reported for this callback. Real-time safe.
    pub fn note_latency(&self, latency: std::time::Duration) {
        self.shared
            .input_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// The f32 fast path (no conversion). Real-time safe.
    pub fn process_f32(&mut self, data: &[f32]) {
        self.shared.input_callbacks.fetch_add(1, Ordering::Relaxed);
        if data.is_empty() {
            return;
        }
        self.shared
            .input_frames
            .fetch_add((data.len() / self.channels) as u64, Ordering::Relaxed);
        self.producer.push(data);
        if !self.shared.capture_started.load(Ordering::Relaxed) {
            self.shared.capture_started.store(true, Ordering::Release);
        }
    }
}

/// The output callback body: mono f32 from the output ring into every device
/// channel, in the device's sample format.
pub struct OutputCallback {
    consumer: OutputConsumer,
    mono: Vec<f32>,
    channels: usize,
    shared: Arc<CallbackShared>,
    /// Reply audio was played since the bot started speaking (invariant 3).
    heard: bool,
    /// Silence played inside the current reply, not yet known to be a gap.
    pending_gap: u64,
    /// The echo canceller's reference ring (invariant 5).
    reference: Option<ReferenceProducer>,
    /// Silence for the gap fill (sized up front).
    zeros: Vec<f32>,
    /// Output rate (Hz) for the playback-timestamp continuity (invariant 6).
    rate: u64,
    /// When the next callback's first frame should play (ns on the stream's
    /// clock), if the stream kept up.
    next_play_ns: Option<u64>,
}

impl OutputCallback {
    pub fn new(consumer: OutputConsumer, channels: u16, shared: Arc<CallbackShared>) -> Self {
        Self {
            consumer,
            mono: vec![0.0; SCRATCH_FRAMES],
            channels: channels.max(1) as usize,
            shared,
            heard: false,
            pending_gap: 0,
            reference: None,
            zeros: vec![0.0; SCRATCH_FRAMES],
            rate: 0,
            next_play_ns: None,
        }
    }

    /// The output rate (Hz): enables the gap fill of invariant 6.
    pub fn with_rate(mut self, rate: u32) -> Self {
        self.rate = rate as u64;
        self
    }

    /// The device's playback instant (ns) of the first frame of the buffer
    /// about to be filled with `samples` interleaved samples, called before
    /// [`Self::process`]: a jump past where the previous buffer ended by more
    /// than [`GAP_TOLERANCE_NS`] is silence the device played (an underrun
    /// below us); that many zeros go into the reference first (invariant 6).
    /// Real-time safe.
    pub fn note_playback(&mut self, playback_ns: u64, samples: usize) {
        if self.rate == 0 {
            return;
        }
        let frames = (samples / self.channels) as u64;
        let mut base = playback_ns;
        if let Some(expected) = self.next_play_ns {
            if playback_ns > expected + GAP_TOLERANCE_NS {
                let gap = ((playback_ns - expected) * self.rate / 1_000_000_000).min(self.rate);
                self.shared
                    .output_gap_frames
                    .fetch_add(gap, Ordering::Relaxed);
                if let Some(reference) = self.reference.as_mut() {
                    let mut left = gap as usize;
                    while left > 0 {
                        let n = left.min(self.zeros.len());
                        reference.push(&self.zeros[..n]);
                        left -= n;
                    }
                }
            } else {
                // Early or within the tolerance: the stream's own frame count
                // stays the clock (never pulled back).
                base = base.max(expected);
            }
        }
        self.next_play_ns = Some(base + frames * 1_000_000_000 / self.rate);
    }

    /// Forgets the playback clock: the next buffer starts a new timeline
    /// (a reopened stream has a clock of its own; streams.rs invariant 2).
    pub fn restart_clock(&mut self) {
        self.next_play_ns = None;
    }

    /// Also pushes everything played into `reference` (invariant 5).
    pub fn with_reference(mut self, reference: Option<ReferenceProducer>) -> Self {
        self.reference = reference;
        self
    }

    /// Records the latency the device reported for this callback. Real-time safe.
    pub fn note_latency(&self, latency: std::time::Duration) {
        self.shared
            .output_latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Fills `data` (holds invariants 2–4). Real-time safe.
    pub fn process<T>(&mut self, data: &mut [T])
    where
        T: Sample + FromSample<f32>,
    {
        self.shared.output_callbacks.fetch_add(1, Ordering::Relaxed);
        self.shared
            .output_frames
            .fetch_add((data.len() / self.channels) as u64, Ordering::Relaxed);
        let speaking = self.shared.bot_speaking.load(Ordering::Acquire);
        if !speaking {
            self.heard = false;
            self.pending_gap = 0;
        }
        let ch = self.channels;
        let mut loudest = 0.0f32;
        for chunk in data.chunks_mut(self.mono.len() * ch) {
            let frames = chunk.len() / ch;
            let mono = &mut self.mono[..frames];
            let got = self.consumer.read(mono);
            if let Some(reference) = self.reference.as_mut() {
                // Invariant 5: the played samples, silence after `got` included.
                reference.push(mono);
            }
            let mut sum = 0.0f32;
            for (frame, &s) in chunk.chunks_exact_mut(ch).zip(mono.iter()) {
                sum += s * s;
                let v = T::from_sample_(s);
                for slot in frame {
                    *slot = v;
                }
            }
            // A trailing partial frame (a device buffer not a multiple of the
            // channel count) stays silent.
            for slot in chunk[frames * ch..].iter_mut() {
                *slot = T::EQUILIBRIUM;
            }
            if frames > 0 {
                loudest = loudest.max(sum / frames as f32);
            }
            if speaking {
                if got > 0 {
                    if self.heard && self.pending_gap > 0 {
                        self.consumer.note_underrun(self.pending_gap as usize);
                    }
                    self.pending_gap = 0;
                    self.heard = true;
                }
                if self.heard && got < frames {
                    self.pending_gap += (frames - got) as u64;
                }
            }
        }
        if loudest > 0.0 {
            self.shared
                .playback_level
                .fetch_max(loudest.to_bits(), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{input_ring, output_ring};

    #[test]
    fn input_converts_any_format_into_the_ring_and_marks_capture_started() {
        let (p, mut c) = input_ring(64);
        let shared = Arc::new(CallbackShared::default());
        let mut cb = InputCallback::new(p, 2, shared.clone());
        assert!(!shared.capture_started.load(Ordering::Acquire));
        cb.process::<i16>(&[16384, -16384, 0, 32767]);
        assert!(shared.capture_started.load(Ordering::Acquire));
        let mut out = [0.0f32; 8];
        assert_eq!(c.pop(&mut out), 4);
        assert_eq!(out[0], 0.5);
        assert_eq!(out[1], -0.5);
        assert!((out[3] - 1.0).abs() < 1e-4);
    }

    #[test]
    fn input_larger_than_the_scratch_is_pushed_in_chunks() {
        let n = SCRATCH_FRAMES * 2 + 17;
        let (p, c) = input_ring(n);
        let mut cb = InputCallback::new(p, 1, Arc::new(CallbackShared::default()));
        cb.process::<i16>(&vec![100; n]);
        assert_eq!(c.available(), n);
    }

    #[test]
    fn output_duplicates_mono_into_every_channel_then_silence() {
        let (mut p, c) = output_ring(64);
        let shared = Arc::new(CallbackShared::default());
        let mut cb = OutputCallback::new(c, 2, shared.clone());
        p.write(&[0.5, -0.25]);
        let mut data = [1i16; 6];
        cb.process(&mut data);
        assert_eq!(data, [16384, 16384, -8192, -8192, 0, 0]);
        let level = shared.take_playback_level();
        assert!((level - (0.25 + 0.0625) / 3.0).abs() < 1e-6, "{level}");
        assert_eq!(shared.take_playback_level(), 0.0);
    }

    #[test]
    fn underruns_count_only_gaps_inside_a_reply() {
        let (mut p, c) = output_ring(1024);
        let stats = p.stats().clone();
        let shared = Arc::new(CallbackShared::default());
        let mut cb = OutputCallback::new(c, 1, shared.clone());
        let mut buf = [0.0f32; 100];
        // Speaking, but the reply's audio has not arrived yet: not a gap.
        shared.bot_speaking.store(true, Ordering::Release);
        cb.process(&mut buf);
        // 60 samples of reply, then 40 of silence, then the reply goes on:
        // the 40 (and the next 100 silent) samples were a gap.
        p.write(&[0.1; 60]);
        cb.process(&mut buf);
        cb.process(&mut buf);
        p.write(&[0.1; 100]);
        cb.process(&mut buf);
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 140);
        // The reply ends: trailing silence is not a gap.
        cb.process(&mut buf);
        shared.bot_speaking.store(false, Ordering::Release);
        cb.process(&mut buf);
        assert_eq!(stats.underruns.load(Ordering::Relaxed), 140);
    }

    #[test]
    fn the_reference_ring_gets_exactly_what_was_played() {
        let (mut p, c) = output_ring(1024);
        let (rp, mut rc) = input_ring(1024);
        let mut cb =
            OutputCallback::new(c, 2, Arc::new(CallbackShared::default())).with_reference(Some(rp));
        p.write(&[0.5, -0.25, 0.125]);
        let mut data = [0.0f32; 10];
        cb.process(&mut data);
        p.write(&[0.75]);
        let mut data = [0i16; 4];
        cb.process(&mut data);
        let mut got = [9.0f32; 16];
        assert_eq!(rc.pop(&mut got), 7, "one reference sample per played frame");
        assert_eq!(&got[..7], &[0.5, -0.25, 0.125, 0.0, 0.0, 0.75, 0.0]);
    }

    #[test]
    fn silence_the_device_played_between_callbacks_goes_into_the_reference() {
        let (mut p, c) = output_ring(1024);
        let (rp, mut rc) = input_ring(4096);
        let shared = Arc::new(CallbackShared::default());
        let mut cb = OutputCallback::new(c, 1, shared.clone())
            .with_reference(Some(rp))
            .with_rate(1000);
        let mut buf = [0.0f32; 10];
        // 10 frames at 1 kHz = 10 ms per callback; the second on time, the
        // third 3 ms late (jitter, ignored), the fourth 50 ms late (a gap).
        for (at_ms, expect_gap) in [(0u64, 0u64), (10, 0), (23, 0), (80, 47)] {
            p.write(&[0.5; 10]);
            cb.note_playback(at_ms * 1_000_000, buf.len());
            cb.process(&mut buf);
            assert_eq!(
                shared.output_gap_frames.load(Ordering::Relaxed),
                expect_gap,
                "at {at_ms} ms"
            );
        }
        let mut got = vec![9.0f32; 4096];
        let n = rc.pop(&mut got);
        assert_eq!(n, 40 + 47, "played frames plus the gap");
        assert!(got[30..77].iter().all(|&s| s == 0.0), "the gap is silence");
        assert!(got[77..87].iter().all(|&s| s == 0.5));
    }

    #[test]
    fn a_flush_takes_effect_within_one_callback() {
        let (mut p, c) = output_ring(1024);
        let mut cb = OutputCallback::new(c, 2, Arc::new(CallbackShared::default()));
        p.write(&[0.5; 500]);
        let mut buf = [0.0f32; 64];
        cb.process(&mut buf);
        assert!(buf.iter().all(|&s| s == 0.5));
        p.flush();
        cb.process(&mut buf);
        assert!(buf.iter().all(|&s| s == 0.0), "flushed audio was played");
    }
}
