//! Hostile and broken checkpoints, one named test per case (after
//! safetensors' attack tests). Each writes a real file, opens it, and checks
//! the exact typed error, that its message names the file (and the tensor
//! where one is involved), and that nothing panics or allocates what the
//! file merely claims.

use std::fs;
use std::path::{Path, PathBuf};

use theta_engine::checkpoint;
use theta_engine::safetensors::{
    HeaderPlan, MAX_HEADER_LEN, SafetensorsFile, SafetensorsWriter, ShardPlan, ShardedSafetensors,
    ShardedWriter,
};
use theta_engine::{DType, Error, FormatProblem, ShardProblem, TensorInfo};

/// Writes `bytes` as the whole file `dir/name`.
fn raw(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write test file");
    path
}

/// Writes a file made of a correct length prefix, `header` and `data`.
fn with_header(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    raw(dir, name, &bytes)
}

fn entry(name: &str, dtype: &str, shape: &str, begin: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{begin},{end}]}}"#)
}

/// Opens `path`, expecting a format error about `tensor`; checks that the
/// message names the file and the tensor, and returns the problem.
fn format_error(path: &Path, tensor: Option<&str>) -> FormatProblem {
    let err = SafetensorsFile::open(path).expect_err("hostile file must be refused");
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "message does not name the file: {message}"
    );
    if let Some(t) = tensor {
        assert!(
            message.contains(&format!("`{t}`")),
            "message does not name tensor {t}: {message}"
        );
    }
    match err {
        Error::Format {
            path: p,
            tensor: t,
            problem,
        } => {
            assert_eq!(p, path);
            assert_eq!(t.as_deref(), tensor, "wrong tensor in {message}");
            problem
        }
        other => panic!("expected a format error, got {other:?}"),
    }
}

/// Opens the sharded checkpoint at `index`, expecting a shard problem; checks
/// the message names the index file and each of `mentions`.
fn shard_error(index: &Path, mentions: &[&str]) -> ShardProblem {
    let err = ShardedSafetensors::open(index).expect_err("inconsistent shards must be refused");
    let message = err.to_string();
    assert!(
        message.contains(&index.display().to_string()),
        "message does not name the index: {message}"
    );
    for m in mentions {
        assert!(
            message.contains(m),
            "message does not mention {m}: {message}"
        );
    }
    match err {
        Error::Shards { path, problem } => {
            assert_eq!(path, index);
            problem
        }
        other => panic!("expected a shard error, got {other:?}"),
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn file_shorter_than_eight_bytes() {
    let dir = tmp();
    for len in [0usize, 1, 7] {
        let path = raw(
            dir.path(),
            &format!("short{len}.safetensors"),
            &vec![0u8; len],
        );
        let problem = format_error(&path, None);
        assert_eq!(problem, FormatProblem::TooShort { len: len as u64 });
    }
}

#[test]
fn header_length_beyond_the_file() {
    let dir = tmp();
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\":1}   ");
    let path = raw(dir.path(), "beyond.safetensors", &bytes);
    let problem = format_error(&path, None);
    assert_eq!(
        problem,
        FormatProblem::HeaderBeyondFile {
            claimed: 1000,
            available: 10
        }
    );
}

#[test]
fn header_length_above_the_limit() {
    let dir = tmp();
    // A claim of 2^60 bytes in a 16-byte file: refused before anything is
    // allocated or read.
    for claimed in [1u64 << 60, MAX_HEADER_LEN + 1, u64::MAX] {
        let mut bytes = claimed.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}      ");
        let path = raw(dir.path(), "huge.safetensors", &bytes);
        let problem = format_error(&path, None);
        assert_eq!(
            problem,
            FormatProblem::HeaderTooLarge {
                claimed,
                limit: MAX_HEADER_LEN
            }
        );
    }
}

#[test]
fn header_is_invalid_json() {
    let dir = tmp();
    for (i, header) in ["{\"a\":", "not json", "[]", "{} {}", "", "{\"w\":[1,2]}"]
        .iter()
        .enumerate()
    {
        let path = with_header(dir.path(), &format!("json{i}.safetensors"), header, &[]);
        let err = SafetensorsFile::open(&path).expect_err("invalid JSON");
        assert!(
            matches!(err.format_problem(), Some(FormatProblem::HeaderJson(_))),
            "{header:?}: {err:?}"
        );
        assert!(err.to_string().contains(&path.display().to_string()));
    }
}

#[test]
fn header_json_error_names_the_tensor() {
    let dir = tmp();
    let header = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}}"#;
    let path = with_header(dir.path(), "field.safetensors", header, &[0; 4]);
    let problem = format_error(&path, Some("w"));
    assert!(matches!(problem, FormatProblem::HeaderJson(m) if m.contains("extra")));
}

