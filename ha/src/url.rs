//! Broker URLs: the reference's grammar, parsed strictly, printed back in one canonical form.
//!
//! ```text
//! url       = ["amqp:"] [ user ["/" password] "@" ] addr ("," addr)*
//! addr      = ["tcp:" | "ssl:" | "rdma:"] host [":" port]
//! host      = name | ipv4 | "[" ipv6 "]"
//! ```
//!
//! Examples: `node1,node2,node3`; `20.0.20.1,20.0.20.2,20.0.20.3`;
//! `amqp:guest/secret@tcp:node1:5672,ssl:node2:5671,rdma:node3`; `[::1]:5672`. The transport
//! defaults to `tcp` and the port to 5672, for every transport, as in the reference.
//!
//! Used for `ha-brokers-url` and `ha-public-url`, and by the client for its failover list, so the
//! parse is total (every input gives a `BrokerUrl` or a `UrlError`, never a panic) and strict:
//! - no whitespace or control characters anywhere; callers trim option values themselves;
//! - at least one address, at most `URL_ADDRESSES_MAX`; an empty address (`a,,b`, `a,`) is an error;
//! - `amqp:` only once, at the start; credentials only once, before the first address;
//! - a host name is letters, digits, `-`, `_` and dots (RFC 1123 labels, plus `_`, which host
//!   files and container names use and resolvers accept); a name made only of digits and dots
//!   must be a valid IPv4 address (so `5672` alone, or `1.2.3.999`, is refused);
//! - an IPv6 address goes in brackets and is stored in its normal form (`[0::1]` is `::1`);
//! - a port is 1..=65535, decimal;
//! - no percent-escapes: the grammar has none, so a password containing `@` cannot be written in
//!   a URL (give it as `ha-password` instead).
//!
//! Errors name the part that is wrong and what was allowed: "address 2 ('h:99999'): port must be
//! in 1..=65535; got '99999'". A password is never echoed: not in errors, not in `Debug`, not by
//! `redacted`. `Display` does print it, because `Display` is the canonical form that parses back.
//!
//! Not here: resolving names, connecting, or the order in which a client tries the addresses.
//! The option value `none` (the reference's "no URL") is the option parser's business.
//!
//! Invariants:
//! - `s.parse::<BrokerUrl>()` succeeds iff `s` is in the grammar and within the limits, and then
//!   `url.to_string().parse() == Ok(url)` (the canonical form round-trips).
//! - A `BrokerUrl` has 1..=`URL_ADDRESSES_MAX` addresses, and a password only with a user; an
//!   `Address` has a valid host and a port in 1..=65535. The constructors enforce what the parser
//!   does, so a `BrokerUrl` made either way prints a URL that parses back to it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::limits::{
    HOST_LABEL_BYTES_MAX, HOST_NAME_BYTES_MAX, URL_ADDRESSES_MAX, URL_BYTES_MAX, URL_CREDENTIAL_BYTES_MAX,
};

/// A parsed broker URL: optional credentials and one or more addresses, in the order given.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// The user and password given before the addresses, if any.
    credentials: Option<Credentials>,
    /// The addresses, in the order given; never empty.
    addresses: Vec<Address>,
}

/// One broker address: how to reach it, where, on which port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The transport named by the address's prefix; `tcp` when there is none.
    transport: Transport,
    /// A host name, an IPv4 address, or an IPv6 address in normal form without brackets.
    host: String,
    /// The port, in 1..=65535.
    port: u16,
}

/// The transport of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain TCP (`tcp:`, the default).
    Tcp,
    /// TLS over TCP (`ssl:`, the reference's spelling).
    Ssl,
    /// RDMA (`rdma:`), served only by brokers built with the `rdma` feature.
    Rdma,
}

