//! Who is calling, as far as the network says: the peer address, or the client address a
//! trusted proxy put in `X-Forwarded-For`. A header from anyone else is ignored, so a client
//! cannot write another address into the audit log.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies (load balancers, ingress) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// `10.0.0.0/8, 192.168.1.7` (an address alone is a /32 or /128).
    pub fn parse(list: &str) -> Result<Self, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{s}' is not an address or a network (CIDR)"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nets })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The caller's address: walking `X-Forwarded-For` from the right while each hop is a trusted
    /// proxy, the first address that is not one; the peer itself when it is not trusted.
    pub fn client_ip(&self, headers: &HeaderMap, peer: SocketAddr) -> String {
        let mut client = peer.ip();
        if !self.trusts(client) {
            return client.to_string();
        }
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|hop| hop.trim().parse().ok())
            .collect();
        for hop in hops.into_iter().rev() {
            client = hop;
            if !self.trusts(hop) {
                break;
            }
        }
        client.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap();
        let untrusted: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let proxy: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        assert_eq!(
            proxies.client_ip(&headers("1.2.3.4"), untrusted),
            "203.0.113.9"
        );
        assert_eq!(
            proxies.client_ip(&headers("198.51.100.4"), proxy),
            "198.51.100.4"
        );
        // A client that sends its own header in front of the proxy's cannot choose the address.
        assert_eq!(
            proxies.client_ip(&headers("6.6.6.6, 198.51.100.4, 192.168.1.7"), proxy),
            "198.51.100.4"
        );
        assert_eq!(proxies.client_ip(&HeaderMap::new(), proxy), "10.1.2.3");
        assert_eq!(
            TrustedProxies::default().client_ip(&headers("1.2.3.4"), proxy),
            "10.1.2.3"
        );
        assert!(TrustedProxies::parse("nonsense").is_err());
    }
}
