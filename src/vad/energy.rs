//! Adaptive energy VAD: speech when a frame's level is well above a tracked
//! noise floor. A baseline to compare the real VADs against, and a fallback.
//!
//! # Invariants
//! 1. The noise floor only rises slowly (time constant ≈ 2 s) and falls fast,
//!    so steady noise is learned and speech onsets are not.

use super::Vad;
use crate::frame::AudioFrame;

/// Energy-threshold backend.
pub struct EnergyVad {
    floor_db: f32,
}

const MIN_FLOOR_DB: f32 = -70.0;
/// Speech must be this far above the floor.
const MARGIN_DB: f32 = 12.0;
/// And above this absolute level.
const ABS_DB: f32 = -45.0;

impl EnergyVad {
    pub fn new() -> Self {
        Self {
            floor_db: MIN_FLOOR_DB,
        }
    }
}

impl Default for EnergyVad {
    fn default() -> Self {
        Self::new()
    }
}

impl Vad for EnergyVad {
    fn name(&self) -> &'static str {
        "energy"
    }

    fn speech_probability(&mut self, frame: &AudioFrame) -> f32 {
        let db = 20.0 * frame.rms().max(1e-6).log10();
        // Holds invariant 1: fast down, slow up.
        if db < self.floor_db {
            self.floor_db = 0.7 * self.floor_db + 0.3 * db;
        } else {
            self.floor_db += (db - self.floor_db) * 0.01;
        }
        self.floor_db = self.floor_db.max(MIN_FLOOR_DB);
        let above = db - self.floor_db.max(MIN_FLOOR_DB);
        if db > ABS_DB && above > MARGIN_DB {
            1.0
        } else {
            0.0
        }
    }

    fn reset(&mut self) {
        self.floor_db = MIN_FLOOR_DB;
    }
}
