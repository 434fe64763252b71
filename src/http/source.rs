//! The optional source allowlist (`ALLOWED_SOURCE_CIDRS`), checked before any body work,
//! for everything on the public port (callbacks, health, readiness, and `/metrics` when the
//! admin listener is off).
//!
//! `X-Forwarded-For` is believed only on connections from `TRUSTED_PROXY_CIDRS` (the load
//! balancers); from any other peer it changes nothing, so whoever reaches the receiver
//! directly is judged by their own address. From a trusted proxy, the client is the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy, or, with
//! `TRUSTED_PROXY_HOPS = N`, the N-th address from the right. Anything further left was
//! written by the client itself and is ignored, so a spoofed header cannot buy access.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::{ApiError, AppState};
use crate::telemetry::Throttled;

/// The layer in front of everything on the public port — callbacks, `/healthz`, `/readyz`,
/// and `/metrics` when it is served there: with `ALLOWED_SOURCE_CIDRS` set, a request from
/// elsewhere gets 403 before its body is read. A refused callback is logged by
/// `webhook::observe`, with the address in the `client` field; a refused probe or scrape by
/// one WARN line a minute at most (a load balancer whose health checks are refused).
pub async fn allowlist(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let settings = &state.settings;
    if let Some(allowlist) = &settings.allowed_source_cidrs {
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let proxies = settings.trusted_proxy_cidrs.as_deref().unwrap_or_default();
        let client = peer.and_then(|p| client_ip(p, req.headers(), proxies, settings.trusted_proxy_hops));
        if !client.is_some_and(|ip| allowed(allowlist, ip)) {
            let seen = client.or(peer).map(|ip| ip.to_string());
            match req.extensions().get::<super::webhook::Notes>() {
                Some(notes) => notes.note(|f| f.client = seen),
                None => {
                    static REFUSED: Throttled = Throttled::new(Duration::from_secs(60));
                    if let Some(repeats) = REFUSED.due() {
                        tracing::warn!(
                            client = seen.as_deref(),
                            path = req.uri().path(),
                            repeats_since_last_warning = repeats,
                            "refused a request from outside ALLOWED_SOURCE_CIDRS: health checks and scrapers must come from an allowed address, or use ADMIN_LISTEN_ADDR"
                        );
                    }
                }
            }
            return super::webhook::refused_unread(req.into_body(), ApiError::IpNotAllowed).await.into_response();
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
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet], trusted_hops: usize) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if !allowed(proxies, peer) {
        return Some(peer);
    }
    let forwarded: Vec<&str> =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
    if trusted_hops > 0 {
        // chain = forwarded..., peer; the client sits `trusted_hops` places left of the peer.
        let index = forwarded.len().checked_sub(trusted_hops)?;
        return parse_hop(forwarded.get(index)?);
    }
    // From the right, past every proxy we trust; a proxy that forwarded nothing is the client.
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        client = parse_hop(hop)?;
        if !allowed(proxies, client) {
            break;
        }
    }
    Some(client)
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

    fn lbs() -> Vec<IpNet> {
        vec!["10.0.0.0/24".parse().unwrap()]
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "198.51.100.7".parse().unwrap();
        for hops in [0, 1] {
            assert_eq!(client_ip(stranger, &xff(&["10.0.0.9"]), &lbs(), hops), Some(stranger));
            assert_eq!(client_ip(stranger, &xff(&["10.0.0.9"]), &[], hops), Some(stranger));
        }
        // Past every trusted proxy, from the right.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9"]), &lbs(), 0), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9, 10.0.0.3"]), &lbs(), 0), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(lb, &xff(&["1.1.1.1, 203.0.113.9"]), &lbs(), 0), Some("203.0.113.9".parse().unwrap()));
        // The proxy's own request (a health check) names itself.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &lbs(), 0), Some(lb));
        assert_eq!(client_ip(lb, &xff(&["10.0.0.3"]), &lbs(), 0), Some("10.0.0.3".parse().unwrap()));
        assert_eq!(client_ip(lb, &xff(&["garbage, 10.0.0.3"]), &lbs(), 0), None);
    }

    #[test]
    fn the_client_is_counted_from_the_right() {
        let lb: IpAddr = "10.0.0.2".parse().unwrap();
        // One load balancer: it appended the real client.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9"]), &lbs(), 1), Some("203.0.113.9".parse().unwrap()));
        // A client that sends its own X-Forwarded-For gains nothing.
        assert_eq!(client_ip(lb, &xff(&["1.1.1.1, 203.0.113.9"]), &lbs(), 1), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip(lb, &xff(&["1.1.1.1", "203.0.113.9"]), &lbs(), 1), Some("203.0.113.9".parse().unwrap()));
        // Two proxies: the outer one appended the client, the inner one the outer proxy.
        assert_eq!(
            client_ip(lb, &xff(&["9.9.9.9, 203.0.113.9, 10.0.0.1"]), &lbs(), 2),
            Some("203.0.113.9".parse().unwrap())
        );
        // Without trusted proxies the header is ignored entirely.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9"]), &[], 0), Some(lb));
        // A chain shorter than the hops, or garbage, identifies nobody.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &lbs(), 1), None);
        assert_eq!(client_ip(lb, &xff(&["not-an-ip"]), &lbs(), 1), None);
        // Ports and IPv4-mapped IPv6 are normalised.
        assert_eq!(client_ip(lb, &xff(&["203.0.113.9:4711"]), &lbs(), 1), Some("203.0.113.9".parse().unwrap()));
        assert_eq!(client_ip("::ffff:10.0.0.2".parse().unwrap(), &HeaderMap::new(), &lbs(), 0), Some(lb));
    }
}
