// End-to-end: a real three-node cluster (chorusd processes formed by chorusctl)
// and two users in headless Chromium on different nodes.
//
//   CHORUS_BIN=<dir with chorusd and chorusctl> node e2e/web.test.mjs
//
// Screenshots go to docs/screenshots/.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const bin = process.env.CHORUS_BIN || path.join(process.env.HOME, '.cache/chorus-target/debug');
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const shots = path.join(root, 'docs/screenshots');
const tmp = mkdtempSync(path.join(tmpdir(), 'chorus-e2e-'));
// Every node binds port 0 at its first start and reports its addresses in its
// ready file; a restart binds them again, where its peers know it.
const nodes = [1, 2, 3].map((id) => ({
  id,
  client: '127.0.0.1:0',
  raft: '127.0.0.1:0',
  ready: path.join(tmp, `node-${id}.ready`),
  proc: null,
}));
const url = (n) => `http://${n.client}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startNode(n) {
  const log = openSync(path.join(tmp, `node-${n.id}.log`), 'a');
  rmSync(n.ready, { force: true });
  n.proc = spawn(path.join(bin, 'chorusd'), [
    '--id', String(n.id), '--data-dir', path.join(tmp, `node-${n.id}`),
    '--client-addr', n.client, '--raft-addr', n.raft, '--no-bootstrap',
    '--ready-file', n.ready, '--heartbeat-ms', '50', '--election-ms', '300',
    // Node 3 registers only with an operator's invite code.
    ...(n.id === 3 ? ['--registration', 'invite'] : []),
  ], { stdio: ['ignore', 'ignore', log] });
  let exited = null;
  n.proc.once('exit', (code, signal) => { exited = `${code ?? signal}`; });
  const end = Date.now() + 20000;
  let ready = null;
  while (!ready) {
    if (exited !== null) throw new Error(`node ${n.id} exited (${exited}) before it served`);
    if (Date.now() > end) throw new Error(`node ${n.id} wrote no ready file`);
    try {
      ready = JSON.parse(readFileSync(n.ready, 'utf8'));
    } catch (e) {
      if (e.code !== 'ENOENT') throw e;
      await sleep(20);
    }
  }
  n.client = ready.client_addr;
  n.raft = ready.raft_addr;
}

function ctl(...args) {
  return execFileSync(path.join(bin, 'chorusctl'), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

async function waitFor(what, fn, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function status() {
  return JSON.parse(ctl('--node', nodes[0].raft, '--json', '--timeout', '2', 'cluster', 'status'));
}

// Each chart line of the cluster view, as chart -> series -> values (null: a gap).
function chartLines(page) {
  return page.$$eval('#charts figure', (figs) => Object.fromEntries(figs.map((f) => [
    f.id.replace('chart-', ''),
    Object.fromEntries([...f.querySelectorAll('path')].map((p) => [
      p.dataset.series, p.dataset.values.split(',').map((v) => (v === '' ? null : Number(v)))])),
  ])));
}
const sum = (vs) => vs.filter(Number.isFinite).reduce((a, b) => a + b, 0);

// Runs in a page: registers `user`, joins "general" over a WebSocket to the
// page's own node and sends `count` messages one after another; the acks seen.
async function sendThroughThisNode({ user, count }) {
  const post = (p, body) => fetch(p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  await post('/v1/users', { name: user, password: 'password-123' });
  const { token } = await (await post('/v1/sessions', { name: user, password: 'password-123' })).json();
  const ws = new WebSocket(`ws://${location.host}/v1/ws?token=${token}`);
  await new Promise((ok, fail) => { ws.onopen = ok; ws.onerror = () => fail(new Error('no WebSocket')); });
  const reply = (frame, wanted) => new Promise((ok, fail) => {
    const on = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === 'error') fail(new Error(`${f.code}: ${f.message}`));
      else if (!wanted(f)) return;
      else ok(f);
      ws.removeEventListener('message', on);
    };
    ws.addEventListener('message', on);
    ws.send(JSON.stringify(frame));
  });
  await reply({ type: 'join', room: 'general' }, (f) => f.type === 'joined');
  let acked = 0;
  for (let i = 0; i < count; i++) {
    const id = `${user}-${i}`;
    await reply({ type: 'send', room: 'general', id, text: `load ${i}` }, (f) => f.type === 'ack' && f.id === id);
    acked += 1;
    await new Promise((r) => setTimeout(r, 300));
  }
  ws.close();
  return acked;
}

