//! The token trie agrees with the naive matcher on random patterns and topics.

use ganglion_core::{Pattern, PatternIndex, Topic};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("game"), Just("state")].prop_map(String::from)
}

fn topic() -> impl Strategy<Value = Topic> {
    prop::collection::vec(token(), 1..5).prop_map(|t| Topic::new(&t.join(".")).unwrap())
}

fn pattern() -> impl Strategy<Value = Pattern> {
    let pattern_token = prop_oneof![4 => token(), 2 => Just("*".to_string())];
    (prop::collection::vec(pattern_token, 1..5), any::<bool>()).prop_map(|(mut tokens, tail)| {
        if tail {
            *tokens.last_mut().unwrap() = ">".into();
        }
        Pattern::new(&tokens.join(".")).unwrap()
    })
}

proptest! {
    #[test]
    fn trie_matches_exactly_what_the_naive_matcher_matches(
        patterns in prop::collection::vec(pattern(), 0..40),
        removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        topics in prop::collection::vec(topic(), 1..30),
    ) {
        let mut index = PatternIndex::new();
        let mut live: Vec<(Pattern, usize)> = Vec::new();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, i);
            live.push((p.clone(), i));
        }
        for r in removed {
            if live.is_empty() { break; }
            let (p, v) = live.remove(r.index(live.len()));
            prop_assert!(index.remove(&p, &v));
        }
        prop_assert_eq!(index.len(), live.len());
        for topic in &topics {
            let mut got: Vec<usize> = index.matches(topic).into_iter().copied().collect();
            got.sort_unstable();
            let mut expected: Vec<usize> =
                live.iter().filter(|(p, _)| p.matches(topic)).map(|(_, v)| *v).collect();
            expected.sort_unstable();
            prop_assert_eq!(got, expected, "topic {}", topic);
        }
    }
}
