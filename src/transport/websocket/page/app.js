// colloquy talk page: microphone → WebSocket → speaker, live transcript and
// a per-turn latency waterfall. Protocol: docs/protocol.md.
'use strict';

const PROTOCOL_VERSION = 1;
const $ = (id) => document.getElementById(id);

// Counters for people and for the browser test (read with page.evaluate).
const stats = {
  connected: false,
  session: null,
  connection: null,
  resumable: false,
  historyTurns: null,
  sentFrames: 0,
  sentBytes: 0,
  receivedFrames: 0,
  receivedSamples: 0,
  played: 0,
  buffered: 0,
  underruns: 0,
  clears: 0,
  clearedSamples: 0,
  // `played` reports sent to the server, and the last one sent at a clear.
  playedReports: 0,
  clearReport: null,
  // Per cut reply: where it began in the received stream, the user's
  // speech it answered (ms), where the page stopped (`heard`, samples of the
  // reply), and the text the server committed for it.
  replyStarts: {},
  cuts: [],
  playbackStarts: 0,
  playing: false,
  playbackRms: 0,
  maxPlaybackRms: 0,
  events: {},
  errors: [],
  closed: null,
};
window.colloquyStats = stats;

const params = new URLSearchParams(location.search);
const token = params.get('token') || '';
let running = null; // { ctx, stream, ws, capture, playback }

// ---- the conversation id ------------------------------------------------------
// Kept per tab (sessionStorage: a reload resumes it, another tab starts its
// own); a `session` in the page URL names one to resume the first time.

const SESSION_KEY = 'colloquy.session';

function storedSession() {
  try {
    return sessionStorage.getItem(SESSION_KEY) || params.get('session') || null;
  } catch {
    return params.get('session') || null;
  }
}

function storeSession(id) {
  try {
    if (id) sessionStorage.setItem(SESSION_KEY, id);
    else sessionStorage.removeItem(SESSION_KEY);
  } catch {}
}

// ---- conversation model ----------------------------------------------------

const turns = new Map(); // epoch -> turn record
let pendingUser = null; // user bubble not yet tied to an epoch
let speechStartMs = null;
let lastSpeech = null; // { endMs, speechMs }
// Turns opened while the current utterance was still going (speculative
// turns open at a pause, before speech_stopped).
let utteranceTurns = [];
let userSpeaking = false;
let currentBotEpoch = null;
let latencyArrivedAt = new Map(); // epoch -> performance.now()

function turnFor(epoch) {
  let t = turns.get(epoch);
  if (!t) {
    t = { epoch, user: null, bot: null, latency: null, spans: [], playMs: null, row: null };
    turns.set(epoch, t);
  }
  return t;
}

function clearEmpty(list) {
  const e = list.querySelector('.empty');
  if (e) e.remove();
}

function bubble(side) {
  const list = $('transcript');
  clearEmpty(list);
  const li = document.createElement('li');
  li.className = `msg ${side}`;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = side === 'user' ? 'You' : 'Bot';
  const body = document.createElement('div');
  body.className = 'body';
  const meta = document.createElement('div');
  meta.className = 'meta';
  li.append(who, body, meta);
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return { li, body, meta, text: '', audioMs: null };
}

function setUserText(b, text, partial) {
  b.text = text;
  b.body.textContent = text;
  b.li.classList.toggle('partial', !!partial);
}

function setBotBody(b) {
  b.body.textContent = '';
  const text = b.text || '';
  if (b.spoken != null) {
    const spoken = b.spoken.trim();
    const kept = document.createElement('span');
    kept.textContent = spoken;
    b.body.append(kept);
    let rest = text;
    if (spoken && text.startsWith(spoken)) rest = text.slice(spoken.length);
    else if (!spoken) rest = text;
    if (rest.trim()) {
      const cut = document.createElement('span');
      cut.className = 'cut';
      cut.textContent = (spoken ? ' ' : '') + rest.trim();
      b.body.append(cut);
    }
    const mark = document.createElement('span');
    mark.className = 'cutmark';
    mark.textContent = '✂';
    mark.title = 'interrupted here';
    if (spoken) kept.after(mark);
    else b.body.prepend(mark);
  } else {
    b.body.textContent = text || '(audio)';
  }
}

