//! Aggregate: socket events in, finished flows out.
pub mod clock;
pub mod dgram;
pub mod listeners;
pub mod local;
pub mod merge;
pub mod packets;
pub mod record;
pub mod table;
pub mod tcp;
pub mod unit;

pub use clock::BootClock;
pub use listeners::Listeners;
pub use record::{EndReason, FlowRecord, Owner, Tunnel};
pub use table::{FlowTable, TableConfig};
pub use tcp::TcpTracker;
