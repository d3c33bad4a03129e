//! `bench e2e`: new connections/s (connect, request, response, close) and requests/s on an
//! established connection, from a client pod to ClusterIPs, through the same node namespace and
//! the same N Services for every contender: our agent (tcx on pod veths, the default), kube-proxy's
//! iptables layout (iptables-restore) and its nftables layout (nft -f), loaded into the node's
//! namespace. Every Service has the same 10 endpoints (10 backend pods, port 8080): the rules
//! and maps still hold N x 10 endpoints (kube-proxy's SEP chains are per Service), only the pods
//! are shared. Each connection goes to a random Service, so rule walks are not all short.
//! Contenders alternate within each round; each is loaded fresh and removed after.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use lb_common::maps::{Frontend, FrontendKey, MAP_FRONTENDS, PROTO_TCP};
use lb_tests::{manifests::ManifestDir, BpffsGuard, Node, TempDir, POD_IFACE_GLOB};

use crate::{
    bench_cp::{load_iptables, median, services, write_manifests},
    build::root,
    kube_rules,
};

const CONTENDERS: [&str; 3] = ["ours", "iptables", "nftables"];

fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *x >> 33
}

/// Runs the traffic in the client pod's namespace: (conn/s, req/s).
fn traffic(node: &Node, vips: &[SocketAddr], conns: usize, reqs: usize) -> Result<(f64, f64)> {
    let vips = vips.to_vec();
    node.pod("client")
        .ns()
        .enter(move || -> Result<(f64, f64)> {
            let budget = Duration::from_secs(120);
            let mut x = 0x1234_5678u64;
            let one = |addr: SocketAddr| -> Result<TcpStream> {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.set_nodelay(true)?;
                Ok(s)
            };
            let ask = |s: &mut TcpStream,
                       r: &mut BufReader<TcpStream>,
                       line: &mut String|
             -> Result<()> {
                s.write_all(b"x\n")?;
                line.clear();
                if r.read_line(line)? == 0 {
                    bail!("closed without an answer");
                }
                Ok(())
            };
            let mut line = String::new();
            let t = Instant::now();
            for _ in 0..conns {
                let addr = vips[lcg(&mut x) as usize % vips.len()];
                let mut s = one(addr).with_context(|| format!("connect {addr}"))?;
                let mut r = BufReader::new(s.try_clone()?);
                ask(&mut s, &mut r, &mut line).with_context(|| format!("request to {addr}"))?;
                if t.elapsed() > budget {
                    bail!("new connections over budget");
                }
            }
            let conn_rate = conns as f64 / t.elapsed().as_secs_f64();
            let addr = vips[lcg(&mut x) as usize % vips.len()];
            let mut s = one(addr)?;
            let mut r = BufReader::new(s.try_clone()?);
            let t = Instant::now();
            for _ in 0..reqs {
                ask(&mut s, &mut r, &mut line)?;
                if t.elapsed() > budget {
                    bail!("requests over budget");
                }
            }
            Ok((conn_rate, reqs as f64 / t.elapsed().as_secs_f64()))
        })
}

