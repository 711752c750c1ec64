//! The `sensor` command line: the binary's edge, where errors become messages and exit codes.
use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use sensor::{
    config::{Config, DEFAULT_DB_PATH, HookMode},
    export::{self, top},
    run,
};

#[derive(Parser)]
#[command(
    name = "sensor",
    version,
    about = "Network flow sensor: eBPF TCP connections into SQLite"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to the kernel and record flows until SIGINT/SIGTERM. Needs root or
    /// CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN.
    Run {
        /// SQLite database for flows [default: /var/lib/sensor/flows.db, or the config's db_path].
        #[arg(long)]
        db: Option<PathBuf>,
        /// TOML config file [default: /etc/sensor/sensor.toml if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Which kernel hooks to attach [default: auto, or the config's hooks].
        #[arg(long, value_enum)]
        hooks: Option<HookMode>,
        /// Capture packets on this interface (repeatable; `all` for every interface that is
        /// up) [default: the config's interfaces].
        #[arg(long = "interface", value_name = "IF", conflicts_with = "no_capture")]
        interfaces: Vec<String>,
        /// No packet capture: the kernel's connection view only.
        #[arg(long)]
        no_capture: bool,
        /// Without the attribution hooks (accept, datagram sockets): accepted connections
        /// are named by their listener's maker, UDP/ICMP flows by no process.
        #[arg(long)]
        no_attribution: bool,
        /// Serve /metrics and /healthz here ("" for nowhere) [default: 127.0.0.1:9464].
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        /// Write every metric's final value to FILE when stopping.
        #[arg(long, value_name = "FILE")]
        metrics_on_exit: Option<PathBuf>,
        /// Also export finished flows as IPFIX to udp://HOST:PORT or tcp://HOST:PORT
        /// (repeatable; added to the config's `[ipfix] collectors`).
        #[arg(long = "ipfix", value_name = "URL")]
        ipfix: Vec<String>,
        /// No detections (port scans, brute force, exfiltration, beacons, threat contacts).
        #[arg(long)]
        no_detect: bool,
    },
    /// Probe this host for what `sensor run` needs: kernel, BTF, cgroup v2, capabilities,
    /// each hook (attached for real, then detached), packet capture, process owners in
    /// /proc, the database, the metrics address, MaxMind files (verified) and threat lists.
    /// Exit 0 when ready (warnings allowed), 1 when a required check fails, 77 without the
    /// capabilities `sensor run` needs.
    Check {
        /// TOML config file [default: /etc/sensor/sensor.toml if it exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// SQLite database to probe [default: /var/lib/sensor/flows.db, or the config's db_path].
        #[arg(long)]
        db: Option<PathBuf>,
        /// table: aligned columns and a summary line; json: one array of {check, verdict,
        /// detail}, verdict "ok", "warn" or "FAIL".
        #[arg(long, value_enum, default_value = "table")]
        format: sensor::check::Format,
    },
    /// Read pcap/pcapng files into flows, timed by their packets. Needs no privileges.
    ///
    /// Every file is read, whatever happens to the one before. Exit status: 0 all read,
    /// stored and looked up; 65 some input could not be read in full (a damaged or
    /// unreadable file, a link type not decoded, packets the parser gave up on: each named),
    /// what was read is stored; 74 flows or enrichment that were read could not be kept
    /// (rows dropped or failed, addresses shed); 1 nothing was done (database, config).
    Replay {
        /// SQLite database for flows [default: /var/lib/sensor/flows.db, or the config's db_path].
        #[arg(long)]
        db: Option<PathBuf>,
        /// TOML config file (timeouts, max_flows...).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Don't look up the flows' addresses (geo, ASN, reverse DNS, threat lists).
        #[arg(long)]
        no_enrich: bool,
        /// Don't decapsulate tunnels (the config's `decap = false`): outer flows only.
        #[arg(long)]
        no_decap: bool,
        /// Write every metric's final value to FILE when done.
        #[arg(long, value_name = "FILE")]
        metrics_on_exit: Option<PathBuf>,
        /// Also export the flows as IPFIX to udp://HOST:PORT or tcp://HOST:PORT
        /// (repeatable; added to the config's `[ipfix] collectors`).
        #[arg(long = "ipfix", value_name = "URL")]
        ipfix: Vec<String>,
        /// No detections (by default they run on the flows, timed by their packets).
        #[arg(long)]
        no_detect: bool,
        /// Capture files, replayed in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Enrich a list of IP addresses (one a line, FILE or - for stdin): geo, ASN, hostname
    /// and threat lists, one JSON object a line on stdout.
    ///
    /// Exit status: 0 all answered; 65 some lines were skipped (not addresses, not UTF-8,
    /// longer than 4096 bytes), the rest enriched; 74 some network lookups were not made
    /// (reverse DNS or Cymru was not answering: their fields are empty, "rdns" says
    /// "shed"), the rest answered; 1 a named source (--mmdb, --threat-dir) can't be read,
    /// or output failed; 2 bad arguments or config.
    #[command(verbatim_doc_comment)]
    Enrich {
        /// MaxMind-format database (City/Country/ASN), repeatable [default: the config's
        /// enrich.mmdb_paths, else every .mmdb in /var/lib/GeoIP and /usr/share/GeoIP].
        #[arg(long = "mmdb", value_name = "PATH")]
        mmdb: Vec<PathBuf>,
        /// Directory of threat lists (FireHOL .netset/.ipset, plain IP/CIDR files).
        #[arg(long, value_name = "DIR")]
        threat_dir: Option<PathBuf>,
        /// No reverse DNS.
        #[arg(long)]
        no_rdns: bool,
        /// DNS server for reverse lookups, address:port (repeatable) [default: resolv.conf's].
        #[arg(long = "dns", value_name = "ADDR")]
        dns: Vec<String>,
        /// Ask Team Cymru's bulk whois at ADDR (host:port, e.g. whois.cymru.com:43) for
        /// addresses the databases have no ASN for. Sends the addresses to that server.
        #[arg(long, value_name = "ADDR")]
        cymru: Option<String>,
        /// TOML config file (its [enrich] section) [default: /etc/sensor/sensor.toml if it
        /// exists].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Write every metric's final value to FILE when done.
        #[arg(long, value_name = "FILE")]
        metrics_on_exit: Option<PathBuf>,
        /// The list of addresses, or - for stdin.
        file: PathBuf,
    },
    /// Print the flows in a database, oldest first, streamed (memory does not grow with
    /// the flows). Filters combine with AND; each matches either end of a flow.
    Export {
        /// SQLite database of flows.
        #[arg(long, default_value = DEFAULT_DB_PATH)]
        db: PathBuf,
        /// Output format; JSON keys are the CSV header's, numbers are numbers, missing
        /// values null.
        #[arg(long, value_enum, default_value = "csv")]
        format: export::Format,
        #[command(flatten)]
        filter: export::Filter,
    },
    /// The largest groups of flows: by remote address, country, ASN, process, unit, port or
    /// pair.
    ///
    /// Per flow, bytes = src_bytes + dst_bytes (IP layer) when a packet view counted the
    /// flow, else src_payload_bytes + dst_payload_bytes (kernel-only flows have no packet
    /// counts); packets = src_packets + dst_packets (0 when absent); flows = the count. The
    /// remote end is the end that is not an address of this host (its interface addresses
    /// now, and loopback); when neither or both are, the destination. The local end is the
    /// source when the source is local, else the destination. Columns: rank, the group,
    /// flows, packets, bytes, and the group's share of the --by total over every group.
    /// Ties rank by the group, ascending.
    Top {
        /// What to rank by.
        #[arg(long, value_enum, default_value = "bytes")]
        by: top::By,
        /// What to add flows up by.
        #[arg(long, value_enum, default_value = "remote-ip")]
        group: top::Group,
        /// Show this many groups (0: all).
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Output format (table whether or not stdout is a terminal).
        #[arg(long, value_enum, default_value = "table")]
        format: top::TopFormat,
        /// SQLite database of flows.
        #[arg(long, default_value = DEFAULT_DB_PATH)]
        db: PathBuf,
        /// Read every flow, not whole days from the rollup (same answer; for tests and
        /// benchmarks).
        #[arg(long)]
        no_rollup: bool,
        #[command(flatten)]
        filter: export::Filter,
    },
    /// The detectors' alerts, oldest first: kind, when, the source, its targets and ports,
    /// flows counted, score, the process, and the rule and figures that raised it
    /// (`detail`); `evidence` names the first flows (their start and 5-tuple).
    Alerts {
        /// SQLite database of flows.
        #[arg(long, default_value = DEFAULT_DB_PATH)]
        db: PathBuf,
        /// Only alerts active at or after TIME (last_seen_ms): RFC 3339 or that long before
        /// now (90s, 30m, 1h, 2d).
        #[arg(long, value_name = "TIME", value_parser = export::filter::parse_time)]
        since: Option<export::filter::TimeArg>,
        /// Only alerts of this kind.
        #[arg(long, value_enum)]
        kind: Option<export::alerts::KindArg>,
        /// Output format (table: aligned columns, whether or not stdout is a terminal).
        #[arg(long, value_enum, default_value = "table")]
        format: export::alerts::AlertFormat,
    },
    /// Rolls up every flow not rolled up yet, as `sensor run`'s writer does when idle
    /// (for benchmarks and tests).
    #[command(hide = true)]
    Rollup {
        /// SQLite database of flows.
        #[arg(long, default_value = DEFAULT_DB_PATH)]
        db: PathBuf,
    },
}