/// A URL that is not in the grammar or breaks a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Nothing was given.
    #[error("URL is empty; expected {GRAMMAR}")]
    Empty,
    /// The URL is longer than `URL_BYTES_MAX`.
    #[error("URL is {len} bytes; at most {URL_BYTES_MAX} allowed")]
    TooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// A space, tab, newline or other control character. Its position is given, not the
    /// character's surroundings, which may be a password.
    #[error("URL has whitespace or a control character at byte {index}; none is allowed")]
    Whitespace {
        /// Byte index of the character.
        index: usize,
    },
    /// Nothing follows the `amqp:` prefix or the credentials.
    #[error("URL has no address; expected at least one: {GRAMMAR}")]
    NoAddresses,
    /// More addresses than `URL_ADDRESSES_MAX`.
    #[error("URL has {count} addresses; at most {URL_ADDRESSES_MAX} allowed")]
    TooManyAddresses {
        /// How many were given.
        count: usize,
    },
    /// The user before `@` (or before `/password@`) is empty.
    #[error("user is empty before '@'; give a user, or leave out the credentials and the '@'")]
    UserEmpty,
    /// The user is longer than `URL_CREDENTIAL_BYTES_MAX`.
    #[error("user is {len} bytes; at most {URL_CREDENTIAL_BYTES_MAX} allowed")]
    UserTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The user contains a character the grammar cannot carry there.
    #[error(
        "user '{user}' must not contain {}: credentials come once, before the first address, as {GRAMMAR}",
        CharName(*ch)
    )]
    UserChar {
        /// The user as given.
        user: String,
        /// The first offending character.
        ch: char,
    },
    /// A `/` with nothing after it before `@`.
    #[error("password is empty after '/'; give a password, or leave out the '/'")]
    PasswordEmpty,
    /// The password is longer than `URL_CREDENTIAL_BYTES_MAX`.
    #[error("password is {len} bytes; at most {URL_CREDENTIAL_BYTES_MAX} allowed")]
    PasswordTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// The password contains `@`, whitespace or a control character (only possible through
    /// `with_credentials`; the parser cannot see one). The character is not echoed.
    #[error("password must not contain '@', whitespace or control characters (give it as an option instead)")]
    PasswordChar,
    /// One address is wrong.
    #[error("address {index} ('{text}'): {problem}")]
    Address {
        /// Its position in the list, counting from 1.
        index: usize,
        /// The address as given.
        text: String,
        /// What is wrong with it.
        problem: AddressError,
    },
}

/// What is wrong with one address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing between two commas, or a comma at an end.
    #[error("address is empty (two commas in a row, or a comma at an end)")]
    Empty,
    /// A prefix before `:` that is not a transport.
    #[error(
        "unknown transport '{got}:'; allowed: tcp:, ssl:, rdma: \
         (if '{got}' is a host, the port after it must be in 1..=65535)"
    )]
    UnknownTransport {
        /// The prefix.
        got: String,
    },
    /// `amqp:` in front of an address other than the first.
    #[error("'amqp:' may appear only once, at the start of the URL")]
    SchemeNotFirst,
    /// Two transports, as in `tcp:ssl:host`.
    #[error("transport given twice ('{second}:' after a transport); give one of tcp:, ssl:, rdma:")]
    TransportRepeated {
        /// The second transport.
        second: String,
    },
    /// No host, as in `tcp:` or `:5672`.
    #[error("host is empty; expected a host name, an IPv4 address, or an IPv6 address in brackets")]
    HostEmpty,
    /// A host name longer than `HOST_NAME_BYTES_MAX`.
    #[error("host name is {len} bytes; at most {HOST_NAME_BYTES_MAX} allowed")]
    HostTooLong {
        /// Its length, in bytes.
        len: usize,
    },
    /// A character that no host name has.
    #[error("host name may contain letters, digits, '-', '_' and '.'; got {}", CharName(*ch))]
    HostChar {
        /// The first offending character.
        ch: char,
    },
    /// A label (the part between dots) that is empty, too long, or starts or ends with `-`.
    #[error(
        "host label '{label}' must be 1..={HOST_LABEL_BYTES_MAX} bytes and must not start or end \
         with '-' (an empty label means two dots in a row, or a dot at an end)"
    )]
    HostLabel {
        /// The label.
        label: String,
    },
    /// Only digits and dots, but not a valid IPv4 address.
    #[error(
        "'{got}' is made of digits and dots but is not an IPv4 address (each of 4 parts in 0..=255, no leading zeros)"
    )]
    Ipv4Invalid {
        /// The host as given.
        got: String,
    },
    /// A `[` without a matching `]`.
    #[error("'[' has no matching ']'; write an IPv6 address as [::1] or [::1]:5672")]
    Ipv6Unclosed,
    /// Brackets around something that is not an IPv6 address.
    #[error("'{got}' in brackets is not an IPv6 address (zone ids like %eth0 are not supported)")]
    Ipv6Invalid {
        /// The text between the brackets.
        got: String,
    },
    /// Text after `]` that is not `:port`.
    #[error("after ']' expected ':port' or nothing; got '{got}'")]
    AfterBracket {
        /// The text after the bracket.
        got: String,
    },
    /// An IPv6 address without brackets.
    #[error("an IPv6 address must be in brackets, as [::1] or [::1]:5672")]
    Ipv6Unbracketed,
    /// More than one `:` after the transport, and not an IPv6 address.
    #[error("expected host[:port] after the transport; got more than one ':'")]
    ColonExtra,
    /// A `:` with nothing after it.
    #[error("port is empty after ':'; give one in 1..=65535, or leave out the ':' for {DEFAULT_PORT}")]
    PortEmpty,
    /// A port that is not a decimal number in 1..=65535.
    #[error("port must be in 1..=65535; got '{got}'")]
    Port {
        /// The port as given.
        got: String,
    },
}