let browser;
function cleanup() {
  for (const n of nodes) if (n.proc) n.proc.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

async function main() {
  for (const n of nodes) await startNode(n);
  ctl('cluster', 'init', ...nodes.map((n) => n.raft));
  await waitFor('a leader', async () => (await status()).leader);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const open = async (n, name, viewport) => {
    const ctx = await browser.newContext({ viewport });
    const page = await ctx.newPage();
    page.on('pageerror', (e) => console.error(`page error (${name}):`, e.message));
    await page.goto(url(n));
    await page.fill('#name', name);
    await page.fill('#password', 'password-123');
    await page.click('#register-btn');
    await page.waitForSelector('#conn.on');
    return page;
  };
  const ann = await open(nodes[0], 'ann', { width: 1000, height: 700 });
  const ben = await open(nodes[1], 'ben', { width: 390, height: 740 });   // phone-sized

  // Messages both ways, in room "general".
  await ann.fill('#text', 'hello from ann');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#messages li:has-text("hello from ann")');
  await ben.fill('#text', 'hi ann, ben here');
  await ben.press('#text', 'Enter');
  await ann.waitForSelector('#messages li:has-text("ben here")');

  // Presence and typing.
  await ann.waitForSelector('#online li:has-text("ben")');
  await ben.type('#text', 'typing…');
  await ann.waitForSelector('#typing:has-text("ben is typing")');
  await ben.fill('#text', '');

  // A direct message arrives without a join, with an unread count.
  await ann.fill('#dm-user', 'ben');
  await ann.press('#dm-user', 'Enter');
  await ann.fill('#text', 'psst, just you');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#rooms li:has-text("ann") .unread');
  await ben.click('#rooms li:has-text("ann")');
  await ben.waitForSelector('#messages li:has-text("psst, just you")');
  // Typing shows in a direct-message room too (the page tells of it at most
  // every 2 s, so ben keeps typing until ann's page shows it).
  await waitFor('ben typing in the DM', async () => {
    await ben.type('#text', 'o');
    return (await ann.textContent('#typing')).includes('ben is typing');
  }, 10000);
  await ben.fill('#text', '');
  await ben.click('#rooms li[data-room="general"]');
  mkdirSync(shots, { recursive: true });
  await ann.click('#rooms li[data-room="general"]');
  await ann.screenshot({ path: path.join(shots, 'chat.png') });

  // Ben's node dies: his page reconnects elsewhere and misses nothing.
  const benNode = nodes[1];
  const before = await ben.textContent('#node');
  benNode.proc.kill('SIGKILL');
  await ben.waitForSelector('#conn:not(.on)');
  for (let i = 1; i <= 5; i++) {
    await ann.fill('#text', `during outage ${i}`);
    await ann.press('#text', 'Enter');
    await sleep(100);
  }
  await ben.waitForSelector('#conn.on', { timeout: 20000 });
  assert.notEqual(await ben.textContent('#node'), before, 'ben reconnected to another node');
  await ben.waitForSelector('#messages li:has-text("during outage 5")', { timeout: 20000 });
  const texts = await ben.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
  for (let i = 1; i <= 5; i++) {
    assert.equal(texts.filter((t) => t.includes(`during outage ${i}`)).length, 1, `message ${i} exactly once: ${texts}`);
  }
  const seqs = await ben.$$eval('#messages li', (lis) => lis.map((li) => Number(li.dataset.seq)));
  assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `dense and ordered: ${seqs}`);

  // What happens to a message after it is posted, each change made on one
  // node and seen on another: a reply, a reaction, an edit, a delete.
  const act = async (page, text, which) => {
    const li = page.locator('#messages li', { hasText: text }).first();
    await li.hover();
    await li.locator(`.act.${which}`).click();
  };
  await act(ann, 'ben here', 'reply');
  await ann.waitForSelector('#compose:not([hidden])');
  await ann.fill('#text', 'welcome, ben');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#messages li:has-text("welcome, ben") .reply-to:has-text("ben here")');
  // The thread opens from its first message, read from the server.
  await act(ben, 'ben here', 'thread');
  await ben.waitForSelector('#search-title:has-text("Thread of")');
  await ben.waitForSelector('#search-results li:has-text("welcome, ben")');
  assert.equal(await ben.locator('#search-results li').count(), 2, 'the first message and its reply');
  await ben.screenshot({ path: path.join(shots, 'thread.png') });
  await ben.click('#search-close');
  await act(ben, 'hello from ann', 'react');
  await ann.waitForSelector('#messages li:has-text("hello from ann") .chip:has-text("👍 1")');
  await act(ann, 'hello from ann', 'edit');
  assert.equal(await ann.inputValue('#text'), 'hello from ann', 'the edit starts from the text');
  await ann.fill('#text', 'hello everyone');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#messages li:has-text("hello everyone") .edited');
  assert.equal(await ben.locator('#messages li', { hasText: 'hello from ann' }).count(), 0, 'the old text is gone');
  await act(ann, 'during outage 3', 'delete');
  await ben.waitForSelector('#messages li.gone .deleted');
  assert.equal(await ben.locator('#messages li', { hasText: 'during outage 3' }).count(), 0, 'the deleted text is gone');
  // Only the author may edit or delete: ben's page offers neither on ann's message.
  assert.equal(await ben.locator('#messages li', { hasText: 'hello everyone' }).locator('.act.edit, .act.delete').count(), 0);
  await ann.screenshot({ path: path.join(shots, 'lifecycle.png') });

  // Search finds the edited text on another node, and not the deleted one.
  await waitFor('search to find the edited message', async () => {
    await ben.fill('#search-q', 'everyone');
    await ben.press('#search-q', 'Enter');
    await ben.waitForSelector('#search-title:not(:has-text("Searching"))');
    const found = await ben.locator('#search-results li.hit', { hasText: 'hello everyone' }).count();
    if (found !== 1) console.log('search:', await ben.textContent('#search-title'), await ben.textContent('#search-results'));
    return found === 1;
  }, 10000);
  await ben.fill('#search-q', 'outage');
  await ben.press('#search-q', 'Enter');
  await ben.waitForSelector('#search-title:has-text("4 found")');
  assert.equal(await ben.locator('#search-results li.hit', { hasText: 'during outage 3' }).count(), 0, 'a deleted message is not found');
  await ben.screenshot({ path: path.join(shots, 'search.png') });
  await ben.click('#search-close');

  // A private room, owned by ann who creates it: ben can neither join nor
  // read it until she invites him; she sets its topic and then removes him,
  // and his page says so. Every step is made on one node and seen on another.
  await ann.check('#join-private');
  await ann.fill('#join-room', 'hideout');
  await ann.press('#join-room', 'Enter');
  await ann.waitForSelector('#room-title:has-text("🔒 # hideout")');
  await ann.waitForSelector('#room-topic:has-text("you are the owner")');
  await ann.fill('#text', 'only for the invited');
  await ann.press('#text', 'Enter');
  await ann.waitForSelector('#messages li:has-text("only for the invited")');
  await ben.fill('#join-room', 'hideout');
  await ben.press('#join-room', 'Enter');
  await ben.waitForSelector('#typing:has-text("forbidden")');
  assert.equal(await ben.locator('#messages li', { hasText: 'only for the invited' }).count(), 0, 'not readable uninvited');
  await ann.fill('#text', '/invite ben');
  await ann.press('#text', 'Enter');
  await ann.waitForSelector('#messages li.notice:has-text("invited ben")');
  await waitFor('ben to join once invited', async () => {
    await ben.fill('#join-room', 'hideout');
    await ben.press('#join-room', 'Enter');
    await sleep(500);
    return (await ben.locator('#messages li', { hasText: 'only for the invited' }).count()) === 1;
  }, 15000);
  await ben.waitForSelector('#room-title:has-text("🔒 # hideout")');
  await ann.fill('#text', '/topic plans for the launch');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#room-topic:has-text("plans for the launch")');
  await ben.waitForSelector('#messages li.notice:has-text("set the topic")');
  // ben, a member, is offered no delete on ann's message; ann, the owner, is on his.
  await ben.fill('#text', 'glad to be here');
  await ben.press('#text', 'Enter');
  await ann.waitForSelector('#messages li:has-text("glad to be here") .act.delete', { state: 'attached' });
  assert.equal(await ben.locator('#messages li', { hasText: 'only for the invited' }).locator('.act.delete').count(), 0);
  await ann.screenshot({ path: path.join(shots, 'private-room.png') });
  await ann.fill('#text', '/kick ben');
  await ann.press('#text', 'Enter');
  await ben.waitForSelector('#messages li.notice:has-text("removed ben")');
  await ben.waitForSelector('#messages li.notice:has-text("no longer a member")');
  await ann.fill('#text', 'after ben left');
  await ann.press('#text', 'Enter');
  await ann.waitForSelector('#messages li:has-text("after ben left")');
  await sleep(500);
  assert.equal(await ben.locator('#messages li', { hasText: 'after ben left' }).count(), 0, 'a removed member hears nothing more');
  await ben.screenshot({ path: path.join(shots, 'removed.png') });
  await ann.click('#rooms li[data-room="general"]');
  await ben.click('#rooms li[data-room="general"]');

  // Display names and invite codes (level 6): ann names herself; cy, on
  // node 3 (--registration invite), registers only with an operator's code,
  // and sees ann's messages under her display name.
  await ann.fill('#text', '/nick Ann Lee');
  await ann.press('#text', 'Enter');
  await ann.waitForSelector('#messages li.notice:has-text("you are shown as Ann Lee")');
  await ann.waitForSelector('#messages li:has-text("hello everyone") .from:has-text("Ann Lee")');
  const cyCtx = await browser.newContext({ viewport: { width: 800, height: 600 } });
  const cy = await cyCtx.newPage();
  cy.on('pageerror', (e) => console.error('page error (cy):', e.message));
  await cy.goto(url(nodes[2]));
  await cy.waitForSelector('#invite-label:not([hidden])');
  await cy.fill('#name', 'cy');
  await cy.fill('#password', 'password-123');
  await cy.click('#register-btn');
  await cy.waitForSelector('#login-error:has-text("invite code")');
  const invite = JSON.parse(ctl('--node', nodes[0].raft, '--json', '--timeout', '20', 'invites', 'create', '--note', 'for cy'));
  assert.equal(invite.uses_left, 1);
  await cy.fill('#invite', invite.code);
  await cy.screenshot({ path: path.join(shots, 'invite.png') });
  await cy.click('#register-btn');
  await cy.waitForSelector('#conn.on');
  await cy.waitForSelector('#messages li:has-text("hello everyone") .from:has-text("Ann Lee")');
  assert.equal(await cy.getAttribute('#messages li:has-text("hello everyone") .from', 'title'), '@ann');
  await cy.screenshot({ path: path.join(shots, 'display-names.png') });
  // The room directory lists what cy may join: public rooms, not ann's private one.
  await cy.click('#browse');
  await cy.waitForSelector('#search-results li[data-room="general"]');
  assert.equal(await cy.locator('#search-results li[data-room="hideout"]').count(), 0, 'a private room is not listed');
  await cy.fill('#join-room', 'hide');
  await cy.click('#browse');
  await cy.waitForSelector('#search-title:has-text("0 rooms matching")');
  await cy.fill('#join-room', '');
  await cy.click('#browse');
  await cy.waitForSelector('#search-results li[data-room="general"]');
  await cy.screenshot({ path: path.join(shots, 'directory.png') });
  const spent = JSON.parse(ctl('--node', nodes[0].raft, '--json', 'invites', 'list'));
  assert.equal(spent.filter((i) => i.id === invite.id).length, 0, 'a used-up code is gone');
  await cyCtx.close();


  // Bring node 2 back, then watch the cluster view follow a leader change.
  await startNode(benNode);
  await waitFor('node 2 back', async () => (await status()).members.every((m) => m.reachable));

  // Read state lives on the server: ben moves to another room, ann mentions
  // him, and after a reload (nothing kept in the page) his unread and mention
  // badges come from his read marker; opening the room moves the marker.
  await ben.fill('#join-room', 'random');
  await ben.press('#join-room', 'Enter');
  await ben.waitForSelector('#room-title:has-text("random")');
  await sleep(1500);   // the page marks what it showed as read, at most once a second
  await ann.fill('#text', '@ben are you around?');
  await ann.press('#text', 'Enter');
  await ann.waitForSelector('#messages li:has-text("are you around")');
  await ben.reload();
  await ben.waitForSelector('#conn.on');
  await ben.waitForSelector('#rooms li[data-room="general"] .mention:has-text("@1")');
  await ben.click('#rooms li[data-room="general"]');
  await ben.waitForSelector('#rooms li[data-room="general"]:not(:has(.mention))');
  await sleep(1500);
  await ben.click('#rooms li[data-room="random"]');
  await ben.reload();
  await ben.waitForSelector('#conn.on');
  await sleep(2000);   // both rooms' joined frames, with their read state, have come
  assert.equal(await ben.locator('#rooms li[data-room="general"] .unread, #rooms li[data-room="general"] .mention').count(), 0,
    'read on the server: no badge after a reload');
  await ben.click('#rooms li[data-room="general"]');

  // An operator revokes ben's sessions: his page returns to the login form
  // instead of reconnecting with a refused token, and he logs in again.
  ctl('--node', nodes[0].raft, '--timeout', '20', 'users', 'revoke', 'ben');
  await ben.waitForSelector('#login:not([hidden])', { timeout: 20000 });
  assert.match(await ben.textContent('#login-error'), /revoked/);
  await ben.fill('#password', 'password-123');
  await ben.click('#login-btn');
  await ben.waitForSelector('#conn.on');
  await ben.waitForSelector('#messages li:has-text("during outage 5")');

  // Logging out revokes the session on the server: back to the login form,
  // and the token the page held is refused.
  const token = await ben.evaluate(() => JSON.parse(sessionStorage.getItem('chorus')).token);
  await ben.click('#logout');
  await ben.waitForSelector('#login:not([hidden])');
  assert.match(await ben.textContent('#login-error'), /Logged out/);
  await waitFor('the logged-out token refused', async () => (await fetch(`${url(nodes[0])}/v1/rooms`, { headers: { authorization: `Bearer ${token}` } })).status === 401);
  let st = await status();
  const viewer = nodes.find((n) => n.id !== st.leader);
  const cluster = await (await browser.newContext({ viewport: { width: 1100, height: 400 } })).newPage();
  cluster.on('pageerror', (e) => console.error('page error (cluster):', e.message));
  await cluster.goto(`${url(viewer)}/cluster`);
  await cluster.waitForSelector(`#members tr.leader[data-id="${st.leader}"]`);

  // Its charts draw live figures: traffic sent through the viewer's own node
  // shows in that node's commits/s and ack p99, and every member has a lag line.
  const acked = await cluster.evaluate(sendThroughThisNode, { user: 'cal', count: 15 });
  assert.equal(acked, 15);
  const lines = await waitFor('the charts to draw the traffic', async () => {
    const l = await chartLines(cluster);
    const ok = sum(l.commits['commits/s']) >= 10 && Math.max(...l.ack.p99.filter(Number.isFinite)) > 0
      && ['1', '2', '3'].every((id) => l.lag[id]?.filter(Number.isFinite).length >= 3);
    return ok && l;
  }, 15000).catch(async (e) => { throw new Error(`${e.message}: ${JSON.stringify(await chartLines(cluster))}`); });
  const commitIndex = async (n) => Number(/^chorus_raft_commit_index (\d+)$/m.exec(await (await fetch(`${url(n)}/metrics`)).text())[1]);
  assert.ok(sum(lines.commits['commits/s']) <= await commitIndex(viewer), `commits/s adds up to no more than the commit index: ${lines.commits['commits/s']}`);
  const p99 = Math.max(...lines.ack.p99.filter(Number.isFinite));
  assert.ok(p99 > 0 && p99 < 2000, `ack p99 in ms: ${lines.ack.p99}`);
  for (const id of ['1', '2', '3']) {
    assert.ok(lines.lag[id].filter(Number.isFinite).every((v) => v >= 0 && v < 1000), `member ${id} lag: ${lines.lag[id]}`);
  }
  const shown = await cluster.$$eval('#charts .value', (els) => els.map((e) => e.textContent));
  assert.match(shown[2], /1: \d+.*2: \d+.*3: \d+/, `lag per member shown: ${shown}`);
  await cluster.screenshot({ path: path.join(shots, 'cluster.png') });

  const oldLeader = nodes.find((n) => n.id === st.leader);
  oldLeader.proc.kill('SIGKILL');
  await cluster.waitForSelector(`#members tr.leader:not([data-id="${oldLeader.id}"])`, { timeout: 20000 });
  // The dead member's lag is not known any more: its line stops, the others go on.
  await waitFor('a gap in the old leader\'s lag line', async () => {
    const { lag } = await chartLines(cluster);
    const last = (id) => lag[id]?.at(-1);
    return last(String(oldLeader.id)) === null && nodes.filter((n) => n !== oldLeader).every((n) => Number.isFinite(last(String(n.id))));
  }, 10000);
  console.log('web e2e: ok');
}

main()
  .then(async () => { await browser?.close(); process.exit(0); })
  .catch(async (e) => {
    console.error('web e2e FAILED:', e);
    // What each open page showed: its title, status line and errors.
    for (const ctx of browser?.contexts() || []) {
      for (const page of ctx.pages()) {
        const text = async (sel) => (await page.textContent(sel, { timeout: 1000 }).catch(() => null)) ?? '';
        console.error(`page ${page.url()}: title ${JSON.stringify(await text('#room-title'))}, typing ${JSON.stringify(await text('#typing'))}, `
          + `login ${JSON.stringify(await text('#login-error'))}`);
      }
    }
    for (const n of nodes) console.error(`--- node ${n.id} log in ${tmp}`);
    await browser?.close().catch(() => {});
    process.exit(1);
  });
