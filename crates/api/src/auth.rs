//! Who is calling: where authentication plugs in (docs/extending.md). Nothing authenticates yet,
//! so every request is [`Caller::Anonymous`]; a middleware (JWT, client certificate, a gateway's
//! verified header) puts the verified [`Caller`] in the request's extensions for handlers.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use std::convert::Infallible;
use std::future::{Ready, ready};

/// The principal a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No authentication ran, or it let the request through without a principal.
    Anonymous,
    /// A verified principal: a token's subject, a client id, a certificate's name.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "made by the authentication a team adds")
    )]
    Principal(String),
}

impl FromRequest for Caller {
    type Error = Infallible;
    type Future = Ready<Result<Self, Infallible>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = req.extensions().get::<Caller>().cloned();
        ready(Ok(caller.unwrap_or(Caller::Anonymous)))
    }
}
