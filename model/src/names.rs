//! Kubernetes name rules (apimachinery's `validation.IsDNS1123Label` and
//! friends), returned as one-phrase reasons so callers can prefix the object
//! and field.
#![forbid(unsafe_code)]

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_MAX: usize = 63;
const IANA_SVC_NAME_MAX: usize = 15;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "{s:?} is longer than {DNS1123_LABEL_MAX} characters"
        ));
    }
    let ok = s.chars().all(|c| is_lower_alnum(c) || c == '-')
        && s.starts_with(is_lower_alnum)
        && s.ends_with(is_lower_alnum);
    if !ok {
        return Err(format!(
            "{s:?} is not a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated labels.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "{s:?} is longer than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_lower_alnum(c) || c == '-')
            && part.starts_with(is_lower_alnum)
            && part.ends_with(is_lower_alnum)
    });
    if !ok {
        return Err(format!(
            "{s:?} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each part starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A label name or value body: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A label key: optional DNS-1123 subdomain prefix and `/`, then a name of at
/// most 63 characters.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if let Err(e) = dns1123_subdomain(prefix) {
            return Err(format!("key {key:?}: prefix {e}"));
        }
    }
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "key {key:?}: name part is longer than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !qualified_part(name) {
        return Err(format!(
            "key {key:?}: name part must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of the qualified-name form.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > LABEL_VALUE_MAX {
        return Err(format!(
            "value {value:?} is longer than {LABEL_VALUE_MAX} characters"
        ));
    }
    if !qualified_part(value) {
        return Err(format!(
            "value {value:?} must be letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// IANA_SVC_NAME (RFC 6335): at most 15 of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or doubled `-`.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > IANA_SVC_NAME_MAX {
        return Err(format!(
            "{s:?} is longer than {IANA_SVC_NAME_MAX} characters"
        ));
    }
    if !s.chars().all(|c| is_lower_alnum(c) || c == '-') {
        return Err(format!(
            "{s:?} must contain only lower-case letters, digits and '-'"
        ));
    }
    if !s.chars().any(|c| c.is_ascii_lowercase()) {
        return Err(format!("{s:?} must contain at least one letter"));
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err(format!(
            "{s:?} must not start or end with '-' or contain \"--\""
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_names() {
        assert!(dns1123_label("a-1").is_ok());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label("A").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(label_key("app").is_ok());
        assert!(label_key("kubernetes.io/metadata.name").is_ok());
        assert!(label_key("Bad_Prefix/x").is_err());
        assert!(label_key("x/").is_err());
        assert!(label_key("a/b/c").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("A_b.c-9").is_ok());
        assert!(label_value("-x").is_err());
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("h-2").is_ok());
        assert!(iana_svc_name("123").is_err());
        assert!(iana_svc_name("a--b").is_err());
        assert!(iana_svc_name("abcdefghijklmnop").is_err());
    }
}
