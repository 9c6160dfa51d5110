//! Property tests of the turn coordinator (invariants in `src/turn/mod.rs`)
//! over random interleavings of user speech, task results (current, stale
//! and unknown), barge-ins, tool results, failures and shutdown:
//! 1. history grows only by whole committed rounds;
//! 2. nothing from an old epoch is ever staged;
//! 3. after a barge-in the transport's next frame is silent (no sample of the
//!    old turn), unless the bot deliberately resumed or a new reply started;
//! 4. every dispatched task ends exactly once;
//! 5. no tool call without its result in the context.

use colloquy::agent::{Agent, CostMode, Payload, Reporter, TaskMessage, TurnJob};
use colloquy::audio::{output_ring, OutputConsumer};
use colloquy::frame::{Event, TimedEvent, FRAME_SAMPLES};
use colloquy::llm::{ChatMessage, Role, ToolCall};
use colloquy::turn::{Coordinator, CoordinatorConfig, Playout};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records jobs; the test delivers their results by hand.
struct ScriptAgent {
    jobs: Arc<Mutex<Vec<TurnJob>>>,
    transcribes: bool,
}

impl Agent for ScriptAgent {
    fn name(&self) -> &str {
        "script"
    }
    fn start(&self, job: TurnJob, _reporter: Reporter) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.push(job);
        }
    }
    fn transcribes(&self) -> bool {
        self.transcribes
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The user speaks for `ms`, then the endpoint passes.
    UserSpeaks { ms: u64 },
    /// The user speaks for `ms`, pauses (a speculative turn may open; results
    /// may arrive for it), and then either goes on or stops.
    UserPauses { ms: u64, goes_on: bool },
    /// As `UserPauses`, but the end-of-turn judge holds the speculative turn
    /// past the endpoint for `frames` (`--turn smart`, session/hold.rs):
    /// then the user goes on (the session drops the held turn and reports
    /// the new speech) or the hold is released (`on_user_stopped`).
    UserHeld { ms: u64, frames: u32, goes_on: bool },
    /// Time passes: frames are processed and played.
    Idle { frames: u32 },
    /// A result for job `pick` (modulo jobs so far; stale jobs included).
    Reply { pick: usize, kind: u8, words: u8 },
    /// A result from a task nobody dispatched.
    Unknown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (40u64..2500).prop_map(|ms| Op::UserSpeaks { ms }),
        2 => (100u64..2500, any::<bool>()).prop_map(|(ms, goes_on)| Op::UserPauses { ms, goes_on }),
        2 => (100u64..2500, 1u32..80, any::<bool>())
            .prop_map(|(ms, frames, goes_on)| Op::UserHeld { ms, frames, goes_on }),
        4 => (1u32..80).prop_map(|frames| Op::Idle { frames }),
        6 => (0usize..8, 0u8..7, 0u8..4).prop_map(|(pick, kind, words)| Op::Reply { pick, kind, words }),
        1 => Just(Op::Unknown),
    ]
}

struct Harness {
    coord: Coordinator,
    jobs: Arc<Mutex<Vec<TurnJob>>>,
    out: OutputConsumer,
    now_sample: u64,
    history_len: usize,
    rounds: Vec<Vec<ChatMessage>>,
    events: Vec<TimedEvent>,
    /// Set by a clear_playback; the next frame read must be silent unless
    /// the bot resumed or a new reply started in between.
    expect_silence: bool,
    violations: Vec<String>,
}

const EPOCH_MARK: i16 = 1000;

