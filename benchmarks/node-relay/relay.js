#!/usr/bin/env node
/*
 * Node.js baseline for avr's benchmark: an AudioSocket <-> STS WebSocket relay modelled on AVR Core
 * (agentvoiceresponse/avr-core, which is Node.js + `ws`). It does the same job as avr in STS mode, so the
 * two can be measured side by side with the same simulated Asterisk and echo agent.
 *
 * What it implements:
 *  - AudioSocket server (Asterisk is the TCP client). Messages are kind:u8 | length:u16 BE | payload.
 *    0x01 UUID, 0x03 DTMF, 0x10-0x18 slin audio (8..192 kHz), 0x00 hangup, 0xff error. The parser is
 *    incremental (split and merged TCP reads); an unknown kind or a bad length ends the call.
 *  - One STS WebSocket per call (STS_URL): `init` on open, caller audio as `{"type":"audio","audio":b64}`,
 *    DTMF as `dtmf_digit`. Audio that arrives before the socket is open is buffered (up to 2 s).
 *  - STS `audio` is queued and cut into 20 ms frames of the call's own kind; `interruption` clears the queue.
 *  - ONE shared pacing timer for all calls on an absolute 20 ms schedule; at most one frame per call per tick
 *    (up to 3 when the process fell behind). A short final remainder is zero-padded after waiting one tick.
 *  - Asterisk hangs up -> STS socket closed (1000). STS closes/fails -> hangup frame 00 00 00 to Asterisk.
 *
 * Config (env): PORT (default 5001), BIND_ADDRESS (default 127.0.0.1), STS_URL (ws://..., required).
 * Not implemented (not needed by the benchmark): HTTP service, webhooks, ASR/LLM/TTS pipeline, ambient noise.
 */
'use strict';

const net = require('net');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');

const PORT = Number(process.env.PORT || 5001);
const BIND_ADDRESS = process.env.BIND_ADDRESS || '127.0.0.1';
const STS_URL = process.env.STS_URL;
if (!STS_URL) {
  console.error('STS_URL is required (ws://host:port)');
  process.exit(2);
}

const KIND_HANGUP = 0x00;
const KIND_UUID = 0x01;
const KIND_DTMF = 0x03;
const KIND_ERROR = 0xff;
const AUDIO_RATES = { 0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000,
  0x15: 44100, 0x16: 48000, 0x17: 96000, 0x18: 192000 };
const TICK_MS = 20;
const MAX_CATCH_UP = 3;          // frames per call per tick when the timer fell behind
const PREOPEN_MS = 2000;         // caller audio kept while the STS socket is connecting
const HANGUP_FRAME = Buffer.from([0, 0, 0]);

const calls = new Set();         // live calls, walked by the shared pacing timer

