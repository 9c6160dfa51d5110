//! Which model served each stage of a turn, as the one text the journal's
//! `model` column keeps and `colloquy trace` shows:
//! `stt=KEY llm=KEY tts=KEY[+KEY]` (keys without the stage prefix).
//!
//! # Invariants
//! 1. Stages appear in pipeline order (stt, llm, tts) and only once known.
//! 2. TTS lists each voice that spoke a sentence of the turn, in order of
//!    first use, joined with `+` (a hosted voice replaced mid-reply by the
//!    local one shows both).
//! 3. [`Served::parse`] reads back what [`Served::label`] wrote.

/// The models of one turn.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub stt: Option<String>,
    pub llm: Option<String>,
    pub tts: Vec<String>,
}

fn bare(key: &str) -> &str {
    key.strip_prefix("stt:")
        .or_else(|| key.strip_prefix("tts:"))
        .unwrap_or(key)
}

impl Served {
    /// Records the TTS voice of a sentence; true when it is new (invariant 2).
    pub fn add_tts(&mut self, key: &str) -> bool {
        let key = bare(key);
        if self.tts.iter().any(|k| k == key) {
            return false;
        }
        self.tts.push(key.to_string());
        true
    }

    pub fn set_stt(&mut self, key: &str) {
        self.stt = Some(bare(key).to_string());
    }

    /// The journal text (invariant 1).
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = &self.stt {
            parts.push(format!("stt={s}"));
        }
        if let Some(l) = &self.llm {
            parts.push(format!("llm={l}"));
        }
        if !self.tts.is_empty() {
            parts.push(format!("tts={}", self.tts.join("+")));
        }
        parts.join(" ")
    }

    /// Reads a label back (invariant 3); unknown words are skipped.
    pub fn parse(label: &str) -> Self {
        let mut s = Self::default();
        for word in label.split_whitespace() {
            match word.split_once('=') {
                Some(("stt", v)) => s.stt = Some(v.to_string()),
                Some(("llm", v)) => s.llm = Some(v.to_string()),
                Some(("tts", v)) => s.tts = v.split('+').map(str::to_string).collect(),
                _ => {}
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_in_pipeline_order() {
        let mut s = Served {
            llm: Some("127.0.0.1:9/m".into()),
            ..Served::default()
        };
        s.set_stt("stt:embedded/whisper-tiny.en");
        assert!(s.add_tts("tts:127.0.0.1:9/tts-1"));
        assert!(s.add_tts("tts:embedded/piper"));
        assert!(!s.add_tts("tts:embedded/piper"));
        let label = s.label();
        assert_eq!(
            label,
            "stt=embedded/whisper-tiny.en llm=127.0.0.1:9/m tts=127.0.0.1:9/tts-1+embedded/piper"
        );
        assert_eq!(Served::parse(&label), s);
    }
}
