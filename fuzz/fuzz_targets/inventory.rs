//! Any bytes as an agent's `NodeInventory`: decoding and validating never panic; an accepted
//! inventory passes the core's own checks and converts back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qm_proto::convert::{inventory_from, inventory_to};
use qm_proto::v1::NodeInventory;

fuzz_target!(|data: &[u8]| {
    let Ok(inv) = NodeInventory::decode(data) else { return };
    if let Ok(spec) = inventory_from(&inv) {
        assert!(qm_core::limits::validate_node(&spec).is_ok());
        assert_eq!(inventory_from(&inventory_to(&spec)).unwrap(), spec);
    }
});
