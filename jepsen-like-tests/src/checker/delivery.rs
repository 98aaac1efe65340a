//! Gap-free delivery: each subscription's messages are consecutive seqs from its
//! `after`, with no duplicate, and match the final history.

use std::collections::HashMap;

use super::Verdict;
use crate::history::History;

pub fn subscriptions_gap_free(h: &History) -> Verdict {
    let reference: HashMap<u64, &crate::history::Msg> =
        h.finals.values().next().map(|msgs| msgs.iter().map(|m| (m.seq, m)).collect()).unwrap_or_default();
    let mut anomalies = Vec::new();
    for s in &h.subscriptions {
        for (expect, m) in (s.after + 1..).zip(&s.received) {
            if m.seq != expect {
                anomalies.push(format!(
                    "client {} on node {}: expected seq {expect}, got {} ({})",
                    s.client,
                    s.node,
                    m.seq,
                    if m.seq < expect { "duplicate or reorder" } else { "gap" }
                ));
                break;
            }
            if let Some(f) = reference.get(&m.seq) {
                if f.id != m.id || f.from != m.from {
                    anomalies.push(format!("client {}: seq {} was {}/{} but is {}/{} in the final history", s.client, m.seq, m.from, m.id, f.from, f.id));
                }
            }
        }
    }
    Verdict::of("subscriptions gap-free, duplicate-free, consistent", anomalies)
}
