//! The emails Tenantry sends, as plain Rust: each [`Template`] renders to a
//! subject, a plain-text body and an HTML body ([`Rendered`]).
//!
//! Every value interpolated into the HTML goes through [`escape_html`]: the
//! paragraphs are written as plain text and escaped as a whole, links are
//! `<a href="...">` with an escaped `href`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A rendered email, ready for [`super::Mailer::send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// An email to send, with everything it needs to render. Serializable so
/// that it can be stored in a job payload (`{"template": "password_reset", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum Template {
    /// Someone was invited to join an organization.
    Invitation {
        org_name: String,
        /// Display name or email of who sent the invitation, if known.
        inviter: Option<String>,
        role: String,
        accept_url: String,
        expires_at: DateTime<Utc>,
    },
    /// Confirm the email address of a new account.
    ConfirmEmail { confirm_url: String },
    /// Reset a forgotten password.
    PasswordReset { reset_url: String },
    /// Confirm a change of email address (sent to the new address).
    EmailChange {
        confirm_url: String,
        new_email: String,
    },
    /// The code that confirms a sensitive change to the account (a new
    /// password or email address) when the sign-in is not recent.
    Reauthentication { nonce: String },
    /// The account (and possibly its first organization) is ready.
    Welcome {
        display_name: Option<String>,
        org_name: Option<String>,
    },
    /// A subscription payment failed.
    PaymentFailed {
        org_name: String,
        amount_minor: i64,
        currency: String,
        update_payment_url: String,
    },
}

impl Template {
    /// Renders the email; `product_name` is the name of the product as shown
    /// to users ("Tenantry").
    pub fn render(&self, product_name: &str) -> Rendered {
        let product = product_name;
        match self {
            Template::Invitation {
                org_name,
                inviter,
                role,
                accept_url,
                expires_at,
            } => {
                let who = inviter.as_deref().map(str::trim).filter(|s| !s.is_empty());
                let subject = match who {
                    Some(who) => format!("{who} invited you to join {org_name} on {product}"),
                    None => format!("You have been invited to join {org_name} on {product}"),
                };
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&match who {
                    Some(who) => format!(
                        "{who} has invited you to join the organization {org_name} on {product} \
                         with the role {role}."
                    ),
                    None => format!(
                        "You have been invited to join the organization {org_name} on {product} \
                         with the role {role}."
                    ),
                });
                b.link("Accept the invitation", accept_url);
                b.para(&format!(
                    "This invitation expires on {}.",
                    expires_at.format("%B %-d, %Y at %H:%M UTC")
                ));
                b.note(
                    "If you were not expecting this invitation, you can ignore this email: \
                     nothing happens unless you accept it.",
                );
                b.finish(subject)
            }
            Template::ConfirmEmail { confirm_url } => {
                let subject = format!("Confirm your email address for {product}");
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&format!(
                    "Thanks for signing up for {product}. Please confirm your email address \
                     to finish setting up your account."
                ));
                b.link("Confirm your email address", confirm_url);
                b.para("This link is valid for a limited time.");
                b.note(
                    "If you did not create an account, you can ignore this email: \
                     no account will be activated.",
                );
                b.finish(subject)
            }
            Template::PasswordReset { reset_url } => {
                let subject = format!("Reset your {product} password");
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&format!(
                    "Someone asked to reset the password of your {product} account. \
                     To choose a new password, follow this link."
                ));
                b.link("Reset your password", reset_url);
                b.para("This link is valid for a limited time and can be used once.");
                b.note(
                    "If you did not ask for this, you can ignore this email: \
                     your password stays unchanged.",
                );
                b.finish(subject)
            }
            Template::Reauthentication { nonce } => {
                let subject = format!("{nonce} is your {product} verification code");
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&format!(
                    "To confirm a change to the password or email address of your {product} \
                     account, enter this code: {nonce}"
                ));
                b.para("The code is valid for one hour and can be used once.");
                b.note(
                    "If you did not ask for this, you can ignore this email, but someone \
                     may be signed in to your account: change your password.",
                );
                b.finish(subject)
            }
            Template::EmailChange {
                confirm_url,
                new_email,
            } => {
                let subject = format!("Confirm your new email address for {product}");
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&format!(
                    "Someone asked to change the email address of a {product} account to \
                     {new_email}. To confirm the change, follow this link."
                ));
                b.link("Confirm the new address", confirm_url);
                b.para("This link is valid for a limited time.");
                b.note(
                    "If you did not ask for this, you can ignore this email: \
                     the email address stays unchanged.",
                );
                b.finish(subject)
            }
            Template::Welcome {
                display_name,
                org_name,
            } => {
                let subject = format!("Welcome to {product}");
                let mut b = Body::new(&subject, product);
                let name = display_name
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty());
                b.para(&match name {
                    Some(name) => format!("Hello {name},"),
                    None => "Hello,".to_owned(),
                });
                b.para(&format!("Welcome to {product}! Your account is ready."));
                if let Some(org) = org_name.as_deref().filter(|s| !s.trim().is_empty()) {
                    b.para(&format!(
                        "Your organization {org} is set up: you can now invite your team."
                    ));
                }
                b.note(
                    "If you did not create this account, you can ignore this email \
                     or let us know by replying to it.",
                );
                b.finish(subject)
            }
            Template::PaymentFailed {
                org_name,
                amount_minor,
                currency,
                update_payment_url,
            } => {
                let amount = format_amount(*amount_minor, currency);
                let subject = format!("Payment failed for {org_name} on {product}");
                let mut b = Body::new(&subject, product);
                b.para("Hello,");
                b.para(&format!(
                    "We could not collect the payment of {amount} for the organization \
                     {org_name} on {product}. Please update the payment method to keep \
                     the subscription active."
                ));
                b.link("Update the payment method", update_payment_url);
                b.note(
                    "If you already updated the payment method, you can ignore this email: \
                     we will try again automatically.",
                );
                b.finish(subject)
            }
        }
    }
}

