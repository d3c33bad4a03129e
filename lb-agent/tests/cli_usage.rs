//! The `lb-agent` binary's usage errors: bad flag values are refused by the argument parser
//! (exit status 2, the flag named on stderr), before anything is started.

use std::process::{Command, Output};

/// Runs `lb-agent run` with `args` and without `--node` (nor NODE_NAME), so that even a value
/// the parser wrongly accepted ends in a usage error rather than a running agent.
fn run_without_node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .arg("run")
        .args(args)
        .env_remove("NODE_NAME")
        .output()
        .expect("run lb-agent")
}

/// Asserts that `output` is clap's usage error for `flag`'s value.
fn assert_bad_value(output: &Output, flag: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("invalid value") && stderr.contains(flag),
        "stderr does not name {flag} as an invalid value:\n{stderr}"
    );
    assert!(output.stdout.is_empty());
}

/// Test that a bind address that is not ADDRESS:PORT is a usage error naming the flag, for
/// both listeners.
#[test]
fn bad_bind_address_is_a_usage_error_naming_the_flag() {
    for flag in ["--healthz-bind-address", "--metrics-bind-address"] {
        for value in ["nonsense", "10.0.0.1", "10.0.0.1:99999", ":10256"] {
            let output = run_without_node(&[flag, value]);
            assert_bad_value(&output, flag);
        }
    }
}

/// Test that a pod interface glob that does not parse is a usage error naming the flag.
#[test]
fn bad_pod_interface_glob_is_a_usage_error_naming_the_flag() {
    let output = run_without_node(&["--pod-interfaces", "lxc*,[a"]);
    assert_bad_value(&output, "--pod-interfaces");
}

/// Test that a device glob that does not parse is a usage error naming the flag.
#[test]
fn bad_device_glob_is_a_usage_error_naming_the_flag() {
    let output = run_without_node(&["--devices", "eth0,eth[1"]);
    assert_bad_value(&output, "--devices");
}

/// Test that NodePort addresses that are neither CIDRs nor `primary` alone are usage errors
/// naming the flag, as kube-proxy's validation refuses them.
#[test]
fn bad_nodeport_addresses_are_a_usage_error_naming_the_flag() {
    for value in [
        "10.0.0.1",
        "10.0.0.0/33",
        "eth0",
        "primary,10.0.0.0/8",
        "10.0.0.0/8,",
    ] {
        let output = run_without_node(&["--nodeport-addresses", value]);
        assert_bad_value(&output, "--nodeport-addresses");
    }
}
