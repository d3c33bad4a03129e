//! kube-proxy's rule layouts for N ClusterIP Services, written as kube-proxy writes them, for
//! the benchmarks to load into a namespace (lb-bench) and for the tests that show the agent
//! beside kube-proxy's leftover rules: the iptables mode's `iptables-restore` input
//! (pkg/proxy/iptables/proxier.go) and the nftables mode's `nft -f` transaction
//! (pkg/proxy/nftables/proxier.go). Our own generator: chain names have kube-proxy's form and
//! length (a 16- or 8-character base32 hash of the same strings) but hash with FNV-1a, not
//! SHA-256; the rules, matches, chain structure and counts are kube-proxy's.

use std::{fmt::Write, net::Ipv4Addr};

/// The cluster CIDR kube-proxy's local-traffic detector uses (masquerade marks).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The service CIDR (nftables' drop rule for unallocated ClusterIPs).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The iptables and iptables-restore commands the layouts are loaded with: the legacy backend
/// (what many kube-proxy nodes run, and the faster of the two here both to restore and to
/// walk). `cargo xtask setup` installs both backends.
pub const IPTABLES: (&str, &str) = ("iptables-legacy", "iptables-legacy-restore");

/// One ClusterIP Service port (TCP) and its endpoints.
#[derive(Clone)]
pub struct Svc {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The ServicePort's name.
    pub port_name: String,
    /// The ClusterIP.
    pub ip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The endpoints: address and target port.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl Svc {
    fn port_name_str(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
}

fn hash_name(s: &str, chars: usize) -> String {
    // FNV-1a over the string, twice with different seeds for 80 bits, in base32 as kube-proxy.
    const ALPHA: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let fnv = |seed: u64| {
        s.bytes().fold(seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x84222325_cbf29ce4));
    (0..chars)
        .map(|i| {
            let v = if i < 12 {
                a >> (i * 5)
            } else {
                b >> ((i - 12) * 5)
            };
            ALPHA[(v & 31) as usize] as char
        })
        .collect()
}

fn svc_chain(s: &Svc) -> String {
    format!(
        "KUBE-SVC-{}",
        hash_name(&format!("{}tcp", s.port_name_str()), 16)
    )
}

fn sep_chain(s: &Svc, ep: (Ipv4Addr, u16)) -> String {
    format!(
        "KUBE-SEP-{}",
        hash_name(&format!("{}tcp{}:{}", s.port_name_str(), ep.0, ep.1), 16)
    )
}

/// The base-chain jumps kube-proxy ensures with `iptables -I`/`-A` before each restore
/// (not part of the restore input): (table, chain, rule arguments).
pub fn iptables_jumps() -> Vec<Vec<&'static str>> {
    let c = |v: &[&'static str]| v.to_vec();
    vec![
        c(&["-t", "filter", "-N", "KUBE-SERVICES"]),
        c(&["-t", "filter", "-N", "KUBE-EXTERNAL-SERVICES"]),
        c(&["-t", "filter", "-N", "KUBE-FORWARD"]),
        c(&["-t", "filter", "-N", "KUBE-NODEPORTS"]),
        c(&["-t", "filter", "-N", "KUBE-PROXY-FIREWALL"]),
        c(&["-t", "nat", "-N", "KUBE-SERVICES"]),
        c(&["-t", "nat", "-N", "KUBE-POSTROUTING"]),
        c(&[
            "-t",
            "filter",
            "-I",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes load balancer firewall",
            "-j",
            "KUBE-PROXY-FIREWALL",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "INPUT",
            "-m",
            "comment",
            "--comment",
            "kubernetes health check service ports",
            "-j",
            "KUBE-NODEPORTS",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            "KUBE-EXTERNAL-SERVICES",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes load balancer firewall",
            "-j",
            "KUBE-PROXY-FIREWALL",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "FORWARD",
            "-m",
            "comment",
            "--comment",
            "kubernetes forwarding rules",
            "-j",
            "KUBE-FORWARD",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "FORWARD",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes externally-visible service portals",
            "-j",
            "KUBE-EXTERNAL-SERVICES",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "OUTPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes load balancer firewall",
            "-j",
            "KUBE-PROXY-FIREWALL",
        ]),
        c(&[
            "-t",
            "filter",
            "-I",
            "OUTPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]),
        c(&[
            "-t",
            "nat",
            "-I",
            "OUTPUT",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]),
        c(&[
            "-t",
            "nat",
            "-I",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]),
        c(&[
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes postrouting rules",
            "-j",
            "KUBE-POSTROUTING",
        ]),
    ]
}

fn write_svc_chains(out: &mut String, s: &Svc) {
    let svc = svc_chain(s);
    let pn = s.port_name_str();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{pn} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        s.ip, s.port
    );
    let n = s.endpoints.len();
    for (i, ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, *ep);
        if i + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{pn} -> {}:{}\" -m statistic --mode random --probability {:.10} -j {sep}",
                ep.0,
                ep.1,
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{pn} -> {}:{}\" -j {sep}",
                ep.0, ep.1
            );
        }
    }
    for ep in &s.endpoints {
        let sep = sep_chain(s, *ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {pn} -s {}/32 -j KUBE-MARK-MASQ",
            ep.0
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {pn} -m tcp -p tcp -j DNAT --to-destination {}:{}",
            ep.0, ep.1
        );
    }
}

