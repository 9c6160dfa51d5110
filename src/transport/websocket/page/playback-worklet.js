// colloquy playback worklet: a jitter buffer for the bot's 16 kHz PCM16
// frames, played at the context's rate (linear interpolation).
//
// - Playback starts once `startMs` of audio is buffered (absorbs network and
//   timer jitter); when the buffer runs dry it waits for `startMs` again.
// - `clear` drops everything buffered at once (barge-in): the bot stops
//   within one render quantum.
// - Counters (played samples at 16 kHz, underruns, clears, RMS) are posted
//   to the page every ~50 ms, with `position`: samples of the received
//   stream played so far, dropped ones counted as passed (what the page
//   reports to the server as `played`).
// - On a clear, `cleared` carries the position where playback stopped (the
//   last sample heard) and the clear's epoch, before anything is dropped.
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.inRate = opts.inRate || 16000;
    this.step = this.inRate / sampleRate; // input samples per output sample
    this.startSamples = Math.round(((opts.startMs || 60) * this.inRate) / 1000);
    this.queue = []; // Float32Array chunks at inRate
    this.head = 0; // read position in queue[0] (fractional)
    this.buffered = 0; // samples queued, at inRate
    this.playing = false;
    this.prev = 0; // last sample, for interpolation across chunks
    this.played = 0;
    this.passed = 0; // samples of whole chunks played or dropped
    this.underruns = 0;
    this.clears = 0;
    this.cleared = 0;
    this.starts = 0;
    this.sumSq = 0;
    this.sqCount = 0;
    this.quanta = 0;
    this.dryAt = -1;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (!msg) return;
    if (msg.type === 'audio') {
      const pcm = new Int16Array(msg.pcm);
      const f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 32768;
      this.queue.push(f);
      this.buffered += f.length;
      if (!this.playing && this.dryAt >= 0 && currentFrame - this.dryAt < sampleRate * 0.2) {
        // Audio came back shortly after the buffer ran dry mid-reply.
        this.underruns++;
      }
      this.dryAt = -1;
    } else if (msg.type === 'clear') {
      this.port.postMessage({ type: 'cleared', epoch: msg.epoch, position: this.position() });
      this.passed += this.buffered;
      this.cleared += this.buffered;
      this.queue = [];
      this.head = 0;
      this.buffered = 0;
      this.playing = false;
      this.dryAt = -1;
      this.clears++;
      this.report(true);
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.buffered >= this.startSamples) {
      this.playing = true;
      this.starts++;
      this.port.postMessage({ type: 'started', at: currentTime });
    }
    let i = 0;
    if (this.playing) {
      while (i < out.length && this.queue.length > 0) {
        const chunk = this.queue[0];
        const idx = Math.floor(this.head);
        const frac = this.head - idx;
        const a = chunk[idx];
        const b = idx + 1 < chunk.length ? chunk[idx + 1] : (this.queue[1] ? this.queue[1][0] : a);
        const s = a + (b - a) * frac;
        out[i++] = s;
        this.sumSq += s * s;
        this.sqCount++;
        this.head += this.step;
        while (this.queue.length > 0 && this.head >= this.queue[0].length) {
          this.head -= this.queue[0].length;
          const done = this.queue.shift();
          this.buffered -= done.length;
          this.played += done.length;
          this.passed += done.length;
        }
      }
      if (this.queue.length === 0) {
        this.playing = false;
        this.head = 0;
        this.dryAt = currentFrame;
      }
    }
    for (; i < out.length; i++) out[i] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (++this.quanta % 16 === 0) this.report(false);
    return true;
  }

  // Samples of the received stream played or dropped so far.
  position() {
    const inChunk = this.queue.length > 0 ? Math.min(Math.floor(this.head), this.queue[0].length) : 0;
    return this.passed + inChunk;
  }

  report(force) {
    const rms = this.sqCount ? Math.sqrt(this.sumSq / this.sqCount) : 0;
    this.port.postMessage({
      type: 'stats',
      played: this.played,
      position: this.position(),
      buffered: this.buffered,
      underruns: this.underruns,
      clears: this.clears,
      cleared: this.cleared,
      starts: this.starts,
      playing: this.playing,
      rms,
      force,
    });
    this.sumSq = 0;
    this.sqCount = 0;
  }
}

registerProcessor('colloquy-playback', PlaybackProcessor);
