//! `--lb-acceleration` on a node device whose driver refuses native XDP (a Linux bridge stands in
//! for such a NIC): `native` stops the agent at start, naming the device; `best-effort` serves
//! the device with tc alone and says so once.

use std::time::Duration;

use lb_tests::{
    agent::{self, RUNNING},
    manifests::ManifestDir,
    objects::{node, to_yaml},
    AgentRun, BpffsGuard, NetNs,
};

/// How long the agent may take to start, or to give up.
const START: Duration = Duration::from_secs(20);

/// A node namespace whose one device, `d0`, refuses native XDP; its manifests (the Node).
fn node_with_a_device_without_native_xdp(tag: &str) -> (NetNs, ManifestDir) {
    let ns = NetNs::new(tag).unwrap();
    for args in [
        &["link", "add", "d0", "type", "bridge"][..],
        &["link", "set", "d0", "up"],
        &["addr", "add", "192.0.2.1/24", "dev", "d0"],
    ] {
        ns.ip(args).unwrap();
    }
    let manifests = ManifestDir::new(tag).unwrap();
    let nodes = [node("n", Some("192.0.2.1"))];
    manifests.write("node.yaml", &to_yaml(&nodes)).unwrap();
    (ns, manifests)
}

/// Test that `--lb-acceleration native` refuses to run when a node device refuses native XDP,
/// naming it, and that `best-effort` serves the same device with tc alone, logging why.
#[test]
fn native_acceleration_refuses_a_device_without_native_xdp_best_effort_skips_it() {
    let (ns, manifests) = node_with_a_device_without_native_xdp("accel");
    for mode in ["native", "best-effort"] {
        let fs = BpffsGuard::new(&format!("accel-{mode}")).unwrap();
        let mut run = AgentRun::new("n", fs.path());
        run.manifests(manifests.path())
            .devices("d0")
            .flag("--lb-acceleration", mode)
            .without_http();
        let mut child = run.spawn(&ns).unwrap();
        if mode == "native" {
            let status = child.wait_timeout(START).unwrap();
            assert!(
                status.is_some_and(|s| !s.success()),
                "{mode}: {status:?}\n{}",
                child.logs()
            );
            assert!(
                child
                    .stderr()
                    .contains("native XDP could not be attached to d0"),
                "{}",
                child.logs()
            );
        } else {
            child.wait_for_output(RUNNING, START).unwrap();
            assert!(
                child.stderr().contains("tc alone serves it"),
                "{}",
                child.logs()
            );
            let v = agent::inspect_json(&ns, fs.path()).unwrap();
            let hooks: Vec<&str> = v["links"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l["hook"].as_str())
                .collect();
            assert_eq!(hooks, ["tcnic"], "{:#}", v["links"]);
            child.stop().unwrap();
        }
        agent::cleanup(&ns, fs.path()).unwrap();
    }
}
