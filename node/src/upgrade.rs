//! The rules of the cluster's feature level (see `raft_store::format`): who may
//! join a cluster at a level, and what `chorusctl cluster upgrade` may raise it
//! to. Pure functions over what members report, so they are tested without a
//! cluster; the admin service asks the members and applies them.

use raft_store::format;
use raft_store::types::NodeId;

/// The newest level a node reads, from what it reports: binaries older than
/// feature levels report 0 and read level 1.
pub fn reads(reported: u32) -> u32 {
    reported.max(format::LEGACY)
}

/// Whether a node whose binary reads up to `joiner_reports` may join a cluster
/// at `cluster_level`: it must read every entry and snapshot it will be sent.
pub fn admit(cluster_level: u32, joiner: NodeId, joiner_reports: u32) -> Result<(), String> {
    let reads = reads(joiner_reports);
    if reads < cluster_level {
        return Err(format!(
            "node {joiner} reads feature levels up to {reads}, but the cluster is at level {cluster_level}: \
             run a chorusd there that reads level {cluster_level}"
        ));
    }
    Ok(())
}

/// The level `cluster upgrade` raises to: `requested`, or with 0 the newest
/// level every member reads. `members` is each member's report, `None` if it
/// did not answer: a member that cannot be asked cannot be known to read the
/// new level, so the upgrade waits for it. A result at or below `current`
/// means there is nothing to do.
pub fn target(requested: u32, members: &[(NodeId, Option<u32>)]) -> Result<u32, String> {
    let unreachable: Vec<NodeId> = members.iter().filter(|(_, r)| r.is_none()).map(|(id, _)| *id).collect();
    if !unreachable.is_empty() {
        return Err(format!(
            "member(s) {unreachable:?} did not answer: every member must report the levels it reads before an upgrade"
        ));
    }
    let common = members.iter().filter_map(|(_, r)| r.map(reads)).min().unwrap_or(format::LEGACY);
    let want = if requested == 0 { common } else { requested };
    let behind: Vec<String> = members
        .iter()
        .filter_map(|(id, r)| r.map(reads).filter(|reads| *reads < want).map(|reads| format!("{id} (reads up to {reads})")))
        .collect();
    if !behind.is_empty() {
        return Err(format!("cannot raise the cluster to level {want}: member(s) {} must run a newer chorusd first", behind.join(", ")));
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_older_than_levels_reads_level_1() {
        assert_eq!(reads(0), 1);
        assert_eq!(reads(2), 2);
        assert!(admit(1, 4, 0).is_ok());
        let e = admit(2, 4, 0).unwrap_err();
        assert!(e.contains("node 4") && e.contains("level 2"), "{e}");
        assert!(admit(2, 4, 2).is_ok());
    }

    #[test]
    fn upgrade_goes_to_the_newest_level_every_member_reads() {
        assert_eq!(target(0, &[(1, Some(2)), (2, Some(2)), (3, Some(3))]), Ok(2));
        // One member on an old binary holds the cluster at level 1.
        assert_eq!(target(0, &[(1, Some(2)), (2, Some(0))]), Ok(1));
        let e = target(2, &[(1, Some(2)), (2, Some(0))]).unwrap_err();
        assert!(e.contains("2 (reads up to 1)"), "{e}");
        // An unreachable member blocks it.
        let e = target(0, &[(1, Some(2)), (3, None)]).unwrap_err();
        assert!(e.contains("[3]"), "{e}");
        assert_eq!(target(2, &[(1, Some(2))]), Ok(2));
    }
}
