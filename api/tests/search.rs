//! `GET /v1/search` on an in-memory backend: ranked matches the caller may
//! read, in step with edits and deletes, paged, and clear errors.

mod support;

use std::time::Duration;

use raft_store::chat::Event;
use support::{error_of, Api};
use wire::http::SearchPage;
use wire::ErrorCode;

async fn search(api: &Api, token: &str, q: &str) -> SearchPage {
    let r = api.get("/v1/search").query(&[("q", q)]).header("authorization", format!("Bearer {token}")).send().await.expect("search");
    assert_eq!(r.status(), 200, "search {q}");
    r.json().await.expect("a search page")
}

/// Searches until `want` holds: the index commits a moment after each apply.
async fn until(api: &Api, token: &str, q: &str, want: impl Fn(&SearchPage) -> bool) -> SearchPage {
    for _ in 0..100 {
        let page = search(api, token, q).await;
        if want(&page) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("search {q:?} never gave what was wanted: {:?}", search(api, token, q).await);
}

fn texts(p: &SearchPage) -> Vec<&str> {
    p.results.iter().map(|r| r.message.text.as_str()).collect()
}

#[tokio::test]
async fn search_finds_current_texts_the_caller_may_read() {
    let api = Api::start().await;
    let (ann, cy) = (api.user("ann").await, api.user("cy").await);
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    let post = |room: &str, id: &str, text: &str| {
        api.backend.apply(Event::MessagePosted { room: room.into(), from: "ann".into(), client_id: id.into(), text: text.into() })
    };
    post("lobby", "1", "the deploy failed again");
    post("lobby", "2", "deploy deploy deploy, said the release manager");
    post("lobby", "3", "lunch?");
    post(&raft_store::chat::dm_room("ann", "bob"), "4", "a private deploy note");

    // Ranked: the message that says it most comes first; a DM only for its users.
    let page = until(&api, &cy, "deploy", |p| p.results.len() == 2).await;
    assert_eq!(page.results[0].message.seq, 2);
    assert!(page.results[0].score >= page.results[1].score);
    assert_eq!(until(&api, &ann, "deploy", |p| p.results.len() == 3).await.results.len(), 3);

    // An edit is found by its new text only; a delete is not found at all.
    api.backend.apply(Event::MessageEdited { room: "lobby".into(), from: "ann".into(), client_id: "5".into(), target: 1, text: "the rollout failed again".into() });
    until(&api, &cy, "rollout", |p| texts(p) == ["the rollout failed again"]).await;
    until(&api, &cy, "deploy", |p| p.results.len() == 1).await;
    api.backend.apply(Event::MessageDeleted { room: "lobby".into(), from: "ann".into(), client_id: "6".into(), target: 1 });
    until(&api, &cy, "rollout", |p| p.results.is_empty()).await;
}

#[tokio::test]
async fn search_pages_and_refuses_what_it_cannot_answer() {
    let api = Api::start().await;
    let ann = api.user("ann").await;
    api.backend.apply(Event::RoomJoined { room: "lobby".into(), user: "ann".into() });
    for i in 0..5 {
        api.backend.apply(Event::MessagePosted { room: "lobby".into(), from: "ann".into(), client_id: i.to_string(), text: format!("status report {i}") });
    }
    until(&api, &ann, "report", |p| p.results.len() == 5).await;
    let get = |q: &str| api.get(&format!("/v1/search?{q}")).header("authorization", format!("Bearer {ann}")).send();
    let first: SearchPage = get("q=report&limit=2").await.expect("search").json().await.expect("page");
    assert_eq!((first.results.len(), first.next_offset), (2, Some(2)));
    let last: SearchPage = get("q=report&limit=2&offset=4").await.expect("search").json().await.expect("page");
    assert_eq!((last.results.len(), last.next_offset), (1, None));
    let mut seen: Vec<u64> = Vec::new();
    for offset in [0, 2, 4] {
        let p: SearchPage = get(&format!("q=report&limit=2&offset={offset}")).await.expect("search").json().await.expect("page");
        seen.extend(p.results.iter().map(|r| r.message.seq));
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3, 4, 5], "pages neither repeat nor skip");
    for bad in ["q=", "q=x&limit=0", "q=x&limit=101", "q=x&offset=20000", "limit=3"] {
        assert_eq!(error_of(get(bad).await.expect("search")).await, (400, ErrorCode::BadRequest), "{bad}");
    }
    let anonymous = api.get("/v1/search?q=report").send().await.expect("search");
    assert_eq!(error_of(anonymous).await, (401, ErrorCode::Unauthorized));
}
