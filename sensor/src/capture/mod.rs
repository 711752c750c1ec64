//! Packet views: live capture and capture files, through one parser.
pub mod batch;
pub mod block;
pub mod file;
pub mod filter;
pub mod live;
pub mod parse;
pub mod ring;
pub mod tunnel;
