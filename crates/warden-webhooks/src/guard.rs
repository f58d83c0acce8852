//! The SSRF guard: which addresses a webhook may reach. Loopback, private, link-local,
//! shared (CGNAT), unspecified, multicast, broadcast and documentation ranges are refused
//! unless the webhook sets `allow_private`. The check is made on the addresses a name
//! resolves to, at each connection, so a name that later resolves elsewhere is caught too.

#[cfg(test)]
use std::net::Ipv6Addr;
use std::net::{IpAddr, Ipv4Addr};

/// Whether `ip` is outside the public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x64 && v6.segments()[1] == 0xff9b) // NAT64 to anything
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn private_and_special_ranges_are_refused_public_ones_allowed() {
        let v4 = |t: &str| IpAddr::V4(t.parse().unwrap());
        let rows = [
            (v4("127.0.0.1"), true),
            (v4("10.1.2.3"), true),
            (v4("172.16.0.1"), true),
            (v4("172.32.0.1"), false),
            (v4("192.168.1.1"), true),
            (v4("169.254.169.254"), true),
            (v4("100.64.0.1"), true),
            (v4("100.128.0.1"), false),
            (v4("0.0.0.0"), true),
            (v4("255.255.255.255"), true),
            (v4("224.0.0.1"), true),
            (v4("198.18.0.1"), true),
            (v4("8.8.8.8"), false),
            (v4("93.184.216.34"), false),
            (v6("::1"), true),
            (v6("::"), true),
            (v6("fd00::1"), true),
            (v6("fe80::1"), true),
            (v6("ff02::1"), true),
            (v6("::ffff:127.0.0.1"), true),
            (v6("::ffff:8.8.8.8"), false),
            (v6("2001:db8::1"), true),
            (v6("64:ff9b::7f00:1"), true),
            (v6("2606:4700:4700::1111"), false),
        ];
        for (ip, want) in rows {
            assert_eq!(is_private(ip), want, "{ip}");
        }
    }
}
