//! One order: identical final histories, dense seqs, monotonic timestamps,
//! linearizable appends.

use super::Verdict;
use crate::history::{History, Outcome};

pub fn finals_identical(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    let mut nodes = h.finals.iter();
    if let Some((first, reference)) = nodes.next() {
        for (node, msgs) in nodes {
            if msgs != reference {
                let diverge = msgs.iter().zip(reference).position(|(a, b)| a != b).unwrap_or(msgs.len().min(reference.len()));
                anomalies.push(format!(
                    "node {node} differs from node {first} from position {diverge} ({} vs {} messages)",
                    msgs.len(),
                    reference.len()
                ));
            }
        }
    }
    Verdict::of("every node's final history identical", anomalies)
}

pub fn seq_dense(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for (node, msgs) in &h.finals {
        for (i, m) in msgs.iter().enumerate() {
            if m.seq != i as u64 + 1 {
                anomalies.push(format!("node {node}: position {} holds seq {} (gap or reorder)", i + 1, m.seq));
                break;
            }
        }
    }
    Verdict::of("seq dense from 1", anomalies)
}

pub fn ts_monotonic(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for (node, msgs) in &h.finals {
        for w in msgs.windows(2) {
            if w[1].ts < w[0].ts {
                anomalies.push(format!("node {node}: seq {} ts {} after seq {} ts {}", w[1].seq, w[1].ts, w[0].seq, w[0].ts));
            }
        }
    }
    Verdict::of("ts never decreases within a room", anomalies)
}

/// If A was acknowledged before B was sent, A's seq is smaller.
pub fn linearizable_appends(h: &History) -> Verdict {
    let mut ok: Vec<_> = h.sends.iter().filter(|o| o.outcome == Outcome::Ok && o.seq.is_some()).collect();
    ok.sort_by_key(|o| o.complete_ms);
    let mut anomalies = Vec::new();
    // For each B, the largest seq among ops completed before B began must be < B.seq.
    let mut by_invoke: Vec<_> = ok.clone();
    by_invoke.sort_by_key(|o| o.invoke_ms);
    let mut i = 0;
    let mut max_before: Option<&crate::history::SendOp> = None;
    for b in by_invoke {
        while i < ok.len() && ok[i].complete_ms < b.invoke_ms {
            if max_before.is_none_or(|m| ok[i].seq > m.seq) {
                max_before = Some(ok[i]);
            }
            i += 1;
        }
        if let Some(a) = max_before {
            if a.room == b.room && a.seq >= b.seq {
                anomalies.push(format!(
                    "{}/{} (seq {:?}) was acked at {} ms, before {}/{} was sent at {} ms, yet got seq {:?}",
                    a.user, a.id, a.seq, a.complete_ms, b.user, b.id, b.invoke_ms, b.seq
                ));
            }
        }
    }
    Verdict::of("linearizable appends", anomalies)
}
