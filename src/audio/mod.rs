//! Audio plumbing between transports and the pipeline: lock-free rings,
//! edge resampling, frame assembly, WAV files, and test signals (`signal`).
//!
//! # Invariants
//! 1. Everything on the per-frame path here (`InputRing` push/pop,
//!    `EdgeResampler::process`, `FrameAssembler::push`, `OutputRing` read and
//!    write) allocates nothing, takes no lock and never blocks once built:
//!    buffers are sized up front (see `tests/no_alloc.rs`).
//! 2. Rings are single-producer/single-consumer: each end is owned by exactly
//!    one thread.

pub mod assemble;
pub mod resample;
pub mod ring;
pub mod signal;
pub mod wav;

pub use assemble::FrameAssembler;
pub use resample::{EdgeResampler, ResampleError};
pub use ring::{
    input_ring, output_ring, InputConsumer, InputProducer, OutputConsumer, OutputProducer,
};
pub use wav::{read_wav, resample_to_16k, TimelineWriter, WavAudio, WavError};
