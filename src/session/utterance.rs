//! Captures the user's utterance audio for STT: a pre-roll ring that always
//! holds the last few hundred ms, and a capture buffer filled while the user
//! speaks.
//!
//! # Real-time
//! `push` copies one frame into buffers sized at construction; it allocates
//! nothing (the capture buffer stops growing at its capacity).
//!
//! # Invariants
//! 1. `take(start, end)` returns exactly the samples from `start` to `end`
//!    that are still held (pre-roll included), in order.

/// Pre-roll ring plus capture buffer.
pub struct UtteranceBuffer {
    preroll: Vec<i16>,
    preroll_pos: usize,
    preroll_filled: usize,
    capture: Vec<i16>,
    capture_cap: usize,
    /// Sample index of `capture[0]`.
    capture_start: u64,
    capturing: bool,
    /// Sample index after the last pushed sample.
    pos: u64,
}

impl UtteranceBuffer {
    pub fn new(preroll_samples: usize, max_samples: usize) -> Self {
        Self {
            preroll: vec![0; preroll_samples.max(1)],
            preroll_pos: 0,
            preroll_filled: 0,
            capture: Vec::with_capacity(max_samples + preroll_samples),
            capture_cap: max_samples + preroll_samples,
            capture_start: 0,
            capturing: false,
            pos: 0,
        }
    }

    /// Adds one frame; `speech` keeps capturing. Real-time safe.
    pub fn push(&mut self, samples: &[i16], speech: bool) {
        if self.capturing || speech {
            if !self.capturing {
                self.begin_capture();
            }
            let room = self.capture_cap - self.capture.len();
            self.capture
                .extend_from_slice(&samples[..samples.len().min(room)]);
        }
        for &s in samples {
            self.preroll[self.preroll_pos] = s;
            self.preroll_pos = (self.preroll_pos + 1) % self.preroll.len();
        }
        self.preroll_filled = (self.preroll_filled + samples.len()).min(self.preroll.len());
        self.pos += samples.len() as u64;
    }

    fn begin_capture(&mut self) {
        self.capture.clear();
        // Copy the pre-roll (oldest first) as the start of the capture.
        let n = self.preroll_filled;
        let len = self.preroll.len();
        for i in 0..n {
            let idx = (self.preroll_pos + len - n + i) % len;
            self.capture.push(self.preroll[idx]);
        }
        self.capture_start = self.pos - n as u64;
        self.capturing = true;
    }

    /// Notes that speech started at sample `at` (capture is already running).
    pub fn mark_start(&mut self, _at: u64) {
        if !self.capturing {
            self.begin_capture();
        }
    }

    /// Copies samples `start..end` (holds invariant 1); capture goes on.
    /// Allocates: called once per pause, never per frame.
    pub fn copy(&self, start: u64, end: u64) -> Vec<i16> {
        let from = start.saturating_sub(self.capture_start) as usize;
        let to = (end.saturating_sub(self.capture_start) as usize).min(self.capture.len());
        if from < to {
            self.capture[from..to].to_vec()
        } else {
            Vec::new()
        }
    }

    /// Returns samples `start..end` (holds invariant 1) and stops capturing.
    pub fn take(&mut self, start: u64, end: u64) -> Vec<i16> {
        let from = start.saturating_sub(self.capture_start) as usize;
        let to = (end.saturating_sub(self.capture_start) as usize).min(self.capture.len());
        let out = if from < to {
            self.capture[from..to].to_vec()
        } else {
            Vec::new()
        };
        self.capture.clear();
        self.capturing = false;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_the_exact_range_including_preroll() {
        let mut u = UtteranceBuffer::new(640, 16_000);
        let frame = |v: i16| [v; 320];
        for i in 0..5 {
            u.push(&frame(i), false);
        }
        // Speech confirmed in frame 5; it began at frame 4 (sample 1280).
        u.push(&frame(5), true);
        u.push(&frame(6), true);
        let got = u.take(1280, 7 * 320);
        assert_eq!(got.len(), 3 * 320);
        assert_eq!(got[0], 4);
        assert_eq!(got[320], 5);
        assert_eq!(got[959], 6);
    }
}
