//! Tests over real loopback sockets: outboxes, the registry, and the fan-out
//! thread end to end. The pure parts are tested beside their code.

use std::io;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use raft_store::chat::{self, Message};
use raft_store::state_machine::Delivery;
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use super::outbox::{OUTBOX_BYTES, SESSION_REVOKED, SLOW_CONSUMER};
use super::window::Group;
use super::{start, text_frame, FanoutMetrics, Outbox, Registry};
use crate::auth::Claims;

/// A session at epoch 0 under key 0.
fn claims(user: &str) -> Claims {
    Claims { user: user.into(), expires_at_ms: u64::MAX, key_version: 0, epoch: 0 }
}

/// Reads unmasked server text frames off `sock` until `count` have come.
fn read_texts(sock: std::net::TcpStream, count: usize) -> io::Result<Vec<String>> {
    read_texts_until(sock, |texts| texts.len() >= count)
}

/// Reads unmasked server text frames off `sock` until `done` says so.
fn read_texts_until(mut sock: std::net::TcpStream, done: impl Fn(&[String]) -> bool) -> io::Result<Vec<String>> {
    let mut buf = Vec::new();
    let mut texts = Vec::new();
    let mut chunk = [0u8; 8192];
    while !done(&texts) {
        let n = sock.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            if buf.len() < 2 {
                break;
            }
            assert_eq!(buf[0], 0x81, "a final text frame");
            let (len, header) = match buf[1] {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 => break,
                n if n < 126 => (n as usize, 2),
                n => panic!("unexpected length byte {n}"),
            };
            if buf.len() < header + len {
                break;
            }
            texts.push(String::from_utf8_lossy(&buf[header..header + len]).into_owned());
            buf.drain(..header + len);
        }
    }
    Ok(texts)
}

/// Once everything `o` queued has gone to the socket, the first `count`
/// texts its client reads.
async fn flushed_texts(o: &Outbox, client: std::net::TcpStream, count: usize) -> io::Result<Vec<String>> {
    std::future::poll_fn(|cx| o.poll_flushed(cx)).await;
    tokio::task::spawn_blocking(move || read_texts(client, count)).await.map_err(io::Error::other)?
}

/// The `seq` of each message frame in `texts`.
fn seqs(texts: &[String]) -> Vec<u64> {
    texts.iter().map(|t| serde_json::from_str::<serde_json::Value>(t).ok().and_then(|v| v["seq"].as_u64()).unwrap_or(0)).collect()
}

/// An outbox of `user` over one end of a loopback connection, and the
/// client's end, which gives up reading after 10 s.
fn connection(user: &str) -> io::Result<(Arc<Outbox>, std::net::TcpStream)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (server, _) = listener.accept()?;
    server.set_nonblocking(true)?;
    Ok((Outbox::new(TcpStream::from_std(server)?, claims(user), OUTBOX_BYTES), client))
}

#[tokio::test]
async fn a_batch_of_signals_is_one_chunk_in_order_and_only_for_rooms_the_connection_is_in() -> io::Result<()> {
    let (o, client) = connection("ann")?;
    // Before the connection is in a room, its signals are dropped.
    o.push_signals(&[("a".into(), text_frame("early".into()))]);
    assert!(o.start_room("a", 0, text_frame("joined a".into())));
    let frames: Vec<(Arc<str>, Bytes)> =
        [("a", "one"), ("b", "not in b"), ("a", "two"), ("a", "three")].iter().map(|(r, t)| ((*r).into(), text_frame(t.to_string()))).collect();
    let queued = o.queued_chunks();
    o.push_signals(&frames);
    assert!(o.queued_chunks() <= queued + 1, "the batch was split");
    // What the socket did not take at once, the session drains.
    let texts = flushed_texts(&o, client, 4).await?;
    assert_eq!(texts, ["joined a", "one", "two", "three"]);
    Ok(())
}

/// Messages `seqs` of `room` as the fan-out groups them; message n reads
/// "mn" and is stamped 10 n.
fn group(room: &str, seqs: std::ops::RangeInclusive<u64>) -> Group {
    let (first, mut bytes, mut starts) = (*seqs.start(), Vec::new(), Vec::new());
    for seq in seqs.clone() {
        starts.push(bytes.len());
        bytes.extend_from_slice(&text_frame(format!("m{seq}")));
    }
    Group { first, bytes: Bytes::from(bytes), starts, ts: seqs.map(|s| 10 * s).collect(), room: room.into() }
}

