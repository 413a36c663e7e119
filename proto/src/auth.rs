//! Bearer tokens on the client side: an interceptor that puts the caller's token in every
//! request's `authorization` metadata, and the channel type clients built with it use.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to each request (nothing without a token).
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<token>)" } else { "Bearer(none)" })
    }
}

/// Why a token cannot travel in metadata.
#[derive(Debug, thiserror::Error)]
#[error("the token holds characters that cannot travel in a gRPC header (printable ASCII only)")]
pub struct BadToken;

impl Bearer {
    /// Sends `token`; `None` sends nothing.
    pub fn new(token: Option<&str>) -> Result<Self, BadToken> {
        match token.map(str::trim) {
            None | Some("") => Ok(Self(None)),
            Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => Err(BadToken),
            Some(t) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {t}").parse().map_err(|_| BadToken)?;
                value.set_sensitive(true);
                Ok(Self(Some(value)))
            }
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry a token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// `channel` with `bearer`.
pub fn authed(channel: Channel, bearer: Bearer) -> Authed {
    InterceptedService::new(channel, bearer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_travels_as_a_bearer_and_is_never_printed() {
        let mut b = Bearer::new(Some(" qm_abc\n")).unwrap();
        let r = b.call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer qm_abc");
        assert_eq!(format!("{b:?}"), "Bearer(<token>)");
        let r = Bearer::new(None).unwrap().call(Request::new(())).unwrap();
        assert!(r.metadata().get(AUTHORIZATION).is_none());
        assert!(Bearer::new(Some("qm_\u{e9}")).is_err());
        assert!(Bearer::new(Some("qm_a b")).is_err());
    }
}
