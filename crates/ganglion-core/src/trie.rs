//! Matching one topic against many patterns at once.

use std::collections::HashMap;

use crate::topic::{Pattern, PatternToken, Topic};

/// Patterns and their values, in a token trie: matching a topic costs one step per token
/// per wildcard branch, not one comparison per pattern.
#[derive(Debug)]
pub struct PatternIndex<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    literals: HashMap<Box<str>, Node<T>>,
    any: Option<Box<Node<T>>>,
    /// Values of patterns that end here.
    here: Vec<T>,
    /// Values of patterns whose next (and last) token is `>`.
    tail: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literals: HashMap::new(),
            any: None,
            here: Vec::new(),
            tail: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.any.is_none()
            && self.here.is_empty()
            && self.tail.is_empty()
    }
}

impl<T> Default for PatternIndex<T> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T> PatternIndex<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `pattern` (a pattern may hold many values).
    pub fn insert(&mut self, pattern: &Pattern, value: T) {
        let mut node = &mut self.root;
        for token in pattern.tokens() {
            node = match token {
                PatternToken::Literal(l) => node.literals.entry(l.into()).or_default(),
                PatternToken::Any => node.any.get_or_insert_with(Default::default),
                PatternToken::Tail => {
                    node.tail.push(value);
                    self.len += 1;
                    return;
                }
            };
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes one `value` stored under `pattern`; `true` if it was there.
    pub fn remove(&mut self, pattern: &Pattern, value: &T) -> bool
    where
        T: PartialEq,
    {
        let tokens: Vec<_> = pattern.tokens().collect();
        let removed = remove_in(&mut self.root, &tokens, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with every value whose pattern matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &Topic, mut f: impl FnMut(&'a T)) {
        visit(&self.root, topic.tokens(), &mut f);
    }

    /// As [`for_each_match`](Self::for_each_match), for a topic known to be valid (read
    /// back from the log, say) without making a [`Topic`] of it.
    pub fn for_each_match_str<'a>(&'a self, topic: &str, mut f: impl FnMut(&'a T)) {
        visit(&self.root, topic.split('.'), &mut f);
    }

    /// The values whose pattern matches `topic`.
    pub fn matches(&self, topic: &Topic) -> Vec<&T> {
        let mut out = Vec::new();
        self.for_each_match(topic, |v| out.push(v));
        out
    }
}

fn visit<'a, T>(
    node: &'a Node<T>,
    mut tokens: std::str::Split<'_, char>,
    f: &mut impl FnMut(&'a T),
) {
    let Some(first) = tokens.next() else {
        node.here.iter().for_each(&mut *f);
        return;
    };
    node.tail.iter().for_each(&mut *f);
    if let Some(child) = node.literals.get(first) {
        visit(child, tokens.clone(), f);
    }
    if let Some(child) = &node.any {
        visit(child, tokens, f);
    }
}

fn remove_in<T: PartialEq>(node: &mut Node<T>, tokens: &[PatternToken<'_>], value: &T) -> bool {
    fn take<T: PartialEq>(values: &mut Vec<T>, value: &T) -> bool {
        match values.iter().position(|v| v == value) {
            Some(i) => {
                values.swap_remove(i);
                true
            }
            None => false,
        }
    }
    let Some((first, rest)) = tokens.split_first() else {
        return take(&mut node.here, value);
    };
    match first {
        PatternToken::Tail => take(&mut node.tail, value),
        PatternToken::Literal(l) => {
            let Some(child) = node.literals.get_mut(*l) else {
                return false;
            };
            let removed = remove_in(child, rest, value);
            if child.is_empty() {
                node.literals.remove(*l);
            }
            removed
        }
        PatternToken::Any => {
            let Some(child) = node.any.as_mut() else {
                return false;
            };
            let removed = remove_in(child, rest, value);
            if child.is_empty() {
                node.any = None;
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }
    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn finds_literal_star_and_tail_matches_and_forgets_removed_ones() {
        let mut index = PatternIndex::new();
        index.insert(&p("game.state.update"), 1);
        index.insert(&p("game.*.update"), 2);
        index.insert(&p("game.>"), 3);
        index.insert(&p(">"), 4);
        index.insert(&p("chat.>"), 5);
        let mut got: Vec<_> = index
            .matches(&t("game.state.update"))
            .into_iter()
            .copied()
            .collect();
        got.sort();
        assert_eq!(got, [1, 2, 3, 4]);
        assert!(index.remove(&p("game.>"), &3));
        assert!(!index.remove(&p("game.>"), &3));
        let mut got: Vec<_> = index
            .matches(&t("game.state.update"))
            .into_iter()
            .copied()
            .collect();
        got.sort();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(index.len(), 4);
        for (pattern, v) in [
            ("game.state.update", 1),
            ("game.*.update", 2),
            (">", 4),
            ("chat.>", 5),
        ] {
            assert!(index.remove(&p(pattern), &v));
        }
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "removal prunes empty nodes");
    }
}
