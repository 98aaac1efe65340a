// The cluster view: /v1/cluster from this node, refreshed every second.
const tbody = document.querySelector('#members tbody');

function cell(text) {
  const td = document.createElement('td');
  td.textContent = text;
  return td;
}

async function refresh() {
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
    document.getElementById('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById('updated').textContent = `this node does not answer (${e.message})`;
  }
}

refresh();
setInterval(refresh, 1000);
