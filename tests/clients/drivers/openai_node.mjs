// The `openai` Node SDK as an application uses it. Same job/result files as the Python
// drivers: node openai_node.mjs JOB.json OUT.json, with GATEWAY_CLIENTS_NODE_DIR pointing at
// the directory whose node_modules holds the pinned `openai` package.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import net from 'node:net';
import dns from 'node:dns';

const nodeDir = process.env.GATEWAY_CLIENTS_NODE_DIR;
const require = createRequire(join(nodeDir, 'package.json'));
const OpenAI = require('openai').default ?? require('openai');
const version = JSON.parse(readFileSync(join(nodeDir, 'node_modules/openai/package.json'))).version;

// Loopback only: refuse and record anything else (as _common.py does for Python).
const outbound = [];
const realConnect = net.Socket.prototype.connect;
net.Socket.prototype.connect = function (...args) {
  const opts = typeof args[0] === 'object' ? args[0] : { port: args[0], host: args[1] };
  const host = opts.host ?? 'localhost';
  if (opts.path === undefined && !/^(127\.|::1$|localhost$)/.test(host)) {
    outbound.push(String(host));
    throw new Error(`client conformance suite: no traffic to ${host}`);
  }
  return realConnect.apply(this, args);
};
const realLookup = dns.lookup;
dns.lookup = function (host, ...rest) {
  if (!/^(127\.|::1$|localhost$)/.test(host)) {
    outbound.push(`dns:${host}`);
  }
  return realLookup.call(this, host, ...rest);
};

const FIELDS = ['reasoning_content', 'reasoning'];

function client(c) {
  return new OpenAI({ baseURL: c.base_url, apiKey: c.api_key, maxRetries: 0, timeout: 30000 });
}

function base(fields) {
  return { ok: true, text: null, reasoning: null, reasoning_shown: 0, finish_reason: null,
    partial: null, error: null, ...fields };
}

function shown(reasoning, chars) {
  return reasoning ? Math.round(chars / reasoning.length) : 0;
}

function errorInfo(e) {
  const classes = [];
  for (let p = Object.getPrototypeOf(e); p && p.constructor !== Object; p = Object.getPrototypeOf(p)) {
    classes.push(p.constructor.name);
  }
  return { type: e?.constructor?.name ?? typeof e, classes, message: String(e?.message ?? e).slice(0, 2000),
    status: typeof e?.status === 'number' ? e.status : null, code: e?.code ?? null };
}

const body = (c, extra = {}) => ({ model: c.model, messages: [{ role: 'user', content: c.prompt }],
  ...(c.extra_body ?? {}), ...extra });

const handlers = {
  async nonstream(c) {
    const r = await client(c).chat.completions.create(body(c));
    const m = r.choices[0].message;
    const found = FIELDS.filter((f) => typeof m[f] === 'string' && m[f]);
    const reasoning = found.length ? m[found[0]] : null;
    return base({ text: m.content, reasoning, reasoning_fields: found,
      reasoning_shown: shown(reasoning, found.reduce((n, f) => n + m[f].length, 0)),
      finish_reason: r.choices[0].finish_reason });
  },
  async stream(c, partial) {
    const acc = Object.fromEntries(FIELDS.map((f) => [f, '']));
    let finish = null;
    let usageChunks = 0;
    const s = await client(c).chat.completions.create(body(c, { stream: true }));
    for await (const chunk of s) {
      if (!chunk.choices.length) { usageChunks += 1; continue; }
      const ch = chunk.choices[0];
      partial.text += ch.delta.content ?? '';
      for (const f of FIELDS) if (typeof ch.delta[f] === 'string') acc[f] += ch.delta[f];
      if (ch.finish_reason != null) finish = ch.finish_reason;
    }
    const found = FIELDS.filter((f) => acc[f]);
    const reasoning = found.length ? acc[found[0]] : null;
    return base({ text: partial.text, reasoning, reasoning_fields: found,
      reasoning_shown: shown(reasoning, found.reduce((n, f) => n + acc[f].length, 0)),
      finish_reason: finish, usage_chunks: usageChunks });
  },
  async history(c) {
    const cl = client(c);
    const messages = [];
    const texts = [];
    const keys = [];
    for (let turn = 1; turn <= 3; turn++) {
      messages.push({ role: 'user', content: `${c.prompt} (turn ${turn})` });
      const r = await cl.chat.completions.create({ ...body(c), messages });
      const m = r.choices[0].message;
      texts.push(m.content);
      keys.push(Object.keys(m).filter((k) => m[k] != null).sort());
      messages.push(m);  // the message object as the SDK returned it
    }
    return base({ text: texts[2], texts, sent_assistant_keys: keys });
  },
  async async(c) {
    const cl = client(c);
    const one = async () => (await cl.chat.completions.create(body(c))).choices[0].message.content;
    const streamed = async () => {
      let out = '';
      for await (const chunk of await cl.chat.completions.create(body(c, { stream: true }))) {
        if (chunk.choices.length) out += chunk.choices[0].delta.content ?? '';
      }
      return out;
    };
    const texts = await Promise.all([one(), streamed(), one()]);
    return base({ text: texts[0], texts });
  },
  async retrieve(c) {
    const cl = client(c);
    const m = await cl.models.retrieve(c.model);
    const listed = [];
    for await (const x of cl.models.list()) listed.push(x.id);
    return base({ text: m.id, model_object: m.object, listed });
  },
};

const job = JSON.parse(readFileSync(process.argv[2]));
const results = {};
for (const spec of job.cases) {
  const c = { ...job, ...spec };
  const h = handlers[c.kind];
  if (!h) { results[c.id] = { unsupported: true }; continue; }
  const partial = { text: '' };
  const started = performance.now();
  try {
    results[c.id] = await h(c, partial);
  } catch (e) {
    results[c.id] = base({ ok: false, partial: partial.text, error: errorInfo(e),
      traceback: String(e?.stack ?? '').slice(0, 3000) });
  }
  results[c.id].elapsed = Math.round(performance.now() - started) / 1000;
}
writeFileSync(process.argv[3], JSON.stringify({ results, versions: { openai: version, node: process.version }, outbound }, null, 1));
