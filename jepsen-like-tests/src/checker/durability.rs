//! Acked means durable; exactly-once effect; nothing that was never sent.

use std::collections::{BTreeMap, HashSet};

use super::Verdict;
use crate::history::{History, Outcome};

fn counts(h: &History) -> BTreeMap<u64, BTreeMap<(String, String), Vec<u64>>> {
    h.finals
        .iter()
        .map(|(node, msgs)| {
            let mut c: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
            for m in msgs {
                c.entry((m.from.clone(), m.id.clone())).or_default().push(m.seq);
            }
            (*node, c)
        })
        .collect()
}

/// Every acknowledged send is in every node's final history exactly once, at the
/// seq it was acknowledged with.
pub fn acked_present_once(h: &History) -> Verdict {
    let counts = counts(h);
    let mut anomalies = Vec::new();
    for op in h.sends.iter().filter(|o| o.outcome == Outcome::Ok) {
        for (node, c) in &counts {
            match c.get(&(op.user.clone(), op.id.clone())).map(Vec::as_slice) {
                None | Some([]) => anomalies.push(format!("acked {}/{} (seq {:?}) lost on node {node}", op.user, op.id, op.seq)),
                Some([seq]) if Some(*seq) != op.seq => {
                    anomalies.push(format!("acked {}/{} at seq {:?} but node {node} has it at {seq}", op.user, op.id, op.seq))
                }
                Some([_]) => {}
                Some(many) => anomalies.push(format!("acked {}/{} stored {} times on node {node}: {many:?}", op.user, op.id, many.len())),
            }
        }
    }
    Verdict::of("acked messages present exactly once", anomalies)
}

/// A send with an unknown outcome is stored at most once.
pub fn unknown_at_most_once(h: &History) -> Verdict {
    let counts = counts(h);
    let mut anomalies = Vec::new();
    for op in h.sends.iter().filter(|o| o.outcome == Outcome::Unknown) {
        for (node, c) in &counts {
            if let Some(seqs) = c.get(&(op.user.clone(), op.id.clone())) {
                if seqs.len() > 1 {
                    anomalies.push(format!("unknown {}/{} stored {} times on node {node}", op.user, op.id, seqs.len()));
                }
            }
        }
    }
    Verdict::of("unknown outcomes present at most once", anomalies)
}

/// Nothing is stored that no client sent, and nothing that failed definitely.
pub fn no_phantoms(h: &History) -> Verdict {
    let sent: HashSet<(String, String)> =
        h.sends.iter().filter(|o| o.outcome != Outcome::Fail).map(|o| (o.user.clone(), o.id.clone())).collect();
    let mut anomalies = Vec::new();
    for (node, msgs) in &h.finals {
        for m in msgs {
            if !sent.contains(&(m.from.clone(), m.id.clone())) {
                anomalies.push(format!("node {node} stores {}/{} (seq {}) that was never sent (or failed)", m.from, m.id, m.seq));
            }
        }
    }
    Verdict::of("nothing present that was never sent", anomalies)
}
