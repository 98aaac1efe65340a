//! Who this node is, cluster-wise: the cluster id it belongs to (learned at
//! formation or from the first peer that contacts it, then fixed and persisted),
//! and who may call it: the shared secret every gRPC call must carry, if one is
//! set, and under mutual TLS the role in the caller's certificate
//! ([`crate::tls`]).

use std::sync::{Arc, RwLock};

use proto::{CLUSTER_HEADER, SECRET_HEADER};
use raft_store::Store;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::tls::{Caller, Callers};

use raft_store::db::NODE_CLUSTER_ID as KEY_CLUSTER_ID;

#[derive(Clone)]
pub struct Identity {
    cluster_id: Arc<RwLock<Option<String>>>,
    secret: Option<Arc<str>>,
    /// Whether the raft port runs mutual TLS, so every caller has a role.
    tls: bool,
    callers: Callers,
    store: Store,
}

/// Who a gRPC method is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// The `Raft` service: cluster members only.
    Peer,
    /// Admin commands: operators only, never a member's certificate.
    Operator,
    /// `Admin.Info`, which members ask each other and operators ask too.
    PeerOrOperator,
}

/// Compares without an early exit, so the time taken does not reveal how much of
/// a guessed secret was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Identity {
    pub fn load(store: Store, secret: Option<String>, tls: bool) -> anyhow::Result<Self> {
        let cluster_id = match store.node_get(KEY_CLUSTER_ID)? {
            Some(bytes) => Some(String::from_utf8(bytes)?),
            None => None,
        };
        Ok(Identity { cluster_id: Arc::new(RwLock::new(cluster_id)), secret: secret.map(Arc::from), tls, callers: Callers::default(), store })
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fixes the cluster id, durably. Refuses to change an existing one.
    pub fn adopt(&self, id: &str) -> Result<(), Status> {
        let mut current = self.cluster_id.write().unwrap_or_else(|p| p.into_inner());
        match current.as_deref() {
            Some(existing) if existing == id => Ok(()),
            Some(existing) => Err(Status::failed_precondition(format!(
                "this node belongs to cluster {existing}, not {id}"
            ))),
            None => {
                self.store
                    .node_put(KEY_CLUSTER_ID, id.as_bytes())
                    .map_err(|e| Status::internal(format!("cannot persist the cluster id: {e}")))?;
                tracing::info!(cluster_id = id, "joined cluster");
                *current = Some(id.to_string());
                Ok(())
            }
        }
    }

    /// The secret this node's calls carry, if one is set.
    pub fn secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Adds the cluster id and secret to an outgoing call.
    pub fn stamp(&self, md: &mut MetadataMap) {
        if let Some(id) = self.cluster_id() {
            if let Ok(v) = MetadataValue::try_from(id.as_str()) {
                md.insert(CLUSTER_HEADER, v);
            }
        }
        if let Some(secret) = &self.secret {
            if let Ok(v) = MetadataValue::try_from(&**secret) {
                md.insert(SECRET_HEADER, v);
            }
        }
    }

    /// Checks the secret of an incoming call.
    pub fn check_secret(&self, md: &MetadataMap) -> Result<(), Status> {
        self.check_secret_bytes(md.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default())
    }

    /// Checks a secret given some other way than in gRPC metadata (the
    /// peer link's hello): empty when none was given.
    pub fn check_secret_str(&self, given: &str) -> Result<(), Status> {
        self.check_secret_bytes(given.as_bytes())
    }

    fn check_secret_bytes(&self, given: &[u8]) -> Result<(), Status> {
        let Some(secret) = &self.secret else { return Ok(()) };
        if constant_time_eq(given, secret.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong cluster secret"))
        }
    }

    /// Whether `request` may call a service that is for `need`: the secret,
    /// if one is set, and the role (see [`Identity::check_role`]). Run by the
    /// interceptors, before the request body is decoded.
    pub fn authorize<T>(&self, request: &Request<T>, need: Need) -> Result<(), Status> {
        self.check_secret(request.metadata())?;
        self.check_role(request, need)
    }

    /// Under mutual TLS, whether the role of the caller's certificate is for
    /// `need`; an admin method that is for operators only checks this again
    /// (its service admits peers too). Without TLS there are no roles: the
    /// secret grants everything.
    pub fn check_role<T>(&self, request: &Request<T>, need: Need) -> Result<(), Status> {
        if !self.tls {
            return Ok(());
        }
        match (need, self.callers.of(request)?) {
            (Need::Peer, Caller::Peer(_)) | (Need::Operator, Caller::Operator(_)) | (Need::PeerOrOperator, _) => Ok(()),
            (Need::Peer, Caller::Operator(name)) => Err(Status::permission_denied(format!(
                "operator {name} may not call the Raft service: it is for cluster members"
            ))),
            (Need::Operator, Caller::Peer(id)) => Err(Status::permission_denied(format!(
                "the certificate of node {id} is a member's, not an operator's; run chorusctl with an operator certificate"
            ))),
        }
    }

    /// Checks an incoming peer call's cluster id; a node with none yet adopts
    /// it. The caller was authorized as a peer before its request was decoded
    /// (see `serve_grpc`).
    pub fn check_peer(&self, md: &MetadataMap) -> Result<(), Status> {
        let given = md
            .get(CLUSTER_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::failed_precondition("peer call without a cluster id"))?;
        self.adopt(given)
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn secret_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
