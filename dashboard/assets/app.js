// presence dashboard: plain JavaScript, no build step, no external resource.
// Every URL is relative to the page, so the dashboard also works behind a
// proxy that serves presenced under a path prefix.
'use strict';

const TOKEN_KEY = 'presence.token';
const STATS_EVERY = 2000;     // ms between /v1/stats polls
const DEVICE_EVERY = 2000;    // ms between refreshes of the device shown
const OFFLINE_EVERY = 5000;   // ms between refreshes of the offline list
const FLEET_EVERY = 60000;    // ms between fleet availability queries
const RING = 150;             // rate samples kept: 5 min at STATS_EVERY
const MAX_EVENTS = 100;       // live transitions kept on the page

const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || '';

class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// api fetches a JSON endpoint with the bearer token, if any.
function api(path) { return request('GET', path); }

// request sends method to path with the bearer token, if any, and body as
// JSON (a write must say application/json), and returns the JSON answer.
async function request(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = 'Bearer ' + token;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    setConn(false, 'unreachable');
    throw new APIError(0, 'server unreachable');
  }
  let answer = null;
  try { answer = await res.json(); } catch (e) { /* not JSON */ }
  if (res.status === 401) {
    $('auth-banner').hidden = false;
    throw new APIError(401, (answer && answer.error) || 'token required');
  }
  if (!res.ok) throw new APIError(res.status, (answer && answer.error) || res.statusText);
  return answer;
}

function setConn(ok, text) {
  const c = $('conn');
  c.className = 'conn ' + (ok ? 'ok' : 'bad');
  c.textContent = text;
}

// ---- formatting -----------------------------------------------------------

function fmtTime(s) {
  if (!s) return '–';
  const d = new Date(s);
  if (isNaN(d)) return s;
  return d.toISOString().replace('T', ' ').slice(0, 19) + 'Z';
}

function fmtDur(sec) {
  if (sec == null || !isFinite(sec)) return '–';
  sec = Math.max(0, Math.round(sec));
  const d = Math.floor(sec / 86400), h = Math.floor(sec % 86400 / 3600),
    m = Math.floor(sec % 3600 / 60), s = sec % 60;
  if (d) return d + 'd ' + h + 'h';
  if (h) return h + 'h ' + m + 'm';
  if (m) return m + 'm ' + s + 's';
  return s + 's';
}

function fmtAgo(s) {
  if (!s) return '–';
  const t = new Date(s).getTime();
  if (isNaN(t)) return s;
  return fmtTime(s) + ' (' + fmtDur((Date.now() - t) / 1000) + ' ago)';
}

function fmtNum(n) {
  if (n == null || !isFinite(n)) return '–';
  if (n >= 100) return Math.round(n).toLocaleString('en-US');
  return n.toFixed(n >= 10 ? 1 : 2);
}

function fmtPct(f) {
  return f == null ? '–' : (f * 100).toFixed(f >= 0.9995 || f === 0 ? 1 : 2) + '%';
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v; else if (k === 'onclick') e.addEventListener('click', v); else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c == null ? '' : c);
  return e;
}

