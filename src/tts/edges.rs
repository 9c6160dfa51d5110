//! The silent edges of synthesised speech. A voice pads every chunk with
//! silence (Piper ≈ 70 ms before the first phoneme and more after the
//! last). Before the first chunk of a reply that lead is pure latency, and
//! around a chunk cut mid-sentence (the eager first words) the pads make a
//! pause the sentence does not have. [`trim_edges`] shortens them.
//!
//! # Invariants
//! 1. Only leading and trailing samples below the threshold are removed;
//!    the voiced middle is returned unchanged (a sub-slice, no copy).
//! 2. A short margin stays on each trimmed side, so no onset or release is
//!    clipped; all-quiet audio is returned whole (nothing to anchor on).

/// A sample at or above this magnitude (≈ −40 dBFS) is voice.
const THRESHOLD: i16 = 328;

/// Which edges to trim, and how much silence to keep on each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Edges {
    /// Keep this many ms before the first voiced sample (`None`: untouched).
    pub lead_ms: Option<u32>,
    /// Keep this many ms after the last voiced sample (`None`: untouched).
    pub tail_ms: Option<u32>,
}

/// `samples` (mono at `rate` Hz) with their silent edges trimmed to the
/// margins of `edges` (holds invariants 1–2).
pub fn trim_edges(samples: &[i16], rate: u32, edges: Edges) -> &[i16] {
    let voiced = |s: &i16| s.unsigned_abs() >= THRESHOLD.unsigned_abs();
    let (Some(first), Some(last)) = (
        samples.iter().position(voiced),
        samples.iter().rposition(voiced),
    ) else {
        return samples;
    };
    let ms = |m: u32| (u64::from(m) * u64::from(rate) / 1000) as usize;
    let start = edges.lead_ms.map_or(0, |m| first.saturating_sub(ms(m)));
    let end = edges
        .tail_ms
        .map_or(samples.len(), |m| (last + 1 + ms(m)).min(samples.len()));
    &samples[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn padded(lead: usize, voiced: usize, tail: usize) -> Vec<i16> {
        let mut v = vec![10i16; lead];
        v.extend((0..voiced).map(|i| if i % 2 == 0 { 5000 } else { -5000 }));
        v.extend(vec![-20i16; tail]);
        v
    }

    #[test]
    fn the_lead_and_tail_shrink_to_their_margins() {
        let s = padded(1120, 1600, 3200); // 70 ms, 100 ms, 200 ms at 16 kHz
        let lead_only = trim_edges(
            &s,
            16_000,
            Edges {
                lead_ms: Some(10),
                tail_ms: None,
            },
        );
        assert_eq!(lead_only.len(), 160 + 1600 + 3200);
        let both = trim_edges(
            &s,
            16_000,
            Edges {
                lead_ms: Some(10),
                tail_ms: Some(30),
            },
        );
        assert_eq!(both.len(), 160 + 1600 + 480);
        assert_eq!(both[160], 5000);
        assert_eq!(trim_edges(&s, 16_000, Edges::default()).len(), s.len());
    }

    #[test]
    fn quiet_or_short_audio_is_kept_whole() {
        let quiet = vec![3i16; 800];
        let all = Edges {
            lead_ms: Some(0),
            tail_ms: Some(0),
        };
        assert_eq!(trim_edges(&quiet, 16_000, all).len(), 800);
        assert!(trim_edges(&[], 16_000, all).is_empty());
        // A margin longer than the pad keeps the pad.
        let s = padded(16, 100, 16);
        let wide = Edges {
            lead_ms: Some(50),
            tail_ms: Some(50),
        };
        assert_eq!(trim_edges(&s, 16_000, wide).len(), s.len());
    }
}