/// Runs the end-to-end benchmark; results in target/bench/e2e.json.
pub fn e2e(sizes: &[usize], rounds: usize, conns: usize, reqs: usize) -> Result<()> {
    let agent = root().join("target/release/lb-agent");
    let mut node = Node::new("e2e")?;
    node.add_pod("client", [10, 244, 0, 2])?;
    let pods: Vec<Ipv4Addr> = (0..10).map(|k| Ipv4Addr::new(10, 244, 0, 11 + k)).collect();
    for (k, ip) in pods.iter().enumerate() {
        node.add_pod(&format!("b{k}"), *ip)?;
    }
    let _servers = node.pods()[1..]
        .iter()
        .map(|p| p.tcp_server(8080))
        .collect::<Result<Vec<_>>>()?;
    let tmp = TempDir::new("e2e")?;
    let mut rows = Vec::new();
    for &n in sizes {
        if n == 0 || n > 60_000 {
            bail!("--services {n}: want 1..=60000");
        }
        let svcs = services(n, 10, |_, k| (pods[k], 8080));
        let vips: Vec<SocketAddr> = svcs
            .iter()
            .map(|s| SocketAddr::from((s.ip, s.port)))
            .collect();
        let mut conn = vec![Vec::new(); 3];
        let mut req = vec![Vec::new(); 3];
        for round in 0..rounds {
            for (c, name) in CONTENDERS.iter().enumerate() {
                let mut child = None;
                let mut bpffs = None;
                let mut dir = None;
                match *name {
                    "ours" => {
                        let d = ManifestDir::new("e2e")?;
                        write_manifests(&d, &svcs)?;
                        let b = BpffsGuard::new("e2e")?;
                        let mut cmd = Command::new(&agent);
                        cmd.args([
                            "run",
                            "--node",
                            "node-a",
                            "--pod-interfaces",
                            POD_IFACE_GLOB,
                        ])
                        .arg("--manifests")
                        .arg(d.path())
                        .arg("--bpffs")
                        .arg(b.path())
                        .args([
                            "--healthz-bind-address",
                            "",
                            "--metrics-bind-address",
                            "",
                        ]);
                        let mut ch = node.ns().spawn("agent", &cmd)?;
                        ch.wait_for_output("running", Duration::from_secs(60))
                            .with_context(|| ch.logs())?;
                        let pin = b.path().join("maps").join(MAP_FRONTENDS);
                        let fes: HashMap<_, FrontendKey, Frontend> =
                            HashMap::try_from(Map::from_map_data(MapData::from_pin(&pin)?)?)?;
                        let last = &svcs[n - 1];
                        let key = FrontendKey {
                            addr_be: u32::from_ne_bytes(last.ip.octets()),
                            port_be: 80u16.to_be(),
                            proto: PROTO_TCP,
                            scope: 0,
                        };
                        let t = Instant::now();
                        while fes.get(&key, 0).map(|f| f.slot_count).ok() != Some(10) {
                            if t.elapsed() > Duration::from_secs(300) {
                                bail!("agent did not program\n{}", ch.logs());
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        child = Some(ch);
                        bpffs = Some(b);
                        dir = Some(d);
                    }
                    "iptables" => {
                        load_iptables(node.ns(), &svcs, tmp.path())?;
                    }
                    _ => {
                        let f = tmp.path().join("full.nft");
                        std::fs::write(&f, kube_rules::nft_full(&svcs))?;
                        crate::bench_cp::timed(
                            node.ns(),
                            "nft",
                            &["-f", f.to_str().context("path")?],
                        )?;
                    }
                }
                let r = traffic(&node, &vips, conns, reqs);
                if let Some(mut ch) = child {
                    ch.stop()?;
                    let b = bpffs.take().context("bpffs")?;
                    let out = Command::new(&agent)
                        .args(["cleanup", "--bpffs"])
                        .arg(b.path())
                        .output()?;
                    if !out.status.success() {
                        bail!("cleanup: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
                drop(dir);
                node.ns().run("nft", &["flush", "ruleset"])?;
                crate::bench_cp::flush_iptables(node.ns())?;
                let (cr, rr) = r.with_context(|| format!("{name} at {n} services"))?;
                println!("{n} services round {round}: {name:<9} {cr:>8.0} conn/s {rr:>8.0} req/s");
                conn[c].push(cr);
                req[c].push(rr);
            }
        }
        let cm: Vec<f64> = conn.iter_mut().map(|v| median(v)).collect();
        let rm: Vec<f64> = req.iter_mut().map(|v| median(v)).collect();
        println!(
            "{n} services: conn/s ours {:.0}, iptables {:.0} (ours {:.2}x), nftables {:.0} (ours {:.2}x); req/s ours {:.0}, iptables {:.0}, nftables {:.0}",
            cm[0], cm[1], cm[0] / cm[1], cm[2], cm[0] / cm[2], rm[0], rm[1], rm[2]
        );
        rows.push(format!(
            "{{\"services\":{n},\"conn_per_s\":{{\"ours\":{:.0},\"iptables\":{:.0},\"nftables\":{:.0}}},\"req_per_s\":{{\"ours\":{:.0},\"iptables\":{:.0},\"nftables\":{:.0}}}}}",
            cm[0], cm[1], cm[2], rm[0], rm[1], rm[2]
        ));
    }
    let json = format!(
        "{{\"benchmark\":\"e2e\",\"rounds\":{rounds},\"connections\":{conns},\"requests\":{reqs},\"results\":[{}]}}\n",
        rows.join(",")
    );
    let out = root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("e2e.json"), json)?;
    println!("results in {}", out.join("e2e.json").display());
    Ok(())
}
