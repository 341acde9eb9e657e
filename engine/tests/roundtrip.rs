//! Property tests for safetensors I/O with real files: random tensor sets
//! written and read back, byte-exact re-serialization of files from other
//! writers, sharded output equal to the single file, and writer misuse.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use theta_engine::checkpoint;
use theta_engine::safetensors::{
    HeaderPlan, SafetensorsFile, SafetensorsWriter, ShardPlan, ShardedWriter,
};
use theta_engine::synth::mix64;
use theta_engine::{DType, Error, Metadata, TensorInfo};

/// A tensor with its bytes.
#[derive(Clone, Debug)]
struct Tensor {
    info: TensorInfo,
    data: Vec<u8>,
}

fn bytes_for(info: &TensorInfo, seed: u64) -> Vec<u8> {
    (0..info.nbytes())
        .map(|i| mix64(seed ^ i.wrapping_mul(0x9e37_79b9)) as u8)
        .collect()
}

/// Names that need JSON escaping now and then (quotes, backslashes,
/// control characters, non-ASCII), never `__metadata__`.
fn name() -> impl Strategy<Value = String> {
    "[a-z0-9._/\"\\\\\u{1} é-]{1,10}"
}

fn tensors() -> impl Strategy<Value = Vec<Tensor>> {
    let one = (
        prop::sample::select(DType::ALL.to_vec()),
        prop::collection::vec(0u64..5, 0..4),
        any::<u64>(),
    );
    prop::collection::btree_map(name(), one, 0..7)
        .prop_map(|m| {
            m.into_iter()
                .map(|(name, (dtype, shape, seed))| {
                    let info = TensorInfo::new(name, dtype, shape);
                    let data = bytes_for(&info, seed);
                    Tensor { info, data }
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("[a-z_\"\\\\ é]{0,8}", "[ -~é\n]{0,12}", 0..4)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>())
        .prop_shuffle()
}

fn infos(ts: &[Tensor]) -> Vec<TensorInfo> {
    ts.iter().map(|t| t.info.clone()).collect()
}

/// Writes `ts` with a planned header, each tensor in parts of `part` bytes.
fn write(path: &Path, ts: &[Tensor], meta: &Metadata, part: usize) {
    let plan = HeaderPlan::new(&infos(ts), meta).expect("plan");
    let mut w = SafetensorsWriter::create(path, plan).expect("create");
    for t in ts {
        if part == 0 {
            w.write_tensor(&t.info.name, &t.data).expect("write_tensor");
        } else {
            for chunk in t.data.chunks(part) {
                w.write_part(&t.info.name, chunk).expect("write_part");
            }
        }
    }
    w.finish().expect("finish");
}

/// Re-writes `file` with its own layout, tensors in byte order.
fn rewrite(file: &SafetensorsFile, path: &Path) {
    let mut w = SafetensorsWriter::create(path, HeaderPlan::of_file(file)).expect("create");
    for i in 0..file.tensors().len() {
        let v = file.view(i);
        w.write_tensor(&v.info.name, v.data).expect("write");
    }
    w.finish().expect("finish");
}

/// Checks that `file` holds exactly `ts` and `meta`. With `ordered`, also
/// the order; otherwise only non-empty tensors are in a defined (byte)
/// order, as empty ones share their offset with a neighbour.
fn assert_same(file: &SafetensorsFile, ts: &[Tensor], meta: &Metadata, ordered: bool) {
    assert_eq!(file.metadata(), meta);
    if ordered {
        assert_eq!(file.tensors(), infos(ts).as_slice());
    } else {
        let sorted = |v: Vec<TensorInfo>| -> BTreeMap<String, TensorInfo> {
            v.into_iter().map(|t| (t.name.clone(), t)).collect()
        };
        assert_eq!(sorted(file.tensors().to_vec()), sorted(infos(ts)));
        let nonempty = |v: Vec<TensorInfo>| -> Vec<String> {
            v.into_iter()
                .filter(|t| t.nbytes() > 0)
                .map(|t| t.name)
                .collect()
        };
        assert_eq!(nonempty(file.tensors().to_vec()), nonempty(infos(ts)));
    }
    for t in ts {
        let v = file.tensor(&t.info.name).expect("tensor present");
        assert_eq!(v.info, &t.info);
        assert_eq!(v.data, t.data.as_slice(), "bytes of {}", t.info.name);
    }
}

/// How another writer might lay a header out.
#[derive(Clone, Debug)]
struct Style {
    /// Keys sorted (as Python's safetensors writes them) or shuffled.
    sorted_keys: bool,
    /// Where `__metadata__` goes: first, last, or absent when empty.
    metadata_first: bool,
    /// Separator after `:` and `,` (compact, or pretty-ish).
    space: bool,
    /// Spaces padding the header after its JSON.
    pad: usize,
    /// Field order within entries.
    offsets_first: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..20,
        any::<bool>(),
    )
        .prop_map(
            |(sorted_keys, metadata_first, space, pad, offsets_first)| Style {
                sorted_keys,
                metadata_first,
                space,
                pad,
                offsets_first,
            },
        )
}

fn json(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Hand-writes a file whose data holds `ts` in the given order and whose
/// header lists them as `style` says.
fn foreign_file(path: &Path, ts: &[Tensor], meta: &Metadata, style: &Style, key_order: &[usize]) {
    let (colon, comma) = if style.space {
        (": ", ", ")
    } else {
        (":", ",")
    };
    let mut offsets = Vec::new();
    let mut at = 0u64;
    for t in ts {
        offsets.push((at, at + t.data.len() as u64));
        at += t.data.len() as u64;
    }
    let mut order: Vec<usize> = key_order.to_vec();
    if style.sorted_keys {
        order.sort_by(|&a, &b| ts[a].info.name.cmp(&ts[b].info.name));
    }
    let mut items: Vec<String> = order
        .iter()
        .map(|&i| {
            let t = &ts[i];
            let shape: Vec<String> = t.info.shape.iter().map(u64::to_string).collect();
            let (b, e) = offsets[i];
            let dtype = format!("\"dtype\"{colon}{}", json(t.info.dtype.name()));
            let shape = format!("\"shape\"{colon}[{}]", shape.join(comma));
            let offs = format!("\"data_offsets\"{colon}[{b}{comma}{e}]");
            let fields = if style.offsets_first {
                [offs, dtype, shape]
            } else {
                [dtype, shape, offs]
            };
            format!("{}{colon}{{{}}}", json(&t.info.name), fields.join(comma))
        })
        .collect();
    if !meta.is_empty() {
        let pairs: Vec<String> = meta
            .iter()
            .map(|(k, v)| format!("{}{colon}{}", json(k), json(v)))
            .collect();
        let m = format!("\"__metadata__\"{colon}{{{}}}", pairs.join(comma));
        if style.metadata_first {
            items.insert(0, m);
        } else {
            items.push(m);
        }
    }
    let mut header = format!("{{{}}}", items.join(comma));
    header.push_str(&" ".repeat(style.pad));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for t in ts {
        bytes.extend_from_slice(&t.data);
    }
    fs::write(path, bytes).expect("write foreign file");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn written_tensors_read_back_identical(
        ts in tensors(),
        meta in metadata(),
        part in 0usize..9,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.safetensors");
        write(&path, &ts, &meta, part);
        let file = SafetensorsFile::open(&path).expect("open");
        assert_same(&file, &ts, &meta, true);
        prop_assert_eq!(file.header_bytes().len() % 8, 0);
        let via_checkpoint = checkpoint::open(&path).expect("checkpoint");
        let expected = infos(&ts);
        prop_assert_eq!(via_checkpoint.tensors(), expected.as_slice());
    }

    #[test]
    fn rewrite_with_own_layout_is_byte_exact(ts in tensors(), meta in metadata()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("a.safetensors");
        let b = dir.path().join("b.safetensors");
        write(&a, &ts, &meta, 0);
        rewrite(&SafetensorsFile::open(&a).expect("open"), &b);
        prop_assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    }

    #[test]
    fn foreign_headers_are_reproduced_byte_for_byte(
        ts in tensors(),
        meta in metadata(),
        style in style(),
        key_order in Just((0..7).collect::<Vec<usize>>()).prop_shuffle(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = dir.path().join("foreign.safetensors");
        let b = dir.path().join("again.safetensors");
        let key_order: Vec<usize> = key_order.into_iter().filter(|&i| i < ts.len()).collect();
        foreign_file(&a, &ts, &meta, &style, &key_order);
        let file = SafetensorsFile::open(&a).expect("open foreign file");
        assert_same(&file, &ts, &meta, false);
        let stored = HeaderPlan::from_header_bytes(file.header_bytes()).expect("stored header");
        prop_assert_eq!(&stored, &HeaderPlan::of_file(&file));
        rewrite(&file, &b);
        prop_assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    }

    #[test]
    fn sharded_output_equals_the_single_file(
        ts in tensors(),
        meta in metadata(),
        max in 1u64..64,
        part in 0usize..9,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let single = dir.path().join("single.safetensors");
        write(&single, &ts, &meta, 0);
        let single = SafetensorsFile::open(&single).expect("single");

        let folder = dir.path().join("sharded");
        fs::create_dir(&folder).expect("mkdir");
        let plan = ShardPlan::new("model", &infos(&ts), &meta, max).expect("shard plan");
        let shards = plan.shards.len();
        let mut w = ShardedWriter::create(&folder, plan).expect("create");
        for t in &ts {
            if part == 0 {
                w.write_tensor(&t.info.name, &t.data).expect("write_tensor");
            } else {
                for chunk in t.data.chunks(part) {
                    w.write_part(&t.info.name, chunk).expect("write_part");
                }
            }
        }
        let written = w.finish().expect("finish");
        prop_assert_eq!(written.len(), if shards > 1 { shards + 1 } else { 1 });

        let model = checkpoint::open(&folder).expect("open folder");
        prop_assert_eq!(model.tensors(), single.tensors());
        for t in single.tensors() {
            let a = single.tensor(&t.name).expect("single tensor");
            let b = model.tensor(&t.name).expect("sharded tensor");
            prop_assert_eq!(a.data, b.data);
        }
        for f in model.files() {
            prop_assert_eq!(&f.metadata, &meta);
        }
    }
}

fn two() -> (Vec<TensorInfo>, HeaderPlan) {
    let ts = vec![
        TensorInfo::new("a", DType::F32, [2]),
        TensorInfo::new("e", DType::F16, [0]),
        TensorInfo::new("b", DType::U8, [3]),
    ];
    let plan = HeaderPlan::new(&ts, &Vec::new()).expect("plan");
    (ts, plan)
}

fn assert_usage(err: Error, path: &Path, tensor: &str) {
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains(&format!("`{tensor}`")), "{message}");
    assert!(matches!(err, Error::Usage { .. }), "{err:?}");
}

#[test]
fn writer_refuses_tensors_out_of_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let (_, plan) = two();
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    assert_usage(
        w.write_tensor("b", &[0; 3]).expect_err("b before a"),
        &path,
        "b",
    );
    assert_usage(
        w.write_tensor("zz", &[0; 3]).expect_err("unknown"),
        &path,
        "zz",
    );
    w.write_part("a", &[0; 4]).expect("first half of a");
    assert_usage(
        w.write_part("b", &[0; 3]).expect_err("a unfinished"),
        &path,
        "b",
    );
    drop(w);
    assert!(!path.exists());
}

#[test]
fn writer_refuses_too_many_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let (_, plan) = two();
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    assert_usage(w.write_tensor("a", &[0; 9]).expect_err("9 > 8"), &path, "a");
    w.write_part("a", &[0; 5]).expect("part");
    assert_usage(
        w.write_part("a", &[0; 4]).expect_err("5 + 4 > 8"),
        &path,
        "a",
    );
    w.write_part("a", &[0; 3]).expect("rest");
    w.write_tensor("b", &[0; 3]).expect("b, skipping empty e");
    assert_usage(
        w.write_tensor("b", &[0; 1]).expect_err("all written"),
        &path,
        "b",
    );
    w.finish().expect("finish");
    let file = SafetensorsFile::open(&path).expect("valid");
    assert_eq!(file.tensors().len(), 3);
}

#[test]
fn writer_refuses_a_partial_write_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let (_, plan) = two();
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    assert_usage(w.write_tensor("a", &[0; 4]).expect_err("short"), &path, "a");
}

