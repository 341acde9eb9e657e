//! The merge methods git-theta knows, with mergekit 0.1.5's parameters,
//! defaults and input rules. A method is described once here; the code that
//! computes it is looked up by the same name.

use super::params::Kind;

/// Whom a parameter is set for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One value for the merge of a tensor (`normalize`, `t`, `lambda`).
    Shared,
    /// A value per input model, base included (`weight` of `linear`).
    PerInput,
    /// A value per model other than the base (`weight`, `density` of `ties`).
    PerNonBase,
}

/// A parameter's default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Default {
    /// It must be given.
    Required,
    /// It may be left out, meaning "not set" (passthrough's `scale`).
    Unset,
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
}

/// One parameter of a method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamSpec {
    /// Its name in YAML.
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Whom it is set for.
    pub scope: Scope,
    /// Its default.
    pub default: Default,
}

/// How a method treats `base_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BasePolicy {
    /// A base is needed.
    Required,
    /// A base is used when given.
    Optional,
    /// A base, if given, is merged like any other input.
    Ignored,
}

/// A merge method's description.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MethodSpec {
    /// Its name in `merge_method`.
    pub name: &'static str,
    /// Its parameters.
    pub params: &'static [ParamSpec],
    /// What it does with a base model.
    pub base: BasePolicy,
    /// Least number of inputs, base included.
    pub min_inputs: usize,
    /// Most inputs, base included, if bounded.
    pub max_inputs: Option<usize>,
    /// Exact number of non-base inputs, if fixed.
    pub non_base: Option<usize>,
}

const fn p(name: &'static str, kind: Kind, scope: Scope, default: Default) -> ParamSpec {
    ParamSpec {
        name,
        kind,
        scope,
        default,
    }
}

const INT8_MASK: ParamSpec = p("int8_mask", Kind::Bool, Scope::Shared, Default::Bool(false));
const LAMBDA: ParamSpec = p("lambda", Kind::Float, Scope::Shared, Default::Float(1.0));
const WEIGHT_NB: ParamSpec = p("weight", Kind::Float, Scope::PerNonBase, Default::Required);
const DENSITY: ParamSpec = p(
    "density",
    Kind::Float,
    Scope::PerNonBase,
    Default::Float(1.0),
);
const GAMMA: ParamSpec = p(
    "gamma",
    Kind::Float,
    Scope::PerNonBase,
    Default::Float(0.01),
);
const EPSILON: ParamSpec = p(
    "epsilon",
    Kind::Float,
    Scope::PerNonBase,
    Default::Float(0.15),
);

const fn normalize(d: bool) -> ParamSpec {
    p("normalize", Kind::Bool, Scope::Shared, Default::Bool(d))
}
const fn rescale(d: bool) -> ParamSpec {
    p("rescale", Kind::Bool, Scope::Shared, Default::Bool(d))
}

/// The task-arithmetic family: a base, task vectors, optional sparsification
/// and sign consensus.
const fn task_method(name: &'static str, params: &'static [ParamSpec]) -> MethodSpec {
    MethodSpec {
        name,
        params,
        base: BasePolicy::Required,
        min_inputs: 1,
        max_inputs: None,
        non_base: None,
    }
}

/// Every method, by name.
pub const METHODS: &[MethodSpec] = &[
    MethodSpec {
        name: "linear",
        params: &[
            p("weight", Kind::Float, Scope::PerInput, Default::Required),
            normalize(true),
        ],
        base: BasePolicy::Ignored,
        min_inputs: 1,
        max_inputs: None,
        non_base: None,
    },
    task_method(
        "task_arithmetic",
        &[
            INT8_MASK,
            normalize(false),
            rescale(false),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
        ],
    ),
    task_method(
        "ties",
        &[
            INT8_MASK,
            normalize(true),
            rescale(false),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
        ],
    ),
    task_method(
        "dare_ties",
        &[
            INT8_MASK,
            normalize(false),
            rescale(true),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
        ],
    ),
    task_method(
        "dare_linear",
        &[
            INT8_MASK,
            normalize(false),
            rescale(true),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
        ],
    ),
    task_method(
        "breadcrumbs",
        &[
            INT8_MASK,
            normalize(false),
            rescale(false),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
            GAMMA,
        ],
    ),
    task_method(
        "breadcrumbs_ties",
        &[
            INT8_MASK,
            normalize(false),
            rescale(false),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
            GAMMA,
        ],
    ),
    task_method(
        "della",
        &[
            INT8_MASK,
            normalize(true),
            rescale(true),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
            EPSILON,
        ],
    ),
    task_method(
        "della_linear",
        &[
            INT8_MASK,
            normalize(false),
            rescale(true),
            LAMBDA,
            WEIGHT_NB,
            DENSITY,
            EPSILON,
        ],
    ),
    MethodSpec {
        name: "slerp",
        params: &[p("t", Kind::Float, Scope::Shared, Default::Required)],
        base: BasePolicy::Required,
        min_inputs: 2,
        max_inputs: Some(2),
        non_base: Some(1),
    },
    MethodSpec {
        name: "nuslerp",
        params: &[
            WEIGHT_NB,
            p(
                "nuslerp_row_wise",
                Kind::Bool,
                Scope::Shared,
                Default::Bool(false),
            ),
            p(
                "nuslerp_flatten",
                Kind::Bool,
                Scope::Shared,
                Default::Bool(true),
            ),
        ],
        base: BasePolicy::Optional,
        min_inputs: 2,
        max_inputs: Some(3),
        non_base: Some(2),
    },
    MethodSpec {
        name: "model_stock",
        params: &[p(
            "filter_wise",
            Kind::Bool,
            Scope::Shared,
            Default::Bool(false),
        )],
        base: BasePolicy::Required,
        min_inputs: 3,
        max_inputs: None,
        non_base: None,
    },
    MethodSpec {
        name: "passthrough",
        params: &[p("scale", Kind::Float, Scope::PerInput, Default::Unset)],
        base: BasePolicy::Ignored,
        min_inputs: 1,
        max_inputs: Some(1),
        non_base: None,
    },
];

/// The method called `name`.
pub fn method(name: &str) -> Option<&'static MethodSpec> {
    METHODS.iter().find(|m| m.name == name)
}

impl MethodSpec {
    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }

    /// Names of its parameters, for error messages.
    pub fn param_names(&self) -> Vec<&'static str> {
        self.params.iter().map(|p| p.name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_methods_are_all_known_with_mergekit_defaults() {
        for name in [
            "linear",
            "task_arithmetic",
            "ties",
            "dare_ties",
            "dare_linear",
            "breadcrumbs",
            "breadcrumbs_ties",
            "della",
            "della_linear",
            "slerp",
            "nuslerp",
            "model_stock",
            "passthrough",
        ] {
            assert!(method(name).is_some(), "{name}");
        }
        let ties = method("ties").expect("ties");
        assert_eq!(
            ties.param("normalize").map(|p| p.default),
            Some(Default::Bool(true))
        );
        assert_eq!(
            ties.param("density").map(|p| p.default),
            Some(Default::Float(1.0))
        );
        assert_eq!(
            method("dare_ties")
                .and_then(|m| m.param("rescale"))
                .map(|p| p.default),
            Some(Default::Bool(true))
        );
        assert_eq!(
            method("della")
                .and_then(|m| m.param("epsilon"))
                .map(|p| p.default),
            Some(Default::Float(0.15))
        );
        assert!(method("karcher").is_none());
    }
}