function devLink(id) {
  return el('a', { class: 'dev', href: '#device=' + encodeURIComponent(id), onclick: (ev) => { ev.preventDefault(); selectDevice(id); } }, id);
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// ---- fleet counts and rates ----------------------------------------------

// Ring is a fixed-size buffer of the latest samples.
class Ring {
  constructor(n) { this.buf = new Array(n); this.n = n; this.len = 0; this.head = 0; }
  push(v) { this.buf[(this.head + this.len) % this.n] = v; if (this.len < this.n) this.len++; else this.head = (this.head + 1) % this.n; }
  values() { const out = []; for (let i = 0; i < this.len; i++) out.push(this.buf[(this.head + i) % this.n]); return out; }
}

const msgRates = new Ring(RING), transRates = new Ring(RING);
let prevStats = null; // {t, touches, transitions, nodes: {name: {touches, transitions}}}

// pollStats shows the fleet (in a cluster: every node's, summed by
// /v1/stats) and the rates, from the nodes' counters in /v1/cluster; a
// server without /v1/cluster (the API embedded elsewhere), or whose
// /v1/cluster fails, gets the rates of its own engine counters and no node
// panel.
async function pollStats() {
  let s, c;
  try {
    [s, c] = await Promise.all([api('v1/stats'), api('v1/cluster').catch((e) => {
      if (e.status === 401) throw e;
      return null; // absent, or failing: the stats still show
    })]);
  } catch (e) {
    if (e.status) setConn(e.status !== 401, e.status === 401 ? 'token required' : 'error ' + e.status);
    return;
  }
  if (!c) c = engineOnly(s);
  const partial = s.partial ? ' (partial: ' + (s.missing_nodes || []).join(', ') + ' missing)' : '';
  setConn(!s.partial, s.partial ? 'partial' : 'live');
  $('auth-banner').hidden = true;
  $('count-total').textContent = s.total.toLocaleString('en-US');
  $('count-online').textContent = s.online.toLocaleString('en-US');
  $('count-offline').textContent = s.offline.toLocaleString('en-US');
  $('count-note').textContent = (c.clustered ? c.members.length + ' nodes' : 'one node') + partial;
  const now = performance.now();
  const cur = { t: now, touches: 0, transitions: 0, nodes: {} };
  for (const m of c.members) {
    if (!m.answered) continue;
    cur.touches += m.messages_total || 0;
    cur.transitions += m.transitions_total || 0;
    cur.nodes[m.name] = { touches: m.messages_total || 0, transitions: m.transitions_total || 0 };
  }
  const dt = prevStats ? (now - prevStats.t) / 1000 : 0;
  const rate = (name) => {
    const p = prevStats && prevStats.nodes[name], q = cur.nodes[name];
    if (!p || !q || dt <= 0 || q.touches < p.touches) return null;
    return (q.touches - p.touches) / dt;
  };
  drawNodes(c, rate);
  // The fleet's rates from the nodes that answered both times.
  if (prevStats && dt > 0) {
    let m = 0, tr = 0, ok = false;
    for (const [name, q] of Object.entries(cur.nodes)) {
      const p = prevStats.nodes[name];
      if (!p || q.touches < p.touches) continue;
      m += q.touches - p.touches; tr += q.transitions - p.transitions; ok = true;
    }
    if (ok) {
      m /= dt; tr /= dt;
      msgRates.push(m); transRates.push(tr);
      $('rate-msgs').textContent = fmtNum(m);
      $('rate-trans').textContent = fmtNum(tr);
      drawChart($('chart-msgs'), msgRates.values(), $('chart-msgs-max'), '');
      drawChart($('chart-trans'), transRates.values(), $('chart-trans-max'), 'trans');
    }
  }
  prevStats = cur;
}

// engineOnly is a /v1/cluster of one member made of /v1/stats, for a
// server that has no /v1/cluster.
function engineOnly(s) {
  const e = s.engine || {};
  return { node: 'this node', clustered: false, standalone: true, members: [{
    name: 'this node', state: 'alive', usable: true, partitions_owned: 1, answered: !!s.engine,
    devices: s.total, online: s.online, messages_total: e.touches,
    transitions_total: (e.online_transitions || 0) + (e.offline_transitions || 0) }] };
}

// drawNodes fills the per-node panel from /v1/cluster.
function drawNodes(c, rate) {
  const rows = c.members.map((m) => {
    const tr = document.createElement('tr');
    tr.dataset.node = m.name;
    let health = m.answered ? 'ok' : 'not answering';
    if (m.state !== 'alive' || !m.usable) health = m.usable ? m.state : 'left out (config)';
    const heard = m.last_heard ? fmtDur((Date.now() - new Date(m.last_heard)) / 1000) + ' ago' : (m.name === c.node ? 'this node' : '–');
    const r = rate(m.name);
    const cells = [m.name, health, String(m.partitions_owned),
      m.devices != null ? m.devices.toLocaleString('en-US') : '–',
      m.online != null ? m.online.toLocaleString('en-US') : '–',
      r != null ? fmtNum(r) : '–', heard, m.version || '–'];
    cells.forEach((v, i) => {
      const td = document.createElement('td');
      td.textContent = v;
      if (i === 0) td.className = 'mono';
      if (i === 1) td.className = health === 'ok' ? 'st-online' : 'st-offline';
      tr.append(td);
    });
    return tr;
  });
  $('nodes-panel').hidden = !!c.standalone;
  $('nodes').replaceChildren(...rows);
  $('nodes-note').textContent = c.clustered ? c.partitions + ' partitions' + (c.partial ? ', partial' : '') : 'not clustered';
}

// drawChart draws the samples as an area and a line over RING slots,
// newest at the right.
function drawChart(box, vals, maxLabel, cls) {
  const W = 600, H = 100;
  const max = Math.max(1, ...vals) * 1.1;
  const step = W / (RING - 1), x0 = W - (vals.length - 1) * step;
  const pts = vals.map((v, i) => (x0 + i * step).toFixed(1) + ',' + (H - v / max * H).toFixed(1));
  box.replaceChildren();
  box.setAttribute('class', 'chart ' + cls);
  if (vals.length < 2) return;
  box.append(svg('polygon', { class: 'area', points: x0.toFixed(1) + ',' + H + ' ' + pts.join(' ') + ' ' + W + ',' + H }));
  box.append(svg('polyline', { class: 'line', points: pts.join(' ') }));
  maxLabel.textContent = '(peak ' + fmtNum(Math.max(...vals)) + ')';
}

async function pollFleet() {
  try {
    const f = await api('v1/uptime?from=-24h');
    $('fleet-uptime').textContent = f.devices ? fmtPct(f.availability) : '–';
    $('fleet-uptime-note').textContent = f.devices + ' devices, mean ' + fmtPct(f.mean_fraction);
  } catch (e) {
    $('fleet-uptime').textContent = '–';
    $('fleet-uptime-note').textContent = e.status === 503 ? 'no history database' : e.message;
  }
}

// ---- device search -------------------------------------------------------

let current = null; // the device shown
let deviceSeq = 0;  // drops answers of superseded refreshes

function selectDevice(id) {
  id = id.trim();
  if (!id) return;
  if (id !== current) {
    resetDecommission();
    $('dev-control-msg').textContent = '';
  }
  current = id;
  $('search-id').value = id;
  history.replaceState(null, '', '#device=' + encodeURIComponent(id));
  refreshDevice();
}

async function refreshDevice() {
  if (!current) return;
  const id = current, seq = ++deviceSeq, win = $('window').value;
  const enc = encodeURIComponent(id);
  const [dev, hist, up] = await Promise.allSettled([
    api('v1/devices/' + enc),
    api('v1/devices/' + enc + '/history?from=-' + win + '&limit=1000'),
    api('v1/devices/' + enc + '/uptime?from=-' + win),
  ]);
  if (seq !== deviceSeq) return;
  const err = $('dev-error');
  $('device').hidden = false;
  $('dev-id').textContent = id;
  const badge = $('dev-status');
  if (dev.status === 'fulfilled') {
    const d = dev.value;
    err.hidden = true;
    badge.textContent = d.status;
    badge.className = 'badge ' + d.status;
    $('dev-flapping').hidden = !d.flapping;
    $('dev-last-seen').textContent = fmtAgo(d.last_seen);
    $('dev-since').textContent = fmtAgo(d.since);
    $('dev-timeout').textContent = fmtDur(d.timeout_seconds) + ' (' + (d.timeout_source || 'default') + ')';
    $('dev-controls').hidden = false;
  } else {
    badge.textContent = dev.reason.status === 404 ? 'not found' : 'unknown';
    badge.className = 'badge';
    $('dev-flapping').hidden = true;
    $('dev-controls').hidden = true;
    for (const f of ['dev-last-seen', 'dev-since', 'dev-timeout']) $(f).textContent = '–';
    err.textContent = dev.reason.message;
    err.hidden = false;
  }
  if (up.status === 'fulfilled') {
    const u = up.value;
    $('dev-uptime').textContent = u.fraction == null ? '–' : fmtPct(u.fraction) + ' of ' + fmtDur(u.window_seconds) +
      ' (online ' + fmtDur(u.online_seconds) + ', offline ' + fmtDur(u.offline_seconds) +
      (u.unknown_seconds > 0 ? ', unknown ' + fmtDur(u.unknown_seconds) : '') + ', ' + u.changes + (u.changes === 1 ? ' change)' : ' changes)');
  } else {
    $('dev-uptime').textContent = up.reason.status === 503 ? 'no history database' : up.reason.message;
  }
  renderHistory(hist, up);
}

function renderHistory(hist, up) {
  const body = $('dev-history'), note = $('dev-history-note'), tl = $('dev-timeline');
  tl.replaceChildren();
  $('tl-from').textContent = ''; $('tl-to').textContent = '';
  if (hist.status !== 'fulfilled') {
    body.replaceChildren();
    note.textContent = hist.reason.status === 503 ? 'History needs PostgreSQL (no history table configured).' : 'history: ' + hist.reason.message;
    return;
  }
  const h = hist.value;
  note.textContent = h.changes.length === 0 ? 'No status change in this window.' :
    h.changes.length + (h.changes.length === 1 ? ' change' : ' changes') + (h.truncated ? ' (the newest; older ones not shown)' : '');
  body.replaceChildren(...h.changes.map((c) => el('tr', null,
    el('td', { class: 'st-' + c.status }, c.status), el('td', null, fmtTime(c.at)), el('td', null, c.cause))));
  if (up.status !== 'fulfilled') return;
  // Timeline: the status at the window's start (from uptime), then each
  // change, oldest first. With a truncated history the start is unknown.
  const u = up.value, from = new Date(u.from).getTime(), to = new Date(u.to).getTime();
  if (!(to > from)) return;
  $('tl-from').textContent = fmtTime(u.from);
  $('tl-to').textContent = fmtTime(u.to);
  const W = 600, x = (t) => Math.min(W, Math.max(0, (t - from) / (to - from) * W));
  let status = h.truncated ? 'unknown' : u.status_at_from, start = from;
  const seg = (end) => {
    if (end > start) tl.append(svg('rect', { class: status, x: x(start).toFixed(2), y: 0, width: Math.max(0.5, x(end) - x(start)).toFixed(2), height: 28 }));
  };
  for (const c of h.changes.slice().reverse()) {
    const t = new Date(c.at).getTime();
    seg(t);
    status = c.status; start = Math.max(start, t);
  }
  seg(to);
}

// ---- device controls -----------------------------------------------------

// control runs one write on the device shown and says how it went; a 202
// (another node owns the device) is applied there, a moment later.
async function control(what, method, path, body) {
  const id = current, msg = $('dev-control-msg');
  if (!id) return;
  msg.textContent = what + '…';
  try {
    const r = await request(method, 'v1/devices/' + encodeURIComponent(id) + path, body);
    msg.textContent = what + ': done' + (r && r.forwarded ? ' (sent to the node that owns ' + id + ')' : '') + '.';
  } catch (e) {
    msg.textContent = what + ' failed: ' + e.message;
  }
  refreshDevice();
}

let disarm = null; // the timer that disarms the decommission button

function decommissionClicked() {
  const b = $('decommission');
  if (!b.classList.contains('armed')) { // first click: ask again
    b.classList.add('armed');
    b.textContent = 'Confirm: forget ' + current;
    disarm = setTimeout(resetDecommission, 5000);
    return;
  }
  resetDecommission();
  control('decommission', 'DELETE', '');
}

function resetDecommission() {
  clearTimeout(disarm);
  const b = $('decommission');
  b.classList.remove('armed');
  b.textContent = 'Decommission…';
}

// ---- offline longest -----------------------------------------------------

async function pollOffline() {
  const min = $('offline-min').value;
  const q = 'v1/devices?status=offline&limit=20' + (min ? '&offline_longer_than=' + min : '');
  try {
    const l = await api(q);
    $('offline-note').textContent = l.matched.toLocaleString('en-US') + ' devices' + (l.matched > l.devices.length ? ', longest ' + l.devices.length + ' shown' : '');
    $('offline-list').replaceChildren(...l.devices.map((d) => el('tr', null,
      el('td', null, devLink(d.id)), el('td', null, fmtDur(d.for_seconds)), el('td', null, fmtTime(d.since)), el('td', null, fmtTime(d.last_seen)))));
  } catch (e) {
    $('offline-note').textContent = e.message;
  }
}

// ---- live transitions (server-sent events) -------------------------------
//
// EventSource cannot send an Authorization header, so the stream is read
// with fetch and parsed here (the text/event-stream format: "field: value"
// lines, an empty line ends an event). It reconnects with backoff and sends
// Last-Event-ID when the server gave ids.

let eventsAbort = null, lastEventId = '', eventsBackoff = 1000;

function setEventsState(s) { $('events-state').textContent = s; }

async function streamEvents() {
  const ctrl = new AbortController();
  eventsAbort = ctrl;
  const headers = { Accept: 'text/event-stream' };
  if (token) headers.Authorization = 'Bearer ' + token;
  if (lastEventId) headers['Last-Event-ID'] = lastEventId;
  let retryIn = eventsBackoff;
  try {
    const res = await fetch('v1/events', { headers, cache: 'no-store', signal: ctrl.signal });
    if (res.status === 404 || res.status === 405 || res.status === 501) {
      setEventsState('not available on this server');
      retryIn = 60000;
    } else if (res.status === 401) {
      setEventsState('token required');
      $('auth-banner').hidden = false;
      retryIn = 10000;
    } else if (!res.ok || !res.body) {
      setEventsState('error ' + res.status);
    } else {
      setEventsState('live');
      eventsBackoff = 1000;
      await readEvents(res.body, ctrl.signal);
      setEventsState('reconnecting…');
      retryIn = 1000;
    }
  } catch (e) {
    if (ctrl.signal.aborted) return;
    setEventsState('disconnected, retrying');
  }
  if (ctrl.signal.aborted) return;
  eventsBackoff = Math.min(30000, eventsBackoff * 2);
  setTimeout(() => { if (eventsAbort === ctrl) streamEvents(); }, retryIn);
}

function restartEvents() {
  if (eventsAbort) eventsAbort.abort();
  eventsBackoff = 1000;
  streamEvents();
}

async function readEvents(stream, signal) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '', data = [], name = '';
  signal.addEventListener('abort', () => reader.cancel().catch(() => {}));
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    for (;;) {
      const i = buf.search(/\r\n|\r|\n/);
      if (i < 0 || (buf[i] === '\r' && i === buf.length - 1)) break; // wait: "\r" may precede "\n"
      const line = buf.slice(0, i);
      buf = buf.slice(i + (buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1));
      if (line === '') {
        if (data.length) onEvent(name || 'message', data.join('\n'));
        data = []; name = '';
        continue;
      }
      if (line[0] === ':') continue; // comment (keep-alive)
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let val = c < 0 ? '' : line.slice(c + 1);
      if (val[0] === ' ') val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'event') name = val;
      else if (field === 'id' && !val.includes('\0')) lastEventId = val;
    }
    if (buf.length > 1 << 20) buf = ''; // a broken stream must not grow without bound
  }
}

