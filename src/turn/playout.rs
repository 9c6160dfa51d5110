//! Playout of the bot's reply: feeds reply audio into the output ring as room
//! frees up, tracks how much of it the transport actually played, and maps
//! played samples back to the text the user heard.
//!
//! # Invariants
//! 1. Audio enters the ring only through [`Playout::pump`], and only for the
//!    reply currently playing; [`Playout::silence`] drops everything queued
//!    (here and in the ring) at once, so no sample of an interrupted reply
//!    reaches the transport after the consumer's next read.
//! 2. `played_16k()` never exceeds `queued_16k()`: the spoken prefix is never
//!    longer than what was actually produced.
//! 3. The played count comes from the consumer's counter (what left the ring),
//!    so it is what the transport played, not what was written; once the
//!    transport's client reports its playout position
//!    ([`Playout::report_position`]: a page that buffers what it was sent),
//!    it is the lesser of the two, so what was sent but not yet heard never
//!    counts as heard.
//! 4. `drained()` follows what left the ring, never the reports: a client
//!    that stops reporting cannot hold a reply uncommitted.

use crate::audio::resample::i16_to_f32;
use crate::audio::{EdgeResampler, OutputProducer};
use crate::frame::SAMPLE_RATE;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

/// One spoken piece of a reply: its text and the length of its audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpokenChunk {
    pub text: String,
    /// Length of this chunk's audio at 16 kHz.
    pub samples: u64,
}

/// The reply audio path from the coordinator to the output ring.
pub struct Playout {
    producer: OutputProducer,
    resampler: Option<EdgeResampler>,
    out_rate: u32,
    /// Reply audio at 16 kHz not yet written to the ring.
    pending: VecDeque<i16>,
    /// Scratch for one pump (sized up front).
    scratch_in: Vec<f32>,
    scratch_out: Vec<f32>,
    /// Consumer's transferred count when the current reply started.
    base_transferred: u64,
    /// Samples (16 kHz) of the current reply handed to pending so far.
    queued: u64,
    chunks: Vec<SpokenChunk>,
    /// The client's playout position (output-rate samples since the start
    /// of the stream, dropped ones counted as passed), when it reports one.
    reported: Option<u64>,
}

/// Samples moved per `pump` call at most (at 16 kHz): 100 ms.
const PUMP_SAMPLES: usize = 1600;

impl Playout {
    /// A playout into `producer`, whose transport plays at `out_rate` Hz mono.
    pub fn new(
        producer: OutputProducer,
        out_rate: u32,
    ) -> Result<Self, crate::audio::ResampleError> {
        let resampler = if out_rate == SAMPLE_RATE {
            None
        } else {
            Some(EdgeResampler::new(SAMPLE_RATE, 1, out_rate)?)
        };
        let out_max = PUMP_SAMPLES * out_rate as usize / SAMPLE_RATE as usize + 4096;
        Ok(Self {
            producer,
            resampler,
            out_rate,
            pending: VecDeque::with_capacity(SAMPLE_RATE as usize * 30),
            scratch_in: vec![0.0; PUMP_SAMPLES],
            scratch_out: Vec::with_capacity(out_max),
            base_transferred: 0,
            queued: 0,
            chunks: Vec::new(),
            reported: None,
        })
    }

    /// Starts tracking a new reply (the previous one must be finished or silenced).
    pub fn begin_reply(&mut self) {
        self.base_transferred = self.producer.stats().transferred.load(Ordering::Acquire);
        self.queued = 0;
        self.chunks.clear();
        self.pending.clear();
    }

    /// Queues a chunk of reply audio (16 kHz) with its text.
    pub fn enqueue(&mut self, text: &str, audio: &[i16]) {
        // Fix (local transport): when resampling, pad each chunk to whole
        // resampler chunks with silence (< 20 ms), so every queued sample
        // leaves the resampler and `drained()` becomes true at output rates
        // other than 16 kHz (otherwise a reply whose length is not a multiple
        // of the chunk never finishes and is never committed).
        let pad = self.resampler.as_ref().map_or(0, |r| {
            let c = r.chunk_frames();
            (c - audio.len() % c) % c
        });
        self.pending.extend(audio.iter().copied());
        self.pending.extend(std::iter::repeat_n(0, pad));
        let samples = (audio.len() + pad) as u64;
        self.queued += samples;
        self.chunks.push(SpokenChunk {
            text: text.to_string(),
            samples,
        });
    }

