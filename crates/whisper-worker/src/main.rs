//! `colloquy-whisper`: Whisper tiny.en through whisper.cpp, in its own
//! process. colloquy's main binary links llama.cpp, whose ggml clashes with
//! whisper.cpp's at link time; one engine per process keeps each with its
//! own ggml. The parent (`colloquy::stt::whisper`) talks to it over pipes.
//!
//! Protocol (all integers little-endian):
//! - start: `colloquy-whisper --model PATH [--threads N]`; the worker prints
//!   one JSON line: `{"ready":true,"load_ms":N,"per_node_abort":B}` or
//!   `{"error":"..."}` (then exits 2).
//! - request on stdin: `u8 1`, `u32 id`, `u32 samples`, `u8 window`
//!   (0 = full, 1 = fit), `u32 margin_ms`, `u32 min_frames`, then `samples`
//!   × i16 PCM (16 kHz mono).
//! - cancel on stdin: `u8 2`, `u32 id`. The request `id` stops at its next
//!   abort check (one ggml graph node, see `abort.rs`) if it is running, or
//!   is skipped if it has not started; a cancel for a finished request is
//!   ignored.
//! - reply on stdout, one JSON line per request, in order:
//!   `{"id":..,"text":..,"frames":..,"fell_back":..,"ms":..,"waited_checks":..}`
//!   (`frames`: the encoder window that gave `text`; `fell_back`: wider than the fitted one),
//!   `{"id":..,"cancelled":true,"at":"queued"|"running","checks_after_cancel":..,"ms":..}`
//!   or `{"id":..,"error":".."}`. `waited_checks` counts the abort checks
//!   (graph nodes) other requests ran between this request's arrival and
//!   its start; `checks_after_cancel` those this one ran after its cancel.
//! - end: EOF on stdin.
//!
//! A reader thread parses stdin and raises the abort flag as soon as a
//! cancel arrives, while the main thread decodes.
//!
//! Decoding is greedy, English, no timestamps, one segment, blank and
//! non-speech tokens suppressed, no temperature fallback (whisper.cpp retries
//! every temperature on a loop, up to 6 decodes). A fitted encoder window
//! (utterance + margin) is 4–8× cheaper than the 30 s window but can loop;
//! `window.rs` owns the ladder that catches it.
//!
//! # Invariants
//! 1. One reply line per request, in order; malformed requests get an
//!    `error` reply or end the process, never a partial line.
//! 2. Requests longer than 30 s of audio are refused (no allocation beyond it).
//! 3. A cancel only ever stops the request it names: the abort flag is
//!    raised under the same lock that records which request runs, and
//!    cleared before the next request starts.

mod abort;
mod window;

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void};
use std::io::{Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};
use window::{fitted_frames, leading_loop, looks_degenerate, rung_frames};

const SAMPLE_RATE: usize = 16_000;
const FULL_CTX: usize = 1500;
const MAX_SAMPLES: usize = 30 * SAMPLE_RATE;
const TAG_REQUEST: u8 = 1;
const TAG_CANCEL: u8 = 2;

unsafe extern "C" fn quiet_log(
    _level: whisper_rs_sys::ggml_log_level,
    _text: *const c_char,
    _user: *mut c_void,
) {
}

fn reply(out: &mut impl Write, value: serde_json::Value) -> std::io::Result<()> {
    writeln!(out, "{value}")?;
    out.flush()
}

fn main() {
    let code = match run() {
        Ok(()) => 0,
        Err(e) => {
            let _ = reply(
                &mut std::io::stdout().lock(),
                serde_json::json!({ "error": e }),
            );
            2
        }
    };
    std::process::exit(code);
}

/// One transcription request as read from stdin.
struct Request {
    id: u32,
    fit: Option<(usize, usize)>,
    audio: Vec<f32>,
    /// Abort checks counted when it arrived (for `waited_checks`).
    arrived_checks: u64,
}

enum Msg {
    Request(Request),
    /// Stdin closed: finish.
    Eof,
    /// The stream is broken (cannot be resynchronised): stop with this error.
    Fatal(String),
}

/// Which request runs, and cancels that arrived before their request started.
#[derive(Default)]
struct Running {
    current: Option<u32>,
    cancelled: BTreeSet<u32>,
}

