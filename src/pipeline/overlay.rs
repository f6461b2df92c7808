//! From files and flags to validated specs: the spec file, `--overlay` files merged in order,
//! `--set KEY=VALUE` on top, then one variant per combination of the sweep.
//!
//! Every value remembers where it came from, so an error names the file (with the line of the key
//! when the file writes it), the `--set` or `--sweep` argument, and the dotted key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};

use super::spec::{PipelineSpec, Violation};
use super::view::StageViews;

mod schema_keys;
mod sweep;
#[cfg(test)]
mod tests;

use schema_keys::SchemaKeys;
pub use sweep::MAX_VARIANTS;
use sweep::{
    cartesian, check_distinct, check_sweep_key, check_variant_count, parse_sweep_flag,
    sweep_axes_from_spec, variant_names,
};

/// Where a value of the merged spec came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File(PathBuf),
    Set(String),
    SweepFlag(String),
    Sweep(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Set(arg) => write!(f, "--set {arg}"),
            Origin::SweepFlag(arg) => write!(f, "--sweep {arg}"),
            Origin::Sweep(arg) => write!(f, "sweep {arg}"),
        }
    }
}

/// A spec that cannot be used, said in one line that points at the culprit.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{place}: unknown key `{key}`{hint}")]
    UnknownKey {
        place: String,
        key: String,
        hint: String,
    },
    #[error("{origin}: key `{key}`: {message}")]
    BadValue {
        origin: String,
        key: String,
        message: String,
    },
    #[error("{flag} {arg}: {message}")]
    BadFlag {
        flag: &'static str,
        arg: String,
        message: String,
    },
    #[error(
        "the sweep makes {count} variants ({sizes} values); at most {max} run at once: sweep fewer values, or split the sweep over several runs"
    )]
    TooManyVariants {
        count: String,
        sizes: String,
        max: usize,
    },
    #[error(
        "the sweep variants {first} and {second} would share the run folder `{name}`; sweep values that differ in more than case and punctuation"
    )]
    NameClash {
        name: String,
        first: String,
        second: String,
    },
}

/// What the user handed us: a spec file, overlays, `--set` and `--sweep` arguments.
#[derive(Debug, Clone, Default)]
pub struct SpecSources {
    pub spec: PathBuf,
    pub overlays: Vec<PathBuf>,
    pub sets: Vec<String>,
    pub sweeps: Vec<String>,
}

/// One concrete pipeline: a sweep point (or the only one).
#[derive(Debug, Clone)]
pub struct Variant {
    /// `default` without a sweep, else built from the overrides (`lr=0.001,seed=2`).
    pub name: String,
    /// The swept keys and this variant's values for them.
    pub overrides: Vec<(String, Json)>,
    pub spec: PipelineSpec,
    /// What each stage may read of `spec` (and what keys its artifact).
    pub views: StageViews,
}

/// The validated variants of a spec.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec_path: PathBuf,
    pub swept_keys: Vec<String>,
    pub variants: Vec<Variant>,
}

impl LoadedSpec {
    /// The variants as a job of `ranks` ranks keys them (see [`StageViews::for_world_size`]).
    pub fn for_world_size(mut self, ranks: usize) -> LoadedSpec {
        for variant in &mut self.variants {
            variant.views = variant.views.clone().for_world_size(ranks);
        }
        self
    }
}

