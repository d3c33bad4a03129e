//! Unique names for what the harness creates (namespaces, scratch directories), and the owner
//! each name carries: `<prefix><pid>-<n>-<tag>`.

use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every network namespace the harness creates: `lbt-<pid>-<n>-<tag>`.
pub const NETNS_PREFIX: &str = "lbt-";

/// Prefix of every scratch directory the harness creates: `/tmp/lb-test-<pid>-<n>-<tag>`.
pub const DIR_PREFIX: &str = "lb-test-";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Reduce a caller's tag to `[a-z0-9-]`, at most 12 characters, so it fits in names and paths.
pub fn sanitize_tag(tag: &str) -> String {
    let s: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(12)
        .collect();
    if s.is_empty() {
        "x".to_string()
    } else {
        s
    }
}

/// A name unique in this machine for as long as this process lives: `<prefix><pid>-<n>-<tag>`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}-{}", std::process::id(), sanitize_tag(tag))
}

/// The pid embedded in a harness name (`<prefix><pid>-...`), if it has that shape.
pub(crate) fn owner_pid(name: &str, prefix: &str) -> Option<i32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that tags are reduced to short, safe names.
    #[test]
    fn tags_are_sanitized_and_short() {
        assert_eq!(sanitize_tag("Hello World/x"), "hello-world-");
        assert_eq!(sanitize_tag(""), "x");
    }

    /// Test that two names with the same tag differ and carry the pid.
    #[test]
    fn unique_names_differ_and_carry_the_pid() {
        let a = unique_name(NETNS_PREFIX, "t");
        let b = unique_name(NETNS_PREFIX, "t");
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a, NETNS_PREFIX), Some(std::process::id() as i32));
    }
}
