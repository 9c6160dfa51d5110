//! The local transport: talk to the agent through the computer's microphone
//! and speaker (`colloquy run`), on `cpal`'s default host.
//!
//! Threads:
//! - the device callbacks (cpal's threads) only move samples between the device
//!   and the lock-free rings ([`callback`]);
//! - the driver (the thread calling [`run`]) pulls input through the
//!   [`Session`] (whose echo stage, `--echo aec`, reads the reference ring
//!   the output callback fills), feeds the echo gate the playback level and
//!   the echo canceller the devices' reported latencies, tells the output
//!   callback whether the bot is speaking, draws the status line, writes the
//!   event log, and reports ring overruns/underruns and device xruns as events;
//! - the device error callbacks only forward errors on a bounded channel.
//!
//! Any device rate and channel count works: the Session's edge resampler takes
//! the input at the device's rate and channels; the Playout writes mono at the
//! output device's rate and the output callback duplicates it into every
//! channel.
//!
//! # Invariants
//! 1. No allocation, lock, blocking call or log inside a data callback
//!    (callback.rs); the error callback only `try_send`s.
//! 2. A stop (signal, `stop` flag) or a device loss (a fatal cpal error, or a
//!    stream without callbacks for `STALL`) ends the run the same way: streams
//!    closed first (on a helper thread, bounded wait: a dead device can hang
//!    the close), then `Session::shutdown`, which commits what was heard, so
//!    committed turns are kept in the report either way.
//!    An output stream that reports an error and stops calling back (or
//!    goes silent for `STALL`) is first reopened on the same device with
//!    the same rings (streams.rs), up to `MAX_REOPENS` times a run; only a
//!    reopen that fails ends the run as a device loss.
//! 3. Counters (overruns, underruns, xruns) never stop the run; they are
//!    reported as `Event::Error` with source `device` at most once a second,
//!    and only when they changed.
//! 4. The driver publishes `bot_speaking` after every `process`, before the
//!    output callback can play audio queued by that `process`.

pub mod callback;
pub mod status;
pub mod streams;

use crate::agent::{Agent, CostMode};
use crate::audio::{input_ring, output_ring};
use crate::echo::{EchoMode, EchoStats};
use crate::frame::{Event, TimedEvent};
use crate::session::{Pacing, Session, SessionConfig, SessionError};
use crate::transport::event_log::EventLog;
use crate::turn::CommittedRound;
use callback::{CallbackShared, InputCallback, OutputCallback};
use cpal::traits::{DeviceTrait, HostTrait};
use cpal::{SampleFormat, StreamConfig};
use status::{StatusLine, StatusModel};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which devices to use and what to write.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// Input device name (or id); `None` = the host's default.
    pub input: Option<String>,
    /// Output device name (or id); `None` = the host's default.
    pub output: Option<String>,
    /// JSONL event log to write.
    pub events: Option<PathBuf>,
    /// Draw the status line (hidden anyway when stderr is not a terminal).
    pub status: bool,
    /// Echo control before the VAD (src/echo/): the canceller (default), the
    /// energy gate, or nothing (headphones only, or to see the bot interrupt
    /// itself).
    pub echo: EchoMode,
    /// Journal to write committed turns to (none: no journal).
    pub journal: Option<PathBuf>,
    /// Resume this journal session: its committed turns are the starting context.
    pub resume: Option<String>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            input: None,
            output: None,
            events: None,
            status: true,
            echo: EchoMode::default(),
            journal: None,
            resume: None,
        }
    }
}