#[tokio::test]
async fn a_connection_gets_the_direct_messages_stamped_since_it_was_registered() -> io::Result<()> {
    let (o, client) = connection("ann")?;
    let dm = "dm:ann:bob";
    // Until the session has read the clock, no direct message goes out.
    assert_eq!(o.deliver(&group(dm, 1..=3), true), 0);
    o.receive_dms_since(20);
    // Messages 2 and 3 are stamped 20 and 30: the connection gets them,
    // and from then on has a cursor in the room.
    assert_eq!(o.deliver(&group(dm, 1..=3), true), 2);
    assert_eq!(o.deliver(&group(dm, 2..=4), true), 1);
    assert_eq!(o.cursor(dm).map(|c| (c.last, c.live)), Some((4, true)));
    // Rooms the connection is not one of the two users of stay shut.
    assert_eq!(o.deliver(&group("r", 1..=1), false), 0);
    // Lost messages: the session is told to look for DM rooms to replay,
    // once, and opens only those without a cursor.
    assert_eq!(o.take_dm_lost(), None);
    o.reset();
    assert_eq!(o.take_dm_lost(), Some(20));
    assert_eq!(o.take_dm_lost(), None);
    assert!(!o.open_dm(dm, 0), "a room with a cursor was opened again");
    assert!(o.open_dm("dm:ann:cy", 7));
    assert_eq!(o.replay_from("dm:ann:cy").map(|c| (c.last, c.live)), Some((7, false)));
    // A room to be replayed takes nothing from the fan-out until it is live.
    assert_eq!(o.deliver(&group("dm:ann:cy", 9..=9), true), 0);
    let texts = flushed_texts(&o, client, 3).await?;
    assert_eq!(texts, ["m2", "m3", "m4"]);
    Ok(())
}

#[tokio::test]
async fn after_a_loss_the_fan_out_enters_no_dm_room_until_the_session_has_read_it() -> io::Result<()> {
    let (o, client) = connection("ann")?;
    let (bob, cy) = ("dm:ann:bob", "dm:ann:cy");
    o.receive_dms_since(20);
    // The fan-out lost messages (2 and 3 of each room, stamped 20 and 30).
    o.reset();
    // Before the session looks, the next messages come: entering at them
    // would pass 2 and 3 by for good.
    assert_eq!(o.deliver(&group(bob, 4..=4), true), 0);
    assert_eq!(o.cursor(bob), None);
    assert_eq!(o.take_dm_lost(), Some(20));
    // The session's scan reads bob's room (it holds 1-4) and opens it after 1;
    // cy's room gets message 4 only after the scan read the room list.
    assert!(o.open_dm(bob, 1));
    assert_eq!(o.deliver(&group(cy, 4..=4), true), 0);
    assert_eq!(o.finish_dm_scan(), [cy.to_string()]);
    // The scan is over, but cy's room is still to be placed: the fan-out
    // keeps out of it until the session opens it.
    assert_eq!(o.deliver(&group(cy, 5..=5), true), 0);
    assert!(o.open_dm(cy, 1));
    assert_eq!(o.finish_dm_scan(), Vec::<String>::new());
    // A new DM room after the scan is entered by the fan-out as before.
    assert_eq!(o.deliver(&group("dm:ann:dee", 1..=2), true), 1);
    for room in [bob, cy] {
        let c = o.replay_from(room).map(|c| (c.last, c.live));
        assert_eq!(c, Some((1, false)), "{room} is replayed from storage after 1");
    }
    let texts = flushed_texts(&o, client, 1).await?;
    assert_eq!(texts, ["m2"]);
    Ok(())
}

#[tokio::test]
async fn a_loss_during_the_scan_keeps_dm_rooms_for_the_next_one() -> io::Result<()> {
    let (o, _client) = connection("ann")?;
    o.receive_dms_since(20);
    o.reset();
    assert_eq!(o.take_dm_lost(), Some(20));
    // Lost again while the session reads storage: the next scan is due, and
    // until it finishes the fan-out still enters no DM room.
    o.reset();
    assert_eq!(o.finish_dm_scan(), Vec::<String>::new());
    assert_eq!(o.deliver(&group("dm:ann:bob", 4..=4), true), 0);
    assert_eq!(o.take_dm_lost(), Some(20));
    assert_eq!(o.finish_dm_scan(), ["dm:ann:bob".to_string()]);
    Ok(())
}

