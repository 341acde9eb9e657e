//! The three-way merge of checkpoint manifests, tensor by tensor against
//! the merge base:
//!
//! - unchanged, or changed identically on both sides: kept;
//! - changed, added or deleted on one side only: that side's;
//! - changed differently on both sides: the [`Policy`]'s strategy, whose new
//!   tensors are computed by the engine and stored as objects;
//! - what no strategy can settle (shapes or dtypes changed differently,
//!   deleted against modified, a `manual` rule, a failed computation) is a
//!   [`Conflict`], and nothing is produced.

use std::collections::{BTreeMap, HashMap};

use theta_engine::compute::Device;
use theta_engine::safetensors::HeaderPlan;
use theta_engine::safetensors::header;
use theta_engine::{DType, TensorInfo};

use super::policy::Policy;
use super::strategy::{Kind, Side, Versions};
use crate::vcs::clean::{CleanOptions, store_object, store_tensor};
use crate::vcs::manifest::{FileFormat, Head, Manifest, TensorEntry};
use crate::vcs::smudge::{Fetcher, ensure_present, read_tensor};
use crate::vcs::store::Store;

/// Something the merge cannot settle on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The tensor (`None`: the file as a whole).
    pub tensor: Option<String>,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tensor {
            Some(t) => write!(f, "{t}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// What a successful merge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tensors taken from ours because only ours changed them (or a rule said so).
    pub from_ours: u64,
    /// Tensors taken from theirs.
    pub from_theirs: u64,
    /// Tensors reset to the base by a rule.
    pub from_base: u64,
    /// Tensors deleted because one side deleted them.
    pub deleted: u64,
    /// Tensors computed, by strategy label.
    pub computed: BTreeMap<String, u64>,
    /// Objects written for computed tensors and a new header.
    pub new_objects: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = vec![];
        for (n, what) in [
            (self.from_ours, "from ours"),
            (self.from_theirs, "from theirs"),
            (self.from_base, "reset to the base"),
            (self.deleted, "deleted"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        for (label, n) in &self.computed {
            parts.push(format!("{n} merged by {label}"));
        }
        if parts.is_empty() {
            parts.push("nothing to merge".into());
        }
        f.write_str(&parts.join(", "))
    }
}

/// The result of a merge.
pub struct Merged {
    /// The merged manifest.
    pub manifest: Manifest,
    /// What happened.
    pub summary: Summary,
}

/// Where and how the merge runs.
pub struct Context<'a> {
    /// The object store (new objects go there too).
    pub store: &'a Store,
    /// Gets objects the store lacks.
    pub fetcher: &'a mut dyn Fetcher,
    /// Chunking of new tensors.
    pub clean: &'a CleanOptions,
    /// The compute device, opened on first use.
    pub device: &'a mut dyn FnMut() -> Result<Device, String>,
}

enum Pick<'a> {
    Keep(Option<&'a TensorEntry>, Option<Side>),
    Compute {
        label: &'a str,
        strategy: &'a dyn super::strategy::Strategy,
        dtype: DType,
        base: Option<&'a TensorEntry>,
        ours: &'a TensorEntry,
        theirs: &'a TensorEntry,
    },
}

/// Merges `ours` and `theirs` against `base` (`None`: no common ancestor).
pub fn merge(
    base: Option<&Manifest>,
    ours: &Manifest,
    theirs: &Manifest,
    policy: &Policy,
    cx: &mut Context<'_>,
) -> Result<Merged, Vec<Conflict>> {
    let st = |m: &Manifest| m.head.format == FileFormat::Safetensors;
    if !st(ours) || !st(theirs) || base.is_some_and(|b| !st(b)) {
        return whole_file(base, ours, theirs);
    }
    let (bi, oi, ti) = (
        base.map(index).unwrap_or_default(),
        index(ours),
        index(theirs),
    );
    let mut picks = Vec::new();
    let mut conflicts = Vec::new();
    for name in merged_order(ours, theirs) {
        let (b, o, t) = (bi.get(name), oi.get(name), ti.get(name));
        match decide(name, b.copied(), o.copied(), t.copied(), policy) {
            Ok(p) => picks.push(p),
            Err(reason) => conflicts.push(Conflict {
                tensor: Some(name.to_owned()),
                reason,
            }),
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    fetch_inputs(&picks, ours, cx)?;

    // A reader thread reads the next computed tensor's versions while this
    // one computes and stores (one tensor ahead: memory stays bounded).
    let jobs: Vec<Job<'_>> = picks
        .iter()
        .filter_map(|p| match p {
            Pick::Compute {
                base, ours, theirs, ..
            } => Some((*ours, *theirs, *base)),
            Pick::Keep(..) => None,
        })
        .collect();
    let store = cx.store;
    let (mut summary, tensors) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for job in jobs {
                if tx.send(read_versions(job, store)).is_err() {
                    break;
                }
            }
        });
        assemble(picks, &rx, cx)
    })?;
    let (head, new) = head_for(&tensors, ours, theirs, cx.store).map_err(|reason| {
        vec![Conflict {
            tensor: None,
            reason,
        }]
    })?;
    summary.new_objects += new;
    Ok(Merged {
        manifest: Manifest { head, tensors },
        summary,
    })
}

