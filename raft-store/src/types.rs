//! The openraft type configuration shared by every Chorus crate.

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::chat::{Command, Outcome};
use crate::format;
use crate::snapshot::SnapshotFile;

/// What the cluster knows of a member: where to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// gRPC address for Raft and admin traffic (`host:port`).
    pub raft_addr: String,
    /// Base URL of the HTTP + WebSocket API (`http://host:port`).
    pub client_url: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.raft_addr, self.client_url)
    }
}

/// One Raft log entry's application data: the commands the leader gathered from
/// concurrent clients and proposed together, and the feature level the entry is
/// written at. Packing them shares one entry's replication, fsync and apply
/// among many writes; each command keeps its own outcome, in order.
///
/// # Encoding
///
/// At level 1 a batch is encoded exactly as before levels existed: bincode's
/// sequence of commands, a varint count then each command. From level 2 it is a
/// varint `2^40 + level` followed by that sequence. A count is below 2^32 (a
/// batch is one Raft entry), so the first varint tells the two apart, and a
/// level-1 entry written by a binary older than levels still reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub level: u32,
    pub commands: Vec<Command>,
}

/// Added to the level in the first varint of a level-2-or-later batch.
const LEVEL_MARK: u64 = 1 << 40;

impl Batch {
    /// A batch at `cluster_level`, or at the level of its newest event type if
    /// that is higher: the one event that may outrun the cluster's level is the
    /// one raising it, proposed once every member reads the new level.
    pub fn new(cluster_level: u32, commands: Vec<Command>) -> Self {
        let level = commands.iter().map(|c| c.event.level()).fold(cluster_level.max(format::LEGACY), u32::max);
        Batch { level, commands }
    }
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(c) = self.commands.iter().find(|c| c.event.level() > self.level) {
            return Err(serde::ser::Error::custom(format!("{c} needs feature level {}, the batch is at {}", c.event.level(), self.level)));
        }
        if self.level <= format::LEGACY {
            return self.commands.serialize(s);
        }
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&(LEVEL_MARK + u64::from(self.level)))?;
        t.serialize_element(&self.commands)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Chorus log entry (bincode)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
        use serde::de::Error;
        // bincode hands over the first varint as the sequence's length.
        let first = seq.size_hint().ok_or_else(|| A::Error::custom("a batch decodes only from bincode"))? as u64;
        if first < LEVEL_MARK {
            let mut commands = Vec::with_capacity((first as usize).min(4096));
            for _ in 0..first {
                let command: Command = seq.next_element()?.ok_or_else(|| A::Error::custom("batch ends early"))?;
                // Written before levels, or at level 1: no event of a later
                // level can be in it (`Batch::new` marks a batch that has one).
                if command.event.level() > format::LEGACY {
                    return Err(A::Error::custom(format!("{command} needs feature level {}, its entry is at level 1", command.event.level())));
                }
                commands.push(command);
            }
            return Ok(Batch { level: format::LEGACY, commands });
        }
        let level = u32::try_from(first - LEVEL_MARK).map_err(|_| A::Error::custom("batch level out of range"))?;
        if level <= format::LEGACY {
            return Err(A::Error::custom(format!("a marked batch cannot be at level {level}")));
        }
        if level > format::CURRENT {
            return Err(A::Error::custom(format::unsupported("a log entry", level)));
        }
        let commands: Vec<Command> = seq.next_element()?.ok_or_else(|| A::Error::custom("batch ends early"))?;
        if let Some(c) = commands.iter().find(|c| c.event.level() > level) {
            return Err(A::Error::custom(format!("{c} needs feature level {}, its entry is at {level}", c.event.level())));
        }
        Ok(Batch { level, commands })
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.commands.as_slice() {
            [one] => write!(f, "{one}"),
            many => write!(f, "batch of {} commands", many.len()),
        }
    }
}

/// The response a proposer gets once its entry is applied: one outcome per
/// command of the batch (none for blank and membership entries).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub outcomes: Vec<Outcome>,
}

openraft::declare_raft_types!(
    /// Chorus's openraft configuration: chat commands in, outcomes out.
    pub TypeConfig:
        D = Batch,
        R = Response,
        NodeId = u64,
        Node = NodeInfo,
);

pub type NodeId = u64;
#[cfg(feature = "rocksdb")]
pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Event;
    use crate::codec::{decode, encode};
    use crate::error::StoreError;

    fn post(text: &str) -> Command {
        Command { ts_ms: 7, event: Event::MessagePosted { room: "r".into(), from: "ann".into(), client_id: "1".into(), text: text.into() } }
    }

    fn raise(level: u32) -> Command {
        Command { ts_ms: 8, event: Event::FeatureLevelRaised { level } }
    }

    /// The entry payload as binaries from before feature levels declared it.
    #[derive(Serialize)]
    struct LegacyBatch(Vec<Command>);

    #[test]
    fn a_legacy_entry_reads_as_level_1_and_level_1_writes_the_same_bytes() {
        let commands = vec![post("a"), post("b")];
        let legacy = encode(&LegacyBatch(commands.clone())).unwrap();
        let read: Batch = decode(&legacy).unwrap();
        assert_eq!(read, Batch { level: 1, commands: commands.clone() });
        assert_eq!(encode(&Batch::new(1, commands)).unwrap(), legacy);
    }

    #[test]
    fn a_level_2_entry_is_marked_and_round_trips() {
        let b = Batch::new(2, vec![post("a"), raise(2)]);
        let bytes = encode(&b).unwrap();
        // bincode's varint for a u64 above u32::MAX: 0xFD, then 8 bytes.
        assert_eq!(bytes[0], 0xFD);
        assert_eq!(u64::from_le_bytes(bytes[1..9].try_into().unwrap()), LEVEL_MARK + 2);
        assert_eq!(decode::<Batch>(&bytes).unwrap(), b);
    }

    #[test]
    fn the_event_raising_the_level_lifts_its_batch_and_cannot_travel_below_it() {
        // Proposed while the cluster is still at level 1.
        assert_eq!(Batch::new(1, vec![post("a"), raise(2)]).level, 2);
        assert_eq!(Batch::new(1, vec![post("a")]).level, 1);
        let e = encode(&Batch { level: 1, commands: vec![raise(2)] }).unwrap_err();
        assert!(e.to_string().contains("needs feature level 2"), "{e}");
        // Nor read below it (found by the `log_entry` fuzz target: an unmarked
        // entry holding a level-2 event decoded, and could not be written back).
        let unmarked = encode(&LegacyBatch(vec![post("a"), raise(2)])).unwrap();
        match decode::<Batch>(&unmarked) {
            Err(StoreError::Codec(msg)) => assert!(msg.contains("needs feature level 2"), "{msg}"),
            other => panic!("an unmarked entry with a level-2 event was read: {other:?}"),
        }
    }

    #[test]
    fn an_entry_of_a_newer_level_is_refused_by_name() {
        let newer = format::CURRENT + 1;
        let bytes = encode(&(LEVEL_MARK + u64::from(newer), vec![post("a")])).unwrap();
        match decode::<Batch>(&bytes) {
            Err(StoreError::Unsupported(msg)) => {
                assert!(msg.contains(&format!("feature level {newer}")) && msg.contains("newer chorusd"), "{msg}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // A marked batch claiming level 1 or 0 is corrupt, not legacy.
        let bytes = encode(&(LEVEL_MARK + 1, vec![post("a")])).unwrap();
        assert!(matches!(decode::<Batch>(&bytes), Err(StoreError::Codec(_))));
    }
}
