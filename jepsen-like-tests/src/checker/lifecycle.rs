//! Edits, deletes and reactions: what a node serves of a message agrees with
//! the change entries it serves beside it, and an acked delete is never undone.
//!
//! A read returns the room's entries with each message as it is now. Folding
//! the read's own change entries in seq order, up to the room's head when the
//! message's page was read (or a little later: see [`served_consistently`]),
//! gives what each message must be: the text of its last edit, deleted (with no text, no reactions, and
//! every edit's text gone) after a delete, and for each (emoji, user) the
//! last reaction's choice. A message served otherwise resurfaced an older
//! text, kept a deleted one, or lost or invented a reaction.

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{Change, History, Msg, Outcome};

/// What one message must be, folded from the change entries served with it.
#[derive(Default)]
struct Folded {
    /// The text of the last edit, if any.
    text: Option<String>,
    /// The last edit's text was read redacted (its message was deleted by
    /// the time its page was read), so which text it set is not known here.
    redacted_edit: bool,
    deleted: bool,
    reactions: BTreeMap<(String, String), bool>,
}

/// The anomalies of one served set of entries (`what` names it).
pub fn served_consistently(entries: &[Msg], what: &str) -> Vec<String> {
    let cut = |m: &Msg| if m.as_of == 0 { u64::MAX } else { m.as_of };
    let mut changes: BTreeMap<u64, Vec<&Msg>> = BTreeMap::new();
    for e in entries {
        if let Some(c) = &e.change {
            if let Some(target) = c.target() {
                changes.entry(target).or_default().push(e);
            }
        }
    }
    let by_seq: BTreeMap<u64, &Msg> = entries.iter().map(|e| (e.seq, e)).collect();
    let mut anomalies = Vec::new();
    for (target, mut list) in changes {
        list.sort_by_key(|e| e.seq);
        let Some(m) = by_seq.get(&target).filter(|m| m.change.is_none()) else {
            anomalies.push(format!("{what}: a change targets #{target}, which it does not serve as a message"));
            continue;
        };
        // Each edit's own text is gone once a delete it was read after applied.
        let delete = list.iter().find(|e| matches!(e.change, Some(Change::Delete { .. }))).map(|d| d.seq);
        for e in list.iter().filter(|e| matches!(e.change, Some(Change::Edit { .. }))) {
            if delete.is_some_and(|d| d <= cut(e)) && !e.text.is_empty() {
                anomalies.push(format!("{what}: edit #{} of deleted #{target} still holds its text", e.seq));
            }
        }
        // A page's entries are scanned just after its head is read, so a
        // message may also show changes applied in between (which a later
        // page then serves): it must match the fold up to its cut or a later one.
        let base = list.iter().take_while(|e| e.seq <= cut(m)).count();
        if !(base..=list.len()).any(|k| compare(m, &fold(list[..k].iter().copied())).is_none()) {
            anomalies.extend(compare(m, &fold(list[..base].iter().copied())).map(|why| format!("{what}: #{target} {why}")));
        }
    }
    anomalies
}

fn fold<'a>(changes: impl Iterator<Item = &'a Msg>) -> Folded {
    let mut f = Folded::default();
    for e in changes {
        match &e.change {
            Some(Change::Edit { text, .. }) => {
                f.redacted_edit = text.is_empty();
                f.text = Some(text.clone()).filter(|t| !t.is_empty());
            }
            Some(Change::Delete { .. }) => f.deleted = true,
            Some(Change::React { emoji, added, .. }) => {
                f.reactions.insert((emoji.clone(), e.from.clone()), *added);
            }
            Some(Change::Topic { .. }) | None => {}
        }
    }
    f
}