impl Harness {
    fn new(transcribes: bool, resume: colloquy::turn::ResumeMode) -> Self {
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let agent = Arc::new(ScriptAgent {
            jobs: jobs.clone(),
            transcribes,
        });
        let (tx, _rx) = crossbeam_channel::unbounded();
        let (prod, out) = output_ring(16_000 * 4);
        let playout = Playout::new(prod, 16_000).expect("playout");
        let config = CoordinatorConfig {
            resume,
            // The whole history, to check it grows by whole rounds only (the
            // bound is `turn/history.rs`'s own test).
            history_messages: usize::MAX,
            ..CoordinatorConfig::default()
        };
        let coord = Coordinator::new(
            config,
            agent,
            tx,
            CostMode::Zero,
            playout,
            CancellationToken::new(),
        );
        Self {
            coord,
            jobs,
            out,
            now_sample: 0,
            history_len: 0,
            rounds: Vec::new(),
            events: Vec::new(),
            expect_silence: false,
            violations: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.now_sample / 16
    }

    /// Collects events and committed rounds; checks invariants 1 and 5.
    fn after_step(&mut self) {
        for e in self.coord.drain_events() {
            match &e.event {
                Event::ClearPlayback { .. } => self.expect_silence = true,
                Event::Resumed { .. } | Event::BotStartedSpeaking { .. } => {
                    self.expect_silence = false
                }
                _ => {}
            }
            self.events.push(e);
        }
        let rounds: Vec<_> = self.coord.drain_committed().collect();
        let history = self.coord.history().to_vec();
        let mut expected_len = self.history_len;
        for r in &rounds {
            let ok = r.messages.first().is_some_and(|m| m.role == Role::User)
                && r.messages.last().is_some_and(|m| m.role == Role::Assistant);
            if !ok {
                self.violations
                    .push(format!("round is not whole: {:?}", r.messages));
            }
            // Invariant 5: every call has its result in the same round.
            for m in &r.messages {
                for c in &m.tool_calls {
                    let answered = r
                        .messages
                        .iter()
                        .any(|t| t.role == Role::Tool && t.tool_call_id.as_deref() == Some(&c.id));
                    if !answered {
                        self.violations.push(format!("orphaned tool call {}", c.id));
                    }
                }
            }
            if history.get(expected_len..expected_len + r.messages.len()) != Some(&r.messages[..]) {
                self.violations
                    .push("history does not end with the committed round".into());
            }
            expected_len += r.messages.len();
            self.rounds.push(r.messages.clone());
        }
        if history.len() != expected_len {
            self.violations.push(format!(
                "history grew by {} messages outside committed rounds",
                history.len() as i64 - self.history_len as i64
            ));
        }
        self.history_len = history.len();
    }

    fn frame(&mut self) {
        self.now_sample += FRAME_SAMPLES as u64;
        let now_ms = self.now_ms();
        self.coord.on_frame(self.now_sample, now_ms);
        self.after_step();
        let mut buf = [0.0f32; FRAME_SAMPLES];
        let n = self.out.read(&mut buf);
        if self.expect_silence && n > 0 {
            let epochs: Vec<i16> = buf[..n]
                .iter()
                .map(|&s| (s * 32768.0).round() as i16 - EPOCH_MARK)
                .collect();
            self.violations.push(format!(
                "audio after clear_playback (epochs {:?})",
                &epochs[..epochs.len().min(3)]
            ));
        }
        self.expect_silence = false;
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::UserSpeaks { ms } => {
                let at = self.now_sample;
                let now_ms = self.now_ms();
                self.coord.on_user_started(at, now_ms);
                self.after_step();
                for _ in 0..ms / 20 {
                    self.frame();
                }
                for _ in 0..25 {
                    self.frame();
                }
                let audio = vec![7i16; (ms * 16) as usize];
                let now_ms = self.now_ms();
                self.coord
                    .on_user_stopped(&audio, ms, now_ms.saturating_sub(500), now_ms);
                self.after_step();
            }
            Op::UserPauses { ms, goes_on } => {
                let at = self.now_sample;
                let now_ms = self.now_ms();
                self.coord.on_user_started(at, now_ms);
                self.after_step();
                for _ in 0..ms / 20 {
                    self.frame();
                }
                let audio = vec![7i16; (ms * 16) as usize];
                for _ in 0..10 {
                    self.frame();
                }
                let now_ms = self.now_ms();
                let jobs_before = self.jobs.lock().expect("jobs").len();
                self.coord
                    .on_user_paused(&audio, ms, now_ms.saturating_sub(200), now_ms);
                self.after_step();
                let speculative = {
                    let jobs = self.jobs.lock().expect("jobs");
                    (jobs.len() > jobs_before).then(|| jobs[jobs.len() - 1].clone())
                };
                // The speculative job answers at once; none of it may be
                // heard before the endpoint (invariant 8).
                if let Some(job) = &speculative {
                    self.deliver(
                        job.epoch,
                        job.task,
                        Payload::Transcript("what time is it".into()),
                    );
                    self.deliver(
                        job.epoch,
                        job.task,
                        Payload::Speech {
                            text: "it is noon".into(),
                            audio: vec![EPOCH_MARK + job.epoch as i16; 320 * 8].into(),
                        },
                    );
                    self.frame();
                    if self.coord.bot_speaking() {
                        self.violations
                            .push("a held speculative turn started speaking".into());
                    }
                }
                if goes_on {
                    let now_ms = self.now_ms();
                    self.coord.on_user_continued(now_ms);
                    self.after_step();
                    for _ in 0..10 {
                        self.frame();
                    }
                }
                for _ in 0..10 {
                    self.frame();
                }
                let now_ms = self.now_ms();
                self.coord
                    .on_user_stopped(&audio, ms, now_ms.saturating_sub(400), now_ms);
                self.after_step();
                // Confirmed by the endpoint: the held reply plays at once.
                if speculative.is_some() && !goes_on && !self.coord.bot_speaking() {
                    self.violations
                        .push("a confirmed speculative turn did not start speaking".into());
                }
            }
            Op::UserHeld {
                ms,
                frames,
                goes_on,
            } => {
                let at = self.now_sample;
                let now_ms = self.now_ms();
                self.coord.on_user_started(at, now_ms);
                self.after_step();
                for _ in 0..ms / 20 {
                    self.frame();
                }
                let audio = vec![7i16; (ms * 16) as usize];
                for _ in 0..10 {
                    self.frame();
                }
                let now_ms = self.now_ms();
                let jobs_before = self.jobs.lock().expect("jobs").len();
                self.coord
                    .on_user_paused(&audio, ms, now_ms.saturating_sub(200), now_ms);
                self.after_step();
                let speculative = {
                    let jobs = self.jobs.lock().expect("jobs");
                    (jobs.len() > jobs_before).then(|| jobs[jobs.len() - 1].clone())
                };
                if let Some(job) = &speculative {
                    self.deliver(
                        job.epoch,
                        job.task,
                        Payload::Transcript("book a table for".into()),
                    );
                    self.deliver(
                        job.epoch,
                        job.task,
                        Payload::Speech {
                            text: "for how many".into(),
                            audio: vec![EPOCH_MARK + job.epoch as i16; 320 * 8].into(),
                        },
                    );
                    self.deliver(job.epoch, job.task, Payload::Done);
                }
                // Held past the endpoint: nothing of it may play (invariant 8).
                for _ in 0..10 + frames {
                    self.frame();
                    if speculative.is_some() && self.coord.bot_speaking() {
                        self.violations
                            .push("a turn held past the endpoint started speaking".into());
                    }
                }
                if goes_on {
                    // As the session does when speech starts during a hold.
                    let (at, now_ms) = (self.now_sample, self.now_ms());
                    self.coord.on_user_continued(now_ms);
                    self.coord.on_user_started(at, now_ms);
                    self.after_step();
                    for _ in 0..ms / 20 {
                        self.frame();
                    }
                    for _ in 0..20 {
                        self.frame();
                    }
                }
                let now_ms = self.now_ms();
                self.coord
                    .on_user_stopped(&audio, ms, now_ms.saturating_sub(400), now_ms);
                self.after_step();
                if speculative.is_some() && !goes_on && !self.coord.bot_speaking() {
                    self.violations
                        .push("a released held turn did not start speaking".into());
                }
            }
            Op::Idle { frames } => {
                for _ in 0..frames {
                    self.frame();
                }
            }
            Op::Reply { pick, kind, words } => {
                let job = {
                    let jobs = self.jobs.lock().expect("jobs");
                    if jobs.is_empty() {
                        return;
                    }
                    jobs[pick % jobs.len()].clone()
                };
                let payload = match kind {
                    0 => Payload::Transcript(
                        ["", "mm hmm", "what time is it", "okay"][words as usize % 4].into(),
                    ),
                    1 | 2 => Payload::Speech {
                        text: "one two three four".into(),
                        audio: vec![EPOCH_MARK + job.epoch as i16; 320 * (4 + words as usize * 10)]
                            .into(),
                    },
                    3 => Payload::Tool {
                        call: ToolCall {
                            id: format!("call-{}", job.task),
                            name: "clock".into(),
                            arguments: "{}".into(),
                        },
                        result: "noon".into(),
                    },
                    4 => Payload::Done,
                    5 => Payload::EndCall,
                    _ => Payload::Failed("scripted failure".into()),
                };
                self.deliver(job.epoch, job.task, payload);
            }
            Op::Unknown => self.deliver(self.coord.epoch(), 10_000, Payload::Done),
        }
    }