/// Shows a URL with its password replaced by `***`, for logs. Made by `BrokerUrl::redacted`.
pub struct Redacted<'a>(&'a BrokerUrl);

impl BrokerUrl {
    /// A URL of these addresses, without credentials.
    ///
    /// # Errors
    /// `NoAddresses` for an empty list; `TooManyAddresses` past `URL_ADDRESSES_MAX`.
    pub fn new(addresses: Vec<Address>) -> Result<BrokerUrl, UrlError> {
        check_address_count(addresses.len())?;
        Ok(BrokerUrl { credentials: None, addresses })
    }

    /// The same URL with these credentials.
    ///
    /// # Errors
    /// The `User*` and `Password*` variants, for anything the grammar could not carry: a user
    /// that is empty, too long, or contains `/`, `@`, `,`, `:`, whitespace or control characters;
    /// a password that is empty, too long, or contains `@`, whitespace or control characters.
    pub fn with_credentials(self, user: &str, password: Option<&str>) -> Result<BrokerUrl, UrlError> {
        check_user(user)?;
        if let Some(password) = password {
            check_password(password)?;
        }
        let credentials = Credentials { user: user.to_owned(), password: password.map(str::to_owned) };
        Ok(BrokerUrl { credentials: Some(credentials), addresses: self.addresses })
    }

    /// The user, if the URL has credentials.
    pub fn user(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.user.as_str())
    }

    /// The password, if the URL has one (only with a user).
    pub fn password(&self) -> Option<&str> {
        self.credentials.as_ref().and_then(|c| c.password.as_deref())
    }

    /// The addresses, in the order given; never empty.
    pub fn addresses(&self) -> &[Address] {
        &self.addresses
    }

    /// The canonical form with the password replaced by `***`, for logs and status output.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

impl Address {
    /// An address from its parts. `host` is a host name, an IPv4 address, or an IPv6 address
    /// without brackets (stored in normal form).
    ///
    /// # Errors
    /// The `Host*` and IP variants for a host that the parser would refuse; `Port` for port 0.
    pub fn new(transport: Transport, host: &str, port: u16) -> Result<Address, AddressError> {
        if port == 0 {
            return Err(AddressError::Port { got: port.to_string() });
        }
        // Brackets belong to the URL text, not to the host; refuse them as a host character.
        let host = if host.contains(':') && !host.starts_with('[') {
            let ip: Ipv6Addr = host.parse().map_err(|_| AddressError::Ipv6Invalid { got: host.to_owned() })?;
            ip.to_string()
        } else {
            check_host_name(host)?;
            host.to_owned()
        };
        Ok(Address { transport, host, port })
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The host: a name, an IPv4 address, or an IPv6 address in normal form, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, in 1..=65535.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 3] = [Transport::Tcp, Transport::Ssl, Transport::Rdma];

    /// The prefix word: "tcp", "ssl" or "rdma".
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Ssl => "ssl",
            Transport::Rdma => "rdma",
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<BrokerUrl, UrlError> {
        if text.is_empty() {
            return Err(UrlError::Empty);
        }
        if text.len() > URL_BYTES_MAX {
            return Err(UrlError::TooLong { len: text.len() });
        }
        if let Some((index, _)) = text.char_indices().find(|&(_, ch)| ch.is_whitespace() || ch.is_control()) {
            return Err(UrlError::Whitespace { index });
        }
        let rest = text.strip_prefix(SCHEME).unwrap_or(text);
        // The first '@' ends the credentials: neither a user nor an address may contain one, so
        // any later '@' is reported against the address it sits in.
        let (credentials, addresses_text) = match rest.split_once('@') {
            Some((userinfo, after)) => (Some(parse_credentials(userinfo)?), after),
            None => (None, rest),
        };
        if addresses_text.is_empty() {
            return Err(UrlError::NoAddresses);
        }
        check_address_count(addresses_text.split(',').count())?;
        let addresses = addresses_text
            .split(',')
            .enumerate()
            .map(|(index, part)| {
                parse_address(part).map_err(|problem| UrlError::Address {
                    index: index + 1,
                    text: part.to_owned(),
                    problem,
                })
            })
            .collect::<Result<Vec<Address>, UrlError>>()?;
        Ok(BrokerUrl { credentials, addresses })
    }
}

