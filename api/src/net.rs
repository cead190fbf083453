//! IPv4 address ranges (`10.214.0.0/16`): parsing with clear errors, containment, overlap,
//! and carving a range into equal subnets. Shared by the control plane (which hands out node
//! subnets and service addresses) and the agents (which address replicas and route ranges).
//!
//! Invariant: an [`Ipv4Cidr`] is always canonical — its host bits are zero — so two values
//! describing the same range compare equal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Why a range could not be parsed or carved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The text is not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 range like 10.214.0.0/16")]
    Syntax(String),
    /// The prefix length is above 32.
    #[error("{0:?}: prefix length must be at most 32")]
    Prefix(String),
    /// Host bits are set (`10.0.0.1/8`).
    #[error("{given:?} has host bits set; did you mean {canonical}?")]
    HostBits {
        /// What was given.
        given: String,
        /// The range it falls in.
        canonical: Ipv4Cidr,
    },
    /// A subnet prefix shorter than the range it is carved from.
    #[error("cannot carve /{sub} subnets out of {range}: the subnet prefix must be at least /{}", range.prefix)]
    Carve {
        /// The range.
        range: Ipv4Cidr,
        /// The asked subnet prefix.
        sub: u8,
    },
}

/// A canonical IPv4 range: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The range of `prefix` bits holding `addr`, host bits cleared.
    pub fn containing(addr: Ipv4Addr, prefix: u8) -> Ipv4Cidr {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses in the range (2^(32-prefix)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The last address (broadcast address for prefixes below 31).
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask(self.prefix))
    }

    /// Whether `addr` lies in the range.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether the two ranges share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }

    /// The `n`-th address of the range (0 is the network address), if inside it.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + n as u32))
    }

    /// Offset of `addr` in the range, if inside it.
    pub fn offset_of(&self, addr: Ipv4Addr) -> Option<u64> {
        self.contains(addr)
            .then(|| u64::from(u32::from(addr) - u32::from(self.network)))
    }

    /// How many `/sub` subnets the range holds.
    pub fn subnet_count(&self, sub: u8) -> Result<u64, CidrError> {
        if sub < self.prefix || sub > 32 {
            return Err(CidrError::Carve { range: *self, sub });
        }
        Ok(1u64 << u32::from(sub - self.prefix))
    }

    /// The `n`-th `/sub` subnet of the range, if there is one.
    pub fn subnet(&self, sub: u8, n: u64) -> Result<Option<Ipv4Cidr>, CidrError> {
        let count = self.subnet_count(sub)?;
        if n >= count {
            return Ok(None);
        }
        let step = 1u64 << (32 - u32::from(sub));
        let network = Ipv4Addr::from((u64::from(u32::from(self.network)) + n * step) as u32);
        Ok(Some(Ipv4Cidr {
            network,
            prefix: sub,
        }))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.to_string()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::Syntax(s.to_string()));
        }
        let prefix: u8 = len.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
        if prefix > 32 {
            return Err(CidrError::Prefix(s.to_string()));
        }
        let canonical = Ipv4Cidr::containing(addr, prefix);
        if canonical.network != addr {
            return Err(CidrError::HostBits {
                given: s.to_string(),
                canonical,
            });
        }
        Ok(canonical)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_canonical_ranges_and_names_what_is_wrong() {
        assert_eq!(c("10.214.0.0/16").to_string(), "10.214.0.0/16");
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert!(matches!(
            "10.0.0.1/8".parse::<Ipv4Cidr>(),
            Err(CidrError::HostBits { .. })
        ));
        let e = "10.0.0.1/8".parse::<Ipv4Cidr>().unwrap_err().to_string();
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/+8",
            "10.0.0.0/008",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Prefix(_))
        ));
    }

    #[test]
    fn containment_overlap_and_offsets() {
        let r = c("10.214.0.0/16");
        assert!(r.contains("10.214.255.255".parse().unwrap()));
        assert!(!r.contains("10.215.0.0".parse().unwrap()));
        assert!(r.overlaps(&c("10.214.3.0/24")));
        assert!(c("10.0.0.0/8").overlaps(&r));
        assert!(!r.overlaps(&c("10.215.0.0/16")));
        assert_eq!(r.last().to_string(), "10.214.255.255");
        assert_eq!(r.nth(257).unwrap().to_string(), "10.214.1.1");
        assert_eq!(r.offset_of("10.214.1.1".parse().unwrap()), Some(257));
        assert_eq!(r.nth(1 << 16), None);
    }

    #[test]
    fn carves_equal_subnets_in_order() {
        let r = c("10.214.0.0/16");
        assert_eq!(r.subnet_count(24).unwrap(), 256);
        assert_eq!(r.subnet(24, 0).unwrap().unwrap(), c("10.214.0.0/24"));
        assert_eq!(r.subnet(24, 255).unwrap().unwrap(), c("10.214.255.0/24"));
        assert_eq!(r.subnet(24, 256).unwrap(), None);
        assert!(r.subnet(8, 0).is_err());
        assert_eq!(
            c("0.0.0.0/0").subnet(32, (1 << 32) - 1).unwrap().unwrap(),
            c("255.255.255.255/32")
        );
    }
}
