//! Where the server may send requests of its own (subscription rest-hooks, a client's
//! JWKS URL): an address given by a client must not turn the server into a way into the
//! hospital network or the cloud metadata service.
//!
//! The rule (`--outbound-allow`, DESIGN.md): an endpoint is `https://` and every address
//! its host name resolves to is public, unless the operator's allow-list names the host or
//! a CIDR holding the address; plain `http://` only for allow-listed endpoints. Addresses
//! are checked after name resolution, and the request then goes to exactly the checked
//! addresses ([`OutboundPolicy::client`]), so a name that resolves to something else a
//! moment later (DNS rebinding) cannot slip through. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;

/// Why an outbound endpoint is refused, in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operator's allow-list: host names and networks outbound requests may reach even
/// though they are loopback, private or link-local, and over plain http.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    hosts: Vec<String>,
    networks: Vec<IpNet>,
}

impl OutboundPolicy {
    /// Parses `--outbound-allow` entries: CIDRs (`10.1.0.0/16`), single addresses
    /// (`127.0.0.1`, `::1`) or host names (`ehr.hospital.local`).
    pub fn parse(entries: &[String]) -> Result<OutboundPolicy, String> {
        let mut policy = OutboundPolicy::default();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Ok(network) = entry.parse::<IpNet>() {
                policy.networks.push(network);
            } else if let Ok(address) = entry.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(address));
            } else if is_host_name(entry) {
                policy.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "--outbound-allow: {entry:?} is neither a CIDR (10.0.0.0/8), an address \
                     nor a host name"
                ));
            }
        }
        Ok(policy)
    }

    fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn allows_address(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|n| n.contains(&address))
    }

    /// Checks an endpoint's form: an absolute http(s) URL without credentials, https
    /// unless the host is allow-listed (by name, or as an address in an allowed network).
    pub fn check_url(&self, text: &str) -> Result<Url, Refusal> {
        let url = Url::parse(text)
            .map_err(|e| Refusal(format!("{text:?} is not an absolute URL ({e})")))?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err(Refusal(format!("{text:?} has no host"))),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal(format!(
                "{text:?} carries credentials in the URL; send them in a header instead"
            )));
        }
        let listed = self.allows_host(&host)
            || host
                .parse::<IpAddr>()
                .is_ok_and(|address| self.allows_address(address));
        match url.scheme() {
            "https" => {}
            "http" if listed => {}
            "http" => {
                return Err(Refusal(format!(
                    "{text:?}: endpoints must use https; plain http is accepted only for hosts \
                     the operator allows (--outbound-allow)"
                )))
            }
            other => {
                return Err(Refusal(format!(
                    "{text:?}: the {other}: scheme is not supported; use https"
                )))
            }
        }
        Ok(url)
    }

    /// [`check_url`](Self::check_url), and for a host written as an address, that address
    /// too: what can be refused without a name lookup is refused when a client names it
    /// (subscription creation), not days later at delivery.
    pub fn check_endpoint(&self, text: &str) -> Result<Url, Refusal> {
        let url = self.check_url(text)?;
        let address = match url.host() {
            Some(url::Host::Ipv4(a)) => Some(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => Some(IpAddr::V6(a)),
            _ => None,
        };
        if let Some(ip) = address {
            if !(is_public(ip) || self.allows_address(ip)) {
                return Err(Refusal(format!(
                    "{text:?} names {ip}, a {} address, which outbound requests may not reach \
                     unless the operator allows it (--outbound-allow)",
                    kind_of(ip)
                )));
            }
        } else if url
            .host_str()
            .is_some_and(|h| h.eq_ignore_ascii_case("localhost") && !self.allows_host(h))
        {
            return Err(Refusal(format!(
                "{text:?} names localhost, which outbound requests may not reach unless the \
                 operator allows it (--outbound-allow)"
            )));
        }
        Ok(url)
    }

    /// Resolves the URL's host and checks every address: public, or allowed by name or
    /// network. Returns the addresses to connect to.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, Refusal> {
        let host = url
            .host_str()
            .ok_or_else(|| Refusal(format!("{url} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Refusal(format!("{url} has no port")))?;
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Refusal(format!("{host} cannot be resolved: {e}")))?
            .collect();
        if addresses.is_empty() {
            return Err(Refusal(format!("{host} resolves to no address")));
        }
        let host_listed = self.allows_host(&host);
        for address in &addresses {
            let ip = address.ip();
            if !(host_listed || is_public(ip) || self.allows_address(ip)) {
                return Err(Refusal(format!(
                    "{host} resolves to {ip}, a {} address, which outbound requests may not \
                     reach unless the operator allows it (--outbound-allow)",
                    kind_of(ip)
                )));
            }
        }
        Ok(addresses)
    }

    /// A client for one checked endpoint: it connects only to `addresses` (those
    /// [`resolve`](Self::resolve) checked), follows no redirects and gives up after
    /// `timeout`.
    pub fn client(
        &self,
        url: &Url,
        addresses: &[SocketAddr],
        timeout: Duration,
    ) -> Result<reqwest::Client, Refusal> {
        let host = url
            .host_str()
            .ok_or_else(|| Refusal(format!("{url} has no host")))?;
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .resolve_to_addrs(host, addresses)
            .build()
            .map_err(|e| Refusal(format!("cannot build an HTTP client for {url}: {e}")))
    }
}

/// An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is that IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Reachable on the public internet: not loopback, private, link-local (which holds the
/// cloud metadata service, 169.254.169.254), shared (CGNAT), multicast, reserved or
/// unspecified.
pub fn is_public(address: IpAddr) -> bool {
    kind_of(address) == "public"
}

fn kind_of(address: IpAddr) -> &'static str {
    match canonical(address) {
        IpAddr::V4(a) => kind_of_v4(a),
        IpAddr::V6(a) => kind_of_v6(a),
    }
}