#[tokio::test]
async fn a_replay_goes_live_only_if_the_fan_out_passed_nothing_over_since_its_read() -> io::Result<()> {
    let (o, client) = connection("ann")?;
    assert!(o.start_room("r", 5, text_frame("joined r".into())));
    // A read of storage begins; meanwhile message 6 is applied, and the
    // fan-out passes it over.
    assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((5, false)));
    assert_eq!(o.deliver(&group("r", 6..=6), false), 0);
    // The read found nothing after 5, but 6 may have reached storage after it began.
    assert!(!o.go_live("r", 5), "went live past a message it never sent");
    // The next read finds 6. A group it already has is no skip.
    assert_eq!(o.replay_from("r").map(|c| c.last), Some(5));
    assert!(o.push_replayed("r", 6, text_frame("m6".into())));
    assert_eq!(o.deliver(&group("r", 5..=6), false), 0);
    assert!(o.go_live("r", 6));
    assert_eq!(o.deliver(&group("r", 7..=7), false), 1);
    // A fan-out that lost messages sends the room back to storage, and a
    // replay that read before that must read again.
    assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((7, true)));
    o.reset();
    assert!(!o.go_live("r", 7));
    assert_eq!(o.replay_from("r").map(|c| (c.last, c.live)), Some((7, false)));
    assert!(o.go_live("r", 7));
    let texts = flushed_texts(&o, client, 3).await?;
    assert_eq!(texts, ["joined r", "m6", "m7"]);
    Ok(())
}

#[tokio::test]
async fn a_list_taken_for_a_round_stays_as_it_was_while_connections_come_and_go() -> io::Result<()> {
    let ((a, _ca), (b, _cb), (c, _cc)) = (connection("u0")?, connection("u1")?, connection("u2")?);
    let (a, b, c) = (&a, &b, &c);
    let ptrs = |lists: Vec<Arc<Vec<Arc<Outbox>>>>| {
        let mut p: Vec<*const Outbox> = lists.iter().flat_map(|l| l.iter().map(Arc::as_ptr)).collect();
        p.sort_unstable();
        p
    };
    let sorted = |mut p: Vec<*const Outbox>| {
        p.sort_unstable();
        p
    };
    let registry = Registry::default();
    registry.join("r", a);
    registry.join("r", b);
    registry.join("r", b);
    let taken = registry.targets("r");
    registry.join("r", c);
    registry.leave("r", a);
    // The round goes on with the list it took; the registry has moved on.
    assert_eq!(ptrs(taken), sorted(vec![Arc::as_ptr(a), Arc::as_ptr(b)]));
    assert_eq!(ptrs(registry.targets("r")), sorted(vec![Arc::as_ptr(b), Arc::as_ptr(c)]));
    // Nobody holds the list now: edits are made in place.
    let before = registry.room("r").map(|l| Arc::as_ptr(&l));
    registry.join("r", a);
    assert_eq!(registry.room("r").map(|l| Arc::as_ptr(&l)), before);
    registry.disconnect(b, &["r".to_string()]);
    registry.leave("r", c);
    registry.leave("r", a);
    assert!(registry.targets("r").is_empty());
    assert!(registry.rooms().is_empty());
    Ok(())
}

/// A fan-out thread for node 1 over `registry`: the sender of its
/// deliveries, and its figures.
fn fan_out(registry: &Arc<Registry>) -> io::Result<(broadcast::Sender<Delivery>, FanoutMetrics)> {
    let (tx, rx) = broadcast::channel(1 << 16);
    let metrics = FanoutMetrics {
        deliveries: Counter::default(),
        lag: Histogram::new(exponential_buckets(0.001, 2.0, 4)),
        late: Counter::default(),
        rounds: Histogram::new(exponential_buckets(0.001, 2.0, 4)),
    };
    start(1, rx, registry.clone(), metrics.clone())?;
    Ok((tx, metrics))
}