function fmtSecs(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

function setMeta(b, parts) {
  b.meta.textContent = parts.filter(Boolean).join(' · ');
}

// The committed turns of a resumed conversation: the transcript starts over
// from them (the live turns of an earlier connection are among them).
function renderHistory(history) {
  const list = $('transcript');
  list.textContent = '';
  turns.clear();
  latencyArrivedAt = new Map();
  pendingUser = null;
  currentBotEpoch = null;
  stats.historyTurns = history.length;
  if (history.length === 0) {
    const empty = document.createElement('li');
    empty.className = 'empty';
    empty.textContent = "Your words and the bot's replies appear here.";
    list.append(empty);
  }
  history.forEach((h, i) => {
    // The voice agent transcribes: a turn without words was the bot's
    // greeting (or noise), not something the user said.
    let u = null;
    if (h.user || stats.agent !== 'voice') {
      u = bubble('user');
      u.li.classList.add('history');
      setUserText(u, h.user || '(audio)', false);
    }
    const b = bubble('bot');
    b.li.classList.add('history');
    b.text = h.assistant;
    if (h.interrupted) {
      b.spoken = h.assistant;
      b.li.classList.add('interrupted');
      setMeta(b, ['interrupted']);
    }
    setBotBody(b);
    // Negative epochs: never those of the live conversation.
    turns.set(-1 - i, { epoch: -1 - i, user: u, bot: b, latency: null, spans: [], playMs: null, row: null });
  });
  const box = $('waterfall');
  box.textContent = '';
  const empty = document.createElement('div');
  empty.className = 'empty';
  empty.textContent = 'Each answered turn adds a row.';
  box.append(empty);
  $('latency-summary').textContent = '';
  updateTurnCount();
}

function updateTurnCount() {
  const n = [...turns.values()].filter((t) => t.bot).length;
  $('turns').textContent = n === 0 ? 'no turns yet' : `${n} repl${n === 1 ? 'y' : 'ies'}`;
}

// ---- latency waterfall -------------------------------------------------------

function renderWaterfall() {
  const box = $('waterfall');
  const rows = [...turns.values()].filter((t) => t.latency).sort((a, b) => a.epoch - b.epoch);
  if (rows.length === 0) return;
  box.textContent = '';
  const totals = rows.map((t) => segments(t).reduce((s, x) => s + x.ms, 0));
  const scale = Math.max(1000, ...totals);
  let sum = 0;
  rows.forEach((t, i) => {
    const segs = segments(t);
    const total = totals[i];
    sum += total;
    const row = document.createElement('div');
    row.className = 'wf-row';
    const label = document.createElement('div');
    label.className = 'wf-label';
    label.textContent = `Reply ${i + 1}`;
    label.title = `turn epoch ${t.epoch}`;
    const track = document.createElement('div');
    track.className = 'wf-track';
    for (const s of segs) {
      if (s.ms <= 0) continue;
      const seg = document.createElement('div');
      seg.className = `seg ${s.kind}`;
      seg.style.width = `${(100 * s.ms) / scale}%`;
      seg.title = `${s.name}: ${Math.round(s.ms)} ms`;
      if ((100 * s.ms) / scale > 9) seg.textContent = `${Math.round(s.ms)}`;
      track.append(seg);
    }
    const tot = document.createElement('div');
    tot.className = 'wf-total mono';
    tot.textContent = `${Math.round(total)} ms`;
    row.append(label, track, tot);
    if (t.spans.length) {
      row.title = t.spans.map((s) => JSON.stringify(s)).join('\n');
    }
    box.append(row);
  });
  $('latency-summary').textContent = `mean ${Math.round(sum / rows.length)} ms to first sound`;
}

function segments(t) {
  const l = t.latency;
  const out = [];
  const eos = l.end_of_speech_ms;
  if (t.speechEndMs != null && t.speechEndMs < eos) {
    out.push({ kind: 'endpoint', name: 'end of speech → turn end', ms: eos - t.speechEndMs });
  }
  let prev = eos;
  if (l.stt_ms != null) {
    out.push({ kind: 'stt', name: 'speech-to-text final', ms: Math.max(0, l.stt_ms - prev) });
    prev = Math.max(prev, l.stt_ms);
  }
  if (l.first_token_ms != null) {
    out.push({ kind: 'llm', name: 'LLM first token', ms: Math.max(0, l.first_token_ms - prev) });
    prev = Math.max(prev, l.first_token_ms);
  }
  out.push({ kind: 'tts', name: 'first audio', ms: Math.max(0, l.first_audio_ms - prev) });
  if (t.playMs != null) out.push({ kind: 'play', name: 'network + page buffer', ms: t.playMs });
  return out;
}

// ---- events ------------------------------------------------------------------

const STATE_LABELS = {
  listening: 'Listening…',
  user_speaking: 'Hearing you',
  thinking: 'Thinking…',
  speaking: 'Speaking — cut in any time',
};

function setState(state) {
  document.body.className = `state-${state}`;
  $('state').textContent = STATE_LABELS[state] || state;
}

function onEvent(ev) {
  stats.events[ev.type] = (stats.events[ev.type] || 0) + 1;
  switch (ev.type) {
    case 'hello':
      stats.session = ev.session;
      stats.connection = ev.connection;
      stats.resumable = !!ev.resumable;
      stats.agent = ev.agent;
      storeSession(ev.resumable ? ev.session : null);
      $('agent').textContent = `agent: ${ev.agent} · session ${ev.session}`;
      break;
    case 'history':
      renderHistory(ev.turns || []);
      break;
    case 'echo':
      stats.echo = { browser: ev.browser, server: ev.server };
      if (ev.browser === false) toast(ev.message, 'echo');
      break;
    case 'state':
      setState(ev.state);
      break;
    case 'speech_started':
      speechStartMs = ev.at_ms;
      userSpeaking = true;
      utteranceTurns = [];
      if (!pendingUser) {
        pendingUser = bubble('user');
        setUserText(pendingUser, '…', true);
      }
      break;
    case 'speech_stopped': {
      const b = pendingUser || bubble('user');
      pendingUser = b;
      b.audioMs = ev.speech_ms;
      if (!b.text || b.text === '…') setUserText(b, '(audio)', false);
      setMeta(b, [fmtSecs(ev.speech_ms)]);
      lastSpeech = { endMs: speechStartMs != null ? speechStartMs + ev.speech_ms : null };
      userSpeaking = false;
      if (utteranceTurns.length) {
        // The turn already opened (speculatively) for this utterance.
        for (const t of utteranceTurns) t.speechEndMs = lastSpeech.endMs;
        utteranceTurns = [];
        pendingUser = null;
      }
      break;
    }
    case 'turn_opened': {
      const t = turnFor(ev.epoch);
      if (ev.greeting) break; // the bot speaks first: no user bubble
      t.user = pendingUser || bubble('user');
      if (!t.user.text || t.user.text === '…') setUserText(t.user, '(audio)', false);
      if (userSpeaking) {
        // Opened at a pause: the utterance (and its bubble) goes on until
        // speech_stopped, and may get another turn if this one is dropped.
        pendingUser = t.user;
        t.speechEndMs = null;
        utteranceTurns.push(t);
      } else {
        t.speechEndMs = lastSpeech ? lastSpeech.endMs : null;
        pendingUser = null;
      }
      break;
    }
    case 'transcript': {
      const t = turnFor(ev.epoch);
      if (!t.user) t.user = pendingUser || bubble('user');
      setUserText(t.user, ev.text, !ev.is_final);
      break;
    }
    case 'bot_text': {
      const t = turnFor(ev.epoch);
      if (!t.bot) t.bot = bubble('bot');
      t.bot.text = t.bot.text ? `${t.bot.text} ${ev.text}` : ev.text;
      setBotBody(t.bot);
      updateTurnCount();
      break;
    }
    case 'bot_started_speaking': {
      const t = turnFor(ev.epoch);
      if (!t.bot) t.bot = bubble('bot');
      t.bot.li.classList.add('speaking');
      setBotBody(t.bot);
      currentBotEpoch = ev.epoch;
      // Events come before the reply's audio: it starts at the next sample.
      stats.replyStarts[ev.epoch] = stats.receivedSamples;
      updateTurnCount();
      break;
    }
    case 'bot_stopped_speaking': {
      const t = turnFor(ev.epoch);
      if (t.bot) t.bot.li.classList.remove('speaking');
      break;
    }
    case 'interrupted': {
      const t = turnFor(ev.epoch);
      if (!t.bot) t.bot = bubble('bot');
      t.bot.spoken = ev.spoken || '';
      t.bot.li.classList.remove('speaking');
      t.bot.li.classList.add('interrupted');
      setBotBody(t.bot);
      setMeta(t.bot, [`interrupted after ${fmtSecs(ev.played_ms)}`]);
      break;
    }
    case 'clear_playback': {
      const t = turns.get(ev.epoch);
      stats.cuts.push({
        epoch: ev.epoch,
        start: stats.replyStarts[ev.epoch] ?? null,
        speechMs: t && t.user ? t.user.audioMs : null,
        heard: null,
        committed: null,
      });
      if (running) running.playback.port.postMessage({ type: 'clear', epoch: ev.epoch });
      break;
    }
    case 'false_interruption': {
      const t = turnFor(ev.epoch);
      if (t.bot) setMeta(t.bot, ['kept going (not a real interruption)']);
      break;
    }
    case 'committed': {
      const t = turnFor(ev.epoch);
      if (t.user && ev.user) setUserText(t.user, ev.user, false);
      if (t.bot && ev.assistant && t.bot.spoken == null && !t.bot.text) {
        t.bot.text = ev.assistant;
        setBotBody(t.bot);
      }
      // An interrupted round is committed under a later epoch: it belongs
      // to the oldest cut not yet committed.
      const cut = ev.interrupted && stats.cuts.find((c) => c.committed == null);
      if (cut) {
        cut.committed = ev.assistant || '';
        const ct = turns.get(cut.epoch);
        if (ct && ct.bot && ct.bot.spoken != null) {
          // What was heard, as the server committed it from our `played`
          // report (the `interrupted` event's was its estimate at the cut).
          ct.bot.spoken = cut.committed;
          setBotBody(ct.bot);
        }
      }
      if (t.bot) t.bot.li.classList.remove('speaking');
      break;
    }
    case 'turn_latency': {
      const t = turnFor(ev.epoch);
      t.latency = ev;
      latencyArrivedAt.set(ev.epoch, performance.now());
      renderWaterfall();
      break;
    }
    case 'span': {
      const t = turnFor(ev.epoch);
      t.spans.push(ev.span);
      break;
    }
    case 'tool': {
      // A flow function ran: a small line in the conversation.
      const list = $('transcript');
      clearEmpty(list);
      const li = document.createElement('li');
      li.className = 'msg tool';
      const body = document.createElement('div');
      body.className = 'body';
      let args = ev.arguments;
      try {
        const parsed = JSON.parse(ev.arguments);
        args = Object.entries(parsed).map(([k, v]) => `${k}: ${v}`).join(', ');
      } catch {}
      body.textContent = `⚙ ${ev.name}(${args})${ev.result && ev.result !== 'done' ? ` → ${ev.result}` : ''}`;
      li.append(body);
      list.append(li);
      list.scrollTop = list.scrollHeight;
      break;
    }
    case 'draining':
      // The server restarts (close 1012 follows): reconnect and resume.
      toast('The server is restarting; reconnecting…', 'draining');
      break;
    case 'call_ended':
      // The flow hung up: the server closes once the goodbye has played;
      // the next press starts a new conversation.
      stats.callEnded = true;
      storeSession(null);
      toast('The call ended. Press the button to start a new one.', 'call');
      break;
    case 'error':
      stats.errors.push(ev);
      toast(ev.message || 'error', ev.code || ev.source);
      // Open in another tab: the next press starts a new conversation.
      if (ev.code === 'session_in_use') storeSession(null);
      break;
    default:
      break;
  }
}

// Tells the server where playback is (`played`, docs/protocol.md): every
// ~100 ms while it moves, and at once when a clear stopped it.
let lastPlayedSent = { position: -1, at: 0 };
function reportPlayed(position, clearEpoch) {
  const ws = running && running.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const now = performance.now();
  if (clearEpoch == null && (position === lastPlayedSent.position || now - lastPlayedSent.at < 100)) return;
  const msg = { type: 'played', samples: position };
  if (clearEpoch != null) {
    msg.clear = clearEpoch;
    stats.clearReport = { epoch: clearEpoch, samples: position };
  }
  ws.send(JSON.stringify(msg));
  stats.playedReports++;
  lastPlayedSent = { position, at: now };
}

function onPlaybackMessage(msg) {
  if (msg.type === 'cleared') {
    reportPlayed(msg.position, msg.epoch);
    const cut = stats.cuts.find((c) => c.epoch === msg.epoch);
    if (cut && cut.start != null) cut.heard = Math.max(0, msg.position - cut.start);
  } else if (msg.type === 'stats') {
    reportPlayed(msg.position, null);
    stats.played = msg.played;
    stats.buffered = msg.buffered;
    stats.underruns = msg.underruns;
    stats.clears = msg.clears;
    stats.clearedSamples = msg.cleared;
    stats.playbackStarts = msg.starts;
    stats.playing = msg.playing;
    stats.playbackRms = msg.rms;
    stats.maxPlaybackRms = Math.max(stats.maxPlaybackRms, msg.rms);
    renderStats();
  } else if (msg.type === 'started' && currentBotEpoch != null) {
    const t = turns.get(currentBotEpoch);
    const at = latencyArrivedAt.get(currentBotEpoch);
    if (t && at != null && t.playMs == null) {
      t.playMs = performance.now() - at;
      renderWaterfall();
    }
  }
}

// ---- UI helpers ----------------------------------------------------------------

let toastTimer = null;
function toast(message, code) {
  const el = $('toast');
  el.textContent = code ? `${code}: ${message}` : message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 6000);
}

