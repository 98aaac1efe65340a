//! Chorus wire definitions: the generated gRPC code for `proto/chorus.proto`.
//!
//! Layout: everything lives in [`v1`]; the `Raft` service is node-to-node, the
//! `Admin` service is what `chorusctl` talks to. Nothing here depends on other
//! Chorus crates.

pub mod v1 {
    tonic::include_proto!("chorus.v1");
}

/// Metadata key carrying the caller's cluster id.
pub const CLUSTER_HEADER: &str = "x-chorus-cluster";
/// Metadata key carrying the shared cluster secret.
pub const SECRET_HEADER: &str = "x-chorus-secret";
