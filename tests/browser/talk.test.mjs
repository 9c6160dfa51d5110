// End-to-end test of `colloquy serve` in headless Chromium.
//
// A real recording plays as the page's microphone (Chromium's fake capture
// device): a question, a short pause, then a second voice that cuts in while
// the parrot agent is still answering, then silence. The test checks that
//   1. the server heard the file (loudness envelopes of the file and of the
//      server's dump of what the session heard correlate),
//   2. a bot reply arrived and the page played it (the playback worklet's
//      counters on `window.colloquyStats`),
//   3. the interruption cleared playback (clear_playback reached the page's
//      jitter buffer and no more of the old reply played),
//   4. the transcript shows both sides, with the interrupted reply marked,
//   5. after a reload the page resumes its conversation: the server's
//      `history` is drawn in the transcript (the journal's committed turns),
//   6. heard means heard, coarsely: the page reported its playout position
//      (`played`, and at the clear where it stopped), and the committed text
//      of the cut reply ends within one word of where the page stopped (the
//      parrot's text has 4 words over the whole reply, so this only catches
//      gross errors; heard.test.mjs is the word-accurate test),
// and saves a screenshot of the page (docs/screenshot.png).
//
// Usage: node talk.test.mjs --bin PATH/colloquy --mic FILE.wav --out DIR
//        [--screenshot docs/screenshot.png] [--chromium /usr/bin/chromium]

import { chromium } from 'playwright-core';
import { chromiumArgs, parseArgs, reporter, serverUrl } from './lib.mjs';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = parseArgs(process.argv.slice(2));
const BIN = args.bin;
const MIC = args.mic;
const OUT = args.out || fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-browser-'));
const SCREENSHOT = args.screenshot;
const CHROMIUM = args.chromium || '/usr/bin/chromium';
if (!BIN || !MIC) {
  console.error('usage: node talk.test.mjs --bin PATH/colloquy --mic FILE.wav [--out DIR] [--screenshot PNG]');
  process.exit(2);
}

const { started, failures, log, check } = reporter();

// ---- WAV helpers --------------------------------------------------------------

function readWavMono16(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') {
    throw new Error(`${file}: not a WAV file`);
  }
  let pos = 12;
  let fmt = null;
  while (pos + 8 <= buf.length) {
    const id = buf.toString('ascii', pos, pos + 4);
    const size = buf.readUInt32LE(pos + 4);
    const body = pos + 8;
    if (id === 'fmt ') {
      fmt = {
        channels: buf.readUInt16LE(body + 2),
        rate: buf.readUInt32LE(body + 4),
        bits: buf.readUInt16LE(body + 14),
      };
    } else if (id === 'data') {
      if (!fmt || fmt.bits !== 16) throw new Error(`${file}: need 16-bit PCM`);
      const n = Math.floor(Math.min(size, buf.length - body) / 2 / fmt.channels);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = buf.readInt16LE(body + i * 2 * fmt.channels) / 32768;
      return { rate: fmt.rate, samples: out };
    }
    pos = body + size + (size & 1);
  }
  throw new Error(`${file}: no data chunk`);
}

function envelope({ rate, samples }, windowMs = 20) {
  const w = Math.round((rate * windowMs) / 1000);
  const env = [];
  for (let i = 0; i + w <= samples.length; i += w) {
    let s = 0;
    for (let j = i; j < i + w; j++) s += samples[j] * samples[j];
    // Log loudness (dB, floored at -60): the browser's automatic gain
    // control scales the signal slowly, which shifts a log envelope but
    // does not change its shape.
    env.push(20 * Math.log10(Math.max(Math.sqrt(s / w), 1e-3)));
  }
  return env;
}

// The file's envelope up to 0.5 s after its last sound.
function activePart(env) {
  let last = 0;
  for (let i = 0; i < env.length; i++) if (env[i] > -50) last = i;
  return env.slice(0, Math.min(env.length, last + 25));
}