function formatUuid(b) {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

class Call {
  constructor(socket) {
    this.socket = socket;
    this.peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.uuid = null;
    this.ws = null;
    this.ended = false;
    // Inbound parser state: received chunks not yet parsed (concatenated only once a whole message is in).
    this.chunks = [];
    this.buffered = 0;
    // Outbound kind: the kind of the first audio frame from Asterisk (default slin 8 kHz).
    this.kind = null;
    this.frameBytes = 320;
    // Messages waiting for the STS socket to open, and their audio duration.
    this.preopen = [];
    this.preopenBytes = 0;
    // Playback queue: decoded STS audio chunks, read offset into the first one, total unread bytes.
    this.queue = [];
    this.queueHead = 0;
    this.queueBytes = 0;
    this.partialWaited = false;
  }

  // ---- Asterisk side -------------------------------------------------------------------------------

  onData(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered < 3) return;
    if (this.chunks[0].length < 3) this.chunks = [Buffer.concat(this.chunks, this.buffered)];
    const first = this.chunks[0];
    if (this.buffered < 3 + first.readUInt16BE(1)) return;   // first message still incomplete
    const buf = this.chunks.length === 1 ? first : Buffer.concat(this.chunks, this.buffered);
    let off = 0;
    while (!this.ended && buf.length - off >= 3) {
      const len = buf.readUInt16BE(off + 1);
      if (buf.length - off < 3 + len) break;
      this.onMessage(buf[off], buf.subarray(off + 3, off + 3 + len));
      off += 3 + len;
    }
    this.chunks = off < buf.length ? [buf.subarray(off)] : [];
    this.buffered = buf.length - off;
  }

  onMessage(kind, payload) {
    const rate = AUDIO_RATES[kind];
    if (rate !== undefined) {
      if (payload.length === 0) return this.fail('empty audio frame');
      if (this.kind === null) {
        this.kind = kind;
        this.frameBytes = (rate / 50) * 2;
      }
      this.sendSts('{"type":"audio","audio":"' + payload.toString('base64') + '"}', payload.length);
    } else if (kind === KIND_UUID) {
      if (payload.length !== 16) return this.fail(`bad UUID length ${payload.length}`);
      if (this.uuid !== null) return;   // only the first UUID counts
      this.uuid = formatUuid(payload);
      console.log(`call ${this.uuid} started from ${this.peer}`);
      this.openSts();
    } else if (kind === KIND_DTMF) {
      if (payload.length !== 1) return this.fail(`bad DTMF length ${payload.length}`);
      this.sendSts(JSON.stringify({ type: 'dtmf_digit', digit: String.fromCharCode(payload[0]) }), 0);
    } else if (kind === KIND_HANGUP || kind === KIND_ERROR) {
      this.end(kind === KIND_HANGUP ? 'hangup from Asterisk' : `error from Asterisk ${payload.toString('hex')}`);
      this.socket.end();
    } else {
      this.fail(`unknown kind 0x${kind.toString(16)}`);
    }
  }

  fail(reason) {
    this.end(`protocol error: ${reason}`);
    this.socket.destroy();
  }

  // ---- STS side ------------------------------------------------------------------------------------

  openSts() {
    const ws = new WebSocket(STS_URL, { perMessageDeflate: false });
    this.ws = ws;
    ws.on('open', () => {
      if (this.ended) return ws.close(1000);
      ws.send(JSON.stringify({ type: 'init', uuid: this.uuid }));
      for (const msg of this.preopen) ws.send(msg);
      this.preopen = [];
      this.preopenBytes = 0;
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary || this.ended) return;
      try {
        this.onStsMessage(JSON.parse(data.toString()));
      } catch (err) {
        console.log(`call ${this.uuid}: bad STS message ignored (${err.message})`);
      }
    });
    ws.on('close', (code) => this.hangup(`STS closed (${code})`));
    ws.on('error', (err) => this.hangup(`STS error: ${err.message}`));
  }

  sendSts(msg, audioBytes) {
    if (this.ws !== null && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(msg);
      return;
    }
    // Not open yet: keep up to 2 s of caller audio (later audio is dropped); DTMF is always kept.
    const limit = (AUDIO_RATES[this.kind || 0x10] * 2 * PREOPEN_MS) / 1000;
    if (audioBytes > 0 && this.preopenBytes + audioBytes > limit) return;
    this.preopen.push(msg);
    this.preopenBytes += audioBytes;
  }

  onStsMessage(msg) {
    if (msg === null || typeof msg !== 'object') return;
    if (msg.type === 'audio' && typeof msg.audio === 'string') {
      const pcm = Buffer.from(msg.audio, 'base64');
      if (pcm.length > 0) {
        this.queue.push(pcm);
        this.queueBytes += pcm.length;
      }
    } else if (msg.type === 'interruption') {
      this.queue = [];
      this.queueHead = 0;
      this.queueBytes = 0;
      this.partialWaited = false;
    }
    // transcript, error and anything else: ignored by the relay.
  }

  // ---- Playback (called by the shared timer) -------------------------------------------------------

  /** Write the next 20 ms frame to Asterisk if one is ready; return false when nothing was sent. */
  sendFrame() {
    const n = this.frameBytes;
    if (this.queueBytes === 0) return false;
    if (this.queueBytes < n && !this.partialWaited) {
      this.partialWaited = true;      // give the STS one tick to complete the frame
      return false;
    }
    this.partialWaited = false;
    const frame = Buffer.alloc(3 + n);   // zeroed: a short final frame is padded with silence
    frame[0] = this.kind === null ? 0x10 : this.kind;
    frame.writeUInt16BE(n, 1);
    let filled = 0;
    while (filled < n && this.queue.length > 0) {
      const head = this.queue[0];
      const take = Math.min(n - filled, head.length - this.queueHead);
      head.copy(frame, 3 + filled, this.queueHead, this.queueHead + take);
      filled += take;
      this.queueHead += take;
      if (this.queueHead === head.length) {
        this.queue.shift();
        this.queueHead = 0;
      }
    }
    this.queueBytes -= filled;
    this.socket.write(frame);
    return true;
  }

  // ---- Ending --------------------------------------------------------------------------------------

  /** Forget the call and close the STS socket (normal closure). Idempotent. */
  end(reason) {
    if (this.ended) return;
    this.ended = true;
    calls.delete(this);
    if (calls.size === 0) stopTimer();
    this.queue = [];
    this.preopen = [];
    const ws = this.ws;
    if (ws !== null) {
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      else if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    }
    console.log(`call ${this.uuid || '(no uuid)'} ended: ${reason}`);
  }

  /** The STS went away: tell Asterisk to hang up, then close our side. */
  hangup(reason) {
    if (this.ended) return;
    this.end(reason);
    if (!this.socket.destroyed) this.socket.end(HANGUP_FRAME);
  }
}

// ---- Shared pacing timer (absolute schedule: epoch + n * 20 ms) ---------------------------------------

let timer = null;
let epoch = 0;
let ticksDone = 0;

function startTimer() {
  if (timer !== null) return;
  epoch = performance.now();
  ticksDone = 0;
  timer = setTimeout(tick, TICK_MS);
}

function stopTimer() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

function tick() {
  const due = Math.floor((performance.now() - epoch) / TICK_MS);
  const late = due - ticksDone;
  if (late > 0) {
    ticksDone = due;                 // lateness beyond MAX_CATCH_UP ticks is skipped, not replayed
    const frames = Math.min(late, MAX_CATCH_UP);
    for (const call of calls) {
      try {
        for (let i = 0; i < frames && call.sendFrame(); i++);
      } catch (err) {
        call.fail(`playback failed: ${err.message}`);
      }
    }
  }
  if (calls.size === 0) {
    timer = null;
    return;
  }
  const delay = epoch + (ticksDone + 1) * TICK_MS - performance.now();
  timer = setTimeout(tick, Math.max(0, delay));
}

// ---- AudioSocket server ----------------------------------------------------------------------------

const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  const call = new Call(socket);
  calls.add(call);
  startTimer();
  socket.on('data', (chunk) => {
    try {
      call.onData(chunk);
    } catch (err) {
      call.fail(`relay error: ${err.message}`);
    }
  });
  socket.on('error', (err) => call.end(`socket error: ${err.message}`));
  socket.on('close', () => call.end('Asterisk closed the socket'));
});

server.on('error', (err) => {
  console.error(`node relay: ${err.message}`);
  process.exit(1);
});

server.listen(PORT, BIND_ADDRESS, () => {
  const addr = server.address();
  console.log(`node relay listening on ${addr.address}:${addr.port}`);
});