fn read_u32(input: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads one message; `Ok(None)` at a clean end of input.
fn read_msg(input: &mut impl Read, running: &Mutex<Running>) -> Result<Option<Request>, String> {
    loop {
        let mut tag = [0u8; 1];
        match input.read_exact(&mut tag) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(format!("reading a request: {e}")),
        }
        match tag[0] {
            TAG_CANCEL => {
                let id = read_u32(input).map_err(|e| format!("reading a cancel: {e}"))?;
                let mut r = running.lock().map_err(|_| "state lock poisoned")?;
                // Holds invariant 3: raised only for the request that runs.
                if r.current == Some(id) {
                    abort::raise();
                } else {
                    r.cancelled.insert(id);
                }
            }
            TAG_REQUEST => {
                let mut header = [0u8; 17];
                input
                    .read_exact(&mut header)
                    .map_err(|e| format!("reading a request: {e}"))?;
                let word = |i: usize| {
                    u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
                };
                let id = word(0);
                let n = word(4) as usize;
                let fit = header[8] == 1;
                let margin_ms = word(9) as usize;
                let min_frames = word(13) as usize;
                if n > MAX_SAMPLES {
                    // Holds invariant 2: the stream can't be resynchronised; stop.
                    return Err(format!("request of {n} samples is longer than 30 s"));
                }
                let mut bytes = vec![0u8; n * 2];
                input
                    .read_exact(&mut bytes)
                    .map_err(|e| format!("reading audio: {e}"))?;
                let audio = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
                    .collect();
                return Ok(Some(Request {
                    id,
                    fit: fit.then_some((margin_ms, min_frames)),
                    audio,
                    arrived_checks: abort::checks(),
                }));
            }
            other => return Err(format!("unknown message tag {other}")),
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut threads) = (None, 2i32);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next(),
            "--threads" => threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let model = model.ok_or("missing --model PATH")?;
    // SAFETY: a no-op callback that never touches its arguments.
    unsafe { whisper_rs_sys::whisper_log_set(Some(quiet_log), std::ptr::null_mut()) };
    let start = Instant::now();
    let mut params = WhisperContextParameters::default();
    params.use_gpu(false);
    let ctx = WhisperContext::new_with_params(&model, params)
        .map_err(|e| format!("{model}: whisper.cpp could not load it: {e}"))?;
    let mut state = ctx
        .create_state()
        .map_err(|e| format!("{model}: could not create a decoder state: {e}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    reply(
        &mut out,
        serde_json::json!({
            "ready": true,
            "load_ms": start.elapsed().as_millis() as u64,
            "per_node_abort": abort::per_node(),
        }),
    )
    .map_err(|e| e.to_string())?;

    let running = Arc::new(Mutex::new(Running::default()));
    let (tx, rx) = mpsc::channel::<Msg>();
    let reader_running = Arc::clone(&running);
    std::thread::Builder::new()
        .name("whisper-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            loop {
                let msg = match read_msg(&mut input, &reader_running) {
                    Ok(Some(r)) => Msg::Request(r),
                    Ok(None) => Msg::Eof,
                    Err(e) => Msg::Fatal(e),
                };
                let last = !matches!(msg, Msg::Request(_));
                if tx.send(msg).is_err() || last {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the stdin reader: {e}"))?;

    loop {
        let request = match rx.recv() {
            Ok(Msg::Request(r)) => r,
            Ok(Msg::Eof) | Err(_) => return Ok(()),
            Ok(Msg::Fatal(e)) => return Err(e),
        };
        let t = Instant::now();
        let id = request.id;
        let skipped = {
            let mut r = running.lock().map_err(|_| "state lock poisoned")?;
            let skipped = r.cancelled.remove(&id);
            // Cancels of requests that had already finished stay behind:
            // keep only the newest few (ids grow; requests may arrive out
            // of id order, so no id is assumed stale by order alone).
            while r.cancelled.len() > 64 {
                r.cancelled.pop_first();
            }
            if !skipped {
                // Holds invariant 3.
                abort::clear();
                r.current = Some(id);
            }
            skipped
        };
        if skipped {
            reply(
                &mut out,
                serde_json::json!({
                    "id": id, "cancelled": true, "at": "queued", "checks_after_cancel": 0, "ms": 0
                }),
            )
            .map_err(|e| e.to_string())?;
            continue;
        }
        let waited = abort::checks().saturating_sub(request.arrived_checks);
        let result = transcribe(&mut state, threads, &request.audio, request.fit);
        let aborted = {
            let mut r = running.lock().map_err(|_| "state lock poisoned")?;
            r.current = None;
            abort::raised()
        };
        let ms = t.elapsed().as_millis() as u64;
        let value = match result {
            _ if aborted => serde_json::json!({
                "id": id, "cancelled": true, "at": "running",
                "checks_after_cancel": abort::checks_since_raise(), "ms": ms
            }),
            Ok((text, frames, fell_back)) => serde_json::json!({
                "id": id, "text": text, "frames": frames, "fell_back": fell_back,
                "ms": ms, "waited_checks": waited
            }),
            Err(e) => serde_json::json!({ "id": id, "error": e }),
        };
        reply(&mut out, value).map_err(|e| e.to_string())?;
    }
}

fn transcribe(
    state: &mut WhisperState,
    threads: i32,
    audio: &[f32],
    fit: Option<(usize, usize)>,
) -> Result<(String, usize, bool), String> {
    if audio.is_empty() {
        return Err("empty utterance".into());
    }
    let secs = audio.len() as f32 / SAMPLE_RATE as f32;
    // whisper.cpp wants ≥ 100 ms; pad short inputs to 1 s of silence.
    let mut pcm = audio.to_vec();
    if pcm.len() < SAMPLE_RATE {
        pcm.resize(SAMPLE_RATE, 0.0);
    }
    if let Some(frames) = fit.and_then(|(m, f)| fitted_frames(pcm.len(), m, f)) {
        // The ladder of window.rs: fitted, a loop of the whole text trimmed
        // to one copy, a wider rung, then the full window.
        let text = full(state, threads, &pcm, Some(frames), secs)?;
        if abort::raised() || !looks_degenerate(&text, secs) {
            return Ok((text, frames, false));
        }
        if let Some(once) = leading_loop(&text) {
            return Ok((once, frames, false));
        }
        if let Some(rung) = rung_frames(frames) {
            let text = full(state, threads, &pcm, Some(rung), secs)?;
            if abort::raised() || !looks_degenerate(&text, secs) {
                return Ok((text, rung, true));
            }
            if let Some(once) = leading_loop(&text) {
                return Ok((once, rung, true));
            }
        }
        return Ok((full(state, threads, &pcm, None, secs)?, FULL_CTX, true));
    }
    Ok((full(state, threads, &pcm, None, secs)?, FULL_CTX, false))
}

fn full(
    state: &mut WhisperState,
    threads: i32,
    pcm: &[f32],
    frames: Option<usize>,
    secs: f32,
) -> Result<String, String> {
    let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
    p.set_n_threads(threads.max(1));
    p.set_language(Some("en"));
    p.set_translate(false);
    p.set_no_context(true);
    p.set_no_timestamps(true);
    p.set_single_segment(true);
    p.set_suppress_blank(true);
    p.set_suppress_nst(true);
    p.set_print_special(false);
    p.set_print_progress(false);
    p.set_print_realtime(false);
    p.set_print_timestamps(false);
    p.set_temperature(0.0);
    p.set_temperature_inc(0.0);
    // SAFETY: `poll` is a plain function that ignores its (null) user data.
    unsafe {
        p.set_abort_callback(Some(abort::poll));
        p.set_abort_callback_user_data(std::ptr::null_mut());
    }
    if let Some(frames) = frames {
        p.set_audio_ctx(frames as i32);
        // Guard against loops: about twice a fast speaking rate in tokens.
        p.set_max_tokens((secs * 8.0) as i32 + 12);
    }
    state
        .full(p, pcm)
        .map_err(|e| format!("whisper.cpp failed: {e}"))?;
    let mut text = String::new();
    for seg in state.as_iter() {
        text.push_str(
            &seg.to_str_lossy()
                .map_err(|e| format!("reading a segment: {e}"))?,
        );
    }
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_bytes(id: u32, samples: &[i16]) -> Vec<u8> {
        let mut m = vec![TAG_REQUEST];
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&(samples.len() as u32).to_le_bytes());
        m.push(1);
        m.extend_from_slice(&3000u32.to_le_bytes());
        m.extend_from_slice(&500u32.to_le_bytes());
        for s in samples {
            m.extend_from_slice(&s.to_le_bytes());
        }
        m
    }

    #[test]
    fn a_cancel_before_its_request_marks_it_and_a_running_one_raises_the_flag() {
        let running = Mutex::new(Running::default());
        let mut input = vec![TAG_CANCEL, 7, 0, 0, 0];
        input.extend(request_bytes(7, &[1, -1, 2]));
        let mut cursor = std::io::Cursor::new(input);
        let r = read_msg(&mut cursor, &running).unwrap().unwrap();
        assert_eq!((r.id, r.audio.len(), r.fit), (7, 3, Some((3000, 500))));
        assert!(running.lock().unwrap().cancelled.contains(&7));
        assert!(
            read_msg(&mut cursor, &running).unwrap().is_none(),
            "end of input"
        );

        abort::clear();
        running.lock().unwrap().current = Some(9);
        let mut cursor = std::io::Cursor::new(vec![TAG_CANCEL, 8, 0, 0, 0, TAG_CANCEL, 9, 0, 0, 0]);
        assert!(read_msg(&mut cursor, &running).unwrap().is_none());
        assert!(abort::raised(), "the running request 9 was cancelled");
        assert!(running.lock().unwrap().cancelled.contains(&8));
        abort::clear();
    }

    #[test]
    fn malformed_messages_are_errors() {
        let running = Mutex::new(Running::default());
        let mut bad_tag = std::io::Cursor::new(vec![9u8]);
        assert!(read_msg(&mut bad_tag, &running).is_err());
        let mut too_long = std::io::Cursor::new(request_bytes(1, &[])[..].to_vec());
        too_long.get_mut()[5..9].copy_from_slice(&(MAX_SAMPLES as u32 + 1).to_le_bytes());
        let e = read_msg(&mut too_long, &running).err().unwrap();
        assert!(e.contains("longer than 30 s"), "{e}");
        let mut cut = std::io::Cursor::new(request_bytes(1, &[1, 2, 3])[..20].to_vec());
        assert!(read_msg(&mut cut, &running).is_err());
    }
}
