//! The end-of-turn judge: when a speculative turn is held at a pause, is the
//! user done? It combines the words said so far (the speculative
//! transcript, [`words`]) and, when the model is present, Smart Turn v3.2,
//! an audio end-of-turn model ([`smart_turn`], on [`features`]), into
//! *complete*, *incomplete* or *unsure*. `session/hold.rs` acts on it.
//!
//! The judge only decides *when* a held turn is released: it can hold it
//! longer (up to a backstop) or release it sooner; it never opens, commits or
//! speaks a turn, so the coordinator's invariants stay as they are.
//!
//! # Invariants
//! 1. Words that can't end a sentence always make the verdict `Incomplete`,
//!    whatever the audio model says (it calls such cuts complete on
//!    synthetic voices, see README "End of turn").
//! 2. `Complete` needs a positive sign (the audio model above
//!    `audio_complete`, or a question mark with no model); no sign at all is
//!    `Unsure`, which keeps today's behaviour (release at the endpoint).
//! 3. The verdict is a pure function of the signals and the config, so
//!    replays are deterministic.

pub mod features;
pub mod job;
#[cfg(feature = "embedded")]
pub mod smart_turn;
pub mod words;

use serde::{Deserialize, Serialize};

/// How the end of a user's turn is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TurnMode {
    /// Silence only: the turn ends `endpoint_ms` after the last voiced frame.
    Silence,
    /// The end-of-turn judge: words and the Smart Turn audio model may hold
    /// a turn past the endpoint (up to the backstop) or end it sooner. The
    /// default, chosen by the README's end-of-turn table (`cargo bench
    /// --bench eot`): no cut-offs at mid-sentence pauses for the voice
    /// agent, no false holds, voice to voice not worse.
    #[default]
    Smart,
}

/// Settings of the judge (`[turn]` table of the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EotConfig {
    pub mode: TurnMode,
    /// Longest silence a held turn waits for more words (ms after the last
    /// voiced frame); then it is released whatever the verdict.
    pub backstop_ms: u64,
    /// Smart Turn probability at or above which the audio says complete.
    pub audio_complete: f32,
    /// Smart Turn probability below which the audio says incomplete.
    pub audio_incomplete: f32,
    /// Release before the endpoint when the audio says complete at or above
    /// this probability and the words don't object (1.0 or more: never).
    pub early_release: f32,
    /// Also ask the Smart Turn model (when it is in the model store). Off by
    /// default: on the project's set it held whole sentences and ended
    /// paused ones early (README, "End of turn").
    pub audio_model: bool,
}

impl Default for EotConfig {
    fn default() -> Self {
        Self {
            mode: TurnMode::default(),
            backstop_ms: 1500,
            audio_complete: 0.5,
            audio_incomplete: 0.2,
            early_release: 0.9,
            audio_model: false,
        }
    }
}

impl EotConfig {
    /// Checks the ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("audio_complete", self.audio_complete),
            ("audio_incomplete", self.audio_incomplete),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("[turn] {name} = {v}: must be between 0 and 1"));
            }
        }
        if self.audio_incomplete > self.audio_complete {
            return Err(format!(
                "[turn] audio_incomplete ({}) is above audio_complete ({}): lower it",
                self.audio_incomplete, self.audio_complete
            ));
        }
        if self.early_release.is_nan() || self.early_release < 0.0 {
            return Err("[turn] early_release must be a number >= 0".into());
        }
        if self.backstop_ms > 10_000 {
            return Err(format!(
                "[turn] backstop_ms = {}: at most 10000 (a longer hold feels like a hang)",
                self.backstop_ms
            ));
        }
        Ok(())
    }
}

