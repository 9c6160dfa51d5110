//! End of turn from what was said (`--turn smart`), replayed on the virtual
//! clock (`--pace instant`): a sentence with a pause in the middle is one
//! turn, answered whole; the same sentence said without the pause is
//! answered at the normal endpoint; a held turn waits no longer than the
//! backstop. The words' path runs with a scripted agent (its transcript
//! depends on how much audio it got), the audio model's with the parrot on
//! a real recording (needs `colloquy models fetch`).

mod common;
use colloquy::agent::parrot::ParrotAgent;
use colloquy::agent::{Agent, Payload, Reporter, TurnJob};
use colloquy::eot::{EotConfig, TurnMode};
use colloquy::frame::{Event, TimedEvent};
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions, ReplayReport};
use common::*;
use std::sync::Arc;

/// Transcribes by length: less than `full_samples` of audio is the first
/// half of the sentence, more is all of it; then speaks the audio back.
struct Scripted {
    full_samples: usize,
    first: &'static str,
    whole: &'static str,
}

impl Agent for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn transcribes(&self) -> bool {
        true
    }
    fn start(&self, job: TurnJob, reporter: Reporter) {
        let text = if job.user_audio.len() < self.full_samples {
            self.first
        } else {
            self.whole
        };
        if reporter.send(Payload::Transcript(text.into()))
            && reporter.send(Payload::Speech {
                text: format!("you said: {text}"),
                audio: job.user_audio.clone(),
            })
        {
            reporter.send(Payload::Done);
        }
    }
}

fn config(mode: TurnMode, audio_model: bool) -> SessionConfig {
    SessionConfig {
        eot: EotConfig {
            mode,
            audio_model,
            ..EotConfig::default()
        },
        ..SessionConfig::default()
    }
}

fn run(samples: &[i16], agent: Arc<dyn Agent>, config: SessionConfig) -> ReplayReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.wav");
    write_wav16k(&input, samples);
    let mut opts = ReplayOptions::new(&input);
    opts.pace = Pace::Instant;
    replay(&opts, agent, config).expect("replay")
}

fn stops(events: &[TimedEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e.event {
            Event::SpeechStopped { at_ms, .. } => Some((at_ms, e.t_ms)),
            _ => None,
        })
        .collect()
}

fn first_audio(events: &[TimedEvent]) -> Option<u64> {
    events.iter().find_map(|e| match e.event {
        Event::BotStartedSpeaking { .. } => Some(e.t_ms),
        _ => None,
    })
}

const LEAD_MS: usize = 1000;

/// "I would like to book a table for … four people, please." (espeak-ng,
/// 0.7 s pause) with room noise around it; returns the timeline and the
/// time (ms) the second half starts.
fn table_paused() -> (Vec<i16>, u64) {
    let (cut, pause) = table_cut();
    let (timeline, _) = concat(&[
        silence_ms(LEAD_MS, 1),
        load16k("eot/table-paused.wav"),
        silence_ms(4000, 2),
    ]);
    (timeline, LEAD_MS as u64 + cut + pause)
}

/// Where the pause of `eot/table-paused.wav` starts and how long it is (ms).
fn table_cut() -> (u64, u64) {
    let tsv = std::fs::read_to_string(asset("eot/set.tsv")).expect("set.tsv");
    let row = tsv
        .lines()
        .find(|l| l.starts_with("table\t"))
        .expect("table row");
    let f: Vec<&str> = row.split('\t').collect();
    (
        f[2].parse().expect("cut_ms"),
        f[3].parse().expect("pause_ms"),
    )
}

fn table_agent() -> Arc<dyn Agent> {
    // Lead (300 ms) + the first half (about 1.9 s) is under 2.6 s.
    Arc::new(Scripted {
        full_samples: 2600 * 16,
        first: "I would like to book a table for",
        whole: "I would like to book a table for four people, please.",
    })
}

/// The judge holds the turn at the pause after "for": one turn, answered
/// with the whole sentence after the user finished; nothing ends the turn
/// inside the pause.
#[test]
fn a_sentence_paused_after_a_dangling_word_is_one_turn() {
    let (timeline, second_half) = table_paused();
    let report = run(&timeline, table_agent(), config(TurnMode::Smart, false));
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let user = &report.committed[0].messages[0].content;
    assert_eq!(
        user,
        "I would like to book a table for four people, please."
    );
    assert!(!report.committed[0].interrupted);
    let stops = stops(&report.events);
    assert_eq!(stops.len(), 1, "stops: {stops:?}");
    assert!(stops[0].1 > second_half, "ended at {} ms", stops[0].1);
    assert!(first_audio(&report.events).is_some_and(|t| t > second_half));
    assert!(report.events.iter().any(|e| matches!(
        &e.event,
        Event::TurnJudged { verdict, action, .. } if verdict == "incomplete" && action == "hold"
    )));
}

