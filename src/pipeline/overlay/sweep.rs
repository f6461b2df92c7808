//! Sweeps: the `[sweep]` table and `--sweep` flags, expanded into one variant per combination of
//! their values, each named after its overrides.

use serde_json::Value as Json;

use super::schema_keys::SchemaKeys;
use crate::pipeline::cache::canonical_json;

/// The most variants one spec may expand to. Each is a whole pipeline run with its own folder;
/// more than this is a typo (an extra value list) rather than a plan, and expanding it first
/// would hold every variant's spec in memory before anything is printed.
pub const MAX_VARIANTS: usize = 1000;

/// Run folder names longer than this are shortened (and made unique with a hash): long sweep
/// values, prompts say, would otherwise exceed the file system's limit on a name.
const MAX_NAME_LEN: usize = 96;
use super::{Origin, Provenance, SpecError, check_key_syntax, parse_value, toml_to_json};

/// `KEY=a,b,c` with each value parsed like `--set` values; commas inside brackets or quotes do
/// not split.
pub(super) fn parse_sweep_flag(arg: &str) -> Result<(String, Vec<Json>), SpecError> {
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
    let pieces = split_top_level(raw);
    if pieces.len() > MAX_VARIANTS {
        return Err(bad(too_many_values(pieces.len())));
    }
    let mut values = Vec::new();
    for piece in pieces {
        let value = parse_value(piece.trim()).map_err(bad)?;
        values.push(toml_to_json(value));
    }
    Ok((key, values))
}

pub(super) fn split_top_level(raw: &str) -> Vec<&str> {
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

pub(super) type Axis = (String, Vec<Json>, Origin);

/// Takes the `[sweep]` table out of the merged spec and checks its keys.
pub(super) fn sweep_axes_from_spec(
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
        // Where the file writes the key, with its line.
        let place = origins.place(&format!("sweep.{key}"));
        check_sweep_key(schema, &key, &place)?;
        let toml::Value::Array(values) = values else {
            return Err(SpecError::BadValue {
                origin: place.clone(),
                key: format!("sweep.\"{key}\""),
                message: "must be a list of values".into(),
            });
        };
        if values.is_empty() {
            return Err(SpecError::BadValue {
                origin: place.clone(),
                key: format!("sweep.\"{key}\""),
                message: "must list at least one value".into(),
            });
        }
        if values.len() > MAX_VARIANTS {
            return Err(SpecError::BadValue {
                origin: place.clone(),
                key: format!("sweep.\"{key}\""),
                message: too_many_values(values.len()),
            });
        }
        let values: Vec<Json> = values.into_iter().map(toml_to_json).collect();
        check_distinct(&key, &values, &place)?;
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
pub(super) fn check_distinct(key: &str, values: &[Json], place: &str) -> Result<(), SpecError> {
    for (i, value) in values.iter().enumerate() {
        if values[..i].contains(value) {
            return Err(SpecError::BadValue {
                origin: place.to_string(),
                key: key.to_string(),
                message: format!("the sweep lists {value} twice"),
            });
        }
    }
    Ok(())
}

pub(super) fn check_sweep_key(
    schema: &SchemaKeys,
    key: &str,
    place: &str,
) -> Result<(), SpecError> {
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

fn too_many_values(count: usize) -> String {
    format!("{count} values are more than the {MAX_VARIANTS} variants a sweep may have")
}

/// Refuses a sweep whose product of value counts is above [`MAX_VARIANTS`], before any variant
/// is built.
pub(super) fn check_variant_count(axes: &[Axis]) -> Result<(), SpecError> {
    let count = axes.iter().try_fold(1usize, |count, (_, values, _)| {
        count.checked_mul(values.len())
    });
    if count.is_some_and(|count| count <= MAX_VARIANTS) {
        return Ok(());
    }
    let count = count.map_or_else(|| "too many".to_string(), |c| c.to_string());
    let sizes: Vec<String> = axes
        .iter()
        .map(|(key, values, _)| format!("{} {key}", values.len()))
        .collect();
    Err(SpecError::TooManyVariants {
        count,
        sizes: sizes.join(" × "),
        max: MAX_VARIANTS,
    })
}

pub(super) fn cartesian(axes: &[Axis]) -> Vec<Vec<&Json>> {
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

/// Folder-safe names for the variants, one per list of overrides, distinct even on a file system
/// that ignores case: a name that would be shared (values such as `Tom?` and `Tom!` both read
/// `Tom_`), or is too long for a folder, gets a short hash of its values appended.
pub(super) fn variant_names(points: &[Vec<(String, Json)>]) -> Result<Vec<String>, SpecError> {
    let plain: Vec<String> = points.iter().map(|o| variant_name(o)).collect();
    let mut uses = std::collections::HashMap::new();
    for name in &plain {
        *uses.entry(name.to_lowercase()).or_insert(0usize) += 1;
    }
    let names: Vec<String> = plain
        .into_iter()
        .zip(points)
        .map(|(name, overrides)| {
            if uses[&name.to_lowercase()] == 1 && name.len() <= MAX_NAME_LEN {
                return name;
            }
            let pairs: Vec<Json> = overrides
                .iter()
                .map(|(k, v)| Json::Array(vec![Json::String(k.clone()), v.clone()]))
                .collect();
            let hash = blake3::hash(canonical_json(&Json::Array(pairs)).as_bytes());
            let mut cut = name.len().min(MAX_NAME_LEN - 9);
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}-{}", &name[..cut], &hash.to_hex()[..8])
        })
        .collect();
    let mut seen = std::collections::HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(first) = seen.insert(name.to_lowercase(), i) {
            return Err(SpecError::NameClash {
                name: name.clone(),
                first: describe(&points[first]),
                second: describe(&points[i]),
            });
        }
    }
    Ok(names)
}

fn describe(overrides: &[(String, Json)]) -> String {
    let parts: Vec<String> = overrides.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
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