function setConn(text, cls) {
  const el = $('conn');
  el.textContent = text;
  el.className = `pill ${cls || ''}`;
  stats.connected = cls === 'on';
}

function renderStats() {
  $('stats').textContent =
    `sent ${stats.sentFrames} frames · received ${stats.receivedFrames} · ` +
    `played ${(stats.played / 16000).toFixed(1)} s · underruns ${stats.underruns} · ` +
    `clears ${stats.clears}`;
}

function setLevel(rms) {
  const level = Math.min(1, Math.sqrt(rms) * 2.2);
  $('halo').style.setProperty('--level', level.toFixed(3));
}

// ---- audio + socket --------------------------------------------------------------

async function start() {
  if (!token) {
    toast('This page needs the token: open the URL that `colloquy serve` printed.', 'unauthorized');
    return;
  }
  const mic = $('mic');
  mic.disabled = true;
  setConn('connecting…', 'wait');
  try {
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    await ctx.audioWorklet.addModule('capture-worklet.js');
    await ctx.audioWorklet.addModule('playback-worklet.js');
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    const source = ctx.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(ctx, 'colloquy-capture', {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      processorOptions: { frameSamples: Math.round(ctx.sampleRate / 50) },
    });
    const playback = new AudioWorkletNode(ctx, 'colloquy-playback', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { inRate: 16000, startMs: 80 },
    });
    playback.connect(ctx.destination);
    playback.port.onmessage = (e) => onPlaybackMessage(e.data);

    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const resume = storedSession();
    const query = `token=${encodeURIComponent(token)}` + (resume ? `&session=${encodeURIComponent(resume)}` : '');
    const ws = new WebSocket(`${proto}//${location.host}/ws?${query}`);
    ws.binaryType = 'arraybuffer';
    running = { ctx, stream, ws, capture, playback, source };
    lastPlayedSent = { position: -1, at: 0 };
    window.colloquyRunning = true;
    let opened = false;
    let stoppedByUser = false;
    running.markStopped = () => (stoppedByUser = true);

    ws.onopen = () => {
      opened = true;
      setConn('live', 'on');
      // The browser's echo canceller is the only one on this path: tell the
      // server whether it is on (it answers with an `echo` message).
      const track = stream.getAudioTracks()[0];
      const settings = track && track.getSettings ? track.getSettings() : {};
      const echoCancellation = typeof settings.echoCancellation === 'boolean' ? settings.echoCancellation : null;
      ws.send(JSON.stringify({ type: 'hello', version: PROTOCOL_VERSION, sample_rate: ctx.sampleRate, echo_cancellation: echoCancellation }));
      source.connect(capture);
      capture.port.onmessage = (e) => {
        const m = e.data;
        if (m.type !== 'frame') return;
        setLevel(m.rms);
        if (ws.readyState === WebSocket.OPEN) {
          ws.send(m.pcm);
          stats.sentFrames++;
          stats.sentBytes += m.pcm.byteLength;
        }
      };
      mic.disabled = false;
      mic.setAttribute('aria-pressed', 'true');
      mic.setAttribute('aria-label', 'Stop talking');
      mic.classList.add('on');
      setState('listening');
    };
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') {
        let ev;
        try {
          ev = JSON.parse(e.data);
        } catch {
          return;
        }
        onEvent(ev);
      } else {
        stats.receivedFrames++;
        stats.receivedSamples += e.data.byteLength / 2;
        playback.port.postMessage({ type: 'audio', pcm: e.data }, [e.data]);
      }
    };
    ws.onclose = (e) => {
      stats.closed = { code: e.code, reason: e.reason };
      const byUser = stoppedByUser;
      if (running && running.ws === ws) stop(false);
      if (byUser) {
        setConn('offline', '');
      } else if (e.code === 1012) {
        // Service restart (a drained instance): the load balancer sends the
        // new socket to another instance, which resumes this session.
        stats.reconnects = (stats.reconnects || 0) + 1;
        setConn('reconnecting…', 'wait');
        setTimeout(start, 200 + Math.floor(Math.random() * 300));
      } else if (!opened) {
        toast('Could not open a session. Check that the URL carries the token printed by `colloquy serve`, and that the server runs.', 'connection');
        setConn('refused', 'bad');
      } else {
        setConn(e.reason ? `closed: ${e.reason}` : 'offline', '');
      }
    };
  } catch (err) {
    mic.disabled = false;
    setConn('offline', 'bad');
    toast(String(err && err.message ? err.message : err), 'microphone');
    stop(false);
  }
}

function stop(sendBye) {
  const r = running;
  running = null;
  window.colloquyRunning = false;
  const mic = $('mic');
  mic.classList.remove('on');
  mic.disabled = false;
  mic.setAttribute('aria-pressed', 'false');
  mic.setAttribute('aria-label', 'Start talking');
  setLevel(0);
  document.body.className = 'state-offline';
  $('state').textContent = 'Press the button and talk';
  if (!r) return;
  if (r.markStopped) r.markStopped();
  try {
    if (sendBye && r.ws.readyState === WebSocket.OPEN) r.ws.send(JSON.stringify({ type: 'bye' }));
    r.ws.close(1000, 'bye');
  } catch {}
  try {
    r.stream.getTracks().forEach((t) => t.stop());
  } catch {}
  try {
    r.ctx.close();
  } catch {}
}

$('mic').addEventListener('click', () => {
  if (running) stop(true);
  else start();
});

if (!token) {
  setConn('no token', 'bad');
  $('hint').textContent = 'Open the URL printed by `colloquy serve` — it carries ?token=…';
}
renderStats();
