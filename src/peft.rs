//! Hugging Face PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! [`read_adapter`] reads a LoRA (plain, rsLoRA, DoRA, `lora_bias`; Linear, GPT‑2 `Conv1D`, ConvNd
//! and Embedding targets) or IA³ adapter as saved by PEFT's `save_pretrained`, checks that it is
//! complete and consistent with its config, and resolves the per-module rank, alpha and scale the
//! way PEFT 0.21 does when it loads the folder. [`write_lora_adapter`] emits an extracted adapter
//! (ADAPTERS.md §11) as a LoRA folder that PEFT loads with scale 1 on every module.
//!
//! Checkpoint keys (PEFT strips the adapter name when saving, `_remove_adapter_name_from_state_dict_key`):
//!
//! | key (after `base_model.model.<path>`) | tensor |
//! |---|---|
//! | `.lora_A.weight`, `.lora_B.weight` | Linear A `[r,in]`, B `[out,r]`; ConvNd A `[r,in,k…]`, B `[out,r,1…]` |
//! | `.lora_B.bias` | `[out]`, only with `lora_bias: true` |
//! | `.lora_embedding_A`, `.lora_embedding_B` | Embedding A `[r,vocab]`, B `[dim,r]` |
//! | `.lora_magnitude_vector` | DoRA m: Linear `[out]`, Embedding `[dim]`, ConvNd `[1,out,1…]` |
//! | `.ia3_l` | IA³ l: Linear `[out,1]` (or `[1,in]` for feed-forward modules), ConvNd `[1,C,1…]` |
//!
//! Keys that still carry one adapter name (`.lora_A.default.weight`, `.lora_embedding_A.default`,
//! `.ia3_l.default`, `.lora_magnitude_vector.default.weight`, as in a raw `model.state_dict()`)
//! are accepted too, as long as the whole file uses one name.
//!
//! Every error names the file and the key, tensor or module it is about; nothing is skipped
//! silently: unknown keys, full weights (`modules_to_save`), incomplete modules, rank or shape
//! mismatches and unsupported dtypes or LoRA variants are errors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use regex::Regex;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// Name of the config file in a PEFT adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// Name of the weights file in a PEFT adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Prefix of every module key in a PEFT checkpoint (`PeftModel.base_model.model`).
pub const KEY_PREFIX: &str = "base_model.model.";

/// The PEFT method of an adapter folder (`peft_type` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    /// `"LORA"`: LoRA, rsLoRA, DoRA (`use_dora`), LoRA with `lora_bias`.
    Lora,
    /// `"IA3"`: learned scaling vectors.
    Ia3,
}

/// `target_modules` / `feedforward_modules` of a PEFT config: a list of names or one regex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// A list: PEFT matches a module path that equals an entry or ends with `"." + entry`
    /// (`feedforward_modules` lists are matched as a plain string suffix, see
    /// [`PeftConfig::is_feedforward`]).
    List(Vec<String>),
    /// A single string: a Python regex that must match the whole module path (`re.fullmatch`).
    Regex(String),
    /// `null` or absent.
    Unset,
}

/// A parsed `adapter_config.json`. Pattern keys are compiled when the config is parsed, so a key
/// that is not a valid regular expression is reported right away (naming the file and the key).
#[derive(Debug, Clone)]
pub struct PeftConfig {
    /// `peft_type`.
    pub peft_type: PeftType,
    /// `r`: the default LoRA rank (PEFT's default 8 when absent; 0 for IA³, which has no rank).
    pub r: usize,
    /// `lora_alpha` (PEFT's default 8 when absent; 0 for IA³).
    pub lora_alpha: f64,
    /// `use_rslora`: scale = alpha/sqrt(r) instead of alpha/r.
    pub use_rslora: bool,
    /// `use_dora`: every module carries a `lora_magnitude_vector`.
    pub use_dora: bool,
    /// `fan_in_fan_out`: the base weight is stored `[in,out]` (GPT‑2 `Conv1D`).
    pub fan_in_fan_out: bool,
    /// `lora_bias`: every Linear/Conv module carries `lora_B.bias`.
    pub lora_bias: bool,
    /// `rank_pattern`: pattern key → rank (see [`PeftConfig::rank_for`] for the matching).
    pub rank_pattern: BTreeMap<String, usize>,
    /// `alpha_pattern`: pattern key → alpha.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// The keys of `rank_pattern` in file order: PEFT tries them in this order, first match wins.
    pub rank_pattern_keys: Vec<String>,
    /// The keys of `alpha_pattern` in file order.
    pub alpha_pattern_keys: Vec<String>,
    /// `target_modules`.
    pub target_modules: TargetModules,
    /// `feedforward_modules` (IA³ only; `None` for LoRA or when absent/null).
    pub feedforward_modules: Option<TargetModules>,
    /// The whole file as read, so nothing is lost.
    pub raw: Value,
    rank_res: Vec<Regex>,
    alpha_res: Vec<Regex>,
    ff_re: Option<Regex>,
    target_re: Option<Regex>,
}

/// The kind of layer an adapter module wraps, as told by its checkpoint keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `lora_A.weight` `[r,in]` + `lora_B.weight` `[out,r]` (Linear / GPT‑2 Conv1D), or ConvNd
    /// factors `[r,in,kh,kw]` + `[out,r,1,1]` (3‑D for Conv1d, 5‑D for Conv3d).
    Linear,
    /// `lora_embedding_A` `[r,vocab]` + `lora_embedding_B` `[dim,r]`.
    Embedding,
    /// `ia3_l`.
    Ia3,
}

/// One adapted module of a PEFT adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleAdapter {
    /// Module path with `base_model.model.` stripped, e.g. `encoder.layer.0.attention.self.query`.
    pub path: String,
    /// Which tensors the module has.
    pub kind: ModuleKind,
    /// `lora_A.weight` or `lora_embedding_A`, as stored.
    pub lora_a: Option<ArrayD<f32>>,
    /// `lora_B.weight` or `lora_embedding_B`, as stored.
    pub lora_b: Option<ArrayD<f32>>,
    /// `lora_B.bias` `[out]` (`lora_bias: true`), as stored (not multiplied by the scale).
    pub lora_b_bias: Option<ArrayD<f32>>,
    /// DoRA `lora_magnitude_vector`, as stored.
    pub magnitude: Option<ArrayD<f32>>,
    /// IA³ `ia3_l`, as stored.
    pub ia3: Option<ArrayD<f32>>,
    /// IA³: the module is in `feedforward_modules`, so `ia3_l` scales the input side. False for LoRA.
    pub feedforward: bool,
    /// LoRA rank after `rank_pattern` (equals A's first dimension); 0 for IA³.
    pub rank: usize,
    /// LoRA alpha after `alpha_pattern`; 0 for IA³.
    pub alpha: f64,
    /// LoRA scale: alpha/r, or alpha/sqrt(r) with `use_rslora`; 1.0 for IA³.
    pub scale: f64,
    /// The config's `fan_in_fan_out` for 2‑D (Linear / Conv1D) modules; false for Embedding and
    /// ConvNd modules, which PEFT never transposes.
    pub fan_in_fan_out: bool,
}

impl ModuleAdapter {
    /// True for a LoRA module on a ConvNd layer (factors with more than two dimensions).
    pub fn is_conv(&self) -> bool {
        self.kind == ModuleKind::Linear && self.lora_a.as_ref().is_some_and(|a| a.ndim() > 2)
    }
}

/// A PEFT adapter folder, read and checked.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// The folder it was read from.
    pub dir: PathBuf,
    /// Its `adapter_config.json`.
    pub config: PeftConfig,
    /// The adapted modules, sorted by path.
    pub modules: Vec<ModuleAdapter>,
}

