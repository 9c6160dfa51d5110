//! The echo scenarios of issue 16 in the virtual room (`echo::room`): a real
//! session (echo control → VAD → turn detector → coordinator) with the
//! output callback's body playing into a simulated echo path (60 ms, full
//! level, reflections and a 200 ms tail, -60 dBFS noise) that feeds its own
//! microphone; real recordings for the bot's reply and the user's voices; the
//! virtual clock, so every bound below is deterministic.
//!
//! The same scenarios run on PulseAudio devices with the real binary in
//! `tests/local_devices.rs`.

mod common;

use colloquy::echo::room::{self, Barge, Outcome, Room, Scenario};
use colloquy::echo::EchoMode;
use colloquy::session::SessionConfig;
use common::{concat, load16k, silence_ms, speech_bounds};

/// About 21 s of one reader (LibriVox), sentences 150 ms apart.
fn long_reply() -> Vec<i16> {
    let mut pieces = Vec::new();
    for (i, name) in ["0870", "0890", "0920", "0930"].iter().enumerate() {
        let clip = load16k(&format!("speech/librivox-{name}.wav"));
        let (a, b) = speech_bounds(&clip);
        pieces.push(clip[a..b].to_vec());
        pieces.push(silence_ms(150, i as u32 + 10));
    }
    concat(&pieces).0
}

/// A different, real speaker (pocketsphinx `cards`).
fn second_voice() -> Vec<i16> {
    load16k("speech/cards-005.wav")
}

fn scenario(mode: EchoMode, room: Option<Room>, barge: Option<Barge>) -> Scenario {
    let reply = long_reply();
    let reply_ms = reply.len() as u64 / 16;
    Scenario {
        mode,
        room,
        prompt: load16k("speech/cards-001.wav"),
        prompt_at_ms: 500,
        reply,
        barge,
        // Prompt + endpointing + the whole reply + 3 s of tail in which a
        // self-answer would open a second turn.
        until_ms: 500 + 1_100 + 1_000 + reply_ms + 3_000,
        config: SessionConfig::default(),
    }
}

fn barge(level_db: f32) -> Option<Barge> {
    Some(Barge {
        clip: second_voice(),
        after_bot_ms: 8_000,
        level_db,
    })
}

fn summary(o: &Outcome) -> String {
    let kinds: Vec<String> = o
        .events
        .iter()
        .filter(|e| {
            matches!(
                e.event.kind(),
                "speech_started"
                    | "speech_stopped"
                    | "turn_opened"
                    | "interrupted"
                    | "bot_started_speaking"
                    | "bot_stopped_speaking"
                    | "false_interruption"
            )
        })
        .map(|e| format!("{} {}", e.t_ms, e.event.kind()))
        .collect();
    format!(
        "echo {:.1} dBFS, bot from {:?} ms, voice onset {:?} ms, echo stats {:?}; events: {}",
        o.echo_dbfs,
        o.bot_started_ms,
        o.barge_onset_ms,
        o.echo,
        kinds.join(", ")
    )
}

/// The bot says a 21 s reply alone, its echo at full level: with the
/// canceller (and with the gate) it neither interrupts itself nor answers its
/// own echo; with nothing it interrupts itself (the scenario bites).
#[test]
fn a_long_reply_with_full_level_echo_neither_interrupts_nor_answers_itself() {
    for mode in [EchoMode::Aec, EchoMode::Gate, EchoMode::Off] {
        let o = room::run(&scenario(mode, Some(Room::typical(60.0)), None));
        let s = summary(&o);
        assert!(
            o.bot_started_ms.is_some(),
            "{mode}: the bot never spoke; {s}"
        );
        if mode == EchoMode::Off {
            assert!(
                o.count("interrupted") > 0,
                "off: the bot should hear itself; {s}"
            );
            continue;
        }
        assert_eq!(o.count("interrupted"), 0, "{mode}: self-interruption; {s}");
        assert_eq!(o.count("turn_opened"), 1, "{mode}: answered its echo; {s}");
        assert_eq!(o.count("bot_stopped_speaking"), 1, "{mode}: {s}");
        if mode == EchoMode::Aec {
            let erle = o.echo.erle_db.expect("an ERLE estimate");
            assert!(erle > 10.0, "aec: ERLE estimate {erle:.1} dB; {s}");
        }
    }
}

/// A second voice 12 dB below the echo starts 8 s into the reply: the
/// canceller lets it through and the bot stops within 500 ms of its onset;
/// the gate misses it (the bot plays on to the end).
#[test]
fn a_voice_12_db_below_the_echo_stops_the_bot_with_the_canceller_not_with_the_gate() {
    let o = room::run(&scenario(
        EchoMode::Aec,
        Some(Room::typical(60.0)),
        barge(-12.0),
    ));
    let s = summary(&o);
    let latency = o
        .barge_in_ms()
        .unwrap_or_else(|| panic!("aec: no barge-in; {s}"));
    eprintln!("aec: barge-in {latency} ms after the voice's onset; {s}");
    assert!(latency <= 500, "aec: barge-in after {latency} ms; {s}");
    assert_eq!(o.count("turn_opened"), 2, "aec: the voice's turn; {s}");

    let o = room::run(&scenario(
        EchoMode::Gate,
        Some(Room::typical(60.0)),
        barge(-12.0),
    ));
    let s = summary(&o);
    assert_eq!(o.barge_in_ms(), None, "gate: barge-in at -12 dB; {s}");
    assert_eq!(o.count("interrupted"), 0, "gate: {s}");
}

/// Headphones (no echo path): `off` and `aec` behave the same: no
/// self-interruption, and a quiet second voice (12 dB below the reply's
/// level) interrupts within 500 ms.
#[test]
fn with_headphones_every_mode_hears_the_user_as_today() {
    for mode in [EchoMode::Off, EchoMode::Aec] {
        let o = room::run(&scenario(mode, None, barge(-12.0)));
        let s = summary(&o);
        let latency = o
            .barge_in_ms()
            .unwrap_or_else(|| panic!("{mode}: no barge-in; {s}"));
        assert!(latency <= 500, "{mode}: barge-in after {latency} ms; {s}");
        assert_eq!(o.count("interrupted"), 1, "{mode}: {s}");
    }
}