/// The `iptables-restore --noflush` input of a sync. `changed`: None for a full sync (every
/// Service's chains); Some(i) for kube-proxy's partial sync after Service i changed
/// (MinimizeIPTablesRestore): the fixed chains and every KUBE-SERVICES jump are rewritten, only
/// Service i's KUBE-SVC/KUBE-SEP chains are, and `deleted` SEP chains are removed.
pub fn iptables_restore(svcs: &[Svc], changed: Option<usize>, deleted: &[String]) -> String {
    let mut out = String::with_capacity(svcs.len() * 3000);
    out.push_str("*filter\n");
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n");
    for c in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
    ] {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    let written: Vec<usize> = match changed {
        None => (0..svcs.len()).collect(),
        Some(i) => vec![i],
    };
    for &i in &written {
        let s = &svcs[i];
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
        for ep in &s.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, *ep));
        }
    }
    for d in deleted {
        let _ = writeln!(out, ":{d} - [0:0]");
    }
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for s in svcs {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m tcp -p tcp -d {}/32 --dport {} -j {}",
            s.port_name_str(),
            s.ip,
            s.port,
            svc_chain(s)
        );
    }
    for &i in &written {
        write_svc_chains(&mut out, &svcs[i]);
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for d in deleted {
        let _ = writeln!(out, "-X {d}");
    }
    out.push_str("COMMIT\n");
    out
}

/// SEP chain names of Service `s` (what a partial sync deletes when endpoints leave).
pub fn sep_chains(s: &Svc) -> Vec<String> {
    s.endpoints.iter().map(|ep| sep_chain(s, *ep)).collect()
}

const T: &str = "ip kube-proxy";

fn nft_svc_chain(s: &Svc) -> String {
    let id = format!("{}/{}/tcp/{}", s.namespace, s.name, s.port_name);
    format!("service-{}-{id}", hash_name(&id, 8))
}

fn nft_ep_chain(s: &Svc, ep: (Ipv4Addr, u16)) -> String {
    let id = format!(
        "{}/{}/tcp/{}__{}/{}",
        s.namespace, s.name, s.port_name, ep.0, ep.1
    );
    format!("endpoint-{}-{id}", hash_name(&id, 8))
}

fn nft_service(out: &mut String, s: &Svc, add_endpoints: bool) {
    let chain = nft_svc_chain(s);
    let _ = writeln!(out, "add chain {T} {chain}");
    let _ = writeln!(out, "flush chain {T} {chain}");
    let _ = writeln!(
        out,
        "add rule {T} {chain} ip daddr {} tcp dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.ip, s.port
    );
    let elems: Vec<String> = s
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_ep_chain(s, *ep)))
        .collect();
    if add_endpoints {
        for ep in &s.endpoints {
            let c = nft_ep_chain(s, *ep);
            let _ = writeln!(out, "add chain {T} {c}");
            let _ = writeln!(out, "flush chain {T} {c}");
            let _ = writeln!(
                out,
                "add rule {T} {c} ip saddr {} jump mark-for-masquerade",
                ep.0
            );
            let _ = writeln!(
                out,
                "add rule {T} {c} meta l4proto tcp dnat to {}:{}",
                ep.0, ep.1
            );
        }
    }
    let _ = writeln!(
        out,
        "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
        s.endpoints.len(),
        elems.join(" , ")
    );
}