    /// Moves queued audio into the output ring as far as it has room
    /// (holds invariant 1). Returns samples moved (16 kHz).
    pub fn pump(&mut self) -> usize {
        let mut moved = 0;
        loop {
            let room_out = self.producer.vacant();
            let room_16k = room_out * SAMPLE_RATE as usize / self.out_rate as usize;
            // Fix (local transport): the resampler may emit up to one chunk
            // it held back on top of `n`, so leave room for it too; otherwise
            // a full ring drops reply samples and the reply never drains.
            let held = self.resampler.as_ref().map_or(0, |r| r.chunk_frames());
            let n = self
                .pending
                .len()
                .min(PUMP_SAMPLES)
                .min(room_16k.saturating_sub(64 + held));
            if n == 0 {
                return moved;
            }
            for (dst, src) in self.scratch_in[..n].iter_mut().zip(self.pending.drain(..n)) {
                *dst = i16_to_f32(src);
            }
            match self.resampler.as_mut() {
                None => {
                    self.producer.write(&self.scratch_in[..n]);
                }
                Some(r) => {
                    self.scratch_out.clear();
                    let out = &mut self.scratch_out;
                    r.process(&self.scratch_in[..n], |s| out.extend_from_slice(s));
                    self.producer.write(&self.scratch_out);
                }
            }
            moved += n;
        }
    }

    /// Drops all reply audio at once (holds invariant 1).
    pub fn silence(&mut self) {
        self.pending.clear();
        self.producer.flush();
    }

    /// Samples of the current reply queued so far (16 kHz).
    pub fn queued_16k(&self) -> u64 {
        self.queued
    }

    /// Output-rate samples that have left the ring since the stream began.
    fn transferred(&self) -> u64 {
        self.producer.stats().transferred.load(Ordering::Acquire)
    }

    fn to_16k(&self, out: u64) -> u64 {
        out * SAMPLE_RATE as u64 / self.out_rate as u64
    }

    /// Samples of the current reply the transport has played (16 kHz),
    /// holds invariants 2 and 3.
    pub fn played_16k(&self) -> u64 {
        let sent = self.transferred();
        let heard = self.reported.map_or(sent, |r| r.min(sent));
        self.to_16k(heard.saturating_sub(self.base_transferred))
            .min(self.queued)
    }

    /// Samples of the current reply that have left the ring (16 kHz).
    pub fn sent_16k(&self) -> u64 {
        self.to_16k(self.transferred().saturating_sub(self.base_transferred))
            .min(self.queued)
    }

    /// Whether everything queued has left the ring (holds invariant 4).
    pub fn drained(&self) -> bool {
        self.pending.is_empty() && self.sent_16k() >= self.queued
    }

    /// The client's playout position: output-rate samples of the stream it
    /// has played, samples it dropped at a clear counted as passed. From the
    /// first report on, the played count follows the reports (invariant 3).
    pub fn report_position(&mut self, position: u64) {
        self.reported = Some(self.reported.map_or(position, |r| r.max(position)));
    }

    /// Where the current reply began in the stream (output-rate samples).
    pub fn reply_base(&self) -> u64 {
        self.base_transferred
    }

    /// What a client at `position` heard of a reply that began at `base`,
    /// at most `cap` (what had been sent of it), in 16 kHz samples.
    pub fn heard_16k(&self, base: u64, position: u64, cap: u64) -> u64 {
        self.to_16k(position.saturating_sub(base)).min(cap)
    }

    /// The reply's chunks so far.
    pub fn chunks(&self) -> &[SpokenChunk] {
        &self.chunks
    }

    /// The text the user heard after `played` samples: whole chunks, plus the
    /// words of a partly played chunk in proportion to the part played.
    pub fn spoken_prefix(&self, played: u64) -> String {
        spoken_prefix(&self.chunks, played)
    }
}

