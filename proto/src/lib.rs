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
/// Metadata key of an admin call refused by a node that is not the leader:
/// the leader's raft address, where the caller repeats the call.
pub const LEADER_HEADER: &str = "x-chorus-leader";

/// How a certificate of the cluster's CA says who holds it: a URI subject
/// alternative name, `chorus://peer/<node id>` for a member or
/// `chorus://operator/<name>` for someone running `chorusctl`. `chorusctl
/// certs` writes them; a node reads them from the client certificate of every
/// gRPC call (see docs/SECURITY.md).
pub mod roles {
    pub const PEER_URI_PREFIX: &str = "chorus://peer/";
    pub const OPERATOR_URI_PREFIX: &str = "chorus://operator/";
}
