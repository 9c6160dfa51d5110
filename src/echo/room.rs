//! A virtual room for tests and benchmarks: the bot's speaker looped into its
//! microphone through a simulated echo path, with a real [`Session`] in the
//! loop, on the virtual clock (no devices, no wall time).
//!
//! Each 20 ms step does what `colloquy run` does on devices, in the same
//! order: the real output callback body ([`OutputCallback`], which also fills
//! the echo canceller's reference ring) plays the session's output; the echo
//! path (a delay, a gain, early reflections and a decaying tail: a sparse
//! impulse response) turns it into echo; the microphone hears echo + the
//! user's voice + a noise floor; the session processes that frame (echo
//! control → VAD → turn detector → coordinator).
//!
//! The user's voice is placed on the session timeline (a prompt at a fixed
//! time, and optionally a second voice a fixed time after the bot started
//! speaking, at a level relative to the echo), so barge-in latency is read
//! from event timestamps on the same clock, deterministically.
//!
//! # Invariants
//! 1. Sample `n` of the microphone is session sample `n` (16 kHz in and out,
//!    one frame per step), so event times and voice onsets compare directly.
//! 2. The reference of a step is pushed before the session processes that
//!    step's microphone frame (the device order: the output callback runs
//!    before its echo is captured).
//! 3. Everything is deterministic: the tail and the noise come from fixed
//!    seeds, agents answer at zero cost (`CostMode::Zero`, `Pacing::Charged`).

use super::EchoMode;
use crate::agent::{Agent, CostMode, Payload, Reporter, TurnJob};
use crate::audio::{input_ring, output_ring};
use crate::frame::{Event, TimedEvent, FRAME_SAMPLES, SAMPLE_RATE};
use crate::session::{Pacing, Session, SessionConfig};
use crate::transport::local::callback::{CallbackShared, OutputCallback};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The echo path from the speaker to the microphone.
#[derive(Clone, Debug, PartialEq)]
pub struct Room {
    /// Direct-path delay (ms): device buffers + distance.
    pub delay_ms: f32,
    /// Direct-path gain (dB); 0 = the microphone hears the speaker at the
    /// level it was played (the worst case of the issue).
    pub gain_db: f32,
    /// Length of the reverberant tail after the direct path (ms).
    pub tail_ms: f32,
    /// Level of the tail's first taps relative to the direct path (dB); the
    /// tail decays by 60 dB over `tail_ms`.
    pub tail_db: f32,
    /// Microphone noise floor (dBFS, white).
    pub noise_dbfs: f32,
}

impl Room {
    /// A laptop-like room: `delay_ms` of delay, full-level direct path, two
    /// early reflections and a 200 ms tail, noise at -60 dBFS.
    pub fn typical(delay_ms: f32) -> Self {
        Self {
            delay_ms,
            gain_db: 0.0,
            tail_ms: 200.0,
            tail_db: -12.0,
            noise_dbfs: -60.0,
        }
    }

    /// The sparse impulse response: (delay in samples, gain).
    pub fn taps(&self) -> Vec<(usize, f32)> {
        let per_ms = SAMPLE_RATE as f32 / 1000.0;
        let d0 = (self.delay_ms * per_ms) as usize;
        let g0 = db_to_gain(self.gain_db);
        let mut taps = vec![(d0, g0)];
        // Two early reflections (walls, desk).
        taps.push((d0 + (7.0 * per_ms) as usize, -g0 * db_to_gain(-6.0)));
        taps.push((d0 + (13.0 * per_ms) as usize, g0 * db_to_gain(-9.0)));
        // A decaying tail: one tap every ~2.5 ms, random sign and jitter.
        let mut rng = XorShift(0x5eed_1234);
        let step = 2.5 * per_ms;
        let n = (self.tail_ms * per_ms / step) as usize;
        for k in 0..n {
            let t = 15.0 * per_ms + k as f32 * step + rng.unit() * step * 0.5;
            let decay_db = self.tail_db - 60.0 * (k as f32 / n.max(1) as f32);
            let sign = if rng.unit() > 0.0 { 1.0 } else { -1.0 };
            taps.push((d0 + t as usize, sign * g0 * db_to_gain(decay_db)));
        }
        taps
    }

    /// The echo of a whole clip (offline; for level calibration).
    pub fn echo_of(&self, played: &[f32]) -> Vec<f32> {
        let mut path = EchoPath::new(self);
        played.iter().map(|&x| path.push(x)).collect()
    }
}

/// A streaming sparse FIR filter over the played samples.
pub struct EchoPath {
    taps: Vec<(usize, f32)>,
    history: Vec<f32>,
    pos: usize,
}

impl EchoPath {
    pub fn new(room: &Room) -> Self {
        let taps = room.taps();
        let len = taps.iter().map(|(d, _)| d + 1).max().unwrap_or(1);
        Self {
            taps,
            history: vec![0.0; len],
            pos: 0,
        }
    }