    fn deliver(&mut self, epoch: u64, task: u64, payload: Payload) {
        let current = self.coord.epoch();
        let before = self.events.len();
        let now_ms = self.now_ms();
        self.coord.on_message(
            TaskMessage {
                epoch,
                task,
                dispatched_ms: 0,
                cost: Duration::ZERO,
                payload,
            },
            now_ms,
        );
        self.after_step();
        // Invariant 2: anything staged by this message was of the current epoch.
        for e in &self.events[before..] {
            if let Event::Staged { epoch: staged, .. } = e.event {
                if staged != current || epoch != current {
                    self.violations.push(format!(
                        "staged epoch {staged} (message {epoch}) while current was {current}"
                    ));
                }
            }
        }
    }

    fn finish(&mut self) {
        let now_ms = self.now_ms();
        self.coord.shutdown(now_ms);
        self.after_step();
        // Invariant 7: at most one call_ended, never before the first event
        // of its turn's commit.
        let kinds: Vec<&str> = self.events.iter().map(|e| e.event.kind()).collect();
        let ended: Vec<usize> = (0..kinds.len())
            .filter(|&i| kinds[i] == "call_ended")
            .collect();
        if ended.len() > 1 {
            self.violations
                .push(format!("call_ended {} times", ended.len()));
        }
        if self.coord.call_ended() == ended.is_empty() {
            self.violations
                .push("call_ended() disagrees with the events".into());
        }
        // Invariant 4: every dispatched task ended exactly once.
        let jobs = self.jobs.lock().expect("jobs").clone();
        for job in &jobs {
            if !self.coord.outcomes().contains_key(&job.task) {
                self.violations
                    .push(format!("task {} has no outcome", job.task));
            }
        }
        if self.coord.outcome_conflicts() != 0 {
            self.violations.push(format!(
                "{} tasks given a second outcome",
                self.coord.outcome_conflicts()
            ));
        }
        if self.coord.in_flight() != 0 {
            self.violations
                .push("tasks still in flight after shutdown".into());
        }
        // Every cancelled job's token was actually cancelled.
        for job in &jobs {
            if let Some(colloquy::turn::Outcome::Cancelled(_)) =
                self.coord.outcomes().get(&job.task)
            {
                if !job.cancel.is_cancelled() {
                    self.violations.push(format!(
                        "task {} counted cancelled but its token is not",
                        job.task
                    ));
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn coordinator_invariants_hold_under_random_interleavings(
        ops in proptest::collection::vec(op(), 1..40),
        transcribes in any::<bool>(),
        resume in prop_oneof![
            Just(colloquy::turn::ResumeMode::Restate),
            Just(colloquy::turn::ResumeMode::Resume),
            Just(colloquy::turn::ResumeMode::Off),
        ],
    ) {
        let mut h = Harness::new(transcribes, resume);
        for op in &ops {
            h.apply(op);
        }
        h.finish();
        prop_assert!(h.violations.is_empty(), "violations: {:?}\nops: {:?}", h.violations, ops);
    }
}

/// A scripted barge-in mid-reply: the spoken prefix alone is committed, the
/// old task's late chunk is quarantined, and the interrupting question opens
/// the next turn.
#[test]
fn barge_in_commits_the_spoken_prefix_and_quarantines_late_results() {
    let mut h = Harness::new(true, colloquy::turn::ResumeMode::Restate);
    h.apply(&Op::UserSpeaks { ms: 1000 });
    let first = h.jobs.lock().expect("jobs")[0].clone();
    h.deliver(
        first.epoch,
        first.task,
        Payload::Transcript("tell me about paris".into()),
    );
    // Two sentences of 1 s each.
    for text in ["Paris is the capital of France.", "It lies on the Seine."] {
        h.deliver(
            first.epoch,
            first.task,
            Payload::Speech {
                text: text.into(),
                audio: vec![EPOCH_MARK + 1; 16_000].into(),
            },
        );
    }
    // 1.5 s of the reply plays, then the user cuts in for 1 s with words.
    h.apply(&Op::Idle { frames: 75 });
    h.apply(&Op::UserSpeaks { ms: 1000 });
    // The old task's late chunk arrives after the barge-in.
    h.deliver(
        first.epoch,
        first.task,
        Payload::Speech {
            text: "Late.".into(),
            audio: vec![1; 320].into(),
        },
    );
    let second = h.jobs.lock().expect("jobs")[1].clone();
    assert!(second.epoch > first.epoch);
    assert!(first.cancel.is_cancelled());
    h.deliver(
        second.epoch,
        second.task,
        Payload::Transcript("what about germany".into()),
    );
    assert_eq!(h.coord.quarantined(), 1);
    let interrupted = h.rounds.first().expect("committed round");
    assert_eq!(interrupted[0].content, "tell me about paris");
    let assistant = interrupted.last().expect("assistant");
    assert!(assistant.interrupted);
    // 1.5 s played + 300 ms confirmation ≈ all of sentence 1 and about 80 % of sentence 2.
    assert!(
        assistant
            .content
            .starts_with("Paris is the capital of France. It lies"),
        "{}",
        assistant.content
    );
    assert!(
        !assistant.content.contains("Seine"),
        "{}",
        assistant.content
    );
    h.finish();
    assert!(h.violations.is_empty(), "{:?}", h.violations);
}