/// See [`Playout::spoken_prefix`].
pub fn spoken_prefix(chunks: &[SpokenChunk], played: u64) -> String {
    let mut out = String::new();
    let mut left = played;
    for c in chunks {
        if left == 0 {
            break;
        }
        let text = if left >= c.samples {
            left -= c.samples;
            c.text.trim().to_string()
        } else {
            let words: Vec<&str> = c.text.split_whitespace().collect();
            let keep = (words.len() as u64 * left / c.samples.max(1)) as usize;
            left = 0;
            words[..keep].join(" ")
        };
        if !text.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::output_ring;

    #[test]
    fn spoken_prefix_counts_whole_chunks_and_words_of_a_partial_one() {
        let chunks = vec![
            SpokenChunk {
                text: "Hello there.".into(),
                samples: 100,
            },
            SpokenChunk {
                text: "The capital of France is Paris.".into(),
                samples: 600,
            },
        ];
        assert_eq!(spoken_prefix(&chunks, 0), "");
        assert_eq!(spoken_prefix(&chunks, 100), "Hello there.");
        assert_eq!(spoken_prefix(&chunks, 400), "Hello there. The capital of");
        assert_eq!(
            spoken_prefix(&chunks, 10_000),
            "Hello there. The capital of France is Paris."
        );
    }

    #[test]
    fn played_count_follows_the_consumer_and_silence_stops_it() {
        let (p, mut c) = output_ring(16_000);
        let mut play = Playout::new(p, 16_000).expect("playout");
        play.begin_reply();
        play.enqueue("one two", &[1000; 3200]);
        play.pump();
        let mut buf = [0.0f32; 320];
        c.read(&mut buf);
        assert_eq!(play.played_16k(), 320);
        play.silence();
        assert_eq!(c.read(&mut buf), 0, "silenced audio must not play");
        assert_eq!(play.played_16k(), 320);
        assert_eq!(play.spoken_prefix(play.played_16k()), "");
    }

    #[test]
    fn a_reported_position_bounds_what_counts_as_played() {
        let (p, mut c) = output_ring(16_000);
        let mut play = Playout::new(p, 16_000).expect("playout");
        play.begin_reply();
        play.enqueue("one two three four", &[1000; 3200]);
        play.pump();
        let mut buf = [0.0f32; 3200];
        assert_eq!(c.read(&mut buf), 3200, "all of it sent");
        assert_eq!(play.played_16k(), 3200, "no reports: sent is played");
        play.report_position(800);
        assert_eq!(play.played_16k(), 800, "the client heard a quarter");
        assert_eq!(play.spoken_prefix(play.played_16k()), "one");
        assert!(play.drained(), "what was sent drains whatever the reports");
        play.report_position(400);
        assert_eq!(play.played_16k(), 800, "positions never go back");
        play.report_position(99_999);
        assert_eq!(play.played_16k(), 3200, "never more than was sent");
        assert_eq!(play.heard_16k(play.reply_base(), 1600, 3200), 1600);
        assert_eq!(play.heard_16k(play.reply_base(), 1600, 1000), 1000);
    }

    #[test]
    fn a_resampled_reply_of_any_length_drains_completely() {
        // A ring much smaller than the reply: pump fills it again and again.
        let (p, mut c) = output_ring(4_800);
        let mut play = Playout::new(p, 48_000).expect("playout");
        play.begin_reply();
        play.enqueue("odd", &[700; 16_001]);
        let mut buf = vec![0.0f32; 960];
        for _ in 0..200 {
            play.pump();
            c.read(&mut buf);
        }
        assert!(
            play.drained(),
            "played {} of {}",
            play.played_16k(),
            play.queued_16k()
        );
    }

    #[test]
    fn resampled_output_maps_back_to_16k_counts() {
        let (p, mut c) = output_ring(96_000);
        let mut play = Playout::new(p, 48_000).expect("playout");
        play.begin_reply();
        play.enqueue("a", &[500; 16_000]);
        play.pump();
        let mut buf = vec![0.0f32; 48_000];
        let got = c.read(&mut buf);
        assert!(got > 40_000, "got {got}");
        let played = play.played_16k();
        assert!(played > 13_000 && played <= 16_000, "played {played}");
    }
}