/// Messages keep coming while rounds write to many connections, so many
/// come mid-round: each connection must still get every message, once, in
/// order, whether it was written before or after one came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_come_mid_round_reach_every_connection_once_in_order() -> io::Result<()> {
    const CONNECTIONS: usize = 300;
    const MESSAGES: u64 = 600;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let registry = Arc::new(Registry::default());
    let mut readers = Vec::new();
    for i in 0..CONNECTIONS {
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        // A connection that misses a message waits for it in vain: fail instead.
        client.set_read_timeout(Some(Duration::from_secs(20)))?;
        let (server, _) = listener.accept()?;
        server.set_nonblocking(true)?;
        let o = Outbox::new(TcpStream::from_std(server)?, claims(&format!("u{i}")), OUTBOX_BYTES);
        assert!(o.start_room("r", 0, text_frame("joined".into())));
        assert_eq!(o.replay_from("r").map(|c| c.last), Some(0));
        assert!(o.go_live("r", 0));
        registry.connect(&o);
        registry.join("r", &o);
        readers.push((o, std::thread::spawn(move || read_texts(client, 1 + MESSAGES as usize))));
    }
    let (tx, metrics) = fan_out(&registry)?;
    let text = |seq: u64| format!("m{seq}");
    for seq in 1..=MESSAGES {
        let m = Message { room: "r".into(), seq, client_id: format!("{seq}"), from: "s".into(), text: text(seq), ts_ms: crate::now_ms(), kind: Default::default() };
        tx.send(Delivery::Message(Arc::new(m))).map_err(|_| io::Error::other("the fan-out has stopped"))?;
        tokio::time::sleep(Duration::from_micros(250)).await;
    }
    for (i, (_outbox, reader)) in readers.into_iter().enumerate() {
        let texts = tokio::task::spawn_blocking(move || reader.join()).await.map_err(io::Error::other)?.map_err(|_| io::Error::other("reader panicked"))??;
        assert_eq!(texts[0], "joined");
        assert_eq!(seqs(&texts[1..]), (1..=MESSAGES).collect::<Vec<_>>(), "connection {i}");
    }
    assert_eq!(metrics.deliveries.get(), CONNECTIONS as u64 * MESSAGES);
    assert!(metrics.late.get() > 0, "no message came mid-round, so the test did not test that");
    drop(tx);
    Ok(())
}
/// Direct messages keep coming, many of them mid-round, while connections
/// of one of the two users keep opening, none of them joined: each gets
/// every message applied after it was registered, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_opening_while_direct_messages_flow_get_every_later_one_once_in_order() -> io::Result<()> {
    const CONNECTIONS: usize = 120;
    const MESSAGES: u64 = 600;
    let room = chat::dm_room("ann", "bob");
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let registry = Arc::new(Registry::default());
    let (tx, metrics) = fan_out(&registry)?;
    // Reads frames until message MESSAGES; returns their seqs.
    let read_until_last = |sock| read_texts_until(sock, |texts| texts.last().is_some_and(|t| seqs(std::slice::from_ref(t)) == [MESSAGES])).map(|t| seqs(&t));
    // (outbox, reader, the last seq sent before the connection was registered)
    let mut readers = Vec::new();
    let mut sent = 0;
    while sent < MESSAGES {
        if sent % (MESSAGES / CONNECTIONS as u64) == 0 && readers.len() < CONNECTIONS {
            let client = std::net::TcpStream::connect(listener.local_addr()?)?;
            client.set_read_timeout(Some(Duration::from_secs(20)))?;
            let (server, _) = listener.accept()?;
            server.set_nonblocking(true)?;
            let o = Outbox::new(TcpStream::from_std(server)?, claims("ann"), OUTBOX_BYTES);
            registry.connect(&o);
            // What a session does next: read the clock, here the stamp of
            // the last message applied (message n is stamped n).
            o.receive_dms_since(sent);
            readers.push((o, std::thread::spawn(move || read_until_last(client)), sent));
        }
        sent += 1;
        let m = Message { room: room.clone(), seq: sent, client_id: format!("{sent}"), from: "bob".into(), text: "hi".into(), ts_ms: sent, kind: Default::default() };
        tx.send(Delivery::Message(Arc::new(m))).map_err(|_| io::Error::other("the fan-out has stopped"))?;
        tokio::time::sleep(Duration::from_micros(250)).await;
    }
    for (i, (_outbox, reader, before)) in readers.into_iter().enumerate() {
        let seqs = tokio::task::spawn_blocking(move || reader.join()).await.map_err(io::Error::other)?.map_err(|_| io::Error::other("reader panicked"))??;
        // Message `before` was applied before the registration, but is
        // stamped with the clock read after it: it may come or not.
        let from = seqs.first().copied().unwrap_or(0);
        assert!(from <= before + 1 && from + 1 >= before.max(1), "connection {i} registered after {before} began at {from}");
        assert_eq!(seqs, (from..=MESSAGES).collect::<Vec<_>>(), "connection {i}");
    }
    assert!(metrics.late.get() > 0, "no message came mid-round, so the test did not test that");
    drop(tx);
    Ok(())
}