// onEvent shows one event of the events package: {"type":"status",...} per
// transition, removed per decommission, and the alerts offline_alert,
// mass_offline, mass_offline_recovered, flapping and flapping_stopped. A
// stream without "type" is read as transitions.
function onEvent(name, data) {
  let ev;
  try { ev = JSON.parse(data); } catch (e) { return; }
  if (!ev || typeof ev !== 'object') return;
  const list = $('events');
  const type = ev.type || (name !== 'message' ? name : 'status');
  const time = el('span', { class: 'time' }, fmtTime(ev.at));
  let li;
  switch (type) {
    case 'status':
      if (ev.id == null || !ev.status) return;
      li = el('li', null, time, devLink(String(ev.id)),
        el('span', { class: 'st-' + (ev.previous || 'unknown') }, ev.previous || 'unknown'), '→',
        el('span', { class: 'st-' + ev.status }, ev.status),
        el('span', { class: 'note' }, (ev.cause || '') + (ev.coalesced ? ' (coalesced)' : '')));
      if (String(ev.id) === current) refreshDevice();
      break;
    case 'removed':
      li = el('li', { class: 'alert' }, time, el('strong', null, 'removed'), devLink(String(ev.id)),
        el('span', { class: 'note' }, 'decommissioned, was ' + (ev.previous || 'unknown')));
      if (String(ev.id) === current) refreshDevice();
      break;
    case 'flapping':
    case 'flapping_stopped':
      li = el('li', { class: 'flapping' }, time, el('strong', null, type === 'flapping' ? 'flapping' : 'stable again'),
        devLink(String(ev.id)), el('span', { class: 'note' }, type === 'flapping' ? 'changes since ' + fmtTime(ev.since) :
          'after ' + fmtDur(ev.duration_seconds) + ' of flapping'));
      if (String(ev.id) === current) refreshDevice();
      break;
    case 'offline_alert':
      li = el('li', { class: 'alert' }, time, el('strong', null, 'offline alert'), devLink(String(ev.id)),
        el('span', null, 'offline for ' + fmtDur(ev.offline_seconds)));
      break;
    case 'mass_offline':
      li = el('li', { class: 'alert' }, time, el('strong', null, 'mass offline'),
        el('span', null, (ev.count || 0).toLocaleString('en-US') + ' of ' + (ev.fleet || 0).toLocaleString('en-US') +
          ' devices (' + fmtPct(ev.share) + ') within ' + fmtDur(ev.window_seconds)),
        el('span', { class: 'note' }, ev.incident || ''));
      break;
    case 'mass_offline_recovered':
      li = el('li', { class: 'recovered' }, time, el('strong', null, 'recovered'),
        el('span', null, (ev.recovered || 0).toLocaleString('en-US') + ' of ' + (ev.count || 0).toLocaleString('en-US') +
          ' back after ' + fmtDur(ev.duration_seconds) + ', ' + (ev.still_offline || 0) + ' still offline'),
        el('span', { class: 'note' }, ev.incident || ''));
      break;
    default:
      li = el('li', null, time, el('strong', null, type), el('span', { class: 'note' }, JSON.stringify(ev).slice(0, 300)));
  }
  list.prepend(li);
  while (list.childElementCount > MAX_EVENTS) list.lastElementChild.remove();
}