fn index(m: &Manifest) -> HashMap<&str, &TensorEntry> {
    m.tensors.iter().map(|t| (t.name.as_str(), t)).collect()
}

/// Files that are not safetensors checkpoints merge only when one side
/// left them as the base had them.
fn whole_file(
    base: Option<&Manifest>,
    ours: &Manifest,
    theirs: &Manifest,
) -> Result<Merged, Vec<Conflict>> {
    let manifest = if ours == theirs || base == Some(theirs) {
        ours.clone()
    } else if base == Some(ours) {
        theirs.clone()
    } else {
        return Err(vec![Conflict {
            tensor: None,
            reason: "both sides changed a file that is not a safetensors checkpoint; \
                     it cannot be merged tensor by tensor"
                .into(),
        }]);
    };
    Ok(Merged {
        manifest,
        summary: Summary::default(),
    })
}

/// Ours' tensors in ours' order, with tensors only theirs has placed after
/// the tensor that precedes them in theirs.
fn merged_order<'a>(ours: &'a Manifest, theirs: &'a Manifest) -> Vec<&'a str> {
    let mut order: Vec<&str> = ours.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut at = 0;
    for t in &theirs.tensors {
        match order.iter().position(|n| *n == t.name) {
            Some(i) => at = i + 1,
            None => {
                order.insert(at, &t.name);
                at += 1;
            }
        }
    }
    order
}

fn same(a: Option<&TensorEntry>, b: Option<&TensorEntry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_contents(b),
        _ => false,
    }
}

fn describe(t: &TensorEntry) -> String {
    format!("{} {:?}", t.dtype, t.shape)
}

