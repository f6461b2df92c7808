//! From files and flags to validated specs: the spec file, `--overlay` files merged in order,
//! `--set KEY=VALUE` on top, then one variant per combination of the sweep.
//!
//! Every value remembers where it came from, so an error names the file (with line and column
//! where it has them), the `--set` or `--sweep` argument, and the dotted key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};

use super::spec::{PipelineSpec, json_schema};

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
}

/// The validated variants of a spec.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec_path: PathBuf,
    pub swept_keys: Vec<String>,
    pub variants: Vec<Variant>,
}

/// Reads, merges, checks and expands a spec into its variants.
pub fn load(sources: &SpecSources) -> Result<LoadedSpec, SpecError> {
    let schema = SchemaKeys::new();
    let mut merged = toml::Table::new();
    let mut origins = Provenance::default();

    for path in std::iter::once(&sources.spec).chain(&sources.overlays) {
        let table = read_toml_file(path, &schema)?;
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
        check_distinct(&key, &values, &origin)?;
        axes.retain(|(k, _, _)| *k != key);
        axes.push((key, values, origin));
    }

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
        let name = variant_name(&overrides);
        variants.push(Variant {
            name,
            overrides,
            spec,
        });
    }
    Ok(LoadedSpec {
        spec_path: sources.spec.clone(),
        swept_keys,
        variants,
    })
}

