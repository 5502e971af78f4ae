// The /try page: microphone → 16 kHz pcm16 audio_chunks on /ws/session → each utterance's outcome shown.
// Plain JavaScript, no build step. Audio is captured with the Web Audio API (a ScriptProcessorNode), resampled
// to 16 kHz, sent every CHUNK_MS; a pause of SILENCE_END_MS after speech ends the utterance (is_final: true).
"use strict";

const TARGET_RATE = 16000;
const CHUNK_MS = 200;
const SILENCE_END_MS = 700;
const SPEECH_RMS = 0.02;  // a block louder than this (full scale 1.0) counts as speech
const PREROLL_MS = 300;

const $ = (id) => document.getElementById(id);

function defaultSchedulerUrl() {
  const query = new URLSearchParams(location.search).get("scheduler");
  if (query) return query;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const port = document.body.dataset.sessionPort || location.port;
  return `${scheme}//${location.hostname}${port ? ":" + port : ""}/ws/session`;
}

function base64FromBytes(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function bytesFromBase64(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// Resampler from the AudioContext's rate down to 16 kHz: each output sample is the mean of the input samples in its
// period (a box filter, so the high frequencies fold back much less than with plain decimation), phase kept
// across blocks.
class Resampler {
  constructor(fromRate) { this.step = fromRate / TARGET_RATE; this.filled = 0; this.sum = 0; this.count = 0; }
  push(input) {
    const out = [];
    for (let i = 0; i < input.length; i++) {
      this.sum += input[i]; this.count += 1; this.filled += 1;
      if (this.filled >= this.step) {
        out.push(this.sum / this.count);
        this.filled -= this.step; this.sum = 0; this.count = 0;
      }
    }
    return out;
  }
}

class TrySession {
  constructor(url, srcLang, tgtLang) {
    this.url = url; this.srcLang = srcLang; this.tgtLang = tgtLang;
    this.pending = [];           // 16 kHz samples not yet sent
    this.preroll = [];           // the last PREROLL_MS of silence, sent ahead of speech so no onset is lost
    this.heardSpeech = false;    // speech since the last is_final
    this.silentMs = 0;
    this.seq = 0;
  }

  async start() {
    this.ws = new WebSocket(this.url);
    this.ws.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.ws.onclose = (event) => setStatus(`disconnected (${event.code}${event.reason ? " " + event.reason : ""})`);
    await new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error(`cannot reach ${this.url}`));
    });
    this.ws.send(JSON.stringify({type: "session_init", src_lang: this.srcLang, tgt_lang: this.tgtLang,
      audio_format: "pcm16", sample_rate: TARGET_RATE, platform: "web", client_version: "try-page"}));
    this.stream = await navigator.mediaDevices.getUserMedia(
      {audio: {channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: true}});
    this.context = new AudioContext();
    this.resampler = new Resampler(this.context.sampleRate);
    this.source = this.context.createMediaStreamSource(this.stream);
    this.processor = this.context.createScriptProcessor(4096, 1, 1);
    this.processor.onaudioprocess = (event) => this.onAudio(event.inputBuffer.getChannelData(0));
    this.source.connect(this.processor);
    this.processor.connect(this.context.destination);
    this.listening = true;
    this.showListening();
  }

  showListening() {
    if (this.listening) setStatus(`session ${this.sessionId || "(opening)"} — listening: speak, then pause`);
  }

  onAudio(block) {
    let sum = 0;
    for (let i = 0; i < block.length; i++) sum += block[i] * block[i];
    const level = Math.sqrt(sum / block.length);
    $("level").style.width = `${Math.min(100, level * 400)}%`;
    const blockMs = 1000 * block.length / this.context.sampleRate;
    if (level >= SPEECH_RMS) { this.heardSpeech = true; this.silentMs = 0; } else { this.silentMs += blockMs; }
    for (const sample of this.resampler.push(block)) this.pending.push(sample);
    const endOfUtterance = this.heardSpeech && this.silentMs >= SILENCE_END_MS;
    if (endOfUtterance || this.pending.length >= TARGET_RATE * CHUNK_MS / 1000) this.flush(endOfUtterance);
  }

  flush(isFinal) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(this.pending.length);
    for (let i = 0; i < pcm.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(this.pending[i] * 32767)));
    this.pending = [];
    if (!this.heardSpeech && !isFinal) {  // silence between utterances is not sent, but its end is kept
      this.preroll = this.preroll.concat(Array.from(pcm)).slice(-TARGET_RATE * PREROLL_MS / 1000);
      return;
    }
    if (this.preroll.length) {
      const joined = new Int16Array(this.preroll.length + pcm.length);
      joined.set(this.preroll); joined.set(pcm, this.preroll.length);
      this.preroll = [];
      this.sendChunk(joined, isFinal);
    } else {
      this.sendChunk(pcm, isFinal);
    }
    if (isFinal) { this.heardSpeech = false; this.silentMs = 0; }
  }

  sendChunk(pcm, isFinal) {
    this.ws.send(JSON.stringify({type: "audio_chunk", seq: this.seq++, is_final: isFinal,
      payload: base64FromBytes(new Uint8Array(pcm.buffer))}));
  }

  onMessage(message) {
    switch (message.type) {
      case "session_init_ack": this.sessionId = message.session_id; this.showListening(); break;
      case "asr_partial": $("partial").textContent = message.text || ""; break;
      case "translation_result": $("partial").textContent = ""; showResult(message); break;
      case "missing_result": showNote(message.utterance_index, `no result (${message.reason})`); break;
      case "error": showNote(message.utterance_index, `${message.code}: ${message.message}`, true); break;
      default: break;
    }
  }

  async stop() {
    this.listening = false;
    if (this.heardSpeech) this.flush(true);
    if (this.processor) { this.processor.disconnect(); this.source.disconnect(); }
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.context) await this.context.close();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({type: "session_close", reason: "user_stop"}));
  }
}

