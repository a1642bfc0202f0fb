//! The broker's options, from flags and from a config file: a bad one stops the broker before it
//! listens, with exit status 2 and a message naming the option, what is allowed and what came; a
//! good config file is honoured, and a flag beats the file.
//!
//! Method throughout: run the real `ringmq broker` with the options under test; refusals are read
//! from its exit status and stderr, acceptance is checked by connecting to the port it should
//! listen on.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ringmq_client::blocking::Connection;
use ringmq_client::{ConnectOptions, Message, QueueOptions};
use ringmq_tests::{eventually, free_port, run_cli, run_cli_within, BrokerProcess};

/// Longest a test waits for broker output or for a refused broker to exit.
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn unknown_option_exits_2_naming_it_and_listing_the_known_ones() {
    // Goal: an option the broker does not know stops it with status 2 before it listens; stderr
    // names the option and lists the known ones. A bare word is refused the same way, with a
    // hint on the syntax; `--help` lists the options and exits 0.
    // Method: `ringmq broker --bogus 1`, `ringmq broker port 5`, `ringmq broker --help`.
    let known = ["host", "port", "shards", "pin-cores", "max-frame-size", "max-inflight", "config"];

    // --bogus 1: status 2, nothing on stdout, the option and the known ones on stderr.
    let output = run_cli(&["broker", "--bogus", "1"]);
    let stderr = refused(&output);
    assert!(stderr.starts_with("ringmq broker: unknown option 'bogus'; known options: "), "{stderr}");
    let listed: Vec<&str> = stderr.trim_end().rsplit_once("known options: ").unwrap().1.split(", ").collect();
    for name in known {
        assert!(listed.contains(&name), "{name} missing from the known options in: {stderr}");
    }

    // A bare word where an option belongs.
    let output = run_cli(&["broker", "port", "5"]);
    let stderr = refused(&output);
    assert!(
        stderr.starts_with("ringmq broker: unknown option 'port' (options are given as --name value); known options: "),
        "{stderr}"
    );

    // --help lists every known option with its help, and exits 0.
    let output = run_cli(&["broker", "--help"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in known.iter().filter(|name| **name != "config") {
        assert!(stdout.contains(&format!("--{name} ")), "--{name} missing from the help:\n{stdout}");
    }
}

#[test]
fn bad_values_exit_2_naming_the_option_what_is_allowed_and_what_came() {
    // Goal: each malformed or out-of-range value stops the broker with status 2, and stderr
    // names the option, the allowed values and the value given.
    // Method: one run per bad value, as `--name value` and as `--name=value`.
    let cases: [(&[&str], &str); 7] = [
        (&["--port", "70000"], "ringmq broker: option 'port': must be an integer in 0..=65535; got '70000'\n"),
        (&["--port=-1"], "ringmq broker: option 'port': must be an integer in 0..=65535; got '-1'\n"),
        (&["--port", "http"], "ringmq broker: option 'port': must be an integer in 0..=65535; got 'http'\n"),
        (&["--shards", "0"], "ringmq broker: option 'shards': must be an integer in 1..=256; got '0'\n"),
        (
            &["--host", "nothost"],
            "ringmq broker: option 'host': must be an IP address such as 127.0.0.1 or ::; got 'nothost'\n",
        ),
        (
            &["--pin-cores", "maybe"],
            "ringmq broker: option 'pin-cores': must be true/false (or yes/no, on/off, 1/0); got 'maybe'\n",
        ),
        (&["--port"], "ringmq broker: option '--port' needs a value\n"),
    ];
    for (args, expected) in cases {
        // Each refused with exactly this message.
        let mut all = vec!["broker"];
        all.extend_from_slice(args);
        assert_eq!(refused(&run_cli(&all)), expected, "args: {args:?}");
    }

    // The frame size limit names its range (its top is the codec's hard limit).
    let stderr = refused(&run_cli(&["broker", "--max-frame-size", "100"]));
    assert!(stderr.starts_with("ringmq broker: option 'max-frame-size': must be an integer in 4096..="), "{stderr}");
    assert!(stderr.ends_with("; got '100'\n"), "{stderr}");
}

#[test]
fn config_file_errors_exit_2_naming_the_file_the_line_and_the_problem() {
    // Goal: a config file with a line that is not `key=value`, an unknown key, or a bad value,
    // or a file that cannot be read, stops the broker with status 2 and a message that names the
    // file and line (or the option) and what was wrong.
    // Method: write each bad file to a temporary path and start the broker with `--config`.

    // A line that is not key=value, after a good one and a comment.
    let file = ConfigFile::new("# ringmq test\nport=1\nthis is wrong\n");
    let stderr = refused(&run_cli(&["broker", "--config", file.path()]));
    let expected = format!(
        "ringmq broker: config file {} line 3: expected 'key=value' or a '#' comment; got 'this is wrong'\n",
        file.path()
    );
    assert_eq!(stderr, expected);

    // An unknown key names the key, the file and the line, and lists the known options.
    let file = ConfigFile::new("# ringmq test\nbogus = 1\n");
    let stderr = refused(&run_cli(&["broker", "--config", file.path()]));
    let expected = format!(
        "ringmq broker: unknown option 'bogus' (config file {} line 2); known options: host, port",
        file.path()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");

    // A bad value in the file is reported like a bad flag.
    let file = ConfigFile::new("port = 70000\n");
    let stderr = refused(&run_cli(&["broker", "--config", file.path()]));
    assert_eq!(stderr, "ringmq broker: option 'port': must be an integer in 0..=65535; got '70000'\n");

    // A file that does not exist.
    let missing = ConfigFile::new("");
    let missing_path = missing.path().to_string();
    drop(missing);
    let stderr = refused(&run_cli(&["broker", "--config", &missing_path]));
    assert!(stderr.starts_with(&format!("ringmq broker: cannot read config file {missing_path}: ")), "{stderr}");
}

#[test]
fn config_file_options_are_honoured() {
    // Goal: a config file's `host`, `port` and `shards` (with comments, blank lines and spaces
    // around `=`) are what the broker runs with.
    // Method: a file naming a free port and 2 shards, and no flags but `--config`; connect to
    // that port, use it, and read the broker's startup line.
    let port = free_port();
    let file = ConfigFile::new(&format!(
        "# ringmq test config\n\nhost = 127.0.0.1\nport = {port}   # from the file\nshards=2\npin-cores = false\n"
    ));

    // The broker accepts connections on the file's port.
    let broker = BrokerProcess::start_exact(&["--config", file.path()], port).unwrap();
    assert_eq!(broker.port(), port);
    let expected = format!("ringmq broker listening on 127.0.0.1:{port} with 2 shards");
    wait_for_line(&broker, &expected);

    // And serves clients there.
    assert_serves(&broker.addr());
}

#[test]
fn flags_override_the_config_file() {
    // Goal: when a flag and the config file set the same option, the flag wins, whichever comes
    // first on the command line.
    // Method: a file with port A and 1 shard; the harness adds `--port B` before `--config`, and
    // `--shards 2` comes after it. The broker must listen on B only, with 2 shards.
    let file_port = free_port();
    let file = ConfigFile::new(&format!("port = {file_port}\nshards = 1\n"));

    // Start with the flags around --config.
    let broker = BrokerProcess::start(&["--config", file.path(), "--shards", "2"]);
    assert_ne!(broker.port(), file_port);
    let expected = format!("ringmq broker listening on 127.0.0.1:{} with 2 shards", broker.port());
    wait_for_line(&broker, &expected);

    // The flag's port serves; nothing listens on the file's port.
    assert_serves(&broker.addr());
    assert!(TcpStream::connect(("127.0.0.1", file_port)).is_err(), "something listens on the file's port {file_port}");
}

#[test]
fn a_port_taken_by_another_program_exits_2_naming_the_address() {
    // Goal: when the port is already bound by another program, the broker does not start: it
    // exits with status 2 and names the address it could not listen on.
    // Method: hold a loopback port with a plain listener, then start the broker on it.
    let holder = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port().to_string();

    // The broker is refused the port.
    let output = run_cli_within(&["broker", "--host", "127.0.0.1", "--port", &port, "--pin-cores", "false"], WAIT)
        .unwrap_or_else(|output| panic!("the broker started on a taken port: {output:?}"));
    let stderr = refused(&output);
    assert!(stderr.starts_with(&format!("ringmq broker: cannot listen on 127.0.0.1:{port}: ")), "{stderr}");
}

#[test]
fn a_port_taken_by_another_broker_exits_2_naming_the_address() {
    // Goal: a second broker started on the port of a running broker must not start, as with any
    // other program holding the port; otherwise the kernel splits new connections between two
    // brokers that share no queues.
    // Method: start a broker, then a second one on the same host and port; it must exit with
    // status 2 within the deadline.
    // Regression: every shard's listener sets SO_REUSEPORT, which once let a second broker bind
    // the same port and run; the port is now probed with a plain bind first.
    let first = BrokerProcess::start(&["--shards", "1"]);
    let port = first.port().to_string();

    // The second broker must be refused.
    let output = run_cli_within(&["broker", "--host", "127.0.0.1", "--port", &port, "--pin-cores", "false"], WAIT)
        .unwrap_or_else(|output| {
            panic!(
                "a second broker started on port {port}, which a broker already listens on; its stdout: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
    let stderr = refused(&output);
    assert!(stderr.starts_with(&format!("ringmq broker: cannot listen on 127.0.0.1:{port}: ")), "{stderr}");
}

// ----- helpers -----

/// A config file in the temporary directory, removed on drop.
struct ConfigFile {
    /// Where it is.
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `text` to a new file.
    fn new(text: &str) -> ConfigFile {
        let stamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("ringmq-test-config-{}-{stamp}.conf", std::process::id()));
        std::fs::write(&path, text).unwrap();
        ConfigFile { path }
    }

    /// Its path, as text for the command line.
    fn path(&self) -> &str {
        self.path.to_str().expect("temporary paths are UTF-8 here")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        // Already gone is fine: a test may delete it to make it missing.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asserts the broker refused to start: exit status 2 and nothing on stdout (it never got to
/// "listening on"); returns stderr.
fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "", "stderr: {stderr}");
    stderr
}

/// Asserts a client at `addr` can declare a queue, publish to it and consume.
fn assert_serves(addr: &str) {
    let connection = Connection::connect(addr, ConnectOptions::default()).unwrap();
    connection.declare_queue("config-check", QueueOptions::default(), &[]).unwrap();
    let publisher = connection.publisher().unwrap();
    let message = Message {
        routing_key: Bytes::from_static(b"config-check"),
        body: Bytes::from_static(b"ok"),
        ..Message::default()
    };
    publisher.publish("", message).unwrap();
    let summary = publisher.wait_for_confirms().unwrap();
    assert_eq!(summary.stored, 1, "{summary:?}");
    let mut consumer = connection.subscribe("config-check", 1).unwrap();
    let delivery = consumer.recv_timeout(WAIT).unwrap().expect("the subscription ended");
    assert_eq!(delivery.message.body, Bytes::from_static(b"ok"));
    consumer.ack(delivery.tag).unwrap();
    consumer.cancel().unwrap();
    connection.close().unwrap();
}

#[test]
fn a_broker_restarted_at_once_gets_its_port_back() {
    // Goal: connections a stopped broker leaves in TIME_WAIT must not keep a restarted broker
    // off its port (a busy-port check once mistook them for a listener).
    // Method: serve a client, kill the broker by PID, start a new one on the same port at once.
    let port = free_port();
    let port_text = port.to_string();
    let args = ["--host", "127.0.0.1", "--port", port_text.as_str(), "--pin-cores", "false"];
    let mut first = BrokerProcess::start_exact(&args, port).unwrap();
    // A served client leaves closed connections behind.
    assert_serves(&first.addr());
    first.kill();
    // The restart gets the same port and serves.
    let second = BrokerProcess::start_exact(&args, port).unwrap();
    assert_serves(&second.addr());
}

/// Waits until `broker`'s output contains `line`.
fn wait_for_line(broker: &BrokerProcess, line: &str) {
    eventually(line, WAIT, || if broker.output().contains(line) { Ok(()) } else { Err(broker.output()) });
}
