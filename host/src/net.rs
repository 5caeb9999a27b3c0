//! The host's network policy for the guest's downloads.
//!
//! A guest sees every chat message, so a download it could point anywhere
//! would be a channel to send conversations out. The host therefore fetches
//! only URLs the embedding app allows: by default HTTPS under the model's
//! release path, redirects only to the release CDN, never a loopback,
//! private or link-local address (checked on the addresses actually
//! connected to, so a name that resolves to one is refused too). The URL is
//! checked before any request is made. Tests and side-loading apps opt in
//! to more (`allow_http`, `allow_private`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;
use url::Url;

/// What the guest may download from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NetworkPolicy {
    /// URL prefixes a download may start at (`scheme://host[:port]/path…`).
    pub allowed_urls: Vec<String>,
    /// Origins (`scheme://host[:port]`) a redirect may lead to.
    pub redirect_origins: Vec<String>,
    /// Allow `http://` (not only `https://`).
    pub allow_http: bool,
    /// Allow loopback, private, link-local and unique-local addresses.
    pub allow_private: bool,
}

impl Default for NetworkPolicy {
    /// The shipping model's release location and GitHub's release CDN.
    fn default() -> Self {
        NetworkPolicy {
            allowed_urls: vec!["https://github.com/sneptech/bittybot/releases/download/".into()],
            redirect_origins: vec![
                "https://github.com".into(),
                "https://objects.githubusercontent.com".into(),
                "https://release-assets.githubusercontent.com".into(),
            ],
            allow_http: false,
            allow_private: false,
        }
    }
}

impl NetworkPolicy {
    /// Also allow `prefix`, and redirects within its origin (e.g. a test
    /// server on loopback, with `allow_http` and `allow_private`).
    pub fn allow(&mut self, prefix: &str) {
        self.allowed_urls.push(prefix.to_owned());
        if let Ok(u) = Url::parse(prefix) {
            self.redirect_origins.push(u.origin().ascii_serialization());
        }
    }

    fn check_basics(&self, url: &str) -> Result<Url, String> {
        let u = Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e})"))?;
        match u.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            s => return Err(format!("`{s}://` downloads are not allowed (HTTPS only)")),
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err("URLs with credentials are not allowed".into());
        }
        let host = u.host().ok_or_else(|| format!("`{url}` has no host"))?;
        if !self.allow_private {
            let ip = match host {
                url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
                url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
                url::Host::Domain(d) if d.eq_ignore_ascii_case("localhost") => {
                    Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
                }
                url::Host::Domain(_) => None,
            };
            if let Some(ip) = ip.filter(|ip| !is_public(*ip)) {
                return Err(format!("{ip} is a loopback or private address"));
            }
        }
        Ok(u)
    }

    /// Check the URL a guest names, before any request.
    pub fn check_url(&self, url: &str) -> Result<Url, String> {
        let u = self.check_basics(url)?;
        let s = u.as_str();
        if !self.allowed_urls.iter().any(|p| s.starts_with(p.as_str())) {
            return Err(format!("{} is not an allowed download location", u.origin().ascii_serialization()));
        }
        Ok(u)
    }

    /// Check where a redirect leads.
    pub fn check_redirect(&self, url: &Url) -> Result<(), String> {
        self.check_basics(url.as_str())?;
        let origin = url.origin().ascii_serialization();
        let allowed = self.redirect_origins.iter().any(|o| o.trim_end_matches('/') == origin)
            || self.allowed_urls.iter().any(|p| url.as_str().starts_with(p.as_str()));
        if allowed { Ok(()) } else { Err(format!("a redirect to {origin} is not allowed")) }
    }
}

/// Whether an address is on the public internet (not loopback, private,
/// link-local, unique-local, shared, documentation, multicast or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => v4_public(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => v4_public(v4),
            None => v6_public(a),
        },
    }
}

fn v4_public(a: Ipv4Addr) -> bool {
    let o = a.octets();
    !(a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_unspecified()
        || a.is_broadcast()
        || a.is_documentation()
        || a.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (64..128).contains(&o[1]))
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || o[0] >= 240)
}

fn v6_public(a: Ipv6Addr) -> bool {
    let s = a.segments();
    !(a.is_loopback()
        || a.is_unspecified()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        || (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x0064 && s[1] == 0xff9b))
}

/// A resolver that keeps only the addresses the policy allows: the
/// connection goes to exactly those, so a name resolving to a private
/// address is refused as a literal one is.
#[derive(Debug)]
pub struct PolicyResolver {
    inner: DefaultResolver,
    allow_private: bool,
}

impl PolicyResolver {
    /// A resolver for a policy.
    pub fn new(policy: &NetworkPolicy) -> Self {
        PolicyResolver { inner: DefaultResolver::default(), allow_private: policy.allow_private }
    }
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let all = self.inner.resolve(uri, config, timeout)?;
        let mut kept = self.empty();
        for a in all.iter().filter(|a: &&SocketAddr| self.allow_private || is_public(a.ip())) {
            kept.push(*a);
        }
        if kept.is_empty() {
            return Err(ureq::Error::ConnectionFailed);
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_release_location_over_https_by_default() {
        let p = NetworkPolicy::default();
        p.check_url(
            "https://github.com/sneptech/bittybot/releases/download/v0.1.0-q3ks/tiny-aya-global-q3_k_s.gguf",
        )
        .unwrap();
        for bad in [
            "http://github.com/sneptech/bittybot/releases/download/x.gguf",
            "https://github.com/other/repo/releases/download/x.gguf",
            "https://evil.example/leak?d=00",
            "https://127.0.0.1/sneptech/bittybot/releases/download/x",
            "https://user:pw@github.com/sneptech/bittybot/releases/download/x",
            "ftp://github.com/x",
            "not a url",
        ] {
            assert!(p.check_url(bad).is_err(), "{bad}");
        }
        let cdn =
            Url::parse("https://release-assets.githubusercontent.com/github-production/1?sig=x").unwrap();
        p.check_redirect(&cdn).unwrap();
        assert!(p.check_redirect(&Url::parse("https://example.org/").unwrap()).is_err());
        assert!(p.check_redirect(&Url::parse("https://169.254.169.254/latest").unwrap()).is_err());
    }

    #[test]
    fn loopback_only_when_the_app_opts_in() {
        let mut p = NetworkPolicy { allow_http: true, ..NetworkPolicy::default() };
        p.allow("http://127.0.0.1:8080/");
        assert!(p.check_url("http://127.0.0.1:8080/m.gguf").unwrap_err().contains("private"));
        p.allow_private = true;
        p.check_url("http://127.0.0.1:8080/m.gguf").unwrap();
        assert!(p.check_url("http://127.0.0.1:9999/m.gguf").is_err(), "another port is another origin");
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["140.82.121.4", "2606:50c0:8000::154"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