#[test]
fn header_is_not_utf8() {
    let dir = tmp();
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
    let path = raw(dir.path(), "latin1.safetensors", &bytes);
    let problem = format_error(&path, None);
    assert_eq!(problem, FormatProblem::HeaderNotUtf8 { valid_up_to: 1 });
}

#[test]
fn unknown_dtype() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("w", "F33", "[1]", 0, 4));
    let path = with_header(dir.path(), "dtype.safetensors", &header, &[0; 4]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(problem, FormatProblem::UnknownDType("F33".into()));
}

#[test]
fn shape_times_dtype_does_not_match_offsets() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("w", "F32", "[3]", 0, 8));
    let path = with_header(dir.path(), "size.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(
        problem,
        FormatProblem::SizeMismatch {
            shape: vec![3],
            dtype: DType::F32,
            expected: 12,
            actual: 8
        }
    );
}

#[test]
fn overlapping_offsets() {
    let dir = tmp();
    let header = format!(
        "{{{},{}}}",
        entry("a", "F32", "[2]", 0, 8),
        entry("b", "F32", "[2]", 4, 12)
    );
    let path = with_header(dir.path(), "overlap.safetensors", &header, &[0; 12]);
    let problem = format_error(&path, Some("b"));
    assert_eq!(
        problem,
        FormatProblem::Overlap {
            begin: 4,
            end: 12,
            other: "a".into()
        }
    );
}

#[test]
fn two_tensors_on_the_same_bytes() {
    let dir = tmp();
    let header = format!(
        "{{{},{}}}",
        entry("a", "F32", "[2]", 0, 8),
        entry("b", "I32", "[2]", 0, 8)
    );
    let path = with_header(dir.path(), "alias.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("b"));
    assert!(matches!(problem, FormatProblem::Overlap { other, .. } if other == "a"));
}

#[test]
fn out_of_range_offsets() {
    let dir = tmp();
    let header = format!(
        "{{{},{}}}",
        entry("a", "F32", "[2]", 0, 8),
        entry("b", "F32", "[2]", 8, 16)
    );
    let path = with_header(dir.path(), "range.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("b"));
    assert_eq!(
        problem,
        FormatProblem::OutOfRange {
            end: 16,
            available: 8
        }
    );
}

#[test]
fn huge_claimed_tensor_is_not_allocated() {
    // 2^62 bytes claimed with consistent shape and offsets, in a tiny file.
    let dir = tmp();
    let header = format!(
        "{{{}}}",
        entry("w", "U8", "[2147483648,2147483648]", 0, 1 << 62)
    );
    let path = with_header(dir.path(), "claim.safetensors", &header, &[0; 16]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(
        problem,
        FormatProblem::OutOfRange {
            end: 1 << 62,
            available: 16
        }
    );
}

#[test]
fn reversed_offsets() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("w", "F32", "[2]", 8, 0));
    let path = with_header(dir.path(), "reversed.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(problem, FormatProblem::ReversedOffsets { begin: 8, end: 0 });
}

#[test]
fn gap_between_tensors() {
    let dir = tmp();
    let header = format!(
        "{{{},{}}}",
        entry("a", "F32", "[2]", 0, 8),
        entry("b", "F32", "[2]", 12, 20)
    );
    let path = with_header(dir.path(), "gap.safetensors", &header, &[0; 20]);
    let problem = format_error(&path, Some("b"));
    assert_eq!(problem, FormatProblem::Gap { begin: 8, end: 12 });
}

#[test]
fn gap_before_the_first_tensor() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("a", "F32", "[1]", 4, 8));
    let path = with_header(dir.path(), "lead.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("a"));
    assert_eq!(problem, FormatProblem::Gap { begin: 0, end: 4 });
}

#[test]
fn trailing_bytes() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("a", "F32", "[2]", 0, 8));
    let path = with_header(dir.path(), "trailing.safetensors", &header, &[0; 12]);
    let problem = format_error(&path, None);
    assert_eq!(problem, FormatProblem::TrailingBytes { extra: 4 });
}

