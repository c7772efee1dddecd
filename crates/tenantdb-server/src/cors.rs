//! Cross-origin access for web pages that call tenantdb straight from the browser
//! (`@libsql/client/web` with the user's session token).
//!
//! Only the data plane answers CORS (Hrana, `/health`, `/version`, the dev sign-in): the admin
//! API, the webhooks and `/metrics` are for servers and operators, and a browser page has no
//! business reading them. With no origin configured no CORS header is sent at all.
//!
//! User tokens travel in the `Authorization` header, never in cookies, so credentials are not
//! allowed (`Access-Control-Allow-Credentials` is never sent): a page can only use a token it
//! already holds.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;
use std::time::Duration;

use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may cache a preflight answer. Chromium caps it at two hours; an hour
/// saves a round trip on nearly every request of a page that stays open.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// A web origin allowed to call the data plane: `scheme://host[:port]`, normalized the way
/// browsers send it in the `Origin` header (lower-case scheme and host, no default port), so
/// comparing it with a request's origin is an exact byte comparison.
///
/// `*` is refused on purpose. A wildcard would let every web page a user happens to visit
/// call this server from their browser; with `--dev-login` that page could mint a token for
/// any user and read their data. Listing the app's own origins costs one flag.
#[derive(Clone, PartialEq, Eq)]
pub struct CorsOrigin(HeaderValue);

/// Why a configured origin is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsOriginError {
    #[error(
        "`*` is not accepted as a CORS origin: list each origin that serves your app \
         (for example https://app.example.com); a wildcard would let any web page call \
         this server from its visitors' browsers"
    )]
    Wildcard,
    #[error(
        "invalid CORS origin {origin:?}: {reason}; an origin is scheme://host[:port], for \
         example https://app.example.com or http://127.0.0.1:5173"
    )]
    Malformed {
        origin: String,
        reason: &'static str,
    },
}

impl CorsOrigin {
    /// The origin as browsers send it.
    pub fn as_str(&self) -> &str {
        // Built from a `String` in `from_str`, so always visible ASCII.
        self.0.to_str().unwrap_or_default()
    }
}

impl fmt::Display for CorsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CorsOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorsOrigin({})", self.as_str())
    }
}

impl FromStr for CorsOrigin {
    type Err = CorsOriginError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let text = raw.trim();
        let malformed = |reason| CorsOriginError::Malformed {
            origin: text.to_owned(),
            reason,
        };
        if text == "*" {
            return Err(CorsOriginError::Wildcard);
        }
        if text.eq_ignore_ascii_case("null") {
            return Err(malformed(
                "`null` is what sandboxed frames and file:// pages send, which any page can imitate",
            ));
        }
        if !text.is_ascii() {
            return Err(malformed(
                "use the ASCII (punycode, xn--) form of the host, as browsers send it",
            ));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| malformed("it has no scheme (http:// or https://)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(malformed("the scheme must be http or https")),
        };
        if rest.ends_with('/') && !rest[..rest.len() - 1].contains(['/', '?', '#']) {
            return Err(malformed("an origin has no path, not even a trailing `/`"));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(malformed("an origin has no path, query or fragment"));
        }
        if rest.contains('@') {
            return Err(malformed("an origin has no user name or password"));
        }
        let (host, port) = split_host_port(rest).map_err(malformed)?;
        let host = host.to_ascii_lowercase();
        let serialized = match port {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        };
        HeaderValue::from_str(&serialized)
            .map(CorsOrigin)
            .map_err(|_| malformed("it contains characters a header cannot carry"))
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), &'static str> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address is not closed with `]`")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "not a valid IPv6 address")?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("unexpected text after `]`")?),
        };
        (&authority[..addr.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    if !host.starts_with('[') {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !host.split('.').all(label_ok) {
            return Err("the host may hold only letters, digits, `-` and single dots");
        }
    }
    let port = match port {
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(port),
            _ => return Err("the port must be a number from 1 to 65535"),
        },
    };
    Ok((host, port))
}

/// The CORS layer for the data-plane routes; `None` when no origin is configured, so that
/// nothing about CORS is sent at all.
pub(crate) fn layer(origins: &[CorsOrigin]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().map(|o| o.0.clone())))
            // GET for /health, /version and the Hrana version probes; POST for everything
            // that carries a body. Preflight (OPTIONS) is answered by the layer itself.
            .allow_methods([Method::GET, Method::POST])
            // All `@libsql/client` sends besides the CORS-safelisted ones.
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> String {
        match text.parse::<CorsOrigin>() {
            Ok(origin) => origin.to_string(),
            Err(e) => panic!("{text:?}: {e}"),
        }
    }

    fn reason(text: &str) -> String {
        match text.parse::<CorsOrigin>() {
            Ok(origin) => panic!("{text:?} was accepted as {origin}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn origins_are_normalized_as_browsers_send_them() {
        assert_eq!(ok("http://127.0.0.1:5173"), "http://127.0.0.1:5173");
        assert_eq!(ok(" https://App.Example.COM "), "https://app.example.com");
        assert_eq!(ok("HTTPS://example.com:443"), "https://example.com");
        assert_eq!(ok("http://example.com:80"), "http://example.com");
        assert_eq!(ok("http://example.com:443"), "http://example.com:443");
        assert_eq!(ok("http://localhost"), "http://localhost");
        assert_eq!(ok("http://[::1]:8080"), "http://[::1]:8080");
        assert_eq!(
            ok("http://xn--bcher-kva.example"),
            "http://xn--bcher-kva.example"
        );
    }

    #[test]
    fn malformed_origins_say_what_is_wrong() {
        let cases = [
            ("*", "wildcard"),
            ("null", "sandboxed"),
            ("example.com", "no scheme"),
            ("ftp://example.com", "http or https"),
            ("https://example.com/", "trailing"),
            ("https://example.com/app", "no path"),
            ("https://example.com?x=1", "no path"),
            ("https://user@example.com", "user name"),
            ("https://", "host is empty"),
            ("https://:8080", "host is empty"),
            ("https://exa mple.com", "letters, digits"),
            ("https://example..com", "single dots"),
            ("https://example.com:0", "port"),
            ("https://example.com:65536", "port"),
            ("https://example.com:+80", "port"),
            ("https://example.com:", "port"),
            ("http://[::1", "not closed"),
            ("http://[zz::1]", "IPv6"),
            ("http://[::1]x", "after `]`"),
            ("https://bücher.example", "punycode"),
        ];
        for (text, hint) in cases {
            let message = reason(text);
            assert!(message.contains(hint), "{text:?}: {message}");
        }
        assert_eq!("*".parse::<CorsOrigin>(), Err(CorsOriginError::Wildcard));
    }

    #[test]
    fn no_origins_no_layer() {
        assert!(layer(&[]).is_none());
        assert!(layer(&["http://localhost:5173".parse().unwrap()]).is_some());
    }
}
