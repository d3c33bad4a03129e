//! The wire format of the test servers and clients: the client sends one line `<msg>`; the server
//! answers one line `<identity> <client ip:port as the server saw it> <msg>` (one datagram for
//! UDP), parsed into a [`Reply`].

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

/// Timeout of every single socket operation (connect, read, write) unless a [`Client`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request line a server reads.
pub(super) const MAX_LINE: u64 = 4096;

/// One answer, with the addresses seen on both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The identity of the server that answered (a pod name for [`crate::Pod`] servers).
    pub identity: String,
    /// The client address as the server saw it (its `getpeername` / `recvfrom` address).
    pub client_seen: SocketAddr,
    /// The request message, echoed.
    pub echo: String,
    /// The address the client's socket saw the answer come from (TCP `getpeername`, UDP `recvfrom`).
    pub peer: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

pub(super) fn format_reply(identity: &str, client: SocketAddr, msg: &str) -> String {
    format!("{identity} {client} {msg}\n")
}

pub(super) fn parse_reply(text: &str, peer: SocketAddr, local: SocketAddr) -> Result<Reply> {
    let text = text.trim_end_matches(['\r', '\n']);
    let mut parts = text.splitn(3, ' ');
    let (Some(identity), Some(client), echo) = (parts.next(), parts.next(), parts.next()) else {
        bail!("malformed reply {text:?} from {peer}");
    };
    let client_seen = client
        .parse()
        .with_context(|| format!("malformed client address in reply {text:?} from {peer}"))?;
    Ok(Reply {
        identity: identity.to_string(),
        client_seen,
        echo: echo.unwrap_or_default().to_string(),
        peer,
        local,
    })
}

pub(super) fn check_msg(msg: &str) -> Result<()> {
    ensure!(
        !msg.contains(['\n', '\r']),
        "a request must be one line: {msg:?}"
    );
    ensure!(
        msg.len() < 1024,
        "a request must be shorter than 1024 bytes"
    );
    Ok(())
}

pub(super) fn check_identity(identity: &str) -> Result<()> {
    ensure!(
        !identity.is_empty() && !identity.contains(char::is_whitespace),
        "a server identity must be one word: {identity:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that a formatted answer parses back into its parts.
    #[test]
    fn replies_round_trip() {
        let client: SocketAddr = "10.244.0.2:40000".parse().unwrap();
        let peer: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let r = parse_reply(&format_reply("b1", client, "hello world"), peer, client).unwrap();
        assert_eq!(
            (r.identity.as_str(), r.client_seen, r.echo.as_str()),
            ("b1", client, "hello world")
        );
        assert_eq!(r.peer, peer);
        assert!(parse_reply("garbage\n", peer, client).is_err());
    }
}