impl fmt::Display for BrokerUrl {
    /// The canonical form: `amqp:[user[/password]@]transport:host:port(,transport:host:port)*`,
    /// every transport and port spelled out, IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_url(f, self, false)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("user", &self.user())
            .field("password", &self.password().map(|_| "***"))
            .field("addresses", &self.addresses)
            .finish()
    }
}

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_url(f, self.0, true)
    }
}

impl fmt::Display for Address {
    /// `transport:host:port`, with an IPv6 host in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}:[{}]:{}", self.transport, self.host, self.port)
        } else {
            write!(f, "{}:{}:{}", self.transport, self.host, self.port)
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The user and optional password of a URL.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    /// Non-empty; no '/', '@', ',', ':', whitespace or control characters.
    user: String,
    /// Non-empty when present; no '@', whitespace or control characters.
    password: Option<String>,
}

/// Writes the canonical form, with the password or `***`.
fn write_url(f: &mut fmt::Formatter<'_>, url: &BrokerUrl, redact: bool) -> fmt::Result {
    f.write_str(SCHEME)?;
    if let Some(credentials) = &url.credentials {
        f.write_str(&credentials.user)?;
        if let Some(password) = &credentials.password {
            f.write_str("/")?;
            f.write_str(if redact { "***" } else { password })?;
        }
        f.write_str("@")?;
    }
    for (index, address) in url.addresses.iter().enumerate() {
        if index > 0 {
            f.write_str(",")?;
        }
        write!(f, "{address}")?;
    }
    Ok(())
}

/// Splits `user[/password]` and checks both parts.
fn parse_credentials(userinfo: &str) -> Result<Credentials, UrlError> {
    let (user, password) = match userinfo.split_once('/') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    check_user(user)?;
    if let Some(password) = password {
        check_password(password)?;
    }
    Ok(Credentials { user: user.to_owned(), password: password.map(str::to_owned) })
}

/// Checks a user against what the grammar can carry.
fn check_user(user: &str) -> Result<(), UrlError> {
    if user.is_empty() {
        return Err(UrlError::UserEmpty);
    }
    if user.len() > URL_CREDENTIAL_BYTES_MAX {
        return Err(UrlError::UserTooLong { len: user.len() });
    }
    // ':' would make "tcp:guest@host" (a transport before the credentials) look like a user.
    if let Some(ch) =
        user.chars().find(|&ch| matches!(ch, '/' | '@' | ',' | ':') || ch.is_whitespace() || ch.is_control())
    {
        return Err(UrlError::UserChar { user: user.to_owned(), ch });
    }
    Ok(())
}

/// Checks a password against what the grammar can carry, without echoing it.
fn check_password(password: &str) -> Result<(), UrlError> {
    if password.is_empty() {
        return Err(UrlError::PasswordEmpty);
    }
    if password.len() > URL_CREDENTIAL_BYTES_MAX {
        return Err(UrlError::PasswordTooLong { len: password.len() });
    }
    if password.chars().any(|ch| ch == '@' || ch.is_whitespace() || ch.is_control()) {
        return Err(UrlError::PasswordChar);
    }
    Ok(())
}

/// Checks the number of addresses against 1..=`URL_ADDRESSES_MAX`.
fn check_address_count(count: usize) -> Result<(), UrlError> {
    if count == 0 {
        return Err(UrlError::NoAddresses);
    }
    if count > URL_ADDRESSES_MAX {
        return Err(UrlError::TooManyAddresses { count });
    }
    Ok(())
}

/// Parses one `[transport:]host[:port]`.
fn parse_address(text: &str) -> Result<Address, AddressError> {
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    let (transport, rest) = Transport::ALL
        .into_iter()
        .find_map(|transport| {
            let rest = text.strip_prefix(transport.name())?.strip_prefix(':')?;
            Some((transport, rest))
        })
        .unwrap_or((Transport::Tcp, text));
    let given_transport = rest.len() != text.len();

    if let Some(bracketed) = rest.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or(AddressError::Ipv6Unclosed)?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| AddressError::Ipv6Invalid { got: inside.to_owned() })?;
        let port = match after {
            "" => DEFAULT_PORT,
            _ => match after.strip_prefix(':') {
                Some(port) => parse_port(port)?,
                None => return Err(AddressError::AfterBracket { got: after.to_owned() }),
            },
        };
        return Ok(Address { transport, host: ip.to_string(), port });
    }

    let (host, port) = match rest.split_once(':') {
        None => (rest, DEFAULT_PORT),
        Some((host, port)) => {
            if port.contains(':') {
                if rest.parse::<Ipv6Addr>().is_ok() {
                    return Err(AddressError::Ipv6Unbracketed);
                }
                if is_word(host) {
                    return Err(prefix_error(host, given_transport));
                }
                return Err(AddressError::ColonExtra);
            }
            // "amqps:host" or "localhost:http": a word, then what starts like a host, not a port.
            if port.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '[') && is_word(host) {
                return Err(prefix_error(host, given_transport));
            }
            (host, parse_port(port)?)
        }
    };
    check_host_name(host)?;
    Ok(Address { transport, host: host.to_owned(), port })
}

