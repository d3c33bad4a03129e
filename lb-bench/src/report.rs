//! `bench report`: gathers target/bench/{packet,control-plane*,e2e}.json into bench/results.json,
//! draws bench/*.svg (cost against number of Services, per contender; hand-written SVG) and
//! prints the tables BENCHMARKS.md quotes.

use std::fmt::Write;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use lb_tests::workspace_root;

use crate::output::results_dir;

const COLORS: [&str; 6] = [
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
];

/// A line plot with a log x axis (Services) and a log y axis.
fn plot(title: &str, ylabel: &str, xs: &[f64], series: &[(String, Vec<f64>)]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 80.0, 220.0, 40.0, 50.0);
    let lx = |x: f64| x.max(1.0).log10();
    let (x0, x1) = (lx(xs[0]), lx(xs[xs.len() - 1]).max(lx(xs[0]) + 1.0));
    let all: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).log10().floor();
    let hi = all
        .iter()
        .copied()
        .fold(f64::MIN, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let px = |x: f64| l + (lx(x) - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (y.log10() - lo) / (hi - lo) * (h - t - b);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{title}</text>\n",
        (w - r + l) / 2.0
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - b,
        w - r,
        h - b
    );
    let _ = writeln!(
        s,
        "<line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>",
        h - b
    );
    for &x in xs {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x}</text><line x1=\"{:.1}\" y1=\"{t}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#ddd\"/>",
            px(x), h - b + 16.0, px(x), px(x), h - b
        );
    }
    let mut e = lo;
    while e <= hi {
        let v = 10f64.powf(e);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
            l - 6.0, py(v) + 4.0, v, py(v), w - r, py(v)
        );
        e += 1.0;
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">Services (log)</text>",
        (w - r + l) / 2.0,
        h - 12.0
    );
    let _ = writeln!(s, "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{ylabel} (log)</text>", (h - b + t) / 2.0);
    for (i, (name, ys)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .filter(|(_, y)| **y > 0.0)
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>");
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = writeln!(s, "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"4\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\">{name}</text>", w - r + 12.0, ly - 4.0, w - r + 32.0, ly + 2.0);
    }
    s.push_str("</svg>\n");
    s
}

