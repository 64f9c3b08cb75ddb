//! Which addresses REST and http(s) file sources may connect to. In a server, a spec must not turn
//! Carga into a proxy into its own network (the API, Redis, the cloud metadata service), so
//! loopback, link-local, private and other non-public ranges are refused unless the settings allow
//! them. Host names are resolved by our resolver and only the public addresses are handed to the
//! HTTP client, so the address checked is the address connected to (no DNS rebinding); literal
//! addresses in URLs are checked before any request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Loopback, link-local and private ranges may be reached.
    pub allow_private: bool,
}

impl NetworkPolicy {
    /// Refuses a URL whose scheme is not http(s) or whose literal address is not allowed.
    pub fn check_url(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("'{}' URLs are not fetched", url.scheme()));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(name)) if name.eq_ignore_ascii_case("localhost") => {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            }
            Some(Host::Domain(_)) => return Ok(()),
            None => return Err("the URL has no host".into()),
        };
        self.check_ip(ip)
            .map_err(|why| format!("{} is {why}", url.host_str().unwrap_or_default()))
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), &'static str> {
        match (self.allow_private, non_public(ip)) {
            (false, Some(kind)) => Err(kind),
            _ => Ok(()),
        }
    }

    /// An HTTP client builder that resolves through this policy and checks every redirect.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        self.client_builder_checking(|_| Ok(()))
    }

    /// As `client_builder`, with one more check of each redirect's target (where credentials
    /// may go).
    pub fn client_builder_checking(
        &self,
        also: impl Fn(&Url) -> Result<(), String> + Send + Sync + 'static,
    ) -> reqwest::ClientBuilder {
        let policy = *self;
        let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::custom(
            move |attempt| {
                if attempt.previous().len() >= 10 {
                    return attempt.error("more than 10 redirects");
                }
                match policy
                    .check_url(attempt.url())
                    .and_then(|()| also(attempt.url()))
                {
                    Ok(()) => attempt.follow(),
                    Err(why) => attempt.error(format!("redirect refused: {why}")),
                }
            },
        ));
        if self.allow_private {
            builder
        } else {
            builder.dns_resolver(Arc::new(PublicOnly))
        }
    }
}

/// A resolver that hands the HTTP client only public addresses.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| non_public(a.ip()).is_none())
                .collect();
            if public.is_empty() {
                let kind = found
                    .first()
                    .and_then(|a| non_public(a.ip()))
                    .unwrap_or("not resolvable");
                return Err(format!(
                    "{host} resolves to {kind} addresses only, which this process may not reach (sources.allow_private_networks)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// What kind of non-public address `ip` is, if it is one.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_private() {
                Some("a private address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                Some("a non-routable address")
            } else if a == 100 && (64..128).contains(&b) {
                Some("a shared (carrier-grade NAT) address")
            } else if a == 198 && (b == 18 || b == 19) {
                Some("a benchmarking address")
            } else if a >= 240 {
                Some("a reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return non_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("a non-routable address")
            } else if first & 0xfe00 == 0xfc00 {
                Some("a private address")
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges_are_refused_unless_allowed() {
        let server = NetworkPolicy {
            allow_private: false,
        };
        let open = NetworkPolicy {
            allow_private: true,
        };
        for url in [
            "http://127.0.0.1:6379/",
            "http://localhost:8080/datasets",
            "http://10.0.0.5/",
            "http://172.16.1.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            let url = Url::parse(url).unwrap();
            assert!(server.check_url(&url).is_err(), "{url} passed");
            assert!(open.check_url(&url).is_ok(), "{url} refused when allowed");
        }
        for url in ["https://api.example.com/v1", "http://8.8.8.8/"] {
            assert!(server.check_url(&Url::parse(url).unwrap()).is_ok(), "{url}");
        }
        assert!(
            open.check_url(&Url::parse("file:///etc/passwd").unwrap())
                .is_err()
        );
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused() {
        let err = match PublicOnly
            .resolve(Name::from_str_for_test("localhost"))
            .await
        {
            Ok(_) => panic!("localhost resolved to a public address"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
    }

    trait NameForTest {
        fn from_str_for_test(name: &str) -> Name;
    }

    impl NameForTest for Name {
        fn from_str_for_test(name: &str) -> Name {
            name.parse().expect("a host name")
        }
    }
}
