//! Echo control on the capture side of a session: what keeps the bot from
//! hearing (and answering, or interrupting) itself when the speaker and the
//! microphone share a room.
//!
//! One trait, [`EchoControl`], sits between the input frames and the VAD
//! (`Session::process_frame`): a backend may clean the frame in place
//! ([`EchoControl::process`]) and may veto the VAD's speech probability
//! ([`EchoControl::gate`]). Backends, one a file:
//! - [`aec`]: an acoustic echo canceller (WebRTC AEC3, the `aec3` crate)
//!   fed with what the output callback really played (a reference ring);
//! - [`gate`]: the energy gate (no cancelling: a frame counts as speech only
//!   if clearly louder than the expected echo);
//! - [`off`]: nothing (headphones, replays).
//!
//! [`room`] is a virtual room (a simulated echo path around a real session)
//! for the tests and benchmarks.
//!
//! [`EchoMode`] is the user's choice (`colloquy run --echo aec|gate|off`);
//! [`EchoMode::build`] makes the backend and, for `aec`, the producer end of
//! the reference ring that the output callback fills.
//!
//! # Real-time
//! `process`, `gate` and `set_playback_level` are called once per 20 ms frame
//! on the session's processing thread (never in a device callback): they take
//! no lock, never log or await. The reference ring's producer
//! ([`ReferenceProducer`]) is written from the output callback: lock-free and
//! allocation-free (`audio/ring.rs`).
//!
//! # Invariants
//! 1. `process` keeps the frame's position (`start`) and length: only the
//!    samples change, so the session timeline is the same in every mode.
//! 2. A backend never makes a frame louder than it came in by more than
//!    rounding (no gain control: AEC3's AGC2 is not used).
//! 3. Until a backend is armed (gate: a playback level; aec: a reference
//!    sample) frames and probabilities pass unchanged, so replays and
//!    transports that play nothing are unaffected.

pub mod aec;
pub mod align;
pub mod dump;
pub mod gate;
pub mod off;
pub mod room;

pub use aec::{Aec3Canceller, AecError};
pub use gate::EchoGate;
pub use off::EchoOff;

use crate::audio::{input_ring, InputProducer};
use crate::frame::AudioFrame;

/// The producer end of the reference ring: mono `f32` at the output device's
/// rate, exactly the samples the output callback played (silence included).
pub type ReferenceProducer = InputProducer;

/// Counters and estimates a backend reports (for the run summary and events).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EchoStats {
    /// Frames whose speech probability was forced to zero (gate).
    pub rejected: u64,
    /// Frames cleaned by a canceller.
    pub processed: u64,
    /// The canceller's echo return loss enhancement estimate (dB), if any.
    pub erle_db: Option<f64>,
    /// The canceller's delay estimate between reference and echo (ms), if any.
    pub delay_ms: Option<i32>,
    /// Reference samples dropped (the processing side fell behind).
    pub reference_overruns: u64,
}

impl EchoStats {
    /// One line for the run summary, e.g. `echo aec: ERLE 24.3 dB, delay 84 ms`.
    pub fn summary(&self, mode: EchoMode) -> String {
        match mode {
            EchoMode::Off => "echo off".to_string(),
            EchoMode::Gate => format!("echo gate: {} frames gated", self.rejected),
            EchoMode::Aec => {
                let mut s = format!(
                    "echo aec: {} frames cleaned ({} gated while it converged)",
                    self.processed, self.rejected
                );
                if let (Some(erle), Some(delay)) = (self.erle_db, self.delay_ms) {
                    s.push_str(&format!(", ERLE estimate {erle:.1} dB, delay {delay} ms"));
                }
                if self.reference_overruns > 0 {
                    s.push_str(&format!(
                        ", {} reference samples dropped",
                        self.reference_overruns
                    ));
                }
                s
            }
        }
    }
}

/// One echo-control backend (see the module docs).
pub trait EchoControl: Send {
    /// Short name (`aec`, `gate`, `off`) for logs and summaries.
    fn name(&self) -> &'static str;

