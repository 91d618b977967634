// rollgate's dashboard: polls the open read endpoints every second and redraws what changed;
// commands carry the token the user pasted (sessionStorage: gone when the tab closes, never
// sent anywhere but this origin's API). No framework and no inline code (the page's CSP
// allows scripts from this file only); the DOM is built with createElement, so no text from
// the API is ever parsed as HTML.
'use strict';

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
// A fresh rollout's few seconds of points fill a minute, not a sliver of five.
const MIN_WINDOW_MS = 60 * 1000;
const TOKEN_KEY = 'rollgate-token';
const SVG = 'http://www.w3.org/2000/svg';

// Abort asks for a second click within this long (no modal dialog: it blocks the page).
const ARM_MS = 5000;
let armed = null; // {name, until}
let last = '';
let busy = false;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat()) {
    if (k !== undefined && k !== null && k !== false) e.append(k instanceof Node ? k : String(k));
  }
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : String(k));
  return e;
}

function notice(text) {
  document.getElementById('notice').textContent = text || '';
}

function num(v, digits) {
  if (v === undefined || v === null) return '–';
  return Number(v.toFixed(digits)).toString();
}

// Charts, drawn by hand: one line per variant over the last minutes, the y axis from 0 (or
// the lowest value for success rates) to the largest value seen.
function chart(title, points, variants, pick, unit, fixedMax) {
  const W = 300, H = 120, L = 36, R = 6, T = 8, B = 18;
  const now = Date.now();
  const first = points.length ? Date.parse(points[0].at) : now;
  const span = now - Math.max(now - WINDOW_MS, Math.min(first, now - MIN_WINDOW_MS));
  const lines = variants.map(() => []);
  let max = fixedMax || 0;
  let count = 0;
  for (const p of points) {
    const t = Date.parse(p.at);
    if (!(now - t <= span)) continue;
    variants.forEach((v, i) => {
      const value = p.variants[v] ? pick(p.variants[v]) : null;
      if (value === null || value === undefined) return;
      lines[i].push([t, value]);
      max = Math.max(max, value);
      count += 1;
    });
  }
  if (max <= 0) max = 1;
  const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const s = svg('svg', {
    class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': title, 'data-points': String(count),
  });
  for (const f of [0, 0.5, 1]) {
    s.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: y(max * f), y2: y(max * f) }));
    s.append(svg('text', { x: 2, y: y(max * f) + 3 }, num(max * f, max < 10 ? 2 : 0) + unit));
  }
  const ago = span >= 120000 ? `${Math.round(span / 60000)} min ago` : `${Math.round(span / 1000)} s ago`;
  s.append(svg('text', { x: L, y: H - 4 }, ago));
  s.append(svg('text', { x: W - R - 22, y: H - 4 }, 'now'));
  lines.forEach((line, i) => {
    if (line.length === 0) return;
    const pts = line.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    s.append(svg('polyline', { class: `v${i % 3}`, points: pts }));
  });
  return el('figure', {}, el('figcaption', {}, title), s);
}

function charts(series, variants) {
  const points = (series && series.points) || [];
  const legend = el('div', { class: 'legend' },
    variants.map((v, i) => el('span', {}, el('span', { class: `swatch v${i % 3}` }), v)));
  return el('section', {},
    el('h3', {}, 'Traffic (up to the last 5 minutes)'),
    legend,
    el('div', { class: 'charts' },
      chart('Requests per second', points, variants, (p) => p.rps, '/s'),
      chart('Success rate', points, variants, (p) => p.success, '', 1),
      chart('Latency p99 (ms)', points, variants, (p) => p.p99Ms, 'ms')));
}

function figures(a) {
  return el('li', { class: a.verdict },
    `${new Date(a.at).toLocaleTimeString()} ${a.verdict}: `,
    a.figures.map((f) => `${f.metric} ${num(f.value, 4)}`).join(', ') || 'no figures',
    ` (${a.requests} canary responses)`);
}