fn read(name: &str) -> Option<Value> {
    let p = results_dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn results(v: &Option<Value>) -> Vec<Value> {
    v.as_ref()
        .and_then(|v| v["results"].as_array().cloned())
        .unwrap_or_default()
}

fn col(rows: &[Value], path: &[&str]) -> Vec<f64> {
    rows.iter()
        .map(|r| path.iter().fold(r, |v, k| &v[*k]).as_f64().unwrap_or(0.0))
        .collect()
}

/// Writes bench/results.json and bench/*.svg; prints the tables.
pub fn report() -> Result<()> {
    let dir = workspace_root().join("bench");
    std::fs::create_dir_all(&dir)?;
    let packet = read("packet.json");
    let e2e = read("e2e.json");
    let mut cp = Vec::new();
    for f in std::fs::read_dir(results_dir())? {
        let name = f?.file_name().to_string_lossy().into_owned();
        if name.starts_with("control-plane") && name.ends_with(".json") {
            cp.extend(results(&read(&name)));
        }
    }
    cp.sort_by_key(|r| r["services"].as_u64());
    cp.dedup_by_key(|r| r["services"].as_u64());
    let pk = results(&packet);
    let ee = results(&e2e);
    let machine = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
    });
    let all = json!({
        "machine": {"kernel": machine, "cpu": cpu, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "packet": packet, "control_plane": {"results": cp}, "e2e": e2e,
    });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&all)? + "\n",
    )?;

    if !pk.is_empty() {
        let xs = col(&pk, &["services"]);
        let series = vec![
            (
                "lb_pass (floor)".to_string(),
                col(&pk, &["repeat_ns", "pass"]),
            ),
            (
                "lb_lookup1 (floor)".to_string(),
                col(&pk, &["repeat_ns", "lookup1"]),
            ),
            (
                "established, XDP".to_string(),
                col(&pk, &["repeat_ns", "established_xdp"]),
            ),
            (
                "established, tc".to_string(),
                col(&pk, &["repeat_ns", "established_tc"]),
            ),
            (
                "new flow, XDP (1/call)".to_string(),
                col(&pk, &["single_ns", "new_flow_xdp"]),
            ),
            (
                "established, XDP (1/call)".to_string(),
                col(&pk, &["single_ns", "established_xdp"]),
            ),
        ];
        std::fs::write(
            dir.join("packet.svg"),
            plot(
                "Per packet (BPF_PROG_TEST_RUN)",
                "ns per packet",
                &xs,
                &series,
            ),
        )?;
        println!("| Services | pass | lookup1 | established XDP | vs lookup1 | established tc | pass (1/call) | established (1/call) | new flow (1/call) |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &pk {
            let g = |a: &str, b: &str| r[a][b].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} |",
                r["services"],
                g("repeat_ns", "pass"),
                g("repeat_ns", "lookup1"),
                g("repeat_ns", "established_xdp"),
                g("repeat_ns", "established_xdp") / g("repeat_ns", "lookup1"),
                g("repeat_ns", "established_tc"),
                g("single_ns", "pass"),
                g("single_ns", "established_xdp"),
                g("single_ns", "new_flow_xdp")
            );
        }
    }
    let three = |rows: &[Value], key: &str| -> Vec<(String, Vec<f64>)> {
        ["ours", "iptables", "nftables"]
            .iter()
            .map(|c| (c.to_string(), col(rows, &[key, c])))
            .collect()
    };
    if !cp.is_empty() {
        let xs = col(&cp, &["services"]);
        let series = vec![
            ("ours (sync)".to_string(), col(&cp, &["sync_ms", "ours"])),
            (
                "ours (start, with the API list)".to_string(),
                col(&cp, &["start_ms", "ours"]),
            ),
            (
                "iptables-restore".to_string(),
                col(&cp, &["start_ms", "iptables"]),
            ),
            ("nft -f".to_string(), col(&cp, &["start_ms", "nftables"])),
        ];
        std::fs::write(
            dir.join("control-plane.svg"),
            plot("Programming N Services x 10 endpoints", "ms", &xs, &series),
        )?;
        println!("\n| Services | ours: sync | start | iptables-restore | nft -f | iptables / ours | nft / ours | change: ours | iptables | nft | agent RSS MiB |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &cp {
            let g = |a: &str, b: &str| r[a][b].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.1}x | {:.1}x | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} |",
                r["services"], g("sync_ms", "ours"), g("start_ms", "ours"), g("start_ms", "iptables"),
                g("start_ms", "nftables"), g("start_ms", "iptables") / g("sync_ms", "ours"),
                g("start_ms", "nftables") / g("sync_ms", "ours"), g("change_ms", "ours"),
                g("change_ms", "iptables"), g("change_ms", "nftables"),
                r["agent_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0
            );
        }
    }
    if !ee.is_empty() {
        let xs = col(&ee, &["services"]);
        let four = |key: &str| -> Vec<(String, Vec<f64>)> {
            ["ours", "iptables", "nftables", "floor"]
                .iter()
                .map(|c| (c.to_string(), col(&ee, &[key, c])))
                .collect()
        };
        std::fs::write(
            dir.join("e2e.svg"),
            plot(
                "New connections per second through ClusterIPs (floor: straight to pod IPs)",
                "conn/s",
                &xs,
                &four("conn_per_s"),
            ),
        )?;
        let floor = col(&ee, &["cpu_us_per_conn", "floor"]);
        let added: Vec<(String, Vec<f64>)> = three(&ee, "cpu_us_per_conn")
            .into_iter()
            .map(|(c, v)| (c, v.iter().zip(&floor).map(|(x, f)| x - f).collect()))
            .collect();
        std::fs::write(
            dir.join("e2e-cpu.svg"),
            plot(
                "CPU a service layer adds to each new connection (over the floor)",
                "us per connection",
                &xs,
                &added,
            ),
        )?;
        println!("\n| Services | conn/s ours | iptables | nftables | floor | ours/iptables | ours/nftables | req/s ours | iptables | nftables | floor |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &ee {
            let g = |a: &str, b: &str| r[a][b].as_f64().unwrap_or(0.0);
            println!(
                "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x | {:.0} | {:.0} | {:.0} | {:.0} |",
                r["services"],
                g("conn_per_s", "ours"),
                g("conn_per_s", "iptables"),
                g("conn_per_s", "nftables"),
                g("conn_per_s", "floor"),
                g("conn_per_s", "ours") / g("conn_per_s", "iptables"),
                g("conn_per_s", "ours") / g("conn_per_s", "nftables"),
                g("req_per_s", "ours"),
                g("req_per_s", "iptables"),
                g("req_per_s", "nftables"),
                g("req_per_s", "floor")
            );
        }
        println!("\n| Services | CPU us/conn ours | iptables | nftables | floor | added: ours | iptables | nftables | iptables/ours (added) | errors |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &ee {
            let g = |b: &str| r["cpu_us_per_conn"][b].as_f64().unwrap_or(0.0);
            let add = |b: &str| g(b) - g("floor");
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}x | {} |",
                r["services"],
                g("ours"),
                g("iptables"),
                g("nftables"),
                g("floor"),
                add("ours"),
                add("iptables"),
                add("nftables"),
                add("iptables") / add("ours"),
                r["errors"]
            );
        }
    }
    println!("\nwrote {}", dir.display());
    let _ = dir.join("results.json").to_str().context("path")?;
    Ok(())
}
