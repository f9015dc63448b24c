//! What a bundle may be called. Bundle names appear in URLs, the store, token scopes and logs.

/// Longest bundle name.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `name` can be a bundle's: letters, digits, `-`, `_`, `.` (not first), at most
/// [`MAX_NAME_LEN`] characters.
pub fn is_bundle_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}