    /// Cleans one capture frame in place, before the VAD (invariant 1).
    fn process(&mut self, _frame: &mut AudioFrame) {}

    /// The speech probability to use for the (processed) frame.
    fn gate(&mut self, p: f32, _frame: &AudioFrame) -> f32 {
        p
    }

    /// The loudest playback energy (mean square, full scale 1.0) since the
    /// last call, at session sample `now` (the gate uses it).
    fn set_playback_level(&mut self, _now: u64, _mean_square: f32) {}

    /// The devices' reported output + input latency (ms): a starting point
    /// for a canceller's delay estimation.
    fn set_device_latency_ms(&mut self, _ms: u32) {}

    /// Counters and estimates so far.
    fn stats(&self) -> EchoStats;
}

/// What to do about the bot's echo (`colloquy run --echo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EchoMode {
    /// Acoustic echo cancellation (AEC3) with the played audio as reference:
    /// for a speaker; you can interrupt at normal loudness.
    #[default]
    Aec,
    /// Energy gate: speech must be louder than the expected echo to count.
    Gate,
    /// Nothing (headphones).
    Off,
}

impl EchoMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EchoMode::Aec => "aec",
            EchoMode::Gate => "gate",
            EchoMode::Off => "off",
        }
    }

    /// The mode from `--echo` and the older `--no-echo-gate` (an alias of
    /// `off`); both given and disagreeing is an error naming the flags.
    pub fn from_flags(echo: Option<EchoMode>, no_echo_gate: bool) -> Result<EchoMode, String> {
        match (echo, no_echo_gate) {
            (Some(m), true) if m != EchoMode::Off => Err(format!(
                "--no-echo-gate means --echo off, but --echo {} was given; keep one of them",
                m.as_str()
            )),
            (_, true) => Ok(EchoMode::Off),
            (Some(m), false) => Ok(m),
            (None, false) => Ok(EchoMode::default()),
        }
    }

    /// Builds the backend for a transport playing at `output_rate` Hz. For
    /// `aec` it also returns the reference ring's producer, holding
    /// `reference_secs` of audio, for the output callback to fill.
    pub fn build(
        self,
        output_rate: u32,
        reference_secs: f32,
    ) -> Result<(Box<dyn EchoControl>, Option<ReferenceProducer>), AecError> {
        Ok(match self {
            EchoMode::Off => (Box::new(EchoOff), None),
            EchoMode::Gate => (Box::new(EchoGate::new()), None),
            EchoMode::Aec => {
                let capacity = (output_rate as f32 * reference_secs.max(0.1)) as usize;
                let (producer, consumer) = input_ring(capacity);
                let aec = Aec3Canceller::new(consumer, output_rate)?;
                (Box::new(aec), Some(producer))
            }
        })
    }
}

impl std::fmt::Display for EchoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_old_flag_is_an_alias_of_off_and_conflicts_are_errors() {
        assert_eq!(EchoMode::from_flags(None, false), Ok(EchoMode::Aec));
        assert_eq!(EchoMode::from_flags(None, true), Ok(EchoMode::Off));
        assert_eq!(
            EchoMode::from_flags(Some(EchoMode::Off), true),
            Ok(EchoMode::Off)
        );
        assert_eq!(
            EchoMode::from_flags(Some(EchoMode::Gate), false),
            Ok(EchoMode::Gate)
        );
        let e = EchoMode::from_flags(Some(EchoMode::Aec), true).unwrap_err();
        assert!(
            e.contains("--no-echo-gate") && e.contains("--echo aec"),
            "{e}"
        );
    }

    #[test]
    fn every_mode_builds_and_only_aec_wants_a_reference() {
        for (mode, name, wants) in [
            (EchoMode::Aec, "aec", true),
            (EchoMode::Gate, "gate", false),
            (EchoMode::Off, "off", false),
        ] {
            let (backend, reference) = mode.build(48_000, 2.0).expect("build");
            assert_eq!(backend.name(), name);
            assert_eq!(reference.is_some(), wants, "{name}");
        }
    }
}
