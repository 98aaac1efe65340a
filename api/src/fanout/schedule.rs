//! When delivery rounds start: at once after a quiet spell, otherwise on a
//! grid of the node's own, offset from the other nodes'.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Rounds of deliveries start at most this often under load; see the module docs.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(50);

/// Microseconds since the Unix epoch: the clock that every process on a
/// machine reads alike, so nodes sharing it can keep their rounds apart.
pub(super) fn wall_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Where in each [`ROUND_INTERVAL`] node `node`'s rounds start under load, in
/// µs: the fractional part of `node` times the golden ratio, which spreads
/// any run of node ids fairly evenly over the interval (1, 2, 3 land at 30,
/// 11 and 42 ms of 50).
pub(super) fn round_phase(node: u64) -> u64 {
    let golden = 0.618_033_988_749_895_f64;
    ((node as f64 * golden).fract() * ROUND_INTERVAL.as_micros() as f64) as u64
}

/// How long to wait before a round, at wall time `now` (µs), when the last
/// one started at `last`: nothing after a quiet spell of a whole interval (a
/// message to a quiet cluster goes out at once); otherwise until the first
/// start on this node's grid (`phase` into each interval) that is at least
/// half an interval after the last round. Under load that is exactly one
/// interval after it, on the grid.
///
/// Why a grid: the nodes of a cluster apply each message at about the same
/// moment, so rounds timed only from their messages start together on every
/// node. Where nodes share a machine's cores (a local cluster, a test), their
/// rounds then share the cores for their whole length, and every round's last
/// connection is written late; with the nodes' rounds spread over the
/// interval, each round has the cores more to itself and ends sooner. Nodes
/// on machines of their own lose nothing: their rounds just start on a grid.
/// The wait never exceeds one and a half intervals, whatever the wall clock does.
pub(super) fn round_delay(now: u64, last: Option<u64>, phase: u64) -> Duration {
    let interval = ROUND_INTERVAL.as_micros() as u64;
    let Some(last) = last else { return Duration::ZERO };
    if now >= last.saturating_add(interval) {
        return Duration::ZERO;
    }
    let earliest = now.max(last + interval / 2);
    // The first time at or after `earliest` that is `phase` into an interval.
    let start = earliest + (phase % interval + interval - earliest % interval) % interval;
    Duration::from_micros((start - now).min(interval + interval / 2))
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_keep_to_the_node_grid_under_load_and_go_at_once_after_a_quiet_spell() {
        let interval = ROUND_INTERVAL.as_micros() as u64;
        let phase = round_phase(2);
        assert!(phase < interval);
        // Phases of neighbouring ids are spread out.
        let mut phases: Vec<u64> = (1..=3).map(round_phase).collect();
        phases.sort_unstable();
        assert!(phases.windows(2).all(|p| p[1] - p[0] >= interval / 5), "{phases:?}");
        let grid = 1_000 * interval + phase;
        // The first round, and any after a quiet interval, start at once.
        assert_eq!(round_delay(grid + 7, None, phase), Duration::ZERO);
        assert_eq!(round_delay(grid + interval, Some(grid), phase), Duration::ZERO);
        // Under load, a round on the grid is followed one interval later.
        assert_eq!(round_delay(grid + 1, Some(grid), phase), Duration::from_micros(interval - 1));
        assert_eq!(round_delay(grid + interval - 1, Some(grid), phase), Duration::from_micros(1));
        // An off-grid round (after a quiet spell) is followed by the first
        // grid point at least half an interval later.
        let off = grid + 3 * interval / 4;
        let next = round_delay(off + 1, Some(off), phase).as_micros() as u64 + off + 1;
        assert_eq!(next % interval, phase);
        assert!(next >= off + interval / 2 && next < off + interval / 2 + interval, "{next} after {off}");
        // A wall clock that stepped back never makes a round wait long.
        assert_eq!(round_delay(grid - 10 * interval, Some(grid), phase), ROUND_INTERVAL * 3 / 2);
    }
}