function setStatus(text) { $("status").textContent = text; }

function utteranceBox(index) {
  const id = `utterance-${index ?? "x"}`;
  let box = document.getElementById(id);
  if (!box) {
    box = document.createElement("div");
    box.id = id; box.className = "utterance";
    $("results").prepend(box);
  }
  return box;
}

function showResult(message) {
  const box = utteranceBox(message.utterance_index);
  box.replaceChildren();
  const line = (cls, text) => { const el = document.createElement("div"); el.className = cls; el.textContent = text; box.append(el); return el; };
  line("asr", message.text_asr);
  line("translated", message.text_translated);
  const translator = message.extra && message.extra.translator;
  line("note", `#${message.utterance_index} via ${message.node_id || "?"}${translator ? " — translation: " + translator : ""}`);
  if (message.tts_audio) {
    const button = document.createElement("button");
    button.className = "play"; button.textContent = "▶ play";
    button.onclick = () => play(message.tts_audio, message.tts_format);
    box.append(button);
  }
}

function showNote(index, text, isError) {
  const box = utteranceBox(index);
  const el = document.createElement("div");
  el.className = isError ? "note error" : "note";
  el.textContent = index === undefined ? text : `#${index}: ${text}`;
  box.append(el);
}

async function play(b64, format) {
  const bytes = bytesFromBase64(b64);
  const context = new AudioContext();
  let buffer;
  if (format === "pcm16") {  // raw 16 kHz mono
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    buffer = context.createBuffer(1, pcm.length, TARGET_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
  } else {
    buffer = await context.decodeAudioData(bytes.buffer);
  }
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.onended = () => context.close();
  source.start();
}

let session = null;

$("scheduler-url").value = defaultSchedulerUrl();
$("start").onclick = async () => {
  $("start").disabled = true;
  session = new TrySession($("scheduler-url").value, $("src-lang").value, $("tgt-lang").value);
  try {
    await session.start();
    $("stop").disabled = false;
  } catch (err) {
    setStatus(`could not start: ${err.message || err}`);
    await session.stop();
    session = null;
    $("start").disabled = false;
  }
};
$("stop").onclick = async () => {
  $("stop").disabled = true;
  if (session) await session.stop();
  session = null;
  setStatus("stopped");
  $("start").disabled = false;
};