// ---- wiring --------------------------------------------------------------

// every runs fn now and then every ms, never two at once, skipping while
// the tab is hidden.
function every(ms, fn) {
  let busy = false;
  const tick = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await fn(); } finally { busy = false; }
  };
  tick();
  setInterval(tick, ms);
  return tick;
}

let refreshAll = () => {};

document.addEventListener('DOMContentLoaded', () => {
  $('token').value = token;
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('token').value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
    refreshAll();
  });
  $('token-clear').addEventListener('click', () => {
    token = ''; $('token').value = ''; sessionStorage.removeItem(TOKEN_KEY);
    refreshAll();
  });
  $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); selectDevice($('search-id').value); });
  $('window').addEventListener('change', () => refreshDevice());
  $('timeout-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const sec = Number($('timeout-input').value);
    control('timeout ' + fmtDur(sec), 'PUT', '/timeout', { timeout_seconds: sec });
  });
  $('timeout-reset').addEventListener('click', () => control('timeout reset', 'DELETE', '/timeout'));
  $('decommission').addEventListener('click', decommissionClicked);

  const stats = every(STATS_EVERY, pollStats);
  const offline = every(OFFLINE_EVERY, pollOffline);
  const fleet = every(FLEET_EVERY, pollFleet);
  every(DEVICE_EVERY, refreshDevice);
  $('offline-min').addEventListener('change', offline);
  refreshAll = () => { prevStats = null; stats(); offline(); fleet(); refreshDevice(); restartEvents(); };

  const m = /^#device=(.+)$/.exec(location.hash);
  if (m) { try { selectDevice(decodeURIComponent(m[1])); } catch (e) { /* bad escape */ } }
  streamEvents();
});
