//! Reading the journal for people: a per-turn latency waterfall
//! (`colloquy trace`) and nearest-rank percentiles (`colloquy status`).
//!
//! # Invariants
//! 1. Rendering never fails: a turn without timings prints its text only.

use super::TurnRecord;
use crate::llm::Role;

/// Percentile (0..=100) of `values` (nearest rank); `None` when empty.
pub fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v.get(rank.min(v.len() - 1)).copied()
}

/// Renders a session's turns with a per-turn latency waterfall.
pub fn render_trace(turns: &[TurnRecord]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for t in turns {
        let _ = writeln!(
            out,
            "turn {} (epoch {}){}{}",
            t.index + 1,
            t.epoch,
            if t.interrupted { " [interrupted]" } else { "" },
            t.model
                .as_deref()
                .map(|m| format!(" model {m}"))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "  user:      {}", t.user);
        for call in t.messages.iter().flat_map(|m| &m.tool_calls) {
            let result = t
                .messages
                .iter()
                .find(|m| m.role == Role::Tool && m.tool_call_id.as_deref() == Some(&call.id))
                .map_or("", |m| m.content.as_str());
            let _ = writeln!(
                out,
                "  tool:      {}({}) → {result}",
                call.name, call.arguments
            );
        }
        let _ = writeln!(out, "  assistant: {}", t.assistant);
        let Some(eos) = t.timing.end_of_speech_ms else {
            continue;
        };
        let stages = [
            ("end of speech", Some(eos)),
            ("stt final", t.timing.stt_ms),
            ("first token", t.timing.first_token_ms),
            ("first audio", t.timing.first_audio_ms),
        ];
        let span = stages
            .iter()
            .filter_map(|(_, v)| *v)
            .map(|v| v.saturating_sub(eos))
            .max()
            .unwrap_or(0)
            .max(1);
        for (name, at) in stages {
            match at {
                Some(v) => {
                    let d = v.saturating_sub(eos);
                    let bar = "█".repeat(((d * 40) / span) as usize);
                    let _ = writeln!(out, "  {name:<14} {d:>6} ms |{bar}");
                }
                None => {
                    let _ = writeln!(out, "  {name:<14}      — |");
                }
            }
        }
    }
    out
}