function pearson(a, b) {
  const n = Math.min(a.length, b.length);
  if (n < 10) return -1;
  let ma = 0;
  let mb = 0;
  for (let i = 0; i < n; i++) {
    ma += a[i];
    mb += b[i];
  }
  ma /= n;
  mb /= n;
  let sab = 0;
  let saa = 0;
  let sbb = 0;
  for (let i = 0; i < n; i++) {
    const x = a[i] - ma;
    const y = b[i] - mb;
    sab += x * y;
    saa += x * x;
    sbb += y * y;
  }
  return sab / Math.sqrt(saa * sbb || 1);
}

// Best correlation of the file's envelope against the received one over lags
// (received = file delayed by `lag` windows, or missing its first windows).
function bestAlignment(fileEnv, gotEnv) {
  let best = { r: -1, lag: 0 };
  for (let lag = -50; lag <= 250; lag++) {
    const a = [];
    const b = [];
    for (let i = 0; i < fileEnv.length; i++) {
      const j = i + lag;
      if (j < 0 || j >= gotEnv.length) continue;
      a.push(fileEnv[i]);
      b.push(gotEnv[j]);
    }
    if (a.length < fileEnv.length * 0.8) continue;
    const r = pearson(a, b);
    if (r > best.r) best = { r, lag };
  }
  return best;
}

// ---- server ------------------------------------------------------------------------

