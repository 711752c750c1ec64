//! IPFIX export of finished flows to collectors (nfcapd, nfacctd, GoFlow2...).
pub mod encode;
pub mod exporter;