fn kind_of_v4(a: Ipv4Addr) -> &'static str {
    let [first, second, ..] = a.octets();
    if a.is_loopback() {
        "loopback"
    } else if a.is_private() {
        "private"
    } else if a.is_link_local() {
        "link-local (cloud metadata)"
    } else if a.is_unspecified() || first == 0 {
        "unspecified"
    } else if first == 100 && (64..128).contains(&second) {
        "shared (carrier-grade NAT)"
    } else if a.is_multicast() || a.is_broadcast() || first >= 240 {
        "multicast or reserved"
    } else if first == 198 && (18..20).contains(&second) {
        "benchmarking"
    } else {
        "public"
    }
}

fn kind_of_v6(a: Ipv6Addr) -> &'static str {
    let first = a.segments()[0];
    if a.is_loopback() {
        "loopback"
    } else if a.is_unspecified() {
        "unspecified"
    } else if first & 0xfe00 == 0xfc00 {
        "private (unique local)"
    } else if first & 0xffc0 == 0xfe80 {
        "link-local"
    } else if a.is_multicast() {
        "multicast or reserved"
    } else {
        "public"
    }
}

/// A DNS host name: labels of letters, digits and hyphens.
fn is_host_name(text: &str) -> bool {
    let text = text.trim_end_matches('.');
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn address_kinds() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn allow_list_entries() {
        assert!(OutboundPolicy::parse(&["not a host!".into()]).is_err());
        let p = policy(&["127.0.0.1", "10.0.0.0/8", "EHR.hospital.local"]);
        assert!(p.allows_address("127.0.0.1".parse().unwrap()));
        assert!(p.allows_address("::ffff:10.9.8.7".parse().unwrap()));
        assert!(!p.allows_address("192.168.0.1".parse().unwrap()));
        assert!(p.allows_host("ehr.hospital.local."));
    }

    #[test]
    fn urls_must_be_https_unless_allowed() {
        let none = policy(&[]);
        assert!(none.check_url("https://ehr.example.org/hook").is_ok());
        let refusal = none.check_url("http://ehr.example.org/hook").unwrap_err();
        assert!(refusal.0.contains("https"), "{refusal}");
        assert!(none.check_url("ftp://ehr.example.org/").is_err());
        assert!(none.check_url("/relative").is_err());
        assert!(none
            .check_url("https://user:secret@ehr.example.org/")
            .is_err());
        let loopback = policy(&["127.0.0.1"]);
        assert!(loopback.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(loopback.check_url("http://localhost:9000/hook").is_err());
        assert!(policy(&["localhost"])
            .check_url("http://localhost:9000/hook")
            .is_ok());
    }

    #[tokio::test]
    async fn resolved_addresses_must_be_public_or_allowed() {
        let none = policy(&[]);
        for url in [
            "https://127.0.0.1/hook",
            "https://localhost/hook",
            "https://[::1]/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:127.0.0.1]/hook",
        ] {
            let url = none.check_url(url).unwrap();
            let refusal = none.resolve(&url).await.unwrap_err();
            assert!(refusal.0.contains("--outbound-allow"), "{url}: {refusal}");
        }
        let loopback = policy(&["127.0.0.0/8"]);
        let url = loopback.check_url("http://127.0.0.1:9000/hook").unwrap();
        let addresses = loopback.resolve(&url).await.unwrap();
        assert_eq!(addresses, vec!["127.0.0.1:9000".parse().unwrap()]);
    }

    #[tokio::test]
    async fn the_client_goes_to_the_checked_address_and_follows_no_redirect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A receiver that answers every request with a redirect to elsewhere.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 2048];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\n\
                          Content-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        // The name is allowed and pinned to the checked address, whatever DNS says.
        let p = policy(&["receiver.test"]);
        let url = p
            .check_url(&format!("http://receiver.test:{port}/hook"))
            .unwrap();
        let pinned: Vec<SocketAddr> = vec![format!("127.0.0.1:{port}").parse().unwrap()];
        let client = p.client(&url, &pinned, Duration::from_secs(5)).unwrap();
        let response = client.post(url).body("{}").send().await.unwrap();
        assert_eq!(response.status(), 302, "the redirect is not followed");
    }
}
