//! Ganglion's configuration: layered YAML, typed and validated, hot-reloaded.
//!
//! # Layers (later wins)
//!
//! 1. the defaults in code ([`Config::default`]);
//! 2. `config/ganglion.yaml`;
//! 3. `config/environments/<env>.yaml`, the environment from `--env` or `GANGLION_ENV`
//!    (`development`, `staging`, `production`);
//! 4. `config/components/<name>.yaml`, the component from `--component` or
//!    `GANGLION_COMPONENT`;
//! 5. the `set:` of every enabled feature flag under `features:`, in name order;
//! 6. environment variables `GANGLION__SECTION__KEY` (`GANGLION__BUS__BATCH_WINDOW_MS=50`),
//!    values read as YAML scalars;
//! 7. command-line flags.
//!
//! Maps merge key by key; anything else (numbers, strings, lists) is replaced whole.
//! Every value remembers its origin, so a problem in the merged result names the file
//! and line (or variable, or flag) that caused it.
//!
//! # Validation
//!
//! The merged tree is checked against the JSON Schema generated from [`Config`]
//! ([`schema`]): unknown keys (with a suggestion), wrong types and values out of range
//! are all reported, not just the first. Checks the schema cannot express are added by
//! the caller with [`Loader::validate_with`].
//!
//! # Secrets
//!
//! Secret keys ([`Secret`], marked `x-secret` in the schema) are refused in files: they
//! come from the environment, a flag, or a `<key>_file` holding the value. They print as
//! `<redacted>` in `Debug`, in [`Loaded::show`] and in logs.
//!
//! # Hot reload
//!
//! [`ConfigHandle`] holds the current config; [`ConfigHandle::reload`] re-reads every
//! layer and swaps a valid result in atomically, notifying the watchers of the key paths
//! that changed ([`ConfigHandle::watch`]); an invalid one is refused and the old one
//! stays. [`ConfigHandle::watch_files`] does this when the files change (debounced).
//! Changes to settings that cannot apply live are reported in
//! [`Reloaded::restart_required`].

mod check;
mod model;
mod problem;
mod reload;
mod secret;
pub mod token;
mod tree;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

pub use model::*;
pub use problem::{Problem, Problems};
pub use reload::{ConfigHandle, FileWatcher, LIVE_KEYS, Reloaded, is_live};
use secret::REDACTED;
pub use secret::Secret;
pub use tree::Origin;

use check::Checker;
use tree::{Node, Tree};

/// The environment variable prefix of layer 6; path segments are separated by `__`.
pub const ENV_PREFIX: &str = "GANGLION__";

/// The JSON Schema of [`Config`] (what `ganglion config schema` prints); generated once.
pub fn schema() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(Value::Null))
}

type Validator = Arc<dyn Fn(&Config) -> Vec<(String, String)> + Send + Sync>;

/// Where the layers come from. Cheap to clone; a [`ConfigHandle`] keeps one to reload.
#[derive(Clone)]
pub struct Loader {
    dir: PathBuf,
    base_file: Option<PathBuf>,
    environment: Option<String>,
    component: Option<String>,
    env_vars: Vec<(String, String)>,
    flags: Vec<(String, String, String)>,
    validators: Vec<Validator>,
}

/// The layer names in `dir` (files `<name>.yaml`), sorted.
fn known_layers(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

impl fmt::Debug for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("dir", &self.dir)
            .field("base_file", &self.base_file)
            .field("environment", &self.environment)
            .field("component", &self.component)
            .field("env_vars", &self.env_vars.len())
            .field("flags", &self.flags.len())
            .finish()
    }
}

impl Loader {
    /// Layers from the directory `dir` (`config/`), no environment variables.
    pub fn new(dir: impl Into<PathBuf>) -> Loader {
        Loader {
            dir: dir.into(),
            base_file: None,
            environment: None,
            component: None,
            env_vars: Vec::new(),
            flags: Vec::new(),
            validators: Vec::new(),
        }
    }

