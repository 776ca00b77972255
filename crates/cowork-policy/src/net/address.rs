//! Vetting of the addresses a destination resolves to (anti DNS
//! rebinding, anti SSRF).
//!
//! The proxy resolves a name once, vets every address with
//! [`vet_destinations`], and dials only the addresses that passed: it never
//! looks the name up a second time, so a name cannot pass with a public
//! address and connect to a private one.
//!
//! Refused (each with an [`AddressClass`] naming why): loopback,
//! unspecified, private (RFC 1918, IPv6 ULA and site-local), shared CGNAT
//! space, link-local, multicast, broadcast, documentation, benchmarking and
//! reserved ranges, every IPv6 address outside global unicast `2000::/3`,
//! cloud metadata endpoints ([`METADATA_V4`], [`METADATA_V6`]) and the
//! addresses of the host's own interfaces (passed in by the caller).
//! IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible,
//! NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are judged by that IPv4 address.
//!
//! All of this is waived when the host name or IP literal was listed
//! *exactly* ([`super::Decision::Allowed`] with `exact`), so `localhost`
//! or `127.0.0.2:8080` can be allowed on purpose; `*` and `*.base` never
//! waive it. The loop guard (the proxy's own endpoints) is never waived.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::allowlist::Decision;
use super::denial::DenyReason;
use super::host::{Host, canonical_ip};
use super::target::Target;

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    Loopback,
    Unspecified,
    Private,
    SharedCgnat,
    LinkLocal,
    Multicast,
    Broadcast,
    Documentation,
    Benchmarking,
    Reserved,
    CloudMetadata,
    OwnInterface,
}

impl AddressClass {
    /// "a loopback address", ...: reads after "is" or "resolves to".
    pub fn description(self) -> &'static str {
        match self {
            AddressClass::Loopback => "a loopback address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Private => "a private-network address",
            AddressClass::SharedCgnat => "a carrier-grade NAT (shared) address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Documentation => "a documentation-only address",
            AddressClass::Benchmarking => "a benchmarking-only address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::CloudMetadata => "a cloud metadata endpoint",
            AddressClass::OwnInterface => "an address of this machine",
        }
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// An IPv6 form that carries an IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Embedding {
    /// `::ffff:a.b.c.d`
    Ipv4Mapped,
    /// `::a.b.c.d` (deprecated, RFC 4291)
    Ipv4Compatible,
    /// `64:ff9b::a.b.c.d` (RFC 6052 well-known prefix)
    Nat64,
    /// `2002:AABB:CCDD::/48` (RFC 3056)
    SixToFour,
}

impl Embedding {
    pub fn description(self) -> &'static str {
        match self {
            Embedding::Ipv4Mapped => "IPv4-mapped",
            Embedding::Ipv4Compatible => "IPv4-compatible",
            Embedding::Nat64 => "NAT64",
            Embedding::SixToFour => "6to4",
        }
    }
}

/// A refused address and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressRefusal {
    pub addr: IpAddr,
    pub class: AddressClass,
    /// When `addr` is an IPv6 form of an IPv4 address, that address.
    pub embedded: Option<(Embedding, Ipv4Addr)>,
}

/// `a loopback address (127.0.0.1)`, `a private-network address
/// (64:ff9b::a00:1, the NAT64 form of 10.0.0.1)`.
impl fmt::Display for AddressRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedded {
            None => write!(f, "{} ({})", self.class, self.addr),
            Some((embedding, v4)) => write!(
                f,
                "{} ({}, the {} form of {v4})",
                self.class,
                self.addr,
                embedding.description()
            ),
        }
    }
}

