//! MaxMind lookups, one core: `GeoDbs::lookup` (geo + ASN of an address) against a bare
//! maxminddb loop doing the same City and ASN lookups with the crate's full `geoip2` records,
//! in the same run, over the same 10k addresses.
//!
//! `cargo bench -p sensor --bench geo_lookup`. Needs the shared data (`../shared/data`);
//! without it, prints SKIP and exits 0. Prints medians of several rounds; the machines are
//! noisy, so the ratio is the figure to compare.
use std::{
    hint::black_box,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use maxminddb::{Reader, geoip2};
use sensor::enrich::geo::GeoDbs;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
const ROUNDS: usize = 5;
const PASSES: usize = 10;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The baseline: lookup and full decode of both records, as a caller of the crate would.
fn bare_loop<S: AsRef<[u8]>>(city: &Reader<S>, asn: &Reader<S>, ips: &[IpAddr]) -> usize {
    let mut found = 0;
    for &ip in ips {
        if let Ok(r) = city.lookup(ip)
            && let Ok(Some(c)) = r.decode::<geoip2::City>()
        {
            found += usize::from(c.country.iso_code.is_some());
            black_box(c);
        }
        if let Ok(r) = asn.lookup(ip)
            && let Ok(Some(a)) = r.decode::<geoip2::Asn>()
        {
            found += usize::from(a.autonomous_system_number.is_some());
            black_box(a);
        }
    }
    found
}

fn geodbs_loop(dbs: &GeoDbs, ips: &[IpAddr]) -> usize {
    let mut found = 0;
    for &ip in ips {
        let (g, a) = dbs.lookup(ip);
        found += usize::from(g.as_ref().is_some_and(|g| g.country.is_some()));
        found += usize::from(a.is_some());
        black_box((g, a));
    }
    found
}

fn main() {
    let ips_file = Path::new(SHARED).join("ips/ips-bench-10k.txt");
    let city_file = Path::new(SHARED).join("mmdb/GeoLite2-City-20191224.mmdb");
    let asn_file = Path::new(SHARED).join("mmdb/ip-location-db-asn.mmdb");
    for f in [&ips_file, &city_file, &asn_file] {
        if !f.is_file() {
            println!("geo_lookup: SKIP: {} is missing", f.display());
            return;
        }
    }
    let ips: Vec<IpAddr> = match std::fs::read_to_string(&ips_file) {
        Ok(text) => text.lines().filter_map(|l| l.trim().parse().ok()).collect(),
        Err(e) => {
            println!("geo_lookup: SKIP: reading {}: {e}", ips_file.display());
            return;
        }
    };

    // Both sides read the same files the same way (memory-mapped).
    // SAFETY: the shared data files are read-only and not modified while mapped.
    let (city, asn) = match unsafe { (Reader::open_mmap(&city_file), Reader::open_mmap(&asn_file)) }
    {
        (Ok(c), Ok(a)) => (c, a),
        (Err(e), _) | (_, Err(e)) => panic!("opening the databases: {e}"),
    };
    let dbs = GeoDbs::open(&[PathBuf::from(&city_file), asn_file.clone()])
        .unwrap_or_else(|e| panic!("opening the databases: {e}"));

    // Warm the page cache and check both sides see the same data.
    let bare_found = bare_loop(&city, &asn, &ips);
    let geodbs_found = geodbs_loop(&dbs, &ips);
    assert_eq!(
        bare_found, geodbs_found,
        "the two loops found different answers"
    );

    let n = (ips.len() * PASSES) as f64;
    let mut bare_rates = Vec::new();
    let mut geodbs_rates = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..PASSES {
            black_box(bare_loop(&city, &asn, black_box(&ips)));
        }
        bare_rates.push(n / t.elapsed().as_secs_f64());

        let t = Instant::now();
        for _ in 0..PASSES {
            black_box(geodbs_loop(&dbs, black_box(&ips)));
        }
        geodbs_rates.push(n / t.elapsed().as_secs_f64());
    }
    let (bare, geodbs) = (median(bare_rates), median(geodbs_rates));
    println!(
        "geo_lookup: GeoDbs::lookup {:.0} k lookups/s; bare maxminddb City+ASN decode {:.0} k/s \
         (median of {ROUNDS} rounds x {PASSES} passes x {} addresses); ratio {:.2}",
        geodbs / 1e3,
        bare / 1e3,
        ips.len(),
        geodbs / bare
    );
}
