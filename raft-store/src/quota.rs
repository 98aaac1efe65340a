//! What the log counts per user so that nodes can bound it: the rooms each
//! user created (joined first). The count lives in the `Meta` table and is
//! kept from feature level 3 on: every member of a level-3 cluster runs a
//! binary with this code, so they all count alike. Rooms created before the
//! cluster reached level 3 are not counted.
//!
//! The bound itself is the node's (`--max-rooms-per-user`): a node refuses a
//! join that would create a room once the user's count has reached it, so
//! the state machine only counts and never refuses, and nodes with other
//! bounds still apply every entry alike.

use crate::chat::{feature_level, get_record, put_record, Table, Tables, TablesRead};
use crate::error::StoreError;

/// The feature level from which rooms created are counted.
pub const LEVEL: u32 = 3;

const META_ROOMS_CREATED_PREFIX: &[u8] = b"rooms_created/";

fn rooms_created_key(user: &str) -> Vec<u8> {
    let mut k = META_ROOMS_CREATED_PREFIX.to_vec();
    k.extend_from_slice(user.as_bytes());
    k
}

/// How many rooms `user` created (at level 3 or later).
pub fn rooms_created(t: &(impl TablesRead + ?Sized), user: &str) -> Result<u64, StoreError> {
    Ok(get_record(t, Table::Meta, &rooms_created_key(user))?.unwrap_or(0))
}

/// Counts a room `user` just created, if the cluster is at [`LEVEL`].
pub(crate) fn count_room_created(t: &mut impl Tables, user: &str) -> Result<(), StoreError> {
    if feature_level(&*t)? < LEVEL {
        return Ok(());
    }
    let n = rooms_created(&*t, user)? + 1;
    put_record(t, Table::Meta, &rooms_created_key(user), &n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{apply, Command, Event, MemTables};

    fn run(t: &mut MemTables, ts_ms: u64, event: Event) {
        apply(t, &Command { ts_ms, event }).unwrap();
    }

    fn join(t: &mut MemTables, room: &str, user: &str) {
        run(t, 3, Event::RoomJoined { room: room.into(), user: user.into() });
    }

    #[test]
    fn rooms_are_counted_for_their_first_joiner_from_level_3_on() {
        let mut t = MemTables::default();
        run(&mut t, 1, Event::ClusterFormed { cluster_id: "c".into(), signing_key: vec![1; 32] });
        join(&mut t, "before", "ann");
        assert_eq!(rooms_created(&t, "ann").unwrap(), 0, "counted below level 3");
        run(&mut t, 2, Event::FeatureLevelRaised { level: LEVEL });
        join(&mut t, "a", "ann");
        join(&mut t, "a", "bob");
        join(&mut t, "b", "ann");
        // Joining again, or joining a room that existed before, creates nothing.
        join(&mut t, "a", "ann");
        join(&mut t, "before", "bob");
        assert_eq!(rooms_created(&t, "ann").unwrap(), 2);
        assert_eq!(rooms_created(&t, "bob").unwrap(), 0);
        // A room left by everyone still exists: joining it again is no creation.
        run(&mut t, 4, Event::RoomLeft { room: "b".into(), user: "ann".into() });
        join(&mut t, "b", "bob");
        assert_eq!(rooms_created(&t, "bob").unwrap(), 0);
    }
}
