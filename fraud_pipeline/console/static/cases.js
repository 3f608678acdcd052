'use strict';
// The console's sign-in, case queue, lists and the rules' precision from labels.
// Uses console.js's helpers ($, el, td, num, fillBody, onRow, markSelected, getJSON...).
// Every value from the server is inserted as text, never as HTML. Every write sends
// the session's CSRF token; the server also checks its Origin.

const ROLE_RANK = {viewer: 0, analyst: 1, admin: 2};
const CASES_POLL_MS = 2000;

let session = {accounts: false, user: null, role: null, csrf: null};
let selectedCase = null;
let currentCase = null;
let casesTimer = null;
let knownLists = [];

const may = (role) => session.user != null && ROLE_RANK[session.role] >= ROLE_RANK[role];

// POSTs JSON with the CSRF token; throws an Error carrying the server's `error` text.
async function postJSON(url, body = {}) {
  let resp;
  try {
    resp = await fetch(url, {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRF-Token': session.csrf || ''},
      body: JSON.stringify(body)});
  } catch (err) {
    throw new Error(`Cannot reach the console server (${err.message}).`);
  }
  let data = null;
  try { data = await resp.json(); } catch { /* not JSON */ }
  if (!resp.ok) throw new Error(data && typeof data.error === 'string' ? data.error : `HTTP ${resp.status}`);
  return data;
}

// ---- session ---------------------------------------------------------------

// Resolves true when the page may show the console (signed in, or no accounts configured).
async function startSession() {
  try {
    session = await getJSON('/api/session');
  } catch (err) {
    renderErrors([err.message]);
    return false;
  }
  $('who').hidden = !session.user;
  $('who-name').textContent = session.user || '';
  $('who-role').textContent = session.role || '';
  for (const e of document.querySelectorAll('.admin-only')) e.hidden = !may('admin');
  if (session.accounts && !session.user) {
    document.querySelector('nav').hidden = true;
    $('status').textContent = 'signed out';
    showView('sign-in');
    $('sign-in-user').focus();
    return false;
  }
  loadLists();
  return true;
}

async function signIn(ev) {
  ev.preventDefault();
  showError($('sign-in-error'), '');
  try {
    await postJSON('/api/login', {user: $('sign-in-user').value, password: $('sign-in-password').value});
  } catch (err) {
    showError($('sign-in-error'), err.message);
    return;
  }
  if (location.hash === '#sign-in') location.hash = 'cases';
  location.reload();
}

async function signOut() {
  try { await postJSON('/api/logout'); } catch { /* signed out anyway */ }
  location.reload();
}

// ---- the case queue --------------------------------------------------------

const claimText = (c) => (c ? `${c.user}` : 'open');

async function loadCases() {
  clearTimeout(casesTimer);
  if (currentView !== 'cases') return;
  try {
    const data = await getJSON('/api/cases');
    const forgotten = data.forgotten ? `${data.forgotten} of the oldest cases forgotten: the cases read outgrew the console's memory bound` : '';
    showError($('cases-error'), data.error || forgotten);
    renderCases(data);
    if (selectedCase) await loadCase(selectedCase);
  } catch (err) {
    if (err.status === 401) { location.reload(); return; }  // signed out (or the console restarted): sign in again
    showError($('cases-error'), err.message);
  }
  casesTimer = setTimeout(loadCases, CASES_POLL_MS);
}

function renderCases(data) {
  $('cases-count').textContent = `(${data.open.length})`;
  fillBody($('cases-table'), data.open.map((c) => el('tr', {
    class: c.id === selectedCase ? 'case selected' : 'case', 'data-case': c.id, tabindex: 0},
  td(hms(c.timestamp_ms)), td(plain(c.account)), num(fmtNum(c.amount)), td(plain(c.to)), td(plain(c.type)),
  num(fmtNum(c.score)), td(claimText(c.claim), c.claim ? 'claimed' : null))), 'No payment waits for review.');
  fillBody($('resolved-table'), data.resolved.map((c) => el('tr', {
    class: c.id === selectedCase ? 'case selected' : 'case', 'data-case': c.id, tabindex: 0},
  td(hms(c.label.at_ms)), td(plain(c.account)), num(fmtNum(c.amount)), td(c.label.verdict, `verdict-${c.label.verdict}`),
  td(c.label.analyst), td(truncate(c.label.note, 60)))), 'No case resolved yet.');
}

async function loadCase(id) {
  try {
    renderCase(await getJSON(`/api/cases/${encodeURIComponent(id)}`));
  } catch (err) {
    showCaseMessage(err.message, true);
  }
}