/// Cloud metadata and platform-agent endpoints, refused with their own
/// reason. Most lie in ranges refused anyway (link-local, CGNAT); Azure's
/// 168.63.129.16 is a public address and is refused only by this list.
pub const METADATA_V4: [(Ipv4Addr, &str); 5] = [
    (
        Ipv4Addr::new(169, 254, 169, 254),
        "instance metadata of AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean, Hetzner",
    ),
    (
        Ipv4Addr::new(169, 254, 170, 2),
        "AWS ECS task metadata and credentials",
    ),
    (
        Ipv4Addr::new(169, 254, 170, 23),
        "AWS EKS Pod Identity agent",
    ),
    (
        Ipv4Addr::new(100, 100, 100, 200),
        "Alibaba Cloud instance metadata",
    ),
    (
        Ipv4Addr::new(168, 63, 129, 16),
        "Azure WireServer (platform host agent)",
    ),
];

/// IPv6 metadata prefixes (address, prefix length, what).
pub const METADATA_V6: [(Ipv6Addr, u8, &str); 1] = [(
    // fd00:ec2::254 (metadata), ::23 (EKS Pod Identity), ::253 (DNS), ::123 (time).
    Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0),
    32,
    "AWS instance metadata, DNS, time and EKS Pod Identity over IPv6",
)];

fn v4_in(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

/// The IPv4 address carried by an IPv6 address, if it is one of the
/// [`Embedding`] forms (`::` and `::1` are not IPv4-compatible).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<(Embedding, Ipv4Addr)> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some((Embedding::Ipv4Mapped, v4));
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some((Embedding::Ipv4Compatible, low32));
    }
    if v6_in(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return Some((Embedding::Nat64, low32));
    }
    if ip.segments()[0] == 0x2002 {
        return Some((
            Embedding::SixToFour,
            Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32),
        ));
    }
    None
}

/// The class an IPv4 address is refused for, or `None` for a public one.
pub fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    if METADATA_V4.iter().any(|(addr, _)| *addr == ip) {
        return Some(AddressClass::CloudMetadata);
    }
    if ip == Ipv4Addr::BROADCAST {
        return Some(AddressClass::Broadcast);
    }
    const TABLE: [([u8; 4], u32, AddressClass); 15] = [
        ([0, 0, 0, 0], 8, AddressClass::Unspecified), // "this network", RFC 791
        ([127, 0, 0, 0], 8, AddressClass::Loopback),
        ([10, 0, 0, 0], 8, AddressClass::Private),
        ([172, 16, 0, 0], 12, AddressClass::Private),
        ([192, 168, 0, 0], 16, AddressClass::Private),
        ([100, 64, 0, 0], 10, AddressClass::SharedCgnat), // RFC 6598
        ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
        ([192, 0, 0, 0], 24, AddressClass::Reserved), // IETF protocol assignments
        ([192, 0, 2, 0], 24, AddressClass::Documentation), // TEST-NET-1
        ([198, 51, 100, 0], 24, AddressClass::Documentation), // TEST-NET-2
        ([203, 0, 113, 0], 24, AddressClass::Documentation), // TEST-NET-3
        ([198, 18, 0, 0], 15, AddressClass::Benchmarking), // RFC 2544
        ([192, 88, 99, 0], 24, AddressClass::Reserved), // former 6to4 relay anycast
        ([224, 0, 0, 0], 4, AddressClass::Multicast),
        ([240, 0, 0, 0], 4, AddressClass::Reserved), // class E
    ];
    TABLE
        .iter()
        .find(|(net, len, _)| v4_in(ip, *net, *len))
        .map(|(_, _, class)| *class)
}

