// Markdown + LaTeX for model answers, safely: markdown-it with raw HTML off (model output
// such as <script> or <img onerror> stays text), no images (nothing is fetched from
// elsewhere), links that open in a new tab without a referrer, and math typeset by KaTeX
// through the DOM (katex.render sets styles through CSSOM, which the page's
// Content-Security-Policy allows; katex.renderToString's style="" attributes it would not).
// Math: $...$, \(...\) inline; $$...$$, \[...\] display (R1 writes \[ \boxed{...} \]).
'use strict';

window.PlaygroundRender = (() => {
  const md = window.markdownit({ html: false, linkify: true, typographer: false, breaks: false });
  md.disable('image');

  function findClose(src, close, from, single) {
    let i = from;
    for (;;) {
      i = src.indexOf(close, i);
      if (i === -1) return -1;
      if (src[i - 1] === '\\') { i += 1; continue; } // \$ is a dollar sign
      // $x$ only: no space inside the delimiters, no digit right after ($5 and $10)
      if (single && (/\s/.test(src[i - 1]) || /[0-9]/.test(src[i + 1] || ''))) { i += 1; continue; }
      return i;
    }
  }

  function mathInline(state, silent) {
    const src = state.src;
    const pos = state.pos;
    let open;
    let close;
    let display;
    if (src[pos] === '\\' && src[pos + 1] === '(') [open, close, display] = ['\\(', '\\)', false];
    else if (src[pos] === '\\' && src[pos + 1] === '[') [open, close, display] = ['\\[', '\\]', true];
    else if (src[pos] === '$' && src[pos + 1] === '$') [open, close, display] = ['$$', '$$', true];
    else if (src[pos] === '$') [open, close, display] = ['$', '$', false];
    else return false;
    const start = pos + open.length;
    const single = open === '$';
    if (single && (start >= state.posMax || /\s/.test(src[start]))) return false;
    const end = findClose(src, close, start, single);
    if (end === -1 || end === start || end + close.length > state.posMax) return false;
    if (!silent) {
      const token = state.push('math_inline', 'span', 0);
      token.content = src.slice(start, end);
      token.markup = open;
      token.meta = { display };
    }
    state.pos = end + close.length;
    return true;
  }

  function mathBlock(state, startLine, endLine, silent) {
    if (state.sCount[startLine] - state.blkIndent >= 4) return false;
    const lineAt = (n) => state.src.slice(state.bMarks[n] + state.tShift[n], state.eMarks[n]);
    const first = lineAt(startLine);
    let open;
    let close;
    if (first.startsWith('$$')) [open, close] = ['$$', '$$'];
    else if (first.startsWith('\\[')) [open, close] = ['\\[', '\\]'];
    else return false;
    const rest = first.slice(open.length).trimEnd();
    let content;
    let last = startLine;
    if (rest.length >= close.length && rest.endsWith(close)) {
      content = rest.slice(0, -close.length); // $$ x $$ on one line
    } else {
      const lines = [rest];
      let found = false;
      for (last = startLine + 1; last < endLine; last += 1) {
        if (state.sCount[last] < state.blkIndent) break;
        const line = lineAt(last).trimEnd();
        if (line.endsWith(close)) {
          lines.push(line.slice(0, -close.length));
          found = true;
          break;
        }
        lines.push(line);
      }
      if (!found) return false; // not closed (yet, while streaming): plain text for now
      content = lines.join('\n');
    }
    if (silent) return true;
    const token = state.push('math_block', 'div', 0);
    token.block = true;
    token.content = content;
    token.markup = open;
    token.map = [startLine, last + 1];
    state.line = last + 1;
    return true;
  }

  md.inline.ruler.before('escape', 'math_inline', mathInline);
  md.block.ruler.before('fence', 'math_block', mathBlock, {
    alt: ['paragraph', 'reference', 'blockquote', 'list'],
  });
  const esc = md.utils.escapeHtml;
  md.renderer.rules.math_inline = (tokens, i) =>
    `<span class="math" data-display="${tokens[i].meta.display ? 1 : 0}">${esc(tokens[i].content)}</span>`;
  md.renderer.rules.math_block = (tokens, i) =>
    `<div class="math math-block" data-display="1">${esc(tokens[i].content)}</div>\n`;

  // Links open in a new tab, without a referrer or access to this page.
  const linkOpen = md.renderer.rules.link_open || ((t, i, o, e, self) => self.renderToken(t, i, o));
  md.renderer.rules.link_open = (tokens, i, options, env, self) => {
    tokens[i].attrSet('target', '_blank');
    tokens[i].attrSet('rel', 'noopener noreferrer nofollow');
    return linkOpen(tokens, i, options, env, self);
  };
  // Table alignment as a class: the CSP forbids style="" attributes.
  md.core.ruler.push('align_class', (state) => {
    for (const t of state.tokens) {
      if (t.type !== 'th_open' && t.type !== 'td_open') continue;
      const style = t.attrGet('style');
      if (!style) continue;
      t.attrs = t.attrs.filter(([name]) => name !== 'style');
      const m = /text-align:\s*(left|right|center)/.exec(style);
      if (m) t.attrJoin('class', `align-${m[1]}`);
    }
  });

  function typeset(root) {
    for (const el of root.querySelectorAll('.math')) {
      const tex = el.textContent;
      try {
        katex.render(tex, el, {
          displayMode: el.dataset.display === '1',
          throwOnError: true, // an error is shown as the TeX source, below
          trust: false,
          strict: 'ignore',
          maxSize: 50,
          maxExpand: 500,
        });
      } catch (err) {
        el.textContent = tex;
        el.classList.add('math-error');
        el.title = String(err && err.message ? err.message : err);
      }
    }
  }

  /** Render Markdown text into ``el`` (replacing what it held). */
  function markdown(el, text) {
    el.innerHTML = md.render(text); // html: false: every tag in ``text`` was escaped
    typeset(el);
  }

  return { markdown };
})();