/// The error for a word before ':' that is not a transport the address may have there.
fn prefix_error(word: &str, given_transport: bool) -> AddressError {
    if word == "amqp" {
        AddressError::SchemeNotFirst
    } else if given_transport && Transport::ALL.iter().any(|t| t.name() == word) {
        AddressError::TransportRepeated { second: word.to_owned() }
    } else {
        AddressError::UnknownTransport { got: word.to_owned() }
    }
}

/// True for a non-empty run of ASCII letters, the shape of a transport prefix.
fn is_word(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Parses a decimal port in 1..=65535.
fn parse_port(text: &str) -> Result<u16, AddressError> {
    if text.is_empty() {
        return Err(AddressError::PortEmpty);
    }
    let bad = || AddressError::Port { got: text.to_owned() };
    // At most 5 digits, so the u32 cannot overflow and "000000005672" is refused.
    if text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: u32 = text.parse().map_err(|_| bad())?;
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(bad()),
    }
}

/// Checks a host name or IPv4 address (not an IPv6 one).
fn check_host_name(host: &str) -> Result<(), AddressError> {
    if host.is_empty() {
        return Err(AddressError::HostEmpty);
    }
    if host.len() > HOST_NAME_BYTES_MAX {
        return Err(AddressError::HostTooLong { len: host.len() });
    }
    if let Some(ch) = host.chars().find(|&ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))) {
        return Err(AddressError::HostChar { ch });
    }
    if let Some(label) = host.split('.').find(|label| {
        label.is_empty() || label.len() > HOST_LABEL_BYTES_MAX || label.starts_with('-') || label.ends_with('-')
    }) {
        return Err(AddressError::HostLabel { label: label.to_owned() });
    }
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err(AddressError::Ipv4Invalid { got: host.to_owned() });
    }
    Ok(())
}

/// Names a character in a message: `','`, or `U+0009` for one that does not print.
struct CharName(char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_whitespace() || self.0.is_control() {
            write!(f, "U+{:04X}", u32::from(self.0))
        } else {
            write!(f, "'{}'", self.0)
        }
    }
}

