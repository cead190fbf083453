//! The network of a local cluster: a bridge on the host and one network namespace per member,
//! joined to the bridge by a veth pair. Namespaces get no default route: traffic stays between
//! the host and the members, never reaches the outside.
//!
//! Everything is made with iproute2's `ip`; each step is undone by [`teardown`], which also
//! tolerates half-made networks (an `up` that failed midway).

use anyhow::{bail, Context};
use std::process::Command;

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip ARGS`, ignoring failure (for teardown of things that may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// A stable small hash of the cluster name, for interface names (at most 15 bytes).
fn tag(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0xff_ffff)
}

/// The bridge's name for cluster `name`.
pub fn bridge_name(name: &str) -> String {
    format!("gtb{}", tag(name))
}

/// The host-side veth name of member number `index`.
pub fn veth_name(name: &str, index: usize) -> String {
    format!("gtv{}{index}", tag(name))
}

/// The network namespace of `member` in cluster `name`.
pub fn netns_name(name: &str, member: &str) -> String {
    format!("gantry-{name}-{member}")
}

/// Picks a `10.213.N` /24 that no interface on the host uses yet.
///
/// # Errors
/// Every candidate is taken.
pub fn pick_subnet(name: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = usize::from_str_radix(&tag(name)[4..], 16).unwrap_or(0) % 250;
    for i in 0..250 {
        let n = (start + i) % 250 + 1;
        let prefix = format!("10.213.{n}");
        if !used.contains(&format!(" {prefix}.")) {
            return Ok(prefix);
        }
    }
    bail!("no free subnet in 10.213.0.0/16 for the cluster bridge")
}

/// Creates the bridge with `PREFIX.1/24` on the host.
///
/// # Errors
/// `ip` fails (the bridge exists, no permission).
pub fn create_bridge(bridge: &str, prefix: &str) -> anyhow::Result<()> {
    ip(&["link", "add", bridge, "type", "bridge"])?;
    // Frames between members must not pass the host's iptables FORWARD chain, whatever
    // policy another tool gave it.
    ip_quiet(&[
        "link",
        "set",
        bridge,
        "type",
        "bridge",
        "nf_call_iptables",
        "0",
    ]);
    ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", bridge])?;
    ip(&["link", "set", bridge, "up"])
}

/// Creates `netns` with `eth0` = `ip`/24 attached to `bridge` through the host-side `veth`.
///
/// # Errors
/// `ip` fails.
pub fn create_member_netns(
    netns: &str,
    veth: &str,
    bridge: &str,
    ip_addr: &str,
) -> anyhow::Result<()> {
    ip(&["netns", "add", netns])?;
    ip(&["-n", netns, "link", "set", "lo", "up"])?;
    ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
    ])?;
    ip(&["link", "set", veth, "master", bridge, "up"])?;
    ip(&[
        "-n",
        netns,
        "addr",
        "add",
        &format!("{ip_addr}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", netns, "link", "set", "eth0", "up"])
}

/// Cuts a member off (`up == false`) or reconnects it, by its host-side veth.
///
/// # Errors
/// `ip` fails.
pub fn set_link(veth: &str, up: bool) -> anyhow::Result<()> {
    ip(&["link", "set", veth, if up { "up" } else { "down" }])
}

/// Removes the host-side veths, the namespaces and the bridge.
///
/// A veth pair would go with its namespace, but only once the kernel has cleaned the
/// namespace up, asynchronously: an `up` of the same cluster right after would find the
/// host-side name still taken. Deleting one end removes both at once.
pub fn teardown(bridge: Option<&str>, netns: &[&str], veths: &[&str]) {
    for veth in veths {
        ip_quiet(&["link", "del", veth]);
    }
    for ns in netns {
        ip_quiet(&["netns", "del", ns]);
    }
    if let Some(b) = bridge {
        ip_quiet(&["link", "del", b]);
    }
}

/// Whether a network namespace named `netns` exists.
pub fn netns_exists(netns: &str) -> bool {
    std::path::Path::new("/run/netns").join(netns).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let long = "a-very-long-cluster-name-indeed";
        assert!(bridge_name(long).len() <= 15);
        assert!(veth_name(long, 99).len() <= 15);
        assert_ne!(bridge_name("demo"), bridge_name("demo2"));
    }
}