#[test]
fn shape_overflow() {
    let dir = tmp();
    let big = 1u64 << 40;
    let header = format!("{{{}}}", entry("w", "F32", &format!("[{big},{big}]"), 0, 4));
    let path = with_header(dir.path(), "overflow.safetensors", &header, &[0; 4]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(
        problem,
        FormatProblem::ShapeOverflow {
            shape: vec![big, big]
        }
    );
    // Element count fits but the byte size does not.
    let header = format!("{{{}}}", entry("w", "F64", "[4611686018427387904]", 0, 4));
    let path = with_header(dir.path(), "overflow2.safetensors", &header, &[0; 4]);
    let problem = format_error(&path, Some("w"));
    assert!(matches!(problem, FormatProblem::ShapeOverflow { .. }));
}

#[test]
fn duplicate_tensor_names() {
    let dir = tmp();
    let header = format!(
        "{{{},{}}}",
        entry("w", "F32", "[1]", 0, 4),
        entry("w", "F32", "[1]", 4, 8)
    );
    let path = with_header(dir.path(), "dup.safetensors", &header, &[0; 8]);
    let problem = format_error(&path, Some("w"));
    assert_eq!(problem, FormatProblem::DuplicateName);
}

#[test]
fn duplicate_metadata_key() {
    let dir = tmp();
    let header = format!(
        r#"{{"__metadata__":{{}},{},"__metadata__":{{}}}}"#,
        entry("w", "F32", "[1]", 0, 4)
    );
    let path = with_header(dir.path(), "dupmeta.safetensors", &header, &[0; 4]);
    let problem = format_error(&path, Some("__metadata__"));
    assert!(matches!(problem, FormatProblem::HeaderJson(m) if m.contains("__metadata__")));
}

#[test]
fn truncated_data() {
    let dir = tmp();
    let path = dir.path().join("cut.safetensors");
    let tensors = [
        TensorInfo::new("a", DType::F32, [4]),
        TensorInfo::new("b", DType::BF16, [8]),
    ];
    let plan = HeaderPlan::new(&tensors, &Vec::new()).expect("plan");
    let full = plan.file_len();
    let mut w = SafetensorsWriter::create(&path, plan).expect("create");
    w.write_tensor("a", &[1; 16]).expect("a");
    w.write_tensor("b", &[2; 16]).expect("b");
    w.finish().expect("finish");
    SafetensorsFile::open(&path).expect("the whole file is valid");

    let file = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("reopen");
    file.set_len(full - 5).expect("truncate");
    drop(file);
    let problem = format_error(&path, Some("b"));
    assert_eq!(
        problem,
        FormatProblem::OutOfRange {
            end: 32,
            available: 27
        }
    );
}

#[test]
fn metadata_with_a_non_string_value() {
    let dir = tmp();
    for (i, meta) in [r#"{"k":1}"#, r#"{"k":{"nested":"x"}}"#, r#"["k"]"#, "null"]
        .iter()
        .enumerate()
    {
        let header = format!(
            r#"{{"__metadata__":{meta},{}}}"#,
            entry("w", "F32", "[1]", 0, 4)
        );
        let path = with_header(
            dir.path(),
            &format!("meta{i}.safetensors"),
            &header,
            &[0; 4],
        );
        let problem = format_error(&path, Some("__metadata__"));
        assert!(
            matches!(problem, FormatProblem::HeaderJson(_)),
            "{meta}: {problem:?}"
        );
    }
}

#[test]
fn checkpoint_open_reports_the_same_typed_error() {
    let dir = tmp();
    let header = format!("{{{}}}", entry("w", "F8_E9M9", "[1]", 0, 1));
    let path = with_header(dir.path(), "model.safetensors", &header, &[0]);
    let err = checkpoint::open(&path).err().expect("refused");
    assert_eq!(
        err.format_problem(),
        Some(&FormatProblem::UnknownDType("F8_E9M9".into()))
    );
    // And through the folder holding it.
    let err = checkpoint::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

// ---------------------------------------------------------------- sharded

/// Writes a one-tensor-per-shard safetensors file holding `names` (F32 [2]).
fn shard(dir: &Path, file: &str, names: &[&str]) {
    let tensors: Vec<TensorInfo> = names
        .iter()
        .map(|n| TensorInfo::new(*n, DType::F32, [2]))
        .collect();
    let plan = HeaderPlan::new(&tensors, &Vec::new()).expect("plan");
    let mut w = SafetensorsWriter::create(dir.join(file), plan).expect("create");
    for n in names {
        w.write_tensor(n, &[7; 8]).expect("write");
    }
    w.finish().expect("finish");
}

fn index(dir: &Path, map: &[(&str, &str)]) -> PathBuf {
    let entries: Vec<String> = map.iter().map(|(t, s)| format!("{t:?}: {s:?}")).collect();
    let json = format!(
        "{{\"metadata\": {{\"total_size\": 16}}, \"weight_map\": {{{}}}}}",
        entries.join(", ")
    );
    raw(dir, "model.safetensors.index.json", json.as_bytes())
}

const S1: &str = "model-00001-of-00002.safetensors";
const S2: &str = "model-00002-of-00002.safetensors";

#[test]
fn sharded_consistent_folder_opens() {
    let dir = tmp();
    shard(dir.path(), S1, &["a"]);
    shard(dir.path(), S2, &["b"]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2)]);
    let model = ShardedSafetensors::open(&idx).expect("consistent");
    assert_eq!(model.tensors().len(), 2);
}

#[test]
fn sharded_index_names_a_missing_shard() {
    let dir = tmp();
    shard(dir.path(), S1, &["a"]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2)]);
    let problem = shard_error(&idx, &[S2]);
    assert_eq!(problem, ShardProblem::MissingShard { shard: S2.into() });
}

