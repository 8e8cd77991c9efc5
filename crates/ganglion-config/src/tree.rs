//! An untyped config tree in which every value remembers where it came from (a file and
//! line, an environment variable, a flag, or the defaults). Layers are merged as trees,
//! so a problem found in the merged result still names the file and line that caused it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A YAML file, at a 1-based line.
    File { path: PathBuf, line: u64 },
    /// An environment variable (`GANGLION__BUS__BATCH_WINDOW_MS`).
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl Origin {
    /// The origin of a value read from `path` at `line`.
    pub fn file(path: &Path, line: u64) -> Origin {
        Origin::File {
            path: path.to_owned(),
            line,
        }
    }

    /// Whether a secret may come from here (the environment or a flag, never a file).
    pub(crate) fn may_hold_secrets(&self) -> bool {
        matches!(self, Origin::Env(_) | Origin::Flag(_) | Origin::Default)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) value: Tree,
    pub(crate) origin: Origin,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tree {
    Scalar(Value),
    Seq(Vec<Node>),
    Map(BTreeMap<String, Node>),
}

impl Node {
    pub(crate) fn empty_map(origin: Origin) -> Node {
        Node {
            value: Tree::Map(BTreeMap::new()),
            origin,
        }
    }

    /// A tree from a JSON value, every node from `origin`.
    pub(crate) fn from_json(value: &Value, origin: &Origin) -> Node {
        let value = match value {
            Value::Object(map) => Tree::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Node::from_json(v, origin)))
                    .collect(),
            ),
            Value::Array(items) => {
                Tree::Seq(items.iter().map(|v| Node::from_json(v, origin)).collect())
            }
            scalar => Tree::Scalar(scalar.clone()),
        };
        Node {
            value,
            origin: origin.clone(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        match &self.value {
            Tree::Scalar(v) => v.clone(),
            Tree::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            Tree::Map(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Lays `over` on top of `self`: maps merge key by key, anything else is replaced.
    pub(crate) fn merge(&mut self, over: Node) {
        match (&mut self.value, over.value) {
            (Tree::Map(base), Tree::Map(over_map)) => {
                // A layer that states a map (even an empty one) owns it unless an earlier
                // layer did.
                if self.origin == Origin::Default {
                    self.origin = over.origin;
                }
                for (key, value) in over_map {
                    match base.get_mut(&key) {
                        Some(existing) => existing.merge(value),
                        None => {
                            base.insert(key, value);
                        }
                    }
                }
            }
            (slot, value) => {
                *slot = value;
                self.origin = over.origin;
            }
        }
    }

    /// The node at `path`, if there is one.
    pub(crate) fn get(&self, path: &[&str]) -> Option<&Node> {
        let mut node = self;
        for key in path {
            node = match &node.value {
                Tree::Map(map) => map.get(*key)?,
                Tree::Seq(items) => items.get(key.parse::<usize>().ok()?)?,
                Tree::Scalar(_) => return None,
            };
        }
        Some(node)
    }

    /// Where the value at `path` (or the nearest thing above it) came from.
    pub(crate) fn origin_of(&self, path: &[&str]) -> &Origin {
        let mut node = self;
        for key in path {
            let next = match &node.value {
                Tree::Map(map) => map.get(*key),
                Tree::Seq(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                Tree::Scalar(_) => None,
            };
            match next {
                Some(next) => node = next,
                None => break,
            }
        }
        &node.origin
    }

    /// Sets the value at `path`, creating maps on the way.
    pub(crate) fn set(&mut self, path: &[&str], value: Node) {
        let Some((last, parents)) = path.split_last() else {
            *self = value;
            return;
        };
        let mut node = self;
        for key in parents {
            if !matches!(node.value, Tree::Map(_)) {
                node.value = Tree::Map(BTreeMap::new());
            }
            let Tree::Map(map) = &mut node.value else {
                unreachable!("made a map above")
            };
            node = map
                .entry((*key).to_owned())
                .or_insert_with(|| Node::empty_map(value.origin.clone()));
        }
        if !matches!(node.value, Tree::Map(_)) {
            node.value = Tree::Map(BTreeMap::new());
        }
        if let Tree::Map(map) = &mut node.value {
            match map.get_mut(*last) {
                Some(existing) => existing.merge(value),
                None => {
                    map.insert((*last).to_owned(), value);
                }
            }
        }
    }
}

/// A YAML syntax error with its line.
#[derive(Debug, Clone)]
pub(crate) struct SyntaxError {
    pub(crate) line: u64,
    pub(crate) message: String,
}

/// Parses YAML text into a tree whose nodes carry `path` and their line. An empty
/// document is an empty map.
pub(crate) fn parse_yaml(text: &str, path: &Path) -> Result<Node, SyntaxError> {
    if text.trim().is_empty() {
        return Ok(Node::empty_map(Origin::file(path, 1)));
    }
    let raw: Raw = serde_saphyr::from_str(text).map_err(|e| SyntaxError {
        line: e.location().map_or(1, |l| l.line()),
        message: e.to_string(),
    })?;
    Ok(raw.into_node(path, 1))
}

/// Parses an environment variable's or flag's value: YAML scalars and flow collections
/// (`50`, `true`, `[a, b]`); anything unparsable is a string.
pub(crate) fn parse_value(text: &str, origin: Origin) -> Node {
    match serde_saphyr::from_str::<Raw>(text) {
        Ok(raw) => {
            let node = raw.into_node(Path::new(""), 1);
            Node::from_json(&node.to_json(), &origin)
        }
        Err(_) => Node {
            value: Tree::Scalar(Value::String(text.to_owned())),
            origin,
        },
    }
}

/// What serde-saphyr hands us: values with the line of their key or item.
#[derive(Debug)]
enum Raw {
    Scalar(Value),
    Seq(Vec<(u64, Raw)>),
    Map(Vec<(String, u64, Raw)>),
}

impl Raw {
    fn into_node(self, path: &Path, line: u64) -> Node {
        let value = match self {
            Raw::Scalar(v) => Tree::Scalar(v),
            Raw::Seq(items) => Tree::Seq(
                items
                    .into_iter()
                    .map(|(line, raw)| raw.into_node(path, line))
                    .collect(),
            ),
            Raw::Map(entries) => Tree::Map(
                entries
                    .into_iter()
                    .map(|(key, line, raw)| (key, raw.into_node(path, line)))
                    .collect(),
            ),
        };
        Node {
            value,
            origin: Origin::file(path, line),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Scalar(Value::String(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push((item.referenced.line(), item.value));
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Raw>()?;
            entries.push((key.value, key.referenced.line(), value));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_remember_their_lines_and_later_layers_win() {
        let a = Path::new("a.yaml");
        let mut base = parse_yaml("bus:\n  batch_window_ms: 100\n  ephemeral: [x]\n", a).unwrap();
        let over = parse_yaml("\n\nbus:\n  batch_window_ms: 50\n", Path::new("b.yaml")).unwrap();
        base.merge(over);
        assert_eq!(
            base.to_json(),
            serde_json::json!({"bus": {"batch_window_ms": 50, "ephemeral": ["x"]}})
        );
        assert_eq!(
            base.origin_of(&["bus", "batch_window_ms"]).to_string(),
            "b.yaml:4"
        );
        assert_eq!(
            base.origin_of(&["bus", "ephemeral"]).to_string(),
            "a.yaml:3"
        );
        // A missing key reports the nearest thing above it.
        assert_eq!(base.origin_of(&["bus", "nope"]).to_string(), "a.yaml:1");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = parse_yaml("bus:\n  a: 1\n b: [\n", Path::new("x.yaml")).unwrap_err();
        assert!(err.line >= 3, "{err:?}");
    }

    #[test]
    fn environment_values_are_yaml_scalars() {
        let origin = Origin::Env("V".into());
        assert_eq!(parse_value("50", origin.clone()).to_json(), 50);
        assert_eq!(parse_value("true", origin.clone()).to_json(), true);
        assert_eq!(
            parse_value("[a, b]", origin.clone()).to_json(),
            serde_json::json!(["a", "b"])
        );
        assert_eq!(parse_value("http://x:1", origin).to_json(), "http://x:1");
    }
}
