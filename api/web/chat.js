// The Chorus web chat. Plain JavaScript, no build step.
//
// It talks to one node over WebSocket. When that node goes away it reconnects to
// another member (from the /v1/cluster list it keeps) and rejoins every room with
// `after` = the last seq it showed, so nothing is missed and nothing shows twice.
// Sends carry client ids and are re-sent with the same id after a reconnect, so a
// retry cannot duplicate a message.
//
// A message can be answered, edited, deleted and reacted to (feature level 4):
// each change is an entry of the room with its own seq, delivered live like a
// message, and folded here into the message it targets, which is then drawn again.
//
// From level 6 it shows display names (`/nick`), asked of the server a batch at a
// time, and registers with an invite code where the node asks for one.

const $ = (id) => document.getElementById(id);
const state = {
  user: null, token: null,
  base: location.origin,          // the node we talk to
  members: [location.origin],     // client URLs of the cluster, refreshed while connected
  ws: null, connected: false,
  rooms: new Map(),               // room → { last, oldest, unread, online:Set, items:Map(seq→li), msgs:Map(seq→message) }
  current: null,
  pending: new Map(),             // client id → frame awaiting its ack
  nextId: 0,
  lastTyping: 0,
  compose: null,                  // { mode: 'reply' | 'edit', seq } while answering or editing a message
  names: new Map(),               // user → display name ('' for none), as the server last said (level 6)
  asking: new Set(),              // users whose display names are being fetched or are to be
};

const QUICK_REACTION = '👍';

function setConn(kind, text) {
  const el = $('conn');
  el.className = `state ${kind}`;
  el.textContent = text;
  $('node').textContent = state.base.replace(/^https?:\/\//, '');
}

async function api(path, body) {
  const r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const json = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(json.message || r.statusText);
  return json;
}

async function login(register) {
  const name = $('name').value.trim();
  const password = $('password').value;
  $('login-error').textContent = '';
  try {
    if (register) {
      const invite = $('invite').value.trim();
      await api('/v1/users', invite ? { name, password, invite } : { name, password });
    }
    const s = await api('/v1/sessions', { name, password });
    state.user = name;
    state.token = s.token;
    sessionStorage.setItem('chorus', JSON.stringify({ user: name, token: s.token }));
    start();
  } catch (e) {
    $('login-error').textContent = e.message;
  }
}

function start() {
  $('login').hidden = true;
  $('chat').hidden = false;
  $('logout').hidden = false;
  const saved = JSON.parse(sessionStorage.getItem('chorus-rooms') || '["general"]');
  for (const r of saved) room(r);
  select(sessionStorage.getItem('chorus-current') || saved[0] || 'general');
  connect();
  refreshMembers();
  setInterval(refreshMembers, 5000);
}

async function refreshMembers() {
  if (!state.connected) return;
  try {
    const c = await (await fetch(`${state.base}/v1/cluster`, { cache: 'no-store' })).json();
    const urls = c.members.filter((m) => m.reachable).map((m) => m.client_url);
    if (urls.length) state.members = urls;
  } catch { /* keep the last list */ }
}

function room(name) {
  if (!state.rooms.has(name)) {
    state.rooms.set(name, { last: null, oldest: null, unread: 0, mentions: 0, readSent: 0, online: new Set(), items: new Map(), msgs: new Map() });
    sessionStorage.setItem('chorus-rooms', JSON.stringify([...state.rooms.keys()].filter((r) => !r.startsWith('dm:'))));
    renderRooms();
  }
  return state.rooms.get(name);
}

function dmRoom(other) {
  return state.user < other ? `dm:${state.user}:${other}` : `dm:${other}:${state.user}`;
}

function send(frame) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(frame));
}

function joinFrame(name, r) {
  const f = { type: 'join', room: name };
  if (r.last !== null) f.after = r.last;
  return f;
}

