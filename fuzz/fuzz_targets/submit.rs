//! Any bytes as a `SubmitRequest`: decoding and validating never panic; an accepted request
//! passes the core's own checks; a refusal names a field of the request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use qm_proto::convert::submit_from;
use qm_proto::v1::SubmitRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = SubmitRequest::decode(data) else { return };
    match submit_from(&req) {
        Ok(specs) => {
            for spec in &specs {
                assert!(qm_core::limits::validate_job(spec).is_ok(), "accepted but invalid: {spec:?}");
            }
        }
        Err(e) => assert!(e.field().starts_with("jobs") || e.field() == "request_id", "{e}"),
    }
});
