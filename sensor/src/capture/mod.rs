//! Packet views: live capture and capture files, through one parser.
pub mod file;
pub mod live;
pub mod parse;
pub mod socket;
pub mod tunnel;
