// Heard means heard, in the browser: an interrupted reply is committed as
// far as the page *played* it, to within one word of where it stopped.
//
// The voice agent runs on hosted models served by this test (an
// OpenAI-compatible server on loopback): transcription always hears a
// question, the chat model always answers REPLY (one sentence of 28 words),
// and speech is built here from espeak-ng: every word synthesised on its
// own, trimmed of silence, followed by GAP_SAMPLES of silence. So the test
// knows where each word starts and ends in the reply's audio, to the sample.
//
// The page's microphone (Chromium's fake capture device) says a question,
// waits a gap chosen at random (the cut lands at a different place in the
// sentence each run), then a second voice cuts in while the reply plays.
// The page reports where its playback stopped at the clear (`played` with
// `clear`); from that position the test finds the word that was playing and
// checks that
//   1. the cut landed mid-sentence (words played before it and after it),
//   2. the committed text of the cut reply ends within one word of the word
//      the page was playing (at least the words it had finished, at most
//      one past the word in progress),
//   3. the committed text is exactly the server's rule applied to the
//      page's position (whole words in proportion to the part played), not
//      to what the server had sent (which it also prints, for comparison).
//
// Usage: node heard.test.mjs --bin PATH/colloquy --speech DIR --out DIR
//        [--gap SECONDS] [--chromium /usr/bin/chromium]
//   DIR of --speech holds q-france.wav and q-germany-f3.wav (assets/speech).

import { chromium } from 'playwright-core';
import { chromiumArgs, parseArgs, reporter, serverUrl } from './lib.mjs';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const args = parseArgs(process.argv.slice(2));
const BIN = args.bin;
const SPEECH = args.speech;
const OUT = args.out || fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-heard-'));
const CHROMIUM = args.chromium || '/usr/bin/chromium';
if (!BIN || !SPEECH) {
  console.error('usage: node heard.test.mjs --bin PATH/colloquy --speech assets/speech [--out DIR] [--gap S]');
  process.exit(2);
}
// Silence between the question and the second voice: for gaps of 2.5-5.5 s
// the cut landed 2.6-5.7 s into the 12.3 s sentence in our runs (the cut
// sits about the gap into the reply); from 3 s, a reply that starts up to
// 2 s later than that is still cut after its second word (0.94 s).
const GAP_S = args.gap ? Number(args.gap) : 3 + Math.random() * 3;

const { started, failures, log, check } = reporter();

const REPLY =
  'Once upon a time a little fox walked through the quiet forest looking for something warm to eat before the long winter night came down over the hills.';
const QUESTION = 'Tell me a story please.';
const RATE = 16000;
const GAP_SAMPLES = 960; // 60 ms after every word

