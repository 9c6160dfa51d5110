"""pipecat's half of the peer comparison (see README.md beside this file).

Runs the workloads of benches/peer.rs on pipecat-ai (installed from PyPI by
scripts/peer-bench.sh, pinned in requirements.txt), on the same recording,
measured the same way, and prints one `json: {...}` line per measurement.

Usage: pipecat_bench.py RECORDING.wav [--quick]
"""

import asyncio
import gc
import json
import sys
import time
import wave

from loguru import logger

logger.remove()
logger.add(sys.stderr, level="ERROR")

from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.audio.vad_processor import VADProcessor  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

FRAME_BYTES = 320 * 2  # 20 ms of 16 kHz mono PCM16


def emit(obj):
    print("json: " + json.dumps(obj), flush=True)


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(values, q):
    v = sorted(values)
    return v[int((len(v) - 1) * q)]


def read_frames(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = w.readframes(w.getnframes())
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES)]


class PassThrough(FrameProcessor):
    """A stage that forwards every frame unchanged."""

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Sink(FrameProcessor):
    """The pipeline's output: counts input audio frames, signals arrivals."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.target = 0
        self.arrived = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.count += 1
            if self.count >= self.target:
                self.arrived.set()
        await self.push_frame(frame, direction)


class Player(FrameProcessor):
    """Plays output audio in real time (20 ms per frame), as a transport's
    output does, so audio queues up in front of it; notes when an
    interruption reaches it and whether any audio played after it."""

    def __init__(self):
        super().__init__()
        self.played = 0
        self.played_after = 0
        self.interrupted_at = None
        self.interrupted = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self.interrupted_at = time.perf_counter()
            self.interrupted.set()
        elif isinstance(frame, OutputAudioRawFrame):
            await asyncio.sleep(0.02)
            self.played += 1
            if self.interrupted_at is not None:
                self.played_after += 1
        await self.push_frame(frame, direction)


class Running:
    """A pipeline started on its own worker runner."""

    async def start(self, processors):
        self.worker = PipelineWorker(
            Pipeline(processors),
            cancel_on_idle_timeout=False,
            idle_timeout_secs=None,
            check_dangling_tasks=False,
        )
        started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            started.set()

        self.runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        await self.runner.add_workers(self.worker)
        self.task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(started.wait(), 10)
        return self

    async def stop(self):
        await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.task, 10)


def audio_frames(chunks):
    return [InputAudioRawFrame(audio=c, sample_rate=16000, num_channels=1) for c in chunks]


async def stages_flood(chunks, k):
    sink = Sink()
    p = await Running().start([PassThrough() for _ in range(k)] + [sink])
    frames = audio_frames(chunks)
    sink.target = len(frames)
    gc.collect()
    cpu0 = time.process_time()
    for f in frames:
        await p.worker.queue_frame(f)
    await sink.arrived.wait()
    cpu = time.process_time() - cpu0
    await p.stop()
    emit({"workload": "stages_flood", "k": k, "frames": sink.count,
          "cpu_us_per_frame": cpu * 1e6 / sink.count})


async def stages_closed_loop(chunks, k):
    sink = Sink()
    p = await Running().start([PassThrough() for _ in range(k)] + [sink])
    frames = audio_frames(chunks)
    lat = []
    for i, f in enumerate(frames):
        sink.arrived.clear()
        sink.target = i + 1
        t = time.perf_counter()
        await p.worker.queue_frame(f)
        await sink.arrived.wait()
        lat.append(time.perf_counter() - t)
    await p.stop()
    emit({"workload": "stages_closed_loop", "k": k, "frames": len(lat),
          "p50_us": percentile(lat, 0.5) * 1e6, "p99_us": percentile(lat, 0.99) * 1e6})


async def silero_per_frame(chunks):
    """pipecat's per-frame VAD call (`analyze_audio`, which runs the model on
    the analyzer's executor thread), over the recording."""
    analyzer = SileroVADAnalyzer(sample_rate=16000)
    analyzer.set_sample_rate(16000)  # what a StartFrame does in a pipeline
    cpu0 = time.process_time()
    for c in chunks:
        await analyzer.analyze_audio(c)
    cpu = time.process_time() - cpu0
    await analyzer.cleanup()
    emit({"workload": "silero_per_frame", "frames": len(chunks),
          "cpu_us_per_frame": cpu * 1e6 / len(chunks)})