/// The audio model for a session with `config`: `None` in silence mode, when
/// turned off, or when it can't be loaded — then the judge uses the words
/// alone and says so once per process.
pub fn audio_model(config: &EotConfig) -> Option<std::sync::Arc<dyn job::TurnModel>> {
    if config.mode != TurnMode::Smart || !config.audio_model {
        return None;
    }
    #[cfg(feature = "embedded")]
    let loaded = smart_turn::shared().map(|m| m as std::sync::Arc<dyn job::TurnModel>);
    #[cfg(not(feature = "embedded"))]
    let loaded: Result<std::sync::Arc<dyn job::TurnModel>, String> =
        Err("built without the embedded models".to_string());
    match loaded {
        Ok(m) => Some(m),
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!("end of turn: the Smart Turn model is not available ({why}); judging by the words alone");
                eprintln!("end of turn: Smart Turn model not available, judging by the words alone ({why})");
            });
            None
        }
    }
}

/// The judge's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Complete,
    Incomplete,
    Unsure,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Complete => "complete",
            Verdict::Incomplete => "incomplete",
            Verdict::Unsure => "unsure",
        }
    }
}

/// Combines the signals (invariants 1–3). `words` is `None` while no
/// transcript is known (or the agent has none); `audio` is Smart Turn's
/// probability of "complete" when it ran.
pub fn combine(config: &EotConfig, words: Option<&words::Words>, audio: Option<f32>) -> Verdict {
    use words::Words;
    if let Some(Words::Incomplete(_)) = words {
        return Verdict::Incomplete;
    }
    match audio {
        Some(p) if p >= config.audio_complete => Verdict::Complete,
        Some(p) if p < config.audio_incomplete => {
            if words == Some(&Words::Complete) {
                Verdict::Unsure
            } else {
                Verdict::Incomplete
            }
        }
        Some(_) => Verdict::Unsure,
        None if words == Some(&Words::Complete) => Verdict::Complete,
        None => Verdict::Unsure,
    }
}

/// Whether a complete verdict is strong enough to end the turn before the
/// endpoint: the audio model is sure and the words (when known) agree.
pub fn strong(config: &EotConfig, words: Option<&words::Words>, audio: Option<f32>) -> bool {
    combine(config, words, audio) == Verdict::Complete
        && audio.is_some_and(|p| p >= config.early_release)
}

#[cfg(test)]
mod tests {
    use super::words::Words;
    use super::*;

    #[test]
    fn dangling_words_win_over_a_confident_audio_model() {
        let c = EotConfig::default();
        let cut = Words::Incomplete("ends on \"for\"".into());
        assert_eq!(combine(&c, Some(&cut), Some(0.99)), Verdict::Incomplete);
        assert!(!strong(&c, Some(&cut), Some(0.99)));
    }

    #[test]
    fn the_audio_model_decides_when_the_words_give_no_sign() {
        let c = EotConfig::default();
        let none = Words::NoSign;
        assert_eq!(combine(&c, Some(&none), Some(0.8)), Verdict::Complete);
        assert_eq!(combine(&c, Some(&none), Some(0.05)), Verdict::Incomplete);
        assert_eq!(combine(&c, Some(&none), Some(0.3)), Verdict::Unsure);
        assert_eq!(combine(&c, None, Some(0.95)), Verdict::Complete);
        assert!(strong(&c, None, Some(0.95)));
        assert!(!strong(&c, None, Some(0.8)));
        // A question mark outweighs a low audio score, but only to unsure.
        assert_eq!(
            combine(&c, Some(&Words::Complete), Some(0.05)),
            Verdict::Unsure
        );
    }

    #[test]
    fn without_any_sign_the_judge_is_unsure() {
        let c = EotConfig::default();
        assert_eq!(combine(&c, None, None), Verdict::Unsure);
        assert_eq!(combine(&c, Some(&Words::NoSign), None), Verdict::Unsure);
        assert_eq!(combine(&c, Some(&Words::Complete), None), Verdict::Complete);
    }

    #[test]
    fn bad_thresholds_are_named() {
        let mut c = EotConfig {
            audio_complete: 1.5,
            ..EotConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("audio_complete"));
        c.audio_complete = 0.1;
        assert!(c.validate().unwrap_err().contains("audio_incomplete"));
        c = EotConfig {
            backstop_ms: 60_000,
            ..EotConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("backstop_ms"));
        assert!(EotConfig::default().validate().is_ok());
    }
}