function sh(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr || r.error}`);
}

// ---- speech with known word timings ------------------------------------------

const wordAudio = new Map();
const key = (w) => w.toLowerCase().replace(/[^a-z']/g, '');

/** One word from espeak-ng at 16 kHz, its leading and trailing silence trimmed. */
function wordPcm(word) {
  const k = key(word);
  if (!wordAudio.has(k)) {
    const wav = path.join(OUT, `w-${wordAudio.size}.wav`);
    const raw = path.join(OUT, `w-${wordAudio.size}.raw`);
    sh('espeak-ng', ['-v', 'en-us', '-w', wav, k || 'um']);
    sh('sox', [wav, '-t', 'raw', '-e', 'signed', '-b', '16', '-c', '1', '-r', String(RATE), raw,
      'silence', '1', '0.01', '0.5%', 'reverse', 'silence', '1', '0.01', '0.5%', 'reverse']);
    const b = fs.readFileSync(raw);
    wordAudio.set(k, new Int16Array(b.buffer, b.byteOffset, b.length >> 1).slice());
  }
  return wordAudio.get(k);
}

/** The speech of `text`: each word, then GAP_SAMPLES of silence. */
function speech(text) {
  const parts = text.split(/\s+/).filter(Boolean).map(wordPcm);
  const n = parts.reduce((a, p) => a + p.length + GAP_SAMPLES, 0);
  const out = new Int16Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length + GAP_SAMPLES;
  }
  return out;
}

function wav16k(pcm) {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0);
  h.writeUInt32LE(36 + pcm.length * 2, 4);
  h.write('WAVEfmt ', 8);
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20);
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(RATE, 24);
  h.writeUInt32LE(RATE * 2, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36);
  h.writeUInt32LE(pcm.length * 2, 40);
  return Buffer.concat([h, Buffer.from(pcm.buffer, pcm.byteOffset, pcm.length * 2)]);
}

// ---- the hosted models ----------------------------------------------------------------

const speechRequests = [];

function body(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

async function handle(req, res) {
  const b = await body(req);
  if (req.url === '/v1/audio/transcriptions') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ text: QUESTION }));
  } else if (req.url === '/v1/chat/completions') {
    const model = JSON.parse(b.toString() || '{}').model || 'fake';
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const chunk = (delta, finish) =>
      `data: ${JSON.stringify({
        id: 'chatcmpl-heard', object: 'chat.completion.chunk', created: 0, model,
        choices: [{ index: 0, delta, finish_reason: finish }],
      })}\n\n`;
    const tokens = REPLY.split(/(?= )/);
    for (const t of tokens) {
      res.write(chunk({ content: t }, null));
      await new Promise((r) => setTimeout(r, 5));
    }
    res.write(chunk({}, 'stop'));
    res.end('data: [DONE]\n\n');
  } else if (req.url === '/v1/audio/speech') {
    const input = String(JSON.parse(b.toString() || '{}').input || '');
    speechRequests.push(input);
    res.writeHead(200, { 'content-type': 'audio/wav' });
    res.end(wav16k(speech(input)));
  } else {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ error: { message: `no route ${req.url}`, type: 'not_found' } }));
  }
}

// ---- server and page ------------------------------------------------------------------

function startColloquy(base) {
  const token = 'heard-test-' + Math.random().toString(16).slice(2);
  const child = spawn(
    BIN,
    [
      'serve', '--bind', '127.0.0.1:0', '--agent', 'voice', '--no-journal',
      `--llm=${base}::fake-chat`, `--stt=${base}::whisper-1`, `--tts=${base}::tts-1::alloy`,
    ],
    {
      env: { ...process.env, COLLOQUY_TOKEN: token, OPENAI_API_KEY: 'heard-test', COLLOQUY_LOG: 'info' },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const { url, stderr } = serverUrl(child, 60);
  return { child, url, stderr };
}

async function waitFor(page, fn, what, timeoutMs) {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await page.evaluate(fn)) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** The server's rule (`turn::playout::spoken_prefix`) for one chunk. */
function proportionalWords(words, played, total) {
  return Math.min(words, Math.floor((words * played) / Math.max(total, 1)));
}

// ---- the test ----------------------------------------------------------------------------

const replyWords = REPLY.split(/\s+/);
// Where each word of the reply starts and ends (16 kHz samples from the
// reply's first sample): its chunks are the sentence's words in order, each
// followed by the gap, however the sentence is cut into chunks.
const timeline = [];
{
  let t = 0;
  for (const w of replyWords) {
    const n = wordPcm(w).length;
    timeline.push({ word: w, start: t, end: t + n });
    t += n + GAP_SAMPLES;
  }
}
const replySamples = timeline[timeline.length - 1].end + GAP_SAMPLES;
log(`reply: ${replyWords.length} words, ${(replySamples / RATE).toFixed(2)} s; gap before the second voice ${GAP_S.toFixed(2)} s`);

const mic = path.join(OUT, 'mic.wav');
sh('sox', [
  path.join(SPEECH, 'q-france.wav'), '-r', '16000', '-c', '1', '-b', '16', path.join(OUT, 'a.wav'),
]);
sh('sox', [
  path.join(SPEECH, 'q-germany-f3.wav'), '-r', '16000', '-c', '1', '-b', '16', path.join(OUT, 'b.wav'),
  'pad', GAP_S.toFixed(3), '4',
]);
sh('sox', [path.join(OUT, 'a.wav'), path.join(OUT, 'b.wav'), mic]);

const fake = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    res.writeHead(500);
    res.end(String(e));
  });
});
await new Promise((r) => fake.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${fake.address().port}/v1`;
const server = startColloquy(base);
let context;
let exitCode = 1;
try {
  const url = await server.url;
  log('server at', url.replace(/token=\S+/, 'token=…'));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'colloquy-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: chromiumArgs(mic),
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on('pageerror', (e) => log('page error:', e.message));
  await page.goto(url);
  await page.click('#mic');
  await waitFor(page, () => window.colloquyStats.connected, 'the WebSocket to open', 15000);
  // What had arrived of the reply when the clear came (what the server sent).
  await page.evaluate(() => {
    window.sentAtClear = null;
    const s = window.colloquyStats;
    const timer = setInterval(() => {
      if ((s.events.clear_playback || 0) >= 1) {
        window.sentAtClear = s.receivedSamples;
        clearInterval(timer);
      }
    }, 1);
  });
  await waitFor(
    page,
    () => (window.colloquyStats.cuts || []).some((c) => c.committed != null && c.heard != null),
    'the interrupted reply to be committed',
    GAP_S * 1000 + 40000,
  );
  const s = await page.evaluate(() => window.colloquyStats);
  const sentAtClear = await page.evaluate(() => window.sentAtClear);
  const cut = s.cuts.find((c) => c.committed != null && c.heard != null);
  log('cut', JSON.stringify(cut), 'clear report', JSON.stringify(s.clearReport), 'speech requests', JSON.stringify(speechRequests));

  check(s.errors.length === 0, 'no error events', JSON.stringify(s.errors));
  check(
    speechRequests.length >= 1 && speechRequests.join(' ').startsWith(REPLY),
    'the reply was spoken as one sentence',
    JSON.stringify(speechRequests[0]),
  );
  check(s.clearReport != null && s.clearReport.epoch === cut.epoch, 'the page reported where the clear stopped it', JSON.stringify(s.clearReport));

  const heard = cut.heard;
  const finished = timeline.filter((w) => w.end <= heard).length;
  const begun = timeline.filter((w) => w.start <= heard).length;
  const playing = begun > finished ? `"${timeline[finished].word}" (word ${begun})` : `the gap after word ${finished}`;
  const committed = cut.committed.split(/\s+/).filter(Boolean);
  const c = committed.length;
  const at = `the page stopped at ${(heard / 16).toFixed(0)} ms of ${(replySamples / 16).toFixed(0)} ms, in ${playing}; committed ${c} words, ending "${committed[c - 1] ?? ''}"`;
  check(finished >= 2 && begun < replyWords.length, 'the cut landed mid-sentence', at);
  check(
    c >= finished - 1 && c <= begun + 1,
    'the committed text ends within one word of where the page stopped',
    at,
  );
  check(
    committed.join(' ') === replyWords.slice(0, c).join(' '),
    'the committed text is a prefix of the reply',
    JSON.stringify(cut.committed),
  );
  const rule = proportionalWords(replyWords.length, heard, replySamples);
  const sent = sentAtClear != null && cut.start != null ? sentAtClear - cut.start : null;
  const sentRule = sent != null ? proportionalWords(replyWords.length, sent, replySamples) : null;
  check(
    c === rule,
    'the committed text follows the page\'s position, not what was sent',
    `${rule} words from the page's position; ${sentRule} words from what had arrived at the clear (${sent != null ? (sent / 16).toFixed(0) : '?'} ms)`,
  );
  exitCode = failures.length === 0 ? 0 : 1;
} catch (e) {
  log('ERROR', e.stack || String(e));
  log('server stderr:\n' + server.stderr().split('\n').slice(-30).join('\n'));
  exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  if (server.child.exitCode === null) {
    server.child.kill('SIGINT');
    await new Promise((r) => server.child.once('exit', r));
  }
  fake.close();
}
log(exitCode === 0 ? 'PASS' : `FAILED: ${failures.join('; ')}`, `in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(exitCode);
