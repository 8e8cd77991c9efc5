//! Topics and patterns, in the NATS subject grammar.
//!
//! A topic is a dot-separated list of tokens: `game.state.update`. A pattern is a topic
//! that may use two wildcards, each as a whole token: `*` matches exactly one token
//! (`game.*.update`), and `>` matches one or more trailing tokens and may only come last
//! (`game.>`). Published topics never contain wildcards.
//!
//! Both are at most [`MAX_TOPIC_BYTES`] bytes, have no empty tokens, and contain no
//! whitespace or control characters. Anything else is refused with a [`TopicError`]
//! that names the rule and where it broke.

use std::fmt;
use std::sync::Arc;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 256;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; at most {MAX_TOPIC_BYTES} are allowed")]
    TooLong { len: usize },
    #[error("token {token} is empty (a leading, trailing or doubled '.')")]
    EmptyToken { token: usize },
    #[error("has {what} at byte {at}; tokens may not contain whitespace or control characters")]
    InvalidCharacter { at: usize, what: &'static str },
    #[error("has '{wildcard}' at byte {at}; published topics cannot contain wildcards")]
    WildcardInTopic { at: usize, wildcard: char },
    #[error(
        "token {token} mixes a wildcard with other characters; '*' and '>' must be whole tokens"
    )]
    PartialWildcard { token: usize },
    #[error("has '>' as token {token} of {tokens}; '>' may only be the last token")]
    MisplacedTail { token: usize, tokens: usize },
}

/// Checks the rules common to topics and patterns.
fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: s.len() });
    }
    for (at, c) in s.char_indices() {
        if c.is_whitespace() {
            return Err(TopicError::InvalidCharacter {
                at,
                what: "whitespace",
            });
        }
        if c.is_control() {
            return Err(TopicError::InvalidCharacter {
                at,
                what: "a control character",
            });
        }
    }
    if let Some(token) = s.split('.').position(str::is_empty) {
        return Err(TopicError::EmptyToken { token });
    }
    Ok(())
}

/// A topic events are published on: no wildcards. Cheap to clone.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl PartialEq for Topic {
    fn eq(&self, other: &Self) -> bool {
        // Clones of one topic share their bytes: compare pointers first.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Topic {
    /// Validates `s` as a topic.
    pub fn new(s: &str) -> Result<Topic, TopicError> {
        check_common(s)?;
        if let Some(at) = s.find(['*', '>']) {
            return Err(TopicError::WildcardInTopic {
                at,
                wildcard: s[at..].chars().next().unwrap_or('*'),
            });
        }
        Ok(Topic(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

/// One token of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternToken<'a> {
    Literal(&'a str),
    /// `*`: exactly one token.
    Any,
    /// `>`: one or more tokens, last only.
    Tail,
}

/// A subscription pattern: a topic that may use `*` and a final `>`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Arc<str>);

impl Pattern {
    /// Validates `s` as a pattern.
    pub fn new(s: &str) -> Result<Pattern, TopicError> {
        check_common(s)?;
        let tokens = s.split('.').count();
        for (i, token) in s.split('.').enumerate() {
            let wild = token.contains(['*', '>']);
            if wild && token != "*" && token != ">" {
                return Err(TopicError::PartialWildcard { token: i });
            }
            if token == ">" && i + 1 != tokens {
                return Err(TopicError::MisplacedTail { token: i, tokens });
            }
        }
        Ok(Pattern(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn tokens(&self) -> impl Iterator<Item = PatternToken<'_>> {
        self.0.split('.').map(|t| match t {
            "*" => PatternToken::Any,
            ">" => PatternToken::Tail,
            literal => PatternToken::Literal(literal),
        })
    }

    /// `true` if the pattern has no wildcard (it matches exactly one topic).
    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '>'])
    }

    /// Whether `topic` matches, token by token. [`PatternIndex`](crate::PatternIndex)
    /// answers the same question for many patterns at once.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// [`matches`](Self::matches) for a topic already known to be valid (read back from
    /// the log, say), without building a [`Topic`].
    pub fn matches_str(&self, topic: &str) -> bool {
        let mut topic_tokens = topic.split('.');
        for p in self.tokens() {
            match (p, topic_tokens.next()) {
                (PatternToken::Tail, Some(_)) => return true,
                (PatternToken::Any, Some(_)) => {}
                (PatternToken::Literal(l), Some(t)) if l == t => {}
                _ => return false,
            }
        }
        topic_tokens.next().is_none()
    }
}

impl From<Topic> for Pattern {
    /// A topic is a pattern that matches only itself.
    fn from(topic: Topic) -> Pattern {
        Pattern(topic.0)
    }
}

macro_rules! string_like {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
        impl std::str::FromStr for $t {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, TopicError> {
                <$t>::new(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_like!(Topic);
string_like!(Pattern);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_topics_and_patterns() {
        for t in ["game.state.update", "a", "a-b_c.Ω.42", &"x".repeat(256)] {
            Topic::new(t).unwrap();
            Pattern::new(t).unwrap();
        }
        for p in ["*", ">", "game.*.update", "game.>", "*.*.>"] {
            Pattern::new(p).unwrap();
        }
    }

    #[test]
    fn each_broken_rule_is_named() {
        let topic_err = |s: &str| Topic::new(s).unwrap_err().to_string();
        let pattern_err = |s: &str| Pattern::new(s).unwrap_err().to_string();
        assert_eq!(topic_err(""), "is empty");
        assert_eq!(
            topic_err(&"x".repeat(257)),
            "is 257 bytes long; at most 256 are allowed"
        );
        assert_eq!(
            topic_err("a..b"),
            "token 1 is empty (a leading, trailing or doubled '.')"
        );
        assert_eq!(
            topic_err(".a"),
            "token 0 is empty (a leading, trailing or doubled '.')"
        );
        assert_eq!(
            topic_err("a."),
            "token 1 is empty (a leading, trailing or doubled '.')"
        );
        assert_eq!(
            topic_err("a b"),
            "has whitespace at byte 1; tokens may not contain whitespace or control characters"
        );
        assert_eq!(
            topic_err("a\u{7}"),
            "has a control character at byte 1; tokens may not contain whitespace or control characters"
        );
        assert_eq!(
            topic_err("game.*"),
            "has '*' at byte 5; published topics cannot contain wildcards"
        );
        assert_eq!(
            pattern_err("game.st*"),
            "token 1 mixes a wildcard with other characters; '*' and '>' must be whole tokens"
        );
        assert_eq!(
            pattern_err("game.>.x"),
            "has '>' as token 1 of 3; '>' may only be the last token"
        );
    }

    #[test]
    fn naive_matching_follows_the_nats_grammar() {
        let m = |p: &str, t: &str| Pattern::new(p).unwrap().matches(&Topic::new(t).unwrap());
        assert!(m("game.state.update", "game.state.update"));
        assert!(!m("game.state", "game.state.update"));
        assert!(m("game.*.update", "game.state.update"));
        assert!(!m("game.*", "game.state.update"));
        assert!(m("game.>", "game.state.update"));
        assert!(m("game.>", "game.x"));
        assert!(!m("game.>", "game"), "'>' needs at least one token");
        assert!(m(">", "anything.at.all"));
        assert!(m("*.*.>", "a.b.c"));
        assert!(!m("*.*.>", "a.b"));
    }
}
