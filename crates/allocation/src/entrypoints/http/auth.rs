//! Optional bearer-token authentication of the write routes: a request with
//! an unsafe method (POST...) must carry `Authorization: Bearer <token>`
//! with one of the configured tokens. Reads and probes stay open.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;

/// The accepted tokens. Never shown: `Debug` prints only how many there are.
#[derive(Clone)]
pub struct ApiTokens(Arc<[String]>);

impl ApiTokens {
    /// Whether `candidate` is one of the tokens. Each comparison takes the
    /// same time wherever the bytes differ, and every token is compared, so
    /// that timing does not reveal how much of a guess was right.
    pub fn accepts(&self, candidate: &str) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, token| {
                found | token.as_bytes().ct_eq(candidate.as_bytes())
            })
            .into()
    }
}

impl FromStr for ApiTokens {
    type Err = String;

    /// A comma-separated list; each token non-empty, printable ASCII, no
    /// spaces (what fits in an `Authorization` header).
    fn from_str(list: &str) -> Result<Self, String> {
        let tokens: Vec<String> = list.split(',').map(str::to_owned).collect();
        if tokens.iter().any(String::is_empty) {
            return Err("empty token (expected TOKEN[,TOKEN...])".into());
        }
        if tokens
            .iter()
            .any(|token| !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("a token may hold only printable ASCII without spaces".into());
        }
        Ok(Self(tokens.into()))
    }
}

impl fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiTokens({} redacted)", self.0.len())
    }
}

/// Refuses unsafe requests without an accepted token: 401 with a JSON
/// message and `WWW-Authenticate: Bearer`.
pub async fn require_token(
    State(tokens): State<ApiTokens>,
    request: Request,
    next: Next,
) -> Response {
    if request.method().is_safe() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim());
    let message = match presented {
        Some(token) if tokens.accepts(token) => return next.run(request).await,
        Some(_) => "Invalid bearer token",
        None => "Missing bearer token: send Authorization: Bearer <token>",
    };
    let mut response = ApiError::Unauthorized(message.into()).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_token_is_accepted_and_nothing_else() {
        let tokens: ApiTokens = "first-token,second-token".parse().expect("valid");
        assert!(tokens.accepts("first-token"));
        assert!(tokens.accepts("second-token"));
        for wrong in [
            "",
            "first",
            "first-token-",
            "FIRST-TOKEN",
            "first-token,second-token",
        ] {
            assert!(!tokens.accepts(wrong), "{wrong}");
        }
    }

    #[test]
    fn debug_shows_no_token() {
        let tokens: ApiTokens = "s3cret".parse().expect("valid");
        assert_eq!(format!("{tokens:?}"), "ApiTokens(1 redacted)");
    }
}