/// The class an IPv6 address (not an [`Embedding`] form) is refused for,
/// or `None` for a global unicast one.
pub fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    if ip.is_unspecified() {
        return Some(AddressClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddressClass::Loopback);
    }
    if METADATA_V6
        .iter()
        .any(|(net, len, _)| v6_in(ip, *net, u32::from(*len)))
    {
        return Some(AddressClass::CloudMetadata);
    }
    let net = |a: u16, b: u16| Ipv6Addr::new(a, b, 0, 0, 0, 0, 0, 0);
    let table: [(Ipv6Addr, u32, AddressClass); 10] = [
        (net(0xff00, 0), 8, AddressClass::Multicast),
        (net(0xfe80, 0), 10, AddressClass::LinkLocal),
        (net(0xfec0, 0), 10, AddressClass::Private), // deprecated site-local
        (net(0xfc00, 0), 7, AddressClass::Private),  // unique local
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            AddressClass::Private,
        ), // local-use NAT64, RFC 8215
        (net(0x2001, 0xdb8), 32, AddressClass::Documentation),
        (net(0x3fff, 0), 20, AddressClass::Documentation), // RFC 9637
        (
            Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
            48,
            AddressClass::Benchmarking,
        ),
        // IETF protocol assignments, Teredo (2001::/32) included.
        (net(0x2001, 0), 23, AddressClass::Reserved),
        (net(0x0100, 0), 64, AddressClass::Reserved), // discard-only
    ];
    if let Some((_, _, class)) = table.iter().find(|(net, len, _)| v6_in(ip, *net, *len)) {
        return Some(*class);
    }
    // Only 2000::/3 is allocated for global unicast.
    (!v6_in(ip, net(0x2000, 0), 3)).then_some(AddressClass::Reserved)
}

/// Vets one resolved address against the refused ranges and the host's
/// own interface addresses.
pub fn vet_address(ip: IpAddr, own_interfaces: &[IpAddr]) -> Result<(), AddressRefusal> {
    let embedded = match ip {
        IpAddr::V6(v6) if !v6.is_unspecified() && !v6.is_loopback() => embedded_ipv4(v6),
        _ => None,
    };
    let refuse = |class| AddressRefusal {
        addr: ip,
        class,
        embedded,
    };
    let class = match (ip, embedded) {
        (_, Some((_, v4))) | (IpAddr::V4(v4), None) => classify_v4(v4),
        (IpAddr::V6(v6), None) => classify_v6(v6),
    };
    if let Some(class) = class {
        return Err(refuse(class));
    }
    let own = |candidate: IpAddr| {
        own_interfaces
            .iter()
            .any(|o| canonical_ip(*o) == canonical_ip(candidate))
    };
    if own(ip) || embedded.is_some_and(|(_, v4)| own(IpAddr::V4(v4))) {
        return Err(refuse(AddressClass::OwnInterface));
    }
    Ok(())
}

/// Whether dialling `addr` would reach one of the proxy's own listening
/// endpoints. An endpoint bound to the unspecified address matches the
/// port on loopback, unspecified and own-interface addresses.
pub fn is_proxy_endpoint(
    addr: SocketAddr,
    endpoints: &[SocketAddr],
    own_interfaces: &[IpAddr],
) -> bool {
    let ip = canonical_ip(addr.ip());
    endpoints.iter().any(|endpoint| {
        if endpoint.port() != addr.port() {
            return false;
        }
        let bound = canonical_ip(endpoint.ip());
        bound == ip
            || (bound.is_unspecified()
                && (ip.is_loopback()
                    || ip.is_unspecified()
                    || own_interfaces.iter().any(|o| canonical_ip(*o) == ip)))
    })
}

