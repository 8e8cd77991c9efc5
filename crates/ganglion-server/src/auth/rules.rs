//! Permissions as allow and deny lists: of topic patterns (with containment, so a
//! subscription is allowed only if every topic it can match is), and of names with `*`
//! globs.

use ganglion_config::{PermissionsConfig, Rule};
use ganglion_core::{Pattern, PatternToken};

/// Topic patterns allowed and denied.
#[derive(Debug, Clone, Default)]
pub(super) struct TopicRule {
    pub(super) allow: Vec<Pattern>,
    pub(super) deny: Vec<Pattern>,
}

impl TopicRule {
    pub(super) fn everything() -> TopicRule {
        TopicRule {
            allow: vec![Pattern::new(">").expect("valid")],
            deny: Vec::new(),
        }
    }

    pub(super) fn compile(rule: &Rule, path: &str) -> Result<TopicRule, (String, String)> {
        let parse = |list: &[String], which: &str| {
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    Pattern::new(p).map_err(|e| {
                        (
                            format!("{path}.{which}.{i}"),
                            format!("{p:?} is not a topic pattern: {e}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TopicRule {
            allow: parse(&rule.allow, "allow")?,
            deny: parse(&rule.deny, "deny")?,
        })
    }

    /// Whether `topic` is allowed.
    pub(super) fn topic(&self, topic: &str) -> bool {
        self.allow.iter().any(|p| p.matches_str(topic))
            && !self.deny.iter().any(|p| p.matches_str(topic))
    }

    /// Whether every topic `pattern` matches is allowed: it lies inside an allowed
    /// pattern and overlaps no denied one.
    pub(super) fn pattern(&self, pattern: &Pattern) -> bool {
        self.allow.iter().any(|a| contains(a, pattern))
            && !self.deny.iter().any(|d| overlaps(d, pattern))
    }
}

/// Whether `outer` matches every topic `inner` matches.
pub fn contains(outer: &Pattern, inner: &Pattern) -> bool {
    let mut inner = inner.tokens();
    for o in outer.tokens() {
        match (o, inner.next()) {
            (PatternToken::Tail, Some(_)) => return true,
            (_, None) | (_, Some(PatternToken::Tail)) => return false,
            (PatternToken::Any, Some(_)) => {}
            (PatternToken::Literal(a), Some(PatternToken::Literal(b))) if a == b => {}
            (PatternToken::Literal(_), Some(_)) => return false,
        }
    }
    inner.next().is_none()
}

/// Whether some topic matches both `a` and `b`.
pub fn overlaps(a: &Pattern, b: &Pattern) -> bool {
    let (mut a, mut b) = (a.tokens(), b.tokens());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(PatternToken::Tail), Some(_)) | (Some(_), Some(PatternToken::Tail)) => {
                return true;
            }
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(PatternToken::Literal(x)), Some(PatternToken::Literal(y))) if x != y => {
                return false;
            }
            _ => {}
        }
    }
}

/// Names allowed and denied, with `*` matching any run of characters.
#[derive(Debug, Clone, Default)]
pub(super) struct NameRule {
    pub(super) allow: Vec<String>,
    pub(super) deny: Vec<String>,
}

impl NameRule {
    pub(super) fn everything() -> NameRule {
        NameRule {
            allow: vec!["*".to_owned()],
            deny: Vec::new(),
        }
    }

    pub(super) fn compile(rule: &Rule) -> NameRule {
        NameRule {
            allow: rule.allow.clone(),
            deny: rule.deny.clone(),
        }
    }

    pub(super) fn name(&self, name: &str) -> bool {
        self.allow.iter().any(|g| glob(g, name)) && !self.deny.iter().any(|g| glob(g, name))
    }
}

/// `*` matches any run of characters (none included); everything else itself.
pub(super) fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// What one caller may do, compiled from [`PermissionsConfig`].
#[derive(Debug, Clone, Default)]
pub(super) struct Permissions {
    pub(super) publish: TopicRule,
    pub(super) subscribe: TopicRule,
    pub(super) durables: NameRule,
    pub(super) replay: TopicRule,
    pub(super) dlq: NameRule,
    pub(super) pools: NameRule,
    pub(super) quotas: NameRule,
    pub(super) submit: NameRule,
    pub(super) work: NameRule,
    pub(super) monitor: bool,
    pub(super) admin: bool,
}

impl Permissions {
    pub(super) fn everything() -> Permissions {
        Permissions {
            publish: TopicRule::everything(),
            subscribe: TopicRule::everything(),
            durables: NameRule::everything(),
            replay: TopicRule::everything(),
            dlq: NameRule::everything(),
            pools: NameRule::everything(),
            quotas: NameRule::everything(),
            submit: NameRule::everything(),
            work: NameRule::everything(),
            monitor: true,
            admin: true,
        }
    }

    pub(super) fn compile(
        p: &PermissionsConfig,
        path: &str,
    ) -> Result<Permissions, (String, String)> {
        Ok(Permissions {
            publish: TopicRule::compile(&p.publish, &format!("{path}.publish"))?,
            subscribe: TopicRule::compile(&p.subscribe, &format!("{path}.subscribe"))?,
            durables: NameRule::compile(&p.durables),
            replay: TopicRule::compile(&p.replay, &format!("{path}.replay"))?,
            dlq: NameRule::compile(&p.dlq),
            pools: NameRule::compile(&p.resources.pools),
            quotas: NameRule::compile(&p.resources.quotas),
            submit: NameRule::compile(&p.resources.submit),
            work: NameRule::compile(&p.resources.work),
            monitor: p.monitor,
            admin: p.admin,
        })
    }
}
