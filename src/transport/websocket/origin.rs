//! Who may open a session: the token check and the `Origin` check of the
//! WebSocket upgrade (server invariant 1).
//!
//! The allowed origins are fixed at bind time: the loopback names on the
//! bound port (`127.0.0.1`, `localhost`, `[::1]`), the bound address itself
//! when it is a specific one, and every `--allow-origin`. The request's own
//! `Host` header is never trusted: a page of `evil.example` whose name was
//! rebound to this machine's address (DNS rebinding) sends `Host:
//! evil.example:PORT` and `Origin: http://evil.example:PORT`, which agree
//! with each other but not with this list.
//!
//! # Invariants
//! 1. A request's headers never widen the set of allowed origins.
//! 2. The token comparison takes the same time wherever the strings differ.

use super::ServeConfig;
use std::net::SocketAddr;

/// Compares in time independent of where the strings differ (invariant 2).
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The origins a page served by this server can have (invariant 1).
fn own_origins(local: SocketAddr) -> Vec<String> {
    let port = local.port();
    let mut own = vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://[::1]:{port}"),
    ];
    if !local.ip().is_unspecified() {
        own.push(format!("http://{local}"));
    }
    own
}

/// Whether a browser's `Origin` may open a session (holds invariant 1: only
/// the configuration and the bound address decide).
pub(crate) fn origin_allowed(
    origin: Option<&str>,
    config: &ServeConfig,
    local: SocketAddr,
) -> bool {
    let Some(origin) = origin else {
        // Not a browser (browsers always send Origin on WebSockets); the
        // token still guards the session.
        return true;
    };
    let origin = origin.trim_end_matches('/');
    config
        .allowed_origins
        .iter()
        .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
        || own_origins(local)
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("abcd", "abc"));
        assert!(!token_matches("", "abc"));
    }

    #[test]
    fn only_own_origins_are_allowed_on_loopback() {
        let local: SocketAddr = "127.0.0.1:8765".parse().expect("addr");
        let mut config = ServeConfig::new(local);
        assert!(origin_allowed(None, &config, local));
        assert!(origin_allowed(
            Some("http://127.0.0.1:8765"),
            &config,
            local
        ));
        assert!(origin_allowed(
            Some("http://localhost:8765/"),
            &config,
            local
        ));
        assert!(!origin_allowed(Some("http://evil.example"), &config, local));
        assert!(!origin_allowed(
            Some("http://localhost:9999"),
            &config,
            local
        ));
        config.allowed_origins.push("https://app.example".into());
        assert!(origin_allowed(Some("https://app.example"), &config, local));
    }

    #[test]
    fn on_every_interface_a_rebound_host_is_not_an_own_origin() {
        let local: SocketAddr = "0.0.0.0:8765".parse().expect("addr");
        let mut config = ServeConfig::new(local);
        // What a DNS-rebinding page sends: its own name, this port.
        assert!(!origin_allowed(
            Some("http://evil.example:8765"),
            &config,
            local
        ));
        assert!(!origin_allowed(Some("http://0.0.0.0:8765"), &config, local));
        assert!(origin_allowed(
            Some("http://localhost:8765"),
            &config,
            local
        ));
        // A LAN address reaches the page only when allowed explicitly.
        assert!(!origin_allowed(
            Some("http://192.168.1.5:8765"),
            &config,
            local
        ));
        config
            .allowed_origins
            .push("http://192.168.1.5:8765".into());
        assert!(origin_allowed(
            Some("http://192.168.1.5:8765"),
            &config,
            local
        ));
    }

    #[test]
    fn a_specific_bound_address_is_an_own_origin() {
        let local: SocketAddr = "192.168.1.5:8765".parse().expect("addr");
        let config = ServeConfig::new(local);
        assert!(origin_allowed(
            Some("http://192.168.1.5:8765"),
            &config,
            local
        ));
        assert!(!origin_allowed(
            Some("http://192.168.1.6:8765"),
            &config,
            local
        ));
    }
}