    /// `path` is a directory holding `ganglion.yaml`, `environments/` and `components/`,
    /// or a file used as `ganglion.yaml` (its directory holds the others).
    pub fn at(path: &Path) -> Loader {
        if path.is_file() {
            let dir = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_owned);
            let mut loader = Loader::new(dir);
            loader.base_file = Some(path.to_owned());
            loader
        } else {
            Loader::new(path)
        }
    }

    /// The environment layer (`development`, `staging`, `production`).
    pub fn environment(mut self, name: Option<String>) -> Loader {
        self.environment = name;
        self
    }

    /// The component layer.
    pub fn component(mut self, name: Option<String>) -> Loader {
        self.component = name;
        self
    }

    /// Reads `GANGLION__*` variables (and `GANGLION_ENV`, `GANGLION_COMPONENT` when no
    /// environment or component was given) from this process's environment.
    pub fn with_process_env(self) -> Loader {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        self.with_env_vars(vars)
    }

    /// Like [`with_process_env`](Self::with_process_env), from the given variables.
    pub fn with_env_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Loader {
        for (name, value) in vars {
            match name.as_str() {
                "GANGLION_ENV" if self.environment.is_none() => self.environment = Some(value),
                "GANGLION_COMPONENT" if self.component.is_none() => self.component = Some(value),
                _ if name.starts_with(ENV_PREFIX) => self.env_vars.push((name, value)),
                _ => {}
            }
        }
        self.env_vars.sort();
        self
    }

    /// A command-line flag `flag` setting the key `path` (`server.grpc_addr`) to `value`
    /// (read as a YAML scalar).
    pub fn flag(mut self, path: &str, value: impl Into<String>, flag: &str) -> Loader {
        self.flags
            .push((path.to_owned(), value.into(), flag.to_owned()));
        self
    }

    /// A check the schema cannot express; it returns `(key path, message)` pairs.
    pub fn validate_with(
        mut self,
        check: impl Fn(&Config) -> Vec<(String, String)> + Send + Sync + 'static,
    ) -> Loader {
        self.validators.push(Arc::new(check));
        self
    }

    /// The files of layers 2–4, whether or not they exist.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.base_file
                .clone()
                .unwrap_or_else(|| self.dir.join("ganglion.yaml")),
        ];
        if let Some(env) = &self.environment {
            files.push(self.dir.join("environments").join(format!("{env}.yaml")));
        }
        if let Some(component) = &self.component {
            files.push(
                self.dir
                    .join("components")
                    .join(format!("{component}.yaml")),
            );
        }
        files
    }

    /// Reads, merges and validates every layer.
    pub fn load(&self) -> Result<Loaded, Problems> {
        let problems = self.check_layer_names();
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let mut problems = Vec::new();
        // Layers 1–4.
        let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
        let mut tree = Node::from_json(&defaults, &Origin::Default);
        let read = self.merge_files(&mut tree, &mut problems);
        // Layers 6–7, kept apart so feature flags can be switched on from them too.
        let top = self.env_and_flags(&mut problems);
        // Layer 5: the `set` of each enabled feature.
        merge_enabled_features(&mut tree, &top);
        tree.merge(top);
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let problems = check_schema(&tree);
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let json = tree.to_json();
        let mut config: Config = serde_json::from_value(json.clone())
            .map_err(|e| Problems(vec![Problem::new("", Origin::Default, e.to_string())]))?;
        self.resolve_secret_files(&mut config, &tree)?;

        let problems: Vec<Problem> = self
            .validators
            .iter()
            .flat_map(|check| check(&config))
            .map(|(path, message)| {
                let keys: Vec<&str> = path.split('.').collect();
                Problem::new(&path, tree.origin_of(&keys).clone(), message)
            })
            .collect();
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Loaded {
            config: Arc::new(config),
            tree,
            json,
            files: read,
        })
    }

    /// `--env` and `--component` are names, and a layer asked for by name must exist:
    /// a misspelt `--env prodution` would otherwise run on the defaults without a word.
    fn check_layer_names(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (what, name) in [
            ("environment", &self.environment),
            ("component", &self.component),
        ] {
            if let Some(name) = name
                && (name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                problems.push(Problem::new(
                    what,
                    Origin::Flag(format!("--{what}")),
                    format!("{name:?} is not a name of letters, digits, `-` and `_`"),
                ));
            }
        }
        if !problems.is_empty() {
            return problems;
        }
        for (what, name, sub) in [
            ("environment", &self.environment, "environments"),
            ("component", &self.component, "components"),
        ] {
            let Some(name) = name else { continue };
            let file = self.dir.join(sub).join(format!("{name}.yaml"));
            if file.is_file() {
                continue;
            }
            let known = known_layers(&self.dir.join(sub));
            problems.push(Problem::new(
                what,
                Origin::Flag(format!(
                    "--{}",
                    if what == "environment" { "env" } else { what }
                )),
                format!(
                    "{name:?} has no layer: {} does not exist{}",
                    file.display(),
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (there are: {})", known.join(", "))
                    }
                ),
            ));
        }
        problems
    }

    /// Merges the layer files that exist into `tree`, in order; returns those read.
    fn merge_files(&self, tree: &mut Node, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
        let mut read = Vec::new();
        for file in self.files() {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    problems.push(Problem::new(
                        "",
                        Origin::file(&file, 1),
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            };
            match tree::parse_yaml(&text, &file) {
                Ok(node) if matches!(node.value, Tree::Map(_)) => {
                    tree.merge(node);
                    read.push(file);
                }
                Ok(node) => problems.push(Problem::new(
                    "",
                    node.origin,
                    "expected a map of settings at the top level",
                )),
                Err(e) => problems.push(Problem::new(
                    "",
                    Origin::file(&file, e.line),
                    format!("not valid YAML: {}", e.message),
                )),
            }
        }
        read
    }

    /// The environment variables' and the flags' settings (layers 6 and 7).
    fn env_and_flags(&self, problems: &mut Vec<Problem>) -> Node {
        let mut top = Node::empty_map(Origin::Default);
        for (name, value) in &self.env_vars {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.iter().any(String::is_empty) {
                problems.push(Problem::new(
                    "",
                    Origin::Env(name.clone()),
                    "expected GANGLION__SECTION__KEY with no empty segment",
                ));
                continue;
            }
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            top.set(&path, tree::parse_value(value, Origin::Env(name.clone())));
        }
        for (path, value, flag) in &self.flags {
            let path: Vec<&str> = path.split('.').collect();
            top.set(&path, tree::parse_value(value, Origin::Flag(flag.clone())));
        }
        top
    }

    /// Reads `<key>_file` secrets.
    fn resolve_secret_files(&self, config: &mut Config, tree: &Node) -> Result<(), Problems> {
        let t = &mut config.telemetry;
        if let Some(path) = &t.otlp_token_file {
            match std::fs::read_to_string(path) {
                Ok(text) => t.otlp_token = Some(Secret::new(text.trim_end())),
                Err(e) => {
                    let key = ["telemetry", "otlp_token_file"];
                    return Err(Problems(vec![Problem::new(
                        &key.join("."),
                        tree.origin_of(&key).clone(),
                        format!("cannot read the secret file {}: {e}", path.display()),
                    )]));
                }
            }
        }
        Ok(())
    }
}

