// The playground: a chat page on the gateway's own OpenAI API (/v1/models,
// /v1/chat/completions with stream: true), showing the model's reasoning as it streams.
//
// Stream handling, for today's contract and the one issue #13 brings:
// - reasoning arrives in delta.reasoning_content and/or delta.reasoning (one text, possibly in
//   both fields): the first non-empty of the two is taken, so it is never shown twice;
// - a stream the gateway ended itself: an error event {"error": {code: ...}} then [DONE]
//   (the default since issue #13), or, with a profile's stream_termination: graceful, a final
//   chunk with finish_reason "length" and gateway_termination (+ reasoning_truncated); before
//   the first byte, an HTTP error (504) with an OpenAI error body;
// - SSE comment lines (": keep-alive") are heartbeats and are skipped.
'use strict';

(() => {
  const KEY_STORE = 'gateway.playground.api-key';
  const MODEL_STORE = 'gateway.playground.model';
  const FIELDS = ['temperature', 'top_p', 'max_tokens'];
  const REASONING_FIELDS = ['reasoning_content', 'reasoning'];
  // gateway_termination values and error-event codes that mean "the gateway ended it"
  const GATEWAY_ENDINGS = {
    idle_timeout: 'the model sent nothing for too long (idle timeout)',
    total_timeout: 'the answer took longer than the time limit (total timeout)',
    first_token_timeout: 'the model did not start in time (first-token timeout)',
    upstream_disconnect: 'the connection to the model server broke',
    upstream_abort: 'the model server aborted the request',
    server_shutting_down: 'the gateway is shutting down',
    shutdown: 'the gateway is shutting down',
    stop_text: 'the model did not stop by itself; the gateway cut the answer at a stop text',
  };

  const $ = (sel, root = document) => root.querySelector(sel);
  const ui = {
    model: $('#model'),
    settings: $('#settings'),
    settingsToggle: $('#settings-toggle'),
    apiKey: $('#api-key'),
    system: $('#system'),
    extra: $('#extra'),
    extraError: $('#extra-error'),
    profileNote: $('#profile-note'),
    clear: $('#clear'),
    status: $('#status'),
    empty: $('#empty'),
    turns: $('#turns'),
    composer: $('#composer'),
    prompt: $('#prompt'),
    send: $('#send'),
    stop: $('#stop'),
    template: $('#turn-template'),
  };
  for (const f of FIELDS) ui[f] = $(`#${f}`);

  const state = {
    profiles: new Map(), // model id -> what /playground/models says of its profile
    turns: [],
    busy: null, // {controller, turn} while a request is in flight
  };

  // ---- small helpers ------------------------------------------------------------------

  const now = () => performance.now();
  const seconds = (ms) => (ms == null || !Number.isFinite(ms) ? '–' : `${(ms / 1000).toFixed(2)} s`);

  function setStatus(text, kind = 'info') {
    ui.status.hidden = !text;
    ui.status.textContent = text || '';
    ui.status.dataset.kind = kind;
  }

  function authHeaders() {
    const key = ui.apiKey.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function errorMessage(resp) {
    const text = await resp.text().catch(() => '');
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        const e = body.error;
        return { message: String(e.message || e.type || 'error'), code: e.code, type: e.type };
      }
    } catch {
      // not JSON: the text itself, shortened
    }
    return { message: text.slice(0, 300) || resp.statusText || 'error', code: null, type: null };
  }

  async function getJSON(path) {
    const resp = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
    if (!resp.ok) {
      const err = await errorMessage(resp);
      const e = new Error(err.message);
      e.status = resp.status;
      throw e;
    }
    return resp.json();
  }

  async function copyText(text, button) {
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch {
      // no clipboard API (plain http on another host): the old way
      const area = document.createElement('textarea');
      area.value = text;
      area.className = 'offscreen';
      document.body.append(area);
      area.select();
      try { ok = document.execCommand('copy'); } catch { ok = false; }
      area.remove();
    }
    const label = button.textContent;
    button.textContent = ok ? 'Copied' : 'Copy failed';
    button.disabled = true;
    setTimeout(() => { button.textContent = label; button.disabled = false; }, 1200);
  }

  // ---- models and their profile values ------------------------------------------------

  async function loadModels() {
    setStatus('Loading models…');
    let list;
    try {
      list = await getJSON('v1/models');
    } catch (err) {
      ui.model.replaceChildren();
      if (err.status === 401) {
        setStatus('This gateway needs an API key: enter it in Settings.', 'error');
        state.askedForKey = true;
        openSettings(true);
        ui.apiKey.focus();
      } else {
        setStatus(`Could not list the models: ${err.message}`, 'error');
      }
      return;
    }
    if (state.askedForKey) openSettings(false); // the key works: fold what we opened for it
    state.askedForKey = false;
    state.profiles.clear();
    try {
      const info = await getJSON('playground/models');
      for (const m of info.data || []) state.profiles.set(m.id, m);
    } catch {
      // an older gateway: the fields just show "model default"
    }
    const ids = (list.data || []).map((m) => m.id);
    const wanted = sessionStorage.getItem(MODEL_STORE) || ui.model.value;
    ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(wanted)) ui.model.value = wanted;
    setStatus(ids.length ? '' : 'This gateway serves no model for this key.', 'error');
    showProfile();
  }

  function showProfile() {
    const p = state.profiles.get(ui.model.value);
    const eff = (p && p.effective) || {};
    const fixed = (p && p.fixed) || {};
    for (const f of FIELDS) {
      const input = ui[f];
      const hint = $(`.hint[data-for="${f}"]`);
      input.disabled = f in fixed;
      if (f in fixed) {
        input.value = '';
        input.placeholder = String(fixed[f]);
        hint.textContent = `fixed by the profile: ${fixed[f]}`;
      } else if (f in eff) {
        input.placeholder = String(eff[f]);
        hint.textContent = `profile default: ${eff[f]}`;
      } else {
        input.placeholder = 'model default';
        hint.textContent = p ? 'the profile sets none' : '';
      }
    }
    if (p && p.max_tokens_limit) ui.max_tokens.max = String(p.max_tokens_limit);
    else ui.max_tokens.removeAttribute('max');
    const others = Object.entries(eff).filter(([k]) => !FIELDS.includes(k));
    let note = 'Empty fields are not sent: the profile decides.';
    if (others.length) note += ` The profile also sets ${others.map(([k, v]) => `${k} ${v}`).join(', ')}.`;
    if (p && !p.reasoning) note += ' This profile does not split reasoning from the answer.';
    ui.profileNote.textContent = note;
  }

  function openSettings(open) {
    ui.settings.classList.toggle('open', open);
    ui.settingsToggle.setAttribute('aria-expanded', String(open));
  }

  // ---- the request --------------------------------------------------------------------

  function extraFields() {
    const text = ui.extra.value.trim();
    ui.extraError.hidden = true;
    if (!text) return {};
    try {
      const obj = JSON.parse(text);
      if (obj && typeof obj === 'object' && !Array.isArray(obj)) return obj;
      throw new Error('not a JSON object');
    } catch (err) {
      ui.extraError.textContent = `Extra request fields: ${err.message}`;
      ui.extraError.hidden = false;
      openSettings(true);
      return null;
    }
  }

  /** The conversation sent for ``turn``: earlier answers only, never their reasoning. */
  function messagesFor(turn) {
    const messages = [];
    const system = ui.system.value.trim();
    if (system) messages.push({ role: 'system', content: system });
    for (const t of state.turns) {
      if (t === turn) break;
      if (!t.answer) continue; // a turn that got no answer is not part of the conversation
      messages.push({ role: 'user', content: t.user }, { role: 'assistant', content: t.answer });
    }
    messages.push({ role: 'user', content: turn.user });
    return messages;
  }

  function requestBody(turn, extra) {
    const body = { model: ui.model.value };
    for (const f of FIELDS) {
      const input = ui[f];
      if (input.disabled || input.value.trim() === '') continue;
      const n = Number(input.value);
      if (Number.isFinite(n)) body[f] = f === 'max_tokens' ? Math.round(n) : n;
    }
    Object.assign(body, extra);
    body.messages = messagesFor(turn);
    body.stream = true;
    body.stream_options = { ...(extra.stream_options || {}), include_usage: true };
    return body;
  }

  async function send() {
    const text = ui.prompt.value;
    if (state.busy || !text.trim()) return;
    if (!ui.model.value) {
      setStatus('No model to send to.', 'error');
      return;
    }
    const extra = extraFields();
    if (extra === null) return;
    ui.prompt.value = '';
    const turn = addTurn(text);
    await run(turn, extra);
  }

  async function retry(turn) {
    if (state.busy || turn !== state.turns[state.turns.length - 1]) return;
    const extra = extraFields();
    if (extra === null) return;
    await run(turn, extra);
  }

  async function run(turn, extra) {
    resetTurn(turn);
    const controller = new AbortController();
    state.busy = { controller, turn };
    setBusy(true);
    const body = requestBody(turn, extra);
    turn.t0 = now();
    try {
      const resp = await fetch('v1/chat/completions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...authHeaders() },
        body: JSON.stringify(body),
        signal: controller.signal,
        cache: 'no-store',
      });
      if (!resp.ok) {
        httpError(turn, resp.status, await errorMessage(resp), resp.headers.get('retry-after'));
      } else if ((resp.headers.get('content-type') || '').includes('text/event-stream')) {
        await readStream(resp.body, turn);
      } else {
        wholeAnswer(turn, await resp.json());
      }
    } catch (err) {
      if (controller.signal.aborted) turn.stopped = true;
      else turn.failure = `The connection failed: ${err.message}`;
    } finally {
      turn.tEnd = now();
      if (state.busy && state.busy.turn === turn) state.busy = null;
      setBusy(false);
      render(turn, true);
    }
  }

  function stop() {
    if (state.busy) state.busy.controller.abort();
  }

  function clearAll() {
    stop();
    state.turns = [];
    ui.turns.replaceChildren();
    ui.empty.hidden = false;
    ui.prompt.focus();
  }

  // ---- the event stream ---------------------------------------------------------------

  /** Server-sent events, line by line (WHATWG rules for the fields used here). */
  class SSEParser {
    constructor() {
      this.buffer = '';
      this.data = null;
    }

    feed(text) {
      this.buffer += text;
      const events = [];
      for (;;) {
        const m = /\r\n|\r|\n/.exec(this.buffer);
        if (!m) break;
        if (m[0] === '\r' && m.index === this.buffer.length - 1) break; // maybe half of CRLF
        const line = this.buffer.slice(0, m.index);
        this.buffer = this.buffer.slice(m.index + m[0].length);
        this.line(line, events);
      }
      return events;
    }

    end() {
      const events = [];
      if (this.buffer) this.line(this.buffer, events);
      this.buffer = '';
      this.line('', events);
      return events;
    }

    line(line, events) {
      if (line === '') {
        if (this.data !== null) events.push(this.data.join('\n'));
        this.data = null;
        return;
      }
      if (line[0] === ':') return; // a comment: heartbeat
      const colon = line.indexOf(':');
      const field = colon === -1 ? line : line.slice(0, colon);
      let value = colon === -1 ? '' : line.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') (this.data ||= []).push(value);
    }
  }

  async function readStream(stream, turn) {
    const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SSEParser();
    for (;;) {
      const { value, done } = await reader.read();
      const events = done ? parser.end() : parser.feed(value);
      for (const data of events) onEvent(turn, data);
      if (events.length) schedule(turn);
      if (done) break;
    }
    if (!turn.done && !turn.stopped) {
      turn.failure = 'The connection closed before the stream finished (no [DONE]).';
    }
  }

  function pickReasoning(delta) {
    for (const f of REASONING_FIELDS) {
      if (typeof delta[f] === 'string' && delta[f] !== '') return delta[f];
    }
    return '';
  }

  function onEvent(turn, data) {
    if (data === '[DONE]') {
      turn.done = true;
      return;
    }
    let obj;
    try {
      obj = JSON.parse(data);
    } catch {
      turn.failure = 'The gateway sent an event that is not JSON.';
      return;
    }
    if (!obj || typeof obj !== 'object') return;
    if (obj.error) {
      errorEvent(turn, obj.error);
      return;
    }
    if (obj.usage) turn.usage = obj.usage;
    for (const choice of obj.choices || []) {
      if ((choice.index || 0) !== 0) continue;
      const delta = choice.delta || {};
      const reasoning = pickReasoning(delta);
      if (reasoning) {
        if (turn.tReasoning == null) turn.tReasoning = now();
        turn.reasoning += reasoning;
      }
      if (typeof delta.content === 'string' && delta.content !== '') {
        if (turn.tAnswer == null) turn.tAnswer = now();
        turn.answer += delta.content;
      }
      if (choice.finish_reason) {
        turn.finish = choice.finish_reason;
        turn.termination = choice.gateway_termination || turn.termination;
        turn.reasoningTruncated = Boolean(choice.reasoning_truncated);
        turn.reasoningUnterminated = Boolean(choice.reasoning_unterminated);
      }
    }
  }

  function errorEvent(turn, err) {
    const code = typeof err.code === 'string' ? err.code : null;
    const message = String(err.message || err.type || 'error');
    if (code && code in GATEWAY_ENDINGS) {
      turn.termination = code;
      turn.terminationDetail = message; // the gateway's own words, on hover
    } else {
      turn.failure = `Error from the server: ${message}${err.code != null ? ` (${err.code})` : ''}`;
    }
  }

  function httpError(turn, status, err, retryAfter) {
    const code = typeof err.code === 'string' ? err.code : null;
    if (code && code in GATEWAY_ENDINGS) {
      turn.termination = code;
      turn.terminationMessage = `HTTP ${status}`;
      turn.terminationDetail = err.message;
      turn.finish = null;
      return;
    }
    let text = `${status}: ${err.message}`;
    if (status === 401) text += ' Set the API key in Settings.';
    if (status === 429 && retryAfter) text += ` Retry after ${retryAfter} s.`;
    turn.failure = text;
  }

  function wholeAnswer(turn, body) {
    const choice = (body.choices || [])[0] || {};
    const message = choice.message || {};
    turn.reasoning = pickReasoning(message);
    turn.answer = typeof message.content === 'string' ? message.content : '';
    turn.finish = choice.finish_reason || null;
    turn.termination = choice.gateway_termination || null;
    turn.reasoningTruncated = Boolean(choice.reasoning_truncated);
    turn.usage = body.usage || null;
    turn.done = true;
  }

  // ---- the conversation on screen -----------------------------------------------------

  function addTurn(text) {
    const el = ui.template.content.firstElementChild.cloneNode(true);
    const turn = { el, user: text, userClosedThinking: false };
    $('.user-text', el).textContent = text;
    $('.copy-answer', el).addEventListener('click', (e) => copyText(turn.answer, e.currentTarget));
    $('.copy-reasoning', el).addEventListener('click', (e) => copyText(turn.reasoning, e.currentTarget));
    $('.retry', el).addEventListener('click', () => retry(turn));
    $('.thinking > summary', el).addEventListener('click', () => {
      turn.userClosedThinking = $('.thinking', el).open; // it is about to toggle
    });
    state.turns.push(turn);
    ui.turns.append(el);
    ui.empty.hidden = true;
    return turn;
  }

  function resetTurn(turn) {
    Object.assign(turn, {
      reasoning: '',
      answer: '',
      finish: null,
      termination: null,
      terminationMessage: null,
      terminationDetail: null,
      reasoningTruncated: false,
      reasoningUnterminated: false,
      usage: null,
      done: false,
      stopped: false,
      failure: null,
      t0: now(),
      tReasoning: null,
      tAnswer: null,
      tEnd: null,
      userClosedThinking: false,
      folded: false,
      rendered: { reasoning: -1, answer: -1 },
    });
    const thinking = $('.thinking', turn.el);
    thinking.hidden = true;
    thinking.open = false;
    turn.el.classList.remove('finished');
    render(turn, false);
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    ui.send.disabled = busy;
    const last = state.turns[state.turns.length - 1];
    for (const t of state.turns) $('.retry', t.el).hidden = busy || t !== last;
  }

  let frame = 0;
  let lastRender = 0;
  function schedule(turn) {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (turn.tEnd != null) return; // the final render has been done
      if (now() - lastRender < 60) {
        schedule(turn); // at most ~16 renders a second: Markdown + KaTeX redo the whole answer
        return;
      }
      lastRender = now();
      render(turn, false);
    });
  }

  function notices(turn) {
    const out = [];
    const thinking = turn.reasoningTruncated || (Boolean(turn.reasoning) && !turn.answer);
    if (turn.stopped) out.push(['stopped', 'Stopped: the request was cancelled, and with it the model’s work.']);
    if (turn.termination) {
      const why = GATEWAY_ENDINGS[turn.termination] || turn.termination;
      const detail = turn.terminationMessage ? ` (${turn.terminationMessage})` : '';
      let tail = '';
      if (turn.termination !== 'stop_text') {
        if (!turn.reasoning && !turn.answer) tail = ' Nothing was generated.';
        else if (thinking) tail = ' The model was still thinking: there is no answer.';
        else tail = ' What is shown is incomplete.';
      }
      out.push(['gateway', `Ended by the gateway: ${why}${detail}.${tail}`, turn.terminationDetail]);
    } else if (turn.finish === 'length' && thinking) {
      out.push(['budget', 'The model ran out of tokens while thinking: it never reached an answer. Raise max_tokens.']);
    } else if (turn.finish === 'length') {
      out.push(['budget', 'The answer was cut at max_tokens.']);
    }
    if (turn.reasoningUnterminated) {
      out.push(['info', 'The model never closed its reasoning: the gateway shows the text as the answer.']);
    }
    if (turn.failure) out.push(['error', turn.failure]);
    return out;
  }

  function render(turn, final) {
    const el = turn.el;
    const nearBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 80;
    const thinking = $('.thinking', el);
    const reasoningBox = $('.reasoning', el);
    const label = $('.thinking-label', el);
    if (turn.reasoning) {
      if (turn.rendered.reasoning !== turn.reasoning.length) {
        const follow = reasoningBox.scrollTop + reasoningBox.clientHeight >= reasoningBox.scrollHeight - 24;
        reasoningBox.textContent = turn.reasoning;
        if (follow) reasoningBox.scrollTop = reasoningBox.scrollHeight;
        turn.rendered.reasoning = turn.reasoning.length;
      }
      if (thinking.hidden) {
        thinking.hidden = false;
        thinking.open = !turn.userClosedThinking;
      }
      const end = turn.tAnswer ?? (final ? turn.tEnd : now());
      const took = seconds(end - turn.tReasoning);
      if (turn.tAnswer != null) {
        if (!turn.folded) thinking.open = false;
        turn.folded = true;
        label.textContent = `Thought for ${took}`;
      } else {
        label.textContent = final ? `Thinking ended after ${took}, no answer` : `Thinking… ${took}`;
      }
    }
    thinking.classList.toggle('live', !final && turn.tAnswer == null && Boolean(turn.reasoning));
    const answer = $('.answer', el);
    if (turn.rendered.answer !== turn.answer.length || final) {
      window.PlaygroundRender.markdown(answer, turn.answer);
      turn.rendered.answer = turn.answer.length;
    }
    answer.classList.toggle('streaming', !final);
    const list = $('.notices', el);
    list.replaceChildren(
      ...notices(turn).map(([kind, text, title]) => {
        const li = document.createElement('li');
        li.className = `notice notice-${kind}`;
        li.textContent = text;
        if (title) li.title = title;
        return li;
      }),
    );
    // timings
    const end = final ? turn.tEnd : now();
    $('.t-reasoning', el).textContent = seconds(turn.tReasoning == null ? null : turn.tReasoning - turn.t0);
    $('.t-answer', el).textContent = seconds(turn.tAnswer == null ? null : turn.tAnswer - turn.t0);
    $('.t-total', el).textContent = seconds(end - turn.t0);
    const tokens = turn.usage && Number(turn.usage.completion_tokens);
    $('.t-tokens', el).textContent = Number.isFinite(tokens) ? String(tokens) : '–';
    const first = Math.min(turn.tReasoning ?? Infinity, turn.tAnswer ?? Infinity);
    let rate = '';
    if (final && Number.isFinite(tokens) && tokens > 0) {
      const span = (tokens > 1 && Number.isFinite(first) ? end - first : end - turn.t0) / 1000;
      if (span > 0) rate = `· ${(tokens / span).toFixed(1)} tok/s`;
    }
    $('.t-rate', el).textContent = rate;
    let finish = turn.finish || '–';
    if (final && !turn.finish) finish = turn.stopped ? 'stopped' : turn.termination || (turn.failure ? 'error' : '–');
    $('.t-finish', el).textContent = finish;
    el.classList.toggle('finished', final);
    $('.copy-answer', el).disabled = !turn.answer;
    $('.copy-reasoning', el).disabled = !turn.reasoning;
    if (nearBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  // ---- wiring -------------------------------------------------------------------------

  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  ui.prompt.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener('click', stop);
  ui.clear.addEventListener('click', clearAll);
  ui.settingsToggle.addEventListener('click', () => openSettings(!ui.settings.classList.contains('open')));
  ui.model.addEventListener('change', () => {
    sessionStorage.setItem(MODEL_STORE, ui.model.value);
    showProfile();
  });
  ui.apiKey.value = sessionStorage.getItem(KEY_STORE) || '';
  ui.apiKey.addEventListener('change', () => {
    const key = ui.apiKey.value.trim();
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.busy) stop();
  });

  loadModels().finally(() => {
    document.body.dataset.ready = '1';
    ui.prompt.focus();
  });
})();