/// The `nft -f` transaction of kube-proxy's first (full) sync.
pub fn nft_full(svcs: &[Svc]) -> String {
    let mut out = String::with_capacity(svcs.len() * 3000);
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for line in [
        "add chain ip kube-proxy mark-for-masquerade",
        "add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000",
        "add chain ip kube-proxy masquerading",
        "add rule ip kube-proxy masquerading mark and 0x4000 == 0 return",
        "add rule ip kube-proxy masquerading mark set mark xor 0x4000",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        "add set ip kube-proxy cluster-ips { type ipv4_addr ; comment \"Active ClusterIPs\" ; }",
        "add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }",
        "add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }",
        "add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }",
        "add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }",
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }",
        "add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }",
        "add chain ip kube-proxy services",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "add chain ip kube-proxy service-endpoints-check",
        "add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        "add chain ip kube-proxy nodeport-endpoints-check",
        "add rule ip kube-proxy nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        "add chain ip kube-proxy firewall-check",
        "add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        "add chain ip kube-proxy cluster-ips-check",
        "add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"",
        "add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }",
        "add rule ip kube-proxy filter-prerouting ct state new jump firewall-check",
        "add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }",
        "add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check",
        "add rule ip kube-proxy filter-forward ct state new jump cluster-ips-check",
        "add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }",
        "add rule ip kube-proxy filter-input ct state new jump nodeport-endpoints-check",
        "add rule ip kube-proxy filter-input ct state new jump service-endpoints-check",
        "add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }",
        "add rule ip kube-proxy filter-output ct state new jump service-endpoints-check",
        "add rule ip kube-proxy filter-output ct state new jump firewall-check",
        "add chain ip kube-proxy filter-output-post-dnat { type filter hook output priority -90 ; }",
        "add rule ip kube-proxy filter-output-post-dnat ct state new jump cluster-ips-check",
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add rule ip kube-proxy nat-prerouting jump services",
        "add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }",
        "add rule ip kube-proxy nat-output jump services",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add rule ip kube-proxy nat-postrouting jump masquerading",
    ] {
        out.push_str(line);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "add rule {T} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
    );
    for s in svcs {
        nft_service(&mut out, s, true);
        let _ = writeln!(out, "add element {T} cluster-ips {{ {} }}", s.ip);
        let _ = writeln!(
            out,
            "add element {T} service-ips {{ {} . tcp . {} : goto {} }}",
            s.ip,
            s.port,
            nft_svc_chain(s)
        );
    }
    out
}