/// A loaded, valid configuration and where each of its values came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    config: Arc<Config>,
    tree: Node,
    json: Value,
    files: Vec<PathBuf>,
}

impl Loaded {
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The files that were read, in layer order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Where the value at `path` (`bus.batch_window_ms`) came from.
    pub fn origin(&self, path: &str) -> &Origin {
        let keys: Vec<&str> = path.split('.').collect();
        self.tree.origin_of(&keys)
    }

    /// Every setting as `(key path, value, origin)`, secrets redacted.
    pub fn show(&self) -> Vec<(String, Value, Origin)> {
        let schema = schema();
        let mut out = Vec::new();
        leaves(&self.tree, "", schema, schema, &mut out);
        out
    }

    /// The merged values as JSON (secrets included: do not log this).
    pub(crate) fn json(&self) -> &Value {
        &self.json
    }
}

fn leaves(
    node: &Node,
    path: &str,
    schema: &Value,
    root: &Value,
    out: &mut Vec<(String, Value, Origin)>,
) {
    let schema = resolve_any(schema, root);
    if schema.get("x-secret").and_then(Value::as_bool) == Some(true) {
        out.push((path.to_owned(), Value::from(REDACTED), node.origin.clone()));
        return;
    }
    match &node.value {
        Tree::Map(map) if !map.is_empty() => {
            for (key, child) in map {
                let child_schema = schema
                    .get("properties")
                    .and_then(|p| p.get(key))
                    .or_else(|| schema.get("additionalProperties"))
                    .unwrap_or(&Value::Bool(true));
                leaves(child, &check::join(path, key), child_schema, root, out);
            }
        }
        _ => out.push((path.to_owned(), node.to_json(), node.origin.clone())),
    }
}

/// Follows `$ref`s and the non-null branch of an `Option`'s `anyOf`.
fn resolve_any<'a>(mut schema: &'a Value, root: &'a Value) -> &'a Value {
    loop {
        if let Some(name) = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            match root.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => {
                    schema = target;
                    continue;
                }
                None => return schema,
            }
        }
        if let Some(options) = schema.get("anyOf").and_then(Value::as_array)
            && let Some(option) = options
                .iter()
                .find(|o| o.get("type").and_then(Value::as_str) != Some("null"))
        {
            schema = option;
            continue;
        }
        return schema;
    }
}

/// Merges into `tree` the `set` of each feature enabled in it or in `top` (so a flag or
/// an environment variable can switch a feature on).
fn merge_enabled_features(tree: &mut Node, top: &Node) {
    let mut with_top = tree.clone();
    with_top.merge(top.clone());
    if let Some(Node {
        value: Tree::Map(features),
        ..
    }) = with_top.get(&["features"])
    {
        for feature in features.values() {
            let enabled = feature
                .get(&["enabled"])
                .is_some_and(|e| e.to_json() == Value::Bool(true));
            if let (true, Some(set)) = (enabled, feature.get(&["set"]))
                && matches!(set.value, Tree::Map(_))
            {
                tree.merge(set.clone());
            }
        }
    }
}

/// `tree` against the schema, each feature's `set` too.
fn check_schema(tree: &Node) -> Vec<Problem> {
    let checker = Checker::new(schema());
    let mut problems = checker.check(tree, "");
    if let Some(Node {
        value: Tree::Map(features),
        ..
    }) = tree.get(&["features"])
    {
        for (name, feature) in features {
            if let Some(set) = feature.get(&["set"]) {
                problems.extend(checker.check(set, &format!("features.{name}.set")));
            }
        }
    }
    problems
}