/// A low-rank factorisation to emit with [`write_lora_adapter`] (scale folded in: ΔW = B·A).
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractedModule {
    /// Module path without `base_model.model.`, e.g. `encoder.layer.0.attention.self.query`.
    pub path: String,
    /// [`ModuleKind::Linear`] (also ConvNd, with 3‑ to 5‑D factors) or [`ModuleKind::Embedding`].
    pub kind: ModuleKind,
    /// Linear `[r,in]`, ConvNd `[r,in,k…]`, Embedding `[r,vocab]`.
    pub a: ArrayD<f32>,
    /// Linear `[out,r]`, ConvNd `[out,r,1…]`, Embedding `[dim,r]`.
    pub b: ArrayD<f32>,
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// Config options that change what the checkpoint means (or its key layout) in ways this module
/// does not model; a non-null, non-false, non-empty value is refused.
const UNSUPPORTED_LORA_OPTIONS: &[&str] = &[
    "alora_invocation_tokens",
    "layer_replication",
    "target_parameters",
    "trainable_token_indices",
    "use_qalora",
    "use_bdlora",
    "kasa_config",
    "arrow_config",
    "monteclora_config",
];

/// Keys of a JSON object in file order (serde_json's `Value` sorts them; PEFT tries pattern
/// keys in the order Python's `json.load` gives, i.e. file order). A repeated key keeps its
/// first position, as a Python dict does.
struct OrderedKeys(Vec<String>);

impl<'de> Deserialize<'de> for OrderedKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object or null")
            }
            fn visit_unit<E>(self) -> std::result::Result<OrderedKeys, E> {
                Ok(OrderedKeys(Vec::new()))
            }
            fn visit_none<E>(self) -> std::result::Result<OrderedKeys, E> {
                Ok(OrderedKeys(Vec::new()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedKeys, A::Error> {
                let mut keys: Vec<String> = Vec::new();
                while let Some((k, _)) = map.next_entry::<String, serde::de::IgnoredAny>()? {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                Ok(OrderedKeys(keys))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct PatternOrder {
    #[serde(default)]
    rank_pattern: Option<OrderedKeys>,
    #[serde(default)]
    alpha_pattern: Option<OrderedKeys>,
}

/// The regex PEFT's `get_pattern_key` uses for a pattern key:
/// `re.match(rf"(.*\.)?({key})$", module)`.
fn pattern_regex(key: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
}

/// The regex for Python's `re.fullmatch(pattern, module)`.
fn fullmatch_regex(pattern: &str) -> std::result::Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Number(_) => true,
    }
}

impl PeftConfig {
    /// Reads and parses `<dir>/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<PeftConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        PeftConfig::parse(&path, &text)
    }

    /// Parses the text of an `adapter_config.json`; `path` is only used in error messages.
    ///
    /// Absent or `null` options take PEFT's defaults (`r` 8, `lora_alpha` 8, flags false,
    /// patterns empty). Refused: a `peft_type` other than `LORA`/`IA3`, a non-positive or
    /// non-integer rank, pattern keys or `feedforward_modules` regexes that do not compile
    /// (Python-only syntax such as look-around is not supported), and LoRA options whose
    /// semantics this module does not model (`alora_invocation_tokens`, `layer_replication`,
    /// `target_parameters`, `trainable_token_indices`, `use_qalora`, `use_bdlora`, `kasa_config`,
    /// `arrow_config`, `monteclora_config`).
    pub fn parse(path: &Path, text: &str) -> Result<PeftConfig> {
        let bad = |msg: String| Error::bad_model(path, msg);
        let raw: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| bad("the config is not a JSON object".into()))?;
        let order: PatternOrder = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "`rank_pattern`/`alpha_pattern` must be objects or null: {e}"
            ))
        })?;
        let get = |k: &str| obj.get(k).filter(|v| !v.is_null());

        let peft_type = match get("peft_type") {
            Some(Value::String(s)) if s == "LORA" => PeftType::Lora,
            Some(Value::String(s)) if s == "IA3" => PeftType::Ia3,
            Some(v) => {
                return Err(bad(format!(
                    "key `peft_type`: {v} is not supported (only \"LORA\" and \"IA3\")"
                )));
            }
            None => return Err(bad("key `peft_type` is missing".into())),
        };

        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(v) => Err(bad(format!("key `{k}`: expected true/false, got {v}"))),
            }
        };
        let rank_of = |what: &str, v: &Value| -> Result<usize> {
            match v.as_u64() {
                Some(n) if n > 0 && usize::try_from(n).is_ok() => Ok(n as usize),
                _ => Err(bad(format!(
                    "{what}: expected a positive integer rank, got {v}"
                ))),
            }
        };
        let alpha_of = |what: &str, v: &Value| -> Result<f64> {
            match v.as_f64() {
                Some(a) if a.is_finite() => Ok(a),
                _ => Err(bad(format!("{what}: expected a finite number, got {v}"))),
            }
        };
        let modules_of = |k: &str| -> Result<TargetModules> {
            match get(k) {
                None => Ok(TargetModules::Unset),
                Some(Value::String(s)) => Ok(TargetModules::Regex(s.clone())),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|e| {
                        e.as_str().map(str::to_string).ok_or_else(|| {
                            bad(format!("key `{k}`: list entries must be strings, got {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(TargetModules::List),
                Some(v) => Err(bad(format!(
                    "key `{k}`: expected a list of names or a regex string, got {v}"
                ))),
            }
        };
        let object_of = |k: &str| -> Result<Map<String, Value>> {
            match get(k) {
                None => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(v) => Err(bad(format!("key `{k}`: expected an object, got {v}"))),
            }
        };

        let target_modules = modules_of("target_modules")?;
        let target_re = match &target_modules {
            // Only used for a consistency check; a Python-only regex just skips that check.
            TargetModules::Regex(s) => fullmatch_regex(s).ok(),
            _ => None,
        };

        let mut cfg = PeftConfig {
            peft_type,
            r: 0,
            lora_alpha: 0.0,
            use_rslora: false,
            use_dora: false,
            fan_in_fan_out: flag("fan_in_fan_out")?,
            lora_bias: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            rank_pattern_keys: Vec::new(),
            alpha_pattern_keys: Vec::new(),
            target_modules,
            feedforward_modules: None,
            raw: Value::Null,
            rank_res: Vec::new(),
            alpha_res: Vec::new(),
            ff_re: None,
            target_re,
        };

        match peft_type {
            PeftType::Lora => {
                for k in UNSUPPORTED_LORA_OPTIONS {
                    if let Some(v) = obj.get(*k).filter(|v| truthy(v)) {
                        return Err(bad(format!(
                            "key `{k}` = {v}: this LoRA variant/option is not supported"
                        )));
                    }
                }
                cfg.r = match get("r") {
                    None => 8,
                    Some(v) => rank_of("key `r`", v)?,
                };
                cfg.lora_alpha = match get("lora_alpha") {
                    None => 8.0,
                    Some(v) => alpha_of("key `lora_alpha`", v)?,
                };
                cfg.use_rslora = flag("use_rslora")?;
                cfg.use_dora = flag("use_dora")?;
                cfg.lora_bias = flag("lora_bias")?;
                for (k, v) in object_of("rank_pattern")? {
                    let r = rank_of(&format!("`rank_pattern` key '{k}'"), &v)?;
                    cfg.rank_pattern.insert(k, r);
                }
                for (k, v) in object_of("alpha_pattern")? {
                    let a = alpha_of(&format!("`alpha_pattern` key '{k}'"), &v)?;
                    cfg.alpha_pattern.insert(k, a);
                }
                cfg.rank_pattern_keys = order.rank_pattern.map(|o| o.0).unwrap_or_default();
                cfg.alpha_pattern_keys = order.alpha_pattern.map(|o| o.0).unwrap_or_default();
                for (keys, res, what) in [
                    (&cfg.rank_pattern_keys, &mut cfg.rank_res, "rank_pattern"),
                    (&cfg.alpha_pattern_keys, &mut cfg.alpha_res, "alpha_pattern"),
                ] {
                    for k in keys {
                        let re = pattern_regex(k).map_err(|e| {
                            bad(format!(
                                "`{what}` key '{k}' is not a regular expression graft can match \
                                 (PEFT treats pattern keys as Python regexes): {e}"
                            ))
                        })?;
                        res.push(re);
                    }
                }
            }
            PeftType::Ia3 => {
                let ff = modules_of("feedforward_modules")?;
                if let TargetModules::Regex(s) = &ff {
                    cfg.ff_re = Some(fullmatch_regex(s).map_err(|e| {
                        bad(format!(
                            "key `feedforward_modules`: '{s}' is not a regular expression graft \
                             can match (PEFT uses Python's re.fullmatch): {e}"
                        ))
                    })?);
                }
                cfg.feedforward_modules = Some(ff).filter(|f| *f != TargetModules::Unset);
            }
        }
        cfg.raw = raw;
        Ok(cfg)
    }

    /// The rank of `module` (path without `base_model.model.`) and the `rank_pattern` key that
    /// set it, if any.
    ///
    /// This is PEFT's `get_pattern_key` (peft/utils/other.py, unchanged from 0.14 through 0.21):
    /// pattern keys are tried in file order and the first key for which
    /// `re.match(rf"(.*\.)?({key})$", module)` succeeds wins; without a match the default `r`
    /// applies. So a key matches when the whole module path matches it as a regex, or when some
    /// suffix of the path that starts right after a `.` does: `"query"` matches
    /// `encoder.layer.0.attention.self.query`, `"layer.0.attention.self.query"` does too, `"^query"`
    /// only a top-level `query`, `"uery"` nothing. A `.` in a key is a regex wildcard.
    pub fn rank_for(&self, module: &str) -> (usize, Option<&str>) {
        match first_match(&self.rank_pattern_keys, &self.rank_res, module) {
            Some(k) => (self.rank_pattern.get(k).copied().unwrap_or(self.r), Some(k)),
            None => (self.r, None),
        }
    }

    /// The alpha of `module` and the `alpha_pattern` key that set it, if any (matching as in
    /// [`PeftConfig::rank_for`]; rank and alpha patterns are resolved independently).
    pub fn alpha_for(&self, module: &str) -> (f64, Option<&str>) {
        match first_match(&self.alpha_pattern_keys, &self.alpha_res, module) {
            Some(k) => (
                self.alpha_pattern
                    .get(k)
                    .copied()
                    .unwrap_or(self.lora_alpha),
                Some(k),
            ),
            None => (self.lora_alpha, None),
        }
    }

    /// The LoRA scale of a module with rank `r` and alpha `alpha`: alpha/r, or alpha/sqrt(r)
    /// with `use_rslora` (PEFT `LoraLayer.update_layer`).
    pub fn scale(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// IA³: whether `module` is a feed-forward module (its `ia3_l` scales the input).
    ///
    /// As PEFT's `IA3Model._check_target_module_feedforward`: a string is a regex that must match
    /// the whole path (`re.fullmatch`); a list matches when the path ends with an entry as a
    /// plain string suffix (`key.endswith(target_key)`, no `.` boundary, unlike
    /// `target_modules`). False for LoRA configs or when unset.
    pub fn is_feedforward(&self, module: &str) -> bool {
        match &self.feedforward_modules {
            Some(TargetModules::List(l)) => l.iter().any(|k| module.ends_with(k.as_str())),
            Some(TargetModules::Regex(_)) => {
                self.ff_re.as_ref().is_some_and(|re| re.is_match(module))
            }
            _ => false,
        }
    }

    /// Whether `target_modules` selects `module`, as PEFT's `check_target_module_exists`: a list
    /// entry matches the path exactly or as a `.`-bounded suffix; a string must match the whole
    /// path as a regex. `None` when this cannot be told (unset, the `"all-linear"` shorthand, or
    /// a Python-only regex). `layers_to_transform` and `exclude_modules` (which only narrow the
    /// selection) are not applied.
    pub fn targets(&self, module: &str) -> Option<bool> {
        match &self.target_modules {
            TargetModules::List(l) => Some(
                l.iter()
                    .any(|t| module == t || module.ends_with(&format!(".{t}"))),
            ),
            TargetModules::Regex(s) if s == "all-linear" => None,
            TargetModules::Regex(_) => self.target_re.as_ref().map(|re| re.is_match(module)),
            TargetModules::Unset => None,
        }
    }
}

fn first_match<'a>(keys: &'a [String], res: &[Regex], module: &str) -> Option<&'a str> {
    keys.iter()
        .zip(res)
        .find(|(_, re)| re.is_match(module))
        .map(|(k, _)| k.as_str())
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Param {
    LoraA,
    LoraB,
    LoraBBias,
    EmbA,
    EmbB,
    Magnitude,
    Ia3,
}

const PARAM_SEGMENTS: &[&str] = &[
    "lora_A",
    "lora_B",
    "lora_embedding_A",
    "lora_embedding_B",
    "lora_magnitude_vector",
    "ia3_l",
];

enum KeyClass {
    /// (module path, parameter, adapter name if the key carries one)
    Adapter(String, Param, Option<String>),
    FullWeight,
    Unknown,
}

/// Splits a checkpoint key into module path, parameter and optional adapter name.
fn classify_key(key: &str) -> KeyClass {
    let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
        return KeyClass::Unknown;
    };
    let segs: Vec<&str> = rest.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return KeyClass::Unknown;
    }
    let Some(i) = segs.iter().rposition(|s| PARAM_SEGMENTS.contains(s)) else {
        // Other PEFT tensors (lora_* of LoRA variants, ia3_* …) are unknown, not full weights.
        if segs
            .iter()
            .any(|s| s.starts_with("lora_") || s.starts_with("ia3_"))
        {
            return KeyClass::Unknown;
        }
        if segs.contains(&"modules_to_save")
            || matches!(segs.last(), Some(&"weight") | Some(&"bias"))
        {
            return KeyClass::FullWeight;
        }
        return KeyClass::Unknown;
    };
    if i == 0 {
        return KeyClass::Unknown;
    }
    if segs[..i].contains(&"modules_to_save") {
        return KeyClass::FullWeight;
    }
    let path = segs[..i].join(".");
    let tail = &segs[i + 1..];
    let name = |n: &str| Some(n.to_string());
    let (param, adapter) = match (segs[i], tail) {
        ("lora_A", ["weight"]) => (Param::LoraA, None),
        ("lora_A", [n, "weight"]) => (Param::LoraA, name(n)),
        ("lora_B", ["weight"]) => (Param::LoraB, None),
        ("lora_B", [n, "weight"]) => (Param::LoraB, name(n)),
        ("lora_B", ["bias"]) => (Param::LoraBBias, None),
        ("lora_B", [n, "bias"]) => (Param::LoraBBias, name(n)),
        ("lora_embedding_A", []) => (Param::EmbA, None),
        ("lora_embedding_A", [n]) => (Param::EmbA, name(n)),
        ("lora_embedding_B", []) => (Param::EmbB, None),
        ("lora_embedding_B", [n]) => (Param::EmbB, name(n)),
        ("lora_magnitude_vector", []) => (Param::Magnitude, None),
        ("lora_magnitude_vector", [n]) | ("lora_magnitude_vector", [n, "weight"]) => {
            (Param::Magnitude, name(n))
        }
        ("ia3_l", []) => (Param::Ia3, None),
        ("ia3_l", [n]) => (Param::Ia3, name(n)),
        _ => return KeyClass::Unknown,
    };
    KeyClass::Adapter(path, param, adapter)
}

/// Converts a stored tensor to f32 (f32, f16, bf16, f64 accepted) and refuses non-finite values.
pub fn tensor_f32(
    file: &Path,
    key: &str,
    view: &safetensors::tensor::TensorView,
) -> Result<ArrayD<f32>> {
    let bad = |msg: String| Error::bad_model(file, format!("tensor '{key}': {msg}"));
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(bad(format!(
                "dtype {other:?} is not supported (expected F32, F16, BF16 or F64)"
            )));
        }
    };
    let arr = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
        .map_err(|e| bad(format!("data does not fit shape {:?}: {e}", view.shape())))?;
    if arr.iter().any(|v| !v.is_finite()) {
        return Err(bad("contains non-finite values (NaN or ±inf)".into()));
    }
    Ok(arr)
}

