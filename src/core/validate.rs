//! Domain value types, parsed once at the edge (parse, don't validate). Each
//! `parse` names the field it failed on, so a request can report every bad
//! field at once.

use crate::core::error::{FieldError, Invalid};

/// Collects field errors while a request body is parsed.
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

impl Fields {
    /// Keeps the value or records the error.
    pub fn check<T>(&mut self, r: Result<T, FieldError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String, FieldError> {
    let v = value.trim();
    let n = v.chars().count();
    if n < min {
        return Err(FieldError::new(
            field,
            "too_short",
            format!("must be at least {min} characters"),
        ));
    }
    if n > max {
        return Err(FieldError::new(
            field,
            "too_long",
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            "invalid_characters",
            "must not contain control characters",
        ));
    }
    Ok(v.to_owned())
}

/// An organization's display name: 1..=100 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        text(field, value, 1, 100).map(OrgName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A URL-safe, globally unique org handle: 3..=48 of `a-z 0-9 -`, no leading,
/// trailing or doubled hyphen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgSlug(String);

impl OrgSlug {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let ok = (3..=48).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !value.starts_with('-')
            && !value.ends_with('-')
            && !value.contains("--");
        if ok {
            Ok(OrgSlug(value.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "invalid_slug",
                "must be 3-48 lowercase letters, digits or single hyphens, not starting or ending with a hyphen",
            ))
        }
    }

    /// A slug derived from a name, with a random suffix when the name gives too little.
    pub fn from_name(name: &OrgName) -> Self {
        let mut s = String::new();
        for c in name.as_str().chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                s.push(c);
            } else if !s.ends_with('-') && !s.is_empty() {
                s.push('-');
            }
        }
        let mut s: String = s.trim_end_matches('-').chars().take(40).collect();
        s = s.trim_end_matches('-').to_owned();
        if s.len() < 3 {
            s = format!("org-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        }
        OrgSlug(s)
    }

    pub fn with_suffix(&self) -> Self {
        let base: String = self.0.chars().take(39).collect();
        OrgSlug(format!(
            "{}-{}",
            base.trim_end_matches('-'),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, lowercased; deliberately simple (one `@`, a dotted
/// domain, no spaces), at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let v = value.trim().to_lowercase();
        let bad = || FieldError::new(field, "invalid_email", "must be an email address");
        if v.len() > 254 {
            return Err(FieldError::new(
                field,
                "too_long",
                "must be at most 254 characters",
            ));
        }
        let (local, domain) = v.split_once('@').ok_or_else(bad)?;
        let ok = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !v
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
        if ok { Ok(Email(v)) } else { Err(bad()) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A role name: 2..=32 of `a-z 0-9 _ -`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(field: &str, value: &str) -> Result<Self, FieldError> {
        let ok = (2..=32).contains(&value.len())
            && value.as_bytes()[0].is_ascii_lowercase()
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(RoleName(value.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "invalid_role",
                "must be 2-32 lowercase letters, digits, '_' or '-', starting with a letter",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A person's display name: 1..=100 characters.
pub fn display_name(field: &str, value: &str) -> Result<String, FieldError> {
    text(field, value, 1, 100)
}

/// Free text such as a role description: 0..=500 characters.
pub fn description(field: &str, value: &str) -> Result<String, FieldError> {
    text(field, value, 0, 500)
}

/// An absolute http(s) URL of at most 2048 characters.
pub fn http_url(field: &str, value: &str) -> Result<String, FieldError> {
    if value.len() > 2048 {
        return Err(FieldError::new(
            field,
            "too_long",
            "must be at most 2048 characters",
        ));
    }
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u.to_string()),
        _ => Err(FieldError::new(
            field,
            "invalid_url",
            "must be an absolute http(s) URL",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["acme", "acme-corp", "a1b", "x".repeat(48).as_str()] {
            assert!(OrgSlug::parse("slug", ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "Acme",
            "-acme",
            "acme-",
            "ac--me",
            "ac me",
            "ácme",
            "x".repeat(49).as_str(),
        ] {
            assert!(OrgSlug::parse("slug", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slug_from_name_is_always_valid() {
        for name in [
            "Acme Corp!",
            "ÄÖ",
            "a",
            "  Hello   World  ",
            &"Long name ".repeat(9),
        ] {
            let slug = OrgSlug::from_name(&OrgName::parse("name", name).unwrap());
            assert!(
                OrgSlug::parse("slug", slug.as_str()).is_ok(),
                "{name} -> {slug:?}"
            );
            assert!(OrgSlug::parse("slug", slug.with_suffix().as_str()).is_ok());
        }
        let slug = OrgSlug::from_name(&OrgName::parse("name", "Acme Corp!").unwrap());
        assert_eq!(slug.as_str(), "acme-corp");
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("e", " Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "", "ann", "ann@", "@x.io", "a@b", "a@@b.io", "a b@c.io", "a@.io", "a@b..io",
        ] {
            assert!(Email::parse("e", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_names() {
        assert!(RoleName::parse("r", "billing_admin").is_ok());
        for bad in ["a", "Admin", "1st", "a b", &"r".repeat(33)] {
            assert!(RoleName::parse("r", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_limits() {
        assert!(OrgName::parse("name", "").is_err());
        assert!(OrgName::parse("name", "   ").is_err());
        assert!(OrgName::parse("name", &"x".repeat(101)).is_err());
        assert!(OrgName::parse("name", "bad\u{0}name").is_err());
        assert!(http_url("u", "javascript:alert(1)").is_err());
        assert!(http_url("u", "https://cdn.example.com/a.png").is_ok());
    }
}
