//! The web chat (`/`) and the cluster view (`/cluster`): static files compiled
//! into the binary, so every node serves them with no separate web server.

use axum::extract::Path;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::error::{ApiError, Code};

pub async fn chat_page() -> Html<&'static str> {
    Html(include_str!("../web/index.html"))
}

pub async fn cluster_page() -> Html<&'static str> {
    Html(include_str!("../web/cluster.html"))
}

pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "chat.js" => (include_str!("../web/chat.js"), "text/javascript; charset=utf-8"),
        "cluster.js" => (include_str!("../web/cluster.js"), "text/javascript; charset=utf-8"),
        "chorus.css" => (include_str!("../web/chorus.css"), "text/css; charset=utf-8"),
        _ => return ApiError::new(Code::NotFound, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}
