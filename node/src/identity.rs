//! Who this node is, cluster-wise: the cluster id it belongs to (learned at
//! formation or from the first peer that contacts it, then fixed and persisted)
//! and the shared secret every gRPC call must carry.

use std::sync::{Arc, RwLock};

use proto::{CLUSTER_HEADER, SECRET_HEADER};
use raft_store::Store;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

use raft_store::db::NODE_CLUSTER_ID as KEY_CLUSTER_ID;

#[derive(Clone)]
pub struct Identity {
    cluster_id: Arc<RwLock<Option<String>>>,
    secret: Option<Arc<str>>,
    store: Store,
}

/// Compares without an early exit, so the time taken does not reveal how much of
/// a guessed secret was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Identity {
    pub fn load(store: Store, secret: Option<String>) -> anyhow::Result<Self> {
        let cluster_id = match store.node_get(KEY_CLUSTER_ID)? {
            Some(bytes) => Some(String::from_utf8(bytes)?),
            None => None,
        };
        Ok(Identity { cluster_id: Arc::new(RwLock::new(cluster_id)), secret: secret.map(Arc::from), store })
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
        let Some(secret) = &self.secret else { return Ok(()) };
        let given = md.get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        if constant_time_eq(given, secret.as_bytes()) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong cluster secret"))
        }
    }

    /// Checks an incoming peer call's cluster id; a node with none yet adopts it.
    pub fn check_peer(&self, md: &MetadataMap) -> Result<(), Status> {
        self.check_secret(md)?;
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