/// kube-proxy's nftables transaction after Service `s`'s endpoints changed from `old`: its
/// service chain is rewritten, new endpoint chains are added and stale ones deleted.
pub fn nft_change(s: &Svc, old: &Svc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}"
    );
    for ep in &s.endpoints {
        if !old.endpoints.contains(ep) {
            let c = nft_ep_chain(s, *ep);
            let _ = writeln!(out, "add chain {T} {c}");
            let _ = writeln!(
                out,
                "add rule {T} {c} ip saddr {} jump mark-for-masquerade",
                ep.0
            );
            let _ = writeln!(
                out,
                "add rule {T} {c} meta l4proto tcp dnat to {}:{}",
                ep.0, ep.1
            );
        }
    }
    nft_service(&mut out, s, false);
    for ep in &old.endpoints {
        if !s.endpoints.contains(ep) {
            let _ = writeln!(out, "delete chain {T} {}", nft_ep_chain(old, *ep));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, last_octet: u8, endpoints: &[u8]) -> Svc {
        Svc {
            namespace: "default".into(),
            name: name.into(),
            port_name: "http".into(),
            ip: Ipv4Addr::new(10, 96, 0, last_octet),
            port: 80,
            endpoints: endpoints
                .iter()
                .map(|&e| (Ipv4Addr::new(10, 244, 0, e), 8080))
                .collect(),
        }
    }

    fn count(text: &str, needle: &str) -> usize {
        text.matches(needle).count()
    }

    /// Test that chain names have kube-proxy's form and length and depend on what they name.
    #[test]
    fn chain_names_have_kube_proxys_form_and_length() {
        let a = svc("a", 10, &[11, 12]);
        let b = svc("b", 11, &[11, 12]);
        for chain in [svc_chain(&a), sep_chain(&a, a.endpoints[0])] {
            let hash = &chain["KUBE-SVC-".len()..];
            assert_eq!(hash.len(), 16, "{chain}");
            assert!(hash
                .bytes()
                .all(|c| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".contains(&c)));
        }
        assert_eq!(svc_chain(&a), svc_chain(&a.clone()));
        assert_ne!(svc_chain(&a), svc_chain(&b));
        assert_ne!(sep_chain(&a, a.endpoints[0]), sep_chain(&a, a.endpoints[1]));
        assert!(nft_svc_chain(&a).starts_with("service-"));
        assert!(nft_svc_chain(&a).ends_with("-default/a/tcp/http"));
    }

    /// Test that a full iptables sync has every Service's jump, chains and DNATs, and that
    /// endpoint i of n is chosen with probability 1/(n-i), the last one unconditionally.
    #[test]
    fn a_full_iptables_sync_writes_every_service() {
        let svcs = [svc("a", 10, &[11, 12, 13]), svc("b", 11, &[14, 15])];
        let out = iptables_restore(&svcs, None, &[]);
        assert_eq!(
            count(&out, "-A KUBE-SERVICES -m comment --comment \"default/"),
            2
        );
        assert_eq!(count(&out, "-j DNAT --to-destination"), 5);
        assert_eq!(count(&out, "--probability 0.3333333333"), 1);
        assert_eq!(count(&out, "--probability 0.5000000000"), 2);
        assert_eq!(count(&out, "-m statistic"), 3);
        assert_eq!(count(&out, "COMMIT\n"), 2);
        assert!(out.ends_with("COMMIT\n"));
    }

    /// Test that a partial iptables sync rewrites every jump but only the changed Service's
    /// chains, and deletes the SEP chains of endpoints that left.
    #[test]
    fn a_partial_iptables_sync_writes_only_the_changed_service() {
        let old = svc("a", 10, &[11, 12, 13]);
        let svcs = [svc("a", 10, &[11, 12]), svc("b", 11, &[14, 15])];
        let gone: Vec<String> = sep_chains(&old)
            .into_iter()
            .filter(|c| !sep_chains(&svcs[0]).contains(c))
            .collect();
        assert_eq!(gone.len(), 1);
        let out = iptables_restore(&svcs, Some(0), &gone);
        assert_eq!(
            count(&out, "-A KUBE-SERVICES -m comment --comment \"default/"),
            2
        );
        assert_eq!(count(&out, "-j DNAT --to-destination"), 2);
        assert_eq!(count(&out, &format!("-A {}", svc_chain(&svcs[1]))), 0);
        assert!(out.contains(&format!("-X {}\n", gone[0])));
    }

    /// Test that an nftables change adds the new endpoint's chain, rewrites the service chain
    /// and deletes the chain of the endpoint that left.
    #[test]
    fn an_nft_change_adds_and_deletes_endpoint_chains() {
        let old = svc("a", 10, &[11, 12]);
        let new = svc("a", 10, &[12, 13]);
        let out = nft_change(&new, &old);
        assert!(out.contains(&format!(
            "add chain {T} {}\n",
            nft_ep_chain(&new, new.endpoints[1])
        )));
        assert!(out.contains(&format!(
            "delete chain {T} {}\n",
            nft_ep_chain(&old, old.endpoints[0])
        )));
        assert_eq!(count(&out, "numgen random mod 2 vmap"), 1);
        let full = nft_full(&[old]);
        assert_eq!(count(&full, "dnat to 10.244.0."), 2);
        assert_eq!(count(&full, "add element ip kube-proxy service-ips"), 1);
    }
}