    /// Plays one sample; returns the echo sample the microphone hears now.
    pub fn push(&mut self, x: f32) -> f32 {
        let n = self.history.len();
        self.history[self.pos] = x;
        let y = self
            .taps
            .iter()
            .map(|&(d, g)| g * self.history[(self.pos + n - d) % n])
            .sum();
        self.pos = (self.pos + 1) % n;
        y
    }
}

/// An agent that answers every turn with the same recording (a "scripted
/// stage": the reply's length and level do not depend on what was heard).
pub struct ClipAgent {
    clip: Arc<[i16]>,
}

impl ClipAgent {
    pub fn new(clip: Vec<i16>) -> Self {
        Self { clip: clip.into() }
    }
}

impl Agent for ClipAgent {
    fn name(&self) -> &str {
        "clip"
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        if job.cancel.is_cancelled() {
            return;
        }
        if reporter.send(Payload::Speech {
            text: "(clip) a long reply".to_string(),
            audio: self.clip.clone(),
        }) {
            reporter.send(Payload::Done);
        }
    }

    fn transcribes(&self) -> bool {
        false
    }
}

/// A second voice that starts while the bot speaks.
#[derive(Clone, Debug)]
pub struct Barge {
    /// The voice (16 kHz mono).
    pub clip: Vec<i16>,
    /// When it starts, after the bot's first sample (ms).
    pub after_bot_ms: u64,
    /// Its level relative to the echo at the microphone (dB; -12 = 12 dB
    /// below), both measured on their active 20 ms frames; without an echo
    /// path, relative to the reply as played.
    pub level_db: f32,
}

/// One run in the virtual room.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub mode: EchoMode,
    /// `None`: no echo path (headphones).
    pub room: Option<Room>,
    /// What the user says first (16 kHz mono), at `prompt_at_ms`.
    pub prompt: Vec<i16>,
    pub prompt_at_ms: u64,
    /// The bot's reply to every turn.
    pub reply: Vec<i16>,
    pub barge: Option<Barge>,
    /// Session time at which the run stops (ms).
    pub until_ms: u64,
    pub config: SessionConfig,
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub events: Vec<TimedEvent>,
    /// What the microphone heard (16 kHz).
    pub mic: Vec<f32>,
    /// What the speaker played (16 kHz).
    pub played: Vec<f32>,
    /// The bot's first sample (session ms).
    pub bot_started_ms: Option<u64>,
    /// The second voice's onset at the microphone (session ms).
    pub barge_onset_ms: Option<u64>,
    /// Active level of the echo of the reply at the microphone (dBFS).
    pub echo_dbfs: f32,
    /// Echo backend counters at the end.
    pub echo: super::EchoStats,
}

impl Outcome {
    pub fn count(&self, kind: &str) -> usize {
        self.events
            .iter()
            .filter(|e| e.event.kind() == kind)
            .count()
    }

    /// Session time of the first event of `kind`.
    pub fn first(&self, kind: &str) -> Option<u64> {
        self.events
            .iter()
            .find(|e| e.event.kind() == kind)
            .map(|e| e.t_ms)
    }

    /// From the second voice's onset to the bot's interruption (ms).
    pub fn barge_in_ms(&self) -> Option<u64> {
        let onset = self.barge_onset_ms?;
        self.events
            .iter()
            .find(|e| matches!(e.event, Event::Interrupted { .. }) && e.t_ms >= onset)
            .map(|e| e.t_ms - onset)
    }
}

