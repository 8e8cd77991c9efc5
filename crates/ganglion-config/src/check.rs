//! Checks a merged tree against the JSON Schema generated from [`Config`](crate::Config),
//! collecting every problem (not just the first) with the key path and origin of each.
//!
//! Only the parts of JSON Schema that schemars emits for our types are understood:
//! `$ref`, `anyOf`/`oneOf`, `type`, `enum`/`const`, `minimum`/`maximum`, `properties`
//! with `additionalProperties`, and `items`.

use serde_json::{Map, Value};

use crate::Problem;
use crate::tree::{Node, Tree};

pub(crate) struct Checker<'a> {
    root: &'a Value,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(root: &'a Value) -> Self {
        Checker { root }
    }

    /// Every problem in `node` against the root schema.
    pub(crate) fn check(&self, node: &Node, path: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.walk(self.root, node, path, &mut problems);
        problems
    }

    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let Some(name) = reference.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn walk(&self, schema: &'a Value, node: &Node, path: &str, out: &mut Vec<Problem>) {
        let schema = self.resolve(schema);
        if schema.get("x-secret").and_then(Value::as_bool) == Some(true)
            && !node.origin.may_hold_secrets()
        {
            out.push(Problem::new(
                path,
                node.origin.clone(),
                "is a secret: set it from the environment or a `_file` key, not in a config file",
            ));
            return;
        }
        if self.alternatives(schema, node, path, out) || !value_fits(schema, node, path, out) {
            return;
        }
        bounds(schema, node, path, out);
        match &node.value {
            Tree::Map(map) => self.walk_map(schema, node, map, path, out),
            Tree::Seq(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &join(path, &i.to_string()), out);
                    }
                }
            }
            Tree::Scalar(_) => {}
        }
    }

    /// `anyOf` / `oneOf`: fine if one alternative fits; else the problems of the one that
    /// got furthest (whose type matched). `false` when the schema has neither.
    fn alternatives(
        &self,
        schema: &'a Value,
        node: &Node,
        path: &str,
        out: &mut Vec<Problem>,
    ) -> bool {
        for key in ["anyOf", "oneOf"] {
            let Some(options) = schema.get(key).and_then(Value::as_array) else {
                continue;
            };
            let mut first = None;
            for option in options {
                let mut found = Vec::new();
                self.walk(option, node, path, &mut found);
                if found.is_empty() {
                    return true;
                }
                if first.is_none() && !is_type_mismatch(&found, path) {
                    first = Some(found);
                }
            }
            match first {
                Some(found) => out.extend(found),
                None => out.push(Problem::new(
                    path,
                    node.origin.clone(),
                    format!("expected {}, found {}", describe(schema, self), found(node)),
                )),
            }
            return true;
        }
        false
    }

    /// A map's keys against `properties` (or `additionalProperties`), and its
    /// `required` keys.
    fn walk_map(
        &self,
        schema: &'a Value,
        node: &Node,
        map: &std::collections::BTreeMap<String, Node>,
        path: &str,
        out: &mut Vec<Problem>,
    ) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        for (key, child) in map {
            let child_path = join(path, key);
            match properties.and_then(|p| p.get(key)) {
                Some(property) => self.walk(property, child, &child_path, out),
                None => match additional {
                    Some(Value::Bool(false)) => out.push(Problem::new(
                        &child_path,
                        child.origin.clone(),
                        unknown_key(key, properties),
                    )),
                    Some(extra @ Value::Object(_)) => self.walk(extra, child, &child_path, out),
                    _ => {}
                },
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(key) {
                    out.push(Problem::new(
                        path,
                        node.origin.clone(),
                        format!("is missing the required key `{key}`"),
                    ));
                }
            }
        }
    }
}

/// The node's `type`, `enum` and `const`; `false` (with the problem) when it does not
/// fit, and its contents are not checked further.
fn value_fits(schema: &Value, node: &Node, path: &str, out: &mut Vec<Problem>) -> bool {
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(node, t)) {
            out.push(Problem::new(
                path,
                node.origin.clone(),
                format!("expected {}, found {}", allowed.join(" or "), found(node)),
            ));
            return false;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        let value = node.to_json();
        if !allowed.contains(&value) {
            out.push(Problem::new(
                path,
                node.origin.clone(),
                format!("expected one of {}, found {value}", list(allowed)),
            ));
            return false;
        }
    }
    if let Some(constant) = schema.get("const")
        && &node.to_json() != constant
    {
        out.push(Problem::new(
            path,
            node.origin.clone(),
            format!("expected {constant}, found {}", node.to_json()),
        ));
        return false;
    }
    true
}

/// A number's `minimum` and `maximum`.
fn bounds(schema: &Value, node: &Node, path: &str, out: &mut Vec<Problem>) {
    let Tree::Scalar(value) = &node.value else {
        return;
    };
    let Some(n) = value.as_f64() else {
        return;
    };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && n < min
    {
        out.push(Problem::new(
            path,
            node.origin.clone(),
            format!("must be at least {min}, found {value}"),
        ));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && n > max
    {
        out.push(Problem::new(
            path,
            node.origin.clone(),
            format!("must be at most {max}, found {value}"),
        ));
    }
}

fn is_type_mismatch(found: &[Problem], path: &str) -> bool {
    found.len() == 1 && found[0].path == path && found[0].message.starts_with("expected")
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn has_type(node: &Node, ty: &str) -> bool {
    match (&node.value, ty) {
        (Tree::Map(_), "object") | (Tree::Seq(_), "array") => true,
        (Tree::Scalar(v), "string") => v.is_string(),
        (Tree::Scalar(v), "boolean") => v.is_boolean(),
        (Tree::Scalar(v), "null") => v.is_null(),
        (Tree::Scalar(v), "number") => v.is_number(),
        (Tree::Scalar(v), "integer") => v.is_i64() || v.is_u64(),
        _ => false,
    }
}

fn found(node: &Node) -> String {
    match &node.value {
        Tree::Map(_) => "a map".to_owned(),
        Tree::Seq(_) => "a list".to_owned(),
        Tree::Scalar(Value::String(s)) => format!("the string {s:?}"),
        Tree::Scalar(Value::Null) => "nothing (null)".to_owned(),
        Tree::Scalar(v) => v.to_string(),
    }
}

fn describe(schema: &Value, checker: &Checker<'_>) -> String {
    let options = ["anyOf", "oneOf"]
        .iter()
        .find_map(|k| schema.get(*k).and_then(Value::as_array));
    let Some(options) = options else {
        return "a valid value".to_owned();
    };
    let names: Vec<String> = options
        .iter()
        .map(|o| {
            let o = checker.resolve(o);
            if let Some(c) = o.get("const") {
                c.to_string()
            } else if let Some(t) = o.get("type").and_then(Value::as_str) {
                t.to_owned()
            } else {
                "an object".to_owned()
            }
        })
        .collect();
    names.join(" or ")
}

fn list(values: &[Value]) -> String {
    values
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key(key: &str, properties: Option<&Map<String, Value>>) -> String {
    let known: Vec<&str> = properties
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    match closest {
        Some((_, k)) => format!("unknown key (did you mean `{k}`?)"),
        None if known.is_empty() => "unknown key".to_owned(),
        None => format!("unknown key (expected one of: {})", known.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}