#[derive(Default)]
struct Parts {
    tensors: BTreeMap<Param, (String, ArrayD<f32>)>,
}

/// Reads and checks a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
///
/// Tensors may be f32, f16, bf16 or f64 and are converted to f32. Every key must be one of the
/// adapter keys listed in the module docs; full weights (`modules_to_save`, saved embedding
/// layers, `bias: "all"`) are refused by name, as are unknown keys. Each module must be
/// complete and consistent: A and B both present with B's second dimension = A's first = the
/// rank that `rank_pattern`/`r` gives the module (see [`PeftConfig::rank_for`]); `lora_B.bias`
/// exactly when `lora_bias`; `lora_magnitude_vector` exactly when `use_dora`, with the shape
/// PEFT gives it; `ia3_l` shaped as the module's feed-forward membership says; the module
/// selected by `target_modules` when that can be told. ConvNd LoRA with `groups > 1` (B narrower
/// than the rank) is refused. An adapter with no module is an error.
pub fn read_adapter(dir: &Path) -> Result<PeftAdapter> {
    if !dir.is_dir() {
        return Err(Error::bad_model(
            dir,
            "not a PEFT adapter folder (expected a directory with adapter_config.json and \
             adapter_model.safetensors)",
        ));
    }
    let config = PeftConfig::read(dir)?;
    let wpath = dir.join(WEIGHTS_FILE);
    if !wpath.exists() {
        for alt in ["adapter_model.bin", "adapter_model.pt"] {
            if dir.join(alt).exists() {
                return Err(Error::bad_model(
                    dir.join(alt),
                    format!("pickled weights are not read; save the adapter as {WEIGHTS_FILE}"),
                ));
            }
        }
    }
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_model(&wpath, format!("not a valid safetensors file: {e}")))?;
    let bad = |msg: String| Error::bad_model(&wpath, msg);

    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let mut full = Vec::new();
    let mut unknown = Vec::new();
    let mut adapters: BTreeSet<Option<String>> = BTreeSet::new();
    let mut groups: BTreeMap<String, Parts> = BTreeMap::new();
    for key in names {
        match classify_key(key) {
            KeyClass::FullWeight => full.push(key),
            KeyClass::Unknown => unknown.push(key),
            KeyClass::Adapter(path, param, adapter) => {
                let view = st
                    .tensor(key)
                    .map_err(|e| bad(format!("tensor '{key}': {e}")))?;
                let arr = tensor_f32(&wpath, key, &view)?;
                adapters.insert(adapter);
                let parts = groups.entry(path.clone()).or_default();
                if let Some((other, _)) = parts.tensors.get(&param) {
                    return Err(bad(format!(
                        "module '{path}': '{other}' and '{key}' are the same parameter"
                    )));
                }
                parts.tensors.insert(param, (key.to_string(), arr));
            }
        }
    }
    if !full.is_empty() || !unknown.is_empty() {
        let mut msgs = Vec::new();
        if !unknown.is_empty() {
            msgs.push(format!(
                "unrecognised keys (not {KEY_PREFIX}<module>.<lora_A.weight|lora_B.weight|\
                 lora_B.bias|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|ia3_l>): {}",
                unknown.join(", ")
            ));
        }
        if !full.is_empty() {
            let hint = match config.raw.get("bias").and_then(Value::as_str) {
                Some(b) if b != "none" => format!(" (the config has bias = \"{b}\")"),
                _ => String::new(),
            };
            msgs.push(format!(
                "full-weight modules (modules_to_save, saved embedding layers or trained biases) \
                 are not supported yet{hint}: {}",
                full.join(", ")
            ));
        }
        return Err(bad(msgs.join("; ")));
    }
    if adapters.len() > 1 {
        let list: Vec<String> = adapters
            .iter()
            .map(|a| a.clone().unwrap_or_else(|| "<none>".into()))
            .collect();
        return Err(bad(format!(
            "keys carry different adapter names ({}); save one adapter per folder",
            list.join(", ")
        )));
    }
    if groups.is_empty() {
        return Err(bad("the adapter has no modules".into()));
    }
    let mut modules = Vec::with_capacity(groups.len());
    for (path, parts) in groups {
        modules.push(build_module(&wpath, &config, path, parts)?);
    }
    Ok(PeftAdapter {
        dir: dir.to_path_buf(),
        config,
        modules,
    })
}

fn dims(a: &ArrayD<f32>) -> &[usize] {
    a.shape()
}

