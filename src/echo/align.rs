//! Bulk alignment of the echo canceller's reference with the capture: a
//! holding FIFO between the reference ring and AEC3, released in step with
//! the capture, and a coarse delay estimator that decides how far behind the
//! capture the release runs.
//!
//! Off by default (`COLLOQUY_AEC_ALIGN=on` turns the holding on; off, every
//! sample is released on arrival and only the lag estimate runs): replayed
//! on three PulseAudio recordings (`examples/echo_replay.rs`) it found the
//! lag reliably (correlation 0.86–1.00) but AEC3 converged 5 s later and
//! cancelled no better afterwards, and on a heavily loaded run the
//! reference's arrival jittered by 300–700 ms, more than the held delay.
//!
//! Why it was tried: AEC3 expects its render (reference) frames in step with the capture
//! frames, with the echo at most a few hundred ms behind its render frame.
//! It checks that itself: render buffered more than 8 blocks (32 ms) ahead
//! of the capture for a second is "excess render" and resets its delay
//! estimator, and its render queue silently drops frames past 1 s. On
//! PulseAudio the reference (written when the output callback hands samples
//! to the device) ran 820–1020 ms ahead of the capture; fed all at once, AEC3
//! reset about every 10 s and the residual echo interrupted the bot.
//!
//! How: every reference sample (16 kHz) goes into the FIFO and into an
//! amplitude envelope (one value per 4 ms block). The capture's envelope is
//! kept the same way. Every [`ESTIMATE_EVERY_BLOCKS`] the envelopes are
//! cross-correlated (Pearson, [`WINDOW_BLOCKS`] of capture, lags
//! ±[`MAX_LAG_BLOCKS`]); two estimates in a row that agree give the bulk lag
//! (capture index − reference index of the same sound). The FIFO then
//! releases reference sample `r` when the capture reaches `r + lag −`
//! [`TARGET_DELAY_SAMPLES`], so AEC3 sees the echo [`TARGET_DELAY_SAMPLES`]
//! after its render frame, one render frame per capture frame. The release
//! point moves only when AEC3's view would leave [`MIN_DELAY_SAMPLES`] ..
//! [`MAX_DELAY_SAMPLES`] (drift inside that range is AEC3's own estimator's
//! job), so it rarely disturbs AEC3. Device timestamps are not used: on
//! PulseAudio's ALSA plugin they reported 31 ms for a lead of 900 ms.
//!
//! # Real-time
//! Every buffer is sized in [`RenderAligner::new`]; no lock, no log.
//!
//! # Invariants
//! 1. Reference samples leave the FIFO in the order they came, each once;
//!    when the FIFO is full the oldest are dropped and counted.
//! 2. Until a lag is known, the release point is the capture position plus
//!    [`TARGET_DELAY_SAMPLES`] (the reference and capture timelines taken as
//!    aligned), capped by what has arrived.
//! 3. The release point never passes what has arrived: a late reference is
//!    released as soon as it comes.
//! 4. A lag is accepted only from two consecutive estimates within
//!    [`AGREE_BLOCKS`] of each other, each with a correlation of at least
//!    [`MIN_CORRELATION`] on a window where the reference is active.
//! 5. Disabled (the default), the release point is everything that has
//!    arrived; the lag is still estimated.

/// Samples per envelope block (4 ms at 16 kHz, AEC3's block).
pub const BLOCK: usize = 64;
/// Capture blocks correlated per estimate (3 s).
pub const WINDOW_BLOCKS: usize = 750;
/// Lags searched either way (1.5 s).
pub const MAX_LAG_BLOCKS: i64 = 375;
/// Capture blocks between estimates (0.5 s).
pub const ESTIMATE_EVERY_BLOCKS: u64 = 125;
/// Envelope history kept (blocks): the window, the lags and the lead.
pub const ENV_BLOCKS: usize = 2048;
/// Reference samples the FIFO holds (4 s at 16 kHz).
pub const FIFO_SAMPLES: usize = 16_000 * 4;
/// The echo delay AEC3 is made to see once the lag is known (80 ms).
pub const TARGET_DELAY_SAMPLES: i64 = 16 * 80;
/// Release is moved when AEC3's view of the delay falls under this (24 ms)...
pub const MIN_DELAY_SAMPLES: i64 = 16 * 24;
/// ... or rises over this (320 ms; AEC3's estimator covers about 500 ms).
pub const MAX_DELAY_SAMPLES: i64 = 16 * 320;
/// Least correlation of an estimate (invariant 4).
pub const MIN_CORRELATION: f32 = 0.5;
/// Two estimates agree within this many blocks (invariant 4).
pub const AGREE_BLOCKS: i64 = 2;

