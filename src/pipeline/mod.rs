//! Frame stages connected by lock-free SPSC frame rings: the generic shape of
//! the data plane, used to measure the per-stage cost of moving frames
//! (`benches/frame_path.rs`) the way peers built on per-processor queues do.
//!
//! # Real-time
//! [`StageChain::pump`] pops and pushes fixed-size [`AudioFrame`]s between
//! pre-sized rings and calls each stage in place: no allocation, no lock.
//!
//! # Invariants
//! 1. Frames leave the chain in the order they entered, each exactly once,
//!    unless a ring is full, in which case the frame is dropped and counted.

use crate::frame::AudioFrame;
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// One processing step applied to each frame in place.
pub trait FrameStage: Send {
    fn process(&mut self, frame: &mut AudioFrame);
}

/// A stage that leaves frames unchanged (to measure the transport cost).
#[derive(Default)]
pub struct PassThrough {
    /// Frames seen (keeps the work observable to the optimiser).
    pub seen: u64,
}

impl FrameStage for PassThrough {
    #[inline]
    fn process(&mut self, frame: &mut AudioFrame) {
        self.seen += u64::from(frame.samples[0] != i16::MIN);
    }
}

/// Producer end of a frame ring.
pub type FrameProducer = HeapProd<AudioFrame>;
/// Consumer end of a frame ring.
pub type FrameConsumer = HeapCons<AudioFrame>;

/// A frame ring of `capacity` frames.
pub fn frame_ring(capacity: usize) -> (FrameProducer, FrameConsumer) {
    HeapRb::<AudioFrame>::new(capacity).split()
}

/// K stages, each reading its own ring and writing the next one's.
pub struct StageChain {
    stages: Vec<(Box<dyn FrameStage>, FrameConsumer, FrameProducer)>,
    /// Frames dropped because a downstream ring was full (invariant 1).
    pub dropped: u64,
}

impl StageChain {
    /// Builds a chain of `stages`, reading from `input` and writing to
    /// `output`; inner rings hold `capacity` frames.
    pub fn new(
        stages: Vec<Box<dyn FrameStage>>,
        input: FrameConsumer,
        output: FrameProducer,
        capacity: usize,
    ) -> Self {
        let k = stages.len();
        let mut links = Vec::with_capacity(k);
        let mut current_in = Some(input);
        let mut final_out = Some(output);
        for (i, stage) in stages.into_iter().enumerate() {
            let cons = current_in.take().expect("one input per stage");
            let prod = if i + 1 == k {
                final_out.take().expect("one output")
            } else {
                let (p, c) = frame_ring(capacity);
                current_in = Some(c);
                p
            };
            links.push((stage, cons, prod));
        }
        Self {
            stages: links,
            dropped: 0,
        }
    }

    /// Moves every available frame one or more stages forward. Returns the
    /// number of stage steps performed. Real-time safe.
    pub fn pump(&mut self) -> usize {
        let mut steps = 0;
        for (stage, cons, prod) in self.stages.iter_mut() {
            while let Some(mut frame) = cons.try_pop() {
                stage.process(&mut frame);
                if prod.try_push(frame).is_err() {
                    self.dropped += 1;
                }
                steps += 1;
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_leave_in_order_exactly_once() {
        let (mut inp, in_cons) = frame_ring(64);
        let (out_prod, mut out) = frame_ring(64);
        let stages: Vec<Box<dyn FrameStage>> = (0..5)
            .map(|_| Box::new(PassThrough::default()) as Box<dyn FrameStage>)
            .collect();
        let mut chain = StageChain::new(stages, in_cons, out_prod, 64);
        for i in 0..40u64 {
            inp.try_push(AudioFrame::silent(i * 320)).expect("room");
        }
        chain.pump();
        let starts: Vec<u64> = std::iter::from_fn(|| out.try_pop())
            .map(|f| f.start)
            .collect();
        assert_eq!(starts, (0..40).map(|i| i * 320).collect::<Vec<_>>());
        assert_eq!(chain.dropped, 0);
    }
}
