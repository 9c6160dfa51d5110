//! The file transport: replays a WAV through the whole pipeline and writes
//! the conversation as a stereo timeline WAV (left = user, right = bot) and a
//! JSONL event log with times on the audio timeline.
//!
//! Pacing (`--pace`):
//! - `fast` (default): virtual clock; each task result is placed on the
//!   timeline at `dispatch + measured compute`, so the timeline shows the
//!   latency a user would hear while the replay runs as fast as the models.
//! - `real`: wall-clock pacing, 20 ms per frame.
//! - `instant`: virtual clock, compute charged as zero (deterministic tests).
//!
//! # Invariants
//! 1. The driver pushes input in 20 ms steps and reads exactly one 20 ms
//!    output frame per processed input frame, so left and right channels share
//!    one clock.
//! 2. After input ends, replay goes on (silence in) until the bot has finished
//!    (nothing in flight, nothing queued) or `tail_cap` elapses.

use super::event_log::EventLog;
use crate::agent::{Agent, CostMode};
use crate::audio::{input_ring, output_ring, read_wav, TimelineWriter, WavError};
use crate::frame::{TimedEvent, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
use crate::session::{Pacing, Session, SessionConfig, SessionError};
use crate::turn::CommittedRound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How replay time relates to wall time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    #[default]
    Fast,
    Real,
    Instant,
}

/// What to replay and where to write the results.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub input: PathBuf,
    pub out_wav: Option<PathBuf>,
    pub events: Option<PathBuf>,
    pub pace: Pace,
    /// Longest time replay continues after the input ends.
    pub tail_cap: Duration,
    pub progress: bool,
    /// Journal file to write committed turns to (none: no journal).
    pub journal: Option<PathBuf>,
    /// Resume this journal session: its committed history is the starting context.
    pub resume: Option<String>,
}

