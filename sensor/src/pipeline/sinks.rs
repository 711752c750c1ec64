//! The tee: every finished flow goes to every sink.
use crate::{
    detect::DetectQueue, enrich::queue::EnrichQueue, flow::FlowRecord, ipfix::Tee,
    store::writer::WriterHandle,
};

/// The sinks' inputs, cloned into every thread that finishes flows (the kernel reader,
/// the merge, the packet tables).
///
/// Full-queue policy, per sink and never shared: [`Sinks::offer`] (live) waits for none
/// of them; a full writer queue drops the flow for the store
/// (`sensor_store_dropped_rows_total`), a full collector queue for that collector
/// (`sensor_ipfix_dropped_records_total{reason="queue"}`), and a full enrichment queue
/// sheds the address (`sensor_enrich_shed_addresses_total`), a full detections queue drops
/// the record for the detectors (`sensor_detect_dropped_records_total`), each counted and none
/// holding back another. [`Sinks::send_many_blocking`] (replay of a file, which can wait) waits for
/// room in each instead, so nothing is dropped.
#[derive(Clone)]
pub struct Sinks {
    store: WriterHandle,
    enrich: Option<EnrichQueue>,
    ipfix: Tee,
    detect: Option<DetectQueue>,
}

impl Sinks {
    pub fn new(
        store: WriterHandle,
        enrich: Option<EnrichQueue>,
        ipfix: Tee,
        detect: Option<DetectQueue>,
    ) -> Self {
        Self {
            store,
            enrich,
            ipfix,
            detect,
        }
    }

    /// A flow's addresses, for enrichment (an amendment's were offered with its row).
    fn enrich(&self, f: &FlowRecord) {
        if let (Some(q), false) = (&self.enrich, f.amends) {
            q.offer(f.src.ip());
            q.offer(f.dst.ip());
        }
    }

    /// Without waiting (see the type's full-queue policy).
    pub fn offer(&self, f: FlowRecord) {
        self.enrich(&f);
        self.ipfix.offer(&f);
        if let Some(d) = &self.detect {
            d.offer(&f);
        }
        self.store.try_send(f);
    }

    /// Waiting while a sink's queue is full (replay).
    pub fn send_many_blocking(&self, flows: Vec<FlowRecord>) {
        for f in &flows {
            self.enrich(f);
        }
        self.ipfix.send_many_blocking(&flows);
        if let Some(d) = &self.detect {
            d.send_many_blocking(&flows);
        }
        self.store.send_many_blocking(flows);
    }
}