/// An amplitude envelope ring: one RMS value per [`BLOCK`] samples.
struct Envelope {
    ring: Vec<f32>,
    blocks: u64,
    acc: f32,
    n: usize,
}

impl Envelope {
    fn new() -> Self {
        Self {
            ring: vec![0.0; ENV_BLOCKS],
            blocks: 0,
            acc: 0.0,
            n: 0,
        }
    }

    fn push(&mut self, samples: &[f32]) {
        for &s in samples {
            self.acc += s * s;
            self.n += 1;
            if self.n == BLOCK {
                self.ring[(self.blocks % ENV_BLOCKS as u64) as usize] =
                    (self.acc / BLOCK as f32).sqrt();
                self.blocks += 1;
                self.acc = 0.0;
                self.n = 0;
            }
        }
    }

    /// Block `b`, if still held.
    fn get(&self, b: i64) -> Option<f32> {
        (b >= 0 && (b as u64) < self.blocks && self.blocks - (b as u64) <= ENV_BLOCKS as u64)
            .then(|| self.ring[(b as u64 % ENV_BLOCKS as u64) as usize])
    }
}

/// One lag estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagEstimate {
    /// Capture block − reference block of the same sound.
    pub lag_blocks: i64,
    /// Pearson correlation of the envelopes at that lag.
    pub correlation: f32,
}

/// The holding FIFO and the bulk-lag estimator (see the module docs).
pub struct RenderAligner {
    fifo: Vec<f32>,
    /// Reference index of the oldest sample held (the next to release).
    head: u64,
    /// Reference samples received so far.
    tail: u64,
    dropped: u64,
    reference: Envelope,
    capture: Envelope,
    /// Capture samples seen so far (16 kHz).
    captured: u64,
    next_estimate: u64,
    /// The release point is `captured + offset` (reference index).
    offset: i64,
    lag: Option<i64>,
    last: Option<LagEstimate>,
    moves: u64,
    window: Vec<f32>,
    /// Release everything on arrival (the default; `COLLOQUY_AEC_ALIGN=on`
    /// turns the holding on, see the module docs for why it is off).
    disabled: bool,
}

impl Default for RenderAligner {
    fn default() -> Self {
        Self::new()
    }
}

impl RenderAligner {
    pub fn new() -> Self {
        Self {
            fifo: vec![0.0; FIFO_SAMPLES],
            head: 0,
            tail: 0,
            dropped: 0,
            reference: Envelope::new(),
            capture: Envelope::new(),
            captured: 0,
            next_estimate: WINDOW_BLOCKS as u64,
            offset: TARGET_DELAY_SAMPLES,
            lag: None,
            last: None,
            moves: 0,
            window: vec![0.0; WINDOW_BLOCKS],
            disabled: false,
        }
    }

    /// The aligner as `COLLOQUY_AEC_ALIGN` says: only `on` holds the
    /// reference back; otherwise every sample is released on arrival (the
    /// lag is still estimated, for the dump).
    pub fn from_env() -> Self {
        let mut a = Self::new();
        a.disabled = !std::env::var("COLLOQUY_AEC_ALIGN").is_ok_and(|v| v == "on");
        a
    }

    /// Reference samples (16 kHz) as they arrive (invariant 1).
    pub fn push_reference(&mut self, samples: &[f32]) {
        self.reference.push(samples);
        for &s in samples {
            if self.tail - self.head == FIFO_SAMPLES as u64 {
                self.head += 1;
                self.dropped += 1;
            }
            self.fifo[(self.tail % FIFO_SAMPLES as u64) as usize] = s;
            self.tail += 1;
        }
    }

