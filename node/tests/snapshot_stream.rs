//! What a peer can make a node write to disk with a snapshot stream: one
//! stream at a time, at most `--max-snapshot-bytes`, and nothing left behind
//! when a stream is refused.

mod common;

use common::TestCluster;
use proto::v1::raft_client::RaftClient;
use proto::v1::SnapshotChunk;
use raft_store::types::{SnapshotMeta, Vote};
use tonic::Code;

const MAX: u64 = 1 << 20;

fn small_snapshots(c: &mut node::config::Config) {
    c.max_snapshot_bytes = MAX;
}

/// A stream's first chunk, whose header is as a leader writes it.
fn first_chunk(data: Vec<u8>) -> SnapshotChunk {
    let header: (Vote, SnapshotMeta) = (Vote::new(1, 1), SnapshotMeta::default());
    SnapshotChunk { header: raft_store::codec::encode(&header).expect("encode the header"), data }
}

/// Files a snapshot stream left in node 1's snapshot directory.
fn received(c: &TestCluster) -> Vec<String> {
    let dir = c.node(1).dir.join("snapshots");
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| n.ends_with(".recv")).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_stream_is_bounded_in_bytes_and_in_number() {
    let c = TestCluster::start_with(1, small_snapshots).await;
    c.wait_leader().await;
    let cluster_id = c.status(1).await.cluster_id;
    let url = format!("http://{}", c.node(1).raft_addr);
    let mut client = RaftClient::connect(url.clone()).await.expect("connect to the raft port");
    let request = |chunks: Vec<SnapshotChunk>| {
        let mut r = tonic::Request::new(futures::stream::iter(chunks));
        r.metadata_mut().insert(proto::CLUSTER_HEADER, cluster_id.parse().expect("an ASCII cluster id"));
        r
    };

    // Past the bound: refused, and the partial file removed.
    let chunks: Vec<SnapshotChunk> = std::iter::once(first_chunk(vec![0; 1 << 19]))
        .chain((0..3).map(|_| SnapshotChunk { header: Vec::new(), data: vec![0; 1 << 19] }))
        .collect();
    let e = client.snapshot(request(chunks)).await.expect_err("a snapshot over the bound");
    assert_eq!(e.code(), Code::Aborted, "{e}");
    assert!(e.message().contains("--max-snapshot-bytes"), "{e}");
    assert!(received(&c).is_empty(), "left behind: {:?}", received(&c));

    // While one stream is open, a second is refused at once.
    let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
    tx.send(first_chunk(vec![1; 1024])).await.expect("queue a chunk");
    let mut held = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    held.metadata_mut().insert(proto::CLUSTER_HEADER, cluster_id.parse().expect("an ASCII cluster id"));
    let mut first = RaftClient::connect(url).await.expect("connect");
    let open = tokio::spawn(async move { first.snapshot(held).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while received(&c).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the first stream was never received");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let e = client.snapshot(request(vec![first_chunk(vec![2; 16])])).await.expect_err("a second stream at once");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    // The first one ends; openraft takes no snapshot that covers nothing, and
    // its file goes with it.
    drop(tx);
    let _ = open.await.expect("the stream task");
    assert!(received(&c).is_empty(), "left behind: {:?}", received(&c));
    // A stream may be received again now.
    let e = client.snapshot(request(vec![first_chunk(vec![3; 16])])).await.err();
    assert!(e.as_ref().is_none_or(|e| e.code() != Code::ResourceExhausted), "{e:?}");
    assert!(c.status(1).await.leader == 1, "the node stopped leading");
}
