//! [`Spread`]: who answered a batch of requests and what failed, every answer checked by
//! [`check_reply`]; and the assertions tests make on it.
//!
//! How many requests a spread check needs: with `k` backends, each new flow going to each with
//! probability `1/k` independently, the chance that some backend gets none of `n` flows is at most
//! `k (1 - 1/k)^n`, and the chance that some backend gets fewer than a share `s` is at most `k`
//! times the binomial tail `P(Bin(n, 1/k) < s n)`. The project's bar is under one in a million per
//! assertion; each check states its bound where it is made.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;

use super::wire::Reply;

/// Which backends answered a batch of requests, and what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spread {
    /// Good answers per server identity.
    pub counts: BTreeMap<String, usize>,
    /// Requests without a good answer.
    pub failures: usize,
    /// The first few failure messages (at most 20).
    pub errors: Vec<String>,
}

/// How many failure messages a [`Spread`] keeps.
const KEPT_ERRORS: usize = 20;

impl Spread {
    /// Number of good answers.
    pub fn ok(&self) -> usize {
        self.counts.values().sum()
    }

    /// Number of requests: good answers and failures.
    pub fn total(&self) -> usize {
        self.ok() + self.failures
    }

    /// Good answers from `identity`.
    pub fn count(&self, identity: &str) -> usize {
        self.counts.get(identity).copied().unwrap_or(0)
    }

    /// Identities that answered at least once, sorted.
    pub fn backends(&self) -> Vec<&str> {
        self.counts.keys().map(String::as_str).collect()
    }

    /// Record one request's outcome, as [`check_reply`] returns it.
    pub fn record(&mut self, answer: Result<String, String>) {
        match answer {
            Ok(who) => *self.counts.entry(who).or_default() += 1,
            Err(e) => self.fail(e),
        }
    }

    /// Record a request that got no good answer.
    pub fn fail(&mut self, msg: String) {
        self.failures += 1;
        if self.errors.len() < KEPT_ERRORS {
            self.errors.push(msg);
        }
    }

    /// Assert that every request got a good answer, from exactly the backends `backends` (every
    /// one of them and no other), each answering at least a share `min_share` of the requests.
    #[track_caller]
    pub fn assert_spread<S: AsRef<str>>(&self, backends: &[S], min_share: f64) {
        self.assert_no_failure();
        let want: Vec<&str> = backends.iter().map(AsRef::as_ref).collect();
        assert_eq!(self.backends(), want, "answered: {self}");
        let n = self.total();
        for b in want {
            assert!(
                self.count(b) as f64 >= min_share * n as f64,
                "{b} got {} of {n} (< {:.0}%): {self}",
                self.count(b),
                min_share * 100.0,
            );
        }
    }

    /// Assert that every request got a good answer, each from one of `allowed` (not necessarily
    /// from all of them).
    #[track_caller]
    pub fn assert_answered_by<S: AsRef<str>>(&self, allowed: &[S]) {
        self.assert_no_failure();
        let allowed: Vec<&str> = allowed.iter().map(AsRef::as_ref).collect();
        let others: Vec<&str> = self
            .backends()
            .into_iter()
            .filter(|b| !allowed.contains(b))
            .collect();
        assert!(
            others.is_empty(),
            "answered by {others:?}, none of {allowed:?}: {self}"
        );
    }

    #[track_caller]
    fn assert_no_failure(&self) {
        assert!(
            self.failures == 0,
            "{} of {} requests failed: {self}",
            self.failures,
            self.total()
        );
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}, {} failures", self.counts, self.failures)?;
        if !self.errors.is_empty() {
            write!(f, " (first: {:?})", self.errors)?;
        }
        Ok(())
    }
}

/// Check the answer to request `msg` sent to `target`: it came from `target` (for a Service the
/// VIP, not the backend) and echoes `msg`; with `client_ip`, the server also saw the client's
/// real address (`client_ip` and the client socket's port). Returns the identity that answered,
/// or what was wrong.
pub fn check_reply(
    target: SocketAddr,
    client_ip: Option<Ipv4Addr>,
    msg: &str,
    reply: Result<Reply>,
) -> Result<String, String> {
    let r = reply.map_err(|e| format!("{msg}: {e:#}"))?;
    if r.peer != target {
        return Err(format!(
            "{msg}: answer from {} ({}), expected {target}",
            r.peer, r.identity
        ));
    }
    // A UDP client socket may be bound to 0.0.0.0: compare the client's port only.
    if let Some(ip) =
        client_ip.filter(|ip| r.client_seen != SocketAddr::from((*ip, r.local.port())))
    {
        return Err(format!(
            "{msg}: {} saw the client as {}, the client is {ip} ({})",
            r.identity, r.client_seen, r.local
        ));
    }
    if r.echo != msg {
        return Err(format!("{msg}: echo {:?}", r.echo));
    }
    Ok(r.identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a spread counts only answers from the target that echo the request and, when
    /// asked, come from a server that saw the client's real address.
    #[test]
    fn spread_counts_only_checked_answers() {
        let target: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let other: SocketAddr = "10.244.0.11:80".parse().unwrap();
        let client: SocketAddr = "10.244.0.2:40000".parse().unwrap();
        let mk = |peer, client_seen, echo: &str| {
            Ok(Reply {
                identity: "b1".into(),
                client_seen,
                echo: echo.into(),
                peer,
                local: client,
            })
        };
        let ip = Some(Ipv4Addr::new(10, 244, 0, 2));
        let mut s = Spread::default();
        s.record(check_reply(target, ip, "m", mk(target, client, "m")));
        s.record(check_reply(target, ip, "m", mk(other, client, "m")));
        s.record(check_reply(target, ip, "m", mk(target, other, "m")));
        s.record(check_reply(target, None, "m", mk(target, other, "m")));
        s.record(check_reply(target, None, "m", mk(target, client, "x")));
        s.record(check_reply(target, None, "m", Err(anyhow::anyhow!("boom"))));
        assert_eq!((s.ok(), s.count("b1"), s.failures), (2, 2, 4), "{s}");
        assert_eq!(s.total(), 6);
        assert_eq!(s.errors.len(), 4);
    }

    /// Test that the spread assertions accept what they promise and refuse the rest.
    #[test]
    fn spread_assertions_check_backends_shares_and_failures() {
        let mut s = Spread::default();
        for (who, n) in [("b1", 6), ("b2", 4)] {
            for _ in 0..n {
                s.record(Ok(who.into()));
            }
        }
        s.assert_spread(&["b1", "b2"], 0.4);
        s.assert_answered_by(&["b1", "b2", "b3"]);
        let fails =
            |f: &dyn Fn()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err();
        assert!(fails(&|| s.assert_spread(&["b1", "b2"], 0.5)));
        assert!(fails(&|| s.assert_spread(&["b1", "b2", "b3"], 0.0)));
        assert!(fails(&|| s.assert_answered_by(&["b1"])));
        let mut failed = s.clone();
        failed.fail("lost".into());
        assert!(fails(&|| failed.assert_answered_by(&["b1", "b2"])));
    }
}