/// Input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// Why the local transport could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("no default {0} device; connect one, or pick one with --{0} (see `colloquy devices`)")]
    NoDefault(Direction),
    #[error("no {dir} device matches {name:?}; `colloquy devices` lists the names")]
    NotFound { dir: Direction, name: String },
    #[error("{dir} device name {name:?} is ambiguous ({matches}); give the full name")]
    Ambiguous {
        dir: Direction,
        name: String,
        matches: String,
    },
    #[error("cannot list audio devices: {0}; is an audio server (PulseAudio, PipeWire) running?")]
    Enumerate(cpal::Error),
    #[error("{dir} device {device:?}: {cause}; try another device with --{dir}")]
    Config {
        dir: Direction,
        device: String,
        cause: cpal::Error,
    },
    #[error("{dir} device {device:?} uses sample format {format}, which colloquy does not handle; pick another device with --{dir}")]
    Format {
        dir: Direction,
        device: String,
        format: SampleFormat,
    },
    #[error("cannot open {dir} device {device:?}: {cause}; is it in use, or unplugged?")]
    Open {
        dir: Direction,
        device: String,
        cause: cpal::Error,
    },
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error(transparent)]
    Echo(#[from] crate::echo::AecError),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot write the event log {path}: {cause}")]
    Events {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The stop flag was set (Ctrl-C, SIGTERM).
    Requested,
    /// The agent hung up (a flow reached a node with `end_call`), after its
    /// goodbye had played.
    CallEnded,
    /// A device failed or disappeared mid-run (message says which and why).
    DeviceLost(String),
}

/// Device counters at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Input samples dropped because the input ring was full.
    pub input_overruns: u64,
    /// Output samples of silence inside a reply (callback.rs invariant 3).
    pub output_underruns: u64,
    /// Xruns the device reported through cpal's error callback.
    pub xruns: u64,
    /// Output samples discarded by barge-in flushes.
    pub flushed: u64,
    /// Non-fatal errors the device reported (the stream went on).
    pub device_errors: u64,
    /// Times the output stream broke and was reopened (streams.rs).
    pub reopens: u64,
}

/// What a run produced.
#[derive(Debug)]
pub struct LocalReport {
    pub stop: StopReason,
    pub input_device: String,
    pub output_device: String,
    pub input_config: StreamConfig,
    pub output_config: StreamConfig,
    pub events: Vec<TimedEvent>,
    pub committed: Vec<CommittedRound>,
    pub counters: DeviceCounters,
    /// Session time at the end (ms).
    pub session_ms: u64,
    /// Frames the echo gate judged to be echo.
    pub echo_rejected: u64,
    /// The echo mode used and its counters (ERLE and delay for `aec`).
    pub echo_mode: EchoMode,
    pub echo: EchoStats,
}

/// One device as `colloquy devices` lists it.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub id: String,
    pub input: Option<String>,
    pub output: Option<String>,
    pub default_input: bool,
    pub default_output: bool,
}

fn device_name(d: &cpal::Device) -> String {
    d.description()
        .map(|desc| desc.name().to_string())
        .or_else(|_| d.id().map(|id| id.id().to_string()))
        .unwrap_or_else(|_| "(unnamed device)".to_string())
}

fn device_id(d: &cpal::Device) -> String {
    d.id().map(|id| id.id().to_string()).unwrap_or_default()
}

fn describe(c: &cpal::SupportedStreamConfig) -> String {
    format!(
        "{} Hz, {} ch, {}",
        c.sample_rate(),
        c.channels(),
        c.sample_format()
    )
}

/// Lists the host's devices with their default formats.
pub fn list_devices() -> Result<Vec<DeviceInfo>, LocalError> {
    let host = cpal::default_host();
    let default_in = host.default_input_device().map(|d| device_id(&d));
    let default_out = host.default_output_device().map(|d| device_id(&d));
    let mut out = Vec::new();
    for d in host.devices().map_err(LocalError::Enumerate)? {
        let id = device_id(&d);
        let input = d.default_input_config().ok().map(|c| describe(&c));
        let output = d.default_output_config().ok().map(|c| describe(&c));
        if input.is_none() && output.is_none() {
            continue;
        }
        out.push(DeviceInfo {
            name: device_name(&d),
            default_input: default_in.as_deref() == Some(id.as_str()) && input.is_some(),
            default_output: default_out.as_deref() == Some(id.as_str()) && output.is_some(),
            id,
            input,
            output,
        });
    }
    Ok(out)
}