function showCaseMessage(text, error = false) {
  const box = $('case-message');
  box.textContent = text || '';
  box.hidden = !text;
  box.classList.toggle('error', error);
}

function renderCase(c) {
  const sameCase = currentCase && currentCase.id === c.id;
  currentCase = c;
  $('case-empty').hidden = true;
  $('case-body').hidden = false;
  $('case-title').textContent = `Case ${c.id}`;
  const mine = c.claim && c.claim.user === session.user;
  $('case-claim').textContent = c.label ? `resolved by ${c.label.analyst}`
    : c.claim ? `claimed by ${c.claim.user}` : 'not claimed';
  $('case-claim').className = c.claim && !mine ? 'locked' : '';
  $('case-claim-go').hidden = !may('analyst') || Boolean(c.label) || mine;
  $('case-claim-go').disabled = Boolean(c.claim && !mine);
  $('case-release-go').hidden = !mine || Boolean(c.label);
  $('resolve-form').hidden = !mine || Boolean(c.label);
  $('case-payment').replaceChildren(...Object.entries(c.payment).flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, plain(v))]));
  const d = c.decision || {};
  const reasons = (d.rules || []).map((r) => el('li', {class: r.mode === 'shadow' ? 'shadow' : null}, ruleReason(r)));
  reasons.unshift(el('li', {class: 'score'}, `score ${fmtNum(d.score)} (review from ${fmtNum(d.review_threshold)}, decline from ${fmtNum(d.threshold)})`));
  for (const hit of d.lists || []) reasons.push(el('li', {}, `list ${hit.list} (${hit.level}): ${hit.field}=${hit.value}`));
  $('case-reasons').replaceChildren(...reasons);
  const lists = (c.lists || []).map((l) => el('li', {}, `${l.list} (${l.level}): ${l.field}=${l.value}, by ${l.by}` +
    (l.expires_ms ? `, until ${iso(l.expires_ms)}` : '')));
  $('case-lists').replaceChildren(...(lists.length ? lists : [el('li', {class: 'none'}, 'on no list')]));
  fillBody($('case-history'), (c.history || []).map((h) => el('tr', {},
    td(hms(h.timestamp_ms)), num(fmtNum(h.payment.AMOUNT)), td(plain(h.payment.TO)), td(plain(h.payment.PAYMENT_TYPE)),
    td(h.outcome, `outcome-${h.outcome}`))), 'No other payment of this account in view.');
  const label = $('case-label');
  label.hidden = !c.label;
  if (c.label) label.textContent = `${c.label.verdict} · ${c.label.analyst} · ${iso(c.label.at_ms)} · ${c.label.note || ''}`;
  if (!sameCase) {
    $('resolve-note').value = '';
    const enabled = (d.rules || []).filter((r) => r.mode === 'enabled');
    $('resolve-snooze-rule').replaceChildren(el('option', {value: ''}, 'none'),
      ...enabled.map((r) => el('option', {value: r.id}, `${r.id}@${r.version}`)));
    fillResolveLists(c);
  }
}

// The lists an admin may add the case's payment to, with the payment's value for each list's field.
function fillResolveLists(c) {
  const box = $('resolve-list-box');
  box.hidden = !may('admin');
  if (!may('admin')) return;
  $('resolve-list').replaceChildren(el('option', {value: ''}, 'none'),
    ...knownLists.map((l) => el('option', {value: l.name, 'data-field': l.field}, `${l.name} (${l.level}, ${l.field})`)));
  fillResolveValue();
}

function fillResolveValue() {
  const chosen = knownLists.find((l) => l.name === $('resolve-list').value);
  const value = chosen && currentCase ? currentCase.payment[chosen.field] : null;
  $('resolve-value').replaceChildren(...(value == null ? [] : [el('option', {value: String(value)}, `${chosen.field}=${value}`)]));
}

async function caseAction(path, body) {
  if (!currentCase) return;
  showCaseMessage('');
  try {
    if (body === undefined) await postJSON(`/api/cases/${encodeURIComponent(currentCase.id)}/${path}`);
    else await postJSON(`/api/cases/${encodeURIComponent(currentCase.id)}/${path}`, body);
    if (path === 'resolve') showCaseMessage(`resolved as ${body.verdict}`);
  } catch (err) {
    showCaseMessage(err.message, true);
  }
  await loadCases();  // the queue and the case as they are now
}