#[test]
fn finishing_early_is_an_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let (_, plan) = two();
    let w = SafetensorsWriter::create(&path, plan.clone()).expect("create");
    assert_usage(w.finish().expect_err("nothing written"), &path, "a");
    assert!(!path.exists());

    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    w.write_tensor("a", &[0; 8]).expect("a");
    w.write_part("b", &[0; 1]).expect("part of b");
    assert_usage(w.finish().expect_err("b unfinished"), &path, "b");
    assert!(!path.exists());
}

#[test]
fn dropped_writer_leaves_no_file_and_no_temporary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    let (_, plan) = two();
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    w.write_tensor("a", &[0; 8]).expect("a");
    drop(w);
    assert!(!path.exists());
    let left: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn dropped_writer_keeps_an_existing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.safetensors");
    fs::write(&path, b"old").expect("old");
    let (_, plan) = two();
    let w = SafetensorsWriter::create(&path, plan).expect("create");
    drop(w);
    assert_eq!(fs::read(&path).expect("read"), b"old");
}

#[test]
fn sharded_writer_refuses_unknown_or_out_of_order_tensors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ts, _) = two();
    let plan = ShardPlan::new("model", &ts, &Vec::new(), 4).expect("plan");
    let mut w = ShardedWriter::create(dir.path(), plan).expect("create");
    assert!(matches!(
        w.write_tensor("zz", &[]),
        Err(Error::Usage { .. })
    ));
    let plan = ShardPlan::new("model", &ts, &Vec::new(), 4).expect("plan");
    let mut w = ShardedWriter::create(dir.path(), plan).expect("create");
    assert!(matches!(
        w.write_tensor("b", &[0; 3]),
        Err(Error::Usage { .. })
    ));
    let plan = ShardPlan::new("model", &ts, &Vec::new(), 4).expect("plan");
    let mut w = ShardedWriter::create(dir.path(), plan).expect("create");
    w.write_tensor("a", &[0; 8]).expect("a");
    w.write_tensor("b", &[0; 3]).expect("b");
    assert!(matches!(
        w.write_tensor("a", &[0; 8]),
        Err(Error::Usage { .. })
    ));
}