/// What is wrong with message `m` as served, given what its changes fold to.
fn compare(m: &Msg, f: &Folded) -> Option<String> {
    if f.deleted {
        let redacted = m.deleted && m.text.is_empty() && m.reactions.is_empty();
        return (!redacted).then(|| format!("was deleted but is served as {:?} (deleted: {})", m.text, m.deleted));
    }
    if m.deleted {
        return Some("is served deleted with no delete entry before it".into());
    }
    if let Some(text) = &f.text {
        if &m.text != text || !m.edited {
            return Some(format!("is served as {:?}, but its last edit says {text:?}", m.text));
        }
    }
    if f.redacted_edit && !m.edited {
        return Some("is served unedited after an edit".into());
    }
    let mut want: Vec<(String, String)> = f.reactions.iter().filter(|(_, on)| **on).map(|(k, _)| k.clone()).collect();
    want.sort();
    let mut got: Vec<(String, String)> = m.reactions.iter().flat_map(|(e, us)| us.iter().map(move |u| (e.clone(), u.clone()))).collect();
    got.sort();
    (got != want).then(|| format!("has reactions {got:?}, its reaction entries add up to {want:?}"))
}

/// Every node's final history and every read agree with their own change entries.
pub fn changes_fold(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for (node, msgs) in &h.finals {
        anomalies.extend(served_consistently(msgs, &format!("node {node}'s final history")));
    }
    for r in h.reads.iter().filter(|r| r.outcome == Outcome::Ok) {
        anomalies.extend(served_consistently(&r.changed, &format!("a read on node {} at {} ms", r.node, r.invoke_ms)));
    }
    Verdict::of("messages served as their edits, deletes and reactions say", anomalies)
}

/// Each node's final topic is the text of the last topic entry in its own
/// final history up to the room's last seq when the topic was read ("" if
/// none): a topic change is never lost, undone or applied out of order on
/// any node. The topic is read after the history: a node whose room had
/// moved past its final history by then (a write that landed late) may hold
/// a topic entry the history lacks, and is not compared.
pub fn topic_is_the_last_set(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for (node, msgs) in &h.finals {
        let Some((topic, head)) = h.final_topics.get(node) else {
            anomalies.push(format!("node {node}'s topic was not read at the end"));
            continue;
        };
        let last = msgs.iter().filter(|m| m.seq <= *head).filter_map(|m| match &m.change {
            Some(Change::Topic { text }) => Some((m.seq, text.as_str())),
            _ => None,
        });
        let want = last.max_by_key(|(seq, _)| *seq).map_or("", |(_, t)| t);
        let end = msgs.iter().map(|m| m.seq).max().unwrap_or(0);
        if topic != want && *head <= end {
            anomalies.push(format!("node {node} serves the topic {topic:?}, but its last topic entry up to #{head} sets {want:?}"));
        }
    }
    Verdict::of("the topic served is the last one set", anomalies)
}

/// A message whose delete was acked is deleted in every final history and in
/// every linearizable read that began after the ack.
pub fn deletes_stick(h: &History) -> Verdict {
    let mut anomalies = Vec::new();
    for op in h.sends.iter().filter(|o| o.outcome == Outcome::Ok) {
        let Some(Change::Delete { target }) = &op.change else { continue };
        let served_live = |entries: &[Msg]| entries.iter().any(|m| m.seq == *target && m.change.is_none() && !m.deleted);
        for (node, msgs) in &h.finals {
            if served_live(msgs) {
                anomalies.push(format!("node {node} serves #{target} after its delete {}/{} was acked", op.user, op.id));
            }
        }
        for r in h.reads.iter().filter(|r| r.outcome == Outcome::Ok && r.linearizable && r.invoke_ms > op.complete_ms) {
            if served_live(&r.changed) {
                anomalies.push(format!(
                    "a linearizable read on node {} at {} ms serves #{target}, deleted by {}/{} acked at {} ms",
                    r.node, r.invoke_ms, op.user, op.id, op.complete_ms
                ));
            }
        }
    }
    Verdict::of("an acked delete is never undone", anomalies)
}