function resolveCase(ev) {
  ev.preventDefault();
  const body = {verdict: $('resolve-verdict').value, note: $('resolve-note').value};
  if ($('resolve-snooze-rule').value) {
    body.snooze_rule = $('resolve-snooze-rule').value;
    body.snooze_for = $('resolve-snooze-for').value;
  }
  if (may('admin') && $('resolve-list').value) {
    body.list = $('resolve-list').value;
    body.value = $('resolve-value').value;
    body.ttl = $('resolve-ttl').value;
  }
  caseAction('resolve', body);
}

// ---- lists -----------------------------------------------------------------

async function loadLists() {
  try {
    knownLists = await getJSON('/api/lists');
    showError($('lists-error'), '');
    renderLists();
  } catch (err) {
    showError($('lists-error'), err.message);
  }
}

function renderLists() {
  const rows = [];
  for (const l of knownLists) {
    if (!l.entries.length) rows.push(el('tr', {'data-list': l.name}, td(l.name), td(l.level), td(l.field), td('(empty)', 'none'), td(''), td(''), td(''), td('')));
    for (const e of l.entries) {
      const remove = may('admin') ? el('button', {type: 'button', class: 'list-remove', 'data-list': l.name, 'data-value': e.value}, 'Remove') : '';
      rows.push(el('tr', {'data-list': l.name, 'data-value': e.value, class: e.live ? null : 'expired'},
        td(l.name), td(l.level + (l.overridable ? ', overridable' : '')), td(l.field), td(e.value), td(e.by), td(e.reason),
        td(e.expires ? `${e.expires}${e.live ? '' : ' (expired)'}` : 'never'), td(remove)));
    }
  }
  fillBody($('lists-table'), rows, 'No lists: create one with fraud_rules.py lists create.');
  const chosen = $('list-name').value;
  $('list-name').replaceChildren(...knownLists.map((l) => el('option', {value: l.name}, `${l.name} (${l.level}, ${l.field})`)));
  if (chosen) $('list-name').value = chosen;
}

async function addToList(ev) {
  ev.preventDefault();
  showError($('lists-error'), '');
  try {
    await postJSON(`/api/lists/${encodeURIComponent($('list-name').value)}/add`,
      {value: $('list-value').value, ttl: $('list-ttl').value, reason: $('list-reason').value});
    $('list-value').value = '';
  } catch (err) {
    showError($('lists-error'), err.message);
  }
  await loadLists();
}

async function removeFromList(button) {
  try {
    await postJSON(`/api/lists/${encodeURIComponent(button.dataset.list)}/remove`, {value: button.dataset.value});
  } catch (err) {
    showError($('lists-error'), err.message);
  }
  await loadLists();
}

// ---- the rules measured by labels -------------------------------------------

async function loadPrecision() {
  const k = Math.max(1, Number($('precision-k').value) || 100);
  try {
    const p = await getJSON(`/api/precision?k=${k}`);
    $('precision-k-shown').textContent = String(p.k);
    $('precision-at-k').textContent = p.precision_at_k == null ? '–' : p.precision_at_k.toFixed(3);
    $('precision-labels').textContent = fmtInt(p.labels);
    fillBody($('precision-table'), p.rules.map((r) => el('tr', {'data-rule': r.rule},
      td(r.rule), num(fmtInt(r.labelled)), num(fmtInt(r.fraud)), num(r.precision == null ? '–' : r.precision.toFixed(3)))),
    'No labels yet: resolve cases in the Cases view.');
  } catch (err) {
    fillBody($('precision-table'), [], err.message);
  }
}

function initCases() {
  $('sign-in-form').addEventListener('submit', signIn);
  $('sign-out').addEventListener('click', signOut);
  onRow($('cases-table'), (tr) => { selectedCase = tr.dataset.case; markSelected($('cases-table'), tr); loadCase(selectedCase); });
  onRow($('resolved-table'), (tr) => { selectedCase = tr.dataset.case; markSelected($('resolved-table'), tr); loadCase(selectedCase); });
  $('case-claim-go').addEventListener('click', () => caseAction('claim'));
  $('case-release-go').addEventListener('click', () => caseAction('release'));
  $('resolve-form').addEventListener('submit', resolveCase);
  $('resolve-list').addEventListener('change', fillResolveValue);
  $('list-add-form').addEventListener('submit', addToList);
  $('lists-table').addEventListener('click', (e) => {
    const b = e.target.closest('button.list-remove');
    if (b) removeFromList(b);
  });
  $('precision-k').addEventListener('change', loadPrecision);
}