/// The addresses the proxy may dial for `target`, in order, or why none.
///
/// * `decision`: the allowlist's; [`Decision::Denied`] is refused here too.
/// * `resolved`: the addresses the name resolved to (one lookup). For an
///   IP-literal target it is ignored and the literal is used. Empty input
///   (the name did not resolve) gives `Ok` of an empty list: the caller
///   reports a resolution failure, not a policy denial.
/// * `own_interfaces`: the host's interface addresses.
/// * `proxy_endpoints`: the proxy's own listening addresses (loop guard).
///
/// When every address is refused, the reason given is the first one's.
pub fn vet_destinations(
    target: &Target,
    decision: Decision,
    resolved: &[IpAddr],
    own_interfaces: &[IpAddr],
    proxy_endpoints: &[SocketAddr],
) -> Result<Vec<SocketAddr>, DenyReason> {
    let exact = match decision {
        Decision::Denied => return Err(DenyReason::NotListed),
        Decision::Allowed { exact } => exact,
    };
    let (candidates, via_name) = match &target.host {
        Host::Ip(ip) => (std::slice::from_ref(ip), false),
        Host::Name(_) => (resolved, true),
    };
    let mut passed: Vec<SocketAddr> = Vec::with_capacity(candidates.len());
    let mut first_refusal = None;
    for ip in candidates {
        let addr = SocketAddr::new(canonical_ip(*ip), target.port);
        let refusal = if is_proxy_endpoint(addr, proxy_endpoints, own_interfaces) {
            Some(DenyReason::ProxyLoop { addr, via_name })
        } else if exact {
            None
        } else {
            vet_address(*ip, own_interfaces)
                .err()
                .map(|refusal| DenyReason::Address { refusal, via_name })
        };
        match refusal {
            Some(reason) => {
                first_refusal.get_or_insert(reason);
            }
            None if !passed.contains(&addr) => passed.push(addr),
            None => {}
        }
    }
    match first_refusal {
        Some(reason) if passed.is_empty() => Err(reason),
        _ => Ok(passed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn range_table() {
        use AddressClass::*;
        let cases: Vec<(&str, Option<AddressClass>)> = vec![
            // Public.
            ("8.8.8.8", None),
            ("93.184.216.34", None),
            ("1.1.1.1", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("192.169.0.1", None),
            ("223.255.255.255", None),
            ("2606:4700:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("2a00:1450:4001::1", None),
            // IPv4 ranges.
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("0.0.0.0", Some(Unspecified)),
            ("0.1.2.3", Some(Unspecified)),
            ("10.0.0.1", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("172.16.0.1", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("192.168.1.1", Some(Private)),
            ("100.64.0.1", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("169.254.1.1", Some(LinkLocal)),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.250", Some(Multicast)),
            ("255.255.255.255", Some(Broadcast)),
            ("240.0.0.1", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("192.0.0.8", Some(Reserved)),
            ("192.88.99.1", Some(Reserved)),
            ("192.0.2.1", Some(Documentation)),
            ("198.51.100.1", Some(Documentation)),
            ("203.0.113.1", Some(Documentation)),
            ("198.18.0.1", Some(Benchmarking)),
            ("198.19.255.255", Some(Benchmarking)),
            // Metadata endpoints.
            ("169.254.169.254", Some(CloudMetadata)),
            ("169.254.170.2", Some(CloudMetadata)),
            ("169.254.170.23", Some(CloudMetadata)),
            ("100.100.100.200", Some(CloudMetadata)),
            ("168.63.129.16", Some(CloudMetadata)),
            ("168.63.129.17", None),
            ("fd00:ec2::254", Some(CloudMetadata)),
            ("fd00:ec2::23", Some(CloudMetadata)),
            // IPv6 ranges.
            ("::1", Some(Loopback)),
            ("::", Some(Unspecified)),
            ("fc00::1", Some(Private)),
            ("fd12:3456::1", Some(Private)),
            ("fec0::1", Some(Private)),
            ("64:ff9b:1::1", Some(Private)),
            ("fe80::1", Some(LinkLocal)),
            ("febf::1", Some(LinkLocal)),
            ("ff02::1", Some(Multicast)),
            ("ff05::2", Some(Multicast)),
            ("2001:db8::1", Some(Documentation)),
            ("3fff::1", Some(Documentation)),
            ("2001:2::1", Some(Benchmarking)),
            ("2001::1", Some(Reserved)),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some(Reserved)),
            ("100::1", Some(Reserved)),
            ("4000::1", Some(Reserved)),
            ("::ffff:0:1.2.3.4", Some(Reserved)),
            // Embedded IPv4, judged as IPv4.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:10.0.0.1", Some(Private)),
            ("::ffff:169.254.169.254", Some(CloudMetadata)),
            ("::ffff:8.8.8.8", None),
            ("::127.0.0.1", Some(Loopback)),
            ("::10.0.0.1", Some(Private)),
            ("::8.8.8.8", None),
            ("64:ff9b::7f00:1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(CloudMetadata)),
            ("64:ff9b::808:808", None),
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:c0a8:101::", Some(Private)),
            ("2002:a9fe:a9fe:1::", Some(CloudMetadata)),
            ("2002:808:808::1", None),
        ];
        for (addr, want) in cases {
            let got = vet_address(ip(addr), &[]).err().map(|r| r.class);
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn embedded_table() {
        let cases: Vec<(&str, Option<(Embedding, &str)>)> = vec![
            ("::ffff:1.2.3.4", Some((Embedding::Ipv4Mapped, "1.2.3.4"))),
            ("::1.2.3.4", Some((Embedding::Ipv4Compatible, "1.2.3.4"))),
            ("::2", Some((Embedding::Ipv4Compatible, "0.0.0.2"))),
            ("::1", None),
            ("::", None),
            ("64:ff9b::102:304", Some((Embedding::Nat64, "1.2.3.4"))),
            ("64:ff9b:0:0:1::102:304", None),
            ("2002:102:304::", Some((Embedding::SixToFour, "1.2.3.4"))),
            (
                "2002:102:304:ffff:ffff:ffff:ffff:ffff",
                Some((Embedding::SixToFour, "1.2.3.4")),
            ),
            ("2003:102:304::", None),
            ("2606:4700::1", None),
        ];
        for (addr, want) in cases {
            let IpAddr::V6(v6) = ip(addr) else { panic!() };
            let want = want.map(|(e, v4)| (e, v4.parse().unwrap()));
            assert_eq!(embedded_ipv4(v6), want, "{addr}");
        }
    }

    #[test]
    fn own_interfaces() {
        let own = [
            ip("203.0.114.7"),
            ip("2a01:4f8::7"),
            ip("::ffff:198.41.0.9"),
        ];
        let cases: Vec<(&str, bool)> = vec![
            ("203.0.114.7", false),
            ("::ffff:203.0.114.7", false),
            ("2002:cb00:7207::1", false),
            ("64:ff9b::cb00:7207", false),
            ("2a01:4f8::7", false),
            ("198.41.0.9", false),
            ("203.0.114.8", true),
            ("2a01:4f8::8", true),
        ];
        for (addr, ok) in cases {
            let got = vet_address(ip(addr), &own);
            assert_eq!(got.is_ok(), ok, "{addr}");
            if let Err(refusal) = got {
                assert_eq!(refusal.class, AddressClass::OwnInterface, "{addr}");
            }
        }
    }

    #[test]
    fn refusal_messages() {
        let cases = [
            ("127.0.0.1", "a loopback address (127.0.0.1)"),
            (
                "64:ff9b::a00:1",
                "a private-network address (64:ff9b::a00:1, the NAT64 form of 10.0.0.1)",
            ),
            (
                "::ffff:169.254.169.254",
                "a cloud metadata endpoint (::ffff:169.254.169.254, the IPv4-mapped form of \
                 169.254.169.254)",
            ),
            (
                "2002:7f00:1::",
                "a loopback address (2002:7f00:1::, the 6to4 form of 127.0.0.1)",
            ),
        ];
        for (addr, msg) in cases {
            assert_eq!(vet_address(ip(addr), &[]).unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn proxy_endpoint_table() {
        let endpoints = [
            "127.0.0.1:3128".parse().unwrap(),
            "[::]:1080".parse().unwrap(),
        ];
        let own = [ip("203.0.114.7")];
        let cases = [
            ("127.0.0.1:3128", true),
            ("[::ffff:127.0.0.1]:3128", true),
            ("127.0.0.2:3128", false),
            ("127.0.0.1:3129", false),
            ("127.0.0.5:1080", true),
            ("[::1]:1080", true),
            ("0.0.0.0:1080", true),
            ("203.0.114.7:1080", true),
            ("8.8.8.8:1080", false),
        ];
        for (addr, want) in cases {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(is_proxy_endpoint(addr, &endpoints, &own), want, "{addr}");
        }
    }

    #[test]
    fn destinations_table() {
        let t = |s: &str| Target::parse_authority(s).unwrap();
        let sa = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let wild = Decision::Allowed { exact: false };
        let exact = Decision::Allowed { exact: true };
        let own = [ip("203.0.114.7")];
        let endpoints = [sa("127.0.0.1:3128")];
        let loopback = |addr: &str, via_name| DenyReason::Address {
            refusal: vet_address(ip(addr), &[]).unwrap_err(),
            via_name,
        };
        type Case<'a> = (
            &'a str,
            Decision,
            Vec<&'a str>,
            Result<Vec<SocketAddr>, DenyReason>,
        );
        let cases: Vec<Case> = vec![
            (
                "a.example:443",
                Decision::Denied,
                vec!["8.8.8.8"],
                Err(DenyReason::NotListed),
            ),
            (
                "a.example:443",
                wild,
                vec!["8.8.8.8"],
                Ok(vec![sa("8.8.8.8:443")]),
            ),
            (
                "a.example:443",
                wild,
                vec!["127.0.0.1", "8.8.8.8", "8.8.8.8", "::ffff:8.8.4.4"],
                Ok(vec![sa("8.8.8.8:443"), sa("8.8.4.4:443")]),
            ),
            (
                "a.example:443",
                wild,
                vec!["127.0.0.1", "10.0.0.1"],
                Err(loopback("127.0.0.1", true)),
            ),
            ("a.example:443", wild, vec![], Ok(vec![])),
            (
                "localhost:80",
                exact,
                vec!["127.0.0.1", "::1"],
                Ok(vec![sa("127.0.0.1:80"), sa("[::1]:80")]),
            ),
            (
                "localhost:80",
                wild,
                vec!["127.0.0.1"],
                Err(loopback("127.0.0.1", true)),
            ),
            (
                "a.example:443",
                wild,
                vec!["203.0.114.7"],
                Err(DenyReason::Address {
                    refusal: vet_address(ip("203.0.114.7"), &own).unwrap_err(),
                    via_name: true,
                }),
            ),
            (
                "a.example:443",
                exact,
                vec!["203.0.114.7"],
                Ok(vec![sa("203.0.114.7:443")]),
            ),
            // IP literals: `resolved` is ignored.
            (
                "127.0.0.2:8080",
                exact,
                vec!["8.8.8.8"],
                Ok(vec![sa("127.0.0.2:8080")]),
            ),
            (
                "127.0.0.2:8080",
                wild,
                vec![],
                Err(loopback("127.0.0.2", false)),
            ),
            (
                "[::ffff:8.8.8.8]:53",
                wild,
                vec![],
                Ok(vec![sa("8.8.8.8:53")]),
            ),
            // The loop guard is never waived.
            (
                "127.0.0.1:3128",
                exact,
                vec![],
                Err(DenyReason::ProxyLoop {
                    addr: sa("127.0.0.1:3128"),
                    via_name: false,
                }),
            ),
            (
                "localhost:3128",
                exact,
                vec!["127.0.0.1"],
                Err(DenyReason::ProxyLoop {
                    addr: sa("127.0.0.1:3128"),
                    via_name: true,
                }),
            ),
            (
                "localhost:3128",
                exact,
                vec!["127.0.0.1", "::1"],
                Ok(vec![sa("[::1]:3128")]),
            ),
        ];
        for (target, decision, resolved, want) in cases {
            let resolved: Vec<IpAddr> = resolved.into_iter().map(ip).collect();
            let got = vet_destinations(&t(target), decision, &resolved, &own, &endpoints);
            assert_eq!(got, want, "{target} {decision:?} {resolved:?}");
        }
    }
}