/// Ends a query command: a closed pipe (`| head`) is success, a bad database or
/// unwritable output a failure.
fn query_exit<T>(r: Result<T, export::ExportError>) -> ExitCode {
    match r {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A filter that no flow can match is a usage error, as clap's own are (exit 2).
fn check_filter(filter: &export::Filter) -> Result<(), ExitCode> {
    filter.validate().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn init_logging() {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};
    let filter = EnvFilter::try_from_env("SENSOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Repeated warnings of the noisy sources are rate-limited (see log_throttle).
    tracing_subscriber::registry()
        .with(filter)
        .with(sensor::log_throttle::ThrottleLayer)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
}

/// The config file, then `--db` over it; a bad config is exit status 2.
fn load_config(path: Option<&std::path::Path>, db: Option<PathBuf>) -> Result<Config, ExitCode> {
    let mut cfg = Config::load(path)
        .and_then(|mut c| c.apply_env().map(|()| c))
        .map_err(|e| {
            tracing::error!("{e}");
            ExitCode::from(2)
        })?;
    if let Some(db) = db {
        cfg.db_path = db;
    }
    Ok(cfg)
}

/// A tokio runtime with I/O and timers; failing to start one is exit status 1.
fn runtime(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        tracing::error!("starting the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `--ipfix URL`s, checked (exit 2 naming the URL) and added to the config's collectors.
fn add_collectors(cfg: &mut sensor::config::Config, urls: Vec<String>) -> Result<(), ExitCode> {
    for url in urls {
        if let Err(e) = sensor::ipfix::exporter::Collector::parse(&url) {
            tracing::error!("--ipfix: {e}");
            return Err(ExitCode::from(2));
        }
        cfg.ipfix.collectors.push(url);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Run {
            db,
            config,
            hooks,
            interfaces,
            no_capture,
            no_attribution,
            metrics_addr,
            metrics_on_exit,
            ipfix,
            no_detect,
        } => {
            let mut cfg = match load_config(config.as_deref(), db) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if no_detect {
                cfg.detect.enabled = false;
            }
            if let Some(h) = hooks {
                cfg.hooks = h;
            }
            if !interfaces.is_empty() {
                cfg.interfaces = interfaces;
            }
            if no_capture {
                cfg.interfaces.clear();
            }
            if no_attribution {
                cfg.attribution = false;
            }
            if let Err(code) = add_collectors(&mut cfg, ipfix) {
                return code;
            }
            if let Some(a) = metrics_addr {
                if !a.is_empty() && a.parse::<std::net::SocketAddr>().is_err() {
                    tracing::error!("--metrics-addr {a}: must be an address:port, or empty");
                    return ExitCode::from(2);
                }
                cfg.metrics_addr = a;
            }
            if metrics_on_exit.is_some() {
                cfg.metrics_on_exit = metrics_on_exit;
            }
            let rt = match runtime(&mut tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(run::run(cfg)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Check { config, db, format } => {
            let cfg = match load_config(config.as_deref(), db) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let report = sensor::check::check(&cfg);
            if let Err(e) = report.write(format, std::io::stdout().lock())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                tracing::error!("writing the report: {e}");
                return ExitCode::FAILURE;
            }
            ExitCode::from(report.exit_code())
        }
        Command::Replay {
            db,
            config,
            no_enrich,
            no_decap,
            metrics_on_exit,
            ipfix,
            no_detect,
            files,
        } => {
            let mut cfg = match load_config(config.as_deref(), db) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if no_detect {
                cfg.detect.enabled = false;
            }
            if no_enrich {
                cfg.enrich.enabled = false;
            }
            if no_decap {
                cfg.decap = false;
            }
            if let Err(code) = add_collectors(&mut cfg, ipfix) {
                return code;
            }
            if metrics_on_exit.is_some() {
                cfg.metrics_on_exit = metrics_on_exit;
            }
            match sensor::replay::replay(&cfg, &files) {
                Ok(report) => {
                    let s = &report.summary;
                    tracing::info!(
                        files = s.files,
                        packets = s.packets,
                        flows = s.flows,
                        not_ip = s.not_ip,
                        malformed = s.malformed,
                        unsupported_link = s.unsupported_link,
                        store_dropped = s.store_dropped,
                        enriched = s.enriched,
                        enrich_shed = s.enrich_shed,
                        alerts = s.alerts,
                        "replay done"
                    );
                    if !report.bad_files.is_empty() {
                        tracing::error!(
                            "{} of {} files could not be read in full (each named above); the \
                             flows read were kept",
                            report.bad_files.len(),
                            files.len()
                        );
                    }
                    if s.malformed > 0 {
                        tracing::error!(
                            packets = s.malformed,
                            "packets the parser gave up on were skipped"
                        );
                    }
                    if s.store_dropped > 0 || s.enrich_shed > 0 {
                        tracing::error!(
                            rows = s.store_dropped,
                            addresses = s.enrich_shed,
                            "flows or enrichment that were read could not be kept"
                        );
                    }
                    ExitCode::from(report.exit_code())
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Enrich {
            mmdb,
            threat_dir,
            no_rdns,
            dns,
            cymru,
            config,
            metrics_on_exit,
            file,
        } => {
            let mut cfg = match load_config(config.as_deref(), None) {
                Ok(c) => c.enrich,
                Err(code) => return code,
            };
            if !mmdb.is_empty() {
                cfg.mmdb_paths = mmdb;
            }
            if threat_dir.is_some() {
                cfg.threat_dir = threat_dir;
            }
            if no_rdns {
                cfg.rdns = false;
            }
            if !dns.is_empty() {
                for d in &dns {
                    if d.parse::<std::net::SocketAddr>().is_err() {
                        tracing::error!("--dns {d}: must be an address:port, e.g. 127.0.0.1:53");
                        return ExitCode::from(2);
                    }
                }
                cfg.dns_servers = dns;
            }
            if let Some(server) = cymru {
                cfg.cymru = true;
                cfg.cymru_server = server;
            }
            let rt = match runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let metrics = sensor::metrics::Metrics::new();
            let out = std::io::stdout().lock();
            let result = rt.block_on(sensor::enrich::batch::run(
                &cfg,
                &file,
                out,
                std::sync::Arc::clone(&metrics),
            ));
            metrics.write_on_exit(metrics_on_exit.as_deref());
            match result {
                Ok(s) => {
                    tracing::info!(
                        lines = s.lines,
                        distinct = s.distinct,
                        bad_lines = s.bad_lines,
                        shed_lookups = s.shed_lookups,
                        seconds = format!("{:.3}", s.seconds),
                        "enrich done"
                    );
                    if s.shed_lookups > 0 {
                        // EX_IOERR: answers are incomplete, a network source was down.
                        tracing::warn!(
                            "{} network lookups were not made (source not answering): exit 74",
                            s.shed_lookups
                        );
                        ExitCode::from(74)
                    } else if s.bad_lines > 0 {
                        // EX_DATAERR: the good lines were enriched, some lines were not
                        // addresses.
                        ExitCode::from(65)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(sensor::enrich::batch::BatchError::Write(e))
                    if e.kind() == std::io::ErrorKind::BrokenPipe =>
                {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Export { db, format, filter } => {
            if let Err(code) = check_filter(&filter) {
                return code;
            }
            query_exit(export::export(
                &db,
                &filter,
                format,
                std::io::stdout().lock(),
            ))
        }
        Command::Top {
            by,
            group,
            limit,
            format,
            db,
            no_rollup,
            filter,
        } => {
            if let Err(code) = check_filter(&filter) {
                return code;
            }
            let opts = top::TopOptions {
                by,
                group,
                limit,
                format,
                filter,
                rollup: !no_rollup,
            };
            let local = top::LocalAddrs::of_this_host();
            query_exit(top::top(&db, &opts, &local, std::io::stdout().lock()))
        }
        Command::Alerts {
            db,
            since,
            kind,
            format,
        } => {
            let q = sensor::store::alerts::AlertQuery {
                since_ms: since.map(|t| t.ms),
                kind: kind.map(|k| k.as_str().to_string()),
            };
            query_exit(export::alerts::alerts(
                &db,
                &q,
                format,
                std::io::stdout().lock(),
            ))
        }
        Command::Rollup { db } => {
            let local = top::LocalAddrs::of_this_host();
            let result = sensor::store::rollup::catch_up_db(&db, &local);
            match result {
                Ok(n) => {
                    eprintln!("rolled up {n} ids");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sensor: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
