//! The parrot agent: at each end of user turn it speaks the user's utterance
//! back. No models; it exercises the whole audio path, turn-taking and
//! barge-in timing, and stays as a diagnostic (`--agent parrot`).

use super::{Agent, Payload, Reporter, TurnJob};

/// Text used for the parrot's reply in events and history.
pub const PARROT_TEXT: &str = "(parrot) you said this";

/// Speaks the user's audio back.
#[derive(Clone, Debug, Default)]
pub struct ParrotAgent;

impl Agent for ParrotAgent {
    fn name(&self) -> &str {
        "parrot"
    }

    fn start(&self, job: TurnJob, reporter: Reporter) {
        if job.cancel.is_cancelled() {
            return;
        }
        // Synchronous and cheap: the audio is already at 16 kHz.
        if reporter.send(Payload::Speech {
            text: PARROT_TEXT.to_string(),
            audio: job.user_audio.clone(),
        }) {
            reporter.send(Payload::Done);
        }
    }

    fn transcribes(&self) -> bool {
        false
    }
}
