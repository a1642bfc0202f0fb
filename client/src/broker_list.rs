//! The addresses a connection may use: parsed from the caller's URL list, and learned from brokers.
//!
//! Owns the translation from the reference URL grammar (`ringmq_ha::url::BrokerUrl`:
//! `[amqp:][user[/password]@]addr(,addr)*`) to the `host:port` texts the client dials, and the
//! reading of a cluster's `ha-public-url` out of what a broker says: the `NotPrimary` refusal of a
//! backup ("...; connect to the cluster at URL", PROTOCOL.md 1.2) and the `public_url` of
//! `HaStatusReply`.
//!
//! Call contract: `parse_broker_list` for what the caller gives (errors are the caller's);
//! `learned_from_refusal` and `learned_from_public_url` for what brokers say (never an error: an
//! unreadable URL teaches nothing).
//!
//! Invariants:
//! - Only `tcp:` addresses are returned: `ssl:` and `rdma:` given by the caller are refused
//!   (no TLS or RDMA transport yet), and learned ones are skipped.
//! - Credentials in a URL are accepted and ignored: the native protocol has no authentication.

use ringmq_ha::url::{Address, BrokerUrl, Transport};

use crate::error::ClientError;

/// The text a backup's `NotPrimary` refusal puts before the cluster's `ha-public-url`.
pub(crate) const REFUSAL_URL_MARKER: &str = "connect to the cluster at ";

/// The `host:port` of every address of `text`, in order.
///
/// # Errors
/// `InvalidArgument` naming the URL grammar when `text` is not in it, or naming the transport
/// when an address is `ssl:` or `rdma:`.
pub(crate) fn parse_broker_list(text: &str) -> Result<Vec<String>, ClientError> {
    let url: BrokerUrl = text.trim().parse().map_err(|err: ringmq_ha::url::UrlError| ClientError::InvalidArgument {
        name: "broker URL",
        allowed: format!("[amqp:][user[/password]@]addr(,addr)* with addr = [tcp:]host[:port] ({err})"),
        got: text.to_string(),
    })?;
    url.addresses()
        .iter()
        .map(|address| match address.transport() {
            Transport::Tcp => Ok(dial_text(address)),
            other => Err(ClientError::InvalidArgument {
                name: "broker URL transport",
                allowed: "tcp: (ssl: needs TLS, which the client does not have yet; rdma: is not supported)"
                    .to_string(),
                got: format!("{other}: in {address}"),
            }),
        })
        .collect()
}

/// The `tcp:` addresses of the URL a backup's refusal names, if it names one.
pub(crate) fn learned_from_refusal(message: &str) -> Vec<String> {
    match message.split_once(REFUSAL_URL_MARKER) {
        Some((_, rest)) => learned_from_public_url(rest.split_whitespace().next().unwrap_or("")),
        None => Vec::new(),
    }
}

/// The `tcp:` addresses of a broker's `ha-public-url` (credentials may be hidden as `***`).
pub(crate) fn learned_from_public_url(url: &str) -> Vec<String> {
    let Ok(url) = url.trim().trim_end_matches([';', '.']).parse::<BrokerUrl>() else {
        return Vec::new();
    };
    url.addresses().iter().filter(|a| a.transport() == Transport::Tcp).map(dial_text).collect()
}

/// `host:port`, an IPv6 host in brackets: what `TcpStream::connect` resolves.
fn dial_text(address: &Address) -> String {
    if address.host().contains(':') {
        format!("[{}]:{}", address.host(), address.port())
    } else {
        format!("{}:{}", address.host(), address.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_grammar_gives_host_port_texts() {
        // Goal: every form of the grammar the client may be given dials the right place.
        assert_eq!(parse_broker_list("127.0.0.1:5672").unwrap(), ["127.0.0.1:5672"]);
        assert_eq!(parse_broker_list("amqp:guest/pw@tcp:a:1,b,[::1]:7").unwrap(), ["a:1", "b:5672", "[::1]:7"]);
    }

    #[test]
    fn ssl_and_bad_urls_are_refused_with_what_is_allowed() {
        // Goal: an ssl: address is a clear error until TLS exists, not a silent plain connect.
        let text = parse_broker_list("a:1,ssl:b:2").unwrap_err().to_string();
        assert!(text.contains("ssl") && text.contains("TLS"), "{text}");
        let text = parse_broker_list("a,,b").unwrap_err().to_string();
        assert!(text.contains("broker URL") && text.contains("a,,b"), "{text}");
    }

    #[test]
    fn a_backups_refusal_teaches_the_public_url() {
        // Goal: the text core/src/ha_view.rs writes is read back.
        let message = "not primary: this broker is an HA backup in state ready and serves only admin \
                       connections (--ha-admin); connect to the cluster at amqp:tcp:h1:1,tcp:h2:2,ssl:h3:3";
        assert_eq!(learned_from_refusal(message), ["h1:1", "h2:2"]);
        assert!(learned_from_refusal("not primary; connect to the cluster's primary").is_empty());
        assert_eq!(learned_from_public_url("amqp:u/***@tcp:h:9"), ["h:9"]);
        assert!(learned_from_public_url("").is_empty());
    }
}
