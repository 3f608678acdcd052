'use strict';
// Fraud console front-end: renders the live state stream (/api/events) and the
// REST views (/api/brokers, /api/topics, /api/groups, /api/messages); cases.js
// adds the sign-in, the case queue, the lists and the rules' precision.
// Every value from the server is inserted as text, never as HTML.

const VIEWS = ['pipeline', 'alerts', 'cases', 'lists', 'rules', 'dead-letters', 'brokers', 'topics', 'groups', 'messages',
  'sign-in'];
const STREAMS = [['payments', '#3567c9'], ['fraud', '#cc3d33'], ['legit', '#2b8f55'], ['dead_letters', '#b97c0c']];
const TRENDS = {falling: '▼ falling', growing: '▲ growing', steady: '● steady'};
const STALE_MS = 15000;   // no state event for this long: reconnect

const $ = (id) => document.getElementById(id);

// ---- DOM helpers -----------------------------------------------------------

// Creates an element; attributes are set with setAttribute, children appended as nodes or text.
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v != null && v !== false) e.setAttribute(k, String(v));
  for (const c of children.flat(Infinity)) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}
const td = (content, cls) => el('td', {class: cls}, content);
const num = (content, cls) => td(content, cls ? `num ${cls}` : 'num');

// Replaces the table body with rows, or a single "empty" row spanning all columns.
function fillBody(table, rows, emptyText) {
  const body = el('tbody');
  if (rows.length) body.append(...rows);
  else body.append(el('tr', {class: 'empty'}, el('td', {colspan: table.tHead.rows[0].cells.length}, emptyText)));
  if (table.tBodies[0]) table.tBodies[0].replaceWith(body); else table.append(body);
}

// Builds a complete table; a header label starting with '#' marks a numeric column.
function makeTable(cls, headers, rows, emptyText) {
  const head = headers.map((h) => (h.startsWith('#') ? el('th', {class: 'num'}, h.slice(1)) : el('th', {}, h)));
  const t = el('table', {class: cls}, el('thead', {}, el('tr', {}, head)));
  fillBody(t, rows, emptyText);
  return t;
}

function showError(box, message) {
  box.textContent = message || '';
  box.hidden = !message;
}

// Calls fn(tr) when a selectable body row (tabindex) is clicked or activated with Enter.
function onRow(table, fn) {
  table.addEventListener('click', (e) => {
    const tr = e.target.closest('tbody tr[tabindex]');
    if (tr) fn(tr);
  });
  table.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && e.target.matches('tbody tr[tabindex]')) fn(e.target);
  });
}

function markSelected(table, tr) {
  for (const r of table.querySelectorAll('tbody tr.selected')) r.classList.remove('selected');
  tr.classList.add('selected');
}

// ---- formatting ------------------------------------------------------------

const pad2 = (n) => String(n).padStart(2, '0');
const plain = (v) => (v == null || v === '' ? '–' : String(v));
const fmtInt = (n) => (n == null ? '–' : Math.round(n).toLocaleString('en-US'));
const fmt1 = (n) => (n == null ? '–' : Number(n).toFixed(1));
const fmtMs = (n) => (n == null ? '–' : n < 10 ? Number(n).toFixed(1) : fmtInt(n));
const fmtPct = (r) => (r == null ? '–' : `${(r * 100).toFixed(1)}%`);
const fmtNum = (n) => (typeof n === 'number' ? n.toLocaleString('en-US', {maximumFractionDigits: 2}) : plain(n));
const list = (xs) => (Array.isArray(xs) && xs.length ? xs.join(', ') : '–');
const truncate = (s, n) => (s == null ? '–' : s.length > n ? `${s.slice(0, n)}…` : s);

