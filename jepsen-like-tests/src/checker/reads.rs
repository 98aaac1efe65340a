//! Read your writes anywhere: a linearizable read sees every ack before it began.

use std::collections::HashSet;

use super::Verdict;
use crate::history::{History, Outcome};

pub fn linearizable_reads(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for r in h.reads.iter().filter(|r| r.linearizable && r.outcome == Outcome::Ok) {
        let seen: HashSet<&(String, String)> = r.seen.iter().collect();
        for op in h.sends.iter().filter(|o| o.outcome == Outcome::Ok && o.room == r.room && o.complete_ms < r.invoke_ms) {
            if !seen.contains(&(op.user.clone(), op.id.clone())) {
                anomalies.push(format!(
                    "linearizable read on node {} at {} ms misses {}/{} acked at {} ms",
                    r.node, r.invoke_ms, op.user, op.id, op.complete_ms
                ));
            }
        }
    }
    Verdict::of("linearizable reads see every earlier ack", anomalies)
}
