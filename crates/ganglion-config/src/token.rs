//! Bearer tokens: minted at random, kept in the config only as `sha256:` hashes.

use ganglion_core::excerpt;

/// Prefix of every minted token.
pub const TOKEN_PREFIX: &str = "gng_";

/// A new random token: `gng_` and 43 characters of base64url (256 bits).
pub fn mint_token() -> String {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a token, the key it is looked up by.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What the config holds for `token`: `sha256:` and 64 hex digits.
pub fn token_hash(token: &str) -> String {
    let hex: String = hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// Reads `sha256:` and 64 hex digits back into the digest, or says what was expected.
pub fn parse_token_hash(text: &str) -> Result<[u8; 32], String> {
    let expected = "expected \"sha256:\" and 64 hex digits, as `ganglion auth token NAME` prints";
    let hex = text
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| format!("{}: {expected}", excerpt(text)))?;
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{}: {expected}", excerpt(text)))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hashes_round_trip_and_bad_ones_say_what_is_expected() {
        let token = mint_token();
        assert!(token.starts_with("gng_") && token.len() == 4 + 43);
        assert_ne!(token, mint_token());
        let hash = token_hash(&token);
        assert_eq!(parse_token_hash(&hash).unwrap(), hash_token(&token));
        let error = parse_token_hash("md5:abc").unwrap_err();
        assert!(error.contains("sha256:"), "{error}");
        // 64 bytes, but not 64 hex digits (found by the config_loader fuzzer: a
        // multi-byte character used to panic the hex slicing).
        let wide = format!("sha256:{}ƞ{}", "a".repeat(31), "b".repeat(31));
        assert!(parse_token_hash(&wide).is_err());
    }
}