/// Reads, merges, checks and expands a spec into its variants.
pub fn load(sources: &SpecSources) -> Result<LoadedSpec, SpecError> {
    let schema = SchemaKeys::new();
    let mut merged = toml::Table::new();
    let mut origins = Provenance::new(&sources.spec);

    for path in std::iter::once(&sources.spec).chain(&sources.overlays) {
        let (table, lines) = read_toml_file(path, &schema)?;
        origins.lines.insert(path.clone(), lines);
        merge(
            &mut merged,
            table,
            "",
            &Origin::File(path.clone()),
            &mut origins,
        );
    }
    for arg in &sources.sets {
        let (key, value) = parse_assignment("--set", arg)?;
        schema
            .check_path(&key)
            .map_err(|(key, hint)| SpecError::UnknownKey {
                place: format!("--set {arg}"),
                key,
                hint,
            })?;
        insert_dotted(&mut merged, &key, value).map_err(|message| SpecError::BadFlag {
            flag: "--set",
            arg: arg.clone(),
            message,
        })?;
        origins.record(&key, Origin::Set(arg.clone()));
    }

    let mut axes = sweep_axes_from_spec(&mut merged, &schema, &origins)?;
    for arg in &sources.sweeps {
        let (key, values) = parse_sweep_flag(arg)?;
        check_sweep_key(&schema, &key, &format!("--sweep {arg}"))?;
        let origin = Origin::SweepFlag(arg.clone());
        // A --sweep replaces the spec's own sweep of the key; two flags for one key would
        // silently drop the first.
        if let Some((_, _, earlier @ Origin::SweepFlag(_))) =
            axes.iter().find(|(k, _, _)| *k == key)
        {
            return Err(SpecError::BadFlag {
                flag: "--sweep",
                arg: arg.clone(),
                message: format!(
                    "`{key}` is already swept by {earlier}; give all its values in one --sweep"
                ),
            });
        }
        check_distinct(&key, &values, &origin.to_string())?;
        axes.retain(|(k, _, _)| *k != key);
        axes.push((key, values, origin));
    }
    check_sets_not_swept(&sources.sets, &axes)?;
    check_variant_count(&axes)?;

    let swept_keys: Vec<String> = axes.iter().map(|(k, _, _)| k.clone()).collect();
    let mut variants = Vec::new();
    for point in cartesian(&axes) {
        let mut table = merged.clone();
        let mut variant_origins = origins.clone();
        let mut overrides = Vec::new();
        for (axis, value) in axes.iter().zip(point) {
            let (key, _, origin) = axis;
            let toml_value = json_to_toml(value).ok_or_else(|| SpecError::BadValue {
                origin: origin.to_string(),
                key: key.clone(),
                message: "null is not a TOML value".into(),
            })?;
            insert_dotted(&mut table, key, toml_value).map_err(|message| SpecError::BadValue {
                origin: origin.to_string(),
                key: key.clone(),
                message,
            })?;
            variant_origins.record(key, Origin::Sweep(format!("{key}={value}")));
            overrides.push((key.clone(), value.clone()));
        }
        let spec = to_spec(table, &variant_origins)?;
        let views = StageViews::new(&spec).map_err(|v| variant_origins.violation(v))?;
        variants.push(Variant {
            name: String::new(),
            overrides,
            spec,
            views,
        });
    }
    let points: Vec<Vec<(String, Json)>> = variants.iter().map(|v| v.overrides.clone()).collect();
    for (variant, name) in variants.iter_mut().zip(variant_names(&points)?) {
        variant.name = name;
    }
    Ok(LoadedSpec {
        spec_path: sources.spec.clone(),
        swept_keys,
        variants,
    })
}

/// Refuses a `--set` of a key the sweep varies: every variant would overwrite it, so the value
/// the user gave would be dropped without a word.
fn check_sets_not_swept(sets: &[String], axes: &[sweep::Axis]) -> Result<(), SpecError> {
    for arg in sets {
        let Some((set_key, _)) = arg.split_once('=') else {
            continue;
        };
        let set_key = set_key.trim();
        let overlaps = |swept: &str| {
            set_key == swept
                || set_key.starts_with(&format!("{swept}."))
                || swept.starts_with(&format!("{set_key}."))
        };
        if let Some((key, _, origin)) = axes.iter().find(|(key, _, _)| overlaps(key)) {
            return Err(SpecError::BadFlag {
                flag: "--set",
                arg: arg.clone(),
                message: format!(
                    "`{key}` is swept by {origin}, which would replace this value in every variant; drop one of the two"
                ),
            });
        }
    }
    Ok(())
}

