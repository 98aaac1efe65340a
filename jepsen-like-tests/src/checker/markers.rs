//! Read markers: a user's marker only moves forward, covers every mark that
//! was acked, claims no mark that was never asked for, and every node ends
//! with the same one.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{History, MarkOp, Outcome};

/// Each acked mark's answer is at least what it asked and at least every
/// answer of the user's marks acked before it began (the marker never moves
/// back); each node's final marker of a user is the same, at least every
/// acked answer, and at most the furthest mark the user asked for (acked or
/// unknown: a mark with no answer may still have applied).
pub fn markers_only_move_forward(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    let mut by_user: BTreeMap<&str, Vec<&MarkOp>> = BTreeMap::new();
    for m in &h.marks {
        by_user.entry(m.user.as_str()).or_default().push(m);
    }
    for (user, marks) in &by_user {
        let acked: Vec<(&MarkOp, u64)> = marks.iter().filter_map(|m| m.marked.filter(|_| m.outcome == Outcome::Ok).map(|s| (*m, s))).collect();
        for (m, seq) in &acked {
            if *seq < m.asked {
                anomalies.push(format!("{user}'s mark of {} at {} ms was answered {seq}, below what it asked", m.asked, m.invoke_ms));
            }
            for (earlier, before) in acked.iter().filter(|(e, _)| e.complete_ms < m.invoke_ms) {
                if seq < before {
                    anomalies.push(format!(
                        "{user}'s marker went back: {before} acked at {} ms, then {seq} for a mark begun at {} ms",
                        earlier.complete_ms, m.invoke_ms
                    ));
                }
            }
        }
        let floor = acked.iter().map(|(_, s)| *s).max().unwrap_or(0);
        let ceiling = marks.iter().filter(|m| m.outcome != Outcome::Fail).map(|m| m.asked).max().unwrap_or(0);
        let Some(finals) = h.final_markers.get(*user) else {
            anomalies.push(format!("{user}'s marker was not read at the end"));
            continue;
        };
        for node in &h.expected.nodes {
            match finals.get(node) {
                None => anomalies.push(format!("node {node} gave no final marker of {user}")),
                Some(seq) if *seq < floor => anomalies.push(format!("node {node} ends with {user}'s marker at {seq}, below the acked {floor}")),
                Some(seq) if *seq > ceiling => anomalies.push(format!("node {node} ends with {user}'s marker at {seq}, past any mark asked ({ceiling})")),
                Some(_) => {}
            }
        }
        let values: Vec<u64> = finals.values().copied().collect();
        if values.windows(2).any(|w| w[0] != w[1]) {
            anomalies.push(format!("the nodes end with different markers of {user}: {finals:?}"));
        }
    }
    Verdict::of("read markers only move forward and agree", anomalies)
}
