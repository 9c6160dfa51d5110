"""Prints one table of ratios from the `json:` lines of both sides.

Usage: compare.py COLLOQUY.jsonl PIPECAT.jsonl
Each ratio is pipecat ÷ colloquy (above 1: colloquy uses less).
No third-party imports: runs on the system Python.
"""

import json
import sys


def load(path):
    rows = {}
    meta = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("json: "):
                continue
            row = json.loads(line[len("json: "):])
            w = row.get("workload")
            if w == "meta":
                meta = row
                continue
            key = (w, row.get("k"), row.get("vad"))
            rows[key] = row
    return meta, rows


# (label, workload, k, vad, field, unit)
ROWS = [
    ("K=1 stages, flood: CPU per frame", "stages_flood", 1, None, "cpu_us_per_frame", "µs"),
    ("K=5 stages, flood: CPU per frame", "stages_flood", 5, None, "cpu_us_per_frame", "µs"),
    ("K=10 stages, flood: CPU per frame", "stages_flood", 10, None, "cpu_us_per_frame", "µs"),
    ("K=1 stages, closed loop: p50", "stages_closed_loop", 1, None, "p50_us", "µs"),
    ("K=5 stages, closed loop: p50", "stages_closed_loop", 5, None, "p50_us", "µs"),
    ("K=10 stages, closed loop: p50", "stages_closed_loop", 10, None, "p50_us", "µs"),
    ("K=10 stages, closed loop: p99", "stages_closed_loop", 10, None, "p99_us", "µs"),
    ("Silero VAD: CPU per 20 ms frame", "silero_per_frame", None, None, "cpu_us_per_frame", "µs"),
    ("input path with Silero: CPU per frame", "vad_path_per_frame", None, None, "cpu_us_per_frame", "µs"),
    ("idle session (colloquy: earshot VAD; pipecat: no VAD): memory", "idle_session_kib", None, "default", "kib_per_session", "KiB"),
    ("idle session, Silero VAD: memory", "idle_session_kib", None, "silero", "kib_per_session", "KiB"),
    ("interruption, 2 s queued: p50", "interruption", None, None, "p50_us", "µs"),
    ("interruption, 2 s queued: p99", "interruption", None, None, "p99_us", "µs"),
]


def fmt(v):
    if v is None:
        return "—"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def main():
    cmeta, c = load(sys.argv[1])
    pmeta, p = load(sys.argv[2])
    print(f"colloquy vs pipecat-ai {pmeta.get('version', '?')}, one side-by-side run on "
          f"{cmeta.get('frames', '?')} frames of the same recording; "
          f"load average {cmeta.get('loadavg', '?')} (colloquy) / {pmeta.get('loadavg', '?')} (pipecat)")
    print()
    print("| workload | colloquy | pipecat | pipecat ÷ colloquy |")
    print("|---|---|---|---|")
    for label, w, k, vad, field, unit in ROWS:
        cv = c.get((w, k, vad), {}).get(field)
        pv = p.get((w, k, vad), {}).get(field)
        ratio = f"**{pv / cv:,.0f}×**" if cv and pv and pv / cv >= 10 else (
            f"**{pv / cv:,.1f}×**" if cv and pv else "—")
        print(f"| {label} | {fmt(cv)} {unit if cv is not None else ''} | "
              f"{fmt(pv)} {unit if pv is not None else ''} | {ratio} |")
    leaked = p.get(("interruption", None, None), {}).get("audio_frames_after")
    if leaked is not None:
        print()
        print(f"pipecat audio frames played after an interruption reached its player: {leaked}; "
              "colloquy's bench asserts its next read is silent.")


if __name__ == "__main__":
    main()
