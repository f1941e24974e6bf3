//! Client addresses as the limits see them.

use std::net::{IpAddr, Ipv6Addr};

/// One client network: an IPv4 address, or an IPv6 /64 (one subscriber's prefix, inside which
/// addresses are free to change), with IPv4-mapped IPv6 as the IPv4 address. Login throttling and
/// download auditing count by this, so rotating through a /64 buys nothing.
pub fn client_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{}/64", Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_network(a), "2001:db8:1:2::/64");
        assert_eq!(client_network(a), client_network(b));
        assert_ne!(client_network(a), client_network(c));
        assert_eq!(
            client_network("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(client_network("192.0.2.1".parse().unwrap()), "192.0.2.1");
    }
}
