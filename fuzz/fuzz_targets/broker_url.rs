//! Fuzzes the broker URL parser (`ha-brokers-url`, `ha-public-url`, client failover lists) with
//! arbitrary text.
//!
//! Method: parse the input as UTF-8 text. The parser must not panic, whatever the text; a URL it
//! accepts prints in canonical form, and that form parses back to an equal URL that prints the
//! same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_ha::url::BrokerUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(url) = text.parse::<BrokerUrl>() else { return };
    let canonical = url.to_string();
    let again: BrokerUrl = canonical.parse().unwrap_or_else(|error| panic!("{canonical:?} does not parse: {error}"));
    assert_eq!(again, url, "{text:?} -> {canonical:?}");
    assert_eq!(again.to_string(), canonical);
});
