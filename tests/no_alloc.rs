//! Proves what the data plane allocates, frame by frame, with a counting
//! global allocator on this thread, for every allocation-free VAD backend:
//! ring → resample → VAD → turn detector → utterance capture → coordinator
//! tick (`Session::process`), with the transport's output ring drained every
//! 20 ms as a device or the WebSocket sender does.
//!
//! 1. Steady state allocates nothing: inside continuous speech, and in room
//!    noise (a −55 dBFS floor, never digital silence) after the turn ended.
//! 2. A whole conversation — real speech with pauses over the noise floor,
//!    the parrot agent answering, its reply playing and draining — allocates
//!    only on the frames that carry a turn event, and only for these reasons
//!    (asserted exactly, see `ALLOCATING`):
//!    - `speech_paused`: the utterance so far is copied (`UtteranceBuffer::
//!      copy`) and a speculative job is dispatched (history, audio `Arc`,
//!      cancellation token, the agent's reply message);
//!    - `speech_stopped` / `turn_opened`: the utterance is taken and the
//!      turn's job dispatched (same parts);
//!    - `speech_started`: the turn's record opens (the first one grows the
//!      coordinator's buffers once);
//!    - the reply's delivery (`staged`, `bot_text`, `bot_started_speaking`,
//!      `turn_latency`): its audio is queued for playout, its text kept for
//!      the spoken prefix, the latency event built;
//!    - its end (`bot_stopped_speaking`, `committed`): the round is appended
//!      to history;
//!    - a barge-in (`interrupted`, `clear_playback`; `false_interruption`,
//!      `resumed`): the spoken prefix is cut into a string and committed;
//!    - a dropped speculative job (`task_cancelled`, `quarantined`).
//!
//!    The parrot's replies overlap the next utterance, so the run includes
//!    barge-ins. Every other frame — the overwhelming majority — allocates nothing.

mod common;
use colloquy::agent::parrot::ParrotAgent;
use colloquy::audio::{input_ring, output_ring, read_wav, OutputConsumer};
use colloquy::session::{Session, SessionConfig};
use colloquy::vad::VadKind;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(|c| c.get()) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCS.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(|a| a.get()))
}

/// The transport's side: the output ring's consumer, read every 20 ms.
struct Speaker {
    out: OutputConsumer,
    buf: Vec<f32>,
    played: usize,
}

impl Speaker {
    fn new(out: OutputConsumer) -> Self {
        Self {
            out,
            buf: vec![0.0; 320],
            played: 0,
        }
    }
    fn read(&mut self) {
        self.played += self.out.read(&mut self.buf);
    }
}

/// Pushes `steps` × 20 ms of the clip (looped), processes it, drains the
/// output ring and the events as a transport does.
fn drive(
    session: &mut Session,
    prod: &mut colloquy::audio::InputProducer,
    speaker: &mut Speaker,
    clip: &[f32],
    step: usize,
    steps: usize,
) -> usize {
    let mut frames = 0;
    let mut pos = 0;
    for _ in 0..steps {
        if pos + step > clip.len() {
            pos = 0;
        }
        prod.push(&clip[pos..pos + step]);
        pos += step;
        session.process(|_| frames += 1);
        speaker.read();
        session.drain_events().for_each(drop);
    }
    frames
}

#[test]
fn zero_allocations_per_frame_in_steady_state() {
    // Real speech at 44.1 kHz stereo exercises the resampler too.
    let speech = read_wav(&common::asset("speech/librivox-0870.wav")).expect("asset");
    let mono16: Vec<f32> = speech.samples.clone();
    let mut stereo441 = Vec::new();
    {
        let mut r = colloquy::audio::EdgeResampler::new(16_000, 1, 44_100).expect("up");
        r.process(&mono16, |s| {
            for &v in s {
                stereo441.push(v);
                stereo441.push(v);
            }
        });
    }
    // Room noise, not digital silence: the VAD must score it as non-speech.
    let noise: Vec<f32> = {
        let mut n = vec![0i16; 44_100];
        colloquy::audio::signal::add_noise_floor(&mut n, -55.0, 3);
        n.iter().flat_map(|&s| [s as f32 / 32768.0; 2]).collect()
    };
    for kind in VadKind::ALL {
        let config = SessionConfig {
            vad: kind,
            input_rate: 44_100,
            input_channels: 2,
            ..SessionConfig::default()
        };
        let step = 882 * 2;
        let (mut prod, cons) = input_ring(step * 16);
        let (out, out_cons) = output_ring(16_000);
        let mut speaker = Speaker::new(out_cons);
        let mut session = Session::new(config, Arc::new(ParrotAgent), cons, out).expect("session");
        // Warm up: reach the speaking state so the utterance buffer is capturing.
        drive(&mut session, &mut prod, &mut speaker, &stereo441, step, 25);
        assert!(session.now_ms() >= 400);
        // Steady state inside speech: no turn event in this window (the clip's
        // first seconds are continuous speech).
        let (frames, allocs) = count(|| {
            drive(
                &mut session,
                &mut prod,
                &mut speaker,
                &stereo441[step * 25..],
                step,
                60,
            )
        });
        assert!(frames >= 59, "{kind:?}: {frames} frames");
        assert_eq!(
            allocs, 0,
            "{kind:?}: {allocs} allocations over {frames} speech frames"
        );
        // Then room noise: warm up through the end of turn and the parrot's
        // reply (played and drained), then count.
        drive(&mut session, &mut prod, &mut speaker, &noise, step, 400);
        let (frames, allocs) =
            count(|| drive(&mut session, &mut prod, &mut speaker, &noise, step, 100));
        assert!(frames >= 99);
        assert_eq!(
            allocs, 0,
            "{kind:?}: {allocs} allocations over {frames} frames of room noise"
        );
    }
}

