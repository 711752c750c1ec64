//! The enrichment benchmark: `sensor enrich` on the seeds' workload (10,000 real public
//! addresses) with the real GeoLite2 City and ASN databases, reverse DNS against a dnsmasq
//! on loopback (PTR records for half of the addresses, NXDOMAIN for the rest) and Cymru
//! through the loopback replay server, median wall time of three; then the MaxMind lookups
//! alone against a bare maxminddb loop (`cargo bench --bench geo_lookup`).
use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, measure::median_secs, run};

const DATA: &str = "../shared/data";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(dir: &Path, ips: &[String]) -> Result<(Killed, String)> {
    let hosts = dir.join("bench.hosts");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&hosts)?);
    for (i, ip) in ips.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        writeln!(f, "{ip} host-{i}.bench.example")?;
    }
    f.flush()?;
    drop(f);
    // UDP and TCP on the same port must both be free (readiness is probed over TCP):
    // probe both, as the tests' `free_port` does.
    let port = loop {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    };
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--user=root",
            "--pid-file=",
            "--local=/in-addr.arpa/",
            "--local=/ip6.arpa/",
            "--cache-size=0",
            &format!("--addn-hosts={}", hosts.display()),
            "--log-facility=/dev/null",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dnsmasq (cargo xtask setup installs dnsmasq-base)")?;
    let child = Killed(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("dnsmasq did not start on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

fn cymru() -> Result<(Killed, String)> {
    let mut child = Command::new("target/release/cymru-replay")
        .args([
            "--listen",
            "127.0.0.1:0",
            "--data",
            &format!("{DATA}/cymru"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cymru-replay")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .with_context(|| format!("cymru-replay said {line:?}"))?
        .to_string();
    Ok((Killed(child), addr))
}

pub fn enrich() -> Result<()> {
    let list = PathBuf::from(format!("{DATA}/ips/ips-bench-10k.txt"));
    let city = format!("{DATA}/mmdb/GeoLite2-City-20191224.mmdb");
    let asn = format!("{DATA}/mmdb/ip-location-db-asn.mmdb");
    for p in [list.to_str().unwrap_or_default(), &city, &asn] {
        if !Path::new(p).is_file() {
            eprintln!("xtask: *** SKIPPED enrich benchmark: {p} not found ***");
            return Ok(());
        }
    }
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "sensor",
        "-p",
        "sensor-tests",
        "--bin",
        "sensor",
        "--bin",
        "cymru-replay",
    ]))?;
    let ips: Vec<String> = std::fs::read_to_string(&list)?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir)?;
    let (_dns, dns_addr) = dnsmasq(&dir, &ips)?;
    let (_cymru, cymru_addr) = cymru()?;
    let out = dir.join("enrich.jsonl");
    let prom = dir.join("enrich.prom");
    let full = median_secs(|| {
        let st = Command::new("target/release/sensor")
            .args([
                "enrich", "--mmdb", &city, "--mmdb", &asn, "--dns", &dns_addr,
            ])
            .args(["--threat-dir", &format!("{DATA}/threat-intel")])
            .args(["--cymru", &cymru_addr, "--metrics-on-exit"])
            .arg(&prom)
            .arg(&list)
            .stdout(std::fs::File::create(&out)?)
            .env("SENSOR_LOG", "warn")
            .status()?;
        if !st.success() {
            bail!("sensor enrich failed");
        }
        Ok(())
    })?;
    let text = std::fs::read_to_string(&out)?;
    let rows = text.lines().count();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let metrics = std::fs::read_to_string(&prom).unwrap_or_default();
    let series = |s: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(s)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    println!(
        "enrich: {rows} addresses (ips-bench-10k) with GeoLite2-City + ip-location-db-asn, \
         the threat lists, rDNS via dnsmasq, Cymru via the replay server: {full:.2} s wall (median of 3; \
         target <= 2 s); {} with a country, {} with an ASN ({} from Cymru), {} with a \
         hostname, {} rDNS NXDOMAIN, {} on a threat list",
        count("\"country\":\""),
        count("\"asn\":") - count("\"asn\":null"),
        series("sensor_enrich_lookups_total{result=\"found\",source=\"cymru\"}"),
        count("\"hostname\":\""),
        count("\"rdns\":\"not_found\""),
        count("\"threat\":[")
    );
    let no_rdns = median_secs(|| {
        let st = Command::new("target/release/sensor")
            .args(["enrich", "--no-rdns", "--mmdb", &city, "--mmdb", &asn])
            .arg(&list)
            .stdout(Stdio::null())
            .env("SENSOR_LOG", "warn")
            .status()?;
        if !st.success() {
            bail!("sensor enrich failed");
        }
        Ok(())
    })?;
    println!("enrich: the same with the databases only (--no-rdns, no Cymru): {no_rdns:.2} s wall");
    run(cargo().args(["bench", "-p", "sensor", "--bench", "geo_lookup"]))?;
    Ok(())
}