function connect() {
  setConn('wait', 'connecting');
  const ws = new WebSocket(`${state.base.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  ws.onopen = () => {
    state.connected = true;
    setConn('on', 'online');
    refreshMembers();
    for (const [name, r] of state.rooms) send(joinFrame(name, r));
    for (const f of state.pending.values()) send(f);
  };
  ws.onmessage = (ev) => {
    let f;
    try { f = JSON.parse(ev.data); } catch { return; }
    handle(f);
  };
  ws.onclose = async (ev) => {
    if (state.ws !== ws) return;
    const opened = state.connected;
    state.connected = false;
    // 4001: the user's sessions were revoked, or the key of this token dropped.
    if (ev.code === 4001) return signedOut('Your session was revoked: log in again.');
    // An upgrade refused with 401 reaches the page only as a failed connection:
    // ask the node whether the token is still good before trying again.
    if (!opened && await tokenRefused()) return signedOut('Your session expired: log in again.');
    setConn('off', 'reconnecting');
    // Another member, if we know one; this one again otherwise.
    const others = state.members.filter((u) => u !== state.base);
    if (others.length) state.base = others[Math.floor(Math.random() * others.length)];
    setTimeout(connect, 500);
  };
}

// Whether the node refuses this page's token (401); a node that cannot be
// reached says nothing about it.
async function tokenRefused() {
  try {
    const r = await fetch(`${state.base}/v1/rooms`, { headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });
    return r.status === 401;
  } catch {
    return false;
  }
}

// Back to the login form, with `reason` shown, instead of reconnecting with
// a token no node accepts.
function signedOut(reason) {
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close();
  state.token = null;
  sessionStorage.removeItem('chorus');
  setConn('off', 'signed out');
  $('chat').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = reason;
  if (state.user) $('name').value = state.user;   // a page loaded from the saved session never showed the form
}

function handle(f) {
  switch (f.type) {
    case 'joined': {
      const r = room(f.room);
      r.online = new Set(f.online);
      // The server's read state is shared by every device of this user.
      if (f.unread) {
        r.readSent = f.unread.read;
        if (f.room === state.current) markRead(f.room);
        else { r.unread = f.unread.unread; r.mentions = f.unread.mentions; }
        renderRooms();
      }
      if (r.last === null) {
        // First join: show the latest page, then live from the head on.
        r.last = f.head;
        if (f.head > 0) send({ type: 'history', room: f.room, limit: 50, before: f.head + 1 });
      }
      if (f.room === state.current) renderOnline();
      // The settings and role as a member sees them: a read begun before the
      // join applied (say, of a private room) was refused.
      r.removed = false;
      loadRoomInfo(f.room);
      break;
    }
    case 'message': case 'edit': case 'delete': case 'reaction': case 'room_action': {
      const r = room(f.room);
      if (r.last === null) r.last = f.seq - 1;
      if (f.seq <= r.last) return;      // already shown
      r.last = f.seq;
      if (f.type === 'room_action') return roomAction(f.room, f, false);
      if (f.type !== 'message') return change(f.room, f);
      addMessage(f.room, f, false);
      if (f.room !== state.current && f.from !== state.user) {
        r.unread += 1;
        if (mentionsMe(f.text)) r.mentions += 1;
        renderRooms();
      }
      if (f.room === state.current) markRead(f.room);
      break;
    }
    case 'marked': {
      const r = room(f.room);
      r.readSent = Math.max(r.readSent, f.seq);
      break;
    }
    case 'history': {
      // A page serves each message as it is now; its change entries are
      // already folded in, so only the messages are shown.
      const msgs = f.messages.filter((m) => m.type === 'message' || m.type === 'room_action').reverse();
      for (const m of msgs) {
        if (m.type === 'room_action') roomAction(f.room, m, true); else addMessage(f.room, m, true);
      }
      break;
    }
    case 'removed': {
      // Kicked or banned: this connection gets nothing more of the room.
      const r = room(f.room);
      r.removed = true;
      r.role = null;
      if (f.room === state.current) showRoomInfo(f.room);
      notice(f.room, 'You are no longer a member of this room.');
      break;
    }
    case 'ack': state.pending.delete(f.id); break;
    case 'presence': {
      const r = room(f.room);
      if (f.online) r.online.add(f.user); else r.online.delete(f.user);
      if (f.room === state.current) renderOnline();
      break;
    }
    case 'typing':
      if (f.room === state.current) {
        $('typing').textContent = `${f.user} is typing…`;
        clearTimeout(state.typingTimer);
        state.typingTimer = setTimeout(() => { $('typing').textContent = ''; }, 3000);
      }
      break;
    case 'error':
      if (f.id !== undefined && state.pending.has(f.id) && f.code === 'unavailable') {
        setTimeout(() => send(state.pending.get(f.id)), 1000);   // same id: no duplicate
      } else {
        if (f.id !== undefined) state.pending.delete(f.id);
        $('typing').textContent = `${f.code}: ${f.message}`;
      }
      break;
    default: break;
  }
}

// A room action's words, after who did it.
function actionWords(a) {
  const lasting = a.secs ? ` for ${a.secs}s` : '';
  switch (a.action) {
    case 'invite': return `invited ${a.user}`;
    case 'kick': return `removed ${a.user}`;
    case 'ban': return `banned ${a.user}${lasting}`;
    case 'unban': return `lifted the ban on ${a.user}`;
    case 'mute': return `muted ${a.user}${lasting}`;
    case 'unmute': return `unmuted ${a.user}`;
    case 'set_role': return `made ${a.user} ${a.role === 'owner' ? 'the owner' : `a ${a.role}`}`;
    case 'set_topic': return `set the topic: ${a.topic}`;
    case 'set_title': return `set the title: ${a.title}`;
    case 'set_visibility': return `made the room ${a.visibility}`;
    default: return a.action;
  }
}

// Shows a room action in the room's list, and follows what it changed.
function roomAction(name, a, older) {
  const r = room(name);
  if (r.items.has(a.seq)) return;
  const li = el('li', 'notice');
  li.dataset.seq = a.seq;
  li.append(el('span', 'from', a.from), el('span', 'text', actionWords(a)), el('span', 'ts', new Date(a.ts).toLocaleTimeString()));
  place(name, a.seq, li, older);
  if (!older) {
    if (a.action === 'set_topic') r.topic = a.topic;
    if (a.action === 'set_title') r.title = a.title;
    if (a.action === 'set_visibility') r.visibility = a.visibility;
    if (a.action === 'set_role' && a.user === state.user) r.role = a.role;
    if (a.action === 'set_role' && a.role === 'owner' && a.from === state.user) r.role = 'moderator';
    if (name === state.current) showRoomInfo(name);
  }
}

// A line of the page's own in room `name` (not an entry of the room).
function notice(name, text) {
  const li = el('li', 'notice mine', text);
  const r = room(name);
  r.notes = (r.notes || 0) + 1;
  li.dataset.seq = (r.last || 0) + 0.5;
  r.items.set(`note-${r.notes}`, li);
  if (name === state.current) $('messages').append(li);
}

// The room's title, visibility, topic and the caller's role, from the server.
async function loadRoomInfo(name) {
  if (name.startsWith('dm:')) return;
  try {
    const resp = await fetch(`${state.base}/v1/rooms/${encodeURIComponent(name)}`, { headers: { authorization: `Bearer ${state.token}` } });
    if (!resp.ok) return;
    const d = await resp.json();
    const r = room(name);
    Object.assign(r, { title: d.title, topic: d.topic, visibility: d.visibility, role: d.role || null });
    if (name === state.current) { showRoomInfo(name); redrawAll(name); }
  } catch { /* shown without it */ }
}

function showRoomInfo(name) {
  const r = room(name);
  const lock = r.visibility === 'private' ? '🔒 ' : '';
  const head = name.startsWith('dm:') ? `✉ ${name.split(':').slice(1).filter((u) => u !== state.user)[0]}` : `${lock}# ${name}`;
  $('room-title').textContent = r.title ? `${head} · ${r.title}` : head;
  $('room-topic').textContent = [r.topic, r.role && r.role !== 'member' ? `you are ${r.role === 'owner' ? 'the owner' : 'a moderator'}` : '', r.removed ? 'not a member' : '']
    .filter(Boolean).join(' — ');
}

function redrawAll(name) {
  const r = room(name);
  for (const m of r.msgs.values()) draw(r, m);
}

function moderates(name) {
  const role = room(name).role;
  return role === 'owner' || role === 'moderator';
}

// Reads a room command typed in the send box (`/kick ben`), or null.
function roomCommand(text) {
  const [cmd, ...rest] = text.trim().split(/\s+/);
  const arg = text.trim().slice(cmd.length).trim();
  const user = rest[0];
  const secs = rest[1] ? Number(rest[1]) : undefined;
  const withSecs = (a) => (secs ? { ...a, secs } : a);
  switch (cmd) {
    case '/invite': return user && { action: 'invite', user };
    case '/kick': return user && { action: 'kick', user };
    case '/ban': return user && withSecs({ action: 'ban', user });
    case '/unban': return user && { action: 'unban', user };
    case '/mute': return user && withSecs({ action: 'mute', user });
    case '/unmute': return user && { action: 'unmute', user };
    case '/mod': return user && { action: 'set_role', user, role: 'moderator' };
    case '/demote': return user && { action: 'set_role', user, role: 'member' };
    case '/owner': return user && { action: 'set_role', user, role: 'owner' };
    case '/topic': return { action: 'set_topic', topic: arg };
    case '/title': return { action: 'set_title', title: arg };
    case '/private': return { action: 'set_visibility', visibility: 'private' };
    case '/public': return { action: 'set_visibility', visibility: 'public' };
    default: return null;
  }
}

// Whether `text` names this user as `@name` (the rule the server counts by).
function mentionsMe(text) {
  const re = new RegExp(`(^|[^A-Za-z0-9_.-])@${state.user.replace(/[.]/g, '\\.')}($|[^A-Za-z0-9_.-])`);
  return re.test(text || '');
}

// Tells the cluster this room is read up to what is shown, at most once a
// second; every device of this user then counts from there.
function markRead(name) {
  const r = room(name);
  if (r.readTimer || r.last === null || r.last <= r.readSent || document.hidden) return;
  r.readTimer = setTimeout(() => {
    r.readTimer = null;
    if (r.last > r.readSent && state.connected) {
      r.readSent = r.last;
      send({ type: 'read', room: name, seq: r.last });
    }
  }, 1000);
}

// Folds an edit, delete or reaction into the message it targets, if shown.
function change(name, e) {
  const r = room(name);
  const m = r.msgs.get(e.target);
  if (!m) return;                       // its message is older than anything shown
  if (e.type === 'edit') { m.text = e.text; m.edited_ts = e.ts; }
  if (e.type === 'delete') { m.deleted = true; m.text = ''; m.reactions = {}; }
  if (e.type === 'reaction') {
    const users = new Set((m.reactions || {})[e.emoji] || []);
    if (e.added) users.add(e.from); else users.delete(e.from);
    m.reactions = { ...(m.reactions || {}), [e.emoji]: [...users] };
    if (!users.size) delete m.reactions[e.emoji];
  }
  draw(r, m);
}

function el(tag, cls, text) {
  const x = document.createElement(tag);
  if (cls) x.className = cls;
  if (text !== undefined) x.textContent = text;
  return x;
}

function action(cls, label, title, onclick) {
  const b = el('button', `act ${cls}`, label);
  b.type = 'button';
  b.title = title;
  b.onclick = onclick;
  return b;
}

// (Re)draws message `m` in its list item.
function draw(r, m) {
  const li = r.items.get(m.seq);
  // A display name is shown beside the user name, never instead of it: anyone
  // may call themselves anything.
  const from = el('span', 'from', shownName(m.from));
  const parts = [from];
  if (from.textContent !== m.from) {
    from.title = `@${m.from}`;
    parts.push(el('span', 'handle', `@${m.from}`));
  }
  if (m.reply_to) {
    const to = r.msgs.get(m.reply_to);
    parts.push(el('span', 'reply-to', `↪ #${m.reply_to}${to && !to.deleted ? ` ${to.from}: ${to.text.slice(0, 40)}` : ''}`));
  }
  parts.push(m.deleted ? el('span', 'text deleted', 'message deleted') : el('span', 'text', m.text));
  if (m.edited_ts && !m.deleted) parts.push(el('span', 'edited', '(edited)'));
  parts.push(el('span', 'ts', new Date(m.ts).toLocaleTimeString()));
  if (!m.deleted) {
    const chips = el('span', 'chips');
    for (const [emoji, users] of Object.entries(m.reactions || {})) {
      const mine = users.includes(state.user);
      const chip = action(`chip${mine ? ' mine' : ''}`, `${emoji} ${users.length}`, users.join(', '), () => react(m, emoji, !mine));
      chips.append(chip);
    }
    const acts = el('span', 'acts');
    acts.append(action('reply', '↪', 'reply', () => compose('reply', m)));
    if (m.reply_to || r.threads?.get(m.seq)) acts.append(action('thread', '🧵', 'the thread', () => openThread(m)));
    acts.append(action('react', QUICK_REACTION, 'react', () => react(m, QUICK_REACTION, true)));
    if (m.from === state.user) acts.append(action('edit', '✎', 'edit', () => compose('edit', m)));
    if (m.from === state.user || moderates(m.room)) {
      acts.append(action('delete', '🗑', 'delete', () => submit({ type: 'delete', room: m.room, target: m.seq })));
    }
    parts.push(chips, acts);
  }
  li.className = m.deleted ? 'gone' : '';
  li.replaceChildren(...parts);
}

function addMessage(name, m, older) {
  const r = room(name);
  if (r.items.has(m.seq)) return;
  const li = document.createElement('li');
  li.dataset.seq = m.seq;
  r.items.set(m.seq, li);
  r.msgs.set(m.seq, { ...m, room: name });
  draw(r, r.msgs.get(m.seq));
  if (m.thread) {
    // A thread's first message offers the thread once a reply is shown,
    // whichever of the two came first.
    r.threads = r.threads || new Map();
    r.threads.set(m.thread, (r.threads.get(m.thread) || 0) + 1);
    const root = r.msgs.get(m.thread);
    if (root) draw(r, root);
  }
  place(name, m.seq, li, older);
}

// Puts an entry's list item in seq order in room `name`'s list.
function place(name, seq, li, older) {
  const r = room(name);
  r.items.set(seq, li);
  r.oldest = r.oldest === null ? seq : Math.min(r.oldest, seq);
  if (name !== state.current) return;
  const list = $('messages');
  const after = [...list.children].find((c) => Number(c.dataset.seq) > seq);
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 30;
  list.insertBefore(li, after || null);
  if (!older && atBottom) list.scrollTop = list.scrollHeight;
}

// Sends a frame that needs an ack with a fresh client id, kept until acked.
function submit(frame) {
  state.nextId += 1;
  const id = `${state.user}-${Date.now().toString(36)}-${state.nextId}`;
  const f = { ...frame, id };
  state.pending.set(id, f);
  send(f);
}

function react(m, emoji, add) {
  submit({ type: add ? 'react' : 'unreact', room: m.room, target: m.seq, emoji });
}

// Puts the send form in reply or edit mode for message `m` (null: back to plain sends).
function compose(mode, m) {
  state.compose = m ? { mode, seq: m.seq } : null;
  const banner = $('compose');
  banner.hidden = !m;
  if (!m) return;
  $('compose-text').textContent = mode === 'edit' ? `Editing #${m.seq}` : `Replying to ${m.from} (#${m.seq})`;
  if (mode === 'edit') $('text').value = m.text;
  $('text').focus();
}

function select(name) {
  state.current = name;
  if (!name.startsWith('dm:')) sessionStorage.setItem('chorus-current', name);
  compose(null);
  const r = room(name);
  r.unread = 0;
  r.mentions = 0;
  markRead(name);
  showRoomInfo(name);
  loadRoomInfo(name);
  const list = $('messages');
  list.replaceChildren(...[...r.items.values()].sort((a, b) => Number(a.dataset.seq) - Number(b.dataset.seq)));
  list.scrollTop = list.scrollHeight;
  $('typing').textContent = '';
  renderRooms();
  renderOnline();
}

function renderRooms() {
  $('rooms').replaceChildren(...[...state.rooms.entries()].map(([name, r]) => {
    const li = document.createElement('li');
    li.dataset.room = name;
    li.className = name === state.current ? 'current' : '';
    const label = document.createElement('span');
    label.textContent = name.startsWith('dm:') ? `✉ ${name.split(':').slice(1).filter((u) => u !== state.user)[0]}` : `# ${name}`;
    li.append(label);
    if (r.mentions) li.append(el('span', 'mention', `@${r.mentions}`));
    if (r.unread) li.append(el('span', 'unread', r.unread));
    li.onclick = () => select(name);
    return li;
  }));
}

function renderOnline() {
  const r = state.rooms.get(state.current);
  $('online').replaceChildren(...[...(r ? r.online : [])].sort().map((u) => {
    const li = document.createElement('li');
    li.textContent = u;
    return li;
  }));
}

$('login-form').onsubmit = (e) => { e.preventDefault(); login(false); };
$('register-btn').onclick = () => login(true);

// How this node registers users: with an invite code, or not at all.
(async () => {
  try {
    const r = await fetch('/v1/registration', { cache: 'no-store' });
    if (!r.ok) return;
    const { mode } = await r.json();
    $('invite-label').hidden = mode !== 'invite';
    $('register-btn').hidden = mode === 'closed';
  } catch { /* an older node: open registration */ }
})();

// The name to show for `user`: their display name once known, else the
// user name (and the display name is asked for, a batch at a time).
function shownName(user) {
  const known = state.names.get(user);
  if (known === undefined && state.token) {
    state.asking.add(user);
    if (state.asking.size === 1) setTimeout(fetchNames, 200);
  }
  return known || user;
}

async function fetchNames() {
  const wanted = [...state.asking].filter((u) => !state.names.has(u) && !u.includes(':'));
  const users = wanted.slice(0, 100);
  // The rest wait for the next batch.
  state.asking = new Set(wanted.slice(100));
  if (state.asking.size) setTimeout(fetchNames, 200);
  if (!users.length) return;
  for (const u of users) state.names.set(u, '');
  // Not answered: asked again the next time one of them is drawn.
  const forget = () => { for (const u of users) if (state.names.get(u) === '') state.names.delete(u); };
  try {
    const r = await fetch(`${state.base}/v1/users/profile?names=${users.map(encodeURIComponent).join(',')}`,
      { headers: { authorization: `Bearer ${state.token}` } });
    if (!r.ok) return forget();
    const changed = new Set();
    for (const p of await r.json()) {
      if (p.display_name) {
        state.names.set(p.name, p.display_name);
        changed.add(p.name);
      }
    }
    redrawFrom(changed);
  } catch {
    forget();
  }
}

// Draws again every shown message of these users.
function redrawFrom(users) {
  if (!users.size) return;
  for (const r of state.rooms.values()) {
    for (const m of r.msgs.values()) if (users.has(m.from)) draw(r, m);
  }
}

// `/nick NAME` (or `/nick` to clear): this user's display name, on every node.
async function setNick(name, text) {
  try {
    const resp = await fetch(`${state.base}/v1/users/profile`, {
      method: 'POST',
      headers: { authorization: `Bearer ${state.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ display_name: text }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.message || resp.statusText);
    state.names.set(state.user, body.display_name || '');
    notice(name, body.display_name ? `you are shown as ${body.display_name}` : 'your display name is cleared');
    redrawFrom(new Set([state.user]));
  } catch (err) {
    notice(name, `cannot set the display name: ${err.message}`);
  }
}
$('join-form').onsubmit = (e) => {
  e.preventDefault();
  const name = $('join-room').value.trim();
  if (!name) return;
  $('join-room').value = '';
  if ($('join-private').checked) {
    // A private room is created first (the creator owns it), then joined.
    $('join-private').checked = false;
    createPrivate(name);
    return;
  }
  const r = room(name);
  send(joinFrame(name, r));
  select(name);
};

async function createPrivate(name) {
  try {
    const resp = await fetch(`${state.base}/v1/rooms`, {
      method: 'POST',
      headers: { authorization: `Bearer ${state.token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name, visibility: 'private' }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.message || resp.statusText);
  } catch (err) {
    $('typing').textContent = `cannot create ${name}: ${err.message}`;
    return;
  }
  send(joinFrame(name, room(name)));
  select(name);
}
$('dm-form').onsubmit = (e) => {
  e.preventDefault();
  const to = $('dm-user').value.trim();
  if (!to || to === state.user) return;
  $('dm-user').value = '';
  const name = dmRoom(to);
  send(joinFrame(name, room(name)));
  select(name);
};
$('send-form').onsubmit = (e) => {
  e.preventDefault();
  const text = $('text').value;
  if (!text.trim()) return;
  $('text').value = '';
  const name = state.current;
  const c = state.compose;
  compose(null);
  if (!c && (text.trim() === '/nick' || text.startsWith('/nick '))) return setNick(name, text.trim().slice('/nick'.length).trim());
  const command = !c && !name.startsWith('dm:') && text.startsWith('/') ? roomCommand(text) : null;
  if (command) return submit({ type: 'room_action', room: name, ...command });
  if (c && c.mode === 'edit') return submit({ type: 'edit', room: name, target: c.seq, text });
  if (c && c.mode === 'reply') return submit({ type: 'send', room: name, text, reply_to: c.seq });
  submit(name.startsWith('dm:')
    ? { type: 'dm', to: name.split(':').slice(1).filter((u) => u !== state.user)[0], text }
    : { type: 'send', room: name, text });
};
$('compose-cancel').onclick = () => compose(null);
// Search runs on the node this page talks to; each result opens its room.
$('search-form').onsubmit = async (e) => {
  e.preventDefault();
  const q = $('search-q').value.trim();
  if (!q) return;
  const box = $('search-results');
  const list = box.querySelector('ol');
  box.hidden = false;
  $('search-title').textContent = `Searching for “${q}”…`;
  list.replaceChildren();
  try {
    const r = await fetch(`${state.base}/v1/search?q=${encodeURIComponent(q)}&limit=50`, { headers: { authorization: `Bearer ${state.token}` } });
    const page = await r.json();
    if (!r.ok) throw new Error(page.message || r.statusText);
    $('search-title').textContent = `${page.results.length}${page.next_offset ? '+' : ''} found for “${q}”`;
    list.replaceChildren(...page.results.map(({ message: m }) => {
      const li = el('li', 'hit');
      li.append(el('span', 'where', m.room.startsWith('dm:') ? '✉' : `#${m.room}`), el('span', 'from', m.from), el('span', 'text', m.text));
      li.onclick = () => {
        box.hidden = true;
        const name = m.room;
        if (!state.rooms.has(name)) send(joinFrame(name, room(name)));
        select(name);
      };
      return li;
    }));
  } catch (err) {
    $('search-title').textContent = `search: ${err.message}`;
  }
};
$('search-close').onclick = () => { $('search-results').hidden = true; };

// The results panel (search, the room directory, a thread): shows `title`
// and the list items `rows`.
function panel(title, rows) {
  const box = $('search-results');
  box.hidden = false;
  $('search-title').textContent = title;
  box.querySelector('ol').replaceChildren(...rows);
}

// The room directory: the rooms this user may see (public ones, and private
// ones they are in or invited to), filtered by the room field's text.
$('browse').onclick = async () => {
  const q = $('join-room').value.trim();
  panel(q ? `Rooms matching “${q}”…` : 'Rooms…', []);
  try {
    const r = await fetch(`${state.base}/v1/rooms?limit=200${q ? `&q=${encodeURIComponent(q)}` : ''}`,
      { headers: { authorization: `Bearer ${state.token}` }, cache: 'no-store' });
    const rows = await r.json();
    if (!r.ok) throw new Error(rows.message || r.statusText);
    const listed = rows.filter((x) => !x.name.startsWith('dm:'));
    panel(`${listed.length} room${listed.length === 1 ? '' : 's'}${q ? ` matching “${q}”` : ''}`, listed.map((x) => {
      const li = el('li', 'hit');
      li.dataset.room = x.name;
      const lock = x.visibility === 'private' ? '🔒 ' : '';
      li.append(el('span', 'where', `${lock}#${x.name}`), el('span', 'text', x.title || ''));
      const about = [`${x.members} member${x.members === 1 ? '' : 's'}`];
      if (x.role) about.push(`you: ${x.role}`);
      else if (x.invited) about.push('you are invited');
      if (x.topic) about.push(x.topic);
      li.append(el('span', 'about', about.join(' · ')));
      li.onclick = () => {
        $('search-results').hidden = true;
        if (!state.rooms.has(x.name)) send(joinFrame(x.name, room(x.name)));
        select(x.name);
      };
      return li;
    }));
  } catch (err) {
    panel(`rooms: ${err.message}`, []);
  }
};

// A thread: its first message and every reply, from the server.
async function openThread(m) {
  const root = m.thread || m.seq;
  panel(`Thread of #${root}…`, []);
  try {
    const r = await fetch(`${state.base}/v1/rooms/${encodeURIComponent(m.room)}/messages/${root}/thread?limit=200`,
      { headers: { authorization: `Bearer ${state.token}` } });
    const page = await r.json();
    if (!r.ok) throw new Error(page.message || r.statusText);
    const first = page.messages[0];
    const about = first && first.text ? `: ${first.text.slice(0, 40)}` : '';
    const replies = Math.max(page.messages.length - 1, 0);
    panel(`Thread of #${root}${about} (${replies} repl${replies === 1 ? 'y' : 'ies'})`, page.messages.map((t) => {
      const li = el('li', 'hit');
      li.dataset.seq = t.seq;
      li.append(el('span', 'where', `#${t.seq}`), el('span', 'from', shownName(t.from)), el('span', 'text', t.deleted ? 'message deleted' : t.text));
      li.onclick = () => {
        compose('reply', shownOr(m.room, t));
        $('text').focus();
      };
      return li;
    }));
  } catch (err) {
    panel(`thread: ${err.message}`, []);
  }
}

// The message shown for seq `t.seq` in `name`, else the thread's copy of it.
function shownOr(name, t) {
  return room(name).msgs.get(t.seq) || { ...t, room: name };
}
// Logging out revokes the user's tokens on the server (this one and every
// other device's), so a copied token is no good either.
$('logout').onclick = async () => {
  try {
    await fetch(`${state.base}/v1/sessions/revoke`, { method: 'POST', headers: { authorization: `Bearer ${state.token}` } });
  } catch { /* the token is dropped here whatever the node said */ }
  signedOut('Logged out.');
};
$('text').oninput = () => {
  if (Date.now() - state.lastTyping > 2000) {
    state.lastTyping = Date.now();
    send({ type: 'typing', room: state.current });
  }
};
$('messages').onscroll = () => {
  const r = state.rooms.get(state.current);
  if ($('messages').scrollTop === 0 && r && r.oldest > 1) {
    send({ type: 'history', room: state.current, before: r.oldest, limit: 50 });
  }
};

const saved = JSON.parse(sessionStorage.getItem('chorus') || 'null');
if (saved) { state.user = saved.user; state.token = saved.token; start(); } else { setConn('off', 'signed out'); }
