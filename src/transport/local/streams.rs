//! Opening the device streams, and reopening the output stream when the host
//! broke it under us.
//!
//! PulseAudio's ALSA plugin can leave an output stream in a state it never
//! leaves: cpal's worker reports the same I/O error (`snd_pcm_avail_delay`)
//! on every pass and never calls back again. The microphone still works and
//! the device is still there, so the run should go on: the driver drops the
//! broken stream and opens a new one on the same device, with the same
//! callback state (the output ring, the echo canceller's reference ring, the
//! counters), and the reply goes on playing.
//!
//! # Invariants
//! 1. The output callback's state outlives its stream: it lives in a
//!    [`Homing`] inside the stream's closure, which sends it back on a
//!    bounded channel when the closure is dropped (when the stream is
//!    dropped, or its worker thread ends). That happens on the thread that
//!    drops the stream, never inside a data callback.
//! 2. A reopened stream plays from the same ring and feeds the same
//!    reference; its playback clock restarts
//!    ([`OutputCallback::restart_clock`]), so the time between the two
//!    streams is not filled as a gap.
//! 3. Dropping a broken stream is bounded in time ([`CLOSE_WAIT`]): a stream
//!    whose close hangs is left behind and the reopen fails; the run then
//!    stops as for a lost device.

use super::callback::{InputCallback, OutputCallback};
use super::{device_name, Direction, LocalError};
use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::SampleFormat;
use crossbeam_channel::{Receiver, Sender};
use std::time::Duration;

/// Longest wait for a stream to close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);

pub type ErrorTx = crossbeam_channel::Sender<(Direction, cpal::Error)>;

pub fn error_callback(dir: Direction, tx: ErrorTx) -> impl FnMut(cpal::Error) + Send + 'static {
    // Holds mod.rs invariant 1: never blocks; a full channel drops the error
    // (the first ones already tell the story).
    move |e| {
        let _ = tx.try_send((dir, e));
    }
}

/// A value that goes back to its owner when dropped (invariant 1).
pub struct Homing<T> {
    inner: Option<T>,
    home: Sender<T>,
}

impl<T> Homing<T> {
    pub fn new(value: T, home: Sender<T>) -> Self {
        Self {
            inner: Some(value),
            home,
        }
    }

    /// The value (always there until the drop).
    pub fn get(&mut self) -> Option<&mut T> {
        self.inner.as_mut()
    }
}

impl<T> Drop for Homing<T> {
    fn drop(&mut self) {
        if let Some(v) = self.inner.take() {
            // The channel holds one value and only this one is in flight:
            // never full. A receiver that is gone (the run ended) drops it.
            let _ = self.home.try_send(v);
        }
    }
}

macro_rules! build_input {
    ($device:expr, $config:expr, $cb:expr, $err:expr, $($fmt:ident => $t:ty),*) => {
        match $config.sample_format() {
            SampleFormat::F32 => {
                let mut cb = $cb;
                $device.build_input_stream::<f32, _, _>(
                    $config.config(),
                    move |data: &[f32], info: &cpal::InputCallbackInfo| {
                        let t = info.timestamp();
                        cb.note_latency(t.callback.duration_since(t.capture));
                        cb.process_f32(data)
                    },
                    $err,
                    None,
                )
            }
            $(SampleFormat::$fmt => {
                let mut cb = $cb;
                $device.build_input_stream::<$t, _, _>(
                    $config.config(),
                    move |data: &[$t], info: &cpal::InputCallbackInfo| {
                        let t = info.timestamp();
                        cb.note_latency(t.callback.duration_since(t.capture));
                        cb.process(data)
                    },
                    $err,
                    None,
                )
            })*
            other => return Err(LocalError::Format {
                dir: Direction::Input,
                device: device_name(&$device),
                format: other,
            }),
        }
    };
}

macro_rules! build_output {
    ($device:expr, $config:expr, $cb:expr, $err:expr, $($fmt:ident => $t:ty),*) => {
        match $config.sample_format() {
            $(SampleFormat::$fmt => {
                let mut homing = $cb;
                $device.build_output_stream::<$t, _, _>(
                    $config.config(),
                    move |data: &mut [$t], info: &cpal::OutputCallbackInfo| {
                        if let Some(cb) = homing.get() {
                            let t = info.timestamp();
                            cb.note_latency(t.playback.duration_since(t.callback));
                            cb.note_playback(t.playback.as_nanos() as u64, data.len());
                            cb.process(data)
                        }
                    },
                    $err,
                    None,
                )
            })*
            other => return Err(LocalError::Format {
                dir: Direction::Output,
                device: device_name(&$device),
                format: other,
            }),
        }
    };
}

