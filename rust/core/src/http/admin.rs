//! The admin token: one check that every admin route (`/metrics`, `/executions/*`, and any route
//! added later) calls before answering. Webhooks, `/healthz` and `/openapi.json` do not call it.

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// True when no token is configured, or the request carries `Authorization: Bearer <token>`.
///
/// Both sides are hashed before the constant-time comparison, so neither the token's bytes nor
/// its length can be learnt from response times.
pub fn authorized(headers: &HeaderMap, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = headers.get(AUTHORIZATION).and_then(|v| bearer(v.as_bytes())) else {
        return false;
    };
    let (want, got) = (Sha256::digest(token.as_bytes()), Sha256::digest(given));
    bool::from(want.as_slice().ct_eq(got.as_slice()))
}

/// For pages a browser opens itself (the dashboard), which cannot send a header: a `token=`
/// query parameter counts too. Compared like [`authorized`].
pub fn authorized_query(query: Option<&str>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(given) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))) else {
        return false;
    };
    let (want, got) = (Sha256::digest(token.as_bytes()), Sha256::digest(given.as_bytes()));
    bool::from(want.as_slice().ct_eq(got.as_slice()))
}

/// The credentials of a `Bearer` authorization value (the scheme name is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn no_token_configured_lets_everyone_in() {
        assert!(authorized(&HeaderMap::new(), None));
        assert!(authorized(&with_auth("Bearer anything"), None));
    }

    #[test]
    fn needs_the_exact_bearer_token() {
        let t = Some("s3cret-token");
        assert!(authorized(&with_auth("Bearer s3cret-token"), t));
        assert!(authorized(&with_auth("bearer  s3cret-token "), t));
        assert!(!authorized(&HeaderMap::new(), t));
        assert!(!authorized(&with_auth("Bearer s3cret-toke"), t));
        assert!(!authorized(&with_auth("Bearer s3cret-token2"), t));
        assert!(!authorized(&with_auth("Basic s3cret-token"), t));
        assert!(!authorized(&with_auth("Bearers3cret-token"), t));
        assert!(!authorized(&with_auth("Bearer "), t));
        assert!(!authorized(&with_auth("s3cret-token"), t));
    }
}
