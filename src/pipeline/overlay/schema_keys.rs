//! The spec's key tree, read from its JSON Schema, so that an unknown key in a file or a flag is
//! named with its place and the closest known key.

use serde_json::Value as Json;
use toml::de::{DeTable, DeValue};

use crate::pipeline::spec::json_schema;

/// The spec's key tree, read from its JSON Schema, for unknown-key errors with suggestions.
pub(super) struct SchemaKeys {
    root: Json,
}

/// An unknown key: its dotted path, and a "did you mean" hint (possibly empty).
pub(super) type Unknown = (String, String);

impl SchemaKeys {
    pub(super) fn new() -> Self {
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

    pub(super) fn check_table(
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
    pub(super) fn check_path(&self, key: &str) -> Result<(), Unknown> {
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
