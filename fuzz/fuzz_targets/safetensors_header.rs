//! Feeds arbitrary bytes to the safetensors reader's validation, exactly as
//! `SafetensorsFile::open` runs it on a mapped file: it must return a header
//! or a typed error, never panic, and never allocate what the input claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_engine::safetensors::HeaderPlan;
use theta_engine::safetensors::header;

fuzz_target!(|data: &[u8]| {
    if let Ok((header_len, parsed)) = header::parse_file(data) {
        // What is accepted is a consistent layout of the data section...
        let mut cursor = 0;
        for e in &parsed.entries {
            assert_eq!(e.begin, cursor);
            assert_eq!(Some(e.end - e.begin), e.info.checked_nbytes());
            cursor = e.end;
        }
        assert_eq!(8 + header_len as u64 + cursor, data.len() as u64);
        // ...which a writer can plan from the stored header bytes alone.
        let plan = HeaderPlan::from_header_bytes(&data[8..8 + header_len])
            .expect("an accepted header is a valid plan");
        assert_eq!(plan.file_len(), data.len() as u64);
    }
    // The header alone, with the data section's length unknown.
    let _ = header::parse(data, None);
});
