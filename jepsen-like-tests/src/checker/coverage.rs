//! A run that tested nothing is not a pass. Every property of SPEC §5 holds
//! vacuously on an empty history, a history without a node's final read, or a
//! run whose faults never happened; these verdicts make each of those a failure.

use super::Verdict;
use crate::history::{History, Outcome};

/// Every node of the cluster gave its final history: a node whose final read
/// failed may be the one that lost an acked message.
pub fn every_final_read(h: &History) -> Verdict {
    let anomalies = h
        .expected
        .nodes
        .iter()
        .filter(|id| !h.finals.contains_key(id))
        .map(|id| match h.final_errors.get(id) {
            Some(why) => format!("node {id} gave no final history: {why}"),
            None => format!("node {id} gave no final history"),
        })
        .collect();
    let mut v = Verdict::of("every node's final history read", anomalies);
    if h.expected.nodes.is_empty() {
        v.anomalies.push("the run names no nodes to read".into());
        v.ok = false;
    }
    v
}

/// The workload did enough to mean something: the minimum of acked sends and
/// of acked changes (a delete among them), at least one successful read, at
/// least one delivered message.
pub fn enough_operations(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    let acked = h.sends.iter().filter(|o| o.outcome == Outcome::Ok).count();
    if acked < h.expected.min_acked.max(1) {
        anomalies.push(format!("{acked} sends acked, fewer than the minimum of {}", h.expected.min_acked.max(1)));
    }
    let (topics, changes): (Vec<_>, Vec<_>) = h
        .sends
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| o.change.as_ref())
        .partition(|c| matches!(c, crate::history::Change::Topic { .. }));
    if topics.len() < h.expected.min_topics {
        anomalies.push(format!("{} topic changes acked, fewer than the minimum of {}", topics.len(), h.expected.min_topics));
    }
    if changes.len() < h.expected.min_changes {
        anomalies.push(format!("{} edits, deletes and reactions acked, fewer than the minimum of {}", changes.len(), h.expected.min_changes));
    }
    if h.expected.min_changes > 0 && !changes.iter().any(|c| matches!(c, crate::history::Change::Delete { .. })) {
        anomalies.push("no delete was acked".into());
    }
    let marks = h.marks.iter().filter(|m| m.outcome == Outcome::Ok).count();
    if marks < h.expected.min_marks {
        anomalies.push(format!("{marks} read markers acked, fewer than the minimum of {}", h.expected.min_marks));
    }
    if !h.reads.iter().any(|r| r.outcome == Outcome::Ok) {
        anomalies.push(format!("none of {} history reads succeeded", h.reads.len()));
    }
    if h.subscriptions.iter().all(|s| s.received.is_empty()) {
        anomalies.push(format!("{} subscriptions received no message", h.subscriptions.len()));
    }
    Verdict::of("enough operations completed to test anything", anomalies)
}

/// Every fault the schedule asked for took effect and was undone.
pub fn faults_took_effect(h: &History) -> Verdict {
    Verdict::of("every scheduled fault took effect", h.fault_failures.clone())
}
