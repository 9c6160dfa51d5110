//! Proves the data plane allocates nothing per frame in steady state: a
//! counting global allocator watches this thread while real speech and
//! silence flow through ring → resample → VAD → turn detector → utterance
//! capture → coordinator tick (`Session::process`), for every VAD backend.

mod common;
use colloquy::agent::parrot::ParrotAgent;
use colloquy::audio::{input_ring, output_ring, read_wav};
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

/// Pushes `secs` of the clip (looped) in 20 ms steps and processes it.
fn drive(
    session: &mut Session,
    prod: &mut colloquy::audio::InputProducer,
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
    let silence = vec![0.0f32; 44_100 * 2];
    for kind in VadKind::ALL {
        let config = SessionConfig {
            vad: kind,
            input_rate: 44_100,
            input_channels: 2,
            ..SessionConfig::default()
        };
        let step = 882 * 2;
        let (mut prod, cons) = input_ring(step * 16);
        let (out, _out_cons) = output_ring(16_000);
        let mut session = Session::new(config, Arc::new(ParrotAgent), cons, out).expect("session");
        // Warm up: reach the speaking state so the utterance buffer is capturing.
        drive(&mut session, &mut prod, &stereo441, step, 25);
        assert!(session.now_ms() >= 400);
        // Steady state inside speech: no turn event in this window (the clip's
        // first seconds are continuous speech).
        let (frames, allocs) =
            count(|| drive(&mut session, &mut prod, &stereo441[step * 25..], step, 60));
        assert!(frames >= 59, "{kind:?}: {frames} frames");
        assert_eq!(
            allocs, 0,
            "{kind:?}: {allocs} allocations over {frames} speech frames"
        );
        // Then long silence: warm up through the end of turn, then count.
        drive(&mut session, &mut prod, &silence, step, 100);
        let (frames, allocs) = count(|| drive(&mut session, &mut prod, &silence, step, 100));
        assert!(frames >= 99);
        assert_eq!(
            allocs, 0,
            "{kind:?}: {allocs} allocations over {frames} silent frames"
        );
    }
}
