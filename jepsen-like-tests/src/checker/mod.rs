//! One module per property of SPEC §5. Each returns a [`Verdict`] listing every
//! anomaly it found; a property holds only when the list is empty.

mod coverage;
mod delivery;
mod durability;
mod lifecycle;
mod markers;
mod ordering;
mod reads;

use serde::Serialize;

use crate::history::History;

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub property: &'static str,
    pub ok: bool,
    pub anomalies: Vec<String>,
}

impl Verdict {
    fn of(property: &'static str, anomalies: Vec<String>) -> Self {
        Verdict { property, ok: anomalies.is_empty(), anomalies }
    }
}

/// Every check, in a fixed order.
pub fn check_all(h: &History) -> Vec<Verdict> {
    vec![
        coverage::every_final_read(h),
        coverage::enough_operations(h),
        coverage::faults_took_effect(h),
        durability::acked_present_once(h),
        durability::unknown_at_most_once(h),
        durability::no_phantoms(h),
        ordering::finals_identical(h),
        ordering::seq_dense(h),
        ordering::ts_monotonic(h),
        ordering::linearizable_appends(h),
        reads::linearizable_reads(h),
        delivery::subscriptions_gap_free(h),
        lifecycle::changes_fold(h),
        lifecycle::deletes_stick(h),
        lifecycle::topic_is_the_last_set(h),
        markers::markers_only_move_forward(h),
    ]
}