/// Runs a scenario (see the module docs).
pub fn run(s: &Scenario) -> Outcome {
    let mut config = s.config.clone();
    config.input_rate = SAMPLE_RATE;
    config.input_channels = 1;
    config.output_rate = SAMPLE_RATE;
    config.pacing = Pacing::Charged;
    config.cost_mode = CostMode::Zero;
    let agent: Arc<dyn Agent> = Arc::new(ClipAgent::new(s.reply.clone()));
    let (mut in_prod, in_cons) = input_ring(FRAME_SAMPLES * 64);
    let (out_prod, out_cons) = output_ring(SAMPLE_RATE as usize);
    let mut session = match Session::new(config, agent, in_cons, out_prod) {
        Ok(s) => s,
        Err(e) => panic!("virtual room session: {e}"),
    };
    let (echo, reference) = match s.mode.build(SAMPLE_RATE, 2.0) {
        Ok(b) => b,
        Err(e) => panic!("virtual room echo backend: {e}"),
    };
    session.set_echo(echo);
    let shared = Arc::new(CallbackShared::default());
    let mut speaker = OutputCallback::new(out_cons, 1, shared.clone()).with_reference(reference);
    let mut path = s.room.as_ref().map(EchoPath::new);

    let reply_f: Vec<f32> = s.reply.iter().map(|&v| v as f32 / 32768.0).collect();
    let echo_dbfs = s
        .room
        .as_ref()
        .map(|r| active_dbfs(&r.echo_of(&reply_f)))
        .unwrap_or(f32::NEG_INFINITY);
    let level_ref = if echo_dbfs.is_finite() {
        echo_dbfs
    } else {
        active_dbfs(&reply_f)
    };
    // The user's voice on the session timeline: (start sample, samples).
    let mut voices: Vec<(u64, Vec<f32>)> = vec![(
        s.prompt_at_ms * SAMPLE_RATE as u64 / 1000,
        s.prompt.iter().map(|&v| v as f32 / 32768.0).collect(),
    )];
    let noise_amp = s
        .room
        .as_ref()
        .map(|r| db_to_gain(r.noise_dbfs) * 3f32.sqrt())
        .unwrap_or(db_to_gain(-60.0) * 3f32.sqrt());
    let mut rng = XorShift(0xC0FFEE);

    let mut out = Outcome {
        echo_dbfs,
        ..Outcome::default()
    };
    let mut played = [0.0f32; FRAME_SAMPLES];
    let mut mic = [0.0f32; FRAME_SAMPLES];
    let end = s.until_ms * SAMPLE_RATE as u64 / 1000;
    let mut t = 0u64;
    while t < end {
        // Invariant 2: the speaker (and the reference ring) first.
        speaker.process(&mut played[..]);
        for (i, m) in mic.iter_mut().enumerate() {
            let n = t + i as u64;
            let echo = path.as_mut().map_or(0.0, |p| p.push(played[i]));
            let voice: f32 = voices
                .iter()
                .filter_map(|(at, v)| n.checked_sub(*at).and_then(|k| v.get(k as usize)))
                .sum();
            *m = echo + voice + rng.unit() * noise_amp;
        }
        out.played.extend_from_slice(&played);
        out.mic.extend_from_slice(&mic);
        in_prod.push(&mic);
        session.set_playback_level(shared.take_playback_level());
        let next_ms = (t + FRAME_SAMPLES as u64) * 1000 / SAMPLE_RATE as u64;
        session.settle(next_ms);
        session.process(|_| {});
        shared
            .bot_speaking
            .store(session.coordinator().bot_speaking(), Ordering::Release);
        for e in session.drain_events() {
            if matches!(e.event, Event::BotStartedSpeaking { .. }) && out.bot_started_ms.is_none() {
                out.bot_started_ms = Some(e.t_ms);
                if let Some(b) = &s.barge {
                    let clip: Vec<f32> = b.clip.iter().map(|&v| v as f32 / 32768.0).collect();
                    let gain = db_to_gain(level_ref + b.level_db - active_dbfs(&clip));
                    let clip: Vec<f32> = clip.iter().map(|v| v * gain).collect();
                    let at = (e.t_ms + b.after_bot_ms) * SAMPLE_RATE as u64 / 1000;
                    let onset = onset_samples(&clip) as u64;
                    out.barge_onset_ms = Some((at + onset) * 1000 / SAMPLE_RATE as u64);
                    voices.push((at, clip));
                }
            }
            out.events.push(e);
        }
        t += FRAME_SAMPLES as u64;
    }
    session.shutdown();
    out.events.extend(session.drain_events());
    out.echo = session.echo_stats().1;
    out
}

pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}

/// Level of the active part of a signal (dBFS): the mean power of its 20 ms
/// frames within 40 dB of the loudest one.
pub fn active_dbfs(x: &[f32]) -> f32 {
    let powers: Vec<f32> = x
        .chunks(FRAME_SAMPLES)
        .map(|c| c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32)
        .collect();
    let peak = powers.iter().copied().fold(0.0f32, f32::max);
    let active: Vec<f32> = powers
        .into_iter()
        .filter(|&p| p > peak * 1e-4 && p > 0.0)
        .collect();
    if active.is_empty() {
        return f32::NEG_INFINITY;
    }
    10.0 * (active.iter().sum::<f32>() / active.len() as f32).log10()
}

/// Where a voice starts: the first 20 ms frame within 30 dB of its loudest.
pub fn onset_samples(x: &[f32]) -> usize {
    let powers: Vec<f32> = x
        .chunks(FRAME_SAMPLES)
        .map(|c| c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32)
        .collect();
    let peak = powers.iter().copied().fold(0.0f32, f32::max);
    powers.iter().position(|&p| p > peak * 1e-3).unwrap_or(0) * FRAME_SAMPLES
}

/// A small deterministic generator (invariant 3).
struct XorShift(u32);

impl XorShift {
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        (x as f32 / u32::MAX as f32) * 2.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_echo_path_delays_and_scales_the_played_signal() {
        let room = Room {
            tail_ms: 0.0,
            gain_db: -6.0,
            ..Room::typical(30.0)
        };
        let mut x = vec![0.0f32; 2000];
        x[0] = 1.0;
        let y = room.echo_of(&x);
        let d = 30 * 16;
        assert!((y[d] - db_to_gain(-6.0)).abs() < 1e-6);
        assert!(y[..d].iter().all(|&v| v == 0.0), "echo before its delay");
        assert!(active_dbfs(&[0.5; 640]) > -7.0 && active_dbfs(&[0.5; 640]) < -5.0);
    }
}