/// A client that reads nothing can make its node hold no more than the byte
/// bound for it (plus the one frame that found the queue under it), however
/// large the frames: then it is closed as a slow consumer.
#[tokio::test]
async fn a_queue_is_bounded_in_bytes_not_only_in_frames() -> io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let _client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    server.set_nonblocking(true)?;
    const MAX: usize = 256 << 10;
    let o = Outbox::new(TcpStream::from_std(server)?, claims("ann"), MAX);
    let frame = Bytes::from(vec![b'x'; 64 << 10]);
    let mut pushed = 0;
    // Far more than the socket's buffers and the bound together.
    while pushed < 2_000 && o.push(frame.clone()) {
        pushed += 1;
        assert!(o.queued_bytes() <= MAX + frame.len(), "{} bytes queued after {pushed} frames", o.queued_bytes());
    }
    assert!(pushed < 2_000, "2,000 frames of 64 KiB went into a socket nobody reads");
    assert_eq!(o.closing(), Some((SLOW_CONSUMER, "slow consumer")));
    Ok(())
}

/// The event the session would see next, if one is ready.
fn ready_event(o: &Outbox) -> Option<super::OutboxEvent> {
    let waker = futures::task::noop_waker();
    match o.poll_event(&mut std::task::Context::from_waker(&waker)) {
        std::task::Poll::Ready(e) => Some(e),
        std::task::Poll::Pending => None,
    }
}

/// Waits up to 10 s for the fan-out to close `o`; the code it closed with.
async fn closed_with(o: &Outbox) -> Option<u16> {
    for _ in 0..1000 {
        if let Some(super::OutboxEvent::Closing(code, _)) = ready_event(o) {
            return Some(code);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// A revocation closes the user's connections opened before it, and no one
/// else's; dropping keys closes the connections their tokens opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_dropped_keys_close_exactly_the_connections_they_refuse() -> io::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let registry = Arc::new(Registry::default());
    let open = |user: &str, epoch: u64, key_version: u32| -> io::Result<(Arc<Outbox>, std::net::TcpStream)> {
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        server.set_nonblocking(true)?;
        let o = Outbox::new(TcpStream::from_std(server)?, Claims { epoch, key_version, ..claims(user) }, OUTBOX_BYTES);
        registry.connect(&o);
        Ok((o, client))
    };
    let (ann_old, _c1) = open("ann", 0, 0)?;
    let (ann_new, _c2) = open("ann", 1, 1)?;
    let (bob, _c3) = open("bob", 0, 0)?;
    let (bob_new_key, _c4) = open("bob", 0, 1)?;
    let (tx, _metrics) = fan_out(&registry)?;
    let stopped = |_| io::Error::other("the fan-out has stopped");

    tx.send(Delivery::Revoked { user: "ann".into(), epoch: 1 }).map_err(stopped)?;
    assert_eq!(closed_with(&ann_old).await, Some(SESSION_REVOKED));
    // A message after the revocation has passed through the same round loop.
    let m = Message { room: "r".into(), seq: 1, client_id: "1".into(), from: "s".into(), text: "x".into(), ts_ms: crate::now_ms(), kind: Default::default() };
    tx.send(Delivery::Message(Arc::new(m))).map_err(stopped)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ready_event(&ann_new).is_none(), "a session opened at the new epoch was closed");
    assert!(ready_event(&bob).is_none(), "another user's session was closed");

    tx.send(Delivery::KeysDropped { oldest: 1 }).map_err(stopped)?;
    assert_eq!(closed_with(&bob).await, Some(SESSION_REVOKED));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(ready_event(&bob_new_key).is_none(), "a session under the kept key was closed");
    assert!(ready_event(&ann_new).is_none(), "a session under the kept key was closed");
    Ok(())
}
