//! The fitted encoder window and its ladder. whisper.cpp encodes a 30 s
//! window (1500 frames) whatever the utterance's length; a window fitted to
//! the utterance plus a margin costs a fraction of it, but the decoder then
//! sometimes loops ("10 of clubs 10 of clubs 10 of …", "5 5 5 5 …",
//! "old-s-y-y-y-…"). Measured on the real recordings (`cargo test --release
//! --test stt_whisper -- --ignored measure_audio_ctx_and_threads`).
//!
//! The ladder, cheapest first:
//! 1. the fitted window; kept unless [`looks_degenerate`];
//! 2. a loop that repeats the *whole* text from its first word, with a unit
//!    of at least two words ("10 of clubs" × 7): the decoder read the
//!    utterance once and started again, so one copy is the transcript
//!    ([`leading_loop`]);
//! 3. a wider window ([`rung_frames`]: twice the fitted one, at least 500
//!    frames); kept unless degenerate, then step 2 again;
//! 4. the full window.
//!
//! # Invariants
//! 1. Step 2 never applies to a one-word unit ("5 5 5 5": was it "5 5"?) or
//!    to a loop that starts after the first word: those go on to step 3.
//! 2. Every step but the last is cheaper than the full window.

use std::io::Write;

const FRAMES_PER_SECOND: usize = 50;
const SAMPLE_RATE: usize = 16_000;
const FULL_CTX: usize = 1500;
/// The narrowest second rung (10 s of encoder frames).
const RUNG_MIN: usize = 500;

/// Encoder frames for `samples` with a fitted window, or `None` for the full one.
pub fn fitted_frames(samples: usize, margin_ms: usize, min_frames: usize) -> Option<usize> {
    let ms = samples * 1000 / SAMPLE_RATE + margin_ms;
    let frames = (ms * FRAMES_PER_SECOND).div_ceil(1000).max(min_frames);
    (frames < FULL_CTX).then_some(frames)
}

/// The second rung after a degenerate fitted decode, or `None` when only
/// the full window is wider (invariant 2).
pub fn rung_frames(fitted: usize) -> Option<usize> {
    let rung = (fitted * 2).max(RUNG_MIN);
    (rung < FULL_CTX).then_some(rung)
}

/// One copy of a text that is a unit of two or more words repeated from its
/// first word to its end (a cut copy may end it), at least three times;
/// `None` otherwise (invariant 1).
pub fn leading_loop(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let key = |w: &str| {
        w.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect::<String>()
    };
    let keys: Vec<String> = words.iter().map(|w| key(w)).collect();
    // The shortest period of the whole text; a one-word period is invariant 1.
    let unit = (1..=keys.len() / 3).find(|&u| (u..keys.len()).all(|i| keys[i] == keys[i % u]))?;
    if unit < 2 {
        return None;
    }
    let once = words[..unit].join(" ");
    let once = once.trim_end_matches(|c: char| !c.is_alphanumeric());
    Some(format!("{once}."))
}

/// Whether a transcript of `secs` seconds of audio looks like a decoding loop:
/// more words than anyone speaks (> 6 words/s + 3), a word n-gram (n = 1..4)
/// repeated 4+ times in a row, or text that compresses too well (zlib ratio
/// > 2.4 on texts of 60+ bytes, Whisper's own criterion).
pub fn looks_degenerate(text: &str, secs: f32) -> bool {
    // Words are runs of letters and digits: "old-s-y-y-y" is a loop of "y".
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if words.len() as f32 > secs * 6.0 + 3.0 {
        return true;
    }
    for n in 1..=4 {
        if words.len() < n * 4 {
            break;
        }
        let mut run = 1;
        let mut i = n;
        while i + n <= words.len() {
            if words[i..i + n] == words[i - n..i] {
                run += 1;
                if run >= 4 {
                    return true;
                }
                i += n;
            } else {
                run = 1;
                i += 1;
            }
        }
    }
    if text.len() >= 60 {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        if z.write_all(text.as_bytes()).is_ok() {
            if let Ok(c) = z.finish() {
                if !c.is_empty() && text.len() as f32 / c.len() as f32 > 2.4 {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_window_covers_the_utterance_plus_margin() {
        assert_eq!(fitted_frames(16_000, 1000, 150), Some(150));
        assert_eq!(fitted_frames(16_000 * 5, 1000, 150), Some(300));
        assert_eq!(fitted_frames(16_000 * 30, 1000, 150), None);
        assert_eq!(fitted_frames(16_000 * 8, 3000, 500), Some(550));
    }

    #[test]
    fn degenerate_output_is_detected() {
        assert!(looks_degenerate("5 5 5 5 5 5", 2.0));
        assert!(looks_degenerate("of clubs of clubs of clubs of clubs", 5.0));
        assert!(looks_degenerate(
            "the same sentence again. ".repeat(6).as_str(),
            30.0
        ));
        assert!(!looks_degenerate("Ten of clubs.", 1.1));
        assert!(!looks_degenerate(
            "He was not an ill-disposed young man.",
            2.0
        ));
        assert!(looks_degenerate(
            "he was not an old-s-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-y-",
            3.0
        ));
        assert!(!looks_degenerate(
            "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.",
            5.3
        ));
    }

    #[test]
    fn a_whole_text_loop_of_two_or_more_words_keeps_one_copy() {
        assert_eq!(
            leading_loop("10 of clubs 10 of clubs 10 of clubs 10 of clubs 10 of"),
            Some("10 of clubs.".into())
        );
        assert_eq!(
            leading_loop("4 Queen of Cloves 4 Queen of Cloves 4 Queen of Cloves 4 Queen of"),
            Some("4 Queen of Cloves.".into())
        );
        // One-word units and loops after the first word climb the ladder.
        assert_eq!(leading_loop("5 5 5 5 5 5 5 5"), None);
        assert_eq!(leading_loop("He was not an old-s-y-y-y-y-y-y-y-y"), None);
        assert_eq!(
            leading_loop("I said 10 of clubs 10 of clubs 10 of clubs"),
            None
        );
        // Two copies are not a loop.
        assert_eq!(leading_loop("go team go team"), None);
        assert_eq!(leading_loop("Ten of clubs."), None);
    }

    #[test]
    fn the_second_rung_is_wider_and_below_the_full_window() {
        assert_eq!(rung_frames(250), Some(500));
        assert_eq!(rung_frames(400), Some(800));
        assert_eq!(rung_frames(750), None);
    }
}
