//! Choosing how a changed tensor is stored at `git add`: compared chunk by
//! chunk with its previous version (rebuilt through its chain), it becomes
//! the previous entry unchanged, a sparse update (whenever that is smaller
//! than the dense bytes), a side-loaded low-rank or IA3 update, or a dense
//! snapshot. See `docs/manifest.md`, "Update chains".

use std::collections::HashMap;
use std::io::Read;

use theta_engine::safetensors::header::Entry;

use super::clean::{CleanError, Ctx, StatsAcc, put_raw, read_full};
use super::lowrank::{Axis, Factors, Ia3, LowRank};
use super::manifest::{ObjectRef, Step, TensorEntry};
use super::smudge::Chain;
use super::store::Store;
use super::update::{Sparse, Target, Update};

/// Default most updates on a dense base (`theta.maxChain`).
pub const DEFAULT_MAX_CHAIN: usize = 10;

/// A kind asked for with `git theta add --update`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forced {
    /// Every changed tensor dense.
    Dense,
    /// Every changed tensor with a previous version as a sparse update, even
    /// where dense would be smaller.
    Sparse,
}

/// A side-loaded update for one tensor (from an adapter).
#[derive(Clone, Debug, PartialEq)]
pub enum Factored {
    /// `W + s·B·A`.
    LowRank(Factors),
    /// `W ⊙ v`.
    Ia3(Axis, Vec<f32>),
}

impl Factored {
    /// Applies the update to rows `row0..` of `t`, in place.
    pub fn apply(&self, t: &Target<'_>, row0: u64, dense: &mut [u8]) -> Result<(), String> {
        match self {
            Factored::LowRank(f) => LowRank::apply_factors(t, row0, f, dense),
            Factored::Ia3(axis, v) => Ia3::apply_vector(t, row0, *axis, v, dense),
        }
    }

    fn kind(&self) -> &'static dyn Update {
        match self {
            Factored::LowRank(_) => &LowRank,
            Factored::Ia3(..) => &Ia3,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Factored::LowRank(f) => LowRank::encode(f),
            Factored::Ia3(axis, v) => Ia3::encode(*axis, v),
        }
    }
}

/// How changed tensors are stored.
#[derive(Clone, Debug)]
pub struct UpdateOptions {
    /// The store holding previous versions' objects; `None`: no comparison,
    /// every tensor is stored dense.
    pub store: Option<Store>,
    /// The previous version of each tensor, by name.
    pub previous: HashMap<String, TensorEntry>,
    /// Most updates on a dense base: the next change is a dense snapshot
    /// (0: never an update).
    pub max_chain: usize,
    /// Relative change (`‖new − old‖ / ‖old‖`) below which a float tensor
    /// counts as unchanged; `None`: any change counts.
    pub tolerance: Option<f64>,
    /// A kind asked for by the user.
    pub forced: Option<Forced>,
    /// Side-loaded updates by tensor name.
    pub factored: HashMap<String, Factored>,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        UpdateOptions {
            store: None,
            previous: HashMap::new(),
            max_chain: DEFAULT_MAX_CHAIN,
            tolerance: None,
            forced: None,
            factored: HashMap::new(),
        }
    }
}

impl UpdateOptions {
    /// The previous version of `entry` to compare with: same dtype, shape
    /// and chunking, a known element size, every object local.
    pub fn base_for(&self, entry: &Entry, rows_per: Option<u64>) -> Option<&TensorEntry> {
        let store = self.store.as_ref()?;
        let prev = self.previous.get(&entry.info.name)?;
        let usable = prev.dtype == entry.info.dtype.name()
            && prev.shape == entry.info.shape
            && prev.size == entry.end - entry.begin
            && prev.chunk_rows == rows_per
            && prev
                .steps()
                .all(|(_, objects)| objects.iter().all(|o| store.contains(&o.oid)));
        let wanted = self.forced != Some(Forced::Dense)
            && (self.max_chain > 0
                || prev.chain_len() > 0
                || self.factored.contains_key(&prev.name));
        (usable && wanted).then_some(prev)
    }
}

/// What was compared so far.
struct Tally {
    /// Whether to sum norms (a tolerance is set).
    norms: bool,
    changed: bool,
    lists: bool,
    diff2: f64,
    old2: f64,
}

