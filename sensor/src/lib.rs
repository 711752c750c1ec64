//! `sensor`: a network flow sensor. The modules follow the data: [`kernel`] (eBPF ingest)
//! and [`capture`] (packets) → [`flow`] (aggregate, merge) → [`pipeline`] (the tee) →
//! [`store`] (SQLite), [`enrich`], [`ipfix`] and [`detect`] → [`export`] (queries of the
//! store).
pub mod capture;
pub mod check;
pub mod config;
pub mod detect;
pub mod enrich;
pub mod export;
pub mod flow;
pub mod gate;
pub mod ipfix;
pub mod kernel;
pub mod log_throttle;
pub mod metrics;
pub mod pace;
pub mod pipeline;
pub mod replay;
pub mod run;
pub mod store;
pub mod systemd;
