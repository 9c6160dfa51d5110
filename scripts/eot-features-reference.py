#!/usr/bin/env python3
"""Reference values for the Smart Turn features and model (tests/eot_features.rs).

Runs pipecat's own feature code (`pipecat/audio/turn/smart_turn/_whisper_features.py`
from the pipecat-ai 1.14.0 wheel, BSD-2-Clause) and, when the `onnxruntime` Python
package is importable, the Smart Turn v3.2 model from the same wheel, on two inputs
made from committed assets:
  short: assets/speech/cards-001.wav (1.1 s: left-padded to 8 s)
  long:  librivox-0870.wav + librivox-0880.wav (10.1 s: the last 8 s are kept)
and writes assets/eot/features-reference.json: 80 mel values at a few frames of
each input, and the model's probability.

Run once, from the repository root, with numpy (and optionally onnxruntime) installed:
  scripts/eot-features-reference.py WHEEL_DIR
where WHEEL_DIR holds the wheel unpacked, e.g. made with
  pip download pipecat-ai==1.14.0 --no-deps -d /tmp/w && unzip -q /tmp/w/*.whl -d /tmp/w/x
  scripts/eot-features-reference.py /tmp/w/x
"""
import json
import sys
import wave
from pathlib import Path

import numpy as np

FRAMES = [0, 100, 200, 300, 400, 500, 600, 700, 750, 790, 795, 799]


def load(path):
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def main():
    wheel = Path(sys.argv[1])
    sys.path.insert(0, str(wheel))
    # Import the feature module by path: the package's __init__ pulls in pipecat's dependencies.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "wf", wheel / "pipecat/audio/turn/smart_turn/_whisper_features.py"
    )
    wf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wf)
    try:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(
            str(wheel / "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"), sess_options=so
        )
    except ImportError:
        session = None

    speech = Path("assets/speech")
    inputs = {
        "short": load(speech / "cards-001.wav"),
        "long": np.concatenate([load(speech / "librivox-0870.wav"), load(speech / "librivox-0880.wav")]),
    }
    out = {"frames": FRAMES, "inputs": {}}
    for name, pcm in inputs.items():
        audio = pcm.astype(np.float32) / 32768.0
        # As pipecat's LocalSmartTurnAnalyzerV3 does: last 8 s, zeros on the left.
        n = 8 * 16000
        audio = audio[-n:] if len(audio) > n else np.pad(audio, (n - len(audio), 0))
        feats = wf.compute_whisper_log_mel_features(audio, do_normalize=True)
        entry = {
            "samples": int(len(pcm)),
            "mean": float(feats.mean()),
            "values": [[round(float(v), 6) for v in feats[:, t]] for t in FRAMES],
        }
        if session is not None:
            p = session.run(None, {"input_features": feats[None, :, :]})[0]
            entry["probability"] = round(float(np.asarray(p).reshape(-1)[0]), 6)
        out["inputs"][name] = entry
    Path("assets/eot").mkdir(parents=True, exist_ok=True)
    Path("assets/eot/features-reference.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote assets/eot/features-reference.json")


if __name__ == "__main__":
    main()