/// Cleans `entry`, whose previous version is `prev`, choosing its update.
pub(super) fn clean_against(
    entry: &Entry,
    prev: &TensorEntry,
    opts: &UpdateOptions,
    input: &mut (impl Read + ?Sized),
    buf: &mut Vec<u8>,
    ctx: &mut Ctx<'_>,
) -> Result<TensorEntry, CleanError> {
    let info = &entry.info;
    let base_err = |message: String| CleanError::Base {
        tensor: info.name.clone(),
        message,
    };
    let store = opts
        .store
        .as_ref()
        .ok_or_else(|| base_err("no store".into()))?;
    let mut chain = Chain::new(prev, store).map_err(|e| base_err(e.to_string()))?;
    let shape = info.shape.clone();
    let target = Target {
        name: &info.name,
        dtype: info.dtype,
        shape: &shape,
    };
    let allow_update = prev.chain_len() < opts.max_chain;
    let mut factored = opts.factored.get(&info.name);
    if factored.is_some() && !allow_update {
        eprintln!(
            "git-theta: `{}`: its chain has {} updates (theta.maxChain): stored as a snapshot instead",
            info.name,
            prev.chain_len()
        );
        factored = None;
    }
    let force_list = opts.forced == Some(Forced::Sparse);
    let mut stats = StatsAcc::new(info.dtype, ctx.stats);
    let mut tally = Tally {
        norms: opts.tolerance.is_some(),
        changed: false,
        lists: false,
        diff2: 0.0,
        old2: 0.0,
    };
    // `None`: an unchanged chunk, stored only if the tensor changed (a
    // re-clean of an unchanged file must not write anything).
    let mut objects: Vec<Option<ObjectRef>> = Vec::new();
    let rows_per = prev.chunk_rows.unwrap_or(0);
    for (i, &len) in chain.lengths.clone().iter().enumerate() {
        buf.resize(len as usize, 0);
        if read_full(input, buf).map_err(CleanError::Read)? != buf.len() {
            return Err(CleanError::Truncated {
                tensor: info.name.clone(),
            });
        }
        let old = chain.piece(i).map_err(|e| base_err(e.to_string()))?;
        stats.add(&info.name, buf);
        if let Some(f) = factored {
            let mut expect = old.to_vec();
            let row0 = rows_per * i as u64;
            let same = f.apply(&target, row0, &mut expect).is_ok() && expect == *buf;
            if same {
                tally.changed |= old[..] != buf[..];
                continue;
            }
            eprintln!(
                "git-theta: `{}`: the file is not its previous version with the side-loaded {} update: stored without it",
                info.name,
                f.kind().name()
            );
            factored = None;
            // Store the chunks skipped so far, which matched: rebuild them.
            for j in 0..i {
                let old_j = chain.chunk(j).map_err(|e| base_err(e.to_string()))?;
                let mut new_j = old_j.clone();
                f.apply(&target, rows_per * j as u64, &mut new_j)
                    .map_err(base_err)?;
                objects.push(store_chunk(
                    &target,
                    &old_j,
                    &new_j,
                    allow_update,
                    force_list,
                    &mut tally,
                    ctx,
                )?);
            }
        }
        objects.push(store_chunk(
            &target,
            &old,
            buf,
            allow_update,
            force_list,
            &mut tally,
            ctx,
        )?);
    }
    if !tally.changed {
        return Ok(prev.clone());
    }
    if let Some(tol) = opts.tolerance
        && tally.old2 > 0.0
        && (tally.diff2 / tally.old2).sqrt() < tol
    {
        return Ok(prev.clone());
    }
    let objects = if factored.is_some() {
        vec![]
    } else {
        let mut out = Vec::with_capacity(objects.len());
        for (i, o) in objects.into_iter().enumerate() {
            out.push(match o {
                Some(o) => o,
                None if allow_update => {
                    tally.lists = true;
                    ctx.store(Some(&info.name), &0u64.to_le_bytes())?
                }
                None => {
                    let old = chain.chunk(i).map_err(|e| base_err(e.to_string()))?;
                    ctx.store(Some(&info.name), &old)?
                }
            });
        }
        out
    };
    let mut base = prev.base.clone();
    base.push(Step {
        update: prev.update.clone(),
        objects: prev.objects.clone(),
    });
    let (update, objects, base) = if let Some(f) = factored {
        let obj = ctx.store(Some(&info.name), &f.encode())?;
        (f.kind().name(), vec![obj], base)
    } else if tally.lists {
        (Sparse.name(), objects, base)
    } else {
        (super::manifest::DENSE, objects, vec![])
    };
    Ok(TensorEntry {
        name: info.name.clone(),
        dtype: info.dtype.name().to_owned(),
        shape: info.shape.clone(),
        size: entry.end - entry.begin,
        update: update.to_owned(),
        encoding: prev.encoding.clone(),
        chunk_rows: prev.chunk_rows,
        objects,
        base,
        stats: stats.finish(),
    })
}

/// Stores chunk `new` (previously `old`) as a sparse list when that is
/// smaller (or forced) and updates are allowed, else as its bytes.
fn store_chunk(
    t: &Target<'_>,
    old: &[u8],
    new: &[u8],
    allow_update: bool,
    force_list: bool,
    tally: &mut Tally,
    ctx: &mut Ctx<'_>,
) -> Result<Option<ObjectRef>, CleanError> {
    if tally.norms {
        accumulate_change(t, old, new, tally);
    }
    if old == new {
        return Ok(None);
    }
    tally.changed = true;
    if !allow_update {
        let put = put_raw(ctx.sink, new);
        return ctx.count(Some(t.name), put).map(Some);
    }
    let (obj, _) = Sparse::encode(old, new, t.dtype.size(), force_list);
    if obj.len() != new.len() || force_list {
        tally.lists = true;
    }
    ctx.store(Some(t.name), &obj).map(Some)
}

/// Adds the chunk's squared change and squared norm (float dtypes only).
fn accumulate_change(t: &Target<'_>, old: &[u8], new: &[u8], tally: &mut Tally) {
    if !t.dtype.is_float() {
        return;
    }
    let n = old.len() / t.dtype.size();
    let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
    let ok = theta_engine::convert::to_f32(t.name, old, t.dtype, &mut a).is_ok()
        && theta_engine::convert::to_f32(t.name, new, t.dtype, &mut b).is_ok();
    if ok {
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (f64::from(*x), f64::from(*y));
            tally.diff2 += (y - x) * (y - x);
            tally.old2 += x * x;
        }
    }
}
