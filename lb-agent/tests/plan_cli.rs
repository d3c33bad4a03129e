//! The `lb-agent plan` binary end to end: JSON on stdout, `warning:` lines on stderr.
//!
//! The invalid-objects fixture's `stderr.txt` is the exact stderr users see (the binary run from
//! the fixture directory with `--manifests manifests`, so file names are relative). After a
//! deliberate change of wording, regenerate it with
//! `UPDATE_GOLDEN=1 cargo test -p lb-agent --test plan_cli` and review the diff.

use std::path::Path;
use std::process::Command;

use lb_agent::plan::Plan;
use pretty_assertions::assert_eq;

/// Test that `lb-agent plan` prints the expected plan as one JSON object on stdout, each skipped
/// object as `warning: NAMESPACE/NAME: reason` on stderr (exactly the fixture's stderr.txt), and
/// exits 0.
#[test]
fn plan_command_prints_json_and_warnings() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plan/invalid-objects-are-reported-and-the-rest-is-planned");
    let output = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .current_dir(&case)
        .args(["plan", "--manifests", "manifests", "--node", "node-a"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run lb-agent plan");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}, stderr:\n{stderr}",
        output.status
    );

    let mut printed: Plan = serde_json::from_slice(&output.stdout).expect("stdout is one plan");
    let mut expected: Plan = serde_json::from_str(
        &std::fs::read_to_string(case.join("expected.json")).expect("expected.json"),
    )
    .expect("expected.json is a plan");
    printed.normalize();
    expected.normalize();
    assert_eq!(printed, expected);

    for object in ["default/bad-ip", "default/bad-proto", "default/web-a"] {
        let prefix = format!("warning: {object}: ");
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix)),
            "no line starting {prefix:?} in stderr:\n{stderr}"
        );
    }

    let golden = case.join("stderr.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&golden, stderr.as_bytes()).expect("write stderr.txt");
    }
    let expected_stderr = std::fs::read_to_string(&golden).expect("stderr.txt");
    assert_eq!(
        stderr,
        expected_stderr,
        "stderr differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        golden.display()
    );
}

/// Test that a missing manifests directory is an error (non-zero exit), not an empty plan.
#[test]
fn plan_command_fails_on_a_missing_directory() {
    let output = Command::new(env!("CARGO_BIN_EXE_lb-agent"))
        .args([
            "plan",
            "--manifests",
            "/nonexistent/manifests",
            "--node",
            "node-a",
        ])
        .output()
        .expect("run lb-agent plan");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}