/// Formats an amount in minor units (cents) with its currency code:
/// `format_amount(1234, "eur") == "12.34 EUR"`. Knows the ISO 4217 currencies
/// with no minor unit (JPY, KRW, ...) and with three decimals (KWD, ...).
pub fn format_amount(amount_minor: i64, currency: &str) -> String {
    let currency = currency.trim().to_ascii_uppercase();
    let decimals: u32 = match currency.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    let number = if decimals == 0 {
        abs.to_string()
    } else {
        let unit = 10u64.pow(decimals);
        format!(
            "{}.{:0width$}",
            abs / unit,
            abs % unit,
            width = decimals as usize
        )
    };
    if currency.is_empty() {
        format!("{sign}{number}")
    } else {
        format!("{sign}{number} {currency}")
    }
}

/// Escapes text for HTML element content and (double- or single-quoted)
/// attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const P_STYLE: &str = "margin:0 0 16px 0;";
const NOTE_STYLE: &str = "margin:0 0 16px 0;color:#6b7280;font-size:13px;";
const BUTTON_STYLE: &str = "display:inline-block;padding:10px 18px;background:#2563eb;\
                            color:#ffffff;text-decoration:none;border-radius:6px;font-weight:600;";

/// Builds the text and HTML bodies side by side, from plain-text pieces.
struct Body {
    product: String,
    text: String,
    html: String,
}