/// The control: silence alone ends the turn inside the pause and answers
/// half a sentence (what the judge prevents).
#[test]
fn silence_alone_cuts_the_same_sentence_in_two() {
    let (timeline, second_half) = table_paused();
    let report = run(&timeline, table_agent(), config(TurnMode::Silence, false));
    let stops = stops(&report.events);
    assert!(
        stops.first().is_some_and(|s| s.1 < second_half),
        "stops: {stops:?}"
    );
    assert!(first_audio(&report.events).is_some_and(|t| t < second_half));
    assert!(!report
        .events
        .iter()
        .any(|e| matches!(e.event, Event::TurnJudged { .. })));
}

/// Said without the pause, the sentence is answered at the normal endpoint:
/// the words don't hold it.
#[test]
fn the_whole_sentence_is_answered_at_the_normal_endpoint() {
    let (timeline, _) = concat(&[
        silence_ms(LEAD_MS, 3),
        load16k("eot/table-whole.wav"),
        silence_ms(4000, 4),
    ]);
    let agent = Arc::new(Scripted {
        full_samples: 0,
        first: "",
        whole: "I would like to book a table for four people, please.",
    });
    let endpoint = SessionConfig::default().turn.endpoint_ms;
    let report = run(&timeline, agent, config(TurnMode::Smart, false));
    assert_eq!(report.committed.len(), 1);
    let stops = stops(&report.events);
    assert_eq!(stops.len(), 1);
    let (end, at) = stops[0];
    assert!(
        at - end <= endpoint + 20,
        "ended {} ms after the speech",
        at - end
    );
    let speak = first_audio(&report.events).expect("answered");
    assert!(speak - at <= 20, "first audio {speak}, end of turn {at}");
}

/// A user who stops after a dangling word and says nothing more is answered
/// at the backstop, not never.
#[test]
fn a_held_turn_is_released_at_the_backstop() {
    let (timeline, _) = concat(&[
        silence_ms(LEAD_MS, 5),
        load16k("eot/table-paused.wav")[..table_cut().0 as usize * 16].to_vec(),
        silence_ms(4000, 6),
    ]);
    let agent = Arc::new(Scripted {
        full_samples: usize::MAX,
        first: "I would like to book a table for",
        whole: "",
    });
    let backstop = EotConfig::default().backstop_ms;
    let report = run(&timeline, agent, config(TurnMode::Smart, false));
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    let stops = stops(&report.events);
    assert_eq!(stops.len(), 1);
    let (end, at) = stops[0];
    assert!(
        (backstop..=backstop + 40).contains(&(at - end)),
        "released {} ms after the speech",
        at - end
    );
    assert!(report.events.iter().any(|e| matches!(
        &e.event,
        Event::TurnJudged { action, .. } if action == "backstop"
    )));
}

/// With the parrot (no words) only the Smart Turn model judges: a real
/// recording spliced at a word boundary with a 0.8 s pause, which the model
/// calls incomplete, is one turn; the recording as it was is answered no
/// later than the normal endpoint.
#[cfg(feature = "embedded")]
#[test]
fn the_audio_model_holds_a_spliced_recording_and_answers_the_whole_one_on_time() {
    if models_or_skip().is_none() {
        return;
    }
    let (paused, _) = concat(&[
        silence_ms(LEAD_MS, 7),
        load16k("eot/librivox-0920-paused.wav"),
        silence_ms(4000, 8),
    ]);
    let report = run(
        &paused,
        Arc::new(ParrotAgent),
        config(TurnMode::Smart, true),
    );
    assert_eq!(report.committed.len(), 1, "events: {:#?}", report.events);
    assert_eq!(stops(&report.events).len(), 1);
    assert!(!report.committed[0].interrupted);

    let (whole, _) = concat(&[
        silence_ms(LEAD_MS, 7),
        load16k("speech/librivox-0920.wav"),
        silence_ms(4000, 8),
    ]);
    let endpoint = SessionConfig::default().turn.endpoint_ms;
    let report = run(&whole, Arc::new(ParrotAgent), config(TurnMode::Smart, true));
    assert_eq!(report.committed.len(), 1);
    let stops = stops(&report.events);
    assert_eq!(stops.len(), 1);
    let (end, at) = stops[0];
    assert!(
        at - end <= endpoint + 20,
        "ended {} ms after the speech",
        at - end
    );
}
