//! Every bound of the HA crate, in one place, with their relationships asserted at compile time.

/// Most addresses in one broker URL (`ha-brokers-url`, `ha-public-url`, a client's failover
/// list). A cluster lists each broker once, and with the all-backups confirm rule a cluster of more
/// than a handful of brokers only adds latency; 64 is far past that, and it bounds how long a
/// joining backup or a failing-over client cycles through the list.
pub const URL_ADDRESSES_MAX: usize = 64;
/// Longest user name or password in a broker URL, in bytes. Common SASL implementations cap
/// both at 255.
pub const URL_CREDENTIAL_BYTES_MAX: usize = 255;
/// Longest host name, in bytes, in its text form (RFC 1035; not ours to choose).
pub const HOST_NAME_BYTES_MAX: usize = 253;
/// Longest label of a host name (the part between dots), in bytes (RFC 1035).
pub const HOST_LABEL_BYTES_MAX: usize = 63;
/// Longest broker URL, in bytes. Checked before anything else, so a huge option value or peer
/// string is refused without being scanned or echoed; large enough for every URL the other limits
/// allow (asserted below), so it never refuses a URL they accept.
pub const URL_BYTES_MAX: usize = 32 * 1024;

/// The longest address text: "rdma:" plus the longest host plus ":65535" plus a comma (an IPv6
/// literal, at most 45 bytes plus brackets, is shorter than the longest host name).
const ADDRESS_TEXT_BYTES_MAX: usize = "rdma:".len() + HOST_NAME_BYTES_MAX + ":65535".len() + ",".len();
const _: () = assert!(HOST_NAME_BYTES_MAX >= "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]".len());
const _: () = assert!(HOST_LABEL_BYTES_MAX <= HOST_NAME_BYTES_MAX);
// "amqp:", user, "/", password, "@", then every address.
const _: () = assert!(
    URL_BYTES_MAX >= "amqp:".len() + 2 * URL_CREDENTIAL_BYTES_MAX + 2 + URL_ADDRESSES_MAX * ADDRESS_TEXT_BYTES_MAX
);
const _: () = assert!(URL_ADDRESSES_MAX >= 1);