function startServer(dumpDir, journal) {
  const token = 'browser-test-token-' + Math.random().toString(16).slice(2);
  const child = spawn(
    BIN,
    ['serve', '--bind', '127.0.0.1:0', '--agent', 'parrot', '--dump-dir', dumpDir, '--journal', journal],
    { env: { ...process.env, COLLOQUY_TOKEN: token, COLLOQUY_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const { url, stderr } = serverUrl(child, 20);
  return { child, url, token, stderr };
}

async function waitFor(page, fn, what, timeoutMs) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await page.evaluate(fn)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

// ---- the test ------------------------------------------------------------------------

const dumpDir = path.join(OUT, 'dump');
fs.mkdirSync(dumpDir, { recursive: true });
const journal = path.join(OUT, 'journal.sqlite');
const server = startServer(dumpDir, journal);
let context;
let exitCode = 1;
try {
  const url = await server.url;
  log('server at', url.replace(/token=\S+/, 'token=…'));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 820 },
    deviceScaleFactor: 1,
    args: chromiumArgs(MIC),
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('console', (m) => {
    if (m.type() === 'error') log('page console error:', m.text());
  });
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(url);
  await page.click('#mic');
  await waitFor(page, () => window.colloquyStats.connected, 'the WebSocket to open', 15000);
  log('connected; the microphone file is playing');

  // Watch the page: what it had played when the clear came, and when the
  // next reply started.
  await page.evaluate(() => {
    window.clearWatch = { atClear: null, atNextStart: null };
    const s = window.colloquyStats;
    let lastClears = 0;
    setInterval(() => {
      if (s.clears > lastClears && window.clearWatch.atClear == null) {
        window.clearWatch.atClear = { played: s.played, buffered: s.buffered, t: performance.now() };
      }
      lastClears = s.clears;
    }, 10);
  });

  const micSecs = readWavMono16(MIC).samples.length / readWavMono16(MIC).rate;
  await waitFor(
    page,
    () => {
      const s = window.colloquyStats;
      return (s.events.clear_playback || 0) >= 1 && (s.events.bot_stopped_speaking || 0) >= 1;
    },
    'an interruption and a completed reply',
    micSecs * 1000 + 20000,
  );
  // Let the last reply finish playing.
  await waitFor(
    page,
    () => {
      const s = window.colloquyStats;
      return (s.events.committed || 0) >= 2 && !s.playing && s.buffered === 0 && document.body.className !== 'state-speaking';
    },
    'the last reply to finish',
    20000,
  );
  await new Promise((r) => setTimeout(r, 400));

  const s = await page.evaluate(() => window.colloquyStats);
  const watch = await page.evaluate(() => window.clearWatch);
  const dom = await page.evaluate(() => ({
    user: document.querySelectorAll('#transcript .msg.user').length,
    bot: document.querySelectorAll('#transcript .msg.bot').length,
    interrupted: document.querySelectorAll('#transcript .msg.bot.interrupted').length,
    cut: document.querySelectorAll('#transcript .msg.bot .cutmark').length,
    waterfallRows: document.querySelectorAll('#waterfall .wf-row').length,
    userTexts: [...document.querySelectorAll('#transcript .msg.user .body')].map((e) => e.textContent),
    botTexts: [...document.querySelectorAll('#transcript .msg.bot .body')].map((e) => e.textContent),
  }));
  log('page stats', JSON.stringify({ ...s, events: undefined }));
  log('events', JSON.stringify(s.events));
  log('transcript', JSON.stringify(dom));

  check(s.sentFrames > micSecs * 50 * 0.8, 'the page streamed the microphone', `${s.sentFrames} frames`);
  check(s.receivedFrames > 25, 'bot audio arrived', `${s.receivedFrames} frames`);
  check(s.played > 16000, 'the page played the bot audio', `${(s.played / 16000).toFixed(2)} s played`);
  check(s.maxPlaybackRms > 0.005, 'the played audio is not silence', `max rms ${s.maxPlaybackRms.toFixed(4)}`);
  // Zero on a quiet machine; a rare one was seen with the load average at
  // 13 on 2 cores, so up to 2 pass (the count is printed either way).
  check(s.underruns <= 2, 'playback (almost) never ran dry', `${s.underruns} underrun(s)`);
  check((s.events.interrupted || 0) >= 1, 'the second voice interrupted the bot', `${s.events.interrupted || 0}`);
  check(s.clears >= 1, 'clear_playback reached the playback worklet', `${s.clears} clear(s), ${s.clearedSamples} samples dropped`);
  if (watch.atClear) {
    check(watch.atClear.buffered === 0, 'the jitter buffer was empty right after the clear', `${watch.atClear.buffered}`);
  } else {
    check(false, 'the clear was observed on the page');
  }
  check(dom.user >= 2 && dom.bot >= 2, 'the transcript shows both sides', `${dom.user} user, ${dom.bot} bot`);
  check(dom.interrupted >= 1 && dom.cut >= 1, 'the interrupted reply is shown cut', `${dom.interrupted}`);
  check(dom.waterfallRows >= 2, 'the latency waterfall has a row per reply', `${dom.waterfallRows}`);
  check(s.errors.length === 0, 'no error events', JSON.stringify(s.errors));

  // Heard means heard. The parrot says PARROT_TEXT over the user's own
  // utterance audio: the utterance from 300 ms before the speech started
  // (SessionConfig::lead_ms) to its end, so word k of the 4 is heard once
  // k/4 of (speech_ms + 300 ms) played.
  check(s.playedReports >= 10 && s.clearReport != null, 'the page reported its playout position', `${s.playedReports} reports, at the clear ${JSON.stringify(s.clearReport)}`);
  const PARROT_WORDS = 4; // "(parrot) you said this"
  const cut = (s.cuts || []).find((c) => c.heard != null && c.committed != null && c.speechMs != null);
  if (cut) {
    const replySamples = ((cut.speechMs + 300) * 16000) / 1000;
    const pageWords = Math.floor((PARROT_WORDS * cut.heard) / replySamples);
    const committedWords = cut.committed.split(/\s+/).filter(Boolean).length;
    check(
      cut.heard > 0 && cut.heard < replySamples && Math.abs(committedWords - pageWords) <= 1,
      'the committed text of the cut reply ends within one word of where the page stopped',
      `page stopped after ${(cut.heard / 16).toFixed(0)} ms of ${(replySamples / 16).toFixed(0)} ms = word ${pageWords} of ${PARROT_WORDS}; committed "${cut.committed}" (${committedWords} words)`,
    );
  } else {
    check(false, 'the cut reply was seen whole on the page (start, clear report, commit)', JSON.stringify(s.cuts));
  }

  if (SCREENSHOT) {
    await page.screenshot({ path: SCREENSHOT });
    log('screenshot:', SCREENSHOT);
  }

  // End the session, reload, talk again: the page resumes its conversation
  // and draws the committed turns (the fake microphone is silent by now).
  const first = { session: s.session, connection: s.connection, committed: s.events.committed || 0 };
  await page.click('#mic');
  await waitFor(page, () => window.colloquyStats.closed !== null, 'the first connection to close', 5000);
  await page.reload();
  await page.click('#mic');
  await waitFor(page, () => window.colloquyStats.historyTurns !== null, 'the history after the reload', 15000);
  const resumed = await page.evaluate(() => ({
    session: window.colloquyStats.session,
    historyTurns: window.colloquyStats.historyTurns,
    errors: window.colloquyStats.errors,
    user: document.querySelectorAll('#transcript .msg.user.history').length,
    bot: document.querySelectorAll('#transcript .msg.bot.history').length,
    interrupted: document.querySelectorAll('#transcript .msg.bot.history.interrupted').length,
  }));
  log('after reload', JSON.stringify(resumed));
  await page.screenshot({ path: path.join(OUT, 'resumed.png') });
  check(resumed.session === first.session, 'the reloaded page resumed its session', resumed.session);
  check(
    resumed.historyTurns === first.committed && resumed.user === first.committed && resumed.bot === first.committed,
    'the reloaded page shows every committed turn',
    `${resumed.historyTurns} history turns, ${first.committed} committed before`,
  );
  check(resumed.interrupted >= 1, 'the history shows the interrupted reply', `${resumed.interrupted}`);
  check(resumed.errors.length === 0, 'no error events after the reload', JSON.stringify(resumed.errors));

  // End the session; the server finishes the dump of what it heard.
  await page.click('#mic');
  await new Promise((r) => setTimeout(r, 500));
  await context.close();
  context = null;
  server.child.kill('SIGINT');
  await new Promise((r) => server.child.once('exit', r));

  const sessions = spawnSync(BIN, ['sessions', '--journal', journal, '--json'], { encoding: 'utf8' });
  const listed = sessions.status === 0 ? JSON.parse(sessions.stdout) : [];
  const kept = listed.find((x) => x.id === first.session);
  check(
    listed.length === 1 && kept && kept.turns === first.committed,
    'the journal holds one session with every committed turn',
    sessions.status === 0 ? JSON.stringify(listed) : sessions.stderr,
  );

  const dumps = fs.readdirSync(dumpDir).filter((f) => f.endsWith('-in.wav'));
  const dump = `${first.connection}-in.wav`;
  check(dumps.includes(dump), 'the server dumped the first connection', dumps.join(','));
  if (dumps.includes(dump)) {
    const got = readWavMono16(path.join(dumpDir, dump));
    const file = readWavMono16(MIC);
    const best = bestAlignment(activePart(envelope(file)), envelope(got));
    // 0.96-0.98 in most runs; one CI-like run on a busy machine gave 0.854
    // (cause not found; no audio was refused: no error events). Unrelated
    // audio correlates near 0, so 0.8 still tells heard from not heard.
    check(
      best.r > 0.8,
      'the server heard the microphone file (loudness envelopes correlate)',
      `r=${best.r.toFixed(3)} at lag ${best.lag * 20} ms, heard ${(got.samples.length / got.rate).toFixed(2)} s of ${micSecs.toFixed(2)} s`,
    );
  }
  exitCode = failures.length === 0 ? 0 : 1;
} catch (e) {
  log('ERROR', e.stack || String(e));
  log('server stderr:\n' + server.stderr().split('\n').slice(-30).join('\n'));
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  if (server.child.exitCode === null) server.child.kill('SIGINT');
}
log(exitCode === 0 ? 'PASS' : `FAILED: ${failures.join('; ')}`, `in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(exitCode);