/// Parses one TOML file and checks every key against the spec's schema.
fn read_toml_file(path: &Path, schema: &SchemaKeys) -> Result<toml::Table, SpecError> {
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
    toml::from_str::<toml::Table>(&text).map_err(|e| syntax(e.span(), e.message()))
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Dotted key → where its value came from; a lookup takes the longest recorded prefix.
#[derive(Debug, Clone, Default)]
struct Provenance(BTreeMap<String, Origin>);

impl Provenance {
    fn record(&mut self, key: &str, origin: Origin) {
        let prefix = format!("{key}.");
        self.0.retain(|k, _| !k.starts_with(&prefix));
        self.0.insert(key.to_string(), origin);
    }

    fn find(&self, key: &str) -> Option<&Origin> {
        let mut probe = key.to_string();
        loop {
            if let Some(origin) = self.0.get(&probe) {
                return Some(origin);
            }
            probe = match probe.rfind(['.', '[']) {
                Some(i) => probe[..i].to_string(),
                None => return None,
            };
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

/// A TOML value, or a bare word as a string (`--set train_vocab.kind=char`).
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
            if bare_word {
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

/// `KEY=a,b,c` with each value parsed like `--set` values; commas inside brackets or quotes do
/// not split.
fn parse_sweep_flag(arg: &str) -> Result<(String, Vec<Json>), SpecError> {
    let bad = |message: String| SpecError::BadFlag {
        flag: "--sweep",
        arg: arg.to_string(),
        message,
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=V1,V2,..., e.g. train.lr=1e-3,3e-4".into()))?;
    let key = key.trim().to_string();
    check_key_syntax(&key).map_err(bad)?;
    let mut values = Vec::new();
    for piece in split_top_level(raw) {
        let value = parse_value(piece.trim()).map_err(bad)?;
        values.push(toml_to_json(value));
    }
    Ok((key, values))
}

fn split_top_level(raw: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut start) = (0i32, None, 0);
    let mut pieces = Vec::new();
    for (i, c) in raw.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                pieces.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(&raw[start..]);
    pieces
}

type Axis = (String, Vec<Json>, Origin);

/// Takes the `[sweep]` table out of the merged spec and checks its keys.
fn sweep_axes_from_spec(
    merged: &mut toml::Table,
    schema: &SchemaKeys,
    origins: &Provenance,
) -> Result<Vec<Axis>, SpecError> {
    let Some(sweep) = merged.remove("sweep") else {
        return Ok(Vec::new());
    };
    let toml::Value::Table(sweep) = sweep else {
        let origin = origins
            .find("sweep")
            .map(ToString::to_string)
            .unwrap_or_default();
        return Err(SpecError::BadValue {
            origin,
            key: "sweep".into(),
            message: "must be a table of dotted keys to lists of values".into(),
        });
    };
    let mut axes = Vec::new();
    for (key, values) in flatten_sweep(sweep) {
        let origin = origins
            .find(&format!("sweep.{key}"))
            .or_else(|| origins.find("sweep"))
            .cloned()
            .unwrap_or(Origin::Sweep(key.clone()));
        check_sweep_key(schema, &key, &origin.to_string())?;
        let toml::Value::Array(values) = values else {
            return Err(SpecError::BadValue {
                origin: origin.to_string(),
                key: format!("sweep.\"{key}\""),
                message: "must be a list of values".into(),
            });
        };
        if values.is_empty() {
            return Err(SpecError::BadValue {
                origin: origin.to_string(),
                key: format!("sweep.\"{key}\""),
                message: "must list at least one value".into(),
            });
        }
        let values: Vec<Json> = values.into_iter().map(toml_to_json).collect();
        check_distinct(&key, &values, &origin)?;
        axes.push((key, values, origin));
    }
    Ok(axes)
}

/// `[sweep] "train.lr" = [...]` and `[sweep.train] lr = [...]` both mean the key `train.lr`.
fn flatten_sweep(table: toml::Table) -> Vec<(String, toml::Value)> {
    let mut out = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => {
                for (sub, v) in flatten_sweep(inner) {
                    out.push((format!("{key}.{sub}"), v));
                }
            }
            other => out.push((key, other)),
        }
    }
    out
}

/// Two equal values would make two variants with the same name and run folder.
fn check_distinct(key: &str, values: &[Json], origin: &Origin) -> Result<(), SpecError> {
    for (i, value) in values.iter().enumerate() {
        if values[..i].contains(value) {
            return Err(SpecError::BadValue {
                origin: origin.to_string(),
                key: key.to_string(),
                message: format!("the sweep lists {value} twice"),
            });
        }
    }
    Ok(())
}

fn check_sweep_key(schema: &SchemaKeys, key: &str, place: &str) -> Result<(), SpecError> {
    if key.starts_with("pipeline.") || key.starts_with("sweep.") || !key.contains('.') {
        return Err(SpecError::BadValue {
            origin: place.to_string(),
            key: key.to_string(),
            message: "a sweep varies a stage setting such as train.lr, not a whole section or the pipeline's own settings".into(),
        });
    }
    schema
        .check_path(key)
        .map_err(|(key, hint)| SpecError::UnknownKey {
            place: place.to_string(),
            key,
            hint,
        })
}

fn cartesian(axes: &[Axis]) -> Vec<Vec<&Json>> {
    let mut points: Vec<Vec<&Json>> = vec![Vec::new()];
    for (_, values, _) in axes {
        points = points
            .into_iter()
            .flat_map(|point| {
                values.iter().map(move |v| {
                    let mut next = point.clone();
                    next.push(v);
                    next
                })
            })
            .collect();
    }
    points
}

/// A folder-safe name from a variant's overrides: the last key segment when it is unique.
fn variant_name(overrides: &[(String, Json)]) -> String {
    if overrides.is_empty() {
        return "default".to_string();
    }
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    let unique_last = {
        let mut lasts: Vec<String> = overrides.iter().map(|(k, _)| last(k)).collect();
        lasts.sort();
        lasts.windows(2).all(|w| w[0] != w[1])
    };
    let parts: Vec<String> = overrides
        .iter()
        .map(|(key, value)| {
            let key = if unique_last { last(key) } else { key.clone() };
            let value = match value {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{key}={value}")
        })
        .collect();
    parts
        .join(",")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=,+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Deserializes the merged table; a type error names the key and where its value came from.
fn to_spec(table: toml::Table, origins: &Provenance) -> Result<PipelineSpec, SpecError> {
    let origin_of = |key: &str| {
        origins
            .find(key)
            .map(ToString::to_string)
            .or_else(|| {
                origins
                    .0
                    .values()
                    .find(|o| matches!(o, Origin::File(_)))
                    .map(ToString::to_string)
            })
            .unwrap_or_else(|| "spec".to_string())
    };
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
            SpecError::BadValue {
                origin: origin_of(&key),
                key,
                message,
            }
        })?;
    spec.validate().map_err(|violation| SpecError::BadValue {
        origin: origin_of(&violation.key),
        key: violation.key,
        message: violation.message,
    })?;
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

/// The spec's key tree, read from its JSON Schema, for unknown-key errors with suggestions.
struct SchemaKeys {
    root: Json,
}

/// An unknown key: its dotted path, and a "did you mean" hint (possibly empty).
type Unknown = (String, String);

impl SchemaKeys {
    fn new() -> Self {
        SchemaKeys {
            root: json_schema(),
        }
    }

    /// Follows `$ref` and picks the non-null branch of an `Option`'s `anyOf`.
    fn resolve<'a>(&'a self, mut node: &'a Json) -> &'a Json {
        loop {
            if let Some(reference) = node.get("$ref").and_then(Json::as_str) {
                let name = reference.rsplit('/').next().unwrap_or_default();
                match self.root.get("$defs").and_then(|d| d.get(name)) {
                    Some(target) => node = target,
                    None => return node,
                }
                continue;
            }
            let branches = node
                .get("anyOf")
                .or_else(|| node.get("oneOf"))
                .and_then(Json::as_array);
            if let Some(branches) = branches {
                let structured = branches.iter().find(|b| {
                    b.get("$ref").is_some()
                        || b.get("properties").is_some()
                        || b.get("items").is_some()
                });
                if let Some(branch) = structured {
                    node = branch;
                    continue;
                }
            }
            return node;
        }
    }

    /// The schema of key `name` inside table schema `node`: `Ok(None)` for a free-form map,
    /// `Err` with the known keys when the name is not one of them.
    fn child<'a>(&'a self, node: &'a Json, name: &str) -> Result<Option<&'a Json>, Vec<String>> {
        let node = self.resolve(node);
        if let Some(props) = node.get("properties").and_then(Json::as_object) {
            return match props.get(name) {
                Some(child) => Ok(Some(child)),
                None => Err(props.keys().cloned().collect()),
            };
        }
        match node.get("additionalProperties") {
            Some(Json::Bool(false)) => Err(Vec::new()),
            Some(Json::Object(_)) | Some(Json::Bool(true)) | None => Ok(None),
            Some(_) => Ok(None),
        }
    }

    fn check_table(
        &self,
        table: &DeTable<'_>,
        prefix: &str,
    ) -> Result<(), (String, std::ops::Range<usize>, String)> {
        self.check_table_at(&self.root, table, prefix)
    }

    fn check_table_at(
        &self,
        node: &Json,
        table: &DeTable<'_>,
        prefix: &str,
    ) -> Result<(), (String, std::ops::Range<usize>, String)> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let path = join(prefix, name);
            match self.child(node, name) {
                Ok(Some(child)) => self.check_value(child, value.get_ref(), &path)?,
                Ok(None) => {}
                Err(known) => {
                    return Err((path, key.span(), did_you_mean(prefix, name, &known)));
                }
            }
        }
        Ok(())
    }

    fn check_value(
        &self,
        node: &Json,
        value: &DeValue<'_>,
        path: &str,
    ) -> Result<(), (String, std::ops::Range<usize>, String)> {
        let node = self.resolve(node);
        match value {
            DeValue::Table(inner) if node.get("properties").is_some() => {
                self.check_table_at(node, inner, path)
            }
            DeValue::Array(items) => {
                if let Some(item_schema) = node.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check_value(item_schema, item.get_ref(), &format!("{path}[{i}]"))?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks a dotted key (`train.lr`) names a setting of the spec.
    fn check_path(&self, key: &str) -> Result<(), Unknown> {
        let mut node = &self.root;
        let mut walked = String::new();
        for part in key.split('.') {
            let parent = walked.clone();
            walked = join(&walked, part);
            let resolved = self.resolve(node);
            if resolved.get("properties").is_none()
                && resolved.get("additionalProperties").is_none()
            {
                return Err((walked, format!(" (`{parent}` is a value, not a table)")));
            }
            match self.child(node, part) {
                Ok(Some(child)) => node = child,
                Ok(None) => return Ok(()),
                Err(known) => return Err((walked, did_you_mean(&parent, part, &known))),
            }
        }
        Ok(())
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// ` (did you mean `x`?)` for the closest known key, if one is close enough.
fn did_you_mean(prefix: &str, name: &str, known: &[String]) -> String {
    let best = known
        .iter()
        .map(|k| (strsim::jaro_winkler(name, k), k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, key)) if score >= 0.8 => format!(" (did you mean `{}`?)", join(prefix, key)),
        _ if !known.is_empty() => {
            let mut known = known.to_vec();
            known.sort();
            format!(" (known keys: {})", known.join(", "))
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn sources(spec: PathBuf) -> SpecSources {
        SpecSources {
            spec,
            ..Default::default()
        }
    }

    #[test]
    fn overlays_merge_deeply_and_set_wins() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(
            dir.path(),
            "p.toml",
            "[pipeline]\nname = \"p\"\n[train]\nlr = 1e-3\nbatch_size = 4\n",
        );
        let overlay = write(dir.path(), "o.toml", "[train]\nbatch_size = 2\n");
        let loaded = load(&SpecSources {
            spec,
            overlays: vec![overlay],
            sets: vec!["train.seed=7".into(), "sample.prompts=[\"Hi\"]".into()],
            sweeps: vec![],
        })
        .unwrap();
        let spec = &loaded.variants[0].spec;
        assert_eq!(spec.train.lr, 1e-3);
        assert_eq!(spec.train.batch_size, 2);
        assert_eq!(spec.train.seed, 7);
        assert_eq!(spec.sample.prompts, vec!["Hi".to_string()]);
        assert_eq!(loaded.variants[0].name, "default");
    }

    #[test]
    fn bare_words_are_strings() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
        let mut s = sources(spec);
        s.sets = vec!["train_vocab.kind=char".into()];
        let loaded = load(&s).unwrap();
        assert_eq!(
            loaded.variants[0].spec.train_vocab.kind,
            crate::pipeline::spec::TokenizerKind::Char
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(
            dir.path(),
            "p.toml",
            "[pipeline]\nname = \"p\"\n\n[train]\nlrr = 1e-3\n",
        );
        let err = load(&sources(spec)).unwrap_err().to_string();
        assert!(err.contains("p.toml:5:1"), "{err}");
        assert!(err.contains("unknown key `train.lrr`"), "{err}");
        assert!(err.contains("did you mean `train.lr`"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_and_its_origin() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(dir.path(), "p.toml", "[pipeline]\nname = \"p\"\n");
        let overlay = write(dir.path(), "o.toml", "[train]\nlr = \"fast\"\n");
        let err = load(&SpecSources {
            spec,
            overlays: vec![overlay],
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("o.toml"), "{err}");
        assert!(err.contains("train.lr"), "{err}");
    }

    #[test]
    fn sweep_table_and_flag_make_the_cartesian_product() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(
            dir.path(),
            "p.toml",
            "[pipeline]\nname = \"p\"\n[sweep]\n\"train.lr\" = [1e-3, 3e-4]\n",
        );
        let mut s = sources(spec);
        s.sweeps = vec!["train.seed=1,2,3".into()];
        let loaded = load(&s).unwrap();
        assert_eq!(loaded.variants.len(), 6);
        assert_eq!(loaded.swept_keys, vec!["train.lr", "train.seed"]);
        assert_eq!(loaded.variants[0].name, "lr=0.001,seed=1");
        assert_eq!(loaded.variants[5].spec.train.lr, 3e-4);
        assert_eq!(loaded.variants[5].spec.train.seed, 3);
        assert!(loaded.variants.iter().all(|v| v.spec.sweep.is_empty()));
    }

    #[test]
    fn missing_required_keys_and_repeated_sweep_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = write(dir.path(), "p.toml", "[train]\nlr = 1e-3\n");
        let err = load(&sources(spec)).unwrap_err().to_string();
        assert!(err.contains("p.toml: key `pipeline`: is required"), "{err}");

        let spec = write(dir.path(), "q.toml", "[pipeline]\nname = \"q\"\n");
        let mut s = sources(spec);
        s.sweeps = vec!["train.lr=1e-3,0.001".into()];
        let err = load(&s).unwrap_err().to_string();
        assert!(err.contains("--sweep train.lr=1e-3,0.001"), "{err}");
        assert!(err.contains("lists 0.001 twice"), "{err}");
    }

    #[test]
    fn split_respects_brackets_and_quotes() {
        assert_eq!(
            split_top_level("[\"a,b\", \"c\"],'x,y',3"),
            vec!["[\"a,b\", \"c\"]", "'x,y'", "3"]
        );
    }
}
