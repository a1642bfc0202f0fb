//! The broker's library part: what the `ringmq` binary shares with the fuzz targets.
//!
//! - `config`: the broker's options, read from a config file and from `--key value` flags, every
//!   value validated.
//!
//! Everything else of the binary (the daemon, the command-line tools) lives in its modules
//! beside `main.rs`.

pub mod config;