/// Finds a device: the default, or the one whose name or id equals `name`,
/// or else the only one containing it (case-insensitive).
fn find_device(
    host: &cpal::Host,
    dir: Direction,
    name: Option<&str>,
) -> Result<cpal::Device, LocalError> {
    let Some(name) = name else {
        return match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or(LocalError::NoDefault(dir));
    };
    let devices: Vec<cpal::Device> = match dir {
        Direction::Input => host
            .input_devices()
            .map_err(LocalError::Enumerate)?
            .collect(),
        Direction::Output => host
            .output_devices()
            .map_err(LocalError::Enumerate)?
            .collect(),
    };
    if let Some(d) = devices
        .iter()
        .find(|d| device_name(d) == name || device_id(d) == name)
    {
        return Ok(d.clone());
    }
    let needle = name.to_lowercase();
    let matches: Vec<&cpal::Device> = devices
        .iter()
        .filter(|d| {
            device_name(d).to_lowercase().contains(&needle)
                || device_id(d).to_lowercase().contains(&needle)
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(LocalError::NotFound {
            dir,
            name: name.to_string(),
        }),
        many => Err(LocalError::Ambiguous {
            dir,
            name: name.to_string(),
            matches: many
                .iter()
                .map(|d| device_name(d))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// How often counters are checked and reported (invariant 3).
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A stream without a callback for this long is dead (watchdog).
const STALL: Duration = Duration::from_secs(3);
/// An output stream silent this long after an error is reopened.
const REOPEN_AFTER: Duration = Duration::from_millis(250);
/// Reopens allowed in one run; after that a broken output ends the run.
const MAX_REOPENS: u64 = 10;
/// Extra time allowed for the first output callback.
const STARTUP: Duration = Duration::from_secs(5);

/// Errors after which a stream does not recover: stop the run.
fn is_fatal(kind: cpal::ErrorKind) -> bool {
    matches!(
        kind,
        cpal::ErrorKind::DeviceNotAvailable
            | cpal::ErrorKind::HostUnavailable
            | cpal::ErrorKind::StreamInvalidated
            | cpal::ErrorKind::PermissionDenied
    )
}

/// Driver tick: how long the driver sleeps between passes.
const TICK: Duration = Duration::from_millis(5);

/// Runs a conversation on the devices until `stop` is set or a device fails.
///
/// `config`'s input/output formats and pacing are set here from the devices
/// (wall clock, results on arrival).
pub fn run(
    opts: &LocalOptions,
    agent: Arc<dyn Agent>,
    mut config: SessionConfig,
    stop: Arc<AtomicBool>,
) -> Result<LocalReport, LocalError> {
    let host = cpal::default_host();
    let in_dev = find_device(&host, Direction::Input, opts.input.as_deref())?;
    let out_dev = find_device(&host, Direction::Output, opts.output.as_deref())?;
    let in_name = device_name(&in_dev);
    let out_name = device_name(&out_dev);
    let in_cfg = in_dev
        .default_input_config()
        .map_err(|cause| LocalError::Config {
            dir: Direction::Input,
            device: in_name.clone(),
            cause,
        })?;
    let out_cfg = out_dev
        .default_output_config()
        .map_err(|cause| LocalError::Config {
            dir: Direction::Output,
            device: out_name.clone(),
            cause,
        })?;
    // BufferSize::Default: fixed small buffers lost samples on PulseAudio's
    // ALSA plugin (docs/devices.md).
    let in_rate = in_cfg.sample_rate();
    let in_ch = in_cfg.channels();
    let out_rate = out_cfg.sample_rate();
    let out_ch = out_cfg.channels();

    config.input_rate = in_rate;
    config.input_channels = in_ch;
    config.output_rate = out_rate;
    config.pacing = Pacing::Arrival;
    config.cost_mode = CostMode::Wall;

    // Two seconds of input absorb a stalled driver; half a second of output
    // keeps the played count close to what was heard.
    let (in_prod, in_cons) = input_ring(in_rate as usize * in_ch as usize * 2);
    let (out_prod, out_cons) = output_ring(out_rate as usize / 2);
    let in_stats = in_prod.stats().clone();
    let out_stats = out_cons.stats().clone();
    let (mut journal, history) = crate::journal::SessionJournal::open_optional(
        opts.journal.as_deref(),
        opts.resume.as_deref(),
        agent.name(),
        "microphone",
    )?;
    let mut session = Session::new(config, agent, in_cons, out_prod)?.with_history(history);
    // Echo control (src/echo/): for `aec`, a reference ring of two seconds
    // filled by the output callback (callback.rs invariant 5).
    let (echo, reference) = opts.echo.build(out_rate, 2.0)?;
    session.set_echo(echo);

    let shared = Arc::new(CallbackShared::default());
    let (err_tx, err_rx) = crossbeam_channel::bounded::<(Direction, cpal::Error)>(64);
    let in_cb = InputCallback::new(in_prod, in_ch, shared.clone());
    let out_cb = OutputCallback::new(out_cons, out_ch, shared.clone())
        .with_reference(reference)
        .with_rate(out_rate);

    // Output first: playback is running when the first microphone frame
    // arrives (as before the output stream could be reopened).
    let mut out_stream = streams::OutputStream::open(out_dev, out_cfg, out_cb, err_tx.clone())?;
    let in_stream = streams::open_input(&in_dev, &in_cfg, in_cb, err_tx)?;

    let mut events_file = match &opts.events {
        Some(path) => Some(EventLog::create(path).map_err(|cause| LocalError::Events {
            path: path.clone(),
            cause,
        })?),
        None => None,
    };

    let mut status = opts.status.then(StatusLine::start);
    let mut model = StatusModel::new();
    let mut all_events: Vec<TimedEvent> = Vec::new();
    let mut counters = DeviceCounters::default();
    let mut reported = DeviceCounters::default();
    let mut last_report = Instant::now();
    let started = Instant::now();
    let mut stop_reason = StopReason::Requested;
    let mut committed: Vec<CommittedRound> = Vec::new();
    let (mut last_outs, mut last_ins) = (0u64, 0u64);
    // The first output callback can take a while (server start-up): give the
    // watchdog the start-up allowance on top of STALL.
    let mut out_seen = Instant::now() + STARTUP;
    // The first non-fatal output error since the last output callback.
    let mut out_broken: Option<(Instant, String)> = None;
    // That error was fatal: reopen without waiting.
    let mut out_fatal = false;
    // A reopen to log as a device event this pass.
    let mut reopened: Option<String> = None;
    let mut in_seen = Instant::now();

    say(
        &status,
        &format!(
            "colloquy: microphone {in_name:?} ({in_rate} Hz, {in_ch} ch, {}), speaker {out_name:?} ({out_rate} Hz, {out_ch} ch, {}); echo {}; Ctrl-C to stop",
            in_cfg.sample_format(),
            out_cfg.sample_format(),
            opts.echo,
        ),
    );

    loop {
        if stop.load(Ordering::Acquire) {
            break;
        }
        if session.coordinator().call_ended() {
            stop_reason = StopReason::CallEnded;
            break;
        }
        // Device errors (invariant 3 for xruns, invariant 2 for the rest).
        let mut lost = None;
        // Bounded per tick: a dying stream can report errors in a tight loop.
        for (dir, e) in err_rx.try_iter().take(64) {
            match e.kind() {
                cpal::ErrorKind::Xrun => counters.xruns += 1,
                cpal::ErrorKind::DeviceChanged => {
                    tracing::info!(device = %dir, "audio route changed: {e}")
                }
                cpal::ErrorKind::RealtimeDenied => {
                    tracing::debug!(device = %dir, "real-time scheduling refused: {e}")
                }
                // The stream goes on after these (cpal's ALSA worker keeps
                // running); a stream that really died is caught by the
                // watchdog below.
                kind if !is_fatal(kind) => {
                    counters.device_errors += 1;
                    if dir == Direction::Output && out_broken.is_none() {
                        out_broken = Some((Instant::now(), e.to_string()));
                    }
                    // Logged once; later ones are counted (invariant 3).
                    if counters.device_errors == 1 {
                        tracing::warn!(device = %dir, "audio device error (continuing): {e}");
                    }
                }
                // A fatal error on the output: reopened at once if it can
                // be (PulseAudio killed the stream, not the device).
                _ if dir == Direction::Output && out_stream.reopens < MAX_REOPENS => {
                    out_fatal = true;
                    out_broken.get_or_insert_with(|| (Instant::now(), e.to_string()));
                }
                _ => {
                    let name = if dir == Direction::Input {
                        &in_name
                    } else {
                        &out_name
                    };
                    lost.get_or_insert_with(|| {
                        format!(
                            "{dir} device {name:?} failed: {e}; was it unplugged, or did the audio server stop?"
                        )
                    });
                }
            }
        }
        // Watchdog: a running stream calls back every few ms; one silent for
        // `STALL` has died without saying so.
        let outs = shared.output_callbacks.load(Ordering::Relaxed);
        let ins = shared.input_callbacks.load(Ordering::Relaxed);
        if outs != last_outs {
            last_outs = outs;
            out_seen = Instant::now();
            // Callbacks after the error: the stream went on.
            out_broken = None;
        }
        if ins != last_ins {
            last_ins = ins;
            in_seen = Instant::now();
        }
        // An output stream that reported an error and stopped calling back
        // is reopened on the same device (streams.rs), a few times per run.
        let broken_for = out_broken.as_ref().map(|(at, _)| at.elapsed());
        if lost.is_none()
            && (out_fatal || broken_for > Some(REOPEN_AFTER) || out_seen.elapsed() > STALL)
            && out_stream.reopens < MAX_REOPENS
        {
            out_fatal = false;
            let why = out_broken.take().map_or_else(
                || format!("no callback for {} s", STALL.as_secs()),
                |(_, e)| e,
            );
            match out_stream.reopen() {
                Ok(()) => {
                    let message = format!(
                        "output stream of {out_name:?} broke ({why}) and was reopened ({} so far)",
                        out_stream.reopens
                    );
                    tracing::warn!("{message}");
                    // Logged with this pass's events (below).
                    reopened = Some(message);
                    counters.reopens = out_stream.reopens;
                    out_seen = Instant::now() + STARTUP;
                }
                Err(e) => {
                    lost = Some(format!(
                        "output device {out_name:?} broke ({why}) and could not be reopened: {e}; was it unplugged, or did the audio server stop?"
                    ));
                }
            }
        }
        if lost.is_none() {
            if out_seen.elapsed() > STALL {
                lost = Some(format!(
                    "output device {out_name:?} stopped asking for audio ({} s without a callback); was it unplugged, or did the audio server stop?",
                    STALL.as_secs()
                ));
            } else if model.started && in_seen.elapsed() > STALL {
                lost = Some(format!(
                    "input device {in_name:?} stopped delivering audio ({} s without a callback); was it unplugged, or did the audio server stop?",
                    STALL.as_secs()
                ));
            }
        }
        if let Some(msg) = lost {
            stop_reason = StopReason::DeviceLost(msg);
            break;
        }
        if !model.started && shared.capture_started.load(Ordering::Acquire) {
            model.started = true;
            say(
                &status,
                &format!(
                    "colloquy: listening (first audio from the microphone after {} ms)",
                    started.elapsed().as_millis()
                ),
            );
        }

        // The gate (alone, or guarding the canceller while it converges)
        // uses the playback level, the canceller the latencies; `off`
        // ignores both.
        session.set_playback_level(shared.take_playback_level());
        session.set_echo_latency_ms(shared.device_latency_ms());
        session.process(|_| {});
        // Invariant 4.
        shared
            .bot_speaking
            .store(session.coordinator().bot_speaking(), Ordering::Release);

        // The journal first, so a logged `committed` is in the journal.
        let rounds = session.drain_committed();
        if let Some(j) = journal.as_mut() {
            j.record(&mut session, &rounds);
        }
        committed.extend(rounds);
        let first = all_events.len();
        all_events.extend(session.drain_events());
        if let Some(message) = reopened.take() {
            all_events.push(TimedEvent {
                t_ms: session.now_ms(),
                event: Event::Error {
                    source: "device".to_string(),
                    message,
                },
            });
        }

        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            if let Some(dir) = std::env::var_os("COLLOQUY_ECHO_DUMP") {
                use std::io::Write;
                let _ = std::fs::create_dir_all(&dir);
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(std::path::Path::new(&dir).join("clock.csv"))
                {
                    let _ = writeln!(
                        f,
                        "{:.3},{},{},{},{},{},{},{}",
                        started.elapsed().as_secs_f64(),
                        shared.input_frames.load(Ordering::Relaxed),
                        shared.output_frames.load(Ordering::Relaxed),
                        shared.input_latency_us.load(Ordering::Relaxed),
                        shared.output_latency_us.load(Ordering::Relaxed),
                        counters.xruns,
                        session.now_ms(),
                        shared.output_gap_frames.load(Ordering::Relaxed)
                    );
                }
            }
            counters.input_overruns = in_stats.overruns.load(Ordering::Relaxed);
            counters.output_underruns = out_stats.underruns.load(Ordering::Relaxed);
            counters.flushed = out_stats.flushed.load(Ordering::Relaxed);
            let now_ms = session.now_ms();
            for (what, now, before) in [
                (
                    "input overrun: microphone samples dropped (the driver fell behind)",
                    counters.input_overruns,
                    reported.input_overruns,
                ),
                (
                    "output underrun: silence inside a reply (audio came too late)",
                    counters.output_underruns,
                    reported.output_underruns,
                ),
                (
                    "device xrun reported by the audio host",
                    counters.xruns,
                    reported.xruns,
                ),
                (
                    "audio device error (the stream went on)",
                    counters.device_errors,
                    reported.device_errors,
                ),
            ] {
                if now > before {
                    tracing::warn!("{what}: {} new, {now} in total", now - before);
                    all_events.push(TimedEvent {
                        t_ms: now_ms,
                        event: Event::Error {
                            source: "device".to_string(),
                            message: format!("{what}: {} new, {now} in total", now - before),
                        },
                    });
                }
            }
            reported = counters.clone();
        }

        for e in &all_events[first..] {
            model.on_event(e);
        }
        write_events(events_file.as_mut(), &all_events[first..])?;
        if let Some(s) = status.as_mut() {
            s.set(model.line(session.coordinator().state()));
        }
        std::thread::sleep(TICK);
    }

    // Invariant 2: no callback runs after the streams are dropped. A dead
    // device can hang the backend's worker (dropping a stream joins it), so
    // the streams are dropped on a helper thread, waited for a bounded time.
    let streams: Vec<cpal::Stream> = std::iter::once(in_stream)
        .chain(out_stream.into_stream())
        .collect();
    if let Err(e) = streams::close_bounded(streams) {
        tracing::warn!("the audio devices {e}");
    }
    session.shutdown();
    let rounds = session.drain_committed();
    if let Some(j) = journal.as_mut() {
        j.record(&mut session, &rounds);
        j.finish(session.coordinator().quarantined());
    }
    committed.extend(rounds);
    let first = all_events.len();
    all_events.extend(session.drain_events());
    write_events(events_file.as_mut(), &all_events[first..])?;
    counters.input_overruns = in_stats.overruns.load(Ordering::Relaxed);
    counters.output_underruns = out_stats.underruns.load(Ordering::Relaxed);
    counters.flushed = out_stats.flushed.load(Ordering::Relaxed);
    if let Some(s) = status.take() {
        s.finish();
    }
    Ok(LocalReport {
        stop: stop_reason,
        input_device: in_name,
        output_device: out_name,
        input_config: in_cfg.config(),
        output_config: out_cfg.config(),
        events: all_events,
        committed,
        counters,
        session_ms: session.now_ms(),
        echo_rejected: session.echo_stats().1.rejected,
        echo_mode: opts.echo,
        echo: session.echo_stats().1,
    })
}

fn say(status: &Option<StatusLine>, line: &str) {
    match status {
        Some(s) => s.println(line),
        None => eprintln!("{line}"),
    }
}

fn write_events(log: Option<&mut EventLog>, events: &[TimedEvent]) -> Result<(), LocalError> {
    // Live log: each pass is flushed, so `tail -f` and tests see events as
    // they happen (event_log invariant 1).
    match log {
        Some(log) => log.write(events).map_err(|cause| LocalError::Events {
            path: log.path().to_path_buf(),
            cause,
        }),
        None => Ok(()),
    }
}
