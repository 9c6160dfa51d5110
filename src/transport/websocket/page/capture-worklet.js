// colloquy capture worklet: turns the microphone's render quanta into
// 20 ms PCM16 little-endian mono frames and posts each to the page, with its
// loudness for the level meter. Runs on the audio thread: no allocation per
// quantum except the frame handed off (transferred, not copied).
class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.frameSamples = opts.frameSamples || Math.round(sampleRate / 50);
    this.frame = new Int16Array(this.frameSamples);
    this.fill = 0;
    this.sumSq = 0;
    this.enabled = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'enable') this.enabled = !!e.data.on;
    };
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.enabled || !input || input.length === 0) return true;
    const ch = input[0];
    for (let i = 0; i < ch.length; i++) {
      let s = ch[i];
      if (s > 1) s = 1;
      else if (s < -1) s = -1;
      this.sumSq += s * s;
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.frameSamples) {
        const rms = Math.sqrt(this.sumSq / this.frameSamples);
        const buf = this.frame.buffer;
        this.port.postMessage({ type: 'frame', pcm: buf, rms }, [buf]);
        this.frame = new Int16Array(this.frameSamples);
        this.fill = 0;
        this.sumSq = 0;
      }
    }
    return true;
  }
}

registerProcessor('colloquy-capture', CaptureProcessor);
