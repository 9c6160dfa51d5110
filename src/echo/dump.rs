//! A diagnostic recorder for the echo canceller: with
//! `COLLOQUY_ECHO_DUMP=<dir>` set, `--echo aec` records what AEC3 was given
//! and what it returned, and writes it to `<dir>` when the canceller is
//! dropped (the end of the run):
//! - `capture_in.raw`, `capture_out.raw`: the microphone at 16 kHz before
//!   and after the canceller (s16le mono);
//! - `render.raw`: the reference at 16 kHz in the order it arrived (s16le);
//! - `frames.csv`: one line per 20 ms capture frame: its session sample, the
//!   reference samples arrived so far, AEC3's ERLE/ERL estimates and delay,
//!   whether the convergence guard judged the frame, the devices' reported
//!   latency, the aligner's bulk lag and the reference it held (align.rs);
//! - `clock.csv` (written by the local transport's driver once a second):
//!   wall seconds since start, input and output frames the devices
//!   exchanged, their reported latencies (µs), xruns, session ms, and the
//!   output gap frames filled into the reference (callback.rs invariant 6).
//!
//! `cargo run --release --example echo_replay -- <dir>` prints, per second,
//! how far the reference ran ahead of the capture, AEC3's estimates and the
//! echo reduction on the recording.
//!
//! # Real-time
//! Every buffer is reserved when the recorder is made (`MAX_SECS` of audio);
//! past that, recording stops: nothing allocates on the processing thread.
//!
//! # Invariants
//! 1. Without the variable, no recorder exists and nothing is recorded.
//! 2. Frames are recorded whole: a frame that does not fit ends the
//!    recording (the files stay consistent).

use std::io::Write;
use std::path::PathBuf;

/// Longest recording (seconds of capture).
pub const MAX_SECS: usize = 240;

/// One capture frame's line in `frames.csv`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameNote {
    pub start: u64,
    pub render_fed: u64,
    pub erle_db: f64,
    pub erl_db: f64,
    pub delay_ms: i32,
    pub guarded: bool,
    /// The devices' reported output + input latency (ms).
    pub hint_ms: u32,
    /// The aligner's bulk lag (ms, capture − reference; `i32::MIN`: none yet).
    pub lag_ms: i32,
    /// Reference samples held by the aligner (arrived, not yet fed to AEC3).
    pub held: u64,
}

/// The recorder (see the module docs).
pub struct EchoDump {
    dir: PathBuf,
    capture_in: Vec<i16>,
    capture_out: Vec<i16>,
    render: Vec<i16>,
    frames: Vec<FrameNote>,
    full: bool,
}

impl EchoDump {
    /// A recorder if `COLLOQUY_ECHO_DUMP` names a directory (invariant 1).
    pub fn from_env() -> Option<Box<Self>> {
        let dir = std::env::var_os("COLLOQUY_ECHO_DUMP")?;
        let n = 16_000 * MAX_SECS;
        Some(Box::new(Self {
            dir: PathBuf::from(dir),
            capture_in: Vec::with_capacity(n),
            capture_out: Vec::with_capacity(n),
            render: Vec::with_capacity(n + 16_000 * 4),
            frames: Vec::with_capacity(n / 320 + 1),
            full: false,
        }))
    }

    fn fits(&mut self, extra_capture: usize, extra_render: usize) -> bool {
        if self.full
            || self.capture_in.len() + extra_capture > self.capture_in.capacity()
            || self.render.len() + extra_render > self.render.capacity()
            || self.frames.len() == self.frames.capacity()
        {
            self.full = true;
        }
        !self.full
    }

    /// Reference samples as fed to AEC3.
    pub fn render(&mut self, samples: &[f32]) {
        if self.fits(0, samples.len()) {
            self.render.extend(
                samples
                    .iter()
                    .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16),
            );
        }
    }

    /// One capture frame before (`input`) and after (`output`) the canceller
    /// (invariant 2).
    pub fn frame(&mut self, input: &[i16], output: &[i16], note: FrameNote) {
        if self.fits(input.len(), 0) {
            self.capture_in.extend_from_slice(input);
            self.capture_out.extend_from_slice(output);
            self.frames.push(note);
        }
    }

    /// The last frame was judged by the convergence guard.
    pub fn mark_guarded(&mut self) {
        if let Some(f) = self.frames.last_mut() {
            f.guarded = true;
        }
    }

    /// Render samples recorded so far.
    pub fn render_len(&self) -> u64 {
        self.render.len() as u64
    }

    fn write(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let raw = |name: &str, x: &[i16]| -> std::io::Result<()> {
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(self.dir.join(name), bytes)
        };
        raw("capture_in.raw", &self.capture_in)?;
        raw("capture_out.raw", &self.capture_out)?;
        raw("render.raw", &self.render)?;
        let mut csv = std::io::BufWriter::new(std::fs::File::create(self.dir.join("frames.csv"))?);
        writeln!(
            csv,
            "start,render_fed,erle_db,erl_db,delay_ms,guarded,hint_ms,lag_ms,held"
        )?;
        for f in &self.frames {
            writeln!(
                csv,
                "{},{},{:.2},{:.2},{},{},{},{},{}",
                f.start,
                f.render_fed,
                f.erle_db,
                f.erl_db,
                f.delay_ms,
                f.guarded as u8,
                f.hint_ms,
                f.lag_ms,
                f.held
            )?;
        }
        csv.flush()
    }
}

impl Drop for EchoDump {
    fn drop(&mut self) {
        if let Err(e) = self.write() {
            eprintln!(
                "colloquy: cannot write the echo dump to {}: {e}; check COLLOQUY_ECHO_DUMP",
                self.dir.display()
            );
        }
    }
}