function hms(ms) {
  if (ms == null) return '–';
  const d = new Date(ms);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function iso(ms) {
  const d = new Date(ms);
  return ms == null || Number.isNaN(d.getTime()) ? null : d.toISOString();
}

// Value for a datetime-local input, in local time.
function localInputValue(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}` +
    `T${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

// ---- REST ------------------------------------------------------------------

// GETs JSON; on failure throws an Error carrying the server's `error` text.
async function getJSON(url) {
  let resp;
  try {
    resp = await fetch(url, {headers: {Accept: 'application/json'}});
  } catch (err) {
    throw new Error(`Cannot reach the console server (${err.message}).`);
  }
  let body = null;
  try { body = await resp.json(); } catch { /* body is not JSON */ }
  if (!resp.ok) {
    const error = new Error(body && typeof body.error === 'string' ? body.error : `HTTP ${resp.status} ${resp.statusText}`);
    error.status = resp.status;
    throw error;
  }
  if (body == null) throw new Error('The server sent a response that is not JSON.');
  return body;
}

// ---- views -----------------------------------------------------------------

let currentView = null;

function showView(name) {
  if (!VIEWS.includes(name)) name = 'pipeline';
  currentView = name;
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  for (const b of document.querySelectorAll('nav button[data-view]')) {
    const on = b.dataset.view === name;
    b.classList.toggle('active', on);
    if (on) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
  }
  const onShow = {pipeline: drawCharts, brokers: () => loadRetrying('brokers', loadBrokers),
    topics: () => loadRetrying('topics', loadTopics), groups: () => loadRetrying('groups', loadGroups),
    messages: loadTopicChoices, cases: loadCases, lists: loadLists, rules: loadPrecision};
  onShow[name]?.();
}

const RETRY_MS = 3000;

// Loads a cluster view (load returns an error message or null): a failure (a busy broker, a topic deleted while it
// was read) stays shown and is tried again every RETRY_MS while the view is on screen.
async function loadRetrying(name, load) {
  const error = await load();
  if (error && currentView === name) setTimeout(() => { if (currentView === name) loadRetrying(name, load); }, RETRY_MS);
}

// ---- live state stream -----------------------------------------------------

let lastState = null;
let source = null;
let watchdog = null;
const lastJSON = {};

// True when data differs from what was last rendered under key.
function changed(key, data) {
  const j = JSON.stringify(data ?? null);
  if (lastJSON[key] === j) return false;
  lastJSON[key] = j;
  return true;
}

function setStatus(live, ms) {
  const s = $('status');
  s.textContent = live ? `live · updated ${hms(ms ?? Date.now())}` : 'disconnected, retrying…';
  s.classList.toggle('error', !live);
  s.classList.toggle('live', live);
}

function armWatchdog() {
  clearTimeout(watchdog);
  watchdog = setTimeout(() => { setStatus(false); connect(); }, STALE_MS);
}

function connect() {
  if (source) source.close();
  const es = new EventSource('/api/events');
  source = es;
  armWatchdog();
  es.addEventListener('state', (ev) => {
    let state;
    try { state = JSON.parse(ev.data); } catch { return; }
    lastState = state;
    setStatus(true, state.updated_ms);
    armWatchdog();
    render(state);
  });
  es.onerror = () => {
    if (es !== source) return;
    setStatus(false);
    // EventSource retries by itself unless the server refused the stream outright.
    if (es.readyState === EventSource.CLOSED) setTimeout(() => { if (es === source) connect(); }, 3000);
  };
}

function render(s) {
  if (changed('errors', s.errors)) renderErrors(s.errors || []);
  renderTiles(s);
  drawCharts();
  if (changed('groups', s.groups)) renderLag(s.groups || []);
  if (changed('alerts', s.alerts)) renderAlerts(s.alerts || []);
  if (changed('rules', s.rules)) renderRules(s.rules || []);
  if (changed('dead_letters', s.dead_letters)) renderDeadLetters(s.dead_letters || []);
}

function renderErrors(errors) {
  const box = $('errors');
  box.replaceChildren(...errors.map((e) => el('div', {}, e)));
  box.hidden = !errors.length;
}

// ---- pipeline --------------------------------------------------------------

function renderTiles(s) {
  for (const [name] of STREAMS) {
    const id = name.replace('_', '-');
    $(`rate-${id}`).textContent = fmt1(s.rates?.[name]);
    $(`total-${id}`).textContent = fmtInt(s.totals?.[name]);
  }
  $('fraud-rate').textContent = fmtPct(s.fraud_rate);
  const latency = s.decision_latency;
  $('latency-card').hidden = !latency;
  if (latency) {
    $('latency-p50').textContent = fmtMs(latency.p50_ms);
    $('latency-p99').textContent = fmtMs(latency.p99_ms);
    $('latency-count').textContent = fmtInt(latency.count);
    $('latency-window').textContent = fmtInt(latency.window_s);
  }
}

function drawCharts() {
  const series = lastState?.series;
  if (!series || currentView !== 'pipeline') return;
  const step = series.step_s || 1;
  for (const [name, color] of STREAMS) drawChart($(`chart-${name.replace('_', '-')}`), series[name] || [], step, color);
}

// Smallest of 1, 2, 2.5, 5 × 10^k that is at least v.
function niceMax(v) {
  if (!(v > 0)) return 1;
  const e = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * e).find((m) => m >= v * 0.9999);
}

// Line chart of per-second rates (count / step) per bucket, oldest on the left.
function drawChart(canvas, counts, stepS, color) {
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  if (!w || !h) return;
  const dpr = window.devicePixelRatio || 1;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);

  const rates = counts.map((c) => (Number(c) || 0) / stepS);
  const top = niceMax(Math.max(0, ...rates));
  const L = 44, R = 8, T = 8, B = 18;
  const pw = w - L - R, ph = h - T - B;
  const spanS = Math.max(counts.length * stepS, 1);

  ctx.font = '10px system-ui, sans-serif';
  ctx.fillStyle = '#6b7280';
  ctx.strokeStyle = '#e3e6eb';
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const y = Math.round(T + ph * (1 - f)) + 0.5;
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(L + pw, y); ctx.stroke();
  }
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  ctx.fillText(`${+top.toPrecision(3)}/s`, L - 5, T);
  ctx.fillText('0', L - 5, T + ph);
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let m = 0; m * 60 <= spanS; m += 5) ctx.fillText(String(m), L + pw * (1 - (m * 60) / spanS), T + ph + 4);

  if (!rates.length) return;
  const x = (i) => L + (pw * (i + 0.5)) / rates.length;   // bucket centre
  const y = (r) => T + ph * (1 - r / top);
  ctx.beginPath();
  rates.forEach((r, i) => (i ? ctx.lineTo(x(i), y(r)) : ctx.moveTo(x(i), y(r))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.lineJoin = 'round';
  ctx.stroke();
  ctx.lineTo(x(rates.length - 1), T + ph);
  ctx.lineTo(x(0), T + ph);
  ctx.closePath();
  ctx.globalAlpha = 0.12;
  ctx.fillStyle = color;
  ctx.fill();
  ctx.globalAlpha = 1;
}

const trendCell = (t) => el('td', {class: `trend trend-${t}`}, TRENDS[t] ?? plain(t));

function renderLag(groups) {
  const rows = [];
  for (const g of groups) {
    rows.push(el('tr', {class: 'group-total', 'data-group': g.group},
      td(g.group), el('td', {colspan: 4}, `total · ${g.state ?? 'unknown state'}`),
      num(plain(g.lag), 'lag'), trendCell(g.trend)));
    for (const p of g.partitions || []) {
      rows.push(el('tr', {'data-group': g.group, 'data-topic': p.topic, 'data-partition': p.partition},
        td(g.group), td(p.topic), num(p.partition), num(plain(p.committed)), num(plain(p.end)),
        num(plain(p.lag), 'lag'), trendCell(p.trend)));
    }
  }
  fillBody($('lag-table'), rows, 'No consumer groups.');
}

// ---- alerts ----------------------------------------------------------------

let alerts = [];
let selectedAlert = null;   // {partition, offset}

const isSelectedAlert = (a) =>
  selectedAlert != null && a.partition === selectedAlert.partition && a.offset === selectedAlert.offset;

const ruleReason = (r) => `${r.id}@${r.version}: ${r.reason ?? ''}${r.mode === 'shadow' ? ' (shadow)' : ''}`;

function renderAlerts(list) {
  alerts = list;
  fillBody($('alerts-table'), list.map((a) => {
    const p = a.payment || {};
    return el('tr', {class: isSelectedAlert(a) ? 'alert selected' : 'alert', 'data-partition': a.partition,
      'data-offset': a.offset, tabindex: 0},
    td(hms(a.timestamp_ms)), td(plain(p.ACCOUNT ?? a.key)), num(fmtNum(p.AMOUNT)), td(plain(p.TO)),
    td(plain(p.PAYMENT_TYPE)), num(fmtNum(a.score)),
    el('td', {class: 'reasons'}, (a.rules || []).map((r) => el('div', {class: r.mode === 'shadow' ? 'shadow' : null}, ruleReason(r)))));
  }), 'No fraud decisions in the last 15 minutes.');
}

// The whole record as shown in the detail pane.
function recordDetail(r) {
  let value = r.value;
  try { value = JSON.parse(r.value); } catch { /* keep the raw text */ }
  return {topic: r.topic, partition: r.partition, offset: r.offset, timestamp: iso(r.timestamp_ms), key: r.key,
    headers: Object.fromEntries(r.headers || []), value};
}

function selectAlert(tr) {
  const a = alerts.find((x) => String(x.partition) === tr.dataset.partition && String(x.offset) === tr.dataset.offset);
  if (!a) return;
  selectedAlert = {partition: a.partition, offset: a.offset};
  markSelected($('alerts-table'), tr);
  $('record-detail').textContent = JSON.stringify(recordDetail(a), null, 2);
}

// ---- rules and dead letters ------------------------------------------------

function renderRules(rules) {
  fillBody($('rules-table'), rules.map((r) => el('tr', {'data-rule': r.id},
    td(r.id), num(r.version), el('td', {}, el('span', {class: `badge badge-${r.mode}`}, r.mode)),
    num(fmtNum(r.weight)), td(plain(r.source)), num(plain(r.hits), 'hits'))), 'No rules loaded.');
}

function renderDeadLetters(items) {
  fillBody($('dead-letters-table'), items.map((d) => el('tr', {class: 'dead-letter', 'data-partition': d.partition,
    'data-offset': d.offset},
  el('td', {title: iso(d.timestamp_ms)}, hms(d.timestamp_ms)), td(plain(d.source)), td(plain(d.error), 'error-text'),
  td(plain(d.key)), el('td', {class: 'value', title: d.value}, truncate(d.value, 120)))), 'No dead letters.');
}

// ---- brokers ---------------------------------------------------------------

async function loadBrokers() {
  try {
    const d = await getJSON('/api/brokers');
    showError($('brokers-error'), '');
    $('cluster-id').textContent = plain(d.cluster_id);
    fillBody($('brokers-table'), (d.brokers || []).map((b) => el('tr', {'data-broker': b.id},
      num(b.id), td(b.host), num(b.port), td(b.controller ? 'yes' : '', b.controller ? 'controller' : null))),
    'No brokers reported.');
    return null;
  } catch (e) {
    showError($('brokers-error'), e.message);
    return e.message;
  }
}

// ---- topics ----------------------------------------------------------------

let topics = [];
let selectedTopic = null;

// Loads /api/topics into the topics table and the browse select; returns an error message or null.
async function loadTopics() {
  try {
    const d = await getJSON('/api/topics');
    topics = (d.topics || []).slice().sort((a, b) => (a.internal - b.internal) || a.name.localeCompare(b.name));
    showError($('topics-error'), '');
  } catch (e) {
    showError($('topics-error'), e.message);
    return e.message;
  }
  fillBody($('topics-table'), topics.map((t) => el('tr', {'data-topic': t.name, tabindex: 0,
    class: t.name === selectedTopic ? 'selected' : null},
  td([t.name, t.internal ? el('span', {class: 'badge badge-internal'}, 'internal') : null]),
  num(t.partitions), num(t.replication), num(t.under_replicated, t.under_replicated > 0 ? 'warn' : null),
  num(plain(t.first)), num(plain(t.last)), num(plain(t.size)))), 'No topics.');
  fillTopicSelect();
  renderTopicDetail();
  return null;
}

function renderTopicDetail() {
  const t = topics.find((x) => x.name === selectedTopic);
  $('topic-detail').hidden = !t;
  if (!t) return;
  $('partitions-title').textContent = t.name;
  fillBody($('partitions-table'), (t.partition_details || []).map((p) => el('tr', {'data-partition': p.partition},
    num(p.partition), num(plain(p.leader)), td(list(p.replicas)), td(list(p.isr)),
    td(p.under_replicated ? 'yes' : 'no', p.under_replicated ? 'warn' : null),
    num(plain(p.first)), num(plain(p.last)))), 'No partitions.');
}

// ---- consumer groups -------------------------------------------------------

let groups = [];
let selectedGroup = null;

async function loadGroups() {
  try {
    groups = (await getJSON('/api/groups')).groups || [];
    showError($('groups-error'), '');
  } catch (e) {
    showError($('groups-error'), e.message);
    return e.message;
  }
  fillBody($('groups-table'), groups.map((g) => el('tr', {'data-group': g.group, tabindex: 0,
    class: g.group === selectedGroup ? 'selected' : null},
  td(g.group), td(plain(g.state)), num((g.members || []).length), num(plain(g.lag), 'lag'))), 'No consumer groups.');
  renderGroupDetail();
  return null;
}

function renderGroupDetail() {
  const box = $('group-detail');
  const g = groups.find((x) => x.group === selectedGroup);
  box.hidden = !g;
  if (!g) { box.replaceChildren(); return; }
  const members = (g.members || []).map((m) => el('tr', {},
    td(plain(m.member_id)), td(plain(m.client_id)), td(plain(m.host)),
    td(list((m.partitions || []).map((p) => `${p.topic}-${p.partition}`)))));
  const offsets = (g.offsets || []).map((o) => el('tr', {'data-topic': o.topic, 'data-partition': o.partition},
    td(o.topic), num(o.partition), num(plain(o.committed)), num(plain(o.end)), num(plain(o.lag), 'lag')));
  box.replaceChildren(
    el('h2', {}, g.group),
    el('h3', {}, 'Members'),
    makeTable('members', ['member id', 'client id', 'host', 'partitions'], members, 'No active members.'),
    el('h3', {}, 'Offsets'),
    makeTable('offsets', ['topic', '#partition', '#committed', '#end', '#lag'], offsets, 'No committed offsets.'));
}

// ---- message browser -------------------------------------------------------

// Fills the topic select (internal topics last, in their own group), keeping the choice `want`.
function fillTopicSelect(want) {
  const sel = $('browse-topic');
  const keep = want ?? sel.value;
  const option = (t) => el('option', {value: t.name}, t.name);
  const internal = topics.filter((t) => t.internal);
  sel.replaceChildren(...topics.filter((t) => !t.internal).map(option));
  if (internal.length) sel.append(el('optgroup', {label: 'internal'}, internal.map(option)));
  if (keep && ![...sel.options].some((o) => o.value === keep)) sel.prepend(el('option', {value: keep}, keep));
  if (keep) sel.value = keep;
}

async function loadTopicChoices() {
  const error = await loadTopics();
  if (error) showError($('browse-error'), error);
}

// Opens the message browser on a topic, from its partition 0.
function browseTopic(name) {
  fillTopicSelect(name);
  $('browse-partition').value = '0';
  location.hash = 'messages';
}

function syncBrowseFrom() {
  const byTime = $('browse-from').value === 'time';
  document.querySelector('#browse-form .from-offset').hidden = byTime;
  document.querySelector('#browse-form .from-time').hidden = !byTime;
}

function messageBox(m) {
  const value = m.json != null ? JSON.stringify(m.json, null, 2) : (m.value ?? '(null value)');
  const headers = (m.headers || []).map(([k, v]) => [el('dt', {}, k), el('dd', {}, v ?? '')]);
  return el('div', {class: 'message', 'data-offset': m.offset},
    el('div', {class: 'meta'},
      `offset ${m.offset} · partition ${m.partition} · ${iso(m.timestamp_ms) ?? '–'} · key ${m.key ?? '–'}`),
    el('dl', {class: 'headers'}, headers),
    el('pre', {class: 'value'}, value));
}

async function browse(ev) {
  ev.preventDefault();
  const errBox = $('browse-error');
  const out = $('browse-results');
  const q = new URLSearchParams({
    topic: $('browse-topic').value, partition: $('browse-partition').value, count: $('browse-count').value,
  });
  if (!q.get('topic')) { showError(errBox, 'Choose a topic.'); return; }
  if ($('browse-from').value === 'time') {
    const ms = new Date($('browse-time').value).getTime();
    if (Number.isNaN(ms)) { showError(errBox, 'Choose a start time.'); return; }
    q.set('time', String(ms));
  } else {
    q.set('offset', $('browse-offset').value);
  }
  showError(errBox, '');
  $('browse-go').disabled = true;
  try {
    const d = await getJSON(`/api/messages?${q}`);
    const msgs = d.messages || [];
    out.replaceChildren(
      el('p', {id: 'browse-range', class: 'note'}, `partition ${d.partition}: offsets ${plain(d.first)}–${plain(d.end)}`),
      ...(msgs.length ? msgs.map(messageBox) : [el('p', {class: 'empty'}, 'No messages in that range.')]));
  } catch (e) {
    out.replaceChildren();
    showError(errBox, e.message);
  } finally {
    $('browse-go').disabled = false;
  }
}

// ---- start -----------------------------------------------------------------

function init() {
  document.querySelector('nav').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-view]');
    if (!b) return;
    if (location.hash === `#${b.dataset.view}`) showView(b.dataset.view);
    else location.hash = b.dataset.view;
  });
  window.addEventListener('hashchange', () => showView(location.hash.slice(1)));
  let resizing = 0;
  window.addEventListener('resize', () => {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(drawCharts);
  });

  onRow($('alerts-table'), selectAlert);
  onRow($('topics-table'), (tr) => {
    selectedTopic = tr.dataset.topic;
    markSelected($('topics-table'), tr);
    renderTopicDetail();
  });
  onRow($('groups-table'), (tr) => {
    selectedGroup = tr.dataset.group;
    markSelected($('groups-table'), tr);
    renderGroupDetail();
  });
  $('refresh-brokers').addEventListener('click', loadBrokers);
  $('refresh-topics').addEventListener('click', loadTopics);
  $('refresh-groups').addEventListener('click', loadGroups);
  $('topic-browse').addEventListener('click', () => { if (selectedTopic) browseTopic(selectedTopic); });
  $('browse-from').addEventListener('change', syncBrowseFrom);
  $('browse-form').addEventListener('submit', browse);
  $('browse-time').value = localInputValue(Date.now() - 15 * 60 * 1000);
  syncBrowseFrom();

  initCases();
  startSession().then((signedIn) => {
    if (!signedIn) return;
    showView(location.hash.slice(1));
    connect();
  });
}

// cases.js (loaded after this file) defines the session, the cases, lists and precision: start once both are in.
document.addEventListener('DOMContentLoaded', init);
