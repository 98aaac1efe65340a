//! Changing a password (feature level 4) on an in-memory backend: it takes
//! the current password, and revokes every token of the user.

mod support;

use serde_json::json;
use support::{error_of, Api};
use wire::ErrorCode;

#[tokio::test]
async fn a_new_password_replaces_the_old_and_revokes_every_token() {
    let api = Api::start().await;
    let token = api.user("ann").await;
    let change = |token: &str, old: &str, new: &str| {
        api.post("/v1/users/password").header("authorization", format!("Bearer {token}")).json(&json!({"password": old, "new_password": new})).send()
    };
    assert_eq!(error_of(change(&token, "not my password", "another horse").await.expect("post")).await, (401, ErrorCode::Unauthorized));
    assert_eq!(error_of(change(&token, "correct horse", "short").await.expect("post")).await, (400, ErrorCode::BadRequest));
    assert_eq!(error_of(change("forged", "correct horse", "another horse").await.expect("post")).await, (401, ErrorCode::Unauthorized));

    let r = change(&token, "correct horse", "another horse").await.expect("post");
    assert_eq!(r.status(), 200);
    // The token it was changed with is refused from now on, as is the old password.
    let rooms = api.get("/v1/rooms").header("authorization", format!("Bearer {token}")).send().await.expect("rooms");
    assert_eq!(error_of(rooms).await, (401, ErrorCode::Unauthorized));
    let login = |password: &str| api.post("/v1/sessions").json(&json!({"name": "ann", "password": password})).send();
    assert_eq!(error_of(login("correct horse").await.expect("login")).await, (401, ErrorCode::Unauthorized));
    assert_eq!(login("another horse").await.expect("login").status(), 200);
}
