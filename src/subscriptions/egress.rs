//! Where notifications may be sent. A Subscription's endpoint is chosen by a client, so without
//! a rule it could make this server call into its own network: a cloud metadata service, the
//! database's admin port, another tenant's service (server-side request forgery,
//! https://cheatsheetseries.owasp.org/cheatsheets/Server_Side_Request_Forgery_Prevention_Cheat_Sheet.html).
//! By default only public addresses are reached; an operator allows more networks with
//! `VB_SUBSCRIPTION_ALLOW_NETWORKS`.
//!
//! The rule is applied to the address actually connected to: a host name is resolved here and
//! only its permitted addresses are offered to the connector, so a name that resolves to a
//! private address, at once or later (DNS rebinding), is refused the same way. An IP literal
//! never reaches a resolver and is checked before the request.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// The networks notifications may reach besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// Every address may be reached.
    any: bool,
    allowed: Vec<IpNet>,
}

/// A refused address, with what to configure to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub IpAddr);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the endpoint's address {} is not a public one; an operator can allow its network \
             with VB_SUBSCRIPTION_ALLOW_NETWORKS",
            self.0
        )
    }
}

impl Error for Refused {}

impl Egress {
    /// Public addresses only.
    pub fn public() -> Egress {
        Egress::default()
    }

    /// Every address (tests and closed networks).
    pub fn any() -> Egress {
        Egress {
            any: true,
            allowed: Vec::new(),
        }
    }

    /// `VB_SUBSCRIPTION_ALLOW_NETWORKS`: empty (public addresses only), `any`, or a
    /// comma-separated list of networks (`10.20.0.0/16`) and addresses (`127.0.0.1`).
    pub fn parse(s: &str) -> Result<Egress, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("any") {
            return Ok(Egress::any());
        }
        let allowed = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{p:?} is neither a network (10.0.0.0/8) nor an address"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Egress {
            any: false,
            allowed,
        })
    }

    /// Whether a notification may be sent to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.any || self.allowed.iter().any(|n| n.contains(&ip)) || is_public(ip)
    }

    /// `permits`, as a reason.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Refused(ip))
        }
    }
}

/// Not in one of IANA's special-purpose blocks that are not globally reachable
/// (https://www.iana.org/assignments/iana-ipv4-special-registry/,
/// https://www.iana.org/assignments/iana-ipv6-special-registry/). An IPv6 address that embeds
/// an IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4 address it leads to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                    // "this network"
        || a == 10                              // private
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || a == 127                             // loopback
        || (a == 169 && b == 254)               // link-local, cloud metadata services
        || (a == 172 && (16..32).contains(&b))  // private
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)       // documentation
        || (a == 192 && b == 88 && c == 99)     // 6to4 relay anycast
        || (a == 192 && b == 168)               // private
        || (a == 198 && (b == 18 || b == 19))   // benchmarking
        || (a == 198 && b == 51 && c == 100)    // documentation
        || (a == 203 && b == 0 && c == 113)     // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 (RFC 6052): the last 32 bits are the IPv4 destination.
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        // 6to4 (RFC 3056): bits 16..48 are the IPv4 destination.
        return is_public_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0]        // IPv4-compatible (deprecated)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x2001 && s[1] < 0x200)     // IETF protocol assignments (Teredo, ORCHID…)
        || (s[0] == 0x2001 && s[1] == 0xdb8)    // documentation
        || (s[0] & 0xfe00) == 0xfc00            // unique local
        || (s[0] & 0xffc0) == 0xfe80            // link-local
        || (s[0] & 0xffc0) == 0xfec0            // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
}

/// The DNS resolver of the notification client: the system's, keeping only permitted
/// addresses.
pub struct Resolver(pub Arc<Egress>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let egress = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| egress.permits(a.ip()))
                .collect();
            match (permitted.is_empty(), found.first()) {
                (true, Some(first)) => Err(Box::new(Refused(first.ip())) as Box<_>),
                _ => Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The refusal somewhere in an error's chain of causes.
pub fn refusal<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a Refused> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_addresses_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:c0a8:0101::1",
            "2001:db8::1",
            "2001::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
    }

    #[test]
    fn global_addresses_are_public() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "193.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn an_operator_allows_networks_and_addresses() {
        let e = Egress::parse(" 10.20.0.0/16, 127.0.0.1 ,fd00::/8").unwrap();
        assert!(e.permits("10.20.3.4".parse().unwrap()));
        assert!(!e.permits("10.21.0.1".parse().unwrap()));
        assert!(e.permits("127.0.0.1".parse().unwrap()));
        assert!(!e.permits("127.0.0.2".parse().unwrap()));
        assert!(e.permits("fd00::5".parse().unwrap()));
        assert!(e.permits("8.8.8.8".parse().unwrap()));
        assert_eq!(Egress::parse("").unwrap(), Egress::public());
        assert_eq!(Egress::parse("ANY").unwrap(), Egress::any());
        assert!(Egress::any().permits("169.254.169.254".parse().unwrap()));
        let err = Egress::parse("10.0.0.0/8,intranet").unwrap_err();
        assert!(err.contains("\"intranet\""), "{err}");
        assert!(Egress::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn the_refusal_says_what_to_configure() {
        let r = Egress::public()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        let said = r.to_string();
        assert!(
            said.contains("169.254.169.254") && said.contains("VB_SUBSCRIPTION_ALLOW_NETWORKS")
        );
        let wrapped: Box<dyn Error + Send + Sync> = Box::new(r.clone());
        assert_eq!(refusal(wrapped.as_ref()), Some(&r));
    }
}