/// Parses one TOML file, checks every key against the spec's schema, and notes the line of each.
fn read_toml_file(path: &Path, schema: &SchemaKeys) -> Result<(toml::Table, KeyLines), SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |span: Option<std::ops::Range<usize>>, message: &str| {
        let (line, column) = line_column(&text, span.map(|s| s.start).unwrap_or(0));
        SpecError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: message.trim().replace('\n', " "),
        }
    };
    let document = DeTable::parse(&text).map_err(|e| syntax(e.span(), e.message()))?;
    schema
        .check_table(document.get_ref(), "")
        .map_err(|(key, span, hint)| {
            let (line, column) = line_column(&text, span.start);
            SpecError::UnknownKey {
                place: format!("{}:{line}:{column}", path.display()),
                key,
                hint,
            }
        })?;
    let mut lines = KeyLines::new();
    note_lines(&text, document.get_ref(), "", &mut lines);
    let table = toml::from_str::<toml::Table>(&text).map_err(|e| syntax(e.span(), e.message()))?;
    Ok((table, lines))
}

/// The line of every key a file writes, by dotted path (`model.dim`, `download.files[0].name`).
type KeyLines = BTreeMap<String, usize>;

fn note_lines(text: &str, table: &DeTable<'_>, prefix: &str, lines: &mut KeyLines) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        lines.insert(path.clone(), line_column(text, key.span().start).0);
        note_value_lines(text, value.get_ref(), &path, lines);
    }
}

fn note_value_lines(text: &str, value: &DeValue<'_>, path: &str, lines: &mut KeyLines) {
    match value {
        DeValue::Table(inner) => note_lines(text, inner, path, lines),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                lines.insert(item_path.clone(), line_column(text, item.span().start).0);
                note_value_lines(text, item.get_ref(), &item_path, lines);
            }
        }
        _ => {}
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where each value of the merged spec came from, and the line of every key each file writes.
#[derive(Debug, Clone)]
struct Provenance {
    /// Dotted key → where its value came from; a lookup takes the longest recorded prefix.
    origins: BTreeMap<String, Origin>,
    lines: BTreeMap<PathBuf, KeyLines>,
    /// Charged with the keys nothing wrote (defaults).
    spec_file: PathBuf,
}

impl Provenance {
    fn new(spec_file: &Path) -> Provenance {
        Provenance {
            origins: BTreeMap::new(),
            lines: BTreeMap::new(),
            spec_file: spec_file.to_path_buf(),
        }
    }

    fn record(&mut self, key: &str, origin: Origin) {
        let prefix = format!("{key}.");
        self.origins.retain(|k, _| !k.starts_with(&prefix));
        self.origins.insert(key.to_string(), origin);
    }

    fn find(&self, key: &str) -> Option<&Origin> {
        let mut probe = key.to_string();
        loop {
            if let Some(origin) = self.origins.get(&probe) {
                return Some(origin);
            }
            probe = match probe.rfind(['.', '[']) {
                Some(i) => probe[..i].to_string(),
                None => return None,
            };
        }
    }

    /// Where to look for the value of `key`: the file with the key's line when the file writes
    /// the key itself, the file alone when it only writes a table above it (the key keeps its
    /// default), the flag that set it, or the spec file for a key nothing wrote.
    fn place(&self, key: &str) -> String {
        let file = match self.find(key) {
            Some(Origin::File(path)) => path,
            Some(other) => return other.to_string(),
            None => &self.spec_file,
        };
        match self.lines.get(file).and_then(|lines| lines.get(key)) {
            Some(line) => format!("{}:{line}", file.display()),
            None => file.display().to_string(),
        }
    }

    /// A broken rule of the spec, charged to where its key's value came from.
    fn violation(&self, violation: Violation) -> SpecError {
        SpecError::BadValue {
            origin: self.place(&violation.key),
            key: violation.key,
            message: violation.message,
        }
    }
}

/// Deep merge: tables merge key by key, anything else (arrays included) is replaced.
fn merge(
    into: &mut toml::Table,
    from: toml::Table,
    prefix: &str,
    origin: &Origin,
    origins: &mut Provenance,
) {
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(incoming)) => {
                merge(existing, incoming, &path, origin, origins);
            }
            (_, value) => {
                if let toml::Value::Table(table) = &value {
                    record_leaves(table, &path, origin, origins);
                }
                origins.record(&path, origin.clone());
                into.insert(key, value);
            }
        }
    }
}

