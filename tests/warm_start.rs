//! Warm start (issue 14): every bundled recording, replayed in a fresh
//! session on the embedded stack at `--pace fast` (each stage's real compute
//! charged to the timeline), logs `prefill_done` — the system prompt is in
//! the LLM's cache — before the first `speech_stopped`, i.e. while the user
//! is still speaking, so the first turn does not pay for it.
//!
//! The first session of the process is the cold one (nothing cached yet);
//! later sessions find the prompt cached and report it reused.
//!
//! Needs the models (`colloquy models fetch`); skipped without them unless
//! `COLLOQUY_REQUIRE_MODELS=1`.

mod common;
use colloquy::frame::Event;
use colloquy::session::SessionConfig;
use colloquy::transport::file::{replay, Pace, ReplayOptions};
use std::time::Duration;

#[test]
fn every_recording_finds_the_prompt_prefilled_before_its_first_speech_stopped() {
    let Some((runtime, stack)) = common::stack_or_skip() else {
        return;
    };
    let mut recordings: Vec<_> = std::fs::read_dir(common::asset("speech"))
        .expect("assets/speech")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    recordings.sort();
    recordings.insert(0, common::asset("conversation.wav"));
    assert!(recordings.len() > 10, "{recordings:?}");
    let mut cold = true;
    for path in &recordings {
        let mut opts = ReplayOptions::new(path);
        opts.pace = Pace::Fast;
        // Only the start of the session matters here: stop at the input's end.
        opts.tail_cap = Duration::ZERO;
        let report = replay(
            &opts,
            stack.agent(runtime.handle().clone()),
            SessionConfig::default(),
        )
        .expect("replay");
        let at = |kind: &str| report.events.iter().position(|e| e.event.kind() == kind);
        let name = path.file_name().unwrap().to_string_lossy();
        let prefill = at("prefill_done").unwrap_or_else(|| panic!("{name}: no prefill_done"));
        let stopped = at("speech_stopped").unwrap_or_else(|| panic!("{name}: no speech_stopped"));
        let e = &report.events[prefill];
        let Event::PrefillDone {
            tokens,
            reused,
            ms,
            ref error,
        } = e.event
        else {
            unreachable!()
        };
        println!(
            "{name:<24} prefill_done at {:>5} ms ({tokens} tokens, {reused} cached, {ms} ms of compute), speech_stopped at {:>5} ms",
            e.t_ms, report.events[stopped].t_ms
        );
        assert!(error.is_none(), "{name}: {error:?}");
        assert!(tokens > 20, "{name}: the system prompt has {tokens} tokens");
        assert!(
            prefill < stopped,
            "{name}: prefill_done (event {prefill}, {} ms) after speech_stopped (event {stopped}, {} ms)",
            e.t_ms,
            report.events[stopped].t_ms
        );
        if !cold {
            assert_eq!(
                reused, tokens,
                "{name}: a later session re-decoded the prompt"
            );
        }
        cold = false;
    }
}