fn build_module(
    file: &Path,
    cfg: &PeftConfig,
    path: String,
    mut parts: Parts,
) -> Result<ModuleAdapter> {
    let bad = |msg: String| Error::bad_model(file, format!("module '{path}': {msg}"));
    let mut take = |p: Param| parts.tensors.remove(&p);
    let a = take(Param::LoraA);
    let b = take(Param::LoraB);
    let b_bias = take(Param::LoraBBias);
    let ea = take(Param::EmbA);
    let eb = take(Param::EmbB);
    let mag = take(Param::Magnitude);
    let ia3 = take(Param::Ia3);

    if cfg.targets(&path) == Some(false) {
        return Err(bad(format!(
            "has adapter tensors but `target_modules` ({:?}) does not select it, so PEFT would \
             ignore them",
            cfg.target_modules
        )));
    }

    if cfg.peft_type == PeftType::Ia3 {
        let present: Vec<&str> = [&a, &b, &b_bias, &ea, &eb, &mag]
            .into_iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .collect();
        if !present.is_empty() {
            return Err(bad(format!(
                "LoRA tensors in an IA3 adapter: {}",
                present.join(", ")
            )));
        }
        let Some((key, l)) = ia3 else {
            return Err(bad("no ia3_l tensor".into()));
        };
        let feedforward = cfg.is_feedforward(&path);
        let s = dims(&l);
        let ok = match s.len() {
            2 if feedforward => s[0] == 1,
            2 => s[1] == 1,
            3..=5 => s[0] == 1 && s[2..].iter().all(|&d| d == 1),
            _ => false,
        };
        if !ok || s.contains(&0) {
            let want = match (s.len(), feedforward) {
                (2, true) => "[1, in] (the module is in feedforward_modules)",
                (2, false) => "[out, 1] (the module is not in feedforward_modules)",
                _ => "[out, 1], [1, in] or [1, C, 1, 1] (conv)",
            };
            return Err(bad(format!("'{key}' has shape {s:?}, expected {want}")));
        }
        return Ok(ModuleAdapter {
            fan_in_fan_out: s.len() == 2 && cfg.fan_in_fan_out,
            path,
            kind: ModuleKind::Ia3,
            lora_a: None,
            lora_b: None,
            lora_b_bias: None,
            magnitude: None,
            ia3: Some(l),
            feedforward,
            rank: 0,
            alpha: 0.0,
            scale: 1.0,
        });
    }

    if let Some((key, _)) = &ia3 {
        return Err(bad(format!("'{key}' is an IA3 tensor in a LORA adapter")));
    }
    let (kind, (ka, a), (kb, b)) = match (a, b, ea, eb) {
        (Some(a), Some(b), None, None) => (ModuleKind::Linear, a, b),
        (None, None, Some(a), Some(b)) => (ModuleKind::Embedding, a, b),
        (a, b, ea, eb) => {
            let have: Vec<String> = [a, b, ea, eb]
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
                .collect();
            return Err(bad(format!(
                "incomplete or mixed LoRA factors: has {} (needs lora_A.weight + lora_B.weight, \
                 or lora_embedding_A + lora_embedding_B)",
                have.join(", ")
            )));
        }
    };
    let (sa, sb) = (dims(&a).to_vec(), dims(&b).to_vec());
    let nd = sa.len();
    let shapes_ok = match kind {
        ModuleKind::Embedding => nd == 2 && sb.len() == 2,
        _ => (2..=5).contains(&nd) && sb.len() == nd && sb[2..].iter().all(|&d| d == 1),
    };
    if !shapes_ok || sa.iter().chain(&sb).any(|&d| d == 0) {
        let want = match kind {
            ModuleKind::Embedding => "A [r, vocab], B [dim, r]",
            _ => "A [r, in], B [out, r] (conv: A [r, in, k…], B [out, r, 1…])",
        };
        return Err(bad(format!(
            "'{ka}' {sa:?} and '{kb}' {sb:?} are not LoRA factors ({want})"
        )));
    }
    let rank = sa[0];
    if sb[1] != rank {
        if nd > 2 && rank % sb[1] == 0 {
            return Err(bad(format!(
                "'{kb}' {sb:?} against rank {rank}: a grouped conv LoRA (groups = {}) is not supported",
                rank / sb[1]
            )));
        }
        return Err(bad(format!(
            "'{ka}' {sa:?} and '{kb}' {sb:?} disagree on the rank ({rank} vs {})",
            sb[1]
        )));
    }
    let (want_r, r_key) = cfg.rank_for(&path);
    if rank != want_r {
        let from = match r_key {
            Some(k) => format!("rank_pattern key '{k}'"),
            None => "`r`".to_string(),
        };
        return Err(bad(format!(
            "rank {rank} in '{ka}' differs from the configured rank {want_r} (from {from})"
        )));
    }
    let out = sb[0];

    let lora_b_bias = match (b_bias, cfg.lora_bias, kind) {
        (Some((k, _)), _, ModuleKind::Embedding) => {
            return Err(bad(format!("'{k}': an embedding LoRA has no bias")));
        }
        (Some((k, _)), false, _) => {
            return Err(bad(format!(
                "'{k}' is present but the config has lora_bias = false"
            )));
        }
        (Some((k, bias)), true, _) => {
            if bias.shape() != [out] {
                return Err(bad(format!(
                    "'{k}' has shape {:?}, expected [{out}]",
                    bias.shape()
                )));
            }
            Some(bias)
        }
        (None, true, ModuleKind::Linear) => {
            return Err(bad(
                "the config has lora_bias = true but there is no lora_B.bias".into(),
            ));
        }
        (None, _, _) => None,
    };

    let magnitude = match (mag, cfg.use_dora) {
        (Some((k, _)), false) => {
            return Err(bad(format!(
                "'{k}' is present but the config has use_dora = false"
            )));
        }
        (None, true) => {
            return Err(bad(
                "the config has use_dora = true but there is no lora_magnitude_vector".into(),
            ));
        }
        (Some((k, m)), true) => {
            let want: Vec<usize> = if nd > 2 {
                let mut w = vec![1; nd];
                w[1] = out;
                w
            } else {
                vec![out]
            };
            if m.shape() != want.as_slice() {
                return Err(bad(format!(
                    "'{k}' has shape {:?}, expected {want:?}",
                    m.shape()
                )));
            }
            Some(m)
        }
        (None, false) => None,
    };

    let (alpha, _) = cfg.alpha_for(&path);
    Ok(ModuleAdapter {
        fan_in_fan_out: kind == ModuleKind::Linear && nd == 2 && cfg.fan_in_fan_out,
        scale: cfg.scale(rank, alpha),
        path,
        kind,
        lora_a: Some(a),
        lora_b: Some(b),
        lora_b_bias,
        magnitude,
        ia3: None,
        feedforward: false,
        rank,
        alpha,
    })
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Writes `modules` as a PEFT LoRA folder that PEFT 0.21 loads with scale 1 everywhere.
///
/// `adapter_model.safetensors` holds `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`
/// (Linear; conv factors stay 3‑ to 5‑D) or `.lora_embedding_A` / `.lora_embedding_B`
/// (Embedding), all f32, with the `{"format": "pt"}` metadata PEFT writes. `adapter_config.json`
/// has the key set PEFT 0.21.2's `LoraConfig` saves (sorted, 2-space indent, like PEFT), with
/// `peft_type` "LORA", `r` = the most common rank (ties: the smallest), `lora_alpha` = `r`,
/// `rank_pattern`/`alpha_pattern` (alpha = rank) for the modules whose rank differs,
/// `target_modules` = the sorted list of full module paths, no dropout, no bias, no DoRA/rsLoRA
/// and `fan_in_fan_out` false (the factors are in PEFT's A/B layout whatever the base layout).
///
/// A pattern key is the module path itself when, under PEFT's matching
/// ([`PeftConfig::rank_for`]), it selects no other written module; otherwise the anchored,
/// escaped path `^a\.b\.c$`.
///
/// `dir` is created if missing (refused if it exists and is not a directory); each file is
/// written to a temporary file in `dir` and renamed over the target. Refused: no modules, an
/// empty or repeated path, a path that starts with `base_model.model.` or has an empty segment,
/// kind `Ia3`, factors that are not LoRA-shaped, rank 0, non-finite values.
pub fn write_lora_adapter(
    dir: &Path,
    modules: &[ExtractedModule],
    base_model_name: Option<&str>,
) -> Result<()> {
    if modules.is_empty() {
        return Err(Error::Usage(format!(
            "{}: no modules to write as a LoRA adapter",
            dir.display()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut ranks: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for m in modules {
        let p = m.path.as_str();
        let (ka, kb) = match m.kind {
            ModuleKind::Linear => (
                format!("{KEY_PREFIX}{p}.lora_A.weight"),
                format!("{KEY_PREFIX}{p}.lora_B.weight"),
            ),
            ModuleKind::Embedding => (
                format!("{KEY_PREFIX}{p}.lora_embedding_A"),
                format!("{KEY_PREFIX}{p}.lora_embedding_B"),
            ),
            ModuleKind::Ia3 => {
                return Err(Error::Usage(format!(
                    "module '{p}': an IA3 module cannot be written as LoRA factors"
                )));
            }
        };
        let bad = |key: &str, msg: String| Error::tensor(key, msg);
        if p.is_empty() || p.split('.').any(str::is_empty) || p.starts_with(KEY_PREFIX) {
            return Err(Error::Usage(format!(
                "module path '{p}' is not a module path (non-empty dot-separated names, without \
                 '{KEY_PREFIX}')"
            )));
        }
        if !seen.insert(p) {
            return Err(Error::Usage(format!("module '{p}' is listed twice")));
        }
        let (sa, sb) = (m.a.shape(), m.b.shape());
        let nd = sa.len();
        let ok = match m.kind {
            ModuleKind::Embedding => nd == 2 && sb.len() == 2,
            _ => (2..=5).contains(&nd) && sb.len() == nd && sb[2..].iter().all(|&d| d == 1),
        } && sb[1] == sa[0]
            && sa.iter().chain(sb).all(|&d| d > 0);
        if !ok {
            return Err(bad(
                &ka,
                format!(
                    "A {sa:?} and B {sb:?} are not {:?} LoRA factors (A [r, in…], B [out, r…], r > 0)",
                    m.kind
                ),
            ));
        }
        for (k, arr) in [(&ka, &m.a), (&kb, &m.b)] {
            if arr.iter().any(|v| !v.is_finite()) {
                return Err(bad(k, "contains non-finite values (NaN or ±inf)".into()));
            }
            let bytes: Vec<u8> = arr.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((k.clone(), arr.shape().to_vec(), bytes));
        }
        ranks.insert(p, sa[0]);
    }

    // Most common rank; ties go to the smallest.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &r in ranks.values() {
        *counts.entry(r).or_default() += 1;
    }
    let r = counts
        .iter()
        .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
        .map(|(&r, _)| r)
        .unwrap_or(1);

    let paths: Vec<&str> = ranks.keys().copied().collect();
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    for (&p, &rk) in &ranks {
        if rk == r {
            continue;
        }
        let key = pattern_key_for(p, &paths);
        rank_pattern.insert(key.clone(), json!(rk));
        alpha_pattern.insert(key, json!(rk));
    }
    let config = json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": alpha_pattern,
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": r,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "qalora_group_size": 16,
        "r": r,
        "rank_pattern": rank_pattern,
        "revision": null,
        "target_modules": paths,
        "target_parameters": null,
        "task_type": null,
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null,
    });
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::Usage(format!("cannot serialise the adapter config: {e}")))?;

    let wpath = dir.join(WEIGHTS_FILE);
    let views = tensors
        .iter()
        .map(|(k, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::tensor(k, format!("cannot serialise: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let weights = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Save {
        path: wpath.clone(),
        msg: format!("cannot serialise the tensors: {e}"),
    })?;

    if dir.exists() && !dir.is_dir() {
        return Err(Error::Save {
            path: dir.to_path_buf(),
            msg: "exists and is not a directory".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(dir, &wpath, &weights)?;
    write_atomic(dir, &dir.join(CONFIG_FILE), (config_text + "\n").as_bytes())?;
    Ok(())
}

/// The `rank_pattern`/`alpha_pattern` key for `path`: the plain path when PEFT's matching picks
/// out only `path` among `all`, else the escaped, anchored path.
fn pattern_key_for(path: &str, all: &[&str]) -> String {
    if let Ok(re) = pattern_regex(path)
        && all.iter().all(|q| re.is_match(q) == (*q == path))
    {
        return path.to_string();
    }
    format!("^{}$", regex::escape(path))
}

fn write_atomic(dir: &Path, target: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".graft-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(target, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(target, e))?;
    tmp.persist(target)
        .map_err(|e| Error::io(target, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array, ArrayD, IxDyn};

    /// The real adapter folders generated by models/generate.py (PEFT 0.21.2).
    fn models() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
    }

    fn real(case: &str) -> PeftAdapter {
        let dir = models().join(case).join("adapter");
        read_adapter(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }

    fn module<'a>(a: &'a PeftAdapter, path: &str) -> &'a ModuleAdapter {
        a.modules
            .iter()
            .find(|m| m.path == path)
            .unwrap_or_else(|| panic!("no module {path}"))
    }

    fn shape(a: &Option<ArrayD<f32>>) -> Vec<usize> {
        a.as_ref().expect("tensor present").shape().to_vec()
    }

    fn arr(shape: &[usize], start: f32) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        Array::from_shape_vec(
            IxDyn(shape),
            (0..n).map(|i| start + 0.25 * i as f32).collect(),
        )
        .unwrap()
    }

    /// A tensor for a fixture file: key, dtype, shape, little-endian bytes.
    type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

    fn f32t(key: &str, shape: &[usize]) -> Raw {
        let a = arr(shape, 0.5);
        let bytes = a.iter().flat_map(|v| v.to_le_bytes()).collect();
        (key.to_string(), Dtype::F32, shape.to_vec(), bytes)
    }

    fn k(path: &str, param: &str) -> String {
        format!("{KEY_PREFIX}{path}.{param}")
    }

    fn fixture(config: &Value, tensors: &[Raw]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string_pretty(config).unwrap(),
        )
        .unwrap();
        write_tensors(dir.path(), tensors);
        dir
    }

    fn write_tensors(dir: &Path, tensors: &[Raw]) {
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(k, d, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), bytes).unwrap();
    }

    fn lora_cfg(extra: Value) -> Value {
        let mut c = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                           "target_modules": ["lin", "emb", "conv"]});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn lin(path: &str, r: usize, inp: usize, out: usize) -> Vec<Raw> {
        vec![
            f32t(&k(path, "lora_A.weight"), &[r, inp]),
            f32t(&k(path, "lora_B.weight"), &[out, r]),
        ]
    }

    fn err_of(dir: &Path) -> String {
        match read_adapter(dir) {
            Ok(a) => panic!("expected an error, read {} modules", a.modules.len()),
            Err(e) => e.to_string(),
        }
    }

    fn assert_close(x: f64, y: f64) {
        assert!((x - y).abs() < 1e-12, "{x} != {y}");
    }

    // ---- real folders -------------------------------------------------------------------------

    #[test]
    fn real_bert_lora() {
        let a = real("bert_lora");
        assert_eq!(a.config.peft_type, PeftType::Lora);
        let paths: Vec<&str> = a.modules.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "encoder.layer.0.attention.self.query",
                "encoder.layer.0.attention.self.value",
                "encoder.layer.1.attention.self.query",
                "encoder.layer.1.attention.self.value",
                "pooler.dense",
            ]
        );
        for m in &a.modules {
            assert_eq!(m.kind, ModuleKind::Linear);
            assert_eq!((m.rank, m.alpha, m.scale), (4, 8.0, 2.0));
            assert_eq!(shape(&m.lora_a), [4, 32]);
            assert_eq!(shape(&m.lora_b), [32, 4]);
            assert!(m.magnitude.is_none() && m.ia3.is_none() && m.lora_b_bias.is_none());
            assert!(!m.fan_in_fan_out && !m.feedforward && !m.is_conv());
        }
        // Values read by Python's safetensors.
        let q = module(&a, "encoder.layer.0.attention.self.query");
        assert_eq!(
            q.lora_a.as_ref().unwrap()[[0, 0]] as f64,
            -0.01117185689508915
        );
        let p = module(&a, "pooler.dense");
        assert_eq!(
            p.lora_b.as_ref().unwrap()[[31, 3]] as f64,
            0.1573559045791626
        );
        assert_eq!(
            a.config.target_modules,
            TargetModules::List(vec!["pooler.dense".into(), "query".into(), "value".into()])
        );
        assert_eq!(a.config.raw["peft_version"], "0.21.2");
    }

    #[test]
    fn real_bert_rslora_patterns() {
        let a = real("bert_rslora");
        assert!(a.config.use_rslora);
        assert_eq!(a.modules.len(), 6);
        for l in 0..2 {
            let m = |n: &str| module(&a, &format!("encoder.layer.{l}.attention.self.{n}")).clone();
            let (q, kk, v) = (m("query"), m("key"), m("value"));
            assert_eq!((q.rank, q.alpha), (4, 8.0));
            assert_close(q.scale, 8.0 / 2.0);
            assert_eq!((kk.rank, kk.alpha), (2, 8.0));
            assert_close(kk.scale, 8.0 / 2f64.sqrt());
            assert_eq!((v.rank, v.alpha), (4, 16.0));
            assert_close(v.scale, 16.0 / 2.0);
            assert_eq!(shape(&kk.lora_a), [2, 32]);
            assert_eq!(shape(&kk.lora_b), [32, 2]);
        }
        let kk = module(&a, "encoder.layer.1.attention.self.key");
        assert_eq!(
            kk.lora_b.as_ref().unwrap()[[10, 1]] as f64,
            -0.25145837664604187
        );
        assert_eq!(
            a.config.rank_for("encoder.layer.0.attention.self.key"),
            (2, Some("key"))
        );
        assert_eq!(
            a.config.alpha_for("encoder.layer.0.attention.self.value"),
            (16.0, Some("value"))
        );
        assert_eq!(
            a.config.rank_for("encoder.layer.0.attention.self.query"),
            (4, None)
        );
    }

    #[test]
    fn real_bert_dora() {
        let a = real("bert_dora");
        assert!(a.config.use_dora);
        assert_eq!(a.modules.len(), 5);
        for m in &a.modules {
            assert_eq!(shape(&m.magnitude), [32]);
            assert_eq!((m.rank, m.scale), (4, 2.0));
        }
        let p = module(&a, "pooler.dense");
        assert_eq!(
            p.magnitude.as_ref().unwrap()[[5]] as f64,
            0.08536337316036224
        );
    }

    #[test]
    fn real_bert_ia3() {
        let a = real("bert_ia3");
        assert_eq!(a.config.peft_type, PeftType::Ia3);
        assert_eq!(a.modules.len(), 8);
        for l in 0..2 {
            let m = |n: &str| module(&a, &format!("encoder.layer.{l}.{n}")).clone();
            for (n, ff, s) in [
                ("attention.self.key", false, [32, 1]),
                ("attention.self.value", false, [32, 1]),
                ("intermediate.dense", false, [64, 1]),
                ("output.dense", true, [1, 64]),
            ] {
                let x = m(n);
                assert_eq!(x.kind, ModuleKind::Ia3);
                assert_eq!(x.feedforward, ff, "{n}");
                assert_eq!(shape(&x.ia3), s, "{n}");
                assert_eq!((x.rank, x.scale), (0, 1.0));
                assert!(x.lora_a.is_none() && x.lora_b.is_none());
            }
        }
        // attention.output.dense is not a feed-forward module in the regex.
        assert!(
            !a.config
                .is_feedforward("encoder.layer.0.attention.output.dense")
        );
        let o = module(&a, "encoder.layer.1.output.dense");
        assert_eq!(o.ia3.as_ref().unwrap()[[0, 63]] as f64, 1.2641489505767822);
    }

    #[test]
    fn real_cnn_conv_lora() {
        let a = real("cnn_conv_lora");
        let want = [
            ("conv1", [4, 3, 3, 3], [8, 4, 1, 1]),
            ("conv2", [4, 8, 3, 3], [16, 4, 1, 1]),
            ("conv3", [4, 16, 1, 1], [16, 4, 1, 1]),
        ];
        assert_eq!(a.modules.len(), 3);
        for (p, sa, sb) in want {
            let m = module(&a, p);
            assert!(m.is_conv() && !m.fan_in_fan_out);
            assert_eq!(shape(&m.lora_a), sa);
            assert_eq!(shape(&m.lora_b), sb);
            assert_eq!(m.scale, 2.0);
        }
        let c2 = module(&a, "conv2");
        assert_eq!(
            c2.lora_a.as_ref().unwrap()[[3, 7, 2, 1]] as f64,
            0.07060091197490692
        );
    }

    #[test]
    fn real_vit_lora() {
        let a = real("vit_lora");
        assert_eq!(a.modules.len(), 6);
        let qkv = module(&a, "blocks.0.attn.qkv");
        assert_eq!(shape(&qkv.lora_b), [96, 4]);
        let fc2 = module(&a, "blocks.1.mlp.fc2");
        assert_eq!(shape(&fc2.lora_a), [4, 64]);
        assert_eq!(shape(&fc2.lora_b), [32, 4]);
    }

    #[test]
    fn real_gpt2_lora() {
        let a = real("gpt2_lora");
        assert!(a.config.fan_in_fan_out);
        let paths: Vec<&str> = a.modules.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "transformer.h.0.attn.c_attn",
                "transformer.h.1.attn.c_attn",
                "transformer.wte"
            ]
        );
        let c = module(&a, "transformer.h.1.attn.c_attn");
        assert_eq!(c.kind, ModuleKind::Linear);
        assert!(c.fan_in_fan_out); // GPT-2 Conv1D
        assert_eq!(shape(&c.lora_a), [4, 32]);
        assert_eq!(shape(&c.lora_b), [96, 4]);
        assert_eq!(
            c.lora_b.as_ref().unwrap()[[95, 0]] as f64,
            0.045394014567136765
        );
        let w = module(&a, "transformer.wte");
        assert_eq!(w.kind, ModuleKind::Embedding);
        assert!(!w.fan_in_fan_out);
        assert_eq!(shape(&w.lora_a), [4, 100]);
        assert_eq!(shape(&w.lora_b), [32, 4]);
        assert_eq!(
            w.lora_a.as_ref().unwrap()[[3, 77]] as f64,
            -0.14317192137241364
        );
        assert_eq!((w.rank, w.scale), (4, 2.0));
    }

    // ---- PEFT's matching rules ----------------------------------------------------------------

    fn cfg(text: &str) -> PeftConfig {
        PeftConfig::parse(Path::new("adapter_config.json"), text).unwrap()
    }

    #[test]
    fn pattern_keys_match_like_get_pattern_key() {
        let c = cfg(r#"{"peft_type":"LORA","r":4,"lora_alpha":8,
            "rank_pattern":{"^lin1":3,"blk.lin1":2,"uery":5,"a|b":6},
            "alpha_pattern":{"lin.":5}}"#);
        assert_eq!(c.rank_for("lin1"), (3, Some("^lin1")));
        assert_eq!(c.rank_for("blk.lin1"), (2, Some("blk.lin1")));
        assert_eq!(c.rank_for("x.blk.lin1"), (2, Some("blk.lin1")));
        // `.` in a key is a regex wildcard, as in PEFT.
        assert_eq!(c.rank_for("blkXlin1"), (2, Some("blk.lin1")));
        // A key must cover a whole dot-separated tail: "uery" does not match "query".
        assert_eq!(c.rank_for("self.query"), (4, None));
        assert_eq!(c.rank_for("xblk.lin1"), (4, None));
        // Alternation stays inside the key's group.
        assert_eq!(c.rank_for("m.a"), (6, Some("a|b")));
        assert_eq!(c.rank_for("m.b"), (6, Some("a|b")));
        assert_eq!(c.rank_for("m.ab"), (4, None));
        assert_eq!(c.alpha_for("blk.lin2"), (5.0, Some("lin.")));
        assert_eq!(c.alpha_for("emb"), (8.0, None));
    }

    #[test]
    fn pattern_keys_are_tried_in_file_order() {
        let a = cfg(r#"{"peft_type":"LORA","rank_pattern":{"self.query":2,"query":3}}"#);
        let b = cfg(r#"{"peft_type":"LORA","rank_pattern":{"query":3,"self.query":2}}"#);
        assert_eq!(a.rank_for("l.self.query"), (2, Some("self.query")));
        assert_eq!(b.rank_for("l.self.query"), (3, Some("query")));
        assert_eq!(a.rank_pattern_keys, ["self.query", "query"]);
        assert_eq!((a.r, a.lora_alpha), (8, 8.0)); // PEFT's defaults
    }

    #[test]
    fn feedforward_and_target_matching() {
        let l = cfg(r#"{"peft_type":"IA3","target_modules":["dense","k"],
                        "feedforward_modules":["dense"]}"#);
        // A list is a plain string suffix for feedforward_modules ...
        assert!(l.is_feedforward("intermediate.dense"));
        assert!(l.is_feedforward("xdense"));
        assert!(!l.is_feedforward("dense.k"));
        // ... but a `.`-bounded suffix for target_modules.
        assert_eq!(l.targets("intermediate.dense"), Some(true));
        assert_eq!(l.targets("dense"), Some(true));
        assert_eq!(l.targets("xdense"), Some(false));
        let r = cfg(r#"{"peft_type":"IA3","target_modules":".*\\.(k|v)",
                        "feedforward_modules":"out\\.dense"}"#);
        assert!(r.is_feedforward("out.dense"));
        assert!(!r.is_feedforward("a.out.dense")); // fullmatch
        assert_eq!(r.targets("a.k"), Some(true));
        assert_eq!(r.targets("a.kk"), Some(false));
        let all = cfg(r#"{"peft_type":"LORA","target_modules":"all-linear"}"#);
        assert_eq!(all.targets("anything"), None);
    }

    #[test]
    fn bad_configs() {
        let p = Path::new("dir/adapter_config.json");
        for (text, needle) in [
            ("{", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"r":4}"#, "`peft_type` is missing"),
            (r#"{"peft_type":"ADALORA"}"#, "ADALORA"),
            (r#"{"peft_type":"LORA","r":0}"#, "key `r`"),
            (r#"{"peft_type":"LORA","r":2.5}"#, "key `r`"),
            (
                r#"{"peft_type":"LORA","lora_alpha":"x"}"#,
                "key `lora_alpha`",
            ),
            (r#"{"peft_type":"LORA","use_dora":"yes"}"#, "key `use_dora`"),
            (
                r#"{"peft_type":"LORA","rank_pattern":{"q":-1}}"#,
                "rank_pattern` key 'q'",
            ),
            (
                r#"{"peft_type":"LORA","rank_pattern":{"(?<=x)q":2}}"#,
                "'(?<=x)q'",
            ),
            (
                r#"{"peft_type":"LORA","alpha_pattern":[1]}"#,
                "alpha_pattern",
            ),
            (
                r#"{"peft_type":"LORA","alora_invocation_tokens":[5]}"#,
                "alora_invocation_tokens",
            ),
            (
                r#"{"peft_type":"IA3","feedforward_modules":"(a"}"#,
                "feedforward_modules",
            ),
            (
                r#"{"peft_type":"LORA","target_modules":5}"#,
                "target_modules",
            ),
        ] {
            let e = PeftConfig::parse(p, text).unwrap_err().to_string();
            assert!(e.contains("dir/adapter_config.json"), "{e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    // ---- synthetic folders --------------------------------------------------------------------

    /// Mirrors an adapter saved by PEFT 0.21.2 (Embedding + Conv2d + Linear, rank and alpha
    /// patterns); the expected ranks and scales are the ones PEFT printed for that model.
    #[test]
    fn mixed_kinds_with_patterns() {
        let config = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
            "target_modules": ["lin2", "emb", "conv", "lin1"],
            "rank_pattern": {"^lin1": 3, "blk.lin1": 2}, "alpha_pattern": {"lin.": 5}});
        let mut t = vec![
            f32t(&k("emb", "lora_embedding_A"), &[4, 11]),
            f32t(&k("emb", "lora_embedding_B"), &[6, 4]),
            f32t(&k("conv", "lora_A.weight"), &[4, 3, 3, 3]),
            f32t(&k("conv", "lora_B.weight"), &[5, 4, 1, 1]),
        ];
        t.extend(lin("lin1", 3, 6, 7));
        t.extend(lin("blk.lin1", 2, 7, 7));
        t.extend(lin("blk.lin2", 4, 7, 4));
        let d = fixture(&config, &t);
        let a = read_adapter(d.path()).unwrap();
        let got: Vec<(&str, ModuleKind, usize, f64)> = a
            .modules
            .iter()
            .map(|m| (m.path.as_str(), m.kind, m.rank, m.scale))
            .collect();
        assert_eq!(got.len(), 5);
        let want = [
            ("blk.lin1", ModuleKind::Linear, 2, 2.5),
            ("blk.lin2", ModuleKind::Linear, 4, 1.25),
            ("conv", ModuleKind::Linear, 4, 2.0),
            ("emb", ModuleKind::Embedding, 4, 2.0),
            ("lin1", ModuleKind::Linear, 3, 1.6666666666666667),
        ];
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0, g.1, g.2), (w.0, w.1, w.2));
            assert_close(g.3, w.3);
        }
        let emb = module(&a, "emb");
        assert_eq!(shape(&emb.lora_a), [4, 11]);
        assert_eq!(emb.lora_a.as_ref().unwrap()[[1, 2]], 0.5 + 0.25 * 13.0);
        assert!(!emb.is_conv() && module(&a, "conv").is_conv());
    }

    #[test]
    fn half_and_double_dtypes_are_converted() {
        let vals = [0.5f32, -1.25, 3.0, 0.125, -2.0, 1.0, 0.75, -0.5];
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let f64b: Vec<u8> = vals
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        let t = vec![
            (k("lin", "lora_A.weight"), Dtype::F16, vec![4, 2], f16b),
            (k("lin", "lora_B.weight"), Dtype::BF16, vec![2, 4], bf16b),
            (k("m.lin", "lora_A.weight"), Dtype::F64, vec![4, 2], f64b),
            f32t(&k("m.lin", "lora_B.weight"), &[3, 4]),
        ];
        let d = fixture(&lora_cfg(json!({})), &t);
        let a = read_adapter(d.path()).unwrap();
        let l = module(&a, "lin");
        assert_eq!(
            l.lora_a
                .as_ref()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vals
        );
        assert_eq!(
            l.lora_b
                .as_ref()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vals
        );
        assert_eq!(l.lora_b.as_ref().unwrap()[[1, 0]], -2.0);
        let m = module(&a, "m.lin");
        assert_eq!(m.lora_a.as_ref().unwrap()[[3, 1]], -0.5);
    }

    #[test]
    fn adapter_name_infix_is_accepted_once() {
        let t = vec![
            f32t(&k("lin", "lora_A.default.weight"), &[4, 3]),
            f32t(&k("lin", "lora_B.default.weight"), &[5, 4]),
            f32t(&k("lin", "lora_magnitude_vector.default.weight"), &[5]),
            f32t(&k("emb", "lora_embedding_A.default"), &[4, 9]),
            f32t(&k("emb", "lora_embedding_B.default"), &[6, 4]),
            f32t(&k("emb", "lora_magnitude_vector.default"), &[6]),
        ];
        let d = fixture(&lora_cfg(json!({"use_dora": true})), &t);
        let a = read_adapter(d.path()).unwrap();
        assert_eq!(a.modules.len(), 2);
        assert_eq!(shape(&module(&a, "lin").magnitude), [5]);
        assert_eq!(shape(&module(&a, "emb").magnitude), [6]);

        let mut t = lin("lin", 4, 3, 5);
        t.push(f32t(&k("lin2", "lora_A.other.weight"), &[4, 3]));
        t.push(f32t(&k("lin2", "lora_B.other.weight"), &[5, 4]));
        let d = fixture(&lora_cfg(json!({"target_modules": ["lin", "lin2"]})), &t);
        let e = err_of(d.path());
        assert!(e.contains("different adapter names (<none>, other)"), "{e}");
    }

    #[test]
    fn ia3_feedforward_list_and_conv() {
        let config = json!({"peft_type": "IA3", "target_modules": ["conv", "lin1", "lin2"],
                            "feedforward_modules": ["conv", "lin2"]});
        let t = vec![
            f32t(&k("blk.lin1", "ia3_l"), &[7, 1]),
            f32t(&k("blk.lin2", "ia3_l"), &[1, 7]),
            f32t(&k("conv", "ia3_l"), &[1, 3, 1, 1]),
            f32t(&k("lin1", "ia3_l"), &[7, 1]),
        ];
        let a = read_adapter(fixture(&config, &t).path()).unwrap();
        let ff: Vec<bool> = a.modules.iter().map(|m| m.feedforward).collect();
        assert_eq!(ff, [false, true, true, false]);
        // A feed-forward module whose vector is shaped [out, 1] is refused.
        let t = vec![f32t(&k("blk.lin2", "ia3_l"), &[7, 1])];
        let e = err_of(fixture(&config, &t).path());
        assert!(
            e.contains("module 'blk.lin2'") && e.contains("[1, in]"),
            "{e}"
        );
        // LoRA tensors in an IA3 adapter.
        let e = err_of(fixture(&config, &lin("lin1", 4, 3, 5)).path());
        assert!(e.contains("LoRA tensors in an IA3 adapter"), "{e}");
    }

    #[test]
    fn lora_bias_and_dora_consistency() {
        // lora_bias: conv and linear carry lora_B.bias [out]; DoRA conv magnitude [1,out,1,1].
        let mut t = lin("lin", 4, 3, 5);
        t.push(f32t(&k("lin", "lora_B.bias"), &[5]));
        t.push(f32t(&k("conv", "lora_A.weight"), &[4, 3, 3, 3]));
        t.push(f32t(&k("conv", "lora_B.weight"), &[8, 4, 1, 1]));
        t.push(f32t(&k("conv", "lora_B.bias"), &[8]));
        let a = read_adapter(fixture(&lora_cfg(json!({"lora_bias": true})), &t).path()).unwrap();
        assert_eq!(shape(&module(&a, "conv").lora_b_bias), [8]);
        let e = err_of(fixture(&lora_cfg(json!({})), &t).path());
        assert!(e.contains("lora_bias = false"), "{e}");
        let e = err_of(fixture(&lora_cfg(json!({"lora_bias": true})), &lin("lin", 4, 3, 5)).path());
        assert!(
            e.contains("module 'lin'") && e.contains("no lora_B.bias"),
            "{e}"
        );

        let mut t = vec![
            f32t(&k("conv", "lora_A.weight"), &[4, 3, 3, 3]),
            f32t(&k("conv", "lora_B.weight"), &[8, 4, 1, 1]),
            f32t(&k("conv", "lora_magnitude_vector"), &[1, 8, 1, 1]),
        ];
        let a = read_adapter(fixture(&lora_cfg(json!({"use_dora": true})), &t).path()).unwrap();
        assert_eq!(shape(&module(&a, "conv").magnitude), [1, 8, 1, 1]);
        let e = err_of(fixture(&lora_cfg(json!({})), &t).path());
        assert!(e.contains("use_dora = false"), "{e}");
        t[2] = f32t(&k("conv", "lora_magnitude_vector"), &[8]);
        let e = err_of(fixture(&lora_cfg(json!({"use_dora": true})), &t).path());
        assert!(e.contains("expected [1, 8, 1, 1]"), "{e}");
        let e = err_of(fixture(&lora_cfg(json!({"use_dora": true})), &lin("lin", 4, 3, 5)).path());
        assert!(e.contains("no lora_magnitude_vector"), "{e}");
    }

    #[test]
    fn fan_in_fan_out_applies_to_2d_modules_only() {
        let mut t = lin("h.0.attn.c_attn", 4, 8, 24);
        t.push(f32t(&k("wte", "lora_embedding_A"), &[4, 50]));
        t.push(f32t(&k("wte", "lora_embedding_B"), &[8, 4]));
        let c = lora_cfg(json!({"fan_in_fan_out": true, "target_modules": ["c_attn", "wte"]}));
        let a = read_adapter(fixture(&c, &t).path()).unwrap();
        assert!(module(&a, "h.0.attn.c_attn").fan_in_fan_out);
        assert!(!module(&a, "wte").fan_in_fan_out);
    }

    // ---- errors -------------------------------------------------------------------------------

    #[test]
    fn missing_files() {
        let d = tempfile::tempdir().unwrap();
        match read_adapter(d.path()).unwrap_err() {
            Error::Io { path, .. } => assert!(path.ends_with(CONFIG_FILE)),
            e => panic!("{e}"),
        }
        std::fs::write(d.path().join(CONFIG_FILE), r#"{"peft_type":"LORA"}"#).unwrap();
        match read_adapter(d.path()).unwrap_err() {
            Error::Io { path, .. } => assert!(path.ends_with(WEIGHTS_FILE)),
            e => panic!("{e}"),
        }
        std::fs::write(d.path().join("adapter_model.bin"), b"x").unwrap();
        let e = err_of(d.path());
        assert!(
            e.contains("adapter_model.bin") && e.contains("pickled"),
            "{e}"
        );
        let e = err_of(&d.path().join("nope"));
        assert!(e.contains("not a PEFT adapter folder"), "{e}");
    }

    #[test]
    fn corrupt_safetensors() {
        let d = fixture(&lora_cfg(json!({})), &lin("lin", 4, 3, 5));
        let p = d.path().join(WEIGHTS_FILE);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, &bytes).unwrap();
        let e = err_of(d.path());
        assert!(
            e.contains(WEIGHTS_FILE) && e.contains("not a valid safetensors"),
            "{e}"
        );
        std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\xffgarbage").unwrap();
        assert!(err_of(d.path()).contains("not a valid safetensors"));
    }

    #[test]
    fn unknown_and_full_weight_keys() {
        let mut t = lin("lin", 4, 3, 5);
        t.push(f32t(&k("lin", "lora_C.weight"), &[2]));
        t.push(f32t("prompt_embeddings", &[2]));
        let e = err_of(fixture(&lora_cfg(json!({})), &t).path());
        assert!(e.contains("unrecognised keys"), "{e}");
        assert!(
            e.contains("base_model.model.lin.lora_C.weight, prompt_embeddings"),
            "{e}"
        );

        // modules_to_save as PEFT 0.21 saves it: the full weights under the module's own keys.
        let mut t = lin("lin", 4, 3, 5);
        t.push(f32t(&k("classifier", "weight"), &[2, 5]));
        t.push(f32t(&k("classifier", "bias"), &[2]));
        t.push(f32t(&k("head.modules_to_save", "weight"), &[2, 5]));
        let c = lora_cfg(json!({"modules_to_save": ["classifier"]}));
        let e = err_of(fixture(&c, &t).path());
        assert!(e.contains("full-weight modules"), "{e}");
        assert!(e.contains("base_model.model.classifier.bias, base_model.model.classifier.weight, base_model.model.head.modules_to_save.weight"), "{e}");
    }

    #[test]
    fn incomplete_and_inconsistent_modules() {
        let c = lora_cfg(json!({}));
        let only_a = vec![f32t(&k("lin", "lora_A.weight"), &[4, 3])];
        let e = err_of(fixture(&c, &only_a).path());
        assert!(
            e.contains("module 'lin'") && e.contains("incomplete"),
            "{e}"
        );

        let mixed = vec![
            f32t(&k("lin", "lora_A.weight"), &[4, 3]),
            f32t(&k("lin", "lora_embedding_B"), &[5, 4]),
        ];
        assert!(err_of(fixture(&c, &mixed).path()).contains("mixed"));

        let e = err_of(fixture(&c, &lin("lin", 3, 6, 5)).path());
        assert!(
            e.contains("module 'lin'") && e.contains("rank 3") && e.contains("rank 4 (from `r`)"),
            "{e}"
        );
        let c2 = lora_cfg(json!({"rank_pattern": {"lin": 2}}));
        let e = err_of(fixture(&c2, &lin("lin", 4, 6, 5)).path());
        assert!(e.contains("rank_pattern key 'lin'"), "{e}");

        let disagree = vec![
            f32t(&k("lin", "lora_A.weight"), &[4, 3]),
            f32t(&k("lin", "lora_B.weight"), &[5, 3]),
        ];
        assert!(err_of(fixture(&c, &disagree).path()).contains("disagree on the rank"));

        let grouped = vec![
            f32t(&k("conv", "lora_A.weight"), &[4, 3, 3, 3]),
            f32t(&k("conv", "lora_B.weight"), &[8, 2, 1, 1]),
        ];
        assert!(err_of(fixture(&c, &grouped).path()).contains("groups = 2"));

        let bad_conv = vec![
            f32t(&k("conv", "lora_A.weight"), &[4, 3, 3, 3]),
            f32t(&k("conv", "lora_B.weight"), &[8, 4, 3, 3]),
        ];
        assert!(err_of(fixture(&c, &bad_conv).path()).contains("not LoRA factors"));

        let e = err_of(fixture(&c, &lin("other", 4, 3, 5)).path());
        assert!(
            e.contains("module 'other'") && e.contains("target_modules"),
            "{e}"
        );
    }

    #[test]
    fn bad_dtype_nan_and_empty() {
        let c = lora_cfg(json!({}));
        let t = vec![
            (
                k("lin", "lora_A.weight"),
                Dtype::I64,
                vec![4, 3],
                vec![0u8; 96],
            ),
            f32t(&k("lin", "lora_B.weight"), &[5, 4]),
        ];
        let e = err_of(fixture(&c, &t).path());
        assert!(
            e.contains("tensor 'base_model.model.lin.lora_A.weight'") && e.contains("I64"),
            "{e}"
        );
        assert!(e.contains(WEIGHTS_FILE), "{e}");

        let mut t = lin("lin", 4, 3, 5);
        t[1].3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
        let e = err_of(fixture(&c, &t).path());
        assert!(
            e.contains("lora_B.weight") && e.contains("non-finite"),
            "{e}"
        );

        let e = err_of(fixture(&c, &[]).path());
        assert!(e.contains("no modules"), "{e}");
    }

    // ---- writing ------------------------------------------------------------------------------

    fn ext(path: &str, kind: ModuleKind, sa: &[usize], sb: &[usize]) -> ExtractedModule {
        ExtractedModule {
            path: path.into(),
            kind,
            a: arr(sa, -1.0),
            b: arr(sb, 2.0),
        }
    }

    #[test]
    fn write_then_read_round_trip() {
        let mods = vec![
            ext(
                "encoder.layer.0.attention.self.query",
                ModuleKind::Linear,
                &[4, 32],
                &[32, 4],
            ),
            ext(
                "encoder.layer.0.attention.self.value",
                ModuleKind::Linear,
                &[4, 32],
                &[32, 4],
            ),
            ext(
                "encoder.layer.1.intermediate.dense",
                ModuleKind::Linear,
                &[7, 32],
                &[64, 7],
            ),
            ext(
                "embeddings.word_embeddings",
                ModuleKind::Embedding,
                &[2, 100],
                &[32, 2],
            ),
            ext("conv1", ModuleKind::Linear, &[4, 3, 3, 3], &[8, 4, 1, 1]),
        ];
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new/adapter");
        write_lora_adapter(&dir, &mods, Some("my/base")).unwrap();
        let a = read_adapter(&dir).unwrap();
        assert_eq!(a.modules.len(), mods.len());
        for m in &mods {
            let g = module(&a, &m.path);
            assert_eq!(g.kind, m.kind);
            assert_eq!(g.lora_a.as_ref(), Some(&m.a));
            assert_eq!(g.lora_b.as_ref(), Some(&m.b));
            assert_eq!(g.rank, m.a.shape()[0]);
            assert_eq!(g.alpha, g.rank as f64);
            assert_eq!(g.scale, 1.0);
        }
        let raw = &a.config.raw;
        assert_eq!(
            (raw["r"].as_u64(), raw["lora_alpha"].as_u64()),
            (Some(4), Some(4))
        );
        assert_eq!(raw["base_model_name_or_path"], "my/base");
        assert_eq!(
            raw["rank_pattern"],
            json!({"embeddings.word_embeddings": 2, "encoder.layer.1.intermediate.dense": 7})
        );
        assert_eq!(raw["alpha_pattern"], raw["rank_pattern"]);
        assert_eq!(raw["target_modules"][0], "conv1");
        assert_eq!(raw["target_modules"].as_array().unwrap().len(), 5);
        assert_eq!(raw["lora_dropout"], 0.0);
        assert_eq!(raw["bias"], "none");
        // Same key set as a config saved by PEFT 0.21.2 (peft_version is auto-filled on load).
        let real: Value = serde_json::from_str(
            &std::fs::read_to_string(models().join("bert_lora/adapter").join(CONFIG_FILE)).unwrap(),
        )
        .unwrap();
        let mut want: Vec<&String> = real.as_object().unwrap().keys().collect();
        want.retain(|k| *k != "peft_version");
        let got: Vec<&String> = raw.as_object().unwrap().keys().collect();
        assert_eq!(got, want);
        // Nothing left behind but the two files.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [CONFIG_FILE, WEIGHTS_FILE]);
        // Keys as PEFT names them.
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut keys = st.names();
        keys.sort();
        assert_eq!(keys[0], "base_model.model.conv1.lora_A.weight");
        assert_eq!(
            keys[2],
            "base_model.model.embeddings.word_embeddings.lora_embedding_A"
        );
        assert!(st.tensors().iter().all(|(_, v)| v.dtype() == Dtype::F32));
    }

    #[test]
    fn written_pattern_keys_are_unambiguous() {
        // "lin1" as a PEFT pattern key would also select "blk.lin1".
        let mods = vec![
            ext("lin1", ModuleKind::Linear, &[3, 6], &[7, 3]),
            ext("blk.lin1", ModuleKind::Linear, &[4, 7], &[7, 4]),
            ext("x.lin1", ModuleKind::Linear, &[4, 7], &[7, 4]),
            ext("blk.lin2", ModuleKind::Linear, &[2, 7], &[4, 2]),
        ];
        let d = tempfile::tempdir().unwrap();
        write_lora_adapter(d.path(), &mods, None).unwrap();
        let a = read_adapter(d.path()).unwrap();
        assert_eq!(
            a.config.raw["rank_pattern"],
            json!({"^lin1$": 3, "blk.lin2": 2})
        );
        let ranks: Vec<usize> = a.modules.iter().map(|m| m.rank).collect();
        assert_eq!(ranks, [4, 2, 3, 4]); // blk.lin1, blk.lin2, lin1, x.lin1
        assert!(a.modules.iter().all(|m| m.scale == 1.0));
    }

    #[test]
    fn write_overwrites_and_refuses_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let one = [ext("lin", ModuleKind::Linear, &[2, 3], &[5, 2])];
        write_lora_adapter(d.path(), &one, None).unwrap();
        let two = [ext("lin", ModuleKind::Linear, &[3, 3], &[5, 3])];
        write_lora_adapter(d.path(), &two, None).unwrap();
        assert_eq!(read_adapter(d.path()).unwrap().modules[0].rank, 3);

        let file = d.path().join("a_file");
        std::fs::write(&file, b"x").unwrap();
        match write_lora_adapter(&file, &one, None).unwrap_err() {
            Error::Save { path, msg } => {
                assert_eq!(path, file);
                assert!(msg.contains("not a directory"));
            }
            e => panic!("{e}"),
        }
        let target = d.path().join("t");
        let cases: Vec<(Vec<ExtractedModule>, &str)> = vec![
            (vec![], "no modules"),
            (
                vec![ext("lin", ModuleKind::Linear, &[2, 3], &[5, 3])],
                "not Linear LoRA factors",
            ),
            (
                vec![ext("lin", ModuleKind::Linear, &[0, 3], &[5, 0])],
                "r > 0",
            ),
            (
                vec![ext("c", ModuleKind::Linear, &[2, 3, 3, 3], &[5, 2, 3, 3])],
                "not Linear",
            ),
            (
                vec![ext("e", ModuleKind::Embedding, &[2, 3, 1], &[5, 2, 1])],
                "not Embedding",
            ),
            (vec![ext("i", ModuleKind::Ia3, &[2, 3], &[5, 2])], "IA3"),
            (vec![one[0].clone(), one[0].clone()], "listed twice"),
            (
                vec![ext(
                    "base_model.model.lin",
                    ModuleKind::Linear,
                    &[2, 3],
                    &[5, 2],
                )],
                "not a module path",
            ),
            (
                vec![ext("a..b", ModuleKind::Linear, &[2, 3], &[5, 2])],
                "not a module path",
            ),
            (
                vec![ext("", ModuleKind::Linear, &[2, 3], &[5, 2])],
                "not a module path",
            ),
        ];
        for (mods, needle) in cases {
            let e = write_lora_adapter(&target, &mods, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let mut nan = ext("lin", ModuleKind::Linear, &[2, 3], &[5, 2]);
        nan.b[[1, 1]] = f32::INFINITY;
        let e = write_lora_adapter(&target, &[nan], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base_model.model.lin.lora_B.weight") && e.contains("non-finite"),
            "{e}"
        );
        assert!(
            !target.exists(),
            "a refused write must not create the folder"
        );
    }
}