fn record_leaves(table: &toml::Table, prefix: &str, origin: &Origin, origins: &mut Provenance) {
    for (key, value) in table {
        let path = format!("{prefix}.{key}");
        if let toml::Value::Table(inner) = value {
            record_leaves(inner, &path, origin, origins);
        }
        origins.record(&path, origin.clone());
    }
}

/// Sets `a.b.c = value`, creating the tables on the way.
fn insert_dotted(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("split yields at least one part");
    let mut current = table;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{walked}` is not a table")),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// Splits `KEY=VALUE` and parses VALUE as a TOML value; a bare word is taken as a string.
fn parse_assignment(flag: &'static str, arg: &str) -> Result<(String, toml::Value), SpecError> {
    let bad = |message: String| SpecError::BadFlag {
        flag,
        arg: arg.to_string(),
        message,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. train.lr=1e-3".into()))?;
    let key = key.trim();
    check_key_syntax(key).map_err(bad)?;
    let value = parse_value(raw.trim()).map_err(bad)?;
    Ok((key.to_string(), value))
}

fn check_key_syntax(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not a dotted key such as train.lr or sample.prompts"
        ))
    }
}

/// A TOML value, or a bare word as a string (`--set train_vocab.kind=char`), or a duration or
/// percentage as a string (`--set train.max_time=10m`, `--set train.min_lr=10%`).
fn parse_value(raw: &str) -> Result<toml::Value, String> {
    if raw.is_empty() {
        return Err("the value is empty; quote an empty string as \"\"".into());
    }
    match toml::from_str::<toml::Table>(&format!("value = {raw}")) {
        Ok(mut table) => Ok(table.remove("value").expect("the key was just written")),
        Err(err) => {
            let bare_word = raw
                .chars()
                .all(|c| c.is_alphanumeric() || "_-./:+ ".contains(c))
                && !raw.starts_with(['+', '-', '.'])
                && !raw.chars().next().is_some_and(|c| c.is_ascii_digit());
            let quantity = raw.starts_with(|c: char| c.is_ascii_digit())
                && raw.ends_with(['s', 'm', 'h', '%'])
                && raw
                    .chars()
                    .all(|c| c.is_ascii_digit() || ".smh%".contains(c));
            if bare_word || quantity {
                Ok(toml::Value::String(raw.to_string()))
            } else {
                Err(format!(
                    "`{raw}` is not a TOML value ({})",
                    err.message().trim().replace('\n', " ")
                ))
            }
        }
    }
}

/// Deserializes the merged table; a type error names the key and where its value came from.
fn to_spec(table: toml::Table, origins: &Provenance) -> Result<PipelineSpec, SpecError> {
    let spec: PipelineSpec =
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|err| {
            let mut key = err.path().to_string();
            let mut message = err.inner().message().trim().replace('\n', " ");
            // serde names a missing field in the message; name it as a key instead.
            if let Some(field) = message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                key = if key == "." {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                message = "is required".to_string();
            }
            origins.violation(Violation { key, message })
        })?;
    spec.validate()
        .map_err(|violation| origins.violation(violation))?;
    Ok(spec)
}

pub(crate) fn toml_to_json(value: toml::Value) -> Json {
    match value {
        toml::Value::String(s) => Json::String(s),
        toml::Value::Integer(i) => Json::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => Json::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Json::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

fn json_to_toml(value: &Json) -> Option<toml::Value> {
    Some(match value {
        Json::Null => return None,
        Json::Bool(b) => toml::Value::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        Json::String(s) => toml::Value::String(s.clone()),
        Json::Array(items) => {
            toml::Value::Array(items.iter().map(json_to_toml).collect::<Option<_>>()?)
        }
        Json::Object(map) => toml::Value::Table(
            map.iter()
                .map(|(k, v)| Some((k.clone(), json_to_toml(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}