/// Event kinds whose frames may allocate (see the module doc, point 2).
const ALLOCATING: &[&str] = &[
    "speech_started",
    "speech_paused",
    "speech_stopped",
    "turn_opened",
    "staged",
    "bot_text",
    "bot_started_speaking",
    "bot_stopped_speaking",
    "committed",
    "task_cancelled",
    "quarantined",
    "interrupted",
    "clear_playback",
    "false_interruption",
    "resumed",
    "turn_latency",
];

#[test]
fn a_whole_conversation_allocates_only_on_turn_event_frames() {
    // Real speech with pauses (1.2 s gaps: each one a pause, then an end of
    // turn) over room noise, 16 kHz mono, 30 s.
    let clips: Vec<Vec<i16>> = ["librivox-0870", "cards-001", "librivox-0880", "cards-002"]
        .iter()
        .map(|n| common::load16k(&format!("speech/{n}.wav")))
        .collect();
    let pcm = colloquy::audio::signal::conversation(&clips, 1200, 30_000, -55.0);
    let input: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
    for kind in VadKind::ALL {
        let config = SessionConfig {
            vad: kind,
            pacing: colloquy::session::Pacing::Arrival,
            ..SessionConfig::default()
        };
        let (mut prod, cons) = input_ring(320 * 16);
        let (out, out_cons) = output_ring(16_000);
        let mut speaker = Speaker::new(out_cons);
        let mut session = Session::new(config, Arc::new(ParrotAgent), cons, out).expect("session");
        let mut quiet_frames = 0usize;
        let mut event_frames = 0usize;
        let mut allocating = std::collections::BTreeMap::<Vec<&str>, usize>::new();
        let mut kinds_seen = std::collections::BTreeSet::new();
        let mut events = Vec::with_capacity(64);
        for chunk in input.chunks_exact(320) {
            prod.push(chunk);
            let (_, allocs) = count(|| {
                session.process(|_| {});
                speaker.read();
                events.extend(session.drain_events().map(|e| e.event.kind()));
            });
            // (`events` keeps its capacity: the next count sees no growth.)
            let mut kinds: Vec<&str> = events.clone();
            events.clear();
            kinds.sort();
            kinds.dedup();
            kinds_seen.extend(kinds.iter().copied());
            if kinds.is_empty() {
                quiet_frames += 1;
                assert_eq!(
                    allocs,
                    0,
                    "{kind:?}: a frame without any turn event allocated {allocs} times at {} ms",
                    session.now_ms()
                );
            } else {
                event_frames += 1;
                if allocs > 0 {
                    *allocating.entry(kinds.clone()).or_default() += 1;
                    assert!(
                        kinds.iter().any(|k| ALLOCATING.contains(k)),
                        "{kind:?}: frame at {} ms allocated {allocs} times with events {kinds:?}",
                        session.now_ms()
                    );
                }
            }
        }
        eprintln!("{kind:?}: quiet {quiet_frames}, event frames {event_frames}, allocating {allocating:?}, seen {kinds_seen:?}, played {}", speaker.played);
        // The conversation really happened: turns, pauses and replies.
        for k in [
            "speech_paused",
            "speech_stopped",
            "bot_started_speaking",
            "committed",
            "interrupted",
        ] {
            assert!(kinds_seen.contains(k), "{kind:?}: no {k} in {kinds_seen:?}");
        }
        assert!(speaker.played > 16_000, "{kind:?}: the replies played");
        assert!(
            quiet_frames > 10 * event_frames,
            "{kind:?}: {quiet_frames} quiet frames, {event_frames} with events"
        );
    }
}
