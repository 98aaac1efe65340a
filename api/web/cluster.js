// The cluster view: /v1/cluster and /metrics from this node, once a second.
// The table is the members as this node last probed them; the charts are the
// last minute of commits/s and ack p99 (this node's own /metrics) and of each
// member's lag (from /v1/cluster). Each line is a <path> whose data-values
// holds its samples, oldest first ('' for a gap), as the browser test reads them.
const tbody = document.querySelector('#members tbody');

const PERIOD_MS = 1000;
const WINDOW = 60;          // samples kept: a minute
const ACK_WINDOW = 5;       // ack p99 over the last 5 samples' acks, like rate(...[5s])
const W = 240, H = 70;      // the charts' viewBox
const COLORS = ['#1d3557', '#e63946', '#2a9d8f', '#e9a23b', '#8338ec', '#6c757d'];
const SVG = 'http://www.w3.org/2000/svg';

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

// The smallest of 1, 2, 5 × 10^n at or above x.
function niceCeil(x) {
  const p = 10 ** Math.floor(Math.log10(x));
  return [1, 2, 5, 10].map((f) => f * p).find((v) => v >= x);
}

// One small line chart: named series sampled together, newest at the right.
class Chart {
  constructor(id, format, floor) {
    this.fig = document.getElementById(id);
    this.svg = this.fig.querySelector('svg');
    this.format = format;
    this.floor = floor;       // the least top of the scale, so that noise stays flat
    this.series = new Map();  // name -> [value | null], all as long as `ticks`
    this.ticks = 0;
  }

  // values: name -> number; a series missing from it gets a gap.
  push(values) {
    for (const name of values.keys()) {
      if (!this.series.has(name)) this.series.set(name, Array(this.ticks).fill(null));
    }
    for (const [name, pts] of this.series) {
      const v = values.get(name);
      pts.push(Number.isFinite(v) ? v : null);
      if (pts.length > WINDOW) pts.shift();
      if (pts.every((p) => p === null)) this.series.delete(name);
    }
    this.ticks = Math.min(this.ticks + 1, WINDOW);
    this.draw();
  }

  draw() {
    const all = [...this.series.values()].flat().filter((v) => v !== null);
    const top = niceCeil(Math.max(this.floor, ...all));
    const step = W / (WINDOW - 1);
    const y = (v) => (H - 1 - (v / top) * (H - 2)).toFixed(1);
    const paths = [];
    const keys = [];
    let i = 0;
    for (const [name, pts] of this.series) {
      const color = COLORS[i++ % COLORS.length];
      let d = '';
      let points = 0;
      let last = null;
      pts.forEach((v, k) => {
        if (v === null) return;
        const x = (W - (pts.length - 1 - k) * step).toFixed(1);
        const joined = k > 0 && pts[k - 1] !== null;
        d += `${joined ? 'L' : 'M'}${x} ${y(v)}`;
        // A point with no neighbour on either side is drawn as a dot.
        if (!joined && (k === pts.length - 1 || pts[k + 1] === null)) d += 'h0.01';
        points += 1;
        last = v;
      });
      const path = document.createElementNS(SVG, 'path');
      path.setAttribute('d', d);
      path.setAttribute('stroke', color);
      path.dataset.series = name;
      path.dataset.points = points;
      path.dataset.values = pts.map((v) => (v === null ? '' : +v.toFixed(4))).join(',');
      paths.push(path);
      const key = document.createElement('span');
      key.className = 'key';
      key.style.color = color;
      key.textContent = this.series.size > 1 ? `${name}: ${this.format(last)}` : this.format(last);
      keys.push(key);
    }
    this.svg.replaceChildren(...paths);
    this.svg.dataset.points = all.length;
    this.fig.querySelector('.value').replaceChildren(...keys);
    this.fig.querySelector('.scale').textContent = `0 – ${this.format(top)} · last ${WINDOW} s`;
  }
}

const fmt = (digits, unit) => (v) => (v === null ? '–' : `${v.toFixed(v < 10 ? digits : 0)}${unit}`);
const charts = {
  commits: new Chart('chart-commits', fmt(1, '/s'), 1),
  ack: new Chart('chart-ack', fmt(2, ' ms'), 1),
  lag: new Chart('chart-lag', (v) => (v === null ? '–' : String(v)), 1),
};

