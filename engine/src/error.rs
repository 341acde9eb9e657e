//! The engine's error type: every error names the file and, where one is
//! involved, the tensor.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::DType;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while reading, writing or computing on a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error (shown in this error's message).
        error: std::io::Error,
    },
    /// A checkpoint file is malformed or hostile.
    #[error("{}: {}{problem}", path.display(), TensorPrefix(tensor.as_deref()))]
    Format {
        /// The file involved.
        path: PathBuf,
        /// The tensor involved, when the problem is about one.
        tensor: Option<String>,
        /// What is wrong.
        problem: FormatProblem,
    },
    /// A sharded model folder is inconsistent with its index.
    #[error("{}: {problem}", path.display())]
    Shards {
        /// The index file or folder.
        path: PathBuf,
        /// What is wrong.
        problem: ShardProblem,
    },
    /// A tensor name was asked for that the checkpoint does not hold.
    #[error("{}: no tensor named `{tensor}`", path.display())]
    NoSuchTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The name asked for.
        tensor: String,
    },
    /// Arithmetic or conversion was asked of a dtype that has none.
    #[error(
        "tensor `{tensor}`: {op} is not defined for dtype {dtype} (only F64, F32, F16 and BF16 take part in tensor math)"
    )]
    UnsupportedDType {
        /// The tensor involved.
        tensor: String,
        /// Its dtype.
        dtype: DType,
        /// What was asked.
        op: &'static str,
    },
    /// A caller broke the contract of a writer or an operation.
    #[error("{}: {}{message}", path.display(), TensorPrefix(tensor.as_deref()))]
    Usage {
        /// The file being written, or the checkpoint involved.
        path: PathBuf,
        /// The tensor involved, if any.
        tensor: Option<String>,
        /// What was wrong.
        message: String,
    },
}

struct TensorPrefix<'a>(Option<&'a str>);

impl fmt::Display for TensorPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            // The metadata block is not a tensor, though it sits among them.
            Some("__metadata__") => f.write_str("`__metadata__`: "),
            Some(t) => write!(f, "tensor `{t}`: "),
            None => Ok(()),
        }
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            error,
        }
    }

    /// A format problem in `path`, optionally about `tensor`.
    pub fn format(path: impl AsRef<Path>, tensor: Option<&str>, problem: FormatProblem) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.map(str::to_owned),
            problem,
        }
    }

    /// A misuse of a writer or operation.
    pub fn usage(path: impl AsRef<Path>, tensor: Option<&str>, message: impl Into<String>) -> Self {
        Error::Usage {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.map(str::to_owned),
            message: message.into(),
        }
    }

    /// The format problem, when this is one (for tests and callers that react
    /// to a specific kind of damage).
    pub fn format_problem(&self) -> Option<&FormatProblem> {
        match self {
            Error::Format { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// The ways a safetensors file can be malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatProblem {
    /// Shorter than the 8-byte header length prefix.
    #[error("file is {len} bytes, too short to hold the 8-byte header length")]
    TooShort {
        /// The file's length.
        len: u64,
    },
    /// The header length prefix exceeds the parser's limit.
    #[error("header claims {claimed} bytes, above the {limit}-byte limit")]
    HeaderTooLarge {
        /// What the prefix says.
        claimed: u64,
        /// The limit.
        limit: u64,
    },
    /// The header length prefix points past the end of the file.
    #[error("header claims {claimed} bytes but only {available} bytes follow the length prefix")]
    HeaderBeyondFile {
        /// What the prefix says.
        claimed: u64,
        /// Bytes after the prefix.
        available: u64,
    },
    /// The header is not UTF-8.
    #[error("header is not valid UTF-8 (at byte {valid_up_to})")]
    HeaderNotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The header is not the JSON safetensors expects.
    #[error("header is not valid safetensors JSON: {0}")]
    HeaderJson(String),
    /// The same tensor name appears twice in the header.
    #[error("name appears more than once in the header")]
    DuplicateName,
    /// A dtype that safetensors does not define.
    #[error("unknown dtype `{0}`")]
    UnknownDType(String),
    /// The element count or byte size overflows 64 bits.
    #[error("shape {shape:?} overflows when multiplied out")]
    ShapeOverflow {
        /// The offending shape.
        shape: Vec<u64>,
    },
    /// `data_offsets` is reversed.
    #[error("data_offsets [{begin}, {end}] end before they begin")]
    ReversedOffsets {
        /// First offset.
        begin: u64,
        /// Second offset.
        end: u64,
    },
    /// Shape × dtype size disagrees with the offsets.
    #[error("shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}")]
    SizeMismatch {
        /// The shape.
        shape: Vec<u64>,
        /// The dtype.
        dtype: DType,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes the offsets span.
        actual: u64,
    },
    /// Two tensors claim the same bytes.
    #[error("data_offsets [{begin}, {end}] overlap tensor `{other}`")]
    Overlap {
        /// First offset.
        begin: u64,
        /// Second offset.
        end: u64,
        /// The other tensor.
        other: String,
    },
    /// Bytes in the data section belong to no tensor.
    #[error("data bytes [{begin}, {end}) belong to no tensor")]
    Gap {
        /// Start of the unclaimed range.
        begin: u64,
        /// End of the unclaimed range.
        end: u64,
    },
    /// A tensor's bytes lie past the end of the file.
    #[error(
        "data_offsets end at {end} but the data section holds only {available} bytes (truncated or out of range)"
    )]
    OutOfRange {
        /// Where the tensor ends.
        end: u64,
        /// Length of the data section.
        available: u64,
    },
    /// The data section is longer than the tensors.
    #[error("{extra} bytes follow the last tensor")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
}

/// The ways a sharded folder can disagree with its index.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardProblem {
    /// The index names a shard that is not on disk.
    #[error("index names shard `{shard}`, which does not exist")]
    MissingShard {
        /// The shard's file name.
        shard: String,
    },
    /// A shard path escapes the model folder.
    #[error("index names shard `{shard}`, which is not a plain file name in the model folder")]
    BadShardName {
        /// The shard's file name.
        shard: String,
    },
    /// The index maps a tensor to a shard that lacks it.
    #[error("index maps tensor `{tensor}` to `{shard}`, which does not contain it")]
    TensorNotInShard {
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },
    /// The same tensor is stored in two shards.
    #[error("tensor `{tensor}` is stored in both `{first}` and `{second}`")]
    TensorInTwoShards {
        /// The tensor.
        tensor: String,
        /// One shard.
        first: String,
        /// Another shard.
        second: String,
    },
    /// A shard holds a tensor the index does not list.
    #[error("shard `{shard}` holds tensor `{tensor}`, which the index does not list")]
    UnlistedTensor {
        /// The tensor.
        tensor: String,
        /// The shard.
        shard: String,
    },
    /// The index itself is not valid.
    #[error("invalid index: {0}")]
    BadIndex(String),
    /// A folder holds no checkpoint git-theta can read.
    #[error("{0}")]
    NotAModel(String),
}
