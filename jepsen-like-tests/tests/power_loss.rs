//! The power-loss nemesis catches a missing fsync, and a correct node survives it.
//!
//! Each test runs the real `chorus-jepsen` with only the power-loss nemesis: the
//! whole cluster loses power several times while clients send. With every
//! Raft append synced, the run must be valid. With the WAL fsync turned off
//! (`--unsafe-skip-wal-sync`), acked messages live only in the page cache when
//! the power goes, so the run must fail on lost acknowledged sends. Needs
//! `cargo build --workspace --bins` first (scripts/test.sh does that).

use std::process::Command;

use jepsen_like_tests::cluster::bin;

/// Runs chorus-jepsen under the power-loss nemesis; its exit status and stdout.
fn run(skip_wal_sync: bool) -> (bool, String) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(bin("chorus-jepsen").expect("chorus-jepsen is built"));
    cmd.args(["--time", "16", "--nemesis", "power-loss", "--net", "proxy", "--clients", "4", "--seed", "7", "--min-acked", "50"]).arg("--out").arg(out_dir.path());
    if skip_wal_sync {
        cmd.arg("--unsafe-skip-wal-sync");
    }
    let out = cmd.output().expect("run chorus-jepsen");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}

/// The checker's line for acknowledged sends being present at the end.
fn durability_line(stdout: &str) -> String {
    stdout.lines().find(|l| l.contains("acked") && l.contains("present")).unwrap_or_default().to_string()
}

#[test]
fn a_synced_cluster_loses_nothing_to_power_cuts() {
    let (ok, stdout) = run(false);
    assert!(ok, "a run with every append synced must be valid:\n{stdout}");
    assert!(stdout.contains("power-loss"), "the nemesis ran:\n{stdout}");
    assert!(durability_line(&stdout).ends_with("ok"), "{stdout}");
}

#[test]
fn a_cluster_without_wal_fsync_loses_acked_messages_to_power_cuts() {
    let (ok, stdout) = run(true);
    assert!(!ok, "with the WAL fsync off a power cut must lose acked messages:\n{stdout}");
    let line = durability_line(&stdout);
    assert!(line.contains("VIOLATED"), "the failure is lost acked sends, not something else:\n{stdout}");
}