async def vad_path(chunks):
    """The input path with Silero: a VADProcessor then the output."""
    sink = Sink()
    p = await Running().start([VADProcessor(vad_analyzer=SileroVADAnalyzer(sample_rate=16000)), sink])
    frames = audio_frames(chunks)
    sink.target = len(frames)
    cpu0 = time.process_time()
    for f in frames:
        await p.worker.queue_frame(f)
    await sink.arrived.wait()
    cpu = time.process_time() - cpu0
    await p.stop()
    emit({"workload": "vad_path_per_frame", "frames": sink.count,
          "cpu_us_per_frame": cpu * 1e6 / sink.count})


async def idle_sessions(n, with_vad):
    """n idle sessions: a pipeline of a VAD processor (or not) and K = 5
    pass-through stages each, all started, nobody talking."""
    gc.collect()
    await asyncio.sleep(0.2)
    before = rss_kib()
    held = []
    for _ in range(n):
        procs = [PassThrough() for _ in range(5)]
        if with_vad:
            procs.insert(0, VADProcessor(vad_analyzer=SileroVADAnalyzer(sample_rate=16000)))
        held.append(await Running().start(procs))
    await asyncio.sleep(0.5)
    gc.collect()
    after = rss_kib()
    emit({"workload": "idle_session_kib", "vad": "silero" if with_vad else "default",
          "sessions": n, "kib_per_session": (after - before) / n})
    for p in held:
        await p.stop()


async def interruption(runs, k=5):
    """2 s of output audio queued in front of a real-time player behind K
    stages; after 200 ms the first stage broadcasts an interruption (as a
    VAD or turn processor does); time until the player has it."""
    first = PassThrough()
    player = Player()
    p = await Running().start([first] + [PassThrough() for _ in range(k - 1)] + [player])
    reply = bytes(FRAME_BYTES)
    lat = []
    leaked = 0
    for _ in range(runs):
        player.interrupted.clear()
        player.interrupted_at = None
        player.played_after = 0
        for _ in range(100):
            await p.worker.queue_frame(OutputAudioRawFrame(audio=reply, sample_rate=16000, num_channels=1))
        await asyncio.sleep(0.2)
        t = time.perf_counter()
        await first.broadcast_interruption()
        await player.interrupted.wait()
        lat.append(player.interrupted_at - t)
        await asyncio.sleep(0.06)
        leaked += player.played_after
    await p.stop()
    emit({"workload": "interruption", "runs": runs, "queued_ms": 2000, "stages": k,
          "p50_us": percentile(lat, 0.5) * 1e6, "p99_us": percentile(lat, 0.99) * 1e6,
          "audio_frames_after": leaked})


async def main():
    quick = "--quick" in sys.argv
    chunks = read_frames(sys.argv[1])
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    import pipecat
    emit({"workload": "meta", "side": "pipecat", "version": pipecat.__version__,
          "frames": len(chunks), "loadavg": load})
    await stages_flood(chunks[:200], 5)  # warm-up, off the record
    for k in (1, 5, 10):
        await stages_flood(chunks, k)
        await stages_closed_loop(chunks[:1000], k)
    await silero_per_frame(chunks)
    await vad_path(chunks)
    await idle_sessions(5 if quick else 200, False)
    await idle_sessions(2 if quick else 50, True)
    await interruption(3 if quick else 20)


if __name__ == "__main__":
    asyncio.run(main())
