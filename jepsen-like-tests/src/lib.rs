//! The Chorus fault-injection suite, as a library: the recorded [`history`], the
//! [`checker`] (one module per guarantee of SPEC §5) and the [`report`].
//! `chorus-jepsen` (src/main.rs) runs real `chorusd` processes under faults and
//! feeds what its clients saw to these.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod powerloss;
pub mod proxy;
pub mod report;
pub mod workload;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::checker::check_all;
    use crate::history::{Change, Expected, History, MarkOp, Msg, Outcome, ReadOp, SendOp, Subscription};

    fn msg(seq: u64, id: &str, ts: u64) -> Msg {
        Msg { room: "r".into(), seq, id: id.into(), from: "u".into(), ts, ..Msg::default() }
    }

    fn send(id: &str, invoke: u64, complete: u64, outcome: Outcome, seq: Option<u64>) -> SendOp {
        SendOp { client: 0, node: 1, user: "u".into(), room: "r".into(), id: id.into(), invoke_ms: invoke, complete_ms: complete, outcome, seq, change: None }
    }

    /// Two acked sends, in order, on three identical nodes.
    fn good() -> History {
        let finals = vec![msg(1, "a", 10), msg(2, "b", 20)];
        History {
            sends: vec![send("a", 0, 5, Outcome::Ok, Some(1)), send("b", 6, 9, Outcome::Ok, Some(2))],
            reads: vec![ReadOp { node: 2, room: "r".into(), linearizable: true, invoke_ms: 10, complete_ms: 11, outcome: Outcome::Ok, seen: vec![("u".into(), "a".into()), ("u".into(), "b".into())], changed: vec![] }],
            subscriptions: vec![Subscription { client: 1, node: 3, room: "r".into(), after: 0, received: finals.clone() }],
            finals: BTreeMap::from([(1, finals.clone()), (2, finals.clone()), (3, finals)]),
            final_topics: BTreeMap::from([(1, (String::new(), 2)), (2, (String::new(), 2)), (3, (String::new(), 2))]),
            expected: Expected { nodes: vec![1, 2, 3], min_acked: 2, min_changes: 0, min_topics: 0, min_marks: 0 },
            ..History::default()
        }
    }

    /// After a test rewrote the finals: the subscription saw only their first
    /// message, so it agrees with them and the run still delivered something.
    fn resubscribe(h: &mut History) {
        let first = h.finals.values().next().and_then(|f| f.first()).cloned();
        h.subscriptions[0].received = first.into_iter().collect();
    }

    fn failing(h: &History) -> Vec<&'static str> {
        check_all(h).into_iter().filter(|v| !v.ok).map(|v| v.property).collect()
    }

    #[test]
    fn a_clean_history_passes_every_check() {
        assert!(failing(&good()).is_empty(), "{:?}", check_all(&good()));
    }

    #[test]
    fn a_lost_ack_is_reported() {
        let mut h = good();
        for f in h.finals.values_mut() {
            f.pop();
        }
        resubscribe(&mut h);
        assert_eq!(failing(&h), vec!["acked messages present exactly once"]);
    }

    #[test]
    fn a_duplicate_is_reported() {
        let mut h = good();
        for f in h.finals.values_mut() {
            f.push(msg(3, "b", 30));
        }
        let f = failing(&h);
        assert!(f.contains(&"acked messages present exactly once"), "{f:?}");
    }

    #[test]
    fn a_reorder_is_reported() {
        let mut h = good();
        h.sends[1].seq = Some(1);
        h.sends[0].seq = Some(2);
        for f in h.finals.values_mut() {
            *f = vec![msg(1, "b", 10), msg(2, "a", 20)];
        }
        resubscribe(&mut h);
        assert!(failing(&h).contains(&"linearizable appends"));
    }

    #[test]
    fn a_gap_is_reported() {
        let mut h = good();
        for f in h.finals.values_mut() {
            f[1].seq = 3;
        }
        h.sends[1].seq = Some(3);
        resubscribe(&mut h);
        assert_eq!(failing(&h), vec!["seq dense from 1"]);
        let mut h = good();
        h.subscriptions[0].received.remove(0);
        assert_eq!(failing(&h), vec!["subscriptions gap-free, duplicate-free, consistent"]);
    }

    #[test]
    fn a_stale_linearizable_read_is_reported() {
        let mut h = good();
        h.reads[0].seen.pop();
        assert_eq!(failing(&h), vec!["linearizable reads see every earlier ack"]);
        // The same read declared local is allowed to lag.
        h.reads[0].linearizable = false;
        assert!(failing(&h).is_empty());
    }

    #[test]
    fn diverging_nodes_phantoms_and_clock_steps_are_reported() {
        let mut h = good();
        h.finals.get_mut(&3).unwrap()[1].id = "z".into();
        let f = failing(&h);
        assert!(f.contains(&"every node's final history identical") && f.contains(&"nothing present that was never sent"), "{f:?}");
        let mut h = good();
        for f in h.finals.values_mut() {
            f[1].ts = 1;
        }
        resubscribe(&mut h);
        assert_eq!(failing(&h), vec!["ts never decreases within a room"]);
    }

    #[test]
    fn unknown_outcomes_may_be_absent_but_not_doubled() {
        let mut h = good();
        h.sends.push(send("c", 10, 20, Outcome::Unknown, None));
        assert!(failing(&h).is_empty(), "absent is fine");
        for f in h.finals.values_mut() {
            f.push(msg(3, "c", 30));
            f.push(msg(4, "c", 40));
        }
        resubscribe(&mut h);
        assert!(failing(&h).contains(&"unknown outcomes present at most once"));
    }

    #[test]
    fn a_node_without_a_final_read_fails_the_run() {
        let mut h = good();
        h.finals.remove(&3);
        h.final_errors.insert(3, "connection refused".into());
        assert_eq!(failing(&h), vec!["every node's final history read"]);
        let why = &check_all(&h)[0].anomalies[0];
        assert!(why.contains("node 3") && why.contains("connection refused"), "{why}");
    }

    #[test]
    fn an_empty_or_thin_run_fails() {
        let empty = History { expected: Expected { nodes: vec![1, 2, 3], min_acked: 1, min_changes: 0, min_topics: 0, min_marks: 0 }, ..History::default() };
        let f = failing(&empty);
        assert!(f.contains(&"every node's final history read") && f.contains(&"enough operations completed to test anything"), "{f:?}");
        // Below the minimum of acks.
        let mut h = good();
        h.expected.min_acked = 3;
        assert_eq!(failing(&h), vec!["enough operations completed to test anything"]);
        // No read succeeded.
        let mut h = good();
        h.reads[0].outcome = Outcome::Unknown;
        assert_eq!(failing(&h), vec!["enough operations completed to test anything"]);
        // Subscribers heard nothing.
        let mut h = good();
        h.subscriptions[0].received.clear();
        assert_eq!(failing(&h), vec!["enough operations completed to test anything"]);
        // A history that names no nodes cannot pass either.
        let mut h = good();
        h.expected.nodes.clear();
        assert_eq!(failing(&h), vec!["every node's final history read"]);
    }

    /// `good()` then an acked edit (#3), reaction (#4) and delete (#5) of
    /// message #1, and message #2 edited (#6): served as they should be.
    fn changed() -> History {
        let mut h = good();
        let change = |id: &str, seq, c: Change| SendOp { change: Some(c), ..send(id, 20 + seq, 21 + seq, Outcome::Ok, Some(seq)) };
        h.sends.push(change("e", 3, Change::Edit { target: 1, text: String::new() }));
        h.sends.push(change("r", 4, Change::React { target: 1, emoji: "👍".into(), added: true }));
        h.sends.push(change("d", 5, Change::Delete { target: 1 }));
        h.sends.push(change("e2", 6, Change::Edit { target: 2, text: "new".into() }));
        h.expected.min_changes = 4;
        let entry = |seq, id: &str, c: Change| Msg { change: Some(c), ..msg(seq, id, 10 * seq) };
        let mut finals = vec![
            Msg { deleted: true, ..msg(1, "a", 10) },
            Msg { text: "new".into(), edited: true, ..msg(2, "b", 20) },
            entry(3, "e", Change::Edit { target: 1, text: String::new() }),
            entry(4, "r", Change::React { target: 1, emoji: "👍".into(), added: true }),
            entry(5, "d", Change::Delete { target: 1 }),
            entry(6, "e2", Change::Edit { target: 2, text: "new".into() }),
        ];
        finals[5].text = "new".into();
        h.finals = BTreeMap::from([(1, finals.clone()), (2, finals.clone()), (3, finals.clone())]);
        h.subscriptions[0].received = finals.clone();
        let mut read = h.reads[0].clone();
        read.invoke_ms = 100;
        read.seen = finals.iter().map(|m| (m.from.clone(), m.id.clone())).collect();
        read.changed = finals;
        h.reads.push(read);
        h
    }

    #[test]
    fn edits_deletes_and_reactions_served_as_acked_pass() {
        assert!(failing(&changed()).is_empty(), "{:?}", check_all(&changed()));
    }

    #[test]
    fn a_resurfaced_text_an_undone_delete_or_a_lost_reaction_is_reported() {
        const FOLD: &str = "messages served as their edits, deletes and reactions say";
        // A node serves message 2's text from before its edit.
        let mut h = changed();
        h.finals.get_mut(&2).unwrap()[1].text = "b payload".into();
        assert!(failing(&h).contains(&FOLD), "{:?}", failing(&h));
        // A read serves deleted message 1 again.
        let mut h = changed();
        h.reads[1].changed[0] = msg(1, "a", 10);
        assert_eq!(failing(&h), vec![FOLD, "an acked delete is never undone"]);
        // A redacted edit still holds its text.
        let mut h = changed();
        for f in h.finals.values_mut() {
            f[2].text = "secret".into();
        }
        assert!(failing(&h).contains(&FOLD));
        // Message 2 shows a reaction nobody made.
        let mut h = changed();
        h.reads[1].changed[1].reactions.insert("🎉".into(), vec!["u".into()]);
        assert_eq!(failing(&h), vec![FOLD]);
        // A message read before its delete, beside its edit read after it
        // (redacted, so its text is gone): not an anomaly.
        let mut h = changed();
        let read = &mut h.reads[1].changed;
        read[1].as_of = 6;
        read[5].text.clear();
        read[5].change = Some(Change::Edit { target: 2, text: String::new() });
        read[5].as_of = 7;
        read.push(Msg { change: Some(Change::Delete { target: 2 }), as_of: 7, ..msg(7, "d2", 70) });
        assert!(!failing(&h).contains(&FOLD), "{:?}", check_all(&h));
        // A run that acked no delete proves nothing about deletes.
        let mut h = changed();
        h.sends.retain(|o| !matches!(o.change, Some(Change::Delete { .. })));
        assert!(failing(&h).contains(&"enough operations completed to test anything"));
    }

    /// `good()` with two acked topic changes after its messages, and every
    /// node serving the last one.
    fn topics() -> History {
        let mut h = good();
        let set = |id: &str, seq, text: &str| SendOp { change: Some(Change::Topic { text: text.into() }), ..send(id, 20 + seq, 21 + seq, Outcome::Ok, Some(seq)) };
        h.sends.extend([set("t1", 3, "first"), set("t2", 4, "second")]);
        h.expected.min_topics = 1;
        let entry = |seq, id: &str, text: &str| Msg { change: Some(Change::Topic { text: text.into() }), ..msg(seq, id, 10 * seq) };
        for f in h.finals.values_mut() {
            f.extend([entry(3, "t1", "first"), entry(4, "t2", "second")]);
        }
        h.subscriptions[0].received = h.finals[&1].clone();
        h.final_topics = BTreeMap::from([(1, ("second".into(), 4)), (2, ("second".into(), 4)), (3, ("second".into(), 4))]);
        h
    }

    #[test]
    fn a_topic_served_other_than_the_last_set_is_reported() {
        const TOPIC: &str = "the topic served is the last one set";
        assert!(failing(&topics()).is_empty(), "{:?}", check_all(&topics()));
        // A node went back to the older topic.
        let mut h = topics();
        h.final_topics.insert(2, ("first".into(), 4));
        assert_eq!(failing(&h), vec![TOPIC]);
        // Read while the room was at #3: the first topic is the right one.
        let mut h = topics();
        h.final_topics.insert(2, ("first".into(), 3));
        assert!(failing(&h).is_empty(), "{:?}", check_all(&h));
        // A node's topic was never read.
        let mut h = topics();
        h.final_topics.remove(&3);
        assert_eq!(failing(&h), vec![TOPIC]);
        // The owner's run acked no topic change: nothing was tested.
        let mut h = topics();
        h.sends.retain(|o| o.change.is_none());
        for f in h.finals.values_mut() {
            f.truncate(2);
        }
        resubscribe(&mut h);
        h.final_topics = BTreeMap::from([(1, (String::new(), 2)), (2, (String::new(), 2)), (3, (String::new(), 2))]);
        assert_eq!(failing(&h), vec!["enough operations completed to test anything"]);
    }

    /// `good()` with u's two acked read markers, and every node ending at the second.
    fn marked() -> History {
        let mut h = good();
        let mark = |asked, invoke, marked| MarkOp {
            client: 0,
            node: 1,
            user: "u".into(),
            asked,
            invoke_ms: invoke,
            complete_ms: invoke + 1,
            outcome: Outcome::Ok,
            marked: Some(marked),
        };
        h.marks = vec![mark(1, 10, 1), mark(2, 20, 2)];
        h.expected.min_marks = 1;
        h.final_markers = BTreeMap::from([("u".to_string(), BTreeMap::from([(1, 2), (2, 2), (3, 2)]))]);
        h
    }

    #[test]
    fn a_marker_that_moves_back_diverges_or_is_lost_is_reported() {
        const MARKERS: &str = "read markers only move forward and agree";
        assert!(failing(&marked()).is_empty(), "{:?}", check_all(&marked()));
        // The second mark's answer went back.
        let mut h = marked();
        h.marks[0].marked = Some(2);
        h.marks[1].marked = Some(1);
        assert_eq!(failing(&h), vec![MARKERS]);
        // A node ends below an acked marker, or past any asked, or differs.
        for (node, seq) in [(2, 1), (3, 5)] {
            let mut h = marked();
            h.final_markers.get_mut("u").unwrap().insert(node, seq);
            assert_eq!(failing(&h), vec![MARKERS], "node {node} at {seq}");
        }
        // A node's final marker is missing.
        let mut h = marked();
        h.final_markers.get_mut("u").unwrap().remove(&1);
        assert_eq!(failing(&h), vec![MARKERS]);
        // A later mark with no answer may have applied: ending at it is fine.
        let mut h = marked();
        h.marks.push(MarkOp { asked: 3, invoke_ms: 30, complete_ms: 36, outcome: Outcome::Unknown, marked: None, ..h.marks[1].clone() });
        h.final_markers = BTreeMap::from([("u".to_string(), BTreeMap::from([(1, 3), (2, 3), (3, 3)]))]);
        assert!(failing(&h).is_empty(), "{:?}", check_all(&h));
        // No acked marker at all: nothing tested.
        let mut h = marked();
        h.marks.clear();
        h.final_markers.clear();
        assert_eq!(failing(&h), vec!["enough operations completed to test anything"]);
    }

    #[test]
    fn a_fault_that_did_not_take_effect_fails_the_run() {
        let mut h = good();
        h.fault_failures.push("pause node 2: the process did not stop".into());
        assert_eq!(failing(&h), vec!["every scheduled fault took effect"]);
    }
}