#[test]
fn plan_refuses_duplicate_and_reserved_names() {
    let dup = [
        TensorInfo::new("a", DType::F32, [1]),
        TensorInfo::new("a", DType::F32, [1]),
    ];
    let (t, _) = HeaderPlan::new(&dup, &Vec::new()).expect_err("duplicate");
    assert_eq!(t.as_deref(), Some("a"));
    let reserved = [TensorInfo::new("__metadata__", DType::F32, [1])];
    assert!(HeaderPlan::new(&reserved, &Vec::new()).is_err());
    let huge = [TensorInfo::new("h", DType::F64, [1 << 62])];
    assert!(HeaderPlan::new(&huge, &Vec::new()).is_err());
}

#[test]
fn python_style_header_example() {
    // What `safetensors.torch.save_file({"b": .., "a": ..}, metadata={"format": "pt"})`
    // writes: keys sorted, `__metadata__` first, compact, space-padded to 8.
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I64","shape":[],"data_offsets":[4,12]}}"#;
    let mut h = header.to_string();
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("py.safetensors");
    let b = dir.path().join("rs.safetensors");
    fs::write(&a, &bytes).expect("write");
    let file = SafetensorsFile::open(&a).expect("open");
    assert_eq!(file.metadata(), &vec![("format".into(), "pt".into())]);
    rewrite(&file, &b);
    assert_eq!(fs::read(&b).expect("read"), bytes);
    let names: BTreeMap<_, _> = file
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dtype))
        .collect();
    assert_eq!(names["b"], DType::I64);
}