/// What to do with one tensor, or why it conflicts.
fn decide<'a>(
    name: &str,
    b: Option<&'a TensorEntry>,
    o: Option<&'a TensorEntry>,
    t: Option<&'a TensorEntry>,
    policy: &'a Policy,
) -> Result<Pick<'a>, String> {
    if same(o, t) {
        return Ok(Pick::Keep(o, None));
    }
    if same(b, o) {
        return Ok(Pick::Keep(t, Some(Side::Theirs)));
    }
    if same(b, t) {
        return Ok(Pick::Keep(o, Some(Side::Ours)));
    }
    let chosen = policy.for_tensor(name);
    let (o, t) = match (chosen.strategy.kind(), o, t) {
        (Kind::Take(Side::Ours), o, _) => return Ok(Pick::Keep(o, Some(Side::Ours))),
        (Kind::Take(Side::Theirs), _, t) => return Ok(Pick::Keep(t, Some(Side::Theirs))),
        (Kind::Take(Side::Base), ..) => return Ok(Pick::Keep(b, Some(Side::Base))),
        (_, None, Some(_)) => return Err("deleted in ours, modified in theirs".into()),
        (_, Some(_), None) => return Err("modified in ours, deleted in theirs".into()),
        (Kind::Manual, ..) => {
            return Err(format!(
                "changed on both sides and `{}` leaves it to you",
                chosen.label
            ));
        }
        (Kind::Compute { .. }, Some(o), Some(t)) => (o, t),
        (Kind::Compute { .. }, None, None) => return Ok(Pick::Keep(None, None)),
    };
    let Kind::Compute { needs_base } = chosen.strategy.kind() else {
        return Err("no strategy applies".into());
    };
    if o.dtype != t.dtype || o.shape != t.shape {
        let verb = if b.is_some() { "changed" } else { "added" };
        return Err(format!(
            "{verb} differently: ours {}, theirs {}",
            describe(o),
            describe(t)
        ));
    }
    let dtype: DType = o
        .dtype
        .parse()
        .map_err(|_| format!("unknown dtype {}", o.dtype))?;
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!(
            "changed on both sides; {} cannot merge {} tensors (only F32, F16, BF16): choose ours, theirs or base",
            chosen.label, o.dtype
        ));
    }
    let base = b.filter(|b| b.dtype == o.dtype && b.shape == o.shape);
    if needs_base && base.is_none() {
        return Err(match b {
            None => format!(
                "added on both sides with different values; {} needs a base (try average or slerp)",
                chosen.label
            ),
            Some(b) => format!(
                "both sides changed it from the base's {} to {}; {} needs a base of the same shape",
                describe(b),
                describe(o),
                chosen.label
            ),
        });
    }
    Ok(Pick::Compute {
        label: &chosen.label,
        strategy: chosen.strategy.as_ref(),
        dtype,
        base: if needs_base { base } else { None },
        ours: o,
        theirs: t,
    })
}

/// Makes the objects computations read (and ours' header) local.
fn fetch_inputs(
    picks: &[Pick<'_>],
    ours: &Manifest,
    cx: &mut Context<'_>,
) -> Result<(), Vec<Conflict>> {
    let mut tensors = Vec::new();
    for p in picks {
        if let Pick::Compute {
            base, ours, theirs, ..
        } = p
        {
            tensors.extend(base.iter().map(|b| (*b).clone()));
            tensors.push((*ours).clone());
            tensors.push((*theirs).clone());
        }
    }
    let needed = Manifest {
        head: Head {
            tensors: tensors.len() as u64,
            objects: vec![],
            ..ours.head.clone()
        },
        tensors,
    };
    ensure_present(&needed, cx.store, cx.fetcher).map_err(|e| {
        vec![Conflict {
            tensor: None,
            reason: format!("cannot read the versions to merge: {e}"),
        }]
    })
}

/// The versions a computation reads: ours, theirs, the base.
type Job<'a> = (&'a TensorEntry, &'a TensorEntry, Option<&'a TensorEntry>);
/// Their bytes.
type Read = Result<(Vec<u8>, Vec<u8>, Option<Vec<u8>>), String>;

/// Reads the three versions of a tensor, in parallel.
fn read_versions((ours, theirs, base): Job<'_>, store: &Store) -> Read {
    let read = |t: &TensorEntry| read_tensor(t, store).map_err(|e| e.to_string());
    let (o, (t, b)) = rayon::join(
        || read(ours),
        || rayon::join(|| read(theirs), || base.map(read).transpose()),
    );
    Ok((o?, t?, b?))
}

