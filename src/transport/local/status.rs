//! The terminal status line of `colloquy run`: one spinner line saying what
//! the conversation is doing (listening / user speaking / thinking /
//! speaking) and the last turn's latency, kept out of the way of logs.
//!
//! Logs go through [`StatusLine::println`] or, for `tracing`, through
//! [`LogWriter`] (install it as the subscriber's writer): while a status line
//! is drawn, a log line is printed above it (`ProgressBar::suspend`), never
//! through it. When stderr is not a terminal the spinner is hidden and lines go
//! straight to stderr.
//!
//! # Invariants
//! 1. At most one status line is registered at a time (the global slot); log
//!    output while it is registered goes through it.
//! 2. The status line is updated from the driver thread only, never from a
//!    device callback.

use crate::frame::{Event, TimedEvent};
use crate::turn::TurnState;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// What the conversation is doing, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    Starting,
    Listening,
    UserSpeaking,
    Thinking,
    Speaking,
}

impl Activity {
    pub fn label(self) -> &'static str {
        match self {
            Activity::Starting => "starting",
            Activity::Listening => "listening",
            Activity::UserSpeaking => "you are speaking",
            Activity::Thinking => "thinking",
            Activity::Speaking => "speaking",
        }
    }
}

/// Folds events and coordinator state into what to show.
#[derive(Clone, Debug)]
pub struct StatusModel {
    user_speaking: bool,
    /// Voice-to-voice latency of the last turn (ms).
    pub last_latency_ms: Option<u64>,
    pub turns: u64,
    pub interruptions: u64,
    pub started: bool,
}

impl Default for StatusModel {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusModel {
    pub fn new() -> Self {
        Self {
            user_speaking: false,
            last_latency_ms: None,
            turns: 0,
            interruptions: 0,
            started: false,
        }
    }

    pub fn on_event(&mut self, e: &TimedEvent) {
        match &e.event {
            Event::SpeechStarted { .. } => self.user_speaking = true,
            Event::SpeechStopped { .. } => self.user_speaking = false,
            Event::TurnLatency {
                end_of_speech_ms,
                first_audio_ms,
                ..
            } => self.last_latency_ms = Some(first_audio_ms.saturating_sub(*end_of_speech_ms)),
            Event::Committed { .. } => self.turns += 1,
            Event::Interrupted { .. } => self.interruptions += 1,
            _ => {}
        }
    }

    pub fn activity(&self, state: TurnState) -> Activity {
        if !self.started {
            return Activity::Starting;
        }
        if self.user_speaking {
            return Activity::UserSpeaking;
        }
        match state {
            TurnState::Idle => Activity::Listening,
            TurnState::Thinking => Activity::Thinking,
            TurnState::Speaking => Activity::Speaking,
        }
    }

    /// The line's text.
    pub fn line(&self, state: TurnState) -> String {
        let mut s = self.activity(state).label().to_string();
        if let Some(ms) = self.last_latency_ms {
            s.push_str(&format!("  · last reply after {ms} ms"));
        }
        if self.turns > 0 {
            s.push_str(&format!("  · {} turn(s)", self.turns));
        }
        s
    }
}

fn slot() -> &'static Mutex<Option<ProgressBar>> {
    static SLOT: OnceLock<Mutex<Option<ProgressBar>>> = OnceLock::new();
    SLOT.get_or_init(|| Mutex::new(None))
}

/// The spinner line (see the module docs).
pub struct StatusLine {
    bar: ProgressBar,
    last: String,
}

impl StatusLine {
    /// Draws a status line on stderr (hidden if stderr is not a terminal) and
    /// registers it for log output (invariant 1).
    pub fn start() -> Self {
        let bar = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(120));
        if let Ok(mut s) = slot().lock() {
            *s = Some(bar.clone());
        }
        Self {
            bar,
            last: String::new(),
        }
    }

    /// Updates the text if it changed.
    pub fn set(&mut self, text: String) {
        if text != self.last {
            self.bar.set_message(text.clone());
            self.last = text;
        }
    }

    /// Prints a line above the status line (or to stderr when hidden).
    pub fn println(&self, line: &str) {
        print_line(line);
    }

    /// Removes the line and unregisters it.
    pub fn finish(self) {
        if let Ok(mut s) = slot().lock() {
            *s = None;
        }
        self.bar.finish_and_clear();
    }
}

fn print_line(line: &str) {
    let bar = slot().lock().ok().and_then(|s| s.clone());
    match bar {
        Some(bar) if !bar.is_hidden() => bar.suspend(|| {
            let _ = writeln!(std::io::stderr(), "{line}");
        }),
        _ => {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }
}

/// A `tracing_subscriber` writer that prints log lines above the status line
/// while one is drawn, and to stderr otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// One log record being written (flushed as a whole on drop).
pub struct LogLine {
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        print_line(text.trim_end_matches('\n'));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;
    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            buf: Vec::with_capacity(128),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_follows_events_and_state() {
        let mut m = StatusModel::new();
        assert_eq!(m.activity(TurnState::Idle), Activity::Starting);
        m.started = true;
        assert_eq!(m.line(TurnState::Idle), "listening");
        m.on_event(&TimedEvent {
            t_ms: 100,
            event: Event::SpeechStarted { at_ms: 80 },
        });
        assert_eq!(m.activity(TurnState::Idle), Activity::UserSpeaking);
        m.on_event(&TimedEvent {
            t_ms: 900,
            event: Event::SpeechStopped {
                at_ms: 900,
                speech_ms: 700,
            },
        });
        assert_eq!(m.activity(TurnState::Thinking), Activity::Thinking);
        m.on_event(&TimedEvent {
            t_ms: 1300,
            event: Event::TurnLatency {
                epoch: 1,
                end_of_speech_ms: 900,
                stt_ms: None,
                first_token_ms: None,
                first_audio_ms: 1250,
                routes: Vec::new(),
            },
        });
        assert_eq!(
            m.line(TurnState::Speaking),
            "speaking  · last reply after 350 ms"
        );
    }
}