// The samples of a Prometheus/OpenMetrics text: `name{labels}` -> value.
function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)/.exec(line);
    if (m) samples.set(m[1], Number(m[2]));
  }
  return samples;
}

// A histogram's cumulative buckets, [[le, count]] in ascending le (+Inf last).
function buckets(samples, name) {
  const out = [];
  for (const [key, count] of samples) {
    const m = /^(\w+)_bucket\{le="([^"]+)"\}$/.exec(key);
    if (m && m[1] === name) out.push([m[2] === '+Inf' ? Infinity : Number(m[2]), count]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

// As Prometheus's histogram_quantile: linear within the bucket the rank falls in.
function quantile(q, bs) {
  const total = bs.length ? bs[bs.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, count] of bs) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      return lower + ((le - lower) * (rank - below)) / (count - below);
    }
    lower = le;
    below = count;
  }
  return null;
}

let lastCommit = null;   // {at, index} of the previous sample
let ackHistory = [];     // the last ACK_WINDOW + 1 snapshots of the ack buckets

function sampleMetrics(text, at) {
  const s = parseMetrics(text);
  const index = s.get('chorus_raft_commit_index');
  let commits = null;
  if (lastCommit && index >= lastCommit.index) {
    commits = (index - lastCommit.index) / ((at - lastCommit.at) / 1000);
  }
  lastCommit = Number.isFinite(index) ? { at, index } : null;
  charts.commits.push(new Map([['commits/s', commits]]));

  const bs = buckets(s, 'chorus_ack_latency_seconds');
  const oldest = ackHistory[0];
  // A restarted node starts its counts again: start the window again too.
  if (oldest && (oldest.length !== bs.length || oldest.some(([, c], k) => c > bs[k][1]))) ackHistory = [];
  ackHistory.push(bs);
  if (ackHistory.length > ACK_WINDOW + 1) ackHistory.shift();
  const base = ackHistory[0];
  const p99 = ackHistory.length > 1 ? quantile(0.99, bs.map(([le, c], k) => [le, c - base[k][1]])) : null;
  charts.ack.push(new Map([['p99', p99 === null ? null : p99 * 1000]]));
}

function sampleCluster(c) {
  // An unreachable member's lag is not known here: a gap, not a zero.
  charts.lag.push(new Map(c.members.filter((m) => m.reachable).map((m) => [String(m.id), m.lag])));
}

async function refresh() {
  const at = performance.now();
  const metrics = fetch('/metrics', { cache: 'no-store' }).then((r) => (r.ok ? r.text() : null)).catch(() => null);
  try {
    const r = await fetch('/v1/cluster', { cache: 'no-store' });
    const c = await r.json();
    document.getElementById('cluster-id').textContent = c.cluster_id;
    document.getElementById('term').textContent = `term ${c.term} · leader ${c.leader ?? 'none'}`;
    tbody.replaceChildren(...c.members.map((m) => {
      const tr = document.createElement('tr');
      tr.dataset.id = m.id;
      if (m.role === 'leader') tr.className = 'leader';
      if (!m.reachable) tr.classList.add('down');
      for (const v of [m.id, m.role, m.term, m.last_log_index, m.applied_index, m.lag, m.connections, m.reachable ? 'yes' : 'no', m.client_url]) {
        tr.append(cell(v ?? ''));
      }
      return tr;
    }));
    sampleCluster(c);
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    charts.lag.push(new Map());
    document.getElementById('updated').textContent = `this node does not answer (${e.message})`;
  }
  const text = await metrics;
  if (text === null) {
    lastCommit = null;
    charts.commits.push(new Map());
    charts.ack.push(new Map());
  } else {
    sampleMetrics(text, at);
  }
}

// One refresh at a time: a slow probe delays the next sample instead of
// overlapping it.
async function loop() {
  const started = performance.now();
  await refresh();
  setTimeout(loop, Math.max(0, PERIOD_MS - (performance.now() - started)));
}
loop();