impl ReplayOptions {
    pub fn new(input: impl Into<PathBuf>) -> Self {
        Self {
            input: input.into(),
            out_wav: None,
            events: None,
            pace: Pace::Fast,
            tail_cap: Duration::from_secs(60),
            progress: false,
            journal: None,
            resume: None,
        }
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Wav(#[from] WavError),
    #[error("{path}: {cause}")]
    Session { path: PathBuf, cause: SessionError },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot write the event log {path}: {cause}")]
    Events {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// What a replay produced.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub input_ms: u64,
    pub timeline_ms: u64,
    pub wall: Duration,
    pub events: Vec<TimedEvent>,
    pub committed: Vec<CommittedRound>,
    /// The journal session the turns were written to.
    pub session_id: Option<String>,
    /// User channel of the timeline (16 kHz).
    pub user: Vec<i16>,
    /// Bot channel of the timeline (16 kHz).
    pub bot: Vec<i16>,
}

impl ReplayReport {
    /// Replay speed as a multiple of real time.
    pub fn speed(&self) -> f64 {
        self.timeline_ms as f64 / 1000.0 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Replays `opts.input` through a session answered by `agent`.
pub fn replay(
    opts: &ReplayOptions,
    agent: Arc<dyn Agent>,
    mut config: SessionConfig,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let audio = read_wav(&opts.input)?;
    config.input_rate = audio.sample_rate;
    config.input_channels = audio.channels;
    config.output_rate = SAMPLE_RATE;
    match opts.pace {
        Pace::Fast => {
            config.pacing = Pacing::Charged;
            config.cost_mode = CostMode::Wall;
        }
        Pace::Instant => {
            config.pacing = Pacing::Charged;
            config.cost_mode = CostMode::Zero;
        }
        Pace::Real => {
            config.pacing = Pacing::Arrival;
            config.cost_mode = CostMode::Wall;
        }
    }
    let step = (audio.sample_rate / 50) as usize * audio.channels as usize;
    let (mut in_prod, in_cons) = input_ring(step * 16);
    let (out_prod, mut out_cons) = output_ring(SAMPLE_RATE as usize * 8);
    let (mut journal, history) = crate::journal::SessionJournal::open_optional(
        opts.journal.as_deref(),
        opts.resume.as_deref(),
        agent.name(),
        &opts.input.display().to_string(),
    )?;
    let mut session = Session::new(config, agent, in_cons, out_prod)
        .map_err(|cause| ReplayError::Session {
            path: opts.input.clone(),
            cause,
        })?
        .with_history(history);

    let mut events_file = match &opts.events {
        Some(path) => Some(EventLog::create(path).map_err(|cause| ReplayError::Events {
            path: path.clone(),
            cause,
        })?),
        None => None,
    };
    let mut report = ReplayReport {
        input_ms: audio.duration_ms(),
        ..ReplayReport::default()
    };
    let bar = progress_bar(opts.progress, report.input_ms);
    let silence = vec![0.0f32; step];
    let mut pos = 0usize;
    let mut input_done = false;
    let tail_cap_ms = opts.tail_cap.as_millis() as u64;
    let wall_start = Instant::now();
    let mut out_frame = [0.0f32; FRAME_SAMPLES];
    loop {
        if pos < audio.samples.len() {
            let end = (pos + step).min(audio.samples.len());
            in_prod.push(&audio.samples[pos..end]);
            pos = end;
        } else if !input_done {
            input_done = true;
            session.pull_input();
            session.finish_input();
        } else {
            let past_end = session.now_ms().saturating_sub(report.input_ms);
            if !session.busy() || past_end >= tail_cap_ms {
                break;
            }
            in_prod.push(&silence);
        }
        if session.coordinator().call_ended() {
            // The agent hung up: the rest of the recording is not heard.
            break;
        }
        if opts.pace == Pace::Real {
            let target = Duration::from_millis(session.now_ms() + FRAME_MS);
            if let Some(wait) = target.checked_sub(wall_start.elapsed()) {
                std::thread::sleep(wait);
            }
        } else {
            let next = session.now_ms() + FRAME_MS;
            session.settle(next);
        }
        let user = &mut report.user;
        let bot = &mut report.bot;
        session.process(|frame| {
            // Holds invariant 1: one output frame per input frame.
            user.extend_from_slice(&frame.samples);
            out_cons.read(&mut out_frame);
            bot.extend(
                out_frame
                    .iter()
                    .map(|&s| crate::audio::resample::f32_to_i16(s)),
            );
        });
        commit_to_journal(&mut session, &mut report.committed, journal.as_mut());
        write_events(&mut session, &mut report.events, events_file.as_mut())?;
        if let Some(b) = &bar {
            b.set_position(session.now_ms().min(report.input_ms));
        }
    }
    session.shutdown();
    commit_to_journal(&mut session, &mut report.committed, journal.as_mut());
    write_events(&mut session, &mut report.events, events_file.as_mut())?;
    if let Some(j) = journal.as_mut() {
        j.finish(session.coordinator().quarantined());
        report.session_id = Some(j.id().to_string());
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    report.timeline_ms = report.user.len() as u64 * 1000 / SAMPLE_RATE as u64;
    if let Some(path) = &opts.out_wav {
        write_timeline(path, &report.user, &report.bot)?;
    }
    report.wall = started.elapsed();
    Ok(report)
}

/// Writes the rounds committed since the last call to the journal, before
/// their events reach the log (so a logged `committed` is in the journal).
fn commit_to_journal(
    session: &mut Session,
    all: &mut Vec<CommittedRound>,
    journal: Option<&mut crate::journal::SessionJournal>,
) {
    let rounds = session.drain_committed();
    if let Some(j) = journal {
        j.record(session, &rounds);
    }
    all.extend(rounds);
}

fn write_events(
    session: &mut Session,
    all: &mut Vec<TimedEvent>,
    log: Option<&mut EventLog>,
) -> Result<(), ReplayError> {
    let start = all.len();
    all.extend(session.drain_events());
    if let Some(log) = log {
        log.write(&all[start..])
            .map_err(|cause| ReplayError::Events {
                path: log.path().to_path_buf(),
                cause,
            })?;
    }
    Ok(())
}

/// Writes the stereo timeline (left = user, right = bot).
pub fn write_timeline(path: &Path, user: &[i16], bot: &[i16]) -> Result<(), WavError> {
    let mut w = TimelineWriter::create(path)?;
    w.write(user, bot)?;
    w.finish()
}

fn progress_bar(enabled: bool, total_ms: u64) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total_ms);
    let style =
        indicatif::ProgressStyle::with_template("replay [{bar:40}] {pos}/{len} ms ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