    /// A capture frame (16 kHz, before cancelling) is about to be processed:
    /// updates the envelope, re-estimates the lag when due, and returns the
    /// reference index up to which reference may now be released.
    pub fn on_capture(&mut self, samples: &[f32]) -> u64 {
        self.capture.push(samples);
        self.captured += samples.len() as u64;
        if self.capture.blocks >= self.next_estimate {
            self.next_estimate = self.capture.blocks + ESTIMATE_EVERY_BLOCKS;
            if let Some(e) = self.estimate() {
                self.accept(e);
            } else {
                self.last = None;
            }
        }
        self.release_point()
    }

    fn release_point(&self) -> u64 {
        if self.disabled {
            return self.tail;
        }
        // Invariants 2 and 3.
        let want = self.captured as i64 + self.offset;
        (want.max(0) as u64).min(self.tail)
    }

    /// Releases the next `out.len()` reference samples if the release point
    /// allows it (returns false otherwise, leaving `out` untouched).
    pub fn pop_frame(&mut self, until: u64, out: &mut [f32]) -> bool {
        let n = out.len() as u64;
        if self.head + n > until || self.head + n > self.tail {
            return false;
        }
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.fifo[((self.head + i as u64) % FIFO_SAMPLES as u64) as usize];
        }
        self.head += n;
        true
    }

    fn accept(&mut self, e: LagEstimate) {
        let agreed = self
            .last
            .is_some_and(|l| (l.lag_blocks - e.lag_blocks).abs() <= AGREE_BLOCKS);
        self.last = Some(e);
        if !agreed {
            return;
        }
        let lag = e.lag_blocks * BLOCK as i64;
        self.lag = Some(lag);
        // AEC3 sees the echo of reference r (released at capture r - offset)
        // at capture r + lag: a delay of lag + offset.
        let seen = lag + self.offset;
        if !(MIN_DELAY_SAMPLES..=MAX_DELAY_SAMPLES).contains(&seen) {
            self.offset = TARGET_DELAY_SAMPLES - lag;
            self.moves += 1;
        }
    }

    /// Cross-correlates the last [`WINDOW_BLOCKS`] of capture envelope with
    /// the reference envelope over ±[`MAX_LAG_BLOCKS`] (invariant 4).
    pub fn estimate(&mut self) -> Option<LagEstimate> {
        let end = self.capture.blocks as i64;
        let start = end - WINDOW_BLOCKS as i64;
        if start < 0 {
            return None;
        }
        for (i, w) in self.window.iter_mut().enumerate() {
            *w = self.capture.get(start + i as i64)?;
        }
        let n = WINDOW_BLOCKS as f32;
        let cm = self.window.iter().sum::<f32>() / n;
        let mut cv = 0.0f32;
        for w in self.window.iter_mut() {
            *w -= cm;
            cv += *w * *w;
        }
        if cv <= 1e-12 {
            return None;
        }
        let mut best: Option<LagEstimate> = None;
        for lag in -MAX_LAG_BLOCKS..=MAX_LAG_BLOCKS {
            let r0 = start - lag;
            if self.reference.get(r0).is_none() || self.reference.get(r0 + n as i64 - 1).is_none() {
                continue;
            }
            let (mut s, mut ss, mut sx) = (0.0f32, 0.0f32, 0.0f32);
            for (i, &w) in self.window.iter().enumerate() {
                let r = self.reference.ring[((r0 + i as i64) as u64 % ENV_BLOCKS as u64) as usize];
                s += r;
                ss += r * r;
                sx += r * w;
            }
            let rv = ss - s * s / n;
            // An inactive reference (silence: the bot is not talking).
            if rv <= 1e-6 * n {
                continue;
            }
            let c = sx / (rv * cv).sqrt();
            if best.is_none_or(|b| c > b.correlation) {
                best = Some(LagEstimate {
                    lag_blocks: lag,
                    correlation: c,
                });
            }
        }
        best.filter(|b| b.correlation >= MIN_CORRELATION)
    }

    /// The accepted bulk lag (samples: capture index − reference index), if any.
    pub fn lag_samples(&self) -> Option<i64> {
        self.lag
    }

    /// How many times the release point was moved.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Reference samples dropped because the FIFO was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Reference samples held (arrived, not released).
    pub fn held(&self) -> u64 {
        self.tail - self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A speech-like test signal: noise bursts of varying length and level.
    fn bursts(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.max(1);
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as f32 / u32::MAX as f32
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let len = 800 + (rnd() * 6000.0) as usize;
            let amp = if rnd() < 0.3 { 0.0 } else { 0.05 + rnd() * 0.3 };
            for _ in 0..len {
                out.push((rnd() * 2.0 - 1.0) * amp);
            }
        }
        out.truncate(n);
        out
    }

    /// The reference runs `lead` samples ahead of the capture (arrives that
    /// much earlier); the echo is the reference `room` samples later. The
    /// aligner must find it and release so AEC3 sees about the target delay.
    fn run(lead: usize, room: usize) -> (RenderAligner, i64) {
        let secs = 8;
        let reference = bursts(16_000 * secs + lead, 7);
        let mut a = RenderAligner::new();
        a.push_reference(&reference[..lead]);
        let mut released = 0u64;
        let mut seen = 0i64;
        let mut frame = [0.0f32; 160];
        for k in 0..(16_000 * secs / 320) {
            let c0 = k * 320;
            a.push_reference(&reference[lead + c0..lead + c0 + 320]);
            // Capture index c holds the reference index c + lead - room.
            let cap: Vec<f32> = (c0..c0 + 320)
                .map(|c| {
                    let r = (c + lead) as i64 - room as i64;
                    if r >= 0 {
                        reference[r as usize] * 0.5
                    } else {
                        0.0
                    }
                })
                .collect();
            let until = a.on_capture(&cap);
            while a.pop_frame(until, &mut frame) {
                released += 160;
            }
            // The delay AEC3 sees (to a 10 ms frame and the lag's 4 ms
            // blocks): the capture end holds reference
            // (c0 + 320 + lead - room); released covers up to `released`.
            seen = released as i64 - ((c0 + 320 + lead) as i64 - room as i64);
        }
        (a, seen)
    }

    #[test]
    fn a_reference_far_ahead_is_held_back_to_the_target_delay() {
        let (a, seen) = run(16 * 900, 16 * 60);
        let lag = a.lag_samples().expect("a lag");
        assert!(
            (lag + 16 * 840).abs() <= 2 * BLOCK as i64,
            "lag {} ms",
            lag / 16
        );
        assert!(
            (seen - TARGET_DELAY_SAMPLES).abs() <= 3 * BLOCK as i64 + 160,
            "AEC3 sees {} ms",
            seen / 16
        );
        assert_eq!(a.moves(), 1);
        assert_eq!(a.dropped(), 0);
    }

    #[test]
    fn an_aligned_reference_is_left_where_it_is() {
        let (a, seen) = run(0, 16 * 60);
        assert!(a.lag_samples().is_some());
        assert_eq!(a.moves(), 0, "a delay in range moved the release point");
        assert!(
            (16 * 50..=16 * 150).contains(&seen),
            "AEC3 sees {} ms",
            seen / 16
        );
    }

    #[test]
    fn without_an_echo_no_lag_is_accepted() {
        let mut a = RenderAligner::new();
        let reference = bursts(16_000 * 6, 3);
        let other = bursts(16_000 * 6, 99);
        for k in 0..(16_000 * 6 / 320) {
            a.push_reference(&reference[k * 320..(k + 1) * 320]);
            a.on_capture(&other[k * 320..(k + 1) * 320]);
        }
        assert_eq!(a.lag_samples(), None);
    }

    #[test]
    fn a_full_fifo_drops_the_oldest_and_counts_them() {
        let mut a = RenderAligner::new();
        a.push_reference(&vec![0.1; FIFO_SAMPLES + 100]);
        assert_eq!(a.dropped(), 100);
        assert_eq!(a.held(), FIFO_SAMPLES as u64);
    }
}
