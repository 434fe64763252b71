//! The optional source allowlist (`ALLOWED_SOURCE_CIDRS`), checked before any body work.
//!
//! Behind `TRUSTED_PROXY_HOPS = N` proxies, each of which appends the address it received
//! from to X-Forwarded-For, the client is the N-th address from the right of
//! `X-Forwarded-For + [peer]`. Anything further left was written by the client itself and
//! is ignored, so a spoofed X-Forwarded-For cannot buy access.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::{ApiError, AppState};

/// The layer in front of the callback handler: with `ALLOWED_SOURCE_CIDRS` set, a request
/// from elsewhere gets 403 before its body is read (logged by `webhook::observe`, with the
/// address in the `client` field).
pub async fn allowlist(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let settings = &state.settings;
    if let Some(allowlist) = &settings.allowed_source_cidrs {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let client = peer.and_then(|p| client_ip(p, req.headers(), settings.trusted_proxy_hops));
        if !client.is_some_and(|ip| allowed(allowlist, ip)) {
            let seen = client.or(peer).map(|ip| ip.to_string());
            if let Some(notes) = req.extensions().get::<super::webhook::Notes>() {
                notes.note(|f| f.client = seen);
            }
            return ApiError::IpNotAllowed.into_response();
        }
    }
    next.run(req).await
}

fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>().ok().or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip())).map(|ip| ip.to_canonical())
}

/// The client address as far as the trusted proxies vouch for it; `None` when the chain
/// is shorter than the configured hops or the relevant entry is not an address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_hops: usize) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if trusted_hops == 0 {
        return Some(peer);
    }
    let forwarded: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    // chain = forwarded..., peer; the client sits `trusted_hops` places left of the peer.
    let index = forwarded.len().checked_sub(trusted_hops)?;
    parse_hop(forwarded.get(index)?)
}

pub fn allowed(allowlist: &[IpNet], ip: IpAddr) -> bool {
    allowlist.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_client_is_counted_from_the_right() {
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        // One load balancer: it appended the real client.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9"]), 1), Some("203.0.113.9".parse().unwrap()));
        // A client that sends its own X-Forwarded-For gains nothing.
        assert_eq!(client_ip(lb, &xff(&["1.1.1.1, 203.0.113.9"]), 1), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(lb, &xff(&["1.1.1.1", "203.0.113.9"]), 1), Some("203.0.113.9".parse().unwrap()));
        // Two proxies: the outer one appended the client, the inner one the outer proxy.
        assert_eq!(client_ip(lb, &xff(&["9.9.9.9, 203.0.113.9, 10.0.0.1"]), 2), Some("203.0.113.9".parse().unwrap()));
        // Without trusted hops the header is ignored entirely.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9"]), 0), Some(lb));
        // A chain shorter than the hops, or garbage, identifies nobody.
        assert_eq!(client_ip(lb, &HeaderMap::new(), 1), None);
        assert_eq!(client_ip(lb, &xff(&["not-an-ip"]), 1), None);
        // Ports and IPv4-mapped IPv6 are normalised.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9:4711"]), 1), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip("::ffff:10.0.0.2".parse().unwrap(), &HeaderMap::new(), 0), Some(lb));
    }
}
