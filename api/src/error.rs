//! The SPEC's error codes ([`wire::ErrorCode`]), mapped once to HTTP statuses,
//! error bodies and error frames.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_store::StoreError;

pub use wire::ErrorCode as Code;

/// The HTTP status of an error answer with `code`.
pub fn status(code: Code) -> StatusCode {
    match code {
        Code::BadRequest => StatusCode::BAD_REQUEST,
        Code::Unauthorized => StatusCode::UNAUTHORIZED,
        Code::NotMember => StatusCode::FORBIDDEN,
        Code::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        Code::NameTaken => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::Forbidden => StatusCode::FORBIDDEN,
    }
}

/// An error as a client sees it: a code and a human sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Code::BadRequest, message)
    }

    /// The error frame answering the client frame with `id` and `req`.
    pub fn frame(&self, id: Option<wire::Id>, req: Option<wire::Id>) -> wire::ServerFrame {
        wire::ServerFrame::error(self.code, self.message.clone(), id, req)
    }
}

/// The node's own storage failed: the client may retry, elsewhere or later.
/// Logged here, where the storage error stops being one.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "storage read failed");
        ApiError::new(Code::Unavailable, format!("storage: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (status(self.code), Json(wire::http::ErrorBody { error: self.code, message: self.message })).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