#[test]
fn sharded_tensor_in_two_shards() {
    let dir = tmp();
    shard(dir.path(), S1, &["a", "b"]);
    shard(dir.path(), S2, &["b"]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2)]);
    let problem = shard_error(&idx, &["`b`", S1, S2]);
    assert_eq!(
        problem,
        ShardProblem::TensorInTwoShards {
            tensor: "b".into(),
            first: S2.into(),
            second: S1.into()
        }
    );
}

#[test]
fn sharded_index_maps_a_tensor_to_a_shard_that_lacks_it() {
    let dir = tmp();
    shard(dir.path(), S1, &["a"]);
    shard(dir.path(), S2, &["b"]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2), ("c", S2)]);
    let problem = shard_error(&idx, &["`c`", S2]);
    assert_eq!(
        problem,
        ShardProblem::TensorNotInShard {
            tensor: "c".into(),
            shard: S2.into()
        }
    );
}

#[test]
fn sharded_shard_holds_an_unlisted_tensor() {
    let dir = tmp();
    shard(dir.path(), S1, &["a", "x"]);
    shard(dir.path(), S2, &["b"]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2)]);
    let problem = shard_error(&idx, &["`x`", S1]);
    assert_eq!(
        problem,
        ShardProblem::UnlistedTensor {
            tensor: "x".into(),
            shard: S1.into()
        }
    );
}

#[test]
fn sharded_shard_name_escapes_the_folder() {
    let root = tmp();
    let dir = root.path().join("model");
    fs::create_dir(&dir).expect("mkdir");
    // The escaping target exists, so only the name check can refuse it.
    shard(root.path(), "evil.safetensors", &["b"]);
    shard(&dir, S1, &["a"]);
    for name in [
        "../evil.safetensors",
        "sub/../../evil.safetensors",
        "..",
        ".",
        "",
    ] {
        let idx = index(&dir, &[("a", S1), ("b", name)]);
        let problem = shard_error(&idx, &[]);
        assert_eq!(problem, ShardProblem::BadShardName { shard: name.into() });
    }
    let abs = root.path().join("evil.safetensors");
    let abs = abs.to_str().expect("utf-8 temp path");
    let idx = index(&dir, &[("a", S1), ("b", abs)]);
    let problem = shard_error(&idx, &[]);
    assert_eq!(problem, ShardProblem::BadShardName { shard: abs.into() });
}

#[test]
fn sharded_invalid_index_json() {
    let dir = tmp();
    shard(dir.path(), S1, &["a"]);
    for (i, text) in [
        "{\"weight_map\": {",
        "[]",
        "{\"metadata\": {}}",
        "{\"weight_map\": {\"a\": 1}}",
        "\u{feff}garbage",
    ]
    .iter()
    .enumerate()
    {
        let idx = raw(
            dir.path(),
            &format!("m{i}.safetensors.index.json"),
            text.as_bytes(),
        );
        let problem = shard_error(&idx, &[]);
        assert!(
            matches!(problem, ShardProblem::BadIndex(_)),
            "{text:?}: {problem:?}"
        );
    }
}

#[test]
fn sharded_broken_shard_names_the_shard_file() {
    let dir = tmp();
    shard(dir.path(), S1, &["a"]);
    let bad = raw(dir.path(), S2, &[1, 2, 3]);
    let idx = index(dir.path(), &[("a", S1), ("b", S2)]);
    let err = ShardedSafetensors::open(&idx).expect_err("broken shard");
    match &err {
        Error::Format { path, problem, .. } => {
            assert_eq!(path, &bad);
            assert_eq!(problem, &FormatProblem::TooShort { len: 3 });
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    // Through the folder, too.
    let err = checkpoint::open(dir.path()).err().expect("refused");
    assert!(err.to_string().contains(S2), "{err}");
}

#[test]
fn sharded_writer_output_passes_the_checks() {
    let dir = tmp();
    let tensors: Vec<TensorInfo> = (0..5)
        .map(|i| TensorInfo::new(format!("t{i}"), DType::F32, [2]))
        .collect();
    let plan = ShardPlan::new("model", &tensors, &Vec::new(), 8).expect("plan");
    let mut w = ShardedWriter::create(dir.path(), plan).expect("create");
    for t in &tensors {
        w.write_tensor(&t.name, &[3; 8]).expect("write");
    }
    w.finish().expect("finish");
    let model = checkpoint::open(dir.path()).expect("open");
    assert_eq!(model.tensors(), tensors.as_slice());
    assert_eq!(model.files().len(), 5);
}