/// The merged tensors in order, computing each [`Pick::Compute`] from the
/// versions `rx` delivers (in the same order).
fn assemble(
    picks: Vec<Pick<'_>>,
    rx: &std::sync::mpsc::Receiver<Read>,
    cx: &mut Context<'_>,
) -> Result<(Summary, Vec<TensorEntry>), Vec<Conflict>> {
    let mut summary = Summary::default();
    let mut tensors = Vec::with_capacity(picks.len());
    for p in picks {
        match p {
            Pick::Keep(entry, side) => {
                match side {
                    Some(Side::Ours) => summary.from_ours += 1,
                    Some(Side::Theirs) => summary.from_theirs += 1,
                    Some(Side::Base) => summary.from_base += 1,
                    None => {}
                }
                match entry {
                    Some(e) => tensors.push(e.clone()),
                    None => summary.deleted += u64::from(side.is_some()),
                }
            }
            Pick::Compute {
                label,
                strategy,
                dtype,
                ours,
                ..
            } => {
                let versions = rx
                    .recv()
                    .map_err(|_| "the reader stopped".to_owned())
                    .and_then(|r| r);
                let (entry, new) = versions
                    .and_then(|v| compute(strategy, dtype, ours, v, cx))
                    .map_err(|reason| {
                        vec![Conflict {
                            tensor: Some(ours.name.clone()),
                            reason: format!("{label} failed: {reason}"),
                        }]
                    })?;
                *summary.computed.entry(label.to_owned()).or_default() += 1;
                summary.new_objects += new;
                tensors.push(entry);
            }
        }
    }
    Ok((summary, tensors))
}

/// Computes one tensor from its versions' bytes and stores it; returns its
/// entry and the number of new objects.
fn compute(
    strategy: &dyn super::strategy::Strategy,
    dtype: DType,
    ours: &TensorEntry,
    (o, t, b): (Vec<u8>, Vec<u8>, Option<Vec<u8>>),
    cx: &mut Context<'_>,
) -> Result<(TensorEntry, u64), String> {
    let device = (cx.device)()?;
    let mut out = vec![0u8; o.len()];
    let versions = Versions {
        name: &ours.name,
        dtype,
        base: b.as_deref(),
        ours: &o,
        theirs: &t,
    };
    strategy.compute(&device, &versions, &mut out)?;
    drop((o, t, b));
    let info = TensorInfo::new(ours.name.clone(), dtype, ours.shape.clone());
    let (entry, s) = store_tensor(&info, cx.clean.rows_for(&info), &mut &out[..], cx.store)
        .map_err(|e| e.to_string())?;
    Ok((entry, s.new_objects))
}

/// The first line for `tensors`: ours' (or theirs') header when the layout
/// is theirs exactly, else a new header with ours' metadata.
fn head_for(
    tensors: &[TensorEntry],
    ours: &Manifest,
    theirs: &Manifest,
    store: &Store,
) -> Result<(Head, u64), String> {
    let layout = |ts: &[TensorEntry]| -> Vec<(String, String, Vec<u64>)> {
        ts.iter()
            .map(|t| (t.name.clone(), t.dtype.clone(), t.shape.clone()))
            .collect()
    };
    let mine = layout(tensors);
    for side in [ours, theirs] {
        if layout(&side.tensors) == mine {
            return Ok((side.head.clone(), 0));
        }
    }
    let h = ours
        .head
        .header
        .as_ref()
        .ok_or("ours' manifest has no header object")?;
    let bytes = store
        .get(&h.oid, h.size)
        .map_err(|e| format!("ours' header: {e}"))?;
    let metadata = header::parse(&bytes, None)
        .map_err(|(t, p)| format!("ours' header ({}): {p}", t.unwrap_or_default()))?
        .metadata;
    let infos = tensors
        .iter()
        .map(|t| {
            let dtype: DType = t
                .dtype
                .parse()
                .map_err(|_| format!("tensor `{}`: unknown dtype {}", t.name, t.dtype))?;
            Ok(TensorInfo::new(t.name.clone(), dtype, t.shape.clone()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let plan = HeaderPlan::new(&infos, &metadata)
        .map_err(|(t, p)| format!("merged header ({}): {p}", t.unwrap_or_default()))?;
    let new = u64::from(!store.contains(&crate::vcs::store::sha256_hex(plan.header_bytes())));
    let header = store_object(store, None, plan.header_bytes()).map_err(|e| e.to_string())?;
    Ok((
        Head {
            header: Some(header),
            objects: vec![],
            size: plan.file_len(),
            tensors: tensors.len() as u64,
            ..ours.head.clone()
        },
        new,
    ))
}