/// Opens and starts the input stream.
pub fn open_input(
    device: &cpal::Device,
    config: &cpal::SupportedStreamConfig,
    cb: InputCallback,
    err_tx: ErrorTx,
) -> Result<cpal::Stream, LocalError> {
    let name = device_name(device);
    let stream = build_input!(
        device, config, cb, error_callback(Direction::Input, err_tx),
        I16 => i16, I32 => i32, U16 => u16, U8 => u8, I8 => i8, F64 => f64
    )
    .map_err(|cause| LocalError::Open {
        dir: Direction::Input,
        device: name.clone(),
        cause,
    })?;
    stream.play().map_err(|cause| LocalError::Open {
        dir: Direction::Input,
        device: name,
        cause,
    })?;
    Ok(stream)
}

/// The output stream, which can be reopened with the same callback state.
pub struct OutputStream {
    device: cpal::Device,
    config: cpal::SupportedStreamConfig,
    err_tx: ErrorTx,
    stream: Option<cpal::Stream>,
    home_tx: Sender<OutputCallback>,
    home: Receiver<OutputCallback>,
    /// Streams reopened so far.
    pub reopens: u64,
}

impl OutputStream {
    /// Opens and starts the output stream with `cb`.
    pub fn open(
        device: cpal::Device,
        config: cpal::SupportedStreamConfig,
        cb: OutputCallback,
        err_tx: ErrorTx,
    ) -> Result<Self, LocalError> {
        let (home_tx, home) = crossbeam_channel::bounded(1);
        let mut out = Self {
            device,
            config,
            err_tx,
            stream: None,
            home_tx,
            home,
            reopens: 0,
        };
        out.start(cb)?;
        Ok(out)
    }

    fn start(&mut self, cb: OutputCallback) -> Result<(), LocalError> {
        let name = device_name(&self.device);
        let homing = Homing::new(cb, self.home_tx.clone());
        let (device, config) = (&self.device, &self.config);
        let stream = build_output!(
            device, config, homing, error_callback(Direction::Output, self.err_tx.clone()),
            F32 => f32, I16 => i16, I32 => i32, U16 => u16, U8 => u8, I8 => i8, F64 => f64
        )
        .map_err(|cause| LocalError::Open {
            dir: Direction::Output,
            device: name.clone(),
            cause,
        })?;
        stream.play().map_err(|cause| LocalError::Open {
            dir: Direction::Output,
            device: name,
            cause,
        })?;
        self.stream = Some(stream);
        Ok(())
    }

    /// Drops the (broken) stream and opens a new one on the same device with
    /// the same callback state (invariants 1–3). The error says why not.
    pub fn reopen(&mut self) -> Result<(), String> {
        if let Some(old) = self.stream.take() {
            close_bounded(vec![old]).map_err(|e| format!("the broken stream {e}"))?;
        }
        let mut cb = self
            .home
            .recv_timeout(CLOSE_WAIT)
            .map_err(|_| "the broken stream kept its callback".to_string())?;
        cb.restart_clock();
        self.reopens += 1;
        self.start(cb).map_err(|e| e.to_string())
    }

    /// The running stream, for the final close.
    pub fn into_stream(self) -> Option<cpal::Stream> {
        self.stream
    }
}

/// Drops `streams` on a helper thread and waits at most [`CLOSE_WAIT`]: a
/// dead device can hang the backend's worker, which dropping a stream joins.
pub fn close_bounded(streams: Vec<cpal::Stream>) -> Result<(), String> {
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("close-audio".into())
        .spawn(move || {
            drop(streams);
            let _ = done_tx.send(());
        })
        .map_err(|e| format!("could not be closed: {e}"))?;
    done_rx.recv_timeout(CLOSE_WAIT).map_err(|_| {
        format!(
            "did not close within {} s; left behind",
            CLOSE_WAIT.as_secs()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_homing_value_comes_back_when_its_holder_is_dropped() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut h = Homing::new(String::from("state"), tx);
        if let Some(s) = h.get() {
            s.push('!');
        }
        let holder = move || drop(h);
        assert!(rx.try_recv().is_err(), "not before the drop");
        holder();
        assert_eq!(rx.try_recv().as_deref(), Ok("state!"));
    }
}
