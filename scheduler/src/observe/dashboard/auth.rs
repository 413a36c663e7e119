//! Who looks at the dashboard: the same tokens and roles as the API. A browser signs in once
//! with its token, which the dashboard keeps in an HttpOnly, SameSite=Strict cookie; a script
//! may send `authorization: Bearer` instead. Each page checks the token against this replica's
//! state, so a revoked token stops working at its next page. Admins and members see every
//! page (a member sees other teams' jobs as the API shows them, without their commands and
//! environments); agent tokens see nothing. An insecure replica shows everything to everyone.

use crate::access::tokens::digest;
use crate::access::{Caller, Role};
use crate::node::Handle;
use axum::http::{header, HeaderMap};

/// The cookie that holds the token.
pub const COOKIE: &str = "qm_token";

/// Why a page is not shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or one this replica does not know: sign in (the reason is shown there).
    SignIn(&'static str),
    /// A token whose role may not see the dashboard.
    Forbidden(String),
}

/// The caller of a page: everyone on an insecure replica, else the token's owner.
pub fn viewer(headers: &HeaderMap, handle: &Handle, insecure: bool) -> Result<Caller, Refusal> {
    if insecure {
        return Ok(Caller::insecure());
    }
    caller_of(secret(headers).ok_or(Refusal::SignIn("sign in with a token"))?, handle)
}

/// The token a page was asked with, if any.
pub fn secret(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| cookie(headers))
}

/// The caller whose token is `secret`, if it may see the dashboard.
pub fn caller_of(secret: &str, handle: &Handle) -> Result<Caller, Refusal> {
    let hash = digest(secret);
    let found = handle.fsm().tokens.find(&hash).map(|r| (r.name.clone(), r.role.clone()));
    let (name, role) = found.ok_or(Refusal::SignIn("the token is unknown or revoked"))?;
    if let Role::Agent { .. } = role {
        return Err(Refusal::Forbidden(format!("agent token {name:?} may not see the dashboard")));
    }
    Ok(Caller { name, role, hash: Some(hash) })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !secret.trim().is_empty()).then(|| secret.trim())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|s| !s.is_empty())
}

/// The `set-cookie` value that keeps `secret` for the browser's session.
pub fn keep(secret: &str) -> String {
    format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict")
}

/// The `set-cookie` value that forgets it.
pub fn forget() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_comes_from_the_bearer_header_or_the_cookie() {
        assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, "Bearer  s3cret ")])), Some("s3cret"));
        assert_eq!(bearer(&headers(&[(header::AUTHORIZATION, "Basic s3cret")])), None);
        let h = headers(&[(header::COOKIE, "theme=dark; qm_token=abc"), (header::COOKIE, "x=1")]);
        assert_eq!(cookie(&h), Some("abc"));
        assert_eq!(cookie(&headers(&[(header::COOKIE, "qm_tokenx=abc; qm_token=")])), None);
    }
}
