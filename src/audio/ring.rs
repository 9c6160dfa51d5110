//! Lock-free SPSC rings (`ringbuf`) between transports and the pipeline.
//!
//! The input ring carries interleaved `f32` samples at the transport's own
//! rate; the pipeline resamples them. The output ring carries mono `f32` at the
//! transport's rate; the transport's reader only copies.
//!
//! # Real-time
//! `push`, `pop`, `read` and `write` take no lock, allocate nothing and never
//! block: when a ring is full the excess is dropped and counted (an overrun);
//! when the output ring is empty the reader plays silence and counts it (an
//! underrun only while a reply is playing).
//!
//! # Invariants
//! 1. A flush requested with [`OutputProducer::flush`] is applied by the
//!    consumer at its next `read`, before it copies a single sample, so after a
//!    barge-in no sample queued before the flush reaches the transport.
//! 2. `played` counts every non-flushed sample the consumer handed out, so the
//!    coordinator can map played samples to reply text.

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters shared by both ends of a ring.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Samples dropped because the ring was full.
    pub overruns: AtomicU64,
    /// Samples of silence played while the ring was empty.
    pub underruns: AtomicU64,
    /// Samples handed to the transport (output) or popped (input).
    pub transferred: AtomicU64,
    /// Flush generation requested by the producer (output ring only).
    flush_requested: AtomicU64,
    /// Samples discarded by flushes.
    pub flushed: AtomicU64,
}

impl RingStats {
    fn bump(counter: &AtomicU64, n: usize) {
        if n > 0 {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Producer end of the input ring (owned by the transport).
pub struct InputProducer {
    inner: HeapProd<f32>,
    stats: Arc<RingStats>,
}

/// Consumer end of the input ring (owned by the pipeline).
pub struct InputConsumer {
    inner: HeapCons<f32>,
    stats: Arc<RingStats>,
}

/// Creates an input ring holding `capacity` samples.
pub fn input_ring(capacity: usize) -> (InputProducer, InputConsumer) {
    let (p, c) = HeapRb::<f32>::new(capacity).split();
    let stats = Arc::new(RingStats::default());
    (
        InputProducer {
            inner: p,
            stats: stats.clone(),
        },
        InputConsumer { inner: c, stats },
    )
}

impl InputProducer {
    /// Pushes samples; what does not fit is dropped and counted as overrun.
    /// Returns how many were pushed. Real-time safe.
    pub fn push(&mut self, samples: &[f32]) -> usize {
        let n = self.inner.push_slice(samples);
        RingStats::bump(&self.stats.overruns, samples.len() - n);
        n
    }

    /// Free space in samples.
    pub fn vacant(&self) -> usize {
        self.inner.vacant_len()
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
}

impl InputConsumer {
    /// Pops up to `out.len()` samples. Real-time safe.
    pub fn pop(&mut self, out: &mut [f32]) -> usize {
        let n = self.inner.pop_slice(out);
        RingStats::bump(&self.stats.transferred, n);
        n
    }

    /// Samples waiting.
    pub fn available(&self) -> usize {
        self.inner.occupied_len()
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
}

/// Producer end of the output ring (owned by the pipeline's output stage).
pub struct OutputProducer {
    inner: HeapProd<f32>,
    stats: Arc<RingStats>,
}

/// Consumer end of the output ring (owned by the transport / device callback).
pub struct OutputConsumer {
    inner: HeapCons<f32>,
    stats: Arc<RingStats>,
    flush_seen: u64,
}

/// Creates an output ring holding `capacity` samples.
pub fn output_ring(capacity: usize) -> (OutputProducer, OutputConsumer) {
    let (p, c) = HeapRb::<f32>::new(capacity).split();
    let stats = Arc::new(RingStats::default());
    (
        OutputProducer {
            inner: p,
            stats: stats.clone(),
        },
        OutputConsumer {
            inner: c,
            stats,
            flush_seen: 0,
        },
    )
}

impl OutputProducer {
    /// Queues samples for playback; returns how many fit. Real-time safe.
    pub fn write(&mut self, samples: &[f32]) -> usize {
        self.inner.push_slice(samples)
    }

    /// Free space in samples.
    pub fn vacant(&self) -> usize {
        self.inner.vacant_len()
    }

    /// Samples queued and not yet played (approximate under concurrency).
    pub fn queued(&self) -> usize {
        self.inner.occupied_len()
    }

    /// Asks the consumer to drop everything queued now (invariant 1).
    pub fn flush(&mut self) {
        self.stats.flush_requested.fetch_add(1, Ordering::AcqRel);
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
}

impl OutputConsumer {
    /// Fills `out` with queued samples, silence after them. Applies a pending
    /// flush first (invariant 1). Returns the number of real samples.
    /// Real-time safe.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        let requested = self.stats.flush_requested.load(Ordering::Acquire);
        if requested != self.flush_seen {
            let dropped = self.inner.clear();
            RingStats::bump(&self.stats.flushed, dropped);
            self.flush_seen = requested;
        }
        let n = self.inner.pop_slice(out);
        out[n..].fill(0.0);
        RingStats::bump(&self.stats.transferred, n);
        n
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }

    /// Counts `n` samples of silence played while a reply was expected.
    pub fn note_underrun(&self, n: usize) {
        RingStats::bump(&self.stats.underruns, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_ring_counts_overruns_instead_of_blocking() {
        let (mut p, mut c) = input_ring(4);
        assert_eq!(p.push(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), 4);
        assert_eq!(p.stats().overruns.load(Ordering::Relaxed), 2);
        let mut out = [0.0; 8];
        assert_eq!(c.pop(&mut out), 4);
        assert_eq!(&out[..4], &[1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn flush_drops_everything_queued_before_the_next_read() {
        let (mut p, mut c) = output_ring(16);
        p.write(&[0.5; 10]);
        let mut out = [1.0; 4];
        assert_eq!(c.read(&mut out), 4);
        p.flush();
        let mut out = [1.0; 4];
        assert_eq!(c.read(&mut out), 0, "flushed audio must not play");
        assert_eq!(out, [0.0; 4]);
        assert_eq!(c.stats().flushed.load(Ordering::Relaxed), 6);
        // Audio written after the flush plays normally.
        p.write(&[0.25; 2]);
        assert_eq!(c.read(&mut out), 2);
        assert_eq!(out, [0.25, 0.25, 0.0, 0.0]);
    }
}