/// The port of an address that gives none, for every transport (as in the reference).
pub const DEFAULT_PORT: u16 = 5672;
/// The optional prefix of the whole URL.
const SCHEME: &str = "amqp:";
/// The grammar, for messages.
const GRAMMAR: &str = "[amqp:][user[/password]@]addr(,addr)* with addr = [tcp:|ssl:|rdma:]host[:port]";

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses, panicking with the error on failure.
    fn url(text: &str) -> BrokerUrl {
        text.parse().unwrap_or_else(|error| panic!("{text:?}: {error}"))
    }

    /// The error message for text that must not parse.
    fn error(text: &str) -> String {
        match text.parse::<BrokerUrl>() {
            Ok(parsed) => panic!("{text:?} parsed as {parsed}"),
            Err(error) => error.to_string(),
        }
    }

    /// (transport, host, port) of every address, for compact comparisons.
    fn parts(url: &BrokerUrl) -> Vec<(Transport, &str, u16)> {
        url.addresses().iter().map(|a| (a.transport(), a.host(), a.port())).collect()
    }

    #[test]
    fn reference_examples_parse() {
        // Goal: the URLs the reference's documentation uses parse to what it means by them.
        // The ha-brokers-url example: IPv4 addresses, default transport and port.
        let brokers = url("20.0.20.1,20.0.20.2,20.0.20.3");
        assert_eq!(
            parts(&brokers),
            [
                (Transport::Tcp, "20.0.20.1", 5672),
                (Transport::Tcp, "20.0.20.2", 5672),
                (Transport::Tcp, "20.0.20.3", 5672)
            ]
        );
        assert_eq!(brokers.user(), None);
        // The client example: host names.
        assert_eq!(
            parts(&url("node1,node2,node3")),
            [(Transport::Tcp, "node1", 5672), (Transport::Tcp, "node2", 5672), (Transport::Tcp, "node3", 5672)]
        );
        // Every optional part of the grammar at once.
        let full = url("amqp:guest/secret@tcp:node1:5672,ssl:node2:5671,rdma:node3");
        assert_eq!(full.user(), Some("guest"));
        assert_eq!(full.password(), Some("secret"));
        assert_eq!(
            parts(&full),
            [(Transport::Tcp, "node1", 5672), (Transport::Ssl, "node2", 5671), (Transport::Rdma, "node3", 5672)]
        );
    }

    #[test]
    fn credentials_are_optional_and_the_password_needs_a_user() {
        // Goal: user alone, user and password, and passwords with the characters the grammar
        // leaves them ('/', ',', ':') are all carried exactly.
        let user_only = url("guest@localhost");
        assert_eq!((user_only.user(), user_only.password()), (Some("guest"), None));
        let both = url("amqp:guest/a/b,c:d@localhost:5673");
        assert_eq!((both.user(), both.password()), (Some("guest"), Some("a/b,c:d")));
        assert_eq!(parts(&both), [(Transport::Tcp, "localhost", 5673)]);
    }

    #[test]
    fn ipv6_addresses_go_in_brackets_and_are_normalised() {
        // Goal: bracketed IPv6 with and without a port, any transport, stored in normal form.
        assert_eq!(parts(&url("[::1]:5672")), [(Transport::Tcp, "::1", 5672)]);
        assert_eq!(parts(&url("ssl:[0:0:0:0:0:0:0:1]")), [(Transport::Ssl, "::1", 5672)]);
        assert_eq!(
            parts(&url("rdma:[FE80::1:2]:7000,[::ffff:10.0.0.1]")),
            [(Transport::Rdma, "fe80::1:2", 7000), (Transport::Tcp, "::ffff:10.0.0.1", 5672)]
        );
    }

    #[test]
    fn display_gives_the_canonical_form() {
        // Goal: one spelling per URL: "amqp:", transports and ports explicit, IPv6 bracketed.
        let cases = [
            ("node1", "amqp:tcp:node1:5672"),
            ("node1,node2:6000", "amqp:tcp:node1:5672,tcp:node2:6000"),
            ("amqp:u@ssl:h", "amqp:u@ssl:h:5672"),
            ("u/p@[::1]", "amqp:u/p@tcp:[::1]:5672"),
            ("rdma:10.1.2.3:0099", "amqp:rdma:10.1.2.3:99"),
            ("My-Host_1.example.COM", "amqp:tcp:My-Host_1.example.COM:5672"),
        ];
        for (input, canonical) in cases {
            assert_eq!(url(input).to_string(), canonical, "{input}");
            // The canonical form is a fixed point.
            assert_eq!(url(canonical).to_string(), canonical);
        }
    }

    #[test]
    fn canonical_form_round_trips_for_every_combination_of_parts() {
        // Goal: parse(display(url)) == url, whatever the parts.
        // Method: build URLs from every combination of credentials, transports and host kinds
        // through the constructors, print and parse them back.
        let hosts = ["a", "node-1.example.com", "10.0.0.1", "::1", "fe80::1:2", "x_y"];
        let credentials = [None, Some(("guest", None)), Some(("guest", Some("s/e,c:r")))];
        for credential in credentials {
            for transport in Transport::ALL {
                for (index, host) in hosts.iter().enumerate() {
                    let first = Address::new(transport, host, 1 + index as u16).unwrap();
                    let second = Address::new(Transport::Tcp, "b", u16::MAX).unwrap();
                    let mut built = BrokerUrl::new(vec![first, second]).unwrap();
                    if let Some((user, password)) = credential {
                        built = built.with_credentials(user, password).unwrap();
                    }
                    assert_eq!(url(&built.to_string()), built, "{built}");
                }
            }
        }
    }

    #[test]
    fn errors_name_the_part_and_what_was_allowed() {
        // Goal: each way a URL can be wrong gives a message naming where and what is allowed.
        let grammar = GRAMMAR;
        let cases = [
            ("", format!("URL is empty; expected {grammar}")),
            ("amqp:", format!("URL has no address; expected at least one: {grammar}")),
            ("guest@", format!("URL has no address; expected at least one: {grammar}")),
            ("node1, node2", "URL has whitespace or a control character at byte 6; none is allowed".to_owned()),
            ("node1,h:99999", "address 2 ('h:99999'): port must be in 1..=65535; got '99999'".to_owned()),
            ("h:0", "address 1 ('h:0'): port must be in 1..=65535; got '0'".to_owned()),
            ("h:-1", "address 1 ('h:-1'): port must be in 1..=65535; got '-1'".to_owned()),
            ("h:000005672", "address 1 ('h:000005672'): port must be in 1..=65535; got '000005672'".to_owned()),
            (
                "h:",
                "address 1 ('h:'): port is empty after ':'; give one in 1..=65535, or leave out the ':' for 5672"
                    .to_owned(),
            ),
            ("a,,b", "address 2 (''): address is empty (two commas in a row, or a comma at an end)".to_owned()),
            ("a,", "address 2 (''): address is empty (two commas in a row, or a comma at an end)".to_owned()),
            (
                "udp:h:5672",
                "address 1 ('udp:h:5672'): unknown transport 'udp:'; allowed: tcp:, ssl:, rdma: \
                 (if 'udp' is a host, the port after it must be in 1..=65535)"
                    .to_owned(),
            ),
            (
                "amqps:h",
                "address 1 ('amqps:h'): unknown transport 'amqps:'; allowed: tcp:, ssl:, rdma: \
                 (if 'amqps' is a host, the port after it must be in 1..=65535)"
                    .to_owned(),
            ),
            ("a,amqp:b", "address 2 ('amqp:b'): 'amqp:' may appear only once, at the start of the URL".to_owned()),
            (
                "tcp:ssl:h",
                "address 1 ('tcp:ssl:h'): transport given twice ('ssl:' after a transport); give one of tcp:, ssl:, rdma:"
                    .to_owned(),
            ),
            (
                "tcp:",
                "address 1 ('tcp:'): host is empty; expected a host name, an IPv4 address, or an IPv6 address in brackets"
                    .to_owned(),
            ),
            (
                ":5672",
                "address 1 (':5672'): host is empty; expected a host name, an IPv4 address, or an IPv6 address in brackets"
                    .to_owned(),
            ),
            (
                "::1",
                "address 1 ('::1'): an IPv6 address must be in brackets, as [::1] or [::1]:5672".to_owned(),
            ),
            (
                "[::1",
                "address 1 ('[::1'): '[' has no matching ']'; write an IPv6 address as [::1] or [::1]:5672".to_owned(),
            ),
            (
                "[node1]",
                "address 1 ('[node1]'): 'node1' in brackets is not an IPv6 address (zone ids like %eth0 are not supported)"
                    .to_owned(),
            ),
            ("[::1]5672", "address 1 ('[::1]5672'): after ']' expected ':port' or nothing; got '5672'".to_owned()),
            ("1.2.3.4:5:6", "address 1 ('1.2.3.4:5:6'): expected host[:port] after the transport; got more than one ':'".to_owned()),
            (
                "a/b",
                "address 1 ('a/b'): host name may contain letters, digits, '-', '_' and '.'; got '/'".to_owned(),
            ),
            (
                "u@a,v@b",
                "address 2 ('v@b'): host name may contain letters, digits, '-', '_' and '.'; got '@'".to_owned(),
            ),
            (
                "a..b",
                "address 1 ('a..b'): host label '' must be 1..=63 bytes and must not start or end with '-' \
                 (an empty label means two dots in a row, or a dot at an end)"
                    .to_owned(),
            ),
            (
                "-a.b",
                "address 1 ('-a.b'): host label '-a' must be 1..=63 bytes and must not start or end with '-' \
                 (an empty label means two dots in a row, or a dot at an end)"
                    .to_owned(),
            ),
            (
                "1.2.3.999",
                "address 1 ('1.2.3.999'): '1.2.3.999' is made of digits and dots but is not an IPv4 address \
                 (each of 4 parts in 0..=255, no leading zeros)"
                    .to_owned(),
            ),
            (
                "amqp:5672",
                "address 1 ('5672'): '5672' is made of digits and dots but is not an IPv4 address \
                 (each of 4 parts in 0..=255, no leading zeros)"
                    .to_owned(),
            ),
            ("@h", "user is empty before '@'; give a user, or leave out the credentials and the '@'".to_owned()),
            ("/p@h", "user is empty before '@'; give a user, or leave out the credentials and the '@'".to_owned()),
            ("u/@h", "password is empty after '/'; give a password, or leave out the '/'".to_owned()),
            (
                "tcp:guest@h",
                format!("user 'tcp:guest' must not contain ':': credentials come once, before the first address, as {grammar}"),
            ),
            (
                "h1,guest@h2",
                format!("user 'h1,guest' must not contain ',': credentials come once, before the first address, as {grammar}"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(error(input), expected, "{input:?}");
        }
    }

    #[test]
    fn limits_are_enforced_before_the_work() {
        // Goal: address count, URL length and credential lengths are bounded, with the limit named.
        let many = vec!["h"; URL_ADDRESSES_MAX + 1].join(",");
        assert_eq!(error(&many), format!("URL has {} addresses; at most 64 allowed", URL_ADDRESSES_MAX + 1));
        let most = vec!["h"; URL_ADDRESSES_MAX].join(",");
        assert_eq!(url(&most).addresses().len(), URL_ADDRESSES_MAX);
        let long = "h".repeat(URL_BYTES_MAX + 1);
        assert_eq!(error(&long), format!("URL is {} bytes; at most {URL_BYTES_MAX} allowed", URL_BYTES_MAX + 1));
        let user = "u".repeat(URL_CREDENTIAL_BYTES_MAX + 1);
        assert_eq!(error(&format!("{user}@h")), "user is 256 bytes; at most 255 allowed");
        assert_eq!(error(&format!("u/{user}@h")), "password is 256 bytes; at most 255 allowed");
        let host = format!("{}.{}", "a".repeat(63), "b".repeat(HOST_NAME_BYTES_MAX - 63));
        assert!(error(&host).ends_with("host name is 254 bytes; at most 253 allowed"));
        let label = "a".repeat(64);
        assert!(error(&label).contains(&format!("host label '{label}' must be 1..=63 bytes")));
    }

    #[test]
    fn password_is_never_echoed_except_by_display() {
        // Goal: logs and errors cannot leak a password; only the canonical form carries it.
        let parsed = url("guest/hunter2@h");
        assert_eq!(parsed.redacted().to_string(), "amqp:guest/***@tcp:h:5672");
        assert!(!format!("{parsed:?}").contains("hunter2"));
        assert!(format!("{parsed:?}").contains("***"));
        assert_eq!(parsed.to_string(), "amqp:guest/hunter2@tcp:h:5672");
        // Errors after the password do not show it either.
        assert!(!error("guest/hunter2@h:99999").contains("hunter2"));
        assert!(!error("guest/hunter2 @h").contains("hunter2"));
        let no_password = url("guest@h");
        assert_eq!(no_password.redacted().to_string(), "amqp:guest@tcp:h:5672");
    }

    #[test]
    fn constructors_refuse_what_the_parser_refuses() {
        // Goal: a BrokerUrl built from parts always prints a URL that parses back to it.
        assert_eq!(BrokerUrl::new(vec![]), Err(UrlError::NoAddresses));
        assert_eq!(Address::new(Transport::Tcp, "h", 0), Err(AddressError::Port { got: "0".into() }));
        assert_eq!(Address::new(Transport::Tcp, "", 1), Err(AddressError::HostEmpty));
        assert_eq!(Address::new(Transport::Tcp, "[::1]", 1), Err(AddressError::HostChar { ch: '[' }));
        assert_eq!(
            Address::new(Transport::Tcp, "1::2::3", 1),
            Err(AddressError::Ipv6Invalid { got: "1::2::3".into() })
        );
        assert_eq!(Address::new(Transport::Ssl, "0:0::1", 1).unwrap().host(), "::1");
        let base = BrokerUrl::new(vec![Address::new(Transport::Tcp, "h", 1).unwrap()]).unwrap();
        for user in ["", "a/b", "a@b", "a,b", "a:b", "a b"] {
            assert!(base.clone().with_credentials(user, None).is_err(), "{user:?}");
        }
        for password in ["", "a@b", "a b", "a\nb"] {
            assert!(base.clone().with_credentials("u", Some(password)).is_err(), "{password:?}");
        }
        assert_eq!(
            base.clone().with_credentials("u", Some("a@b")).unwrap_err().to_string(),
            "password must not contain '@', whitespace or control characters (give it as an option instead)"
        );
        assert_eq!(
            base.with_credentials("a\tb", None).unwrap_err().to_string(),
            format!(
                "user 'a\tb' must not contain U+0009: credentials come once, before the first address, as {GRAMMAR}"
            )
        );
    }

    #[test]
    fn parse_is_total_and_every_success_round_trips() {
        // Goal: no input panics the parser, and whatever parses has a canonical form that parses
        // back to the same URL.
        // Method: 200,000 strings of up to 24 characters drawn by a seeded xorshift from an
        // alphabet of every character the grammar gives meaning to, plus some it forbids.
        let alphabet: Vec<char> = "amqptcpslrd:/@,[]. -_0123456789fe\u{e9}\t".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for _ in 0..200_000 {
            let len = (next() % 25) as usize;
            let text: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            if let Ok(first) = text.parse::<BrokerUrl>() {
                parsed += 1;
                let canonical = first.to_string();
                assert_eq!(canonical.parse::<BrokerUrl>().as_ref(), Ok(&first), "{text:?} -> {canonical:?}");
            }
        }
        // The alphabet is rich enough that some inputs are valid URLs.
        assert!(parsed > 1000, "only {parsed} inputs parsed");
    }
}
