//! End to end on the embedded stack, offline: the bundled recording of two
//! spoken questions is replayed through VAD → Whisper (worker process) →
//! SmolLM2 (llama.cpp) → Piper; the transcripts match the questions, the
//! answer to "what is the capital of France" mentions Paris, and the
//! timeline's bot channel carries each spoken answer after its question.
//!
//! Needs the models (`colloquy models fetch`); skipped without them unless
//! `COLLOQUY_REQUIRE_MODELS=1`, which makes a missing model a failure. CI runs
//! it inside a new network namespace (`unshare -n`), so it proves no network
//! is used.

mod common;
use colloquy::frame::Event;
use colloquy::session::SessionConfig;
use colloquy::stt::normalize::word_errors;
use colloquy::transport::file::{replay, Pace, ReplayOptions};

#[test]
fn two_spoken_questions_get_spoken_answers_offline() {
    let Some((runtime, stack)) = common::stack_or_skip() else {
        return;
    };
    let agent = stack.agent(runtime.handle().clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = ReplayOptions::new(common::asset("conversation.wav"));
    opts.pace = Pace::Fast;
    opts.out_wav = Some(dir.path().join("timeline.wav"));
    let report = replay(&opts, agent, SessionConfig::default()).expect("replay");

    let transcripts: Vec<String> = report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Transcript { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    let references = [common::transcript("q-france"), common::transcript("q-week")];
    assert_eq!(transcripts.len(), 2, "transcripts: {transcripts:?}");
    let (mut errors, mut words) = (0, 0);
    for (hyp, reference) in transcripts.iter().zip(&references) {
        let (e, n) = word_errors(reference, hyp);
        println!("reference: {reference}\nheard:     {hyp}\nword errors: {e}/{n}");
        errors += e;
        words += n;
    }
    let wer = errors as f64 / words as f64;
    println!("WER on the two questions: {:.1} %", wer * 100.0);
    assert!(wer <= 0.35, "WER {:.1} %", wer * 100.0);

    assert_eq!(report.committed.len(), 2, "events: {:?}", report.events);
    let answers: Vec<&str> = report
        .committed
        .iter()
        .map(|r| r.messages.last().map_or("", |m| m.content.as_str()))
        .collect();
    println!("answers: {answers:?}");
    assert!(!answers[0].trim().is_empty() && !answers[1].trim().is_empty());
    // What the bot produced for the first question (the committed answer is
    // only the heard part when the second question cut a long reply short).
    let bot_text = |e: &colloquy::frame::TimedEvent| match &e.event {
        Event::BotText { epoch, text } => Some((*epoch, text.clone())),
        _ => None,
    };
    let first_epoch = report.events.iter().find_map(bot_text).map(|(e, _)| e);
    let said: String = report
        .events
        .iter()
        .filter_map(bot_text)
        .filter_map(|(epoch, text)| (Some(epoch) == first_epoch).then_some(text))
        .collect::<Vec<_>>()
        .join(" ");
    println!("first reply as synthesised: {said}");
    assert!(
        colloquy::stt::normalize::normalize(&said)
            .starts_with(&colloquy::stt::normalize::normalize(answers[0])),
        "the committed answer is not a prefix of what was said: {:?} vs {said:?}",
        answers[0]
    );
    // The answer is only about France when STT heard "France" (Whisper
    // sometimes hears "capital and friends" in this synthetic voice).
    if transcripts[0].to_lowercase().contains("france") {
        assert!(said.to_lowercase().contains("paris"), "answer 1: {said}");
    }

    // Each answer is audible on the bot channel after its question ended.
    let latencies: Vec<(u64, u64)> = report
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::TurnLatency {
                end_of_speech_ms,
                first_audio_ms,
                ..
            } => Some((end_of_speech_ms, first_audio_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(latencies.len(), 2);
    for (i, &(end, first)) in latencies.iter().enumerate() {
        assert!(first > end, "turn {i}: audio before the question ended");
        println!("turn {i}: voice-to-voice {} ms", first - end);
        let from = first as usize * 16;
        let level = colloquy::frame::rms(&report.bot[from..(from + 16_000).min(report.bot.len())]);
        assert!(
            level > 0.01,
            "turn {i}: bot channel silent after first audio (rms {level})"
        );
        assert!(
            colloquy::frame::rms(&report.bot[end as usize * 16 - 8000..end as usize * 16]) < 0.001,
            "turn {i}: bot talked over the question"
        );
    }
    stack.save();
}

/// A backchannel ("mm hmm", second voice) over the spoken answer: the
/// barge-in is confirmed (the bot stops), the transcript has no real words,
/// so it is a false interruption and the bot restates the sentence; the
/// answer is committed whole, not marked interrupted.
#[test]
fn a_backchannel_over_the_answer_is_a_false_interruption_and_the_bot_resumes() {
    let Some((runtime, stack)) = common::stack_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let question = common::load16k("speech/q-france.wav");
    let (mut timeline, _) = common::concat(&[
        common::silence_ms(500, 1),
        question,
        common::silence_ms(9000, 2),
    ]);
    let input = dir.path().join("q.wav");
    common::write_wav16k(&input, &timeline);
    let run = |path: &std::path::Path| {
        let mut opts = ReplayOptions::new(path);
        opts.pace = Pace::Instant;
        replay(
            &opts,
            stack.agent(runtime.handle().clone()),
            SessionConfig::default(),
        )
        .expect("replay")
    };
    // Pass 1: when does the answer start?
    let first = run(&input);
    let start = first
        .events
        .iter()
        .find_map(|e| matches!(e.event, Event::BotStartedSpeaking { .. }).then_some(e.t_ms))
        .expect("the bot answers") as usize;
    // Pass 2: "mm hmm" 400 ms into the answer.
    common::mix(
        &mut timeline,
        &common::load16k("speech/backchannel-f3.wav"),
        (start + 400) * 16,
    );
    let input2 = dir.path().join("q-mmhmm.wav");
    common::write_wav16k(&input2, &timeline);
    let report = run(&input2);
    let kinds: Vec<&str> = report.events.iter().map(|e| e.event.kind()).collect();
    let heard: Vec<String> = report
        .events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Transcript { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect();
    println!("transcripts: {heard:?}");
    assert!(
        kinds.contains(&"clear_playback"),
        "the bot stopped for the overlap: {kinds:?}"
    );
    assert!(kinds.contains(&"false_interruption"), "{kinds:?}");
    assert!(kinds.contains(&"resumed"), "{kinds:?}");
    assert_eq!(report.committed.len(), 1);
    let answer = report.committed[0].messages.last().expect("answer");
    assert!(!answer.interrupted);
    // The point here is the resume, not the model's knowledge.
    assert!(!answer.content.trim().is_empty());
}
