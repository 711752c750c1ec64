//! `sensor`: a network flow sensor. The modules follow the data:
//! [`kernel`] (eBPF ingest) → [`flow`] (aggregate) → [`store`] (SQLite) → [`export`].
pub mod capture;
pub mod check;
pub mod config;
pub mod enrich;
pub mod export;
pub mod flow;
pub mod ipfix;
pub mod kernel;
pub mod log_throttle;
pub mod metrics;
pub mod replay;
pub mod run;
pub mod store;
pub mod systemd;
