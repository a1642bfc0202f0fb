//! Fuzzes the broker's options: the config file's text, the `--key value` flags, and each
//! option's value parser (integers, booleans, durations, addresses, broker URLs, levels).
//!
//! Method: the input is UTF-8 text; its first character picks one option of the table.
//! - Nothing panics, whatever the text.
//! - The text as a config file: when it reads, every key is a known option, and writing the values
//!   back as `key=value` lines reads back to the same values. The values then build a
//!   configuration (`from_values`), and the same values given as `--key value` flags and as
//!   `--key=value` flags build the same one, or fail with the same error.
//! - The text as the value of the picked option: a bad value is an error that names that option,
//!   or, for `ha-cluster`, the `ha-brokers-url` it requires.
//! - A duration below `DURATION_EXACT_MAX` that parses prints as nanoseconds and parses back to
//!   within a nanosecond (above it, `f64` seconds no longer hold every nanosecond).

#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use ringmq_broker::config::{option_table, parse_config_text, parse_duration, BrokerConfig, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    check_config_file(text);

    let options: Vec<&str> = option_table().map(|(name, _, _)| name).collect();
    let Some(first) = text.chars().next() else { return };
    let value = &text[first.len_utf8()..];
    check_option_value(options[first as usize % options.len()], value);
    check_duration(value);
});

/// Reads `text` as a config file and checks the round trips in the module doc.
fn check_config_file(text: &str) {
    let mut values = BTreeMap::new();
    if parse_config_text("fuzz.conf", text, &mut values).is_err() {
        return;
    }
    let known: Vec<&str> = option_table().map(|(name, _, _)| name).collect();
    for name in values.keys() {
        assert!(known.contains(&name.as_str()), "unknown option '{name}' read from {text:?}");
    }

    let written: String = values.iter().map(|(name, value)| format!("{name}={value}\n")).collect();
    let mut again = BTreeMap::new();
    parse_config_text("fuzz.conf", &written, &mut again).unwrap_or_else(|error| panic!("{written:?}: {error}"));
    assert_eq!(again, values, "written back as {written:?}");

    let built = describe(BrokerConfig::from_values(&values));
    let separate: Vec<String> = values.iter().flat_map(|(name, value)| [format!("--{name}"), value.clone()]).collect();
    assert_eq!(describe(BrokerConfig::from_args(&separate)), built, "flags {separate:?}");
    let joined: Vec<String> = values.iter().map(|(name, value)| format!("--{name}={value}")).collect();
    assert_eq!(describe(BrokerConfig::from_args(&joined)), built, "flags {joined:?}");
}

/// Builds a configuration with option `name` set to `value` and checks that an error names it.
fn check_option_value(name: &str, value: &str) {
    let values = BTreeMap::from([(name.to_string(), value.to_string())]);
    let Err(error) = BrokerConfig::from_values(&values) else { return };
    let named = match &error {
        ConfigError::BadValue { name, .. } => name.as_str(),
        other => panic!("option '{name}' = {value:?} gave {other:?}, not a bad value"),
    };
    let required = name == "ha-cluster" && named == "ha-brokers-url";
    assert!(named == name || required, "option '{name}' = {value:?} gave an error about '{named}': {error}");
    assert!(error.to_string().contains(&format!("option '{named}'")), "message does not name it: {error}");
}

/// Parses `value` as a duration; one that parses round-trips through nanoseconds.
fn check_duration(value: &str) {
    let Ok(duration) = parse_duration("fuzz", value) else { return };
    if duration >= DURATION_EXACT_MAX {
        return;
    }
    let printed = format!("{}ns", duration.as_nanos());
    let again = parse_duration("fuzz", &printed).unwrap_or_else(|error| panic!("{printed} from {value:?}: {error}"));
    let difference = again.abs_diff(duration);
    assert!(difference <= Duration::from_nanos(1), "{value:?} -> {duration:?} -> {printed} -> {again:?}");
}

/// A configuration or an error, as text, to compare two ways of building one.
fn describe(built: Result<BrokerConfig, ConfigError>) -> String {
    match built {
        Ok(config) => format!("{config:?}"),
        Err(error) => format!("error: {error}"),
    }
}

/// Below this, a duration in `f64` seconds is within a nanosecond of its exact value (the `f64`
/// spacing at 10^6 is about 10^-10).
const DURATION_EXACT_MAX: Duration = Duration::from_secs(1_000_000);
