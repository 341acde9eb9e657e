//! The header parser against arbitrary input: arbitrary bytes, and
//! JSON-shaped headers with hostile numbers, names and dtypes. It must never
//! panic, and whatever it accepts must be a consistent layout.

use proptest::prelude::*;
use theta_engine::DType;
use theta_engine::safetensors::header::{self, Header};

/// Checks the invariants of an accepted header.
fn check_accepted(h: &Header, data_len: Option<u64>) {
    let mut cursor = 0;
    for e in &h.entries {
        assert_eq!(e.begin, cursor, "entries tile the data section");
        assert_eq!(Some(e.end - e.begin), e.info.checked_nbytes());
        cursor = e.end;
    }
    if let Some(n) = data_len {
        assert_eq!(cursor, n);
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..40).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("1e3".to_string()),
        Just("null".to_string()),
    ]
}

fn dtype() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(DType::ALL.to_vec()).prop_map(|d| format!("{:?}", d.name())),
        Just("\"F33\"".to_string()),
        Just("\"f32\"".to_string()),
        Just("32".to_string()),
    ]
}

fn entry() -> impl Strategy<Value = String> {
    (
        "[ab_]{0,2}|__metadata__",
        dtype(),
        prop::collection::vec(number(), 0..4),
        number(),
        number(),
        any::<bool>(),
    )
        .prop_map(|(name, dtype, shape, b, e, extra)| {
            let extra = if extra { "" } else { ",\"x\":1" };
            format!(
                "\"{name}\":{{\"dtype\":{dtype},\"shape\":[{}],\"data_offsets\":[{b},{e}]{extra}}}",
                shape.join(",")
            )
        })
}

fn metadata() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"__metadata__\":{\"k\":\"v\"}".to_string()),
        Just("\"__metadata__\":{\"k\":1}".to_string()),
        Just("\"__metadata__\":null".to_string()),
        Just("\"__metadata__\":{}".to_string()),
    ]
}

fn header_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![4 => entry(), 1 => metadata()], 0..5),
        0usize..4,
    )
        .prop_map(|(items, cut)| {
            let text = format!("{{{}}}", items.join(","));
            // Sometimes cut the text short, on a char boundary.
            let mut end = text.len().saturating_sub(cut * 3);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok((len, h)) = header::parse_file(&bytes) {
            prop_assert!(8 + len <= bytes.len());
            check_accepted(&h, Some((bytes.len() - 8 - len) as u64));
        }
    }

    #[test]
    fn arbitrary_header_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..64),
        data_len in prop::option::of(0u64..64),
    ) {
        if let Ok(h) = header::parse(&bytes, data_len) {
            check_accepted(&h, data_len);
        }
    }

    #[test]
    fn json_shaped_headers_never_panic(
        text in header_text(),
        data_len in prop::option::of(prop_oneof![0u64..64, Just(u64::MAX)]),
    ) {
        if let Ok(h) = header::parse(text.as_bytes(), data_len) {
            check_accepted(&h, data_len);
        }
        // The same through the whole-file entry point, with a data section.
        let mut file = (text.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(text.as_bytes());
        file.resize(file.len() + data_len.unwrap_or(0).min(64) as usize, 0);
        let _ = header::parse_file(&file);
    }
}