impl Body {
    fn new(subject: &str, product: &str) -> Body {
        let html = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n</head>\n\
             <body style=\"margin:0;padding:0;background:#f3f4f6;\">\n\
             <div style=\"max-width:560px;margin:0 auto;padding:24px;background:#ffffff;\
             font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;\
             font-size:15px;line-height:1.5;color:#111827;\">\n",
            escape_html(subject)
        );
        Body {
            product: product.to_owned(),
            text: String::new(),
            html,
        }
    }

    /// A paragraph of plain text (escaped as a whole in the HTML).
    fn para(&mut self, s: &str) {
        self.text.push_str(s);
        self.text.push_str("\n\n");
        self.html
            .push_str(&format!("<p style=\"{P_STYLE}\">{}</p>\n", escape_html(s)));
    }

    /// A call to action: a button in HTML (with the raw link below it for
    /// clients that strip styles), the bare URL on its own line in text.
    fn link(&mut self, label: &str, url: &str) {
        self.text.push_str(&format!("{label}:\n{url}\n\n"));
        let href = escape_html(url);
        self.html.push_str(&format!(
            "<p style=\"{P_STYLE}\"><a href=\"{href}\" style=\"{BUTTON_STYLE}\">{}</a></p>\n\
             <p style=\"{NOTE_STYLE}\">If the button does not work, copy this link into your \
             browser:<br><a href=\"{href}\" style=\"color:#2563eb;word-break:break-all;\">{href}</a></p>\n",
            escape_html(label)
        ));
    }

    /// A muted paragraph (the "ignore this email if..." line).
    fn note(&mut self, s: &str) {
        self.text.push_str(s);
        self.text.push_str("\n\n");
        self.html.push_str(&format!(
            "<p style=\"{NOTE_STYLE}\">{}</p>\n",
            escape_html(s)
        ));
    }

    fn finish(mut self, subject: String) -> Rendered {
        self.text.push_str(&format!("-- \n{}\n", self.product));
        self.html.push_str(&format!(
            "<p style=\"{NOTE_STYLE}\">&mdash; {}</p>\n</div>\n</body>\n</html>\n",
            escape_html(&self.product)
        ));
        Rendered {
            subject,
            text: self.text,
            html: self.html,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn all() -> Vec<(Template, Option<&'static str>)> {
        let expires_at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        vec![
            (
                Template::Invitation {
                    org_name: "Acme".into(),
                    inviter: Some("Alice".into()),
                    role: "admin".into(),
                    accept_url: "https://app.example.com/invitations/accept?token=abc&x=1".into(),
                    expires_at,
                },
                Some("https://app.example.com/invitations/accept?token=abc&x=1"),
            ),
            (
                Template::ConfirmEmail {
                    confirm_url: "https://app.example.com/confirm?t=1".into(),
                },
                Some("https://app.example.com/confirm?t=1"),
            ),
            (
                Template::PasswordReset {
                    reset_url: "https://app.example.com/reset?t=2".into(),
                },
                Some("https://app.example.com/reset?t=2"),
            ),
            (
                Template::EmailChange {
                    confirm_url: "https://app.example.com/email-change?t=3".into(),
                    new_email: "new@example.com".into(),
                },
                Some("https://app.example.com/email-change?t=3"),
            ),
            (
                Template::Reauthentication {
                    nonce: "042917".into(),
                },
                None,
            ),
            (
                Template::Welcome {
                    display_name: Some("Bob".into()),
                    org_name: Some("Acme".into()),
                },
                None,
            ),
            (
                Template::PaymentFailed {
                    org_name: "Acme".into(),
                    amount_minor: 1234,
                    currency: "eur".into(),
                    update_payment_url: "https://app.example.com/billing".into(),
                },
                Some("https://app.example.com/billing"),
            ),
        ]
    }

    #[test]
    fn every_template_renders_its_link_in_both_parts() {
        for (t, link) in all() {
            let r = t.render("Tenantry");
            assert!(!r.subject.is_empty(), "{t:?}");
            assert!(r.text.contains("Tenantry"), "{t:?}");
            assert!(r.html.starts_with("<!DOCTYPE html>"), "{t:?}");
            assert!(r.text.contains("ignore this email"), "{t:?}");
            if let Some(link) = link {
                assert!(r.text.contains(link), "text of {t:?}: {}", r.text);
                let href = format!("<a href=\"{}\"", escape_html(link));
                assert!(r.html.contains(&href), "html of {t:?}: {}", r.html);
            }
        }
    }

    #[test]
    fn html_escapes_interpolated_values_text_keeps_them() {
        let t = Template::Invitation {
            org_name: "<script>alert('x')</script>".into(),
            inviter: Some("Mallory & \"Co\"".into()),
            role: "member".into(),
            accept_url: "https://x.test/a?b=1&c=\"><script>".into(),
            expires_at: Utc::now(),
        };
        let r = t.render("Tenantry");
        assert!(!r.html.contains("<script>"), "{}", r.html);
        assert!(
            r.html
                .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
        );
        assert!(r.html.contains("Mallory &amp; &quot;Co&quot;"));
        assert!(
            r.html
                .contains("href=\"https://x.test/a?b=1&amp;c=&quot;&gt;&lt;script&gt;\"")
        );
        assert!(r.text.contains("<script>alert('x')</script>"));
        assert!(r.text.contains("Mallory & \"Co\""));
        assert!(r.subject.contains("<script>alert('x')</script>"));
    }

    #[test]
    fn invitation_mentions_expiry_and_role() {
        let expires_at = Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap();
        let r = Template::Invitation {
            org_name: "Acme".into(),
            inviter: None,
            role: "admin".into(),
            accept_url: "https://x.test".into(),
            expires_at,
        }
        .render("Tenantry");
        assert_eq!(r.subject, "You have been invited to join Acme on Tenantry");
        assert!(
            r.text.contains("January 2, 2030 at 03:04 UTC"),
            "{}",
            r.text
        );
        assert!(r.text.contains("with the role admin"));
    }

    #[test]
    fn amounts() {
        assert_eq!(format_amount(1234, "EUR"), "12.34 EUR");
        assert_eq!(format_amount(1234, "eur"), "12.34 EUR");
        assert_eq!(format_amount(5, "usd"), "0.05 USD");
        assert_eq!(format_amount(100, "USD"), "1.00 USD");
        assert_eq!(format_amount(0, "USD"), "0.00 USD");
        assert_eq!(format_amount(-250, "USD"), "-2.50 USD");
        assert_eq!(format_amount(1500, "JPY"), "1500 JPY");
        assert_eq!(format_amount(1234, "KWD"), "1.234 KWD");
        assert_eq!(format_amount(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
        let r = Template::PaymentFailed {
            org_name: "Acme".into(),
            amount_minor: 1234,
            currency: "EUR".into(),
            update_payment_url: "https://x.test/billing".into(),
        }
        .render("Tenantry");
        assert!(r.text.contains("12.34 EUR"));
        assert!(r.html.contains("12.34 EUR"));
    }

    #[test]
    fn welcome_greets_by_name_when_known() {
        let r = Template::Welcome {
            display_name: Some("Bob".into()),
            org_name: None,
        }
        .render("Tenantry");
        assert!(r.text.starts_with("Hello Bob,"));
        assert!(!r.text.contains("organization"));
        let r = Template::Welcome {
            display_name: None,
            org_name: Some("Acme".into()),
        }
        .render("Tenantry");
        assert!(r.text.starts_with("Hello,"));
        assert!(r.text.contains("Acme"));
    }

    #[test]
    fn serde_shape() {
        let t = Template::PasswordReset {
            reset_url: "https://x.test/r".into(),
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"template": "password_reset", "reset_url": "https://x.test/r"})
        );
        for (t, _) in all() {
            let back: Template = serde_json::from_value(serde_json::to_value(&t).unwrap()).unwrap();
            assert_eq!(back, t);
        }
    }
}
