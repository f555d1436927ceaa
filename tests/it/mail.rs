//! The email layer against a real SMTP server (the test sink): what arrives,
//! and how failures are classified for the job layer's retries.

use std::time::Duration;

use crate::common::smtp::SmtpSink;
use chrono::{TimeZone, Utc};
use tenantry::mail::{Mailer, Template};

const FROM: &str = "Tenantry <no-reply@tenantry.test>";
const WAIT: Duration = Duration::from_secs(10);

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Every template, with the link it must carry (Welcome has none).
fn templates() -> Vec<(Template, Option<&'static str>)> {
    vec![
        (
            Template::Invitation {
                org_name: "Acme".into(),
                inviter: Some("Alice Example".into()),
                role: "admin".into(),
                accept_url: "https://app.tenantry.test/invitations/accept?token=t0k&org=1".into(),
                expires_at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
            },
            Some("https://app.tenantry.test/invitations/accept?token=t0k&org=1"),
        ),
        (
            Template::ConfirmEmail {
                confirm_url: "https://app.tenantry.test/confirm?token=c0nf".into(),
            },
            Some("https://app.tenantry.test/confirm?token=c0nf"),
        ),
        (
            Template::PasswordReset {
                reset_url: "https://app.tenantry.test/reset?token=r3set".into(),
            },
            Some("https://app.tenantry.test/reset?token=r3set"),
        ),
        (
            Template::EmailChange {
                confirm_url: "https://app.tenantry.test/email-change?token=ch4nge".into(),
                new_email: "new@example.com".into(),
            },
            Some("https://app.tenantry.test/email-change?token=ch4nge"),
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
                currency: "EUR".into(),
                update_payment_url: "https://app.tenantry.test/billing".into(),
            },
            Some("https://app.tenantry.test/billing"),
        ),
    ]
}

#[tokio::test]
async fn every_template_arrives_with_recipient_subject_and_link() {
    let sink = SmtpSink::start().await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let templates = templates();
    for (i, (template, _)) in templates.iter().enumerate() {
        let to = format!("user{i}@example.com");
        mailer
            .send(&to, &template.render("Tenantry"))
            .await
            .unwrap_or_else(|e| panic!("{template:?}: {e}"));
    }

    let received = sink.wait_for(templates.len(), WAIT).await;
    assert_eq!(received.len(), templates.len());
    for (i, ((template, link), got)) in templates.iter().zip(&received).enumerate() {
        let to = format!("user{i}@example.com");
        let rendered = template.render("Tenantry");
        assert_eq!(got.mail_from, "no-reply@tenantry.test");
        assert_eq!(got.rcpt_to, vec![to.clone()]);
        assert!(got.header("To").unwrap().contains(&to), "{got:#?}");
        assert!(
            got.header("From")
                .unwrap()
                .contains("no-reply@tenantry.test")
        );
        assert!(got.header("Date").is_some(), "{got:#?}");
        let message_id = got.header("Message-ID").expect("Message-ID");
        assert!(message_id.ends_with("@tenantry.test>"), "{message_id}");
        assert!(
            got.header("Content-Type")
                .unwrap()
                .starts_with("multipart/alternative"),
            "{got:#?}"
        );
        assert_eq!(got.subject().as_deref(), Some(rendered.subject.as_str()));
        let text = got.text_body().expect("text part");
        let html = got.html_body().expect("html part");
        assert_eq!(text.trim_end(), rendered.text.trim_end());
        assert_eq!(html.trim_end(), rendered.html.trim_end());
        if let Some(link) = link {
            assert!(text.contains(link), "{text}");
            assert!(
                html.contains(&format!("<a href=\"{}\"", escape(link))),
                "{html}"
            );
        }
    }
}

#[tokio::test]
async fn non_ascii_and_markup_survive_the_trip() {
    let sink = SmtpSink::start().await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let org = "Zürich Café <b>&</b> Søns — 東京";
    let rendered = Template::Invitation {
        org_name: org.into(),
        inviter: None,
        role: "member".into(),
        accept_url: "https://app.tenantry.test/accept?token=x&y=\"z\"".into(),
        expires_at: Utc.with_ymd_and_hms(2030, 1, 2, 3, 4, 5).unwrap(),
    }
    .render("Tenantry");
    mailer
        .send("Ünïcode Person <person@example.com>", &rendered)
        .await
        .unwrap();

    let got = sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(got.rcpt_to, vec!["person@example.com".to_owned()]);
    assert_eq!(got.subject().unwrap(), rendered.subject);
    assert!(got.subject().unwrap().contains(org));
    let text = got.text_body().unwrap();
    assert!(text.contains(org), "{text}");
    let html = got.html_body().unwrap();
    assert!(html.contains(&escape(org)), "{html}");
    assert!(!html.contains("<b>"), "{html}");
    assert!(
        html.contains("href=\"https://app.tenantry.test/accept?token=x&amp;y=&quot;z&quot;\""),
        "{html}"
    );
}

#[tokio::test]
async fn rejected_recipients_are_permanent_on_5xx_and_transient_on_4xx() {
    let rendered = Template::ConfirmEmail {
        confirm_url: "https://app.tenantry.test/confirm".into(),
    }
    .render("Tenantry");

    let sink = SmtpSink::start_rejecting(550).await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let err = mailer
        .send("gone@example.com", &rendered)
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("550"), "{err}");
    assert!(sink.messages().is_empty());

    let sink = SmtpSink::start_rejecting(451).await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let err = mailer
        .send("later@example.com", &rendered)
        .await
        .unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(err.to_string().contains("451"), "{err}");
    assert!(sink.messages().is_empty());

    // An invalid address never reaches the server.
    let sink = SmtpSink::start().await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let err = mailer.send("not an address", &rendered).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    // A port that was just free: nobody listens on it.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mailer = Mailer::new(Some(&format!("smtp://127.0.0.1:{port}")), FROM, false).unwrap();
    let rendered = Template::PasswordReset {
        reset_url: "https://app.tenantry.test/reset".into(),
    }
    .render("Tenantry");
    let err = mailer.send("ann@example.com", &rendered).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
}

#[tokio::test]
async fn the_log_mailer_succeeds_without_a_server() {
    for log_bodies in [false, true] {
        let mailer = Mailer::new(None, FROM, log_bodies).unwrap();
        for (template, _) in templates() {
            mailer
                .send("ann@example.com", &template.render("Tenantry"))
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn concurrent_sends_through_clones_all_arrive() {
    let sink = SmtpSink::start().await;
    let mailer = Mailer::new(Some(&sink.url()), FROM, false).unwrap();
    let rendered = Template::Welcome {
        display_name: None,
        org_name: None,
    }
    .render("Tenantry");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (mailer, rendered) = (mailer.clone(), rendered.clone());
        tasks.spawn(async move { mailer.send(&format!("u{i}@example.com"), &rendered).await });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let received = sink.wait_for(12, WAIT).await;
    let mut recipients: Vec<String> = received.iter().flat_map(|r| r.rcpt_to.clone()).collect();
    recipients.sort();
    let mut expected: Vec<String> = (0..12).map(|i| format!("u{i}@example.com")).collect();
    expected.sort();
    assert_eq!(recipients, expected);
}