// Gateways and the policy version each serves, when the status carries them; fields are
// shown as they come, so a newer status shape still renders.
function gateways(status) {
  const list = status.gateways;
  if (!Array.isArray(list) || list.length === 0) return null;
  return el('section', {}, el('h3', {}, 'Gateways'),
    el('ul', { class: 'gateways' }, list.map((g) => el('li', {},
      typeof g === 'object' && g !== null
        ? Object.entries(g).map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`).join(', ')
        : String(g)))));
}

// The filter's `…_breaker_<name>_state` gauge (README, Stats).
const BREAKER_STATES = { 0: 'closed', 1: 'open', 2: 'recovering' };

function breakers(series) {
  const b = series && series.breakers;
  if (!b || Object.keys(b).length === 0) return null;
  return el('section', {}, el('h3', {}, 'Breakers'),
    el('ul', { class: 'breakers' }, Object.entries(b).map(([name, g]) => el('li', {},
      `${name}: ${BREAKER_STATES[g.state] || `state ${g.state === undefined ? '?' : g.state}`}`,
      g.trips === undefined ? '' : `, ${g.trips} trips`))));
}

function button(r, cmd, label, enabled) {
  const isArmed = cmd === 'abort' && armed && armed.name === r.name && armed.until > Date.now();
  const b = el('button', {
    type: 'button', 'data-cmd': cmd, 'data-name': r.name,
    class: cmd === 'abort' ? (isArmed ? 'danger armed' : 'danger') : null,
    disabled: !enabled || busy,
  }, isArmed ? 'Confirm abort' : label);
  b.addEventListener('click', () => command(r, cmd));
  return b;
}

function card(r, series) {
  const st = r.status;
  const done = st.currentStep >= r.steps.length;
  const active = st.phase === 'Progressing' || st.phase === 'Paused';
  const analyses = (series && series.analyses && series.analyses.length)
    ? series.analyses.slice().reverse() : (st.analysis ? [st.analysis] : []);
  const variants = (series && series.points.length)
    ? [...new Set(series.points.flatMap((p) => Object.keys(p.variants)))].sort().reverse()
    : [];
  return el('article', { class: 'card', 'data-rollout': r.name },
    el('div', { class: 'title' },
      el('h2', {}, r.name),
      el('span', { class: `phase ${st.phase}` }, st.phase)),
    el('p', { class: 'message' }, st.message || ''),
    r.error ? el('p', { class: 'error' }, `rollout file refused: ${r.error}`) : null,
    el('dl', {},
      el('dt', {}, 'Step'), el('dd', { class: 'step' }, done ? `all ${r.steps.length} done` : `${st.currentStep + 1}/${r.steps.length}`),
      el('dt', {}, 'Canary weight'), el('dd', { class: 'weight' }, `${num(st.canaryWeight, 2)} %`),
      el('dt', {}, 'Header route'), el('dd', {}, st.headerRoute || 'none'),
      st.mirrorPercent ? [el('dt', {}, 'Mirrored'), el('dd', {}, `${num(st.mirrorPercent, 2)} %`)] : null,
      el('dt', {}, 'Policy'), el('dd', {}, `v${st.policyVersion}${r.serving ? '' : ' (not served)'}`),
      el('dt', {}, 'Attempt'), el('dd', {}, String(st.attempt))),
    el('div', { class: 'row actions' },
      button(r, 'promote', 'Promote', active && !done),
      button(r, 'abort', 'Abort', active),
      button(r, 'retry', 'Retry', st.phase === 'Aborted')),
    el('h3', {}, 'Steps'),
    el('ol', { class: 'steps' }, r.steps.map((s, i) => el('li', {
      class: i === st.currentStep ? 'step current' : i < st.currentStep ? 'step done' : 'step',
      'aria-current': i === st.currentStep ? 'step' : null,
    }, s))),
    gateways(st),
    analyses.length ? el('section', {}, el('h3', {}, 'Last analyses'),
      el('ul', { class: 'analyses' }, analyses.map(figures))) : null,
    breakers(series),
    charts(series, variants));
}

async function getJson(path) {
  const resp = await fetch(path, { cache: 'no-store' });
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  return resp.json();
}

async function refresh() {
  try {
    const [list, traffic] = await Promise.all([getJson('/v1/rollouts'), getJson('/v1/traffic')]);
    const key = JSON.stringify([list, traffic, armed, busy]);
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    if (key === last) return;
    last = key;
    const main = document.getElementById('rollouts');
    const cards = list.rollouts.map((r) => card(r, traffic.rollouts[r.name]));
    main.replaceChildren(...(cards.length ? cards : [el('p', {}, 'No rollouts.')]));
  } catch (e) {
    document.getElementById('updated').textContent = `cannot read the API: ${e.message}`;
  }
}

async function command(r, cmd) {
  if (cmd === 'abort' && !(armed && armed.name === r.name && armed.until > Date.now())) {
    armed = { name: r.name, until: Date.now() + ARM_MS };
    setTimeout(refresh, ARM_MS + 50);
    return refresh();
  }
  armed = null;
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) {
    notice('Paste the API token first (the one `rollgate serve` was given).');
    return;
  }
  busy = true;
  await refresh();
  try {
    // `expect` makes a double click act once: the second finds the rollout moved on (409).
    const resp = await fetch(`/v1/rollouts/${encodeURIComponent(r.name)}/${cmd}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ expect: { step: r.status.currentStep + 1, attempt: r.status.attempt } }),
    });
    const body = await resp.json().catch(() => ({}));
    notice(resp.ok ? '' : `${cmd} ${r.name}: ${resp.status} ${body.error || ''}`);
  } catch (e) {
    notice(`${cmd} ${r.name}: ${e.message}`);
  } finally {
    busy = false;
    last = '';
    await refresh();
  }
}

document.addEventListener('DOMContentLoaded', () => {
  const input = document.getElementById('token');
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    input.value = '';
    input.placeholder = t ? 'token set for this tab' : input.placeholder;
    notice('');
  });
  document.getElementById('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    input.placeholder = 'paste the bearer token';
  });
  if (sessionStorage.getItem(TOKEN_KEY)) input.placeholder = 'token set for this tab';
  refresh();
  setInterval(refresh, POLL_MS);
});
