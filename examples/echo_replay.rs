//! Replays an echo dump (`COLLOQUY_ECHO_DUMP=<dir> colloquy run ...`,
//! `src/echo/dump.rs`) offline: the echo delay on the recorded timelines per
//! second (cross-correlation), the render/capture call pattern, and AEC3's
//! echo reduction per second with the recorded call pattern and with
//! alternatives.
//!
//! `cargo run --release --example echo_replay -- <dir>`

use colloquy::audio::input_ring;
use colloquy::echo::{Aec3Canceller, EchoControl};
use colloquy::frame::{AudioFrame, FRAME_SAMPLES};

fn read_i16(path: &std::path::Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect()
}

fn decimate(x: &[f32]) -> Vec<f32> {
    x.chunks(4).map(|c| c.iter().sum::<f32>() / 4.0).collect()
}

fn power(x: &[f32]) -> f64 {
    x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("dump dir"));
    let cap = read_i16(&dir.join("capture_in.raw"));
    let out = read_i16(&dir.join("capture_out.raw"));
    let render = read_i16(&dir.join("render.raw"));
    let csv = std::fs::read_to_string(dir.join("frames.csv")).expect("frames.csv");
    let rows: Vec<Vec<f64>> = csv
        .lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().unwrap_or(0.0))
                .collect()
        })
        .collect();
    let fed: Vec<i64> = rows.iter().map(|r| r[1] as i64).collect();
    let nf = rows.len();
    println!(
        "{} frames ({:.1} s), {} render samples ({:.1} s)",
        nf,
        nf as f64 * 0.02,
        render.len(),
        render.len() as f64 / 16000.0
    );
    // Lead of the render timeline over the capture timeline at each frame.
    let lead: Vec<i64> = (0..nf)
        .map(|k| fed[k] - ((k + 1) * FRAME_SAMPLES) as i64)
        .collect();
    let base = *lead.iter().min().unwrap_or(&0);
    let cd = decimate(&cap);
    let rd = decimate(&render);
    let max_lag = 4 * 200; // 800 ms at 4 kHz
    println!("sec | lead min..max ms | xcorr lag ms (capture n ~ render n+base+lead0-lag) peak | in dB out dB red | erle est, delay, guarded | aligner lag ms, held ms");
    for s in 0..nf / 50 {
        let f0 = s * 50;
        let f1 = f0 + 50;
        let lmin = *lead[f0..f1].iter().min().unwrap();
        let lmax = *lead[f0..f1].iter().max().unwrap();
        // capture at 4 kHz: [f0*80, f1*80)
        let c = &cd[f0 * 80..f1 * 80];
        let ce: f64 = c.iter().map(|&v| (v as f64).powi(2)).sum();
        let mut best = (0i64, 0.0f64);
        for lag in 0..max_lag as i64 {
            let m0 = (f0 * 80) as i64 + (base / 4) - lag;
            if m0 < 0 || (m0 as usize + c.len()) > rd.len() {
                continue;
            }
            let r = &rd[m0 as usize..m0 as usize + c.len()];
            let re: f64 = r.iter().map(|&v| (v as f64).powi(2)).sum();
            let x: f64 = c.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum();
            let n = x / (ce * re).sqrt().max(1e-12);
            if n > best.1 {
                best = (lag, n);
            }
        }
        let pin = power(&cap[f0 * 320..f1 * 320]);
        let pout = power(&out[f0 * 320..f1 * 320]);
        let r = &rows[f1 - 1];
        let guarded: f64 = rows[f0..f1].iter().map(|r| r[5]).sum();
        let lag = r.get(7).copied().filter(|&l| l > i32::MIN as f64);
        let held = r.get(8).copied().unwrap_or(0.0) / 16.0;
        println!(
            "{s:3} | {:6.1}..{:6.1} | {:6.1} {:.2} | {:6.1} {:6.1} {:5.1} | {:5.1} {:4} {:2} | {} {:.0}",
            lmin as f64 / 16.0,
            lmax as f64 / 16.0,
            best.0 as f64 / 4.0,
            best.1,
            10.0 * pin.max(1e-12).log10(),
            10.0 * pout.max(1e-12).log10(),
            10.0 * (pin / pout.max(1e-12)).log10(),
            r[2],
            r[4],
            guarded,
            lag.map_or("-".to_string(), |l| format!("{l:.0}")),
            held
        );
    }
    // Replays.
    // The aligner's envelope lag estimate per half second on the recorded
    // arrivals (align.rs).
    {
        let mut a = colloquy::echo::align::RenderAligner::new();
        let mut pushed = 0usize;
        let mut line = String::from("aligner estimates (s: lag ms/corr):");
        for k in 0..nf {
            let want = (fed[k] as usize).min(render.len());
            if want > pushed {
                a.push_reference(&render[pushed..want]);
                pushed = want;
            }
            a.on_capture(&cap[k * 320..(k + 1) * 320]);
            if k % 25 == 24 {
                if let Some(e) = a.estimate() {
                    line.push_str(&format!(
                        " {:.1}: {}/{:.2}",
                        (k + 1) as f64 * 0.02,
                        e.lag_blocks * 4,
                        e.correlation
                    ));
                }
            }
        }
        println!("{line}");
    }
    // The reference arrives as recorded (`render_fed`: arrived so far, or fed
    // so far in dumps made before the aligner, which fed all on arrival);
    // the canceller built today aligns it itself.
    for (name, mode) in [("recorded arrivals", 0), ("lockstep", 1)] {
        let (mut p, c) = input_ring(render.len() + 16_000);
        let mut aec = Aec3Canceller::new(c, 16_000).expect("aec");
        let mut pushed = 0usize;
        let mut res = Vec::with_capacity(cap.len());
        // Frames the canceller trusted (no gate) although their residual is
        // loud (over -40 dBFS and under 20 dB of reduction): where the bot
        // can interrupt itself.
        let mut exposed = Vec::new();
        for k in 0..nf {
            let want = match mode {
                0 => fed[k] as usize,
                _ => (((k + 1) * FRAME_SAMPLES) as i64 + base) as usize,
            }
            .min(render.len());
            if want > pushed {
                p.push(&render[pushed..want]);
                pushed = want;
            }
            let mut f = AudioFrame::silent((k * FRAME_SAMPLES) as u64);
            for (s, &v) in f.samples.iter_mut().zip(&cap[k * 320..(k + 1) * 320]) {
                *s = (v * 32768.0) as i16;
            }
            aec.process(&mut f);
            let fin = power(&cap[k * 320..(k + 1) * 320]);
            let fout = f
                .samples
                .iter()
                .map(|&v| (v as f64 / 32768.0).powi(2))
                .sum::<f64>()
                / 320.0;
            if aec.trusted() && fout > 1e-4 && fin / fout.max(1e-12) < 100.0 {
                exposed.push(k as f64 * 0.02);
            }
            res.extend(f.samples.iter().map(|&v| v as f32 / 32768.0));
        }
        let mut line = format!("{name:18}:");
        for s in 0..nf / 50 {
            let pin = power(&cap[s * 16000..(s + 1) * 16000]);
            let pout = power(&res[s * 16000..(s + 1) * 16000]);
            line.push_str(&format!(" {:.0}", 10.0 * (pin / pout.max(1e-12)).log10()));
        }
        println!("{line}  (stats {:?})", aec.stats());
        println!(
            "  path changes {}; exposed frames {}: {:?}",
            aec.path_changes(),
            exposed.len(),
            exposed
                .iter()
                .map(|t| format!("{t:.2}"))
                .collect::<Vec<_>>()
        );
        let mut hist = [0u32; 8];
        for s in 0..nf / 50 {
            let pin = power(&cap[s * 16000..(s + 1) * 16000]);
            let pout = power(&res[s * 16000..(s + 1) * 16000]);
            let red = 10.0 * (pin / pout.max(1e-12)).log10();
            hist[((red / 10.0).clamp(0.0, 7.0)) as usize] += 1;
        }
        println!("  seconds by reduction (0-10, 10-20, ... dB): {hist:?}");
    }
}
